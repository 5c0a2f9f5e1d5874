"""ofmsg: every flow-language message serialises, and the key fields land where OVS reads them.

Flow-mods are parsed back with os-ken's own parser; the messages os-ken cannot
parse (packet-out, meter-mod, flow-stats request) are checked in their bytes.
tests/lab/test_ofmsg_ovs.py proves the same messages against a real switch.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from ipaddress import IPv4Network

import pytest
from os_ken.ofproto import nicira_ext, ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from tests.support.reference import os_ken_flow_mod
from vnet64.controller import flows as F
from vnet64.controller import ofmsg

TABLES = F.TableMap("t", (("classify", 0), ("ct_fwd", 3), ("out", 7)))


@pytest.fixture
def dp():
    return ofmsg.protocol()


def roundtrip(dp, msg):
    """Serialise, then parse with os-ken's parser (as if a switch had sent it)."""
    msg.set_xid(1)
    msg.serialize()
    version, msg_type, length, xid = ofproto_parser.header(msg.buf)
    assert length == len(msg.buf)
    return ofproto_parser.msg(dp, version, msg_type, length, xid, bytes(msg.buf))


def one(dp, m, tables=TABLES):
    [msg] = ofmsg.to_messages(dp, tables, [m])
    return msg


def apply_actions(fm):
    [inst] = [i for i in fm.instructions if isinstance(i, parser.OFPInstructionActions)]
    assert inst.type == ofp.OFPIT_APPLY_ACTIONS
    return inst.actions


def test_flow_mod_fields_and_instruction_order(dp):
    f = F.flow("classify", 321, {"in_port": 5, "eth_type": F.ETH_IPV6, "ipv6_dst": "fd41::1"},
               [F.Output(2)], goto="out", meter=9, cookie=0xABCDEF0123, idle_timeout=60,
               hard_timeout=600, send_flow_rem=True)
    fm = roundtrip(dp, one(dp, f))
    assert isinstance(fm, parser.OFPFlowMod)
    assert (fm.command, fm.table_id, fm.priority, fm.cookie) == (ofp.OFPFC_ADD, 0, 321, 0xABCDEF0123)
    assert (fm.idle_timeout, fm.hard_timeout, fm.flags) == (60, 600, ofp.OFPFF_SEND_FLOW_REM)
    assert fm.buffer_id == ofp.OFP_NO_BUFFER
    assert [type(i) for i in fm.instructions] == [
        parser.OFPInstructionMeter, parser.OFPInstructionActions, parser.OFPInstructionGotoTable]
    assert fm.instructions[0].meter_id == 9
    assert fm.instructions[2].table_id == 7
    assert dict(fm.match.items()) == {"in_port": 5, "eth_type": 0x86DD, "ipv6_dst": "fd41::1"}


def plain_os_ken(dp, f):
    """The same flow-mod built the plain os-ken way (OFPMatch(**fields), fresh action objects)."""
    return os_ken_flow_mod(dp, TABLES, f)


def test_cached_encoding_is_byte_for_byte_what_os_ken_writes(dp):
    sample = {"int": 3, "hex": 0x1F, "ct": F.CT_TRK | F.CT_EST, "mac": "02:00:00:00:00:01",
              "ipv4": "192.0.2.1", "ipv6": "fd00::1"}
    flows = [F.flow("classify", 7, {name: sample[kind] if name != "vlan_vid" else 0x1005},
                    [F.SetField(name, sample[kind] if name != "vlan_vid" else 0x1005)])
             for name, (_, kind) in F.FIELDS.items()]
    flows += [
        F.flow("ct_fwd", 100, {"eth_type": F.ETH_IPV6, "ipv6_src": ("fd00:5::", "ffff:ffff::"),
                               "ipv6_dst": "fd41::1", "ct_state": F.ct_state("+trk", "-new"),
                               "reg3": (5, 0xFF), "in_port": 10},
               [F.CT(zone=64001, commit=True, table="out",
                     nat=F.Nat("src", "fd64::100", "fd64::1ff", 1024, 2047, random=True)),
                F.Move("reg0", "tun_ipv4_dst", 32), F.Resubmit("ct_fwd"), F.Controller(128),
                F.Output(F.OFPP_IN_PORT)],
               goto="out", meter=3, cookie=0x77, idle_timeout=60, send_flow_rem=True),
        # masks over values with host bits set: os-ken clears them, so must we
        F.flow("classify", 1, {"eth_type": F.ETH_IPV4, "ipv4_src": ("10.1.2.3", "255.255.0.0"),
                               "ipv4_dst": ("192.0.2.9", "255.255.255.255")}),
        F.flow("classify", 1, {"eth_type": F.ETH_IPV6, "ipv6_dst": ("fd41::1:2", "ffff::ff00"),
                               "ipv6_nd_target": "fd00::9", "tun_ipv4_dst": ("1.2.3.4", "0.0.0.0")})]
    for f in flows:
        for _ in range(2):   # the second time from the cache
            ours, plain = one(dp, f), plain_os_ken(dp, f)
            ours.set_xid(9)
            plain.set_xid(9)
            ours.serialize()
            plain.serialize()
            assert bytes(ours.buf) == bytes(plain.buf), f.ofctl(TABLES)


