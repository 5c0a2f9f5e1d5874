"""vnet64-controller: the platform routing components as one os-ken app.

Layout (pure logic apart from I/O, Faucet-style):
    flows.py     the flow language (plain data) every other module speaks
    pipeline.py  table maps per role, priority bands, the cookie scheme
    model.py     the NB snapshot the roles read
    roles/       service host (encapsulator), appliance, customer host (translator)
    ofmsg.py     flow language -> os-ken OpenFlow messages
    app.py       the thin os-ken app; launcher.py the ``vnet64-controller`` command

The strict simulated flow table the unit tests (and ``vnet64-lab trace``) run flows on is ``sim.py``.
"""
