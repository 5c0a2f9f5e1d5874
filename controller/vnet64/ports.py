"""The node bring-up contract: what the controller expects to find on each node.

Node bring-up names br-int's own ports by these rules, and the controller
recognises them by name in the switch's port descriptions:

    geneve0          the Geneve tunnel port (remote_ip=flow, key=flow)
    xlat0            the veth to the host's stateless translator namespace

A VM's or a service endpoint's port may have any name (the hypervisor's): the node
agent finds it by its external_ids:iface-id and records a port binding in the NB,
and the controller wires it from that binding only (``controller.roles.Ports``).
``vif_port`` is merely the name the lab gives such a port when it makes one:

    v-<vm>           a customer VM's port           (vif_port("vm", name))
    s-<endpoint>     a service endpoint's port      (vif_port("endpoint", name))

Names longer than Linux's 15 characters are shortened with a hash
(``ifname``). The translator's side of ``xlat0`` carries ``translator_mac(host)``.
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