def test_flow_without_actions_or_flags(dp):
    fm = roundtrip(dp, one(dp, F.flow("out", 0)))
    assert fm.instructions == [] and fm.flags == 0 and fm.table_id == 7


def test_masked_matches_and_ct_state(dp):
    f = F.flow("classify", 1, {"eth_type": F.ETH_IPV4, "ipv4_dst": IPv4Network("10.0.0.0/8"),
                               "ct_state": F.ct_state("+trk", "+est", "-new"),
                               "reg3": (0x5, 0xFF), "tun_ipv4_src": "192.0.2.1"})
    got = dict(roundtrip(dp, one(dp, f)).match.items())
    assert got["ipv4_dst"] == ("10.0.0.0", "255.0.0.0")
    assert got["ct_state"] == (F.CT_TRK | F.CT_EST, F.CT_TRK | F.CT_EST | F.CT_NEW)
    assert got["reg3"] == (5, 0xFF)
    assert got["tun_ipv4_src"] == "192.0.2.1"


def test_every_field_of_the_flow_language_serialises(dp):
    sample = {"int": 1, "hex": 1, "ct": 1, "mac": "02:00:00:00:00:01", "ipv4": "192.0.2.1",
              "ipv6": "fd00::1"}
    for name, (_, kind) in F.FIELDS.items():
        value = sample[kind] if name != "vlan_vid" else 0x1005
        one(dp, F.flow("classify", 1, {name: value}, [F.SetField(name, value)])).serialize()


def test_set_field_move_resubmit_controller_output(dp):
    f = F.flow("classify", 1, {"eth_type": F.ETH_IPV6}, [
        F.SetField("tun_ipv4_dst", "192.168.50.2"), F.SetField("ipv6_nd_tll", "02:00:00:00:00:01"),
        F.SetField("reg5", 7), F.Move("reg0", "tun_ipv4_dst", 32, 0, 0),
        F.Resubmit("ct_fwd"), F.Controller(), F.Controller(max_len=128), F.Output(F.OFPP_IN_PORT),
        F.Output(F.OFPP_CONTROLLER)])
    acts = apply_actions(roundtrip(dp, one(dp, f)))
    assert [(a.key, a.value) for a in acts[:3]] == [
        ("tun_ipv4_dst", "192.168.50.2"), ("ipv6_nd_tll", "02:00:00:00:00:01"), ("reg5", 7)]
    move = acts[3]
    assert (move.src_field, move.dst_field, move.n_bits) == ("reg0", "tun_ipv4_dst", 32)
    assert isinstance(acts[4], parser.NXActionResubmitTable) and acts[4].table_id == 3
    assert acts[4].in_port == 0xFFF8  # the packet's own in_port
    assert [(a.port, a.max_len) for a in acts[5:]] == [
        (ofp.OFPP_CONTROLLER, 0xFFFF), (ofp.OFPP_CONTROLLER, 128), (ofp.OFPP_IN_PORT, 0xFFE5),
        (ofp.OFPP_CONTROLLER, 0xFFFF)]


