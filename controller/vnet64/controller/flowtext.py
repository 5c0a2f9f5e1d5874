"""Read ``ovs-ofctl dump-flows`` text back into the controller's flow language.

The other direction of ``Flow.ofctl()``: the text of ``ovs-ofctl -O OpenFlow15
--no-names dump-flows br-int`` (Open vSwitch 3.1) becomes ``flows.Flow`` values, so a
tool can simulate what a switch really holds (``sim.py``, ``trace.py``) rather than what
the controller meant. For every flow the controller emits, the parsed ``Flow`` equals
(``==``) the one the controller built and sent:

- tables are named through the role's :class:`~vnet64.controller.flows.TableMap`
  (``table``, ``goto_table``, ``ct(table=)``, ``resubmit(,T)``);
- OVS's field names and shorthands (``ipv6``, ``tcp6``, ``nw_src``, ``tp_dst``,
  ``icmp_type``, ``tun_id``, NXM names in ``move``/``load``...) become the keys of
  ``flows.FIELDS``; a mask that covers every bit of its field is an exact value, an
  address prefix becomes the ``(address, netmask)`` pair ``Match.of`` makes of a network,
  ``ct_state`` flags the ``(value, mask)`` pair ``flows.ct_state()`` makes;
- ``CONTROLLER:N`` is a ``Controller(N)`` (the controller never outputs to
  ``OFPP_CONTROLLER`` otherwise), ``meter:N`` is ``Flow.meter``, ``goto_table:N``
  ``Flow.goto``;
- ``learn(...)`` is a ``Learn`` when it says what ``Learn`` holds (whole NXM fields, an
  ``eth_type`` constant, ``load:F[]->G[]``); a learned flow's ``load:0xac1f0102->
  NXM_NX_TUN_IPV4_DST[]`` (OpenFlow 1.0-1.4; OpenFlow 1.5 prints ``set_field:
  172.31.1.2->tun_dst``) is the ``SetField`` the simulator's learned flow holds.

What the flow language cannot say (a masked ``set_field``, a ``learn`` with partial
fields, constants other than ``eth_type`` or ``output:``, ``ct(exec(...))``,
a register zone, ``resubmit(PORT)``, a partial ``load``, a port by name without a map of
names...) is not guessed at: the line's ``Installed.flow`` is None and its ``error`` says
what could not be read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Mapping

from .flows import (CT, ETH_ARP, ETH_IPV4, ETH_IPV6, FIELDS, OFPP_CONTROLLER, OFPP_IN_PORT,
                    OFPP_LOCAL, OFPP_TABLE, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
                    NXM_NAMES as LEARN_NXM, CheckPktLarger, Controller, Flow, FlowError,
                    Learn, Match, Move, Nat, Output, Resubmit, SetField, TableMap,
                    canonical_ip, ct_state)

__all__ = ["Installed", "FlowTextError", "parse_dump", "parse_line"]


@dataclass(frozen=True)
class Installed:
    """One flow of a dump: its place and counters, its text, and what it is."""

    cookie: int
    table_id: int
    priority: int
    n_packets: int
    n_bytes: int
    text: str               # the dump line without its counters (duration, n_packets, ...)
    flow: Flow | None       # None if some part could not be parsed ...
    error: str | None       # ... and then what


class FlowTextError(ValueError):
    """A part of a dump line that the flow language cannot hold (or that is malformed)."""


OFP_DEFAULT_PRIORITY = 0x8000
COUNTERS = re.compile(r"(duration|n_packets|n_bytes|idle_age|hard_age)=[^,\s]+,?\s*")
FLAGS = frozenset({"send_flow_rem", "check_overlap", "reset_counts", "no_packet_counts",
                   "no_byte_counts", "no_readonly_table", "no_reset_counts"})
IGNORED_KEYS = frozenset({"duration", "n_packets", "n_bytes", "idle_age", "hard_age",
                          "importance", "out_port", "out_group"})

# ovs-fields(7) shorthands: (eth_type, ip_proto)
SHORTHANDS = {
    "ip": (ETH_IPV4, None), "ipv6": (ETH_IPV6, None), "arp": (ETH_ARP, None),
    "rarp": (0x8035, None),
    "icmp": (ETH_IPV4, PROTO_ICMP), "tcp": (ETH_IPV4, PROTO_TCP), "udp": (ETH_IPV4, PROTO_UDP),
    "sctp": (ETH_IPV4, 132),
    "icmp6": (ETH_IPV6, PROTO_ICMPV6), "tcp6": (ETH_IPV6, PROTO_TCP),
    "udp6": (ETH_IPV6, PROTO_UDP), "sctp6": (ETH_IPV6, 132),
}

# OVS's match names -> flows.FIELDS (names FIELDS has under the same spelling pass as they are)
MATCH_NAMES = {
    "dl_src": "eth_src", "dl_dst": "eth_dst", "dl_type": "eth_type",
    "nw_proto": "ip_proto", "ip_ttl": "nw_ttl",
    "nw_src": "ipv4_src", "nw_dst": "ipv4_dst", "ip_src": "ipv4_src", "ip_dst": "ipv4_dst",
    "tun_id": "tunnel_id", "tun_src": "tun_ipv4_src", "tun_dst": "tun_ipv4_dst",
    "nd_target": "ipv6_nd_target", "nd_sll": "ipv6_nd_sll", "nd_tll": "ipv6_nd_tll",
    "icmpv4_type": "icmpv4_type", "icmpv4_code": "icmpv4_code",
    "tcp_src": "tcp_src", "tcp_dst": "tcp_dst", "udp_src": "udp_src", "udp_dst": "udp_dst",
    "ct_zone": "ct_zone", "ct_mark": "ct_mark", "pkt_mark": "pkt_mark", "metadata": "metadata",
    "vlan_vid": "vlan_vid",
}

# NXM/OXM names (``move``, ``load``, ``check_pkt_larger``) -> flows.FIELDS
NXM_NAMES = {
    "NXM_OF_IN_PORT": "in_port", "OXM_OF_IN_PORT": "in_port",
    "NXM_OF_ETH_DST": "eth_dst", "NXM_OF_ETH_SRC": "eth_src", "NXM_OF_ETH_TYPE": "eth_type",
    "NXM_OF_IP_PROTO": "ip_proto", "NXM_NX_IP_TTL": "nw_ttl",
    "NXM_OF_IP_SRC": "ipv4_src", "NXM_OF_IP_DST": "ipv4_dst",
    "NXM_OF_TCP_SRC": "tcp_src", "NXM_OF_TCP_DST": "tcp_dst",
    "NXM_OF_UDP_SRC": "udp_src", "NXM_OF_UDP_DST": "udp_dst",
    "NXM_OF_ICMP_TYPE": "icmpv4_type", "NXM_OF_ICMP_CODE": "icmpv4_code",
    "NXM_NX_ICMPV6_TYPE": "icmpv6_type", "NXM_NX_ICMPV6_CODE": "icmpv6_code",
    "NXM_OF_ARP_OP": "arp_op", "NXM_OF_ARP_SPA": "arp_spa", "NXM_OF_ARP_TPA": "arp_tpa",
    "NXM_NX_ARP_SHA": "arp_sha", "NXM_NX_ARP_THA": "arp_tha",
    "NXM_NX_IPV6_SRC": "ipv6_src", "NXM_NX_IPV6_DST": "ipv6_dst",
    "NXM_NX_ND_TARGET": "ipv6_nd_target", "NXM_NX_ND_SLL": "ipv6_nd_sll",
    "NXM_NX_ND_TLL": "ipv6_nd_tll",
    "ERICOXM_OF_ICMPV6_ND_RESERVED": "nd_reserved",
    "ERICOXM_OF_ICMPV6_ND_OPTIONS_TYPE": "nd_options_type",
    "NXM_NX_TUN_ID": "tunnel_id", "OXM_OF_TUNNEL_ID": "tunnel_id",
    "NXM_NX_TUN_IPV4_SRC": "tun_ipv4_src", "NXM_NX_TUN_IPV4_DST": "tun_ipv4_dst",
    "NXM_NX_TUN_METADATA0": "tun_metadata0",
    "NXM_NX_CT_STATE": "ct_state", "NXM_NX_CT_ZONE": "ct_zone", "NXM_NX_CT_MARK": "ct_mark",
    "NXM_NX_PKT_MARK": "pkt_mark", "OXM_OF_METADATA": "metadata",
    "OXM_OF_IP_DSCP": "ip_dscp", "OXM_OF_VLAN_VID": "vlan_vid",
    "OXM_OF_IPV6_EXTHDR": "ipv6_exthdr", "ONFOXM_ET_TCP_FLAGS": "tcp_flags",
    "NXM_NX_TCP_FLAGS": "tcp_flags",
    **{f"NXM_NX_REG{i}": f"reg{i}" for i in range(16)},
}

# OVS's names of ``set_field`` targets that FIELDS spells otherwise
SET_NAMES = {**MATCH_NAMES, "icmp_type": "icmpv4_type", "icmp_code": "icmpv4_code"}

SPECIAL_PORTS = {"IN_PORT": OFPP_IN_PORT, "TABLE": OFPP_TABLE, "LOCAL": OFPP_LOCAL,
                 "CONTROLLER": OFPP_CONTROLLER, "ANY": 0xFFFFFFFF, "NONE": 0xFFFFFFFF}
CT_FLAG = re.compile(r"([+-])([a-z]+)")


# ---------------------------------------------------------------------------
# Lines


def parse_dump(text: str, tables: TableMap, ports: Mapping[str, int] | None = None) -> list[Installed]:
    """Every flow of a dump-flows reply, in its order (header and blank lines skipped).

    ``ports``: port name -> OpenFlow number, for a dump made with ``--names`` (numbers
    are read without it)."""
    return [i for i in (parse_line(line, tables, ports) for line in text.splitlines()) if i is not None]


def parse_line(line: str, tables: TableMap, ports: Mapping[str, int] | None = None) -> Installed | None:
    """One line of a dump; None for what is no flow (the ``OFPST_FLOW reply`` header, a
    blank line). A flow the flow language cannot hold comes back with ``flow`` None and
    ``error`` set (the counters and the place are still read)."""
    line = line.strip()
    if not line or "actions=" not in line:
        return None
    head, _, actions = line.partition(" actions=")
    if not _:
        head, _, actions = line.partition("actions=")
    text = COUNTERS.sub("", line).strip()
    items = [t for t in re.split(r"[,\s]+", head) if t]
    header: dict[str, str] = {}
    flags: set[str] = set()
    fields: list[tuple[str, str | None]] = []
    for item in items:
        key, eq, value = item.partition("=")
        if key in ("cookie", "table", "priority", "idle_timeout", "hard_timeout") or key in IGNORED_KEYS:
            header[key] = value
        elif not eq and key in FLAGS:
            flags.add(key)
        else:
            fields.append((key, value if eq else None))
    try:
        cookie = int(header.get("cookie", "0").split("/")[0], 0)
        table_id = _table_id(tables, header.get("table", "0"))
        priority = int(header.get("priority", str(OFP_DEFAULT_PRIORITY)))
        n_packets = int(header.get("n_packets", "0"))
        n_bytes = int(header.get("n_bytes", "0"))
    except ValueError as e:
        return Installed(0, 0, 0, 0, 0, text, None, f"bad header: {e}")
    try:
        flow = _flow(tables, table_id, priority, cookie, header, flags, fields, actions, ports)
        error = None
    except (FlowTextError, FlowError, ValueError) as e:
        flow, error = None, str(e)
    return Installed(cookie, table_id, priority, n_packets, n_bytes, text, flow, error)


def _flow(tables: TableMap, table_id: int, priority: int, cookie: int, header: Mapping[str, str],
          flags: set[str], fields: list[tuple[str, str | None]], actions: str,
          ports: Mapping[str, int] | None) -> Flow:
    match = _match(fields, ports)
    acts, goto, meter = _actions(actions, tables, match, ports)
    return Flow(_table(tables, table_id), priority, Match.of(match), tuple(acts), goto=goto,
                meter=meter, cookie=cookie, idle_timeout=int(header.get("idle_timeout", "0")),
                hard_timeout=int(header.get("hard_timeout", "0")),
                send_flow_rem="send_flow_rem" in flags)


def _table(tables: TableMap, tid: int | str) -> str:
    """The stage name of a table number (or of a name OVS printed, ``table="route"``)."""
    text = str(tid)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not text.isdigit():
        if text in tables:
            return text
        raise FlowTextError(f"table {tid} is not a stage of the {tables.role} pipeline")
    try:
        return tables.name(int(text))
    except FlowError as e:
        raise FlowTextError(str(e)) from None


def _table_id(tables: TableMap, tid: str) -> int:
    text = tid[1:-1] if len(tid) >= 2 and tid[0] == tid[-1] == '"' else tid
    if text.isdigit():
        return int(text)
    try:
        return tables.id(text)
    except FlowError as e:
        raise FlowTextError(str(e)) from None


# ---------------------------------------------------------------------------
# Matches


def _match(fields: list[tuple[str, str | None]], ports: Mapping[str, int] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # shorthands first: tp_src/icmp_type read eth_type and ip_proto, wherever they are
    for key, value in fields:
        if value is None:
            if key not in SHORTHANDS:
                raise FlowTextError(f"unknown match {key!r}")
            eth_type, proto = SHORTHANDS[key]
            out["eth_type"] = eth_type
            if proto is not None:
                out["ip_proto"] = proto
    for key, value in fields:
        if key in ("dl_type", "eth_type", "nw_proto", "ip_proto") and value is not None:
            out[_match_name(key, out)] = _value(_match_name(key, out), value)
    for key, value in fields:
        if value is None or key in ("dl_type", "eth_type", "nw_proto", "ip_proto"):
            continue
        if key == "in_port":
            out["in_port"] = _port(value, ports)
            continue
        if key == "ct_state":
            out["ct_state"] = _ct_state(value)
            continue
        if key == "nw_tos":
            tos = int(value, 0)
            if tos & 3:
                raise FlowTextError(f"nw_tos={value}: ECN bits cannot be matched as ip_dscp")
            out["ip_dscp"] = tos >> 2
            continue
        name = _match_name(key, out)
        out[name] = _value(name, value)
    return out


def _match_name(key: str, seen: Mapping[str, Any]) -> str:
    if key in ("tp_src", "tp_dst"):
        proto = {PROTO_TCP: "tcp", PROTO_UDP: "udp"}.get(seen.get("ip_proto"))
        if proto is None:
            raise FlowTextError(f"{key} without tcp or udp (ip_proto={seen.get('ip_proto')})")
        return f"{proto}_{key[3:]}"
    if key in ("icmp_type", "icmp_code"):    # OVS prints these for ICMPv6 too
        version = {ETH_IPV4: "icmpv4", ETH_IPV6: "icmpv6"}.get(seen.get("eth_type"))
        if version is None:
            raise FlowTextError(f"{key} without icmp or icmp6")
        return f"{version}_{key[5:]}"
    name = MATCH_NAMES.get(key, key)
    if name not in FIELDS:
        raise FlowTextError(f"unknown match field {key!r}")
    return name


def _value(name: str, text: str) -> Any:
    """A match value: exact, or (value, mask) when the mask leaves bits out."""
    bits, kind = FIELDS[name]
    full = (1 << bits) - 1
    value, slash, mask = text.partition("/")
    if kind == "ipv4" or kind == "ipv6":
        addr = canonical_ip(value)
        if not slash:
            return addr
        net_cls, addr_cls = (IPv4Network, IPv4Address) if kind == "ipv4" else (IPv6Network, IPv6Address)
        if mask.isdigit():
            net = net_cls(f"{addr}/{mask}", strict=False)
            m = int(net.netmask)
        else:
            m = int(addr_cls(mask))
        if m == full:
            return addr
        return (canonical_ip(addr_cls(int(addr_cls(addr)) & m)), canonical_ip(addr_cls(m)))
    if kind == "mac":
        v = _mac(value)
        if not slash:
            return v
        m = _mac(mask)
        return v if m == "ff:ff:ff:ff:ff:ff" else (_mac_and(v, m), m)
    v = int(value, 0)
    if not slash:
        return v
    m = int(mask, 0)
    return v if m == full else (v & m, m)


def _mac(text: str) -> str:
    parts = text.split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise FlowTextError(f"not a MAC address: {text!r}")
    return ":".join(f"{int(p, 16):02x}" for p in parts)


def _mac_and(value: str, mask: str) -> str:
    n = int(value.replace(":", ""), 16) & int(mask.replace(":", ""), 16)
    return ":".join(f"{n:012x}"[i:i + 2] for i in range(0, 12, 2))


def _ct_state(text: str) -> tuple[int, int]:
    if text.startswith("0x") or text.isdigit():
        value, _, mask = text.partition("/")
        v = int(value, 0)
        return (v, int(mask, 0) if mask else 0xFF)
    flags = CT_FLAG.findall(text)
    if "".join(s + n for s, n in flags) != text:
        raise FlowTextError(f"bad ct_state {text!r}")
    return ct_state(*(s + n for s, n in flags))


def _port(text: str, ports: Mapping[str, int] | None) -> int:
    if text.isdigit():
        return int(text)
    if text.upper() in SPECIAL_PORTS:
        return SPECIAL_PORTS[text.upper()]
    name = text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    if ports is not None and name in ports:
        return ports[name]
    raise FlowTextError(f"port {text} is a name (dump with --no-names, or give the port map)")


# ---------------------------------------------------------------------------
# Actions


def split_top(text: str, sep: str = ",") -> list[str]:
    """``text`` split at ``sep`` outside parentheses and brackets."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [p.strip() for p in out if p.strip()]


