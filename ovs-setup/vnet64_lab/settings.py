"""Lab-only settings: the ``lab:`` mapping of a topology file, validated here.

The main validator (``vnet64.topology``) checks everything the platform needs and
hands the free-form ``lab:`` mapping through untouched. This module owns its keys::

    lab:
      underlay_cidr: 192.168.64.0/24    # the fabric segment; every node's underlay_ip in it
      management_cidr: 172.31.255.0/24  # OpenFlow + NB; controller at the first address
      underlay_mtu: 1500                # MTU of the fabric (node NICs, br-phy)
      geneve_option_bytes: 8            # room kept for Geneve options (4-byte multiples; at
                                        # least 8, the tunnel token's option with its header)
      translator_ipv4: 192.0.0.1        # TAYGA's own IPv4 (source of its ICMPv4 errors)

Every key is optional. The MTUs of everything above the fabric follow from the
first two numbers (see :class:`LabSettings`): a service endpoint's IPv6 packet
plus Geneve fits the fabric, and a customer VM's IPv4 packet, 20 bytes bigger
once translated, fits too.

Errors are :class:`vnet64.topology.TopologyError` naming ``file:line: lab.<key>``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from vnet64 import topology
from vnet64.controller.pipeline import TOKEN_OPTION
from vnet64.topology import Topology, TopologyError

GENEVE_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + Geneve 8 + inner Ethernet 14
TOKEN_OPTION_BYTES = 4 + TOKEN_OPTION.length   # the tunnel token's Geneve option, header included
IPV6_MIN_MTU = 1280
TRANSLATION_GROWTH = 20  # IPv4 header 20 -> IPv6 header 40
MAX_MTU = 9000

DEFAULTS: dict[str, Any] = {
    "underlay_cidr": None,  # the /24 around the first node's underlay_ip
    "management_cidr": "172.31.255.0/24",
    "underlay_mtu": 1500,
    "geneve_option_bytes": 8,
    "translator_ipv4": "192.0.0.1",
}
FIRST_NODE_MGMT_OFFSET = 10  # node i gets management_cidr[10 + i]


@dataclass(frozen=True)
class LabSettings:
    underlay_cidr: IPv4Network
    management_cidr: IPv4Network
    underlay_mtu: int
    geneve_option_bytes: int
    translator_ipv4: IPv4Address

    @property
    def overlay_mtu(self) -> int:
        """MTU of IPv6 on br-int: service endpoints and the translator's IPv6 side."""
        return self.underlay_mtu - GENEVE_OVERHEAD - self.geneve_option_bytes

    @property
    def vm_mtu(self) -> int:
        """MTU of customer VMs (IPv4): a full-size packet still fits once translated."""
        return self.overlay_mtu - TRANSLATION_GROWTH

    @property
    def controller_ip(self) -> IPv4Address:
        return self.management_cidr.network_address + 1

    def management_ip(self, node_index: int) -> IPv4Address:
        return self.management_cidr.network_address + FIRST_NODE_MGMT_OFFSET + node_index


def from_topology(topo: Topology, path: str | Path | None = None) -> LabSettings:
    """Validate ``topo.lab`` against the topology; raise TopologyError naming the field."""
    source = str(path) if path else topo.source
    lines = topo.lab_lines
    name = Path(source).name or "<topology>"

    def err(key: str, message: str) -> TopologyError:
        line = lines.get(key) or lines.get("", 0)
        where = f"{name}:{line}" if line else name
        return TopologyError(message, f"{where}: lab.{key}" if key else f"{where}: lab")

    raw = dict(topo.lab or {})
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise err(unknown[0], f"unknown lab setting {unknown[0]!r} (expected one of: "
                              f"{', '.join(DEFAULTS)})")
    values = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}

    def cidr(key: str) -> IPv4Network:
        value = values[key]
        try:
            net = IPv4Network(str(value), strict=True)
        except ValueError as exc:
            raise err(key, f"must be an IPv4 network like 192.168.64.0/24, got {value!r} ({exc})") \
                from None
        if "/" not in str(value):
            raise err(key, f"must have a prefix length, like 192.168.64.0/24, got {value!r}")
        if net.prefixlen > 29:
            raise err(key, f"{net} is too small: use /29 or larger")
        return net

    def integer(key: str, low: int, high: int) -> int:
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise err(key, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise err(key, f"must be between {low} and {high}, got {value}")
        return value

    if values["underlay_cidr"] is None:
        if not topo.nodes:
            raise err("underlay_cidr", "cannot be derived: the topology has no nodes")
        values["underlay_cidr"] = str(IPv4Network(f"{topo.nodes[0].underlay_ip}/24", strict=False))
    underlay = cidr("underlay_cidr")
    for node in topo.nodes:
        if node.underlay_ip not in underlay:
            raise err("underlay_cidr", f"node {node.name}'s underlay_ip {node.underlay_ip} is "
                                       f"outside the underlay {underlay}")
        if node.underlay_ip in (underlay.network_address, underlay.broadcast_address):
            raise err("underlay_cidr", f"node {node.name}'s underlay_ip {node.underlay_ip} is the "
                                       f"network or broadcast address of {underlay}")

    mgmt = cidr("management_cidr")
    if mgmt.overlaps(underlay):
        raise err("management_cidr", f"{mgmt} overlaps the underlay {underlay}: nodes route both")
    needed = FIRST_NODE_MGMT_OFFSET + len(topo.nodes) + 1
    if mgmt.num_addresses < needed:
        raise err("management_cidr", f"{mgmt} is too small for {len(topo.nodes)} nodes "
                                     f"(needs {needed} addresses)")

    options = integer("geneve_option_bytes", TOKEN_OPTION_BYTES, 252)   # at least the token's option
    if options % 4:
        raise err("geneve_option_bytes", f"must be a multiple of 4 (Geneve options are 4-byte "
                                         f"words), got {options}")
    low = IPV6_MIN_MTU + GENEVE_OVERHEAD + options
    mtu = integer("underlay_mtu", low, MAX_MTU)  # low: IPv6's minimum MTU must fit in Geneve

    value = values["translator_ipv4"]
    try:
        tr_ip = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise err("translator_ipv4", f"must be an IPv4 address, got {value!r}") from None
    if tr_ip.is_multicast or tr_ip.is_loopback or tr_ip.is_unspecified:
        raise err("translator_ipv4", f"{tr_ip} is not a unicast address")
    if tr_ip == topo.platform.platform_ip:
        raise err("translator_ipv4", f"{tr_ip} is the platform_ip")
    for vnet in topo.vnets:
        for net in vnet.cidrs:
            if tr_ip in net:
                raise err("translator_ipv4", f"{tr_ip} lies in VNet {vnet.name}'s range {net}: "
                                             f"the translator could not tell itself from a VM")
    return LabSettings(underlay, mgmt, mtu, options, tr_ip)


def load(path: str | Path) -> tuple[Topology, LabSettings]:
    """Load and validate a topology file and its lab settings; nothing is created."""
    topo = topology.load(path)
    return topo, from_topology(topo, path)