@pytest.mark.parametrize("nat, flags, ranges", [
    (F.Nat(), 0, {}),
    (F.Nat("src", "100.64.0.1", "100.64.0.4", 40000, 40999),
     1, {"range_ipv4_min": "100.64.0.1", "range_ipv4_max": "100.64.0.4",
         "range_proto_min": 40000, "range_proto_max": 40999}),
    (F.Nat("dst", "fd64::a00:4"), 2, {"range_ipv6_min": "fd64::a00:4"}),
    (F.Nat("src", "fd64:0:0::100", None, 1024, 2047, random=True),
     1 | 16, {"range_ipv6_min": "fd64::100", "range_proto_min": 1024, "range_proto_max": 2047}),
    (F.Nat("src", None, None, 5000), 1, {"range_proto_min": 5000}),
])
def test_ct_with_nat(dp, nat, flags, ranges):
    f = F.flow("classify", 1, {"eth_type": F.ETH_IPV6},
               [F.CT(zone=64001, commit=True, table="ct_fwd", nat=nat)])
    [ct] = apply_actions(roundtrip(dp, one(dp, f)))
    assert isinstance(ct, parser.NXActionCT)
    assert ct.flags == nicira_ext.NX_CT_F_COMMIT
    assert ct.zone_src == "" and ct.zone_ofs_nbits == 64001  # immediate zone
    assert ct.recirc_table == 3
    [n] = ct.actions
    assert isinstance(n, parser.NXActionNAT) and n.flags == flags
    defaults = {"range_ipv4_min": "", "range_ipv4_max": "", "range_ipv6_min": "",
                "range_ipv6_max": "", "range_proto_min": None, "range_proto_max": None}
    assert {k: getattr(n, k) for k in defaults} == {**defaults, **ranges}


@pytest.mark.parametrize("nats", [
    [F.Nat("src", f"fd64::a00:{i:x}") for i in range(1, 4)],
    [F.Nat("src", f"100.64.0.{i}", f"100.64.1.{i}", 1024, 65535, random=True) for i in range(1, 4)],
    [F.Nat("dst", f"fd64::{i}", f"fd64::{i}:1", 80) for i in range(1, 4)],
])
def test_nat_addresses_written_into_a_shared_encoding_are_os_kens_bytes(dp, nats):
    """Pairs' ct actions differ only in their NAT address: encoded once per shape, the
    address written in - each must still be byte for byte os-ken's own encoding."""
    for nat in nats:
        a = F.CT(zone=64001, commit=True, table="ct_fwd", nat=nat)
        [ours] = ofmsg.actions(dp, TABLES, [a])
        plain = ofmsg.action(dp, TABLES, a)
        buf = bytearray()
        plain.serialize(buf, 0)
        assert ours.data == bytes(buf).ljust(plain.len, b"\0"), nat


def test_clear_caches_empties_every_encoding_cache(dp):
    """The cold state a benchmark measures: nothing encoded survives, and encoding works after."""
    def sizes():
        return {fn.__name__: fn.cache_info().currsize for fn in (
            ofmsg._oxm_tlv, ofmsg._encoded_action, ofmsg._nat_ct_template, F._canonical_text)}
    m = F.flow("classify", 1, {"ipv6_src": "fd64::1"},
               [F.CT(zone=2, commit=True, nat=F.Nat("src", "100.64.0.9")), F.Output(1)])
    before = one(dp, m)
    F.canonical_ip("fd64::2")
    assert all(sizes().values()), sizes()
    ofmsg.clear_caches()
    assert not any(sizes().values()), sizes()
    after = one(dp, m)
    before.serialize(), after.serialize()
    assert bytes(after.buf) == bytes(before.buf)


def test_a_nat_address_that_is_not_one_is_refused(dp):
    with pytest.raises(F.FlowError, match="not an IP address"):
        one(dp, F.flow("classify", 1, {}, [F.CT(zone=1, nat=F.Nat("src", "fd64::zz"))]))


def test_ct_without_table_or_commit(dp):
    [ct] = apply_actions(roundtrip(dp, one(dp, F.flow("classify", 1, {}, [F.CT(zone=7)]))))
    assert (ct.flags, ct.recirc_table, ct.actions) == (0, nicira_ext.NX_CT_RECIRC_NONE, [])


@pytest.mark.parametrize("nat, message", [
    (F.Nat("both", "10.0.0.1"), "kind"),
    (F.Nat(None, "10.0.0.1"), "takes no"),
    (F.Nat("src", "10.0.0.1", "fd00::1"), "mixes"),
    (F.Nat("src", None, "10.0.0.1"), "addr_max without"),
    (F.Nat("src", None, None, None, 5), "port_max without"),
])
def test_bad_nat_is_refused(dp, nat, message):
    with pytest.raises(F.FlowError, match=message):
        one(dp, F.flow("classify", 1, {}, [F.CT(zone=1, nat=nat)]))


def test_unknown_table_names_the_pipeline(dp):
    with pytest.raises(F.FlowError, match="'nowhere' is not a stage of the t pipeline"):
        one(dp, F.flow("classify", 1, {}, [F.Resubmit("nowhere")]))
    with pytest.raises(F.FlowError, match="without a table map"):
        one(dp, F.flow("classify", 1), tables=None)