def _actions(text: str, tables: TableMap, match: Mapping[str, Any],
             ports: Mapping[str, int] | None) -> tuple[list, str | None, int | None]:
    acts: list = []
    goto = meter = None
    for a in split_top(text.strip()):
        if a == "drop":
            continue
        if a.startswith("meter:"):
            meter = int(a[6:])
        elif a.startswith("goto_table:"):
            goto = _table(tables, a[11:])
        else:
            acts.append(_action(a, tables, match, ports))
    return acts, goto, meter


def _action(a: str, tables: TableMap, match: Mapping[str, Any], ports: Mapping[str, int] | None):
    head = re.match(r"[A-Za-z_0-9]+", a)
    word = head.group(0) if head else ""
    rest = a[len(word):]
    if word.upper() == "CONTROLLER" and rest.startswith(":"):
        return Controller(int(rest[1:]))
    if word == "controller":
        return _controller(rest)
    if word == "output" and rest.startswith(":"):
        return _output(rest[1:], ports)
    if word == "output" and rest.startswith("("):
        inner = dict(_kv(p) for p in split_top(rest[1:-1]))
        if set(inner) != {"port"}:
            raise FlowTextError(f"unknown action {a!r}")
        return _output(inner["port"], ports)
    if not rest and (word.isdigit() or word.upper() in SPECIAL_PORTS):   # a bare port
        return _output(word, ports)
    if word == "set_field" and rest.startswith(":"):
        value, arrow, target = rest[1:].rpartition("->")
        if not arrow:
            raise FlowTextError(f"bad action {a!r}")
        return _set_field(value, _set_name(target, match), a)
    if word == "load" and rest.startswith(":"):
        value, arrow, target = rest[1:].rpartition("->")
        name, ofs, n_bits = _subfield(target)
        if ofs != 0 or n_bits != FIELDS[name][0]:
            raise FlowTextError(f"unknown action {a!r} (a load into part of {name})")
        return _set_field(_immediate(name, value), name, a)
    if word in ("mod_dl_src", "mod_dl_dst", "mod_nw_src", "mod_nw_dst", "mod_tp_src", "mod_tp_dst"):
        key = {"mod_dl_src": "dl_src", "mod_dl_dst": "dl_dst", "mod_nw_src": "nw_src",
               "mod_nw_dst": "nw_dst", "mod_tp_src": "tp_src", "mod_tp_dst": "tp_dst"}[word]
        return _set_field(rest[1:], _match_name(key, match), a)
    if word == "move" and rest.startswith(":"):
        src, arrow, dst = rest[1:].partition("->")
        if not arrow:
            raise FlowTextError(f"bad action {a!r}")
        (s, s_ofs, s_bits), (d, d_ofs, d_bits) = _subfield(src), _subfield(dst)
        if s_bits != d_bits:
            raise FlowTextError(f"{a!r}: {s_bits} bits moved into {d_bits}")
        return Move(s, d, s_bits, s_ofs, d_ofs)
    if word == "ct" and (not rest or rest.startswith("(")):
        return _ct(rest[1:-1] if rest else "", tables, a)
    if word == "resubmit":
        if rest.startswith("(,") and rest.endswith(")") and "," not in rest[2:-1]:
            return Resubmit(_table(tables, rest[2:-1]))
        raise FlowTextError(f"unknown action {a!r} (only resubmit(,TABLE))")
    if word == "check_pkt_larger":
        m = re.fullmatch(r"\((\d+)\)->(.+)", rest)
        if not m:
            raise FlowTextError(f"bad action {a!r}")
        name, ofs, n_bits = _subfield(m.group(2))
        if n_bits != 1:
            raise FlowTextError(f"{a!r}: check_pkt_larger writes one bit")
        return CheckPktLarger(int(m.group(1)), name, ofs)
    if word == "learn" and rest.startswith("(") and rest.endswith(")"):
        return _learn(rest[1:-1], tables, a)
    raise FlowTextError(f"unknown action {a!r}")


