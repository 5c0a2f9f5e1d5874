"""vnet64: service-initiated connections to overlapping private IPv4 VMs.

Modules:
    address   the platform IPv6 address codec (one place for the address plan)
    topology  topology file loader and the one validator every entry point uses
    nb        the northbound OVSDB database: schema, embedded server, ovsdbapp API
    cli       the ``vnet64`` operator command
"""

__version__ = "0.1.0"

import warnings as _warnings

# python-ovs imports eventlet's patcher only to detect monkey-patching; eventlet
# warns about its own deprecation on import. vnet64 does not use eventlet.
_warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
