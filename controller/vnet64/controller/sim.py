"""A strict simulated flow table: runs the flow language of ``vnet64.controller.flows``.

No root, no OVS. Like Faucet's ``clib/fakeoftable.py``, with conntrack state as an
input (as ``ovn-trace --ct=...``): a ``CtOracle`` answers every ``ct`` action. The unit
tests run the controller's flows through it (``tests/support/fake.py``); ``vnet64-lab
trace`` runs the flows read back from the switches (``flowtext``) through it.

``SimSwitch.apply()`` refuses (``SimError``, naming the flow by ``Flow.ofctl()``)
what OVS would refuse or what OpenFlow leaves undefined: an undeclared table, a goto
that does not go forward, an unknown meter, a missing match prerequisite (also for
``set_field``/``move``/``ct``), a mask on a field that cannot be masked, a value with
bits outside its mask, a ``ct_state`` that no packet can have, a read-only field as a
write target, and a flow that overlaps another one at the same table and priority.

Packets are dicts, field -> value, with the field names of ``flows.FIELDS`` and the
canonical values of ``flows._norm`` (ints; MACs and IP addresses as strings, which the
simulation rewrites in canonical form). Registers, metadata, ``pkt_mark``, ``tunnel_id``,
``tun_ipv4_*``, ``vlan_vid`` and ``ct_*`` read as 0 when absent; any other absent
field never matches. Two extra, packet-only fields (flows cannot match them):

* ``icmp_id``: the ICMP/ICMPv6 echo identifier (conntrack uses it as the "port");
* ``inner_<field>``: the header embedded in an ICMP/ICMPv6 error, in the outer header's
  IP version: ``inner_ipv4_src``/``inner_ipv4_dst`` (or ``inner_ipv6_*``),
  ``inner_ip_proto``, ``inner_tcp_*``/``inner_udp_*``, or ``inner_icmpv4_type``/
  ``inner_icmpv6_type`` + ``inner_icmp_id``.

``trace()`` follows OVS: the highest-priority hit per table (a miss drops); actions in
order; ``output:N`` to the packet's own in_port is skipped (use ``OFPP_IN_PORT``);
``resubmit`` runs a table and comes back with its changes (a miss there does nothing:
no drop); ``learn`` adds (or replaces, same table/priority/match) a flow built from the
packet, which a later ``resubmit`` hits; ``ct(table=X)`` forks: X sees
the packet after NAT with ``ct_state``/``ct_zone`` set (registers kept), while the rest
of the action list goes on with the packet as it was; ``ct`` without a table goes on with
the NATed packet. After any ``ct`` the continuing packet's ct fields are cleared
(ovs-actions(7)).

Not modelled: packet-outs (recorded only), meters (recorded, never rate-limit),
timeouts, counters, groups, TCP state (any packet of a committed connection is
``+est``), fragments, ct_mark/ct_label, checksums, TTLs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from itertools import chain
from typing import Any, NamedTuple, Protocol

from vnet64.controller.flows import (
    CT, CT_DNAT, CT_EST, CT_INV, CT_NEW, CT_REL, CT_RPL, CT_SNAT, CT_TRK, ETH_ARP, ETH_IPV4,
    ETH_IPV6, FIELDS, OFPP_CONTROLLER, OFPP_IN_PORT, OFPP_TABLE, Batch, CheckPktLarger,
    Controller, DeleteFlows, DeleteStrict, Flow, FlowError, MeterMod, Move, Nat, Output,
    Learn, Match, PacketOut, Resubmit, SetField, TableMap, TlvMap, _fmt, ct_state,
    ct_state_str)

MAX_DEPTH = 64  # nested resubmit/ct(table=) before the simulation calls it a loop


class SimError(FlowError):
    """A flow the simulation (like OVS, or OpenFlow) refuses, or a trace that cannot go on."""


# ---------------------------------------------------------------------------
# Fields: canonical values, masks, prerequisites

EXTRA_FIELDS = {"icmp_id": (16, "int"),
                "pkt_len": (16, "int")}   # the frame's length with its Ethernet header (check_pkt_larger)
ZERO_DEFAULT = frozenset({"metadata", "pkt_mark", "tunnel_id", "tun_ipv4_src", "tun_ipv4_dst",
                          "tun_metadata0",
                          "vlan_vid", "ct_state", "ct_zone", "ct_mark",
                          *(f"reg{i}" for i in range(16))})
NOT_MASKABLE = frozenset({"in_port", "eth_type", "ip_proto", "ip_dscp", "nw_ttl", "icmpv4_type",
                          "icmpv4_code", "icmpv6_type", "icmpv6_code", "arp_op", "ct_zone",
                          "nd_reserved", "nd_options_type"})
READ_ONLY = frozenset({"eth_type", "ip_proto", "ipv6_exthdr", "tcp_flags", "ct_state", "ct_zone",
                       "ct_mark"})  # ct_mark: only inside ct(exec()), which flows.py lacks

_IP = ("eth_type", (ETH_IPV4, ETH_IPV6))
_V4 = ("eth_type", (ETH_IPV4,))
_V6 = ("eth_type", (ETH_IPV6,))
_ICMP6 = (_V6, ("ip_proto", (58,)))
_ND = _ICMP6 + (("icmpv6_code", (0,)),)
# ovs-fields(7) "Prerequisites"; an absent field counts as 0, as in OVS.
PREREQS: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {
    "ipv4_src": (_V4,), "ipv4_dst": (_V4,),
    "ipv6_src": (_V6,), "ipv6_dst": (_V6,), "ipv6_exthdr": (_V6,),
    "ip_proto": (_IP,), "ip_dscp": (_IP,), "nw_ttl": (_IP,),
    **{f: (_IP, ("ip_proto", (6,))) for f in ("tcp_src", "tcp_dst", "tcp_flags")},
    **{f: (_IP, ("ip_proto", (17,))) for f in ("udp_src", "udp_dst")},
    **{f: (_V4, ("ip_proto", (1,))) for f in ("icmpv4_type", "icmpv4_code")},
    **{f: _ICMP6 for f in ("icmpv6_type", "icmpv6_code")},
    **{f: _ND + (("icmpv6_type", (135, 136)),) for f in
       ("ipv6_nd_target", "nd_reserved", "nd_options_type")},
    "ipv6_nd_sll": _ND + (("icmpv6_type", (135,)),),
    "ipv6_nd_tll": _ND + (("icmpv6_type", (136,)),),
    **{f: (("eth_type", (ETH_ARP, 0x8035)),) for f in
       ("arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha")},
}


def _spec(name: str) -> tuple[int, str]:
    base = name.removeprefix("inner_")
    spec = FIELDS.get(base) or EXTRA_FIELDS.get(base)
    if spec is None:
        raise SimError(f"unknown packet field {name!r}")
    return spec


def _to_int(name: str, value: Any) -> int:
    bits, kind = _spec(name)
    if kind == "mac":
        n = int(str(value).replace(":", ""), 16)
    elif kind == "ipv4":
        n = int(IPv4Address(value))
    elif kind == "ipv6":
        n = int(IPv6Address(value))
    else:
        n = int(value)
    if not 0 <= n < 1 << bits:
        raise SimError(f"{name}={value!r} does not fit in {bits} bits")
    return n


def _from_int(name: str, n: int) -> Any:
    kind = _spec(name)[1]
    if kind == "mac":
        return ":".join(f"{n:012x}"[i:i + 2] for i in range(0, 12, 2))
    if kind == "ipv4":
        return str(IPv4Address(n))
    if kind == "ipv6":
        return str(IPv6Address(n))
    return n


def _canon(name: str, value: Any) -> Any:
    return _from_int(name, _to_int(name, value))


def _prereq_error(name: str, values: Mapping[str, int]) -> str | None:
    for dep, allowed in PREREQS.get(name, ()):
        if values.get(dep, 0) not in allowed:
            want = " or ".join(f"{dep}={_fmt(dep, a)}" for a in allowed)
            return f"{name} needs {want}"
    return None


def _valid_ct(s: int) -> bool:  # ovs-fields(7), "Connection Tracking State Field"
    if not s & CT_TRK:
        return s == 0
    if s & CT_INV:
        return s == CT_TRK | CT_INV
    return not (s & CT_NEW and s & (CT_EST | CT_RPL))


VALID_CT_STATES = tuple(s for s in range(256) if _valid_ct(s))


def parse_ct_state(state: str | int) -> int:
    """``"+trk+est"`` -> the ct_state bits; checks that some packet can have it."""
    if isinstance(state, str):
        flags = re.findall(r"[+-][a-z]+", state)
        if "".join(flags) != state:
            raise SimError(f"bad ct_state {state!r}")
        state = ct_state(*flags)[0]
    if state not in VALID_CT_STATES:
        raise SimError(f"no packet has ct_state {ct_state_str(state, state)!r}")
    return state


def normalize_packet(packet: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical values, known fields only, header prerequisites met."""
    pkt = {name: _canon(name, value) for name, value in packet.items()}
    exact = {k: v for k, v in pkt.items() if isinstance(v, int)}
    for name in pkt:
        why = _prereq_error(name, exact)
        if why:
            raise SimError(f"packet {_fmt_packet(pkt)}: {why}")
    parse_ct_state(pkt.get("ct_state", 0))
    return pkt