def _immediate(name: str, value: str) -> str:
    """A ``load:`` value as a match value of ``name``: OVS prints an address or a MAC
    loaded as one hex number (``load:0xac1f0102->NXM_NX_TUN_IPV4_DST[]``)."""
    kind = FIELDS[name][1]
    if kind not in ("ipv4", "ipv6", "mac") or not value.lower().startswith("0x"):
        return value
    n = int(value, 16)
    if kind == "ipv4":
        return str(IPv4Address(n))
    if kind == "ipv6":
        return str(IPv6Address(n))
    return ":".join(f"{n:012x}"[i:i + 2] for i in range(0, 12, 2))


# NXM name -> field, for the fields ``Learn.ofctl()`` can print
LEARN_FIELDS = {nxm: name for name, nxm in LEARN_NXM.items()}
LEARN_HEAD = ("idle_timeout", "hard_timeout", "priority", "cookie")


def _learn(args: str, tables: TableMap, action: str) -> Learn:
    """``learn(table=T,idle_timeout=N,hard_timeout=N,priority=N,cookie=C,eth_type=E,
    F[]=G[],F[],load:F[]->G[])`` as OVS 3.1 prints it (``learn_format``: priority left out
    when 32768, cookie when 0; ``F[]`` alone matches F on its own value)."""
    table, eth_type = None, None
    head = {"idle_timeout": 0, "hard_timeout": 0, "priority": OFP_DEFAULT_PRIORITY, "cookie": 0}
    match_from: list[tuple[str, str]] = []
    load_from: list[tuple[str, str]] = []

    def field(text: str) -> str:
        m = re.fullmatch(r"([A-Z0-9_]+)\[\]", text)
        if not m or m.group(1) not in LEARN_FIELDS:
            raise FlowTextError(f"unknown action {action!r} (learn's {text!r}: only a whole "
                                "field that Learn knows)")
        return LEARN_FIELDS[m.group(1)]

    for part in split_top(args):
        key, eq, value = part.partition("=")
        if key == "table" and eq:
            table = _table(tables, value)
        elif key in LEARN_HEAD and eq:
            head[key] = int(value, 0)
        elif key in ("eth_type", "dl_type") and eq:
            eth_type = int(value, 0)
        elif part.startswith("load:"):
            src, arrow, dst = part[5:].partition("->")
            if not arrow:
                raise FlowTextError(f"bad action {action!r}")
            load_from.append((field(src), field(dst)))
        elif eq:
            match_from.append((field(key), field(value)))
        else:
            name = field(part)
            match_from.append((name, name))
    if table is None:
        raise FlowTextError(f"bad action {action!r} (learn without a table)")
    return Learn(table, head["priority"], head["cookie"], idle_timeout=head["idle_timeout"],
                 hard_timeout=head["hard_timeout"], eth_type=eth_type,
                 match_from=tuple(match_from), load_from=tuple(load_from))


