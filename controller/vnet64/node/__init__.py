"""vnet64-node: the agent that brings one host or the SDN appliance up from the NB.

Modules:
    datapath    everything that differs between the kernel and the userspace datapath
    config      what the node's OVS and kernel should hold, as plain data (pure)
    ovsdb       idempotent commands on the node's own Open vSwitch database
    translator  the host's TAYGA namespace: generated config, bring-up, supervision
    agent       the converge loop, port binding (iface-id), cleanup
    cli         the ``vnet64-node`` command
    sh          subprocess helpers (shared with the lab)

A real host imports nothing from the lab: the lab runs this agent in each of its node
namespaces exactly as a host runs it.
"""