def _fmt_packet(pkt: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={_fmt(k, v) if k != 'ct_state' else ct_state_str(v, v) or '0'}"
                    for k, v in pkt.items())


def _compile(flow: Flow) -> dict[str, tuple[int, int]]:
    """The match as field -> (value, mask) ints; refuses what OVS refuses."""
    out = {}
    for name, v in flow.match.items:
        full = (1 << FIELDS[name][0]) - 1
        try:
            value, mask = (_to_int(name, v[0]), _to_int(name, v[1])) if isinstance(v, tuple) \
                else (_to_int(name, v), full)
        except ValueError as e:
            _refuse(flow, str(e))
        if mask != full and name in NOT_MASKABLE:
            _refuse(flow, f"{name} cannot be masked")
        if value & ~mask:
            _refuse(flow, f"{name} value has bits outside its mask")
        out[name] = (value, mask)
    return out


def _refuse(flow: Flow, why: str) -> None:
    raise SimError(f"{flow.ofctl()}: {why}")


def _overlap(a: Mapping[str, tuple[int, int]], b: Mapping[str, tuple[int, int]]) -> bool:
    """Could one packet match both? Fields only one side matches never separate them."""
    for name in a.keys() & b.keys():
        (va, ma), (vb, mb) = a[name], b[name]
        if name == "ct_state":
            if not any(s & ma == va and s & mb == vb for s in VALID_CT_STATES):
                return False
        elif (va ^ vb) & ma & mb:
            return False
    return True