def test_delete_flows(dp):
    d = roundtrip(dp, one(dp, F.DeleteFlows(cookie=0x1200, cookie_mask=0xFF00)))
    assert (d.command, d.cookie, d.cookie_mask, d.table_id) == (
        ofp.OFPFC_DELETE, 0x1200, 0xFF00, ofp.OFPTT_ALL)
    assert (d.out_port, d.out_group) == (ofp.OFPP_ANY, ofp.OFPG_ANY)  # not "flows to port 0"
    assert dict(d.match.items()) == {}
    d = roundtrip(dp, one(dp, F.DeleteFlows(1, 1, table="out")))
    assert d.table_id == 7


def test_delete_strict(dp):
    f = F.flow("out", 33, {"eth_type": F.ETH_IPV6, "ipv6_dst": "fd41::9"}, [F.Output(1)], cookie=5)
    d = roundtrip(dp, one(dp, F.DeleteStrict.of(f)))
    assert (d.command, d.table_id, d.priority, d.cookie_mask) == (ofp.OFPFC_DELETE_STRICT, 7, 33, 0)
    assert (d.out_port, d.out_group) == (ofp.OFPP_ANY, ofp.OFPG_ANY)
    assert dict(d.match.items()) == {"eth_type": 0x86DD, "ipv6_dst": "fd41::9"}


def test_ovs_nd_fields_use_the_class_ovs_reads(dp):
    """nd_reserved / nd_options_type: OXM class 0x1000, fields 1 and 2 (as OVS 3.1 dumps them)."""
    f = F.flow("classify", 1, {"eth_type": F.ETH_IPV6, "ip_proto": F.PROTO_ICMPV6,
                               "icmpv6_type": 135, "nd_reserved": 0},
               [F.SetField("nd_reserved", 0xE0000000), F.SetField("nd_options_type", 2)])
    fm = one(dp, f)
    fm.serialize()
    buf = bytes(fm.buf)
    assert bytes.fromhex("10000204" "00000000") in buf                 # the match
    assert bytes.fromhex("10000204" "e0000000") in buf                 # set_field nd_reserved
    assert bytes.fromhex("10000401" "02") in buf                       # set_field nd_options_type
    back = roundtrip(dp, one(dp, f))
    assert dict(back.match.items())["nd_reserved"] == 0
    assert [(a.key, a.value) for a in apply_actions(back)] == [
        ("nd_reserved", 0xE0000000), ("nd_options_type", 2)]


def test_meter_mod_is_add_then_modify(dp):
    msgs = ofmsg.to_messages(dp, None, [F.MeterMod(meter_id=3, rate_pps=1000, burst=100)])
    assert [m.command for m in msgs] == [ofp.OFPMC_ADD, ofp.OFPMC_MODIFY]
    for m in msgs:
        m.serialize()
        # header, command, flags, meter_id, then the band: type, len, rate, burst
        _command, flags, meter_id = struct.unpack_from("!HHI", m.buf, 8)
        band_type, _, rate, burst = struct.unpack_from("!HHII", m.buf, 16)
        assert (flags, meter_id) == (ofp.OFPMF_PKTPS | ofp.OFPMF_BURST, 3)
        assert (band_type, rate, burst) == (ofp.OFPMBT_DROP, 1000, 100)
    [add, _] = ofmsg.to_messages(dp, None, [F.MeterMod(3, 1000)])
    add.serialize()
    assert struct.unpack_from("!H", add.buf, 10)[0] == ofp.OFPMF_PKTPS  # no burst flag


def test_packet_out(dp):
    frame = bytes(range(64))
    po = one(dp, F.PacketOut(frame, in_port=4))
    po.serialize()
    buffer_id, in_port, actions_len = struct.unpack_from("!IIH", po.buf, 8)
    assert (buffer_id, in_port, actions_len) == (ofp.OFP_NO_BUFFER, 4, 16)
    assert struct.unpack_from("!HHI", po.buf, 24) == (ofp.OFPAT_OUTPUT, 16, ofp.OFPP_TABLE)
    assert po.buf[24 + actions_len:] == frame
    po = one(dp, F.PacketOut(frame, in_port=ofp.OFPP_CONTROLLER,
                             actions=(F.SetField("reg0", 1), F.Resubmit("out"))))
    po.serialize()


