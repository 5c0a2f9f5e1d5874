"""The flow language (``flows.py``) as os-ken OpenFlow 1.3 messages, and back.

Pure functions, no I/O: role logic returns :mod:`flows` values with tables
given by name; :func:`to_messages` turns them into os-ken message objects for
one datapath (a connected ``Datapath`` or :func:`protocol` for tests), and
:func:`serialize` packs a list of them into write-sized byte strings, so that a
flow-mod and the packet-out that needs it leave in one write.

Going back, :func:`flow_entry` turns one entry of a flow-stats reply (the
resync dump a switch gives on connect) into a :class:`FlowEntry` whose
``match`` is a plain dict in the flow language's canonical form, so that
``flows.Match.of(entry.match) == flow.match`` for a flow this module installed.

Choices worth knowing:
- A ``MeterMod`` becomes ADD followed by MODIFY: whether or not the meter
  exists yet, it ends with the given rate (the ADD fails with METER_EXISTS on a
  switch that kept it; the app does not log that error). A meter must exist
  before a flow that uses it is added (OVS answers INVALID_METER), so return
  the ``MeterMod`` first.
- ``DeleteFlows`` matches every flow with the cookie under the mask
  (``out_port``/``out_group`` ANY; a plain OFPFlowMod would default to port 0).
- ``DeleteStrict`` removes the one flow at (table, priority, match), whatever
  its cookie.
- ``CT`` zones are immediate (``zone_src`` empty, the zone in
  ``zone_ofs_nbits``); a missing ``table`` means no recirculation.
- Speed: os-ken's ``OFPMatch`` converts every value twice on the way out
  (≈0.3 ms for an IPv6 flow-mod). Matches and actions are therefore encoded by
  os-ken once per distinct field value / action and cached as bytes
  (:class:`EncodedMatch`, :class:`EncodedAction`), and a flow-mod is packed from
  those bytes directly (:class:`PackedFlowMod`, no os-ken instruction objects); what
  reaches the switch is byte for byte what os-ken would have written (the unit tests
  compare).
- os-ken does not know OVS's ``nd_reserved``/``nd_options_type`` (OXM class
  0x1000, "ERICOXM"); importing this module imports :mod:`oxm_ext`, which
  teaches them to os-ken's OpenFlow 1.3 field table.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterable
from functools import cache, lru_cache
from ipaddress import ip_address
from typing import Any, NamedTuple

from os_ken.lib.pack_utils import msg_pack_into
from os_ken.ofproto import nicira_ext, ofproto_common, ofproto_parser, ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from . import (
    flows,
    oxm_ext,  # noqa: F401  (teaches os-ken OVS's nd_reserved / nd_options_type)
)
from .flows import (
    CT,
    CheckPktLarger,
    Controller,
    DeleteFlows,
    DeleteStrict,
    Flow,
    FlowError,
    Learn,
    Match,
    MeterMod,
    Move,
    Nat,
    Output,
    PacketOut,
    Resubmit,
    SetField,
    TableMap,
    TlvMap,
)

# NAT flags of NXAST_NAT (OVS include/openflow/nicira-ext.h); os-ken has no names for them.
NX_NAT_F_SRC = 1 << 0
NX_NAT_F_DST = 1 << 1
NX_NAT_F_PERSISTENT = 1 << 2
NX_NAT_F_PROTO_HASH = 1 << 3
NX_NAT_F_PROTO_RANDOM = 1 << 4

# Pre-serialised messages are joined into writes of about this size (DESIGN §4c:
# ≈64 KB writes were the fastest way to push many flow-mods).
WRITE_SIZE = 64 * 1024


def protocol() -> ofproto_protocol.ProtocolDesc:
    """A stand-in datapath (OpenFlow 1.3) for building messages without a switch."""
    return ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)


_PROTOCOL = protocol()


# ---------------------------------------------------------------------------
# flow language -> os-ken


def to_messages(datapath: Any, tables: TableMap | None, msgs: Iterable[flows.Message]) -> list:
    """One os-ken message per flow-language message (two for a ``MeterMod``), in order.

    ``tables`` names the role's stages; it may be None only when no message
    refers to a table by name.
    """
    out: list = []
    for m in msgs:
        if isinstance(m, Flow):
            out.append(flow_mod(datapath, tables, m))
        elif isinstance(m, PacketOut):
            out.append(packet_out(datapath, tables, m))
        elif isinstance(m, DeleteFlows):
            out.append(delete_flows(datapath, tables, m))
        elif isinstance(m, DeleteStrict):
            out.append(delete_strict(datapath, tables, m))
        elif isinstance(m, MeterMod):
            out.extend(meter_mods(datapath, m))
        elif isinstance(m, TlvMap):
            out.append(tlv_table_mod(datapath, m))
        else:
            raise FlowError(f"not a flow-language message: {m!r}")
    return out


def _table_id(tables: TableMap | None, name: str) -> int:
    if tables is None:
        raise FlowError(f"table {name!r} used without a table map")
    return tables.id(name)


CACHE_SIZE = flows.CACHE_SIZE   # distinct field values / actions kept encoded


def clear_caches() -> None:
    """Forget every cached encoding and normalisation, here and in ``flows``.

    What a fresh process starts with: ``benchmarks/controller_cost.py`` measures its
    cold case after it. Every ``functools`` cache of the two modules is found by its
    ``cache_clear``, so one added later is cleared too.
    """
    for module in (flows, sys.modules[__name__]):
        for obj in list(vars(module).values()):
            if callable(getattr(obj, "cache_clear", None)):
                obj.cache_clear()


@lru_cache(maxsize=CACHE_SIZE)
def _oxm_tlv(name: str, value: Any) -> tuple[Any, bytes]:
    """(os-ken's sort key, the OXM TLV) of one match field, encoded by os-ken."""
    kind = flows.FIELDS.get(name, (0, ""))[1]
    if kind in ("ipv4", "ipv6"):   # the common new value (a pair's addresses): skip netaddr
        family = socket.AF_INET if kind == "ipv4" else socket.AF_INET6
        key, header = _oxm_header(name, isinstance(value, tuple))
        if isinstance(value, tuple):
            v, m = (socket.inet_pton(family, x) for x in value)
            return key, header + bytes(a & b for a, b in zip(v, m)) + m
        return key, header + socket.inet_pton(family, value)
    return _oxm_tlv_by_os_ken(name, value)


@cache
def _oxm_header(name: str, masked: bool) -> tuple[Any, bytes]:
    """(sort key, the 4-byte OXM header) of an address field, as os-ken encodes it."""
    sample = {"ipv4": "0.0.0.0", "ipv6": "::"}[flows.FIELDS[name][1]]
    key, tlv = _oxm_tlv_by_os_ken(name, (sample, sample) if masked else sample)
    return key, tlv[:4]


def _oxm_tlv_by_os_ken(name: str, value: Any) -> tuple[Any, bytes]:
    n, v, m = ofp.oxm_from_user(*ofp.oxm_normalize_user(name, value))
    buf = bytearray()
    ofp.oxm_serialize(n, v, m, buf, 0)
    return (n[0] if isinstance(n, tuple) else n), bytes(buf)


# NXM fields with prerequisites: OVS checks a field's prerequisites against the fields
# before it in the match (OFPBMC_BAD_PREREQ otherwise), and os-ken orders by OXM type,
# which puts NXM (class 1) before OpenFlow basic (eth_type, ip_proto). These go last.
AFTER_PREREQS = frozenset({"nw_ttl"})


class EncodedMatch(ofpp.OFPMatch):
    """An ``OFPMatch`` whose TLVs come from the cache, in os-ken's order (by OXM type),
    except that ``AFTER_PREREQS`` fields come after the fields they depend on."""

    def __init__(self, items: Iterable[tuple[str, Any]] = ()):
        items = list(items)
        super().__init__(_ordered_fields=items)
        self._tlvs = match_tlvs(items)

    def serialize(self, buf: bytearray, offset: int) -> int:
        data = ofp_match(self._tlvs)
        msg_pack_into(f"{len(data)}s", buf, offset, data)
        self.length = 4 + len(self._tlvs)
        return len(data)


def match_tlvs(items: Iterable[tuple[str, Any]]) -> bytes:
    """The OXM TLVs of a match (cached per field value), in :class:`EncodedMatch`'s order."""
    tlvs = sorted((((name in AFTER_PREREQS, key), tlv) for name, value in items
                   for key, tlv in (_oxm_tlv(name, value),)), key=lambda t: t[0])
    return b"".join(t for _, t in tlvs)


def ofp_match(tlvs: bytes) -> bytes:
    """``ofp_match`` (OXM type, length, TLVs), padded to 8 bytes."""
    length = 4 + len(tlvs)
    return struct.pack("!HH", ofp.OFPMT_OXM, length) + tlvs + bytes(-length % 8)


class EncodedAction(ofpp.OFPAction):
    """An action already serialised by os-ken (what instructions and packet-outs need)."""

    def __init__(self, data: bytes, source: Any = None):
        ofpp.OFPActionHeader.__init__(self, int.from_bytes(data[:2], "big"), len(data))
        self.data, self.source = data, source

    def serialize(self, buf: bytearray, offset: int) -> None:
        msg_pack_into(f"{self.len}s", buf, offset, self.data)

    def __repr__(self) -> str:
        return f"EncodedAction({self.source!r})"


@lru_cache(maxsize=CACHE_SIZE)
def _encoded_action(a: flows.Action, tables: TableMap | None) -> EncodedAction:
    buf = bytearray()
    obj = action(_PROTOCOL, tables, a)
    obj.serialize(buf, 0)
    # obj.len counts trailing padding that os-ken leaves to the next write (NXActionCT
    # with an IPv6 NAT range writes 76 bytes and says 80)
    return EncodedAction(bytes(buf).ljust(obj.len, b"\0"), a)


def match(datapath: Any, m: Match) -> Any:
    """The match with os-ken's field names; values or (value, mask) pairs as they are."""
    return EncodedMatch(m.items)


def nat_action(datapath: Any, nat: Nat) -> Any:
    parser = datapath.ofproto_parser
    if nat.kind is None:
        if nat.addr_min or nat.port_min is not None or nat.random:
            raise FlowError("nat without src/dst takes no addresses, ports or flags")
        return parser.NXActionNAT(flags=0)
    if nat.kind == "src":
        flags = NX_NAT_F_SRC
    elif nat.kind == "dst":
        flags = NX_NAT_F_DST
    else:
        raise FlowError(f"nat kind must be 'src', 'dst' or None, not {nat.kind!r}")
    if nat.random:
        flags |= NX_NAT_F_PROTO_RANDOM
    kw: dict[str, Any] = {}
    if nat.addr_min:
        family = ip_address(nat.addr_min).version
        if nat.addr_max and ip_address(nat.addr_max).version != family:
            raise FlowError(f"nat range mixes IPv4 and IPv6: {nat.addr_min}-{nat.addr_max}")
        key = "range_ipv4" if family == 4 else "range_ipv6"
        kw[f"{key}_min"] = str(ip_address(nat.addr_min))
        if nat.addr_max:
            kw[f"{key}_max"] = str(ip_address(nat.addr_max))
    elif nat.addr_max:
        raise FlowError("nat addr_max without addr_min")
    if nat.port_min is not None:
        kw["range_proto_min"] = nat.port_min
        if nat.port_max is not None:
            kw["range_proto_max"] = nat.port_max
    elif nat.port_max is not None:
        raise FlowError("nat port_max without port_min")
    return parser.NXActionNAT(flags=flags, **kw)


def action(datapath: Any, tables: TableMap | None, a: flows.Action) -> Any:
    parser = datapath.ofproto_parser
    if isinstance(a, Output):
        if a.port == ofp.OFPP_CONTROLLER:
            return parser.OFPActionOutput(a.port, ofp.OFPCML_NO_BUFFER)
        return parser.OFPActionOutput(a.port)
    if isinstance(a, SetField):
        return parser.OFPActionSetField(**{a.field: a.value})
    if isinstance(a, Move):
        return parser.NXActionRegMove(src_field=a.src, dst_field=a.dst, n_bits=a.n_bits,
                                      src_ofs=a.src_ofs, dst_ofs=a.dst_ofs)
    if isinstance(a, CT):
        if not 0 <= a.zone <= 0xFFFF:
            raise FlowError(f"conntrack zone {a.zone} is not 0..65535")
        recirc = (_table_id(tables, a.table) if a.table is not None
                  else nicira_ext.NX_CT_RECIRC_NONE)
        nested = [nat_action(datapath, a.nat)] if a.nat is not None else []
        return parser.NXActionCT(flags=nicira_ext.NX_CT_F_COMMIT if a.commit else 0,
                                 zone_src="", zone_ofs_nbits=a.zone, recirc_table=recirc,
                                 alg=0, actions=nested)
    if isinstance(a, Controller):
        return parser.OFPActionOutput(ofp.OFPP_CONTROLLER, a.max_len)
    if isinstance(a, Resubmit):
        return parser.NXActionResubmitTable(table_id=_table_id(tables, a.table))
    if isinstance(a, CheckPktLarger):
        return EncodedAction(check_pkt_larger(a), a)
    if isinstance(a, Learn):
        return learn(datapath, tables, a)
    raise FlowError(f"not a flow-language action: {a!r}")


NXAST_CHECK_PKT_LARGER = 49
NXM_NX_REG_CLASS = 0x0001


def check_pkt_larger(a: CheckPktLarger) -> bytes:
    """NXAST_CHECK_PKT_LARGER, which os-ken does not know (OVS nx_action_check_pkt_larger:
    vendor header, subtype, pkt_len, offset, the destination's NXM header, zeros to 24)."""
    dst = (NXM_NX_REG_CLASS << 16) | (int(a.dst.removeprefix("reg")) << 9) | 4
    return struct.pack("!HHIHHHI6x", ofp.OFPAT_EXPERIMENTER, 24, ofproto_common.NX_EXPERIMENTER_ID,
                       NXAST_CHECK_PKT_LARGER, a.pkt_len, a.ofs, dst)


# flow-language field -> (os-ken's name of its NXM field, bits): what OVS puts in a learn
# spec (NXM headers, as ``ovs-ofctl`` encodes ``NXM_NX_IPV6_SRC[]``; NXM_OF_IN_PORT is 16 bits).
LEARN_FIELDS = {
    "ipv6_src": ("ipv6_src_nxm", 128), "ipv6_dst": ("ipv6_dst_nxm", 128),
    "ipv4_src": ("ipv4_src_nxm", 32), "ipv4_dst": ("ipv4_dst_nxm", 32),
    "tun_ipv4_src": ("tun_ipv4_src", 32), "tun_ipv4_dst": ("tun_ipv4_dst", 32),
    "eth_src": ("eth_src_nxm", 48), "eth_dst": ("eth_dst_nxm", 48),
    "in_port": ("in_port_nxm", 16), "tunnel_id": ("tunnel_id_nxm", 64),
    **{f"reg{i}": (f"reg{i}", 32) for i in range(16)},
}


def _learn_field(name: str) -> tuple[str, int]:
    try:
        return LEARN_FIELDS[name]
    except KeyError:
        raise FlowError(f"learn cannot use {name!r} (no NXM field known for it)") from None


def learn(datapath: Any, tables: TableMap | None, a: Learn) -> Any:
    """NXAST_LEARN with the specs in ``ovs-ofctl``'s order: the ``eth_type`` constant,
    then a match per ``match_from`` (the learned flow's ``field`` := this packet's
    ``src``), then a load per ``load_from``; byte for byte what OVS 3.1 encodes for
    ``Learn.ofctl()`` (``tests/unit/test_ofmsg.py``)."""
    parser = datapath.ofproto_parser
    specs = []
    if a.eth_type is not None:
        specs.append(parser.NXFlowSpecMatch(src=a.eth_type, dst=("eth_type_nxm", 0), n_bits=16))
    for dst, src in a.match_from:
        (d, bits), (s, _) = _learn_field(dst), _learn_field(src)
        specs.append(parser.NXFlowSpecMatch(src=(s, 0), dst=(d, 0), n_bits=bits))
    for src, dst in a.load_from:
        (s, bits), (d, _) = _learn_field(src), _learn_field(dst)
        specs.append(parser.NXFlowSpecLoad(src=(s, 0), dst=(d, 0), n_bits=bits))
    return parser.NXActionLearn(table_id=_table_id(tables, a.table), specs=specs,
                                idle_timeout=a.idle_timeout, hard_timeout=a.hard_timeout,
                                priority=a.priority, cookie=a.cookie)


def actions(datapath: Any, tables: TableMap | None, acts: Iterable[flows.Action]) -> list:
    """Serialisable actions (cached encodings of :func:`action`)."""
    return [_nat_ct_action(a, tables) if isinstance(a, CT) and a.nat is not None and a.nat.addr_min
            else _encoded_action(a, tables) for a in acts]


# A ct action whose NAT has addresses is encoded once per shape (everything but the
# addresses, which take these placeholders) and gets its addresses written in: each new
# pair's alias is a new address, and os-ken's NXActionCT/NXActionNAT took ~20 % of the
# controller's event thread at saturation (py-spy, benchmarks/pair_setup.py).
_NAT_PLACEHOLDERS = {socket.AF_INET: ("192.0.2.254", "192.0.2.255"),
                     socket.AF_INET6: ("2001:db8::fffe", "2001:db8::ffff")}
_NAT_ADDRS_AT = 24 + 16   # NXAST_CT (24 bytes), then the nested NXAST_NAT's 16 before its ranges


def _nat_ct_action(a: CT, tables: TableMap | None) -> EncodedAction:
    """The encoding of a ct action whose NAT has addresses: its shape's, with them written in."""
    nat = a.nat
    low, high = str(nat.addr_min), str(nat.addr_max) if nat.addr_max else None
    family = socket.AF_INET6 if ":" in low else socket.AF_INET
    if high and (":" in high) != (family == socket.AF_INET6):
        return _encoded_action(a, tables)   # mixed families: os-ken's path says why
    try:
        addrs = socket.inet_pton(family, low) + (socket.inet_pton(family, high) if high else b"")
    except OSError:
        raise FlowError(f"nat range {low}-{high or ''}: not an IP address") from None
    template = _nat_ct_template(a.zone, a.commit, a.table, nat.kind, family, nat.addr_max is not None,
                                nat.port_min, nat.port_max, nat.random, tables)
    return EncodedAction(template[:_NAT_ADDRS_AT] + addrs + template[_NAT_ADDRS_AT + len(addrs):], a)


@lru_cache(maxsize=CACHE_SIZE)
def _nat_ct_template(zone: int, commit: bool, table: str | None, kind: str | None, family: int,
                     has_max: bool, port_min: int | None, port_max: int | None, random: bool,
                     tables: TableMap | None) -> bytes:
    low, high = _NAT_PLACEHOLDERS[family]
    nat = Nat(kind, low, high if has_max else None, port_min, port_max, random)
    data = _encoded_action(CT(zone, commit, table, nat), tables).data
    placed = socket.inet_pton(family, low) + (socket.inet_pton(family, high) if has_max else b"")
    if data[_NAT_ADDRS_AT:_NAT_ADDRS_AT + len(placed)] != placed:
        raise FlowError(f"os-ken put a ct action's NAT addresses elsewhere than byte {_NAT_ADDRS_AT}")
    return data


# ofp_flow_mod after the header, up to the match (os-ken's OFP_FLOW_MOD_PACK_STR0)
_FLOW_MOD_FIXED = struct.Struct("!QQBBHHHIIIH2x")


class PackedFlowMod(ofproto_parser.MsgBase):
    """An ``OFPT_FLOW_MOD`` whose body is already packed (see :func:`flow_mod`);
    ``source`` is the flow it came from. Serialises like any os-ken message."""

    cls_msg_type = ofp.OFPT_FLOW_MOD

    def __init__(self, datapath: Any, body: bytes, source: Flow):
        super().__init__(datapath)
        self.body, self.source = body, source

    def _serialize_body(self) -> None:
        self.buf += self.body

    def __repr__(self) -> str:
        return f"PackedFlowMod({self.source!r})"


def flow_mod(datapath: Any, tables: TableMap | None, f: Flow) -> PackedFlowMod:
    """``OFPFlowMod(ADD)``: instructions meter, apply-actions, goto-table (in that order).

    Packed here from the cached match TLVs and action encodings, byte for byte what
    os-ken's ``OFPFlowMod`` writes (``tests/unit/test_ofmsg.py`` compares with the plain
    os-ken encoder in ``tests/support/reference.py``): os-ken re-packed every
    instruction and action object on each message, ~30 µs of a new pair's ~0.3 ms of
    role logic and encoding per flow-mod (pure-logic profile, docs/lab.md)."""
    inst = b""
    if f.meter is not None:
        inst += struct.pack("!HHI", ofp.OFPIT_METER, 8, f.meter)
    if f.actions:
        acts = b"".join(a.data for a in actions(datapath, tables, f.actions))
        inst += struct.pack("!HH4x", ofp.OFPIT_APPLY_ACTIONS, 8 + len(acts)) + acts
    if f.goto is not None:
        inst += struct.pack("!HHB3x", ofp.OFPIT_GOTO_TABLE, 8, _table_id(tables, f.goto))
    fixed = _FLOW_MOD_FIXED.pack(
        f.cookie, 0, _table_id(tables, f.table), ofp.OFPFC_ADD, f.idle_timeout, f.hard_timeout,
        f.priority, ofp.OFP_NO_BUFFER, ofp.OFPP_ANY, ofp.OFPG_ANY,
        ofp.OFPFF_SEND_FLOW_REM if f.send_flow_rem else 0)
    return PackedFlowMod(datapath, fixed + ofp_match(match_tlvs(f.match.items)) + inst, f)


def delete_flows(datapath: Any, tables: TableMap | None, d: DeleteFlows) -> Any:
    """``OFPFlowMod(DELETE)`` of every flow whose cookie matches under the mask."""
    parser = datapath.ofproto_parser
    table_id = _table_id(tables, d.table) if d.table is not None else ofp.OFPTT_ALL
    return parser.OFPFlowMod(
        datapath, cookie=d.cookie, cookie_mask=d.cookie_mask, table_id=table_id,
        command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
        match=EncodedMatch())


def delete_strict(datapath: Any, tables: TableMap | None, d: DeleteStrict) -> Any:
    """``OFPFlowMod(DELETE_STRICT)`` of the flow at (table, priority, match)."""
    parser = datapath.ofproto_parser
    return parser.OFPFlowMod(
        datapath, table_id=_table_id(tables, d.table), command=ofp.OFPFC_DELETE_STRICT,
        priority=d.priority, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
        match=match(datapath, d.match))


def meter_mods(datapath: Any, m: MeterMod) -> list:
    """ADD then MODIFY of a packets-per-second meter with one drop band."""
    parser = datapath.ofproto_parser
    flags = ofp.OFPMF_PKTPS | (ofp.OFPMF_BURST if m.burst else 0)
    return [parser.OFPMeterMod(datapath, command=command, flags=flags, meter_id=m.meter_id,
                               bands=[parser.OFPMeterBandDrop(rate=m.rate_pps,
                                                              burst_size=m.burst)])
            for command in (ofp.OFPMC_ADD, ofp.OFPMC_MODIFY)]


NX_VENDOR_ID = 0x00002320
NXT_TLV_TABLE_MOD, NXT_TLV_TABLE_REQUEST, NXT_TLV_TABLE_REPLY = 24, 25, 26
NXTTMC_ADD = 0
NXTTMFC_ALREADY_MAPPED = 20     # the (OpenFlow 1.2+) experimenter error type of that failure


def tlv_table_mod(datapath: Any, m: TlvMap) -> Any:
    """NXT_TLV_TABLE_MOD (add one mapping), which os-ken has no class for: an OpenFlow 1.3
    experimenter message (OVS's ``nicira_header`` has the same layout) whose body is
    ``nx_tlv_table_mod`` (command, 6 pad bytes) and one ``nx_tlv_map`` (class, type,
    length, index, 2 pad bytes) - include/openflow/nicira-ext.h."""
    body = struct.pack("!H6x", NXTTMC_ADD) + struct.pack(
        "!HBBH2x", m.option_class, m.option_type, m.length, m.index)
    return datapath.ofproto_parser.OFPExperimenter(
        datapath, experimenter=NX_VENDOR_ID, exp_type=NXT_TLV_TABLE_MOD, data=body)


def tlv_table_request(datapath: Any) -> Any:
    """NXT_TLV_TABLE_REQUEST (no body): the switch answers with its whole TLV map."""
    return datapath.ofproto_parser.OFPExperimenter(
        datapath, experimenter=NX_VENDOR_ID, exp_type=NXT_TLV_TABLE_REQUEST, data=b"")


def tlv_table_reply(data: bytes) -> list[TlvMap]:
    """The mappings of an NXT_TLV_TABLE_REPLY's body (``nx_tlv_table_reply``: option
    space, field count, 10 reserved bytes; then 8-byte ``nx_tlv_map`` entries)."""
    maps = []
    for off in range(16, len(data) - 7, 8):
        option_class, option_type, length, index = struct.unpack_from("!HBBH", data, off)
        maps.append(TlvMap(index, option_class, option_type, length))
    return maps


def packet_out(datapath: Any, tables: TableMap | None, p: PacketOut) -> Any:
    """The whole frame goes with the message (OVS never buffers packet-ins)."""
    parser = datapath.ofproto_parser
    return parser.OFPPacketOut(datapath, buffer_id=ofp.OFP_NO_BUFFER, in_port=p.in_port,
                               actions=actions(datapath, tables, p.actions), data=p.data)


def set_config(datapath: Any) -> Any:
    """Full packets in packet-ins; os-ken never sends SET_CONFIG by itself."""
    return datapath.ofproto_parser.OFPSetConfig(datapath, ofp.OFPC_FRAG_NORMAL, 0xFFFF)


def flow_stats_request(datapath: Any, cookie: int = 0, cookie_mask: int = 0,
                       table_id: int = ofp.OFPTT_ALL) -> Any:
    """Ask for every flow whose cookie matches under the mask (mask 0: every flow)."""
    parser = datapath.ofproto_parser
    return parser.OFPFlowStatsRequest(datapath, 0, table_id, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                      cookie, cookie_mask, parser.OFPMatch())


def serialize(datapath: Any, msgs: Iterable[Any], size: int = WRITE_SIZE) -> list[bytes]:
    """Serialise ``msgs`` (giving each an xid) and join them into writes of about ``size``.

    A message is never split; one larger than ``size`` is a write of its own.
    """
    writes: list[bytes] = []
    chunk = bytearray()
    for msg in msgs:
        if msg.xid is None:
            if hasattr(datapath, "set_xid"):
                datapath.set_xid(msg)
            else:
                msg.set_xid(0)
        msg.serialize()
        if chunk and len(chunk) + len(msg.buf) > size:
            writes.append(bytes(chunk))
            chunk = bytearray()
        chunk += msg.buf
    if chunk:
        writes.append(bytes(chunk))
    return writes


# ---------------------------------------------------------------------------
# os-ken -> flow language


class FlowEntry(NamedTuple):
    """One flow of a flow-stats reply, as the resync needs it."""

    cookie: int
    table_id: int
    priority: int
    match: dict
    idle_timeout: int


def _canon(name: str, value: Any) -> Any:
    kind = flows.FIELDS[name][1]
    if kind in ("ipv4", "ipv6"):
        return str(ip_address(value))
    if kind == "mac":
        return str(value).lower()
    return int(value)


def _full_mask(name: str, mask: Any) -> bool:
    bits, kind = flows.FIELDS[name]
    if kind in ("ipv4", "ipv6"):
        return int(ip_address(mask)) == (1 << bits) - 1
    if kind == "mac":
        return str(mask).lower() == "ff:ff:ff:ff:ff:ff"
    return int(mask) == (1 << bits) - 1


def _user_field(name: str, value: Any) -> Any:
    """One field's os-ken user value as the flow language writes it (see :func:`match_dict`)."""
    if name not in flows.FIELDS:
        return value
    if isinstance(value, tuple):
        v, mask = value
        return _canon(name, v) if _full_mask(name, mask) else (_canon(name, v), _canon(name, mask))
    return _canon(name, value)


def match_dict(ofp_match: Any) -> dict:
    """An os-ken ``OFPMatch`` as a flow-language match dict.

    Addresses in canonical text form, a mask covering every bit dropped (the
    switch stores an exact match either way). A field the flow language does
    not know is kept under os-ken's name with os-ken's value.
    """
    return {name: _user_field(name, value) for name, value in ofp_match.items()}


@cache
def _exact_address_headers() -> dict[bytes, tuple[str, int]]:
    """The OXM header of each exact IPv4/IPv6 field of the flow language -> (name, family)."""
    out = {}
    for name, (_, kind) in flows.FIELDS.items():
        if kind in ("ipv4", "ipv6"):
            family = socket.AF_INET if kind == "ipv4" else socket.AF_INET6
            out[_oxm_header(name, False)[1]] = (name, family)
    return out


def _oxm_field(tlv: bytes) -> tuple[str, Any]:
    """One OXM TLV -> (name, value) as :func:`match_dict` gives it for os-ken's parse.

    An exact address (every pair has new ones) is read with inet_ntop; any other TLV
    by os-ken, once per distinct TLV (a handful per pipeline)."""
    fast = _exact_address_headers().get(tlv[:4])
    if fast is None:
        return _oxm_field_by_os_ken(tlv)
    name, family = fast
    text = socket.inet_ntop(family, tlv[4:])
    if family == socket.AF_INET6 and "." in text:   # a dotted tail: ipaddress's form instead
        text = str(ip_address(tlv[4:]))
    return name, text


@lru_cache(maxsize=CACHE_SIZE)
def _oxm_field_by_os_ken(tlv: bytes) -> tuple[str, Any]:
    """Kept under ``oxm_<header>`` as hex if os-ken cannot read it (e.g. ``tun_metadata0``
    mapped to another length by someone else): a field the flow language does not know,
    so the resync leaves that flow alone, and reads the rest of the reply."""
    try:
        n, value, mask, _ = ofp.oxm_parse(tlv, 0)
        name, user = ofp.oxm_to_user(n, value, mask)
        return name, _user_field(name, user)
    except Exception:   # noqa: BLE001 - os-ken raises bare Exception and assertion errors here
        return f"oxm_{tlv[:4].hex()}", tlv[4:].hex()


def match_fields(buf: bytes | bytearray, offset: int) -> dict:
    """The ``ofp_match`` at ``offset`` (OXM type) as a flow-language match dict: what
    :func:`match_dict` makes of os-ken's ``OFPMatch.parser`` for the same bytes."""
    _, length = struct.unpack_from("!HH", buf, offset)
    out: dict = {}
    pos, end = offset + 4, offset + length
    while pos < end:
        size = 4 + buf[pos + 3]   # OXM header: class, field|hasmask, payload length
        name, value = _oxm_field(bytes(buf[pos:pos + size]))
        out[name] = value
        pos += size
    return out


_FLOW_STATS_FIXED = struct.Struct("!HBxIIHHHH4xQQQ")   # ofp_flow_stats before its match


class FlowStatsEntry:
    """One entry of an ``OFPMP_FLOW`` reply, read for the resync.

    The fixed fields under os-ken's ``OFPFlowStats`` names, and ``fields``: the match as
    a flow-language dict (:func:`match_fields`). os-ken parsed every entry's match and
    instructions into objects, ~180 µs per pair flow (and the match was then converted
    again): most of a restarted controller's resync, ~7 s of 10.7 s at 10,000 pairs
    (``benchmarks/resync.py``). ``match`` and ``instructions`` are os-ken's, parsed on
    first use; nothing in vnet64 reads them. An action os-ken cannot parse no longer
    costs the whole reply either.
    """

    __slots__ = ("length", "table_id", "duration_sec", "duration_nsec", "priority",
                 "idle_timeout", "hard_timeout", "flags", "cookie", "packet_count", "byte_count",
                 "fields", "_buf", "_offset", "_os_ken")

    @classmethod
    def parser(cls, buf: bytes | bytearray, offset: int) -> FlowStatsEntry:
        e = cls.__new__(cls)
        (e.length, e.table_id, e.duration_sec, e.duration_nsec, e.priority, e.idle_timeout,
         e.hard_timeout, e.flags, e.cookie, e.packet_count,
         e.byte_count) = _FLOW_STATS_FIXED.unpack_from(buf, offset)
        e.fields = match_fields(buf, offset + _FLOW_STATS_FIXED.size)
        e._buf, e._offset, e._os_ken = buf, offset, None
        return e

    def _parsed(self) -> Any:
        if self._os_ken is None:
            self._os_ken = ofpp.OFPFlowStats.parser(self._buf, self._offset)
        return self._os_ken

    @property
    def match(self) -> Any:
        return self._parsed().match

    @property
    def instructions(self) -> list:
        return self._parsed().instructions

    def __repr__(self) -> str:
        return (f"FlowStatsEntry(cookie={self.cookie:#x}, table_id={self.table_id}, "
                f"priority={self.priority}, fields={self.fields!r})")


# os-ken builds each OFPFlowStatsReply's body with this class (its parser_stats_body).
ofpp.OFPFlowStatsReply.cls_stats_body_cls = FlowStatsEntry


def flow_entry(stats: Any) -> FlowEntry:
    """A flow-stats body entry (:class:`FlowStatsEntry`, or os-ken's ``OFPFlowStats``)
    -> :class:`FlowEntry`."""
    match = stats.fields if isinstance(stats, FlowStatsEntry) else match_dict(stats.match)
    return FlowEntry(stats.cookie, stats.table_id, stats.priority, match, stats.idle_timeout)