# ---------------------------------------------------------------------------
# Conntrack oracles


class CtResult(NamedTuple):
    state: int             # ct_state bits
    packet: dict           # the packet after NAT


class CtOracle(Protocol):
    def ct(self, packet: dict, zone: int, commit: bool, nat: Nat | None) -> CtResult: ...


class FixedCt:
    """The same answer for every packet in a zone, no NAT: ``FixedCt({5: "+trk+est"})``."""

    def __init__(self, states: Mapping[int, str | int]):
        self.states = {zone: parse_ct_state(s) for zone, s in states.items()}

    def ct(self, packet: dict, zone: int, commit: bool, nat: Nat | None) -> CtResult:
        if zone not in self.states:
            raise SimError(f"FixedCt has no state for zone {zone} "
                                 f"(only {sorted(self.states)})")
        return CtResult(self.states[zone], dict(packet))


_ECHO = {8: 0, 0: 8, 128: 129, 129: 128}   # echo request <-> reply, ICMPv4 and ICMPv6
_ICMP_ERRORS = {1: {3, 4, 5, 11, 12}, 58: {1, 2, 3, 4}}


class Key(NamedTuple):
    """A connection tuple as one direction sees it; echo id in sport and dport."""

    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    echo: int | None = None  # ICMP echo type

    def reverse(self) -> Key:
        return Key(self.proto, self.dst, self.dport, self.src, self.sport, _ECHO.get(self.echo))


@dataclass(frozen=True)
class Conn:
    zone: int
    orig: Key   # the first packet, as it came in
    nat: Key    # the first packet after NAT (== orig without NAT)
    kind: int   # CT_SNAT, CT_DNAT or 0

    @property
    def reply(self) -> Key:
        return self.nat.reverse()


def _family(pkt: Mapping[str, Any]) -> str:
    return "ipv4" if pkt.get("eth_type") == ETH_IPV4 else "ipv6"


def _l4(proto: int) -> str | None:
    return {6: "tcp", 17: "udp"}.get(proto)


def _get(pkt: Mapping[str, Any], name: str) -> Any:
    if name not in pkt:
        raise SimError(f"conntrack needs {name} in packet {_fmt_packet(pkt)}")
    return pkt[name]


def _key(pkt: Mapping[str, Any], pre: str = "") -> Key | None:
    """The packet's tuple (``pre="inner_"``: the embedded header's); None: not trackable."""
    fam, proto = _family(pkt), _get(pkt, pre + "ip_proto")
    src, dst = _get(pkt, f"{pre}{fam}_src"), _get(pkt, f"{pre}{fam}_dst")
    if _l4(proto):
        return Key(proto, src, _get(pkt, f"{pre}{_l4(proto)}_src"),
                   dst, _get(pkt, f"{pre}{_l4(proto)}_dst"))
    if proto in _ICMP_ERRORS:
        kind = _get(pkt, pre + ("icmpv4_type" if proto == 1 else "icmpv6_type"))
        if kind not in _ECHO:
            return None
        echo_id = _get(pkt, pre + "icmp_id")
        return Key(proto, src, echo_id, dst, echo_id, kind)
    return Key(proto, src, 0, dst, 0)