def test_set_config_and_flow_stats_request(dp):
    sc = ofmsg.set_config(dp)
    sc.serialize()
    assert struct.unpack_from("!HH", sc.buf, 8) == (ofp.OFPC_FRAG_NORMAL, 0xFFFF)
    req = ofmsg.flow_stats_request(dp, cookie=0x7700, cookie_mask=0xFF00)
    req.serialize()
    mp_type, = struct.unpack_from("!H", req.buf, 8)
    table_id, out_port, out_group, cookie, mask = struct.unpack_from("!B3xII4xQQ", req.buf, 16)
    assert (mp_type, table_id, out_port, out_group) == (
        ofp.OFPMP_FLOW, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY)
    assert (cookie, mask) == (0x7700, 0xFF00)


def test_serialize_joins_messages_into_writes(dp):
    flows = [F.flow("classify", i, {"reg0": i}, [F.Output(1)]) for i in range(2000)]
    msgs = ofmsg.to_messages(dp, TABLES, flows)
    writes = ofmsg.serialize(dp, msgs)
    assert len(writes) > 1 and all(len(w) <= ofmsg.WRITE_SIZE for w in writes)
    joined = b"".join(writes)
    assert joined == b"".join(bytes(m.buf) for m in msgs)
    # every message whole, in order
    off, prios = 0, []
    while off < len(joined):
        version, msg_type, length, xid = ofproto_parser.header(joined[off:])
        prios.append(ofproto_parser.msg(dp, version, msg_type, length, xid,
                                        joined[off:off + length]).priority)
        off += length
    assert prios == list(range(2000))


def test_serialize_gives_xids_from_the_datapath(dp):
    class Dp:
        ofproto, ofproto_parser = dp.ofproto, dp.ofproto_parser
        xid = 41

        def set_xid(self, msg):
            self.xid += 1
            msg.set_xid(self.xid)

    d = Dp()
    msgs = ofmsg.to_messages(d, TABLES, [F.flow("out", 1), F.flow("out", 2)])
    ofmsg.serialize(d, msgs)
    assert [m.xid for m in msgs] == [42, 43]


def test_flow_entry_round_trips_a_match(dp):
    f = F.flow("ct_fwd", 200, {"eth_type": F.ETH_IPV6, "ipv6_src": "fd00:5:0::10",
                               "ipv6_dst": ("fd41::", "ffff::"), "eth_src": "02:AA:00:00:00:01",
                               "ct_state": F.ct_state("+trk", "-new"), "reg3": (7, 0xFFFFFFFF)},
               [F.Output(1)], cookie=0x77, idle_timeout=60)
    # what a switch sends back: an OFPFlowStats with the match
    stats = parser.OFPFlowStats(table_id=3, duration_sec=1, duration_nsec=0, priority=200,
                                idle_timeout=60, hard_timeout=0, flags=0,
                                cookie=0x77, packet_count=0, byte_count=0,
                                match=roundtrip(dp, one(dp, f)).match, instructions=[])
    e = ofmsg.flow_entry(stats)
    assert e == (0x77, 3, 200, e.match, 60)
    assert e.match["reg3"] == 7  # a mask over every bit is an exact match
    assert e.match["ipv6_src"] == "fd00:5::10" and e.match["eth_src"] == "02:aa:00:00:00:01"
    assert F.Match.of(e.match) == F.Match.of({**f.match.as_dict(), "reg3": 7})


def stats_entry(dp, f: F.Flow, counters=(5, 500)) -> bytes:
    """The ``ofp_flow_stats`` entry a switch writes for ``f``: its flow-mod's match and
    instructions behind the stats entry's fixed part."""
    fm = one(dp, f)
    fm.serialize()
    body = bytes(fm.buf)[8 + 40:]   # after the header and the flow-mod's fixed fields
    return struct.pack("!HBxIIHHHH4xQQQ", 48 + len(body), TABLES.id(f.table), 61, 7, f.priority,
                       f.idle_timeout, f.hard_timeout, 1, f.cookie, *counters) + body


def flow_stats_reply(entries: list[bytes], xid=3) -> bytes:
    payload = b"".join(entries)
    return (struct.pack("!BBHI", 4, ofp.OFPT_MULTIPART_REPLY, 16 + len(payload), xid)
            + struct.pack("!HH4x", ofp.OFPMP_FLOW, 0) + payload)


