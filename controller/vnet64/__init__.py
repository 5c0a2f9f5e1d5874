"""vnet64: service-initiated connections to overlapping private IPv4 VMs.

Modules:
    address   the platform IPv6 address codec (one place for the address plan)
    topology  topology file loader and the one validator every entry point uses
    nb        the northbound OVSDB database: schema, embedded server, ovsdbapp API
    cli       the ``vnet64`` operator command
"""

__version__ = "0.1.0"

from . import _warnings

# Before any dependency is imported: their warnings go to the debug log, not to the
# user's terminal (see _warnings.py).
_warnings.divert()