def _write(pkt: dict, key: Key, pre: str = "") -> None:
    fam = _family(pkt)
    pkt[f"{pre}{fam}_src"], pkt[f"{pre}{fam}_dst"] = key.src, key.dst
    if _l4(key.proto):
        pkt[f"{pre}{_l4(key.proto)}_src"] = key.sport
        pkt[f"{pre}{_l4(key.proto)}_dst"] = key.dport
    elif key.echo is not None:
        pkt[pre + "icmp_id"] = key.sport


class SimpleConntrack:
    """Connections per zone, NAT included; what the userspace datapath does, simplified.

    * unknown tuple -> ``+trk+new``; with ``commit`` it is remembered, with its NAT
      (``nat(src=...)`` / ``nat(dst=...)`` pick the lowest free address and port; no port
      range = keep the port, else an ephemeral one). Without commit nothing is NATed.
    * original direction of a committed connection -> ``+trk+est``; reply direction
      (the NATed tuple, reversed) -> ``+trk+est+rpl``. ``+snat``/``+dnat`` and the
      rewrite only if the ct action has ``nat`` (any form) and the connection is NATed.
    * ICMP error whose ``inner_*`` header belongs to a connection -> ``+trk+rel``
      (+rpl), NAT applied to the outer addresses and the inner header; else ``+trk+inv``.
      ICMP types other than echo and errors -> ``+trk+inv``.
    * no free address/port (or the reply tuple is taken) -> ``+trk+new``, not NATed,
      not committed: OVS fails open.
    * echo: the id is the "port"; SNAT keeps it (as userspace OVS does).
    """

    def __init__(self) -> None:
        self.zones: dict[int, dict[Key, tuple[Conn, bool]]] = {}

    def connections(self, zone: int) -> list[Conn]:
        return list(dict.fromkeys(c for c, _ in self.zones.get(zone, {}).values()))

    def ct(self, packet: dict, zone: int, commit: bool, nat: Nat | None) -> CtResult:
        table, pkt = self.zones.setdefault(zone, {}), dict(packet)
        proto = _get(pkt, "ip_proto")
        icmp_type = pkt.get("icmpv4_type" if proto == 1 else "icmpv6_type")
        if icmp_type in _ICMP_ERRORS.get(proto, ()):
            inner = _key(pkt, "inner_")
            hit = table.get(inner.reverse()) if inner else None
            if hit is None:
                return CtResult(CT_TRK | CT_INV, pkt)
            conn, reply = hit
            state = CT_TRK | CT_REL | (CT_RPL if reply else 0)
            if nat is not None and conn.kind:
                seen, out = self._direction(conn, reply)
                fam = _family(pkt)
                if seen.src != out.src:
                    pkt[f"{fam}_src"] = out.src
                if seen.dst != out.dst:
                    pkt[f"{fam}_dst"] = out.dst
                _write(pkt, out.reverse(), "inner_")
                state |= conn.kind
            return CtResult(state, pkt)
        key = _key(pkt)
        if key is None:
            return CtResult(CT_TRK | CT_INV, pkt)
        if key in table:
            conn, reply = table[key]
            state = CT_TRK | CT_EST | (CT_RPL if reply else 0)
            if nat is not None and conn.kind:
                _write(pkt, self._direction(conn, reply)[1])
                state |= conn.kind
            return CtResult(state, pkt)
        if not commit:
            return CtResult(CT_TRK | CT_NEW, pkt)
        kind = {"src": CT_SNAT, "dst": CT_DNAT}.get(nat.kind) if nat else 0
        out = next((c for c in self._candidates(key, nat) if c.reverse() not in table), None)
        if out is None:
            return CtResult(CT_TRK | CT_NEW, pkt)  # exhausted: fail open, no +snat
        conn = Conn(zone, key, out, kind or 0)
        table[key], table[conn.reply] = (conn, False), (conn, True)
        _write(pkt, out)
        return CtResult(CT_TRK | CT_NEW | conn.kind, pkt)

    @staticmethod
    def _direction(conn: Conn, reply: bool) -> tuple[Key, Key]:
        """(tuple as seen, tuple after NAT) for one direction of a connection."""
        return (conn.reply, conn.orig.reverse()) if reply else (conn.orig, conn.nat)

    @staticmethod
    def _candidates(key: Key, nat: Nat | None) -> Iterator[Key]:
        if nat is None or nat.kind is None:
            yield key
            return
        if nat.kind not in ("src", "dst") or not nat.addr_min:
            raise SimError(f"bad NAT {nat.ofctl()}")
        lo, hi = ip_address(nat.addr_min), ip_address(nat.addr_max or nat.addr_min)
        if lo.version != ip_address(key.src).version:
            raise SimError(f"{nat.ofctl()} on an IPv{ip_address(key.src).version} packet")
        src = nat.kind == "src"
        port = key.sport if src else key.dport
        ranged = nat.port_min is not None and _l4(key.proto)
        for n in range(int(lo), int(hi) + 1):
            addr = str(type(lo)(n))
            if ranged:
                ports: Iterable[int] = range(nat.port_min, (nat.port_max or nat.port_min) + 1)
            elif _l4(key.proto):   # keep the port, else fall back to ephemeral ones
                ports = chain([port], (p for p in range(1024, 65536) if p != port))
            else:
                ports = [port]
            for p in ports:
                yield key._replace(src=addr, sport=p) if src else key._replace(dst=addr, dport=p)