MATCHES = [
    {"eth_type": F.ETH_IPV6, "ipv6_src": "fd00:5::10", "ipv6_dst": "fd41::3930:1f:6600:a00:4"},
    {"eth_type": F.ETH_IPV6, "ipv6_src": "fd00:0:1::", "ipv6_dst": "::ffff:10.0.0.4"},   # 0 field; dotted
    {"eth_type": F.ETH_IPV6, "ipv6_dst": "::10.0.0.4", "ipv6_src": "2001:db8:0:0:1:0:0:1"},
    {"eth_type": F.ETH_IPV4, "ipv4_src": "198.18.0.7", "ipv4_dst": "10.0.0.4", "in_port": 10,
     "ct_state": F.ct_state("+trk", "+est", "-new")},
    {"eth_type": F.ETH_IPV4, "ipv4_dst": ("10.1.0.0", "255.255.0.0"), "reg3": (5, 0xFF),
     "reg0": 1, "tun_ipv4_src": "192.0.2.1", "tun_metadata0": 0x5EC0E7A1},
    {"eth_type": F.ETH_IPV6, "ipv6_dst": ("fd41::", "ffff::"), "eth_src": "02:AA:00:00:00:01",
     "ip_proto": 58, "icmpv6_type": 135, "ipv6_nd_target": "fe80::1"},
    {},
]


@pytest.mark.parametrize("match", MATCHES)
def test_flow_stats_entries_read_as_os_ken_reads_them(dp, match):
    """The resync's reader gives the match os-ken's OFPFlowStats + match_dict gave, and
    os-ken's own objects on demand."""
    f = F.flow("ct_fwd", 200, match, [F.CT(zone=1, commit=True, table="out",
                                           nat=F.Nat("src", "100.100.0.1", None, 1024, 65535))],
               cookie=0x0105000000000007, idle_timeout=300, send_flow_rem=True)
    raw = stats_entry(dp, f)
    ours, plain = ofmsg.FlowStatsEntry.parser(raw, 0), parser.OFPFlowStats.parser(raw, 0)
    assert ours.fields == ofmsg.match_dict(plain.match)
    assert F.Match.of(ours.fields) == f.match
    for attr in ("length", "table_id", "duration_sec", "duration_nsec", "priority", "idle_timeout",
                 "hard_timeout", "flags", "cookie", "packet_count", "byte_count"):
        assert getattr(ours, attr) == getattr(plain, attr), attr
    assert ofmsg.flow_entry(ours) == ofmsg.flow_entry(plain)
    assert dict(ours.match.items()) == dict(plain.match.items())
    assert [i.to_jsondict() for i in ours.instructions] == [i.to_jsondict() for i in plain.instructions]


def test_a_flow_stats_reply_is_read_with_the_resync_reader(dp):
    flows = [F.flow("out", 100, {"eth_type": F.ETH_IPV4, "ipv4_src": f"198.18.0.{i}"}, [F.Output(2)],
                    cookie=i) for i in range(1, 40)]
    buf = flow_stats_reply([stats_entry(dp, f) for f in flows])
    version, msg_type, length, xid = ofproto_parser.header(buf)
    msg = ofproto_parser.msg(dp, version, msg_type, length, xid, buf)
    assert isinstance(msg, parser.OFPFlowStatsReply)
    assert all(isinstance(e, ofmsg.FlowStatsEntry) for e in msg.body)
    assert [(e.cookie, e.match["ipv4_src"]) for e in map(ofmsg.flow_entry, msg.body)] == [
        (i, f"198.18.0.{i}") for i in range(1, 40)]


def test_an_action_os_ken_cannot_parse_does_not_cost_the_resync(dp):
    """os-ken dropped the whole reply (and the resync waited forever for it); the reader
    needs only the match."""
    f = F.flow("out", 100, {"eth_type": F.ETH_IPV6}, [F.Output(2)], cookie=0x9)
    raw = bytearray(stats_entry(dp, f))
    raw[-16:-14] = struct.pack("!H", 0xABCD)          # the output action: an unknown type
    buf = flow_stats_reply([bytes(raw)])
    version, msg_type, length, xid = ofproto_parser.header(buf)
    [entry] = ofproto_parser.msg(dp, version, msg_type, length, xid, buf).body
    assert ofmsg.flow_entry(entry) == (0x9, TABLES.id("out"), 100, {"eth_type": F.ETH_IPV6}, 0)
    with pytest.raises(Exception):
        entry.instructions   # noqa: B018 - os-ken's parse, on demand, still fails


