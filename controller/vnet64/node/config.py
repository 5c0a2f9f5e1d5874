"""What a node's Open vSwitch and kernel should hold, as plain data (no I/O).

The agent (``agent.py``) gathers the facts - the node's NB row, the platform, the
datapath type, the uplink it was given - and writes what these functions return; unit
tests check them for both datapath types without a switch.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from ..controller.pipeline import CT_TIMEOUTS, TABLE_PREFIXES, TOKEN_OPTION, ZONE_V6_DNAT, ZONE_V6_SNAT, tables_for
from ..ports import GENEVE_PORT, INTEGRATION_BRIDGE, XLAT_PORT, translator_mac
from .datapath import Datapath
from .ovsdb import OWNER

PHYSICAL_BRIDGE = "br-phy"
# OpenFlow10 too, so a plain `ovs-ofctl dump-flows br-int` (no -O) works.
OF_PROTOCOLS = ["OpenFlow10", "OpenFlow13", "OpenFlow14", "OpenFlow15"]
OFPORT_GENEVE = 1
OFPORT_XLAT = 2
GENEVE_OVERHEAD = 50          # outer IPv4 20 + UDP 8 + Geneve 8 + inner Ethernet 14
OPTION_BYTES = 4 + TOKEN_OPTION.length   # the tunnel token's Geneve option, header included
TRANSLATION_GROWTH = 20       # IPv4 header 20 -> IPv6 header 40
ARP_IGNORE = 1


@dataclass(frozen=True)
class NodeFacts:
    """The node as the NB describes it."""
    name: str
    role: str                       # "host" | "appliance"
    underlay_ip: IPv4Address
    datapath_id: int
    controllers: tuple[str, ...]
    peers: tuple[IPv4Address, ...]  # every other node's underlay IP


@dataclass(frozen=True)
class Uplink:
    """The NIC that carries the underlay (netdev datapath: a port of br-phy)."""
    name: str
    mac: str
    mtu: int
    address: IPv4Interface | None   # the underlay address with its prefix, where it is now


def overlay_mtu(underlay_mtu: int, option_bytes: int = OPTION_BYTES) -> int:
    """IPv6 MTU on br-int (service endpoints, the translator's IPv6 side): what still
    fits the underlay once Geneve and its options are added."""
    return underlay_mtu - GENEVE_OVERHEAD - option_bytes


def vm_mtu(underlay_mtu: int, option_bytes: int = OPTION_BYTES) -> int:
    """A customer VM's IPv4 MTU: a full-size packet still fits once translated."""
    return overlay_mtu(underlay_mtu, option_bytes) - TRANSLATION_GROWTH


def datapath_id_text(dpid: int) -> str:
    return f"{dpid:016x}"


def system_external_ids(node: NodeFacts) -> dict[str, str]:
    """The Open_vSwitch row's external_ids: OVN's system-id convention, and our role."""
    return {"system-id": node.name, "hostname": node.name, "vnet64-role": node.role}


def bridges(node: NodeFacts, dp: Datapath, mtu: int, uplink: Uplink | None) -> list[dict]:
    """EnsureBridge arguments, in the order to apply them (br-phy first where needed)."""
    owner = {OWNER: node.name}
    out = []
    if dp.needs_br_phy:
        if uplink is None:
            raise ValueError("the netdev datapath needs an uplink (the NIC of the underlay)")
        out.append({"name": PHYSICAL_BRIDGE, "datapath_type": dp.name,
                    "other_config": {"hwaddr": uplink.mac}, "internal_mtu": uplink.mtu,
                    "external_ids": owner})
    out.append({
        "name": INTEGRATION_BRIDGE, "datapath_type": dp.name, "fail_mode": "secure",
        "other_config": {"datapath-id": datapath_id_text(node.datapath_id),
                         "disable-in-band": "true"},
        "protocols": OF_PROTOCOLS, "controllers": list(node.controllers),
        "internal_mtu": mtu,
        "external_ids": {**owner, "vnet64-role": node.role},
        "flow_tables": {tid: name for name, tid in tables_for(node.role).stages},
        "table_prefixes": TABLE_PREFIXES[node.role]})
    return out


def ports(node: NodeFacts, dp: Datapath, uplink: Uplink | None) -> list[dict]:
    """EnsurePort arguments: the uplink in br-phy (netdev), the Geneve port, and on
    hosts the translator's veth."""
    owner = {OWNER: node.name}
    out = []
    if dp.needs_br_phy and uplink is not None:
        out.append({"bridge": PHYSICAL_BRIDGE, "name": uplink.name, "external_ids": owner})
    out.append({"bridge": INTEGRATION_BRIDGE, "name": GENEVE_PORT, "type": "geneve",
                "options": {"remote_ip": "flow", "key": "flow", "local_ip": str(node.underlay_ip)},
                "ofport_request": OFPORT_GENEVE,
                "external_ids": {**owner, "vnet64-kind": "tunnel"}})
    if node.role == "host":
        out.append({"bridge": INTEGRATION_BRIDGE, "name": XLAT_PORT, "ofport_request": OFPORT_XLAT,
                    "external_ids": {**owner, "vnet64-kind": "translator",
                                     "iface-id": f"xlat:{node.name}",
                                     "attached-mac": translator_mac(node.name)}})
    return out


def sysctls(dp: Datapath, uplink: Uplink | None) -> dict[str, int]:
    """Kernel settings of the node's own namespace. netdev: the uplink's kernel side sees
    what arrives too (OVS reads it with a packet socket), and only br-phy, which holds
    the underlay IP, may answer ARP for it - never the uplink with its own MAC; and the
    packet sockets' receive buffer (``Datapath.rmem_default``)."""
    out: dict[str, int] = {}
    if dp.uplink_arp_ignore and uplink is not None:
        out[f"net.ipv4.conf.{uplink.name}.arp_ignore"] = ARP_IGNORE
    if dp.rmem_default:
        out["net.core.rmem_default"] = dp.rmem_default
    return out


def ct_zones(role: str, vnet_zones: list[int]) -> list[int]:
    """Zones a node needs timeout policies for: on hosts, every VNet's zone (a VM of any
    VNet may be bound here at any moment: a live migration) and the two IPv6 zones."""
    if role != "host":
        return []
    return sorted(set(vnet_zones) | {ZONE_V6_SNAT, ZONE_V6_DNAT})


def ct_timeouts() -> dict[str, int]:
    return dict(CT_TIMEOUTS)