def _kv(part: str) -> tuple[str, str]:
    key, _, value = part.partition("=")
    return key.strip(), value.strip()


def _output(port: str, ports: Mapping[str, int] | None):
    n = _port(port, ports)
    return Controller() if n == OFPP_CONTROLLER else Output(n)


def _controller(rest: str) -> Controller:
    opts = dict(_kv(p) for p in split_top(rest[1:-1])) if rest.startswith("(") else {}
    if set(opts) - {"max_len", "reason"} or opts.get("reason", "action") != "action":
        raise FlowTextError(f"unknown action 'controller{rest}' (only max_len is held)")
    return Controller(int(opts.get("max_len", 0xFFFF)))


def _set_name(target: str, match: Mapping[str, Any]) -> str:
    if "[" in target or target.startswith(("NXM_", "OXM_", "ERICOXM_", "ONFOXM_")):
        name, ofs, n_bits = _subfield(target)
        if ofs != 0 or n_bits != FIELDS[name][0]:
            raise FlowTextError(f"set_field into part of {name}")
        return name
    if target in ("tp_src", "tp_dst", "icmp_type", "icmp_code"):
        return _match_name(target, match)
    name = SET_NAMES.get(target, target)
    if name not in FIELDS:
        raise FlowTextError(f"unknown set_field target {target!r}")
    return name


