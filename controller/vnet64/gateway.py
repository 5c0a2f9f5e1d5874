"""The platform's virtual gateway: the addresses VMs and service endpoints route to.

Shared by the lab (which points default routes at it) and the controller (which
answers ARP / neighbour discovery for it). Nothing in a customer VNet changes:
a VM's default gateway is the first host address of its subnet, as in any cloud.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address

# One locally administered MAC for the virtual gateway on every bridge.
GATEWAY_MAC = "02:76:36:34:00:01"
# Service endpoints (IPv6 only) use a link-local gateway, like most clouds.
SERVICE_GATEWAY_IPV6 = IPv6Address("fe80::1")


def vm_gateway(subnet: IPv4Network) -> IPv4Address:
    """The IPv4 gateway of a customer subnet: its first host address."""
    if subnet.prefixlen >= 31:
        raise ValueError(f"subnet {subnet} is too small to hold a gateway and VMs")
    return subnet.network_address + 1