# ---------------------------------------------------------------------------
# The trace


class Step(NamedTuple):
    stage: str
    priority: int | None   # None: table miss
    cookie: int | None
    flow: str              # Flow.ofctl(), or "table miss: drop"


@dataclass
class Trace:
    """What one packet did: flows hit, ct answers, outputs, punts, drops."""

    in_port: int
    packet: dict
    steps: list[Step] = field(default_factory=list)
    outputs: list[tuple[int, dict]] = field(default_factory=list)
    punts: list[tuple[str, dict]] = field(default_factory=list)
    drops: list[tuple[str, str]] = field(default_factory=list)   # (stage, "miss" | "drop")
    cts: list[tuple[int, int, dict]] = field(default_factory=list)  # (zone, state, packet)
    learned: list[Flow] = field(default_factory=list)   # flows ``learn`` added, in order
    lines: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> bool:
        """Nothing left the switch: no output, no punt."""
        return not self.outputs and not self.punts

    @property
    def dropped_at(self) -> str | None:
        if not self.dropped:
            return None
        return self.drops[-1][0] if self.drops else (self.steps[-1].stage if self.steps else None)

    def stages(self) -> list[str]:
        return [s.stage for s in self.steps]

    def ports(self) -> list[int]:
        return [port for port, _ in self.outputs]

    def is_output(self, port: int, **fields: Any) -> bool:
        """Output to ``port`` (with these field values, if given)?"""
        want = {k: _canon(k, v) for k, v in fields.items()}
        return any(p == port and all(pkt.get(k) == v for k, v in want.items())
                   for p, pkt in self.outputs)

    def output_packet(self, port: int) -> dict:
        """The one packet output to ``port``; AssertionError (with the trace) otherwise."""
        found = [pkt for p, pkt in self.outputs if p == port]
        if len(found) != 1:
            raise AssertionError(f"expected one output to port {port}, got {len(found)}\n{self}")
        return found[0]

    def _log(self, depth: int, text: str) -> None:
        self.lines.append("  " * (depth + 1) + text)

    def __str__(self) -> str:
        if self.dropped:
            result = f"dropped at {self.dropped_at}"
        else:
            result = ", ".join([f"output to {p}" for p in self.ports()] +
                               [f"punt from {s}" for s, _ in self.punts])
        return "\n".join([f"trace in_port={self.in_port}: {_fmt_packet(self.packet)}",
                          *self.lines, f"=> {result}"])


# ---------------------------------------------------------------------------
# The switch


@dataclass(frozen=True)
class _Entry:
    flow: Flow
    match: dict