def _set_field(value: str, name: str, action: str) -> SetField:
    if "/" in value:
        v = _value(name, value)
        if isinstance(v, tuple):
            raise FlowTextError(f"unknown action {action!r} (a masked set_field)")
    else:
        v = _value(name, value)
    return SetField(name, v)


def _subfield(text: str) -> tuple[str, int, int]:
    """``NXM_NX_REG2[0..15]`` -> (field, offset, bits); ``[]`` is the whole field."""
    m = re.fullmatch(r"([A-Za-z_0-9]+)(?:\[(\d*)(?:\.\.(\d+))?\])?", text.strip())
    if not m:
        raise FlowTextError(f"bad field reference {text!r}")
    raw = m.group(1)
    name = NXM_NAMES.get(raw) or SET_NAMES.get(raw, raw)
    if name not in FIELDS:
        raise FlowTextError(f"unknown field {raw!r}")
    bits = FIELDS[name][0]
    if not m.group(2):
        if m.group(3):
            raise FlowTextError(f"bad field reference {text!r}")
        return name, 0, bits
    lo = int(m.group(2))
    hi = int(m.group(3)) if m.group(3) else lo
    if not 0 <= lo <= hi < bits:
        raise FlowTextError(f"{text!r}: bits out of {name}")
    return name, lo, hi - lo + 1