def test_a_match_field_os_ken_cannot_read_is_kept_raw(dp):
    """tun_metadata0 mapped to 8 bytes by someone else: os-ken refuses the length; the
    field is kept under its header, the rest of the match is read."""
    f = F.flow("out", 100, {"eth_type": F.ETH_IPV6}, [F.Output(2)], cookie=0x9)
    raw = bytearray(stats_entry(dp, f))
    tlv = bytes.fromhex("0001" "50" "08" "0000000000000001")       # NXM_NX_TUN_METADATA0, 8 bytes
    match_len, = struct.unpack_from("!H", raw, 50)
    raw[48 + match_len:48 + match_len] = tlv                       # append it to the match
    struct.pack_into("!H", raw, 50, match_len + len(tlv))          # (8 bytes: padding unchanged)
    struct.pack_into("!H", raw, 0, len(raw))
    entry = ofmsg.FlowStatsEntry.parser(bytes(raw), 0)
    assert entry.fields == {"eth_type": F.ETH_IPV6, "oxm_00015008": "0000000000000001"}


def test_tlv_map_is_the_nicira_tlv_table_mod_ovs_reads(dp):
    """NXT_TLV_TABLE_MOD add, as ``ovs-ofctl add-tlv-map br "{class=0xffff,type=0x64,len=4}
    ->tun_metadata0"`` sends it (include/openflow/nicira-ext.h)."""
    msg = one(dp, F.TlvMap(index=0, option_class=0xFFFF, option_type=0x64, length=4))
    msg.set_xid(5)
    msg.serialize()
    assert bytes(msg.buf) == bytes.fromhex(
        "04" "04" "0020" "00000005"        # OpenFlow 1.3 experimenter message, 32 bytes
        "00002320" "00000018"              # Nicira, NXT_TLV_TABLE_MOD (24)
        "0000" "000000000000"              # command ADD, pad
        "ffff" "64" "04" "0000" "0000")    # class, type, length, index 0, pad
    with pytest.raises(F.FlowError, match="not a Geneve TLV mapping"):
        F.TlvMap(index=0, option_class=0xFFFF, option_type=0x64, length=6)


def test_tlv_table_request_and_reply(dp):
    msg = ofmsg.tlv_table_request(dp)
    msg.set_xid(6)
    msg.serialize()
    assert bytes(msg.buf) == bytes.fromhex("04" "04" "0010" "00000006" "00002320" "00000019")
    # a reply's body as OVS writes it: space 256, 64 fields, reserved, then two maps
    body = bytes.fromhex("00000100" "0040" + "00" * 10 + "ffff" "64" "04" "0000" "0000"
                         + "0102" "03" "08" "0005" "0000")
    assert ofmsg.tlv_table_reply(body) == [F.TlvMap(0, 0xFFFF, 0x64, 4), F.TlvMap(5, 0x0102, 3, 8)]
    assert ofmsg.tlv_table_reply(body[:16]) == []


def test_tun_metadata0_is_four_bytes_both_ways(dp):
    f = F.flow("classify", 100, {"tun_ipv4_src": "192.0.2.1", "tun_metadata0": 0x5EC0E7A1},
               [F.SetField("tun_metadata0", 0x5EC0E7A1), F.Output(1)], cookie=0x9)
    fm = roundtrip(dp, one(dp, f))
    assert dict(fm.match.items())["tun_metadata0"] == 0x5EC0E7A1
    # NXM_NX_TUN_METADATA0 (class 1, field 40), 4 bytes: in the match and in the set_field
    assert bytes.fromhex("0001" "50" "04" "5ec0e7a1") in bytes(fm.buf)
    assert bytes.fromhex("0019" "0010" "0001" "50" "04" "5ec0e7a1") in bytes(fm.buf)
    stats = parser.OFPFlowStats(table_id=0, duration_sec=1, duration_nsec=0, priority=100,
                                idle_timeout=0, hard_timeout=0, flags=0, cookie=0x9,
                                packet_count=0, byte_count=0, match=fm.match, instructions=[])
    assert F.Match.of(ofmsg.flow_entry(stats).match) == f.match


def test_not_a_message(dp):
    with pytest.raises(F.FlowError, match="not a flow-language message"):
        ofmsg.to_messages(dp, TABLES, ["flow"])
    with pytest.raises(F.FlowError, match="not a flow-language action"):
        one(dp, F.flow("out", 1, {}, ["drop"]))


# -- learn ----------------------------------------------------------------------