class SimSwitch:
    """One bridge's flow tables, strict about what it accepts."""

    def __init__(self, tables: TableMap, conntrack: CtOracle | None = None):
        self.tables = tables
        self.conntrack: CtOracle = conntrack or SimpleConntrack()
        self.meters: dict[int, MeterMod] = {}
        self.tlv_map: dict[int, TlvMap] = {}     # tun_metadata<index> -> its Geneve option
        self.packet_outs: list[PacketOut] = []
        self._tables: dict[str, dict[tuple, _Entry]] = {s: {} for s, _ in tables.stages}

    # -- messages ------------------------------------------------------------

    def apply(self, messages: Batch | Iterable[Any] | Flow | DeleteFlows | MeterMod) -> None:
        """Install flows (an add), delete flows, record meters and packet-outs, in order."""
        if isinstance(messages, Batch):
            messages = messages.messages
        elif isinstance(messages, (Flow, DeleteFlows, DeleteStrict, MeterMod, PacketOut, TlvMap)):
            messages = (messages,)
        for msg in messages:
            if isinstance(msg, Flow):
                self._add(msg)
            elif isinstance(msg, DeleteFlows):
                if msg.table is not None:
                    self._stage(msg.table, f"DeleteFlows {msg}")
                for stage, table in self._tables.items():
                    if msg.table in (None, stage):
                        for key in [k for k, e in table.items()
                                    if (e.flow.cookie ^ msg.cookie) & msg.cookie_mask == 0]:
                            del table[key]
            elif isinstance(msg, DeleteStrict):   # no such flow: nothing happens, as in OpenFlow
                self._stage(msg.table, f"DeleteStrict {msg}")
                probe = Flow(msg.table, msg.priority, msg.match)
                self._tables[msg.table].pop((msg.priority, frozenset(_compile(probe).items())),
                                            None)
            elif isinstance(msg, MeterMod):
                self.meters[msg.meter_id] = msg
            elif isinstance(msg, TlvMap):
                old = self.tlv_map.get(msg.index)
                if old is None:
                    self.tlv_map[msg.index] = msg
                elif old != msg:   # OVS: NXTTMFC_ALREADY_MAPPED (and the flows would misread it)
                    raise SimError(f"tun_metadata{msg.index} is already mapped to {old.ofctl()}")
            elif isinstance(msg, PacketOut):
                self.packet_outs.append(msg)
            else:
                raise SimError(f"not a message: {msg!r}")

    def flows(self, table: str | None = None) -> list[Flow]:
        """Installed flows, pipeline order, highest priority first."""
        return [e.flow for s, _ in self.tables.stages if table in (None, s)
                for e in sorted(self._tables[s].values(), key=lambda e: -e.flow.priority)]

    def dump(self) -> str:
        return "\n".join(f.ofctl() for f in self.flows())

    def _stage(self, name: str, what: str) -> int:
        if name not in self.tables:
            raise SimError(f"{what}: table {name!r} is not a stage of the "
                                 f"{self.tables.role} pipeline "
                                 f"({', '.join(s for s, _ in self.tables.stages)})")
        return self.tables.id(name)

    def _add(self, flow: Flow) -> None:
        tid = self._stage(flow.table, flow.ofctl())
        if not 0 <= flow.priority <= 0xFFFF:
            _refuse(flow, "priority out of 0..65535")
        match = _compile(flow)
        exact = {k: v for k, (v, m) in match.items() if m == (1 << FIELDS[k][0]) - 1}
        for name in match:
            if why := _prereq_error(name, exact):
                _refuse(flow, why)
        for name in (*match, *(a.field for a in flow.actions if isinstance(a, SetField))):
            if name.startswith("tun_metadata") and int(name[12:]) not in self.tlv_map:
                _refuse(flow, f"{name} is not mapped to a Geneve option (send its TlvMap first)")
        if "ct_state" in match:
            v, m = match["ct_state"]
            if not any(s & m == v for s in VALID_CT_STATES):
                _refuse(flow, "no packet can have this ct_state (ovs-fields(7))")
        for action in flow.actions:
            self._check_action(flow, action, exact)
        if flow.goto is not None and self._stage(flow.goto, flow.ofctl()) <= tid:
            _refuse(flow, f"goto_table:{flow.goto} does not go forward")
        if flow.meter is not None and flow.meter not in self.meters:
            _refuse(flow, f"meter {flow.meter} does not exist (send its MeterMod first)")
        key = (flow.priority, frozenset(match.items()))
        table = self._tables[flow.table]
        for k, e in table.items():
            if k != key and e.flow.priority == flow.priority and _overlap(e.match, match):
                _refuse(flow, f"overlaps, at the same priority, {e.flow.ofctl()} "
                              "(a packet could hit either: OpenFlow leaves that undefined)")
        table[key] = _Entry(flow, match)   # OpenFlow add: same table/priority/match replaces

    def _check_action(self, flow: Flow, a: Any, exact: Mapping[str, int]) -> None:
        if isinstance(a, SetField):
            writes, reads = [a.field], [a.field]
            try:
                _to_int(a.field, a.value)
            except ValueError as e:
                _refuse(flow, str(e))
        elif isinstance(a, Move):
            writes, reads = [a.dst], [a.src, a.dst]
            for name, ofs in ((a.src, a.src_ofs), (a.dst, a.dst_ofs)):
                if a.n_bits < 1 or ofs < 0 or ofs + a.n_bits > FIELDS[name][0]:
                    _refuse(flow, f"{a.ofctl(self.tables)}: bits out of {name}")
        elif isinstance(a, Output):
            if a.port == OFPP_TABLE:
                _refuse(flow, "output:TABLE is only for packet-outs")
            return
        elif isinstance(a, Resubmit):
            self._stage(a.table, flow.ofctl())
            return
        elif isinstance(a, CT):
            if exact.get("eth_type") not in (ETH_IPV4, ETH_IPV6):
                _refuse(flow, "ct needs eth_type=0x800 or 0x86dd in the match")
            if not 0 <= a.zone <= 0xFFFF:
                _refuse(flow, f"ct zone {a.zone} out of 0..65535")
            if a.table is not None:
                self._stage(a.table, flow.ofctl())
            if a.nat is not None and a.nat.kind is not None:
                if a.nat.kind not in ("src", "dst") or not a.nat.addr_min:
                    _refuse(flow, f"bad {a.nat.ofctl()}")
                version = {ETH_IPV4: 4, ETH_IPV6: 6}[exact["eth_type"]]
                if any(ip_address(x).version != version
                       for x in (a.nat.addr_min, a.nat.addr_max) if x):
                    _refuse(flow, f"{a.nat.ofctl()} on IPv{version} packets")
            return
        elif isinstance(a, Controller):
            return
        elif isinstance(a, CheckPktLarger):
            writes, reads = [a.dst], [a.dst]
        elif isinstance(a, Learn):
            self._stage(a.table, flow.ofctl())
            writes = [dst for _, dst in a.load_from]
            reads = [src for _, src in (*a.match_from, *a.load_from)]
            learned = {} if a.eth_type is None else {"eth_type": a.eth_type}
            for name, _ in a.match_from:   # OVS: the learned match needs its prerequisites
                if why := _prereq_error(name, learned):
                    _refuse(flow, f"{a.ofctl(self.tables)}: the learned flow's {why}")
        else:
            _refuse(flow, f"unknown action {a!r}")
        for name in writes:
            if name in READ_ONLY:
                _refuse(flow, f"{name} is read-only")
        for name in reads:
            if why := _prereq_error(name, exact):
                _refuse(flow, f"{a.ofctl(self.tables)}: {why}")

    # -- packets -------------------------------------------------------------

    def trace(self, packet: Mapping[str, Any], in_port: int, ct: CtOracle | None = None,
              table: str | None = None) -> Trace:
        """Run ``packet`` (received on ``in_port``) through the pipeline from ``table``
        (default: the first stage). ``ct`` answers ct actions (default: this switch's
        ``SimpleConntrack``, which remembers connections across traces)."""
        pkt = normalize_packet(packet)
        if pkt.setdefault("in_port", in_port) != in_port:
            raise SimError(f"packet says in_port={pkt['in_port']}, trace says {in_port}")
        trace = Trace(in_port, dict(pkt))
        start = table or self.tables.stages[0][0]
        self._stage(start, "trace")
        self._run(start, pkt, trace, ct or self.conntrack, 0)
        return trace

    def _lookup(self, stage: str, pkt: Mapping[str, Any]) -> Flow | None:
        best = None
        for e in self._tables[stage].values():
            if (best is None or e.flow.priority > best.priority) and _hits(e.match, pkt):
                best = e.flow
        return best

    def _run(self, stage: str, pkt: dict, tr: Trace, ct: CtOracle, depth: int,
             resubmit: bool = False) -> None:
        if depth > MAX_DEPTH:
            raise SimError(f"more than {MAX_DEPTH} tables deep at {stage} "
                                 f"(a resubmit or ct loop?)\n{tr}")
        flow = self._lookup(stage, pkt)
        if flow is None and resubmit:   # ovs-actions(7): a resubmit that finds no flow does nothing
            tr.steps.append(Step(stage, None, None, "resubmit miss: nothing"))
            tr._log(depth, f"{stage}: resubmit miss: nothing")
            return
        if flow is None:
            tr.steps.append(Step(stage, None, None, "table miss: drop"))
            tr.drops.append((stage, "miss"))
            tr._log(depth, f"{stage}: table miss: drop")
            return
        tr.steps.append(Step(stage, flow.priority, flow.cookie, flow.ofctl()))
        tr._log(depth, f"{stage}: {flow.ofctl()}")
        for action in flow.actions:
            self._act(stage, action, pkt, tr, ct, depth)
        if flow.goto is not None:   # forward only, so no loop: same depth
            self._run(flow.goto, pkt, tr, ct, depth)
        elif not flow.actions:
            tr.drops.append((stage, "drop"))

    def _act(self, stage: str, a: Any, pkt: dict, tr: Trace, ct: CtOracle, depth: int) -> None:
        if isinstance(a, SetField):
            pkt[a.field] = _canon(a.field, a.value)
        elif isinstance(a, Move):
            bits = (1 << a.n_bits) - 1
            value = (_read(pkt, a.src) >> a.src_ofs) & bits
            old = _read(pkt, a.dst) & ~(bits << a.dst_ofs)
            pkt[a.dst] = _from_int(a.dst, old | value << a.dst_ofs)
        elif isinstance(a, Output) and a.port == OFPP_CONTROLLER or isinstance(a, Controller):
            tr.punts.append((stage, dict(pkt)))
            tr._log(depth + 1, f"punt to controller: {_fmt_packet(pkt)}")
        elif isinstance(a, Output):
            port = pkt["in_port"] if a.port == OFPP_IN_PORT else a.port
            if a.port == pkt["in_port"]:
                tr._log(depth + 1, f"output:{a.port} skipped: it is the in_port (use IN_PORT)")
            else:
                tr.outputs.append((port, dict(pkt)))
                tr._log(depth + 1, f"output {port}: {_fmt_packet(pkt)}")
        elif isinstance(a, Resubmit):   # same packet dict: what the table sets stays set
            self._run(a.table, pkt, tr, ct, depth + 1, resubmit=True)
        elif isinstance(a, Learn):
            learned = self._learned(a, pkt)
            self._add(learned)
            tr.learned.append(learned)
            tr._log(depth + 1, f"learn: {learned.ofctl()}")
        elif isinstance(a, CheckPktLarger):
            if "pkt_len" not in pkt:
                raise SimError(f"{a.ofctl(self.tables)} needs the packet's pkt_len")
            bit = 1 << a.ofs
            pkt[a.dst] = (_read(pkt, a.dst) & ~bit) | (bit if pkt["pkt_len"] > a.pkt_len else 0)
        elif isinstance(a, CT):
            state, after = ct.ct(dict(pkt), a.zone, a.commit, a.nat)
            after, state = normalize_packet(after), parse_ct_state(state)
            tr.cts.append((a.zone, state, dict(after)))
            changed = ", ".join(f"{k} {_fmt(k, pkt[k]) if k in pkt else '-'}->{_fmt(k, v)}"
                                for k, v in after.items() if pkt.get(k) != v)
            tr._log(depth + 1, f"{a.ofctl(self.tables)} -> {ct_state_str(state, state)}"
                               + (f" ({changed})" if changed else ""))
            if a.table is not None:   # the recirculated fork; registers are kept
                rec = {k: v for k, v in after.items() if k != "ct_mark"}
                self._run(a.table, {**rec, "ct_state": state, "ct_zone": a.zone},
                          tr, ct, depth + 1)
            else:                      # no fork: the datapath NATs the packet in place
                pkt.clear()
                pkt.update(after)
            for name in ("ct_state", "ct_zone", "ct_mark"):   # cleared: ovs-actions(7)
                pkt.pop(name, None)


    def _learned(self, a: Learn, pkt: Mapping[str, Any]) -> Flow:
        """The flow ``a`` learns from ``pkt``: what OVS's learn_execute() builds."""
        match = {} if a.eth_type is None else {"eth_type": a.eth_type}
        match.update((dst, _from_int(dst, _read(pkt, src))) for dst, src in a.match_from)
        acts = tuple(SetField(dst, _from_int(dst, _read(pkt, src))) for src, dst in a.load_from)
        return Flow(a.table, a.priority, Match.of(match), acts, cookie=a.cookie,
                    idle_timeout=a.idle_timeout, hard_timeout=a.hard_timeout)


def _read(pkt: Mapping[str, Any], name: str) -> int:
    if name in pkt:
        return _to_int(name, pkt[name])
    if name in ZERO_DEFAULT:
        return 0
    raise SimError(f"the packet has no {name}: {_fmt_packet(pkt)}")


def _hits(match: Mapping[str, tuple[int, int]], pkt: Mapping[str, Any]) -> bool:
    for name, (value, mask) in match.items():
        if name not in pkt and name not in ZERO_DEFAULT:
            return False
        if (_read(pkt, name) ^ value) & mask:
            return False
    return True
