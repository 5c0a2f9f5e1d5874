"""The controller's flow language: plain data that describes OpenFlow flows.

Role logic (``roles/*.py``) returns these frozen values; nothing here does I/O.
``ofmsg.py`` turns them into os-ken messages for a switch, ``sim.py``
runs them in unit tests, and ``Flow.ofctl()`` prints them the way ``ovs-ofctl
dump-flows --names`` would, so a person can compare what the controller meant
with what the switch holds.

Fields use os-ken's OXM/NXM names (``in_port``, ``eth_type``, ``ipv6_dst``,
``tun_ipv4_dst``, ``ct_state``, ``reg0``...). A match value is either a value
or a ``(value, mask)`` pair. Tables are named; a role's :class:`TableMap` turns
names into numbers.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Iterable, Mapping, Union

# ---------------------------------------------------------------------------
# ct_state bits (as in OVS: ovs-fields(7))
CT_NEW = 0x01
CT_EST = 0x02
CT_REL = 0x04
CT_RPL = 0x08
CT_INV = 0x10
CT_TRK = 0x20
CT_SNAT = 0x40
CT_DNAT = 0x80

_CT_NAMES = (("new", CT_NEW), ("est", CT_EST), ("rel", CT_REL), ("rpl", CT_RPL),
             ("inv", CT_INV), ("trk", CT_TRK), ("snat", CT_SNAT), ("dnat", CT_DNAT))

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

# Special ports (OpenFlow 1.3 numbers)
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_TABLE = 0xFFFFFFF9
OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_LOCAL = 0xFFFFFFFE

FIELDS = {
    # name: (bits, kind) -- kind picks parsing/printing
    "in_port": (32, "int"),
    "eth_src": (48, "mac"), "eth_dst": (48, "mac"), "eth_type": (16, "hex"),
    "vlan_vid": (13, "int"),
    "ip_proto": (8, "int"), "ip_dscp": (6, "int"), "nw_ttl": (8, "int"),
    "ipv4_src": (32, "ipv4"), "ipv4_dst": (32, "ipv4"),
    "ipv6_src": (128, "ipv6"), "ipv6_dst": (128, "ipv6"),
    "ipv6_exthdr": (9, "hex"),
    "tcp_src": (16, "int"), "tcp_dst": (16, "int"), "tcp_flags": (12, "hex"),
    "udp_src": (16, "int"), "udp_dst": (16, "int"),
    "icmpv4_type": (8, "int"), "icmpv4_code": (8, "int"),
    "icmpv6_type": (8, "int"), "icmpv6_code": (8, "int"),
    "ipv6_nd_target": (128, "ipv6"), "ipv6_nd_sll": (48, "mac"), "ipv6_nd_tll": (48, "mac"),
    # OVS extensions (ERICOXM class 0x1000): NA flags (R,S,O) and the ND option type.
    "nd_reserved": (32, "hex"), "nd_options_type": (8, "int"),
    "arp_op": (16, "int"), "arp_spa": (32, "ipv4"), "arp_tpa": (32, "ipv4"),
    "arp_sha": (48, "mac"), "arp_tha": (48, "mac"),
    "tunnel_id": (64, "hex"), "tun_ipv4_src": (32, "ipv4"), "tun_ipv4_dst": (32, "ipv4"),
    # the first Geneve option the switch's TLV map names (a ``TlvMap`` message sets it up;
    # NXM_NX_TUN_METADATA0, used here as a 4-byte option: the platform's tunnel token)
    "tun_metadata0": (32, "hex"),
    "ct_state": (32, "ct"), "ct_zone": (16, "int"), "ct_mark": (32, "hex"),
    "metadata": (64, "hex"), "pkt_mark": (32, "hex"),
    **{f"reg{i}": (32, "hex") for i in range(16)},
}

MatchValue = Union[int, str, tuple]

# Where ovs-ofctl spells a field differently from os-ken (``ofctl()`` prints these,
# so what the controller meant reads like ``ovs-ofctl dump-flows``).
OVS_NAMES = {"ipv4_src": "nw_src", "ipv4_dst": "nw_dst", "tun_ipv4_src": "tun_src",
             "tun_ipv4_dst": "tun_dst", "ipv6_nd_target": "nd_target", "ipv6_nd_sll": "nd_sll",
             "ipv6_nd_tll": "nd_tll", "icmpv4_type": "icmp_type", "icmpv4_code": "icmp_code",
             "tunnel_id": "tun_id"}


def ovs_name(name: str) -> str:
    return OVS_NAMES.get(name, name)


def _norm(name: str, value: Any) -> Any:
    """Canonical Python value for a field: ints, str for MACs and IP addresses."""
    kind = FIELDS[name][1]
    if kind == "mac":
        return str(value).lower()
    if kind in ("ipv4", "ipv6"):
        return canonical_ip(value)
    return int(value)


# Entries of each memo of an address or encoding (here, in ofmsg and in logic). What pays
# is the hot set a node repeats: its endpoints', VMs' and translator's addresses and the
# actions built from them (hundreds to a few thousand). A pair's own alias, and each of the
# appliance's 100,000 routes, is seen once: a larger memo only keeps those (65,536 entries
# per memo were ~0.2 KiB per subscription of the appliance's controller at 100k).
CACHE_SIZE = 1 << 12
def canonical_ip(value: Any) -> str:
    """Canonical text of an address (what a switch's flow dump gives back, read by ipaddress).

    IPv6 goes through inet_ntop (C, ~1 µs; ``str()`` of an ``IPv6Address`` takes
    ~55 µs, and the appliance's 100,000 routes have one each); the two agree except
    where inet_ntop writes a dotted tail, which is left to ipaddress.
    """
    if isinstance(value, IPv6Address):
        out = socket.inet_ntop(socket.AF_INET6, value.packed)
        if "." not in out:
            return out
    elif isinstance(value, IPv4Address):
        return socket.inet_ntop(socket.AF_INET, value.packed)
    return _canonical_text(str(value))


@functools.lru_cache(maxsize=CACHE_SIZE)
def _canonical_text(text: str) -> str:
    """``canonical_ip`` of a text. Cached: a pair's flows repeat its endpoint's and VM's
    addresses (measured, 3,000 new pairs through ``Logic.packet_in`` and the encoder:
    0.58 -> 0.50 ms of CPU per pair)."""
    if ":" in text:
        try:
            out = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
        except OSError:
            out = "."
        if "." not in out:
            return out
    return str(ip_address(text))


class FlowError(ValueError):
    """A flow that the pipeline declaration does not allow."""


@dataclass(frozen=True, slots=True)
class Match:
    """An OpenFlow match: field -> value or (value, mask). Hashable, canonical order."""

    items: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, fields: Mapping[str, MatchValue] | None = None, **kw: MatchValue) -> "Match":
        merged = {**(fields or {}), **kw}
        items = []
        for name, value in merged.items():
            if name not in FIELDS:
                raise FlowError(f"unknown match field {name!r}")
            if isinstance(value, tuple):
                value = (_norm(name, value[0]), _norm(name, value[1]))
            elif isinstance(value, (IPv4Network, IPv6Network)):
                value = (str(value.network_address), str(value.netmask))
            else:
                value = _norm(name, value)
            items.append((name, value) if FIELDS[name][1] in _UNSHARED else _shared_item(name, value))
        return cls(tuple(sorted(items)))

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.items).get(name, default)

    def __contains__(self, name: str) -> bool:
        return any(k == name for k, _ in self.items)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items)

    def ofctl(self) -> str:
        return ",".join(f"{ovs_name(name)}={_fmt(name, v)}" for name, v in self.items)


# Match items kept as they are: addresses (a flow's own, mostly: the appliance has one
# per route). Any other item is one shared tuple per distinct value (the appliance's
# 100,000 route flows all match ("eth_type", 0x86dd)).
_UNSHARED = frozenset(("ipv4", "ipv6", "mac"))


@functools.lru_cache(maxsize=1024)
def _shared_item(name: str, value: Any) -> tuple[str, Any]:
    return (name, value)


def _fmt(name: str, value: Any) -> str:
    kind = FIELDS.get(name, (0, "int"))[1]
    if isinstance(value, tuple):
        if kind == "ct":
            return ct_state_str(value[0], value[1])
        return f"{_fmt(name, value[0])}/{_fmt(name, value[1])}"
    if kind == "hex":
        return hex(value)
    if kind == "ct":
        return ct_state_str(value, value)
    if kind == "int" and name == "in_port":
        return port_str(value)
    return str(value)


def ct_state_str(value: int, mask: int) -> str:
    parts = [("+" if value & bit else "-") + name for name, bit in _CT_NAMES if mask & bit]
    return "".join(parts)


def ct_state(*flags: str) -> tuple[int, int]:
    """``ct_state("+trk", "+est", "-new")`` -> (value, mask)."""
    value = mask = 0
    names = dict(_CT_NAMES)
    for flag in flags:
        sign, name = flag[0], flag[1:]
        if sign not in "+-" or name not in names:
            raise FlowError(f"bad ct_state flag {flag!r}")
        mask |= names[name]
        if sign == "+":
            value |= names[name]
    return value, mask


def port_str(port: int) -> str:
    return {OFPP_IN_PORT: "IN_PORT", OFPP_TABLE: "TABLE", OFPP_CONTROLLER: "CONTROLLER",
            OFPP_LOCAL: "LOCAL"}.get(port, str(port))


# ---------------------------------------------------------------------------
# Actions


@dataclass(frozen=True, slots=True)
class Output:
    port: int

    def ofctl(self, tables: "TableMap") -> str:
        return f"output:{port_str(self.port)}"


@dataclass(frozen=True, slots=True)
class SetField:
    field: str
    value: Any

    def __post_init__(self) -> None:
        if self.field not in FIELDS:
            raise FlowError(f"unknown field {self.field!r} in set_field")
        object.__setattr__(self, "value", _norm(self.field, self.value))

    def ofctl(self, tables: "TableMap") -> str:
        return f"set_field:{_fmt(self.field, self.value)}->{ovs_name(self.field)}"


@dataclass(frozen=True, slots=True)
class Move:
    """Copy ``n_bits`` from ``src`` (at ``src_ofs``) to ``dst`` (at ``dst_ofs``)."""

    src: str
    dst: str
    n_bits: int
    src_ofs: int = 0
    dst_ofs: int = 0

    def __post_init__(self) -> None:
        for name in (self.src, self.dst):
            if name not in FIELDS:
                raise FlowError(f"unknown field {name!r} in move")

    def ofctl(self, tables: "TableMap") -> str:
        return (f"move:{ovs_name(self.src)}[{self.src_ofs}..{self.src_ofs + self.n_bits - 1}]->"
                f"{ovs_name(self.dst)}[{self.dst_ofs}..{self.dst_ofs + self.n_bits - 1}]")


@dataclass(frozen=True, slots=True)
class Nat:
    """NAT inside a ct action. ``kind`` None = apply the connection's existing NAT."""

    kind: str | None = None  # "src" | "dst" | None
    addr_min: str | None = None
    addr_max: str | None = None
    port_min: int | None = None
    port_max: int | None = None
    random: bool = False

    def ofctl(self) -> str:
        if self.kind is None:
            return "nat"
        addr = self.addr_min or ""
        if self.addr_max and self.addr_max != self.addr_min:
            addr += f"-{self.addr_max}"
        if ":" in addr:
            addr = f"[{addr}]"
        ports = ""
        if self.port_min is not None:
            ports = f":{self.port_min}"
            if self.port_max is not None and self.port_max != self.port_min:
                ports += f"-{self.port_max}"
        flags = ",random" if self.random else ""
        return f"nat({self.kind}={addr}{ports}{flags})"


@dataclass(frozen=True, slots=True)
class CT:
    """Send to conntrack in ``zone``; with ``table``, recirculate there afterwards."""

    zone: int
    commit: bool = False
    table: str | None = None
    nat: Nat | None = None

    def ofctl(self, tables: "TableMap") -> str:
        parts = []
        if self.commit:
            parts.append("commit")
        parts.append(f"zone={self.zone}")
        if self.table is not None:
            parts.append(f"table={self.table}")
        if self.nat is not None:
            parts.append(self.nat.ofctl())
        return f"ct({','.join(parts)})"


@dataclass(frozen=True, slots=True)
class Controller:
    max_len: int = 0xFFFF

    def ofctl(self, tables: "TableMap") -> str:
        return "CONTROLLER:65535" if self.max_len == 0xFFFF else f"CONTROLLER:{self.max_len}"


@dataclass(frozen=True, slots=True)
class Resubmit:
    """Continue in another table and come back (NXAST_RESUBMIT_TABLE)."""

    table: str

    def ofctl(self, tables: "TableMap") -> str:
        return f"resubmit(,{self.table})"


@dataclass(frozen=True, slots=True)
class CheckPktLarger:
    """``check_pkt_larger(pkt_len)->dst[ofs]`` (NXAST_CHECK_PKT_LARGER): bit ``ofs`` of
    ``dst`` (a register) becomes 1 if the packet is longer than ``pkt_len`` bytes, counting
    its Ethernet header (ovs-actions(7)), else 0. Match the bit in a later table."""

    pkt_len: int
    dst: str
    ofs: int = 0

    def __post_init__(self) -> None:
        if not self.dst.startswith("reg") or self.dst not in FIELDS:
            raise FlowError(f"check_pkt_larger writes a register, not {self.dst!r}")
        if not 0 < self.pkt_len <= 0xFFFF or not 0 <= self.ofs < FIELDS[self.dst][0]:
            raise FlowError(f"check_pkt_larger({self.pkt_len})->{self.dst}[{self.ofs}]: out of range")

    def ofctl(self, tables: "TableMap") -> str:
        return f"check_pkt_larger({self.pkt_len})->{self.dst}[{self.ofs}]"


@dataclass(frozen=True, slots=True)
class Learn:
    """``learn(...)`` (NXAST_LEARN): add a flow to ``table`` - or refresh the one there
    with the same match and priority - built from the packet being processed.

    The learned flow matches ``eth_type`` (if given) and, for each ``(field, src)`` of
    ``match_from``, ``field`` equal to this packet's ``src`` field (whole fields only);
    its actions are, for each ``(src, dst)`` of ``load_from``, ``dst`` := this
    packet's ``src`` (``load:src->dst``). It gets ``priority``, ``cookie`` and the
    timeouts. A learned flow has no goto: reach its table with :class:`Resubmit` and go
    on after it (what it loaded stays set)."""

    table: str
    priority: int
    cookie: int
    idle_timeout: int = 0
    hard_timeout: int = 0
    eth_type: int | None = None
    match_from: tuple[tuple[str, str], ...] = ()
    load_from: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for pair in (*self.match_from, *self.load_from):
            for name in pair:
                if name not in FIELDS:
                    raise FlowError(f"unknown field {name!r} in learn")
            if FIELDS[pair[0]][0] != FIELDS[pair[1]][0]:
                raise FlowError(f"learn: {pair[0]} and {pair[1]} differ in width")

    def ofctl(self, tables: "TableMap") -> str:
        """As ``ovs-ofctl dump-flows --names`` prints it (OVS 3.1 ``learn_format``: no
        ``priority`` when it is the default 32768, no ``cookie`` when 0, ``F[]`` alone
        for a field matched on its own value)."""
        parts = [f"table={self.table}"]
        if self.idle_timeout:
            parts.append(f"idle_timeout={self.idle_timeout}")
        if self.hard_timeout:
            parts.append(f"hard_timeout={self.hard_timeout}")
        if self.priority != 0x8000:
            parts.append(f"priority={self.priority}")
        if self.cookie:
            parts.append(f"cookie={self.cookie:#x}")
        if self.eth_type is not None:
            parts.append(f"eth_type={self.eth_type:#x}")
        parts += [f"{nxm_name(f)}[]" + ("" if f == src else f"={nxm_name(src)}[]")
                  for f, src in self.match_from]
        parts += [f"load:{nxm_name(src)}[]->{nxm_name(dst)}[]" for src, dst in self.load_from]
        return f"learn({','.join(parts)})"


# The NXM names ovs-ofctl prints inside learn() (ovs-fields(7)).
NXM_NAMES = {
    "ipv6_src": "NXM_NX_IPV6_SRC", "ipv6_dst": "NXM_NX_IPV6_DST",
    "ipv4_src": "NXM_OF_IP_SRC", "ipv4_dst": "NXM_OF_IP_DST",
    "tun_ipv4_src": "NXM_NX_TUN_IPV4_SRC", "tun_ipv4_dst": "NXM_NX_TUN_IPV4_DST",
    "eth_src": "NXM_OF_ETH_SRC", "eth_dst": "NXM_OF_ETH_DST", "in_port": "NXM_OF_IN_PORT",
    "tunnel_id": "NXM_NX_TUN_ID", **{f"reg{i}": f"NXM_NX_REG{i}" for i in range(16)},
}


def nxm_name(name: str) -> str:
    try:
        return NXM_NAMES[name]
    except KeyError:
        raise FlowError(f"no NXM name known for {name!r}") from None


Action = Union[Output, SetField, Move, CT, Controller, Resubmit, CheckPktLarger, Learn]


# ---------------------------------------------------------------------------
# Tables and flows


@dataclass(frozen=True, slots=True)
class TableMap:
    """A role's pipeline: stage name -> table id, in order."""

    role: str
    stages: tuple[tuple[str, int], ...]

    def id(self, name: str) -> int:
        for stage, tid in self.stages:
            if stage == name:
                return tid
        raise FlowError(f"table {name!r} is not a stage of the {self.role} pipeline "
                        f"({', '.join(s for s, _ in self.stages)})")

    def name(self, tid: int) -> str:
        for stage, t in self.stages:
            if t == tid:
                return stage
        raise FlowError(f"table {tid} is not a stage of the {self.role} pipeline")

    def __contains__(self, name: str) -> bool:
        return any(stage == name for stage, _ in self.stages)


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow: where it lives, what it matches, what it does, and who owns it."""

    table: str
    priority: int
    match: Match
    actions: tuple[Action, ...] = ()
    goto: str | None = None        # goto_table instruction
    meter: int | None = None       # meter instruction
    cookie: int = 0
    idle_timeout: int = 0
    hard_timeout: int = 0
    send_flow_rem: bool = False

    @property
    def key(self) -> tuple:
        """What OpenFlow uses to tell flows apart (strict delete/modify)."""
        return (self.table, self.priority, self.match)

    def ofctl(self, tables: TableMap | None = None) -> str:
        parts = [f"cookie={self.cookie:#x}", f"table={self.table}", f"priority={self.priority}"]
        if self.idle_timeout:
            parts.append(f"idle_timeout={self.idle_timeout}")
        if self.hard_timeout:
            parts.append(f"hard_timeout={self.hard_timeout}")
        if self.send_flow_rem:
            parts.append("send_flow_rem")
        m = self.match.ofctl()
        acts = [a.ofctl(tables) for a in self.actions]  # type: ignore[arg-type]
        if self.meter is not None:
            acts.insert(0, f"meter:{self.meter}")
        if self.goto is not None:
            acts.append(f"goto_table:{self.goto}")
        head = ",".join(parts) + (f",{m}" if m else "")
        return f"{head} actions={','.join(acts) or 'drop'}"


def flow(table: str, priority: int, match: Match | Mapping[str, MatchValue] | None = None,
         actions: Iterable[Action] = (), **kw: Any) -> Flow:
    m = match if isinstance(match, Match) else Match.of(match or {})
    return Flow(table, priority, m, tuple(actions), **kw)


@dataclass(frozen=True, slots=True)
class PacketOut:
    """Re-inject ``data`` (a whole frame) into the pipeline or out of a port."""

    data: bytes
    in_port: int
    actions: tuple[Action, ...] = (Output(OFPP_TABLE),)


@dataclass(frozen=True, slots=True)
class DeleteFlows:
    """Delete flows by cookie (and mask), optionally in one table."""

    cookie: int
    cookie_mask: int
    table: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteStrict:
    """Delete exactly one flow: the one at (table, priority, match)."""

    table: str
    priority: int
    match: Match

    @classmethod
    def of(cls, f: "Flow") -> "DeleteStrict":
        return cls(f.table, f.priority, f.match)


@dataclass(frozen=True, slots=True)
class MeterMod:
    """A packet-rate meter (drop band) for the packet-in path."""

    meter_id: int
    rate_pps: int
    burst: int = 0


@dataclass(frozen=True, slots=True)
class TlvMap:
    """Map a Geneve option (class, type, length in bytes) to ``tun_metadata<index>``
    (NXT_TLV_TABLE_MOD, add). The switch keeps the map only while it runs (it is not in
    OVSDB), so it is sent on every connect, before the flows that use the field; adding
    a mapping that exists already fails harmlessly (NXTTMFC_ALREADY_MAPPED)."""

    index: int
    option_class: int
    option_type: int
    length: int

    def __post_init__(self) -> None:
        if not (0 <= self.index < 64 and 0 <= self.option_class <= 0xFFFF
                and 0 <= self.option_type <= 0xFF and 4 <= self.length <= 124
                and self.length % 4 == 0):
            raise FlowError(f"not a Geneve TLV mapping: {self!r}")

    def ofctl(self) -> str:
        """As ``ovs-ofctl add-tlv-map`` takes it."""
        return (f"{{class={self.option_class:#x},type={self.option_type:#x},len={self.length}}}"
                f"->tun_metadata{self.index}")


Message = Union[Flow, PacketOut, DeleteFlows, DeleteStrict, MeterMod, TlvMap]


@dataclass(frozen=True, slots=True)
class Batch:
    """Messages for one switch, in order (flows before the packet-out that needs them)."""

    messages: tuple[Message, ...] = field(default_factory=tuple)
