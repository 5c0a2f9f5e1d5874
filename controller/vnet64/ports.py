"""Names on a node's br-int.

The node agent (``vnet64.node``) makes two ports whose names the controller knows:

    geneve0          the Geneve tunnel port (remote_ip=flow, key=flow)
    xlat0            the veth to the host's stateless translator namespace, whose
                     other end carries ``translator_mac(host)``

VM and service-endpoint ports are named by whoever attaches them (libvirt: ``vnet0``,
``vnet1``, ...) and found by ``external_ids:iface-id``: the agent records each binding
in the NB and the controller wires ports from the bindings, never from names.
``vif_port`` is only the lab's choice of readable names (``v-<vm>``, ``s-<endpoint>``)
as the hypervisor it stands in for; tests use it to make bindings. Names longer than
Linux's 15 characters are shortened with a hash (``ifname``).
"""

from __future__ import annotations

import hashlib

from .topology import default_mac

IFNAMSIZ = 15
INTEGRATION_BRIDGE = "br-int"
GENEVE_PORT = "geneve0"
XLAT_PORT = "xlat0"
_VIF_TAGS = {"vm": "v-", "endpoint": "s-"}


def ifname(tag: str, name: str) -> str:
    """A Linux interface name (<= 15 chars) for ``name``: readable when it fits, else hashed."""
    plain = f"{tag}{name}"
    if len(plain) <= IFNAMSIZ:
        return plain
    digest = hashlib.sha1(name.encode()).hexdigest()[:4]
    return f"{tag}{name[:IFNAMSIZ - len(tag) - 5]}-{digest}"


def vif_port(kind: str, name: str) -> str:
    """br-int port name of a VM (``kind="vm"``) or a service endpoint (``"endpoint"``)."""
    return ifname(_VIF_TAGS[kind], name)


def translator_mac(host: str) -> str:
    """MAC of the translator namespace's interface facing br-int on ``host``."""
    return default_mac(f"{host}/translator")