def _ct(args: str, tables: TableMap, action: str) -> CT:
    commit, zone, table, nat = False, 0, None, None
    for part in split_top(args):
        key, eq, value = part.partition("=")
        if part == "commit":
            commit = True
        elif key == "zone" and eq:
            if not value.isdigit():
                raise FlowTextError(f"unknown action {action!r} (a zone from a field)")
            zone = int(value)
        elif key == "table" and eq:
            table = _table(tables, value)
        elif part == "nat" or part.startswith("nat("):
            nat = _nat(part[4:-1] if part != "nat" else None, action)
        else:
            raise FlowTextError(f"unknown action {action!r} (ct's {part!r})")
    return CT(zone=zone, commit=commit, table=table, nat=nat)


def _nat(args: str | None, action: str) -> Nat:
    if args is None:
        return Nat()
    kind = addr_min = addr_max = port_min = port_max = None
    random = False
    for part in split_top(args):
        key, eq, value = part.partition("=")
        if key in ("src", "dst"):
            kind = key
            if eq:
                addr_min, addr_max, port_min, port_max = _nat_range(value, action)
        elif part == "random":
            random = True
        else:
            raise FlowTextError(f"unknown action {action!r} (nat's {part!r})")
    if kind is None:
        raise FlowTextError(f"bad action {action!r}")
    return Nat(kind, addr_min, addr_max, port_min, port_max, random)


def _nat_range(text: str, action: str) -> tuple:
    """``A[-B][:P[-Q]]``, IPv6 as ``[A]-[B]:P-Q`` when there are ports (else bare)."""
    ports = ""
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]+)\](?:-\[([^\]]+)\])?(?::(.+))?", text)
        if not m:
            raise FlowTextError(f"bad nat range in {action!r}")
        lo, hi, ports = m.group(1), m.group(2), m.group(3) or ""
    elif text.count(":") == 1 or ("." in text and ":" in text):   # IPv4 with ports
        addrs, _, ports = text.partition(":")
        lo, _, hi = addrs.partition("-")
    else:
        lo, _, hi = text.partition("-")
    addr_min = canonical_ip(lo)
    addr_max = canonical_ip(hi) if hi else None
    if addr_max == addr_min:
        addr_max = None
    port_min = port_max = None
    if ports:
        p_lo, _, p_hi = ports.partition("-")
        port_min = int(p_lo)
        # OVS prints one port for a range of one: the controller always sends both ends
        port_max = int(p_hi) if p_hi else port_min
    return addr_min, addr_max, port_min, port_max