LEARN_TABLES = F.TableMap("t", (("reply", 11), ("direct", 15)))
DIRECT_LEARN = F.Learn("direct", 100, 0x1234, idle_timeout=60, eth_type=0x86DD,
                       match_from=(("ipv6_src", "ipv6_dst"), ("ipv6_dst", "ipv6_src")),
                       load_from=(("tun_ipv4_src", "tun_ipv4_dst"),))
# The NXAST_LEARN of ``ovs-ofctl -O OpenFlow10 add-flow`` (OVS 3.1, captured on a socket
# acting as the switch) for 'table=11,ipv6,actions=learn(table=15,idle_timeout=60,
# priority=100,cookie=0x1234,eth_type=0x86dd,NXM_NX_IPV6_SRC[]=NXM_NX_IPV6_DST[],
# NXM_NX_IPV6_DST[]=NXM_NX_IPV6_SRC[],load:NXM_NX_TUN_IPV4_SRC[]->NXM_NX_TUN_IPV4_DST[])'
OVS_LEARN = bytes.fromhex(
    "ffff0058" "00002320" "0010" "003c" "0000" "0064" "0000000000001234" "0000" "0f" "00" "0000" "0000"
    "2010" "86dd" "00000602" "0000"                                    # eth_type=0x86dd
    "0080" "00012810" "0000" "00012610" "0000"                         # IPV6_SRC[]=IPV6_DST[]
    "0080" "00012610" "0000" "00012810" "0000"                         # IPV6_DST[]=IPV6_SRC[]
    "0820" "00013e04" "0000" "00014004" "0000"                         # load TUN_IPV4_SRC->DST
    "00000000")                                                        # to 8 bytes


def test_learn_is_byte_for_byte_what_ovs_encodes(dp):
    [enc] = ofmsg.actions(dp, LEARN_TABLES, [DIRECT_LEARN])
    assert enc.data == OVS_LEARN


def test_learn_specs_round_trip_through_os_ken(dp):
    f = F.flow("reply", 115, {"eth_type": 0x86DD}, [DIRECT_LEARN, F.Resubmit("direct")])
    got = roundtrip(dp, one(dp, f, LEARN_TABLES))
    [inst] = got.instructions
    learn, resubmit = inst.actions
    assert isinstance(learn, parser.NXActionLearn) and resubmit.table_id == 15
    assert (learn.table_id, learn.priority, learn.cookie, learn.idle_timeout, learn.hard_timeout) == \
        (15, 100, 0x1234, 60, 0)
    assert [(type(s).__name__, s.src, s.dst, s.n_bits) for s in learn.specs] == [
        ("NXFlowSpecMatch", 0x86DD, ("eth_type_nxm", 0), 16),
        ("NXFlowSpecMatch", ("ipv6_dst_nxm", 0), ("ipv6_src_nxm", 0), 128),
        ("NXFlowSpecMatch", ("ipv6_src_nxm", 0), ("ipv6_dst_nxm", 0), 128),
        ("NXFlowSpecLoad", ("tun_ipv4_src", 0), ("tun_ipv4_dst", 0), 32)]


OVS_OFCTL = shutil.which("ovs-ofctl")


@pytest.mark.skipif(OVS_OFCTL is None, reason="ovs-ofctl is not installed")
def test_ovs_ofctl_reads_the_learn_flow_mod_as_learn_ofctl_prints_it(dp):
    learns = [DIRECT_LEARN,
              F.Learn("direct", 0x8000, 0, hard_timeout=9, eth_type=0x800,
                      match_from=(("ipv4_src", "ipv4_src"), ("reg1", "reg2")),
                      load_from=(("eth_src", "eth_dst"), ("tunnel_id", "tunnel_id")))]
    for learn in learns:
        msg = one(dp, F.flow("reply", 115, {"eth_type": learn.eth_type}, [learn]), LEARN_TABLES)
        msg.set_xid(1)
        msg.serialize()
        out = subprocess.run([OVS_OFCTL, "ofp-print", bytes(msg.buf).hex()], capture_output=True,
                             text=True, check=True).stdout
        printed = out.split(" actions=", 1)[1].strip()
        assert printed == learn.ofctl(LEARN_TABLES).replace("table=direct", "table=15"), out


def test_learn_of_a_field_without_an_nxm_name_is_refused(dp):
    bad = F.Learn("direct", 1, 0, match_from=(("ip_dscp", "ip_dscp"),))
    with pytest.raises(F.FlowError, match="ip_dscp"):
        ofmsg.action(dp, LEARN_TABLES, bad)
