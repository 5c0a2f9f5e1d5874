"""The fake flow table itself: lookups, refusals, actions, and conntrack as an input."""

from ipaddress import IPv6Network

import pytest

from tests.support.fake import FakeSwitch, FakeTableError, FixedCt, SimpleConntrack, Step
from vnet64.controller.flows import (CT, CT_DNAT, CT_EST, CT_NEW, CT_REL, CT_RPL, CT_SNAT, CT_TRK,
                                     ETH_ARP, ETH_IPV4, ETH_IPV6, OFPP_IN_PORT, Controller,
                                     DeleteFlows, DeleteStrict, Match, MeterMod, Move, Nat, Output,
                                     Resubmit, SetField, TableMap, TlvMap, ct_state, flow)

TABLES = TableMap("test", (("ingress", 0), ("classify", 10), ("snat", 20), ("dnat", 30),
                           ("egress", 40)))
V6 = {"eth_type": ETH_IPV6}
V4 = {"eth_type": ETH_IPV4}
SVC6, VM6 = "fd00:5::10", "fd41::3930:1f:6600:a00:4"  # the fake keeps addresses canonical


def switch(*flows, ct=None) -> FakeSwitch:
    sw = FakeSwitch(TABLES, ct)
    sw.apply(flows)
    return sw


def tcp6(src=SVC6, dst=VM6, sport=33000, dport=80, **kw):
    return {**V6, "ipv6_src": src, "ipv6_dst": dst, "ip_proto": 6, "tcp_src": sport,
            "tcp_dst": dport, **kw}


def tcp4(src, dst, sport, dport, **kw):
    return {**V4, "ipv4_src": src, "ipv4_dst": dst, "ip_proto": 6, "tcp_src": sport,
            "tcp_dst": dport, **kw}


# -- lookup ------------------------------------------------------------------


def test_highest_priority_wins_and_a_miss_drops():
    sw = switch(flow("ingress", 10, V6, [Output(2)]),
                flow("ingress", 20, {**V6, "ipv6_dst": VM6}, [Output(3)]))
    t = sw.trace(tcp6(), in_port=1)
    assert t.ports() == [3] and t.steps[0].priority == 20
    t = sw.trace(tcp6(dst="fd41::9"), in_port=1)
    assert t.ports() == [2]
    t = sw.trace({**V4, "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2"}, in_port=1)
    assert t.dropped and t.dropped_at == "ingress"
    assert t.steps == [Step("ingress", None, None, "table miss: drop")]


def test_masks_on_prefixes_macs_and_ints():
    sw = switch(
        flow("ingress", 10, {**V6, "ipv6_dst": IPv6Network("fd41::/16")}, [Output(2)]),
        flow("ingress", 10, {**V4, "ipv4_dst": ("10.0.0.0", "255.255.255.0")}, [Output(3)]),
        flow("ingress", 10, {"eth_type": ETH_ARP, "eth_src": ("02:00:00:00:00:00",
                                                             "ff:00:00:00:00:00")}, [Output(4)]),
        flow("ingress", 5, {"reg0": (0x10, 0xF0)}, [Output(5)]))
    assert sw.trace(tcp6(dst="fd41::1"), 1).ports() == [2]
    assert sw.trace(tcp6(dst="fd42::1"), 1).dropped
    assert sw.trace(tcp4("1.1.1.1", "10.0.0.77", 1, 2), 1).ports() == [3]
    assert sw.trace(tcp4("1.1.1.1", "10.0.1.77", 1, 2), 1).dropped
    assert sw.trace({"eth_type": ETH_ARP, "eth_src": "02:AA:bb:cc:dd:ee"}, 1).ports() == [4]
    assert sw.trace({"eth_type": ETH_ARP, "eth_src": "04:aa:bb:cc:dd:ee"}, 1).dropped
    assert sw.trace({"eth_type": 0x88cc, "reg0": 0x1F}, 1).ports() == [5]
    assert sw.trace({"eth_type": 0x88cc}, 1).dropped   # registers start at 0


def test_same_priority_and_match_replaces_like_an_openflow_add():
    sw = switch(flow("ingress", 10, V6, [Output(2)]), flow("ingress", 10, V6, [Output(3)]))
    assert len(sw.flows()) == 1
    assert sw.trace(tcp6(), 1).ports() == [3]


@pytest.mark.parametrize("first, second", [
    (V6, {**V6, "ipv6_dst": VM6}),                          # one is wider
    ({"in_port": 1}, V6),                                   # different fields
    ({**V6, "ipv6_dst": IPv6Network("fd41::/16")}, {**V6, "ipv6_dst": VM6}),
    ({"ct_state": ct_state("+trk")}, {"ct_state": ct_state("+trk", "+est")}),
    # +rel may come with any other flag (ovs-fields(7))
    ({"ct_state": ct_state("+trk", "+est", "+rpl")}, {"ct_state": ct_state("+trk", "+rel")}),
])
def test_overlap_at_the_same_priority_is_refused(first, second):
    sw = switch(flow("ingress", 10, first, [Output(2)]))
    with pytest.raises(FakeTableError, match="overlaps"):
        sw.apply([flow("ingress", 10, second, [Output(3)])])
    sw.apply([flow("ingress", 11, second, [Output(3)])])   # another priority is fine


@pytest.mark.parametrize("first, second", [
    ({**V6, "ipv6_dst": VM6}, {**V6, "ipv6_dst": "fd41::9"}),
    (V6, V4),
    ({"in_port": 1}, {"in_port": 2}),
    ({"reg0": (0x1, 0x1)}, {"reg0": (0x0, 0x1)}),
    # no packet is +new and +est, or +new and +rpl (ovs-fields(7)): disjoint
    ({"ct_state": ct_state("+trk", "+new")}, {"ct_state": ct_state("+trk", "+est")}),
    ({"ct_state": ct_state("+new")}, {"ct_state": ct_state("+rpl")}),
])
def test_disjoint_matches_share_a_priority(first, second):
    switch(flow("ingress", 10, first, [Output(2)]), flow("ingress", 10, second, [Output(3)]))


# -- refusals ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    flow("nowhere", 10, V6, [Output(2)]),
    flow("ingress", 10, V6, [Resubmit("nowhere")]),
    flow("ingress", 10, V6, [CT(zone=1, table="nowhere")]),
    flow("ingress", 10, V6, goto="nowhere"),
])
def test_undeclared_tables_are_refused(bad):
    with pytest.raises(FakeTableError, match="not a stage of the test pipeline"):
        switch(bad)


def test_goto_must_go_forward_and_resubmit_need_not():
    with pytest.raises(FakeTableError, match="does not go forward"):
        switch(flow("classify", 10, V6, goto="ingress"))
    with pytest.raises(FakeTableError, match="does not go forward"):
        switch(flow("classify", 10, V6, goto="classify"))
    switch(flow("classify", 10, V6, [Resubmit("ingress")]))


@pytest.mark.parametrize("match, actions, why", [
    ({"ipv6_dst": VM6}, [], "ipv6_dst needs eth_type=0x86dd"),
    ({**V4, "ipv6_dst": VM6}, [], "ipv6_dst needs eth_type=0x86dd"),
    ({**V6, "ip_proto": 17, "tcp_dst": 80}, [], "tcp_dst needs ip_proto=6"),
    ({"ip_proto": 6}, [], "ip_proto needs eth_type=0x800 or eth_type=0x86dd"),
    ({**V6, "ip_proto": 58, "ipv6_nd_target": VM6}, [], "needs icmpv6_type=135 or icmpv6_type=136"),
    ({**V6, "ip_proto": 58, "icmpv6_type": 135, "icmpv6_code": 1, "ipv6_nd_target": VM6}, [],
     "needs icmpv6_code=0"),
    ({"arp_tpa": "10.0.0.1"}, [], "arp_tpa needs eth_type=0x806"),
    ({**V6, "ip_proto": 58}, [SetField("nd_reserved", 0xE0000000)],
     "nd_reserved needs icmpv6_type"),
    ({**V6, "ip_proto": 58, "icmpv6_type": 135},
     [SetField("ipv6_nd_tll", "02:00:00:00:00:01")], "ipv6_nd_tll needs icmpv6_type=136"),
    (V6, [SetField("ipv4_dst", "10.0.0.4")], "ipv4_dst needs eth_type=0x800"),
    (V4, [Move("ipv6_dst", "reg0", 32)], "ipv6_dst needs eth_type=0x86dd"),
    ({"in_port": 1}, [CT(zone=1)], "ct needs eth_type"),
    (V6, [CT(zone=1, commit=True, nat=Nat("src", "10.0.0.1"))], "on IPv6 packets"),
    (V6, [SetField("ct_state", 0)], "ct_state is read-only"),
    (V6, [Move("reg0", "eth_type", 16)], "eth_type is read-only"),
    (V6, [Move("reg0", "reg1", 16, src_ofs=20)], "bits out of reg0"),
    ({"eth_type": (ETH_IPV6, 0xFF00)}, [], "eth_type cannot be masked"),
    ({**V4, "ipv4_dst": ("10.0.0.4", "255.255.255.0")}, [], "bits outside its mask"),
    ({"ct_state": ct_state("+new", "+est")}, [], "no packet can have this ct_state"),
    ({"ct_state": ct_state("-trk", "+est")}, [], "no packet can have this ct_state"),
    (V6, [Output(0xFFFFFFF9)], "only for packet-outs"),
])
def test_what_ovs_refuses_is_refused_with_the_flow_named(match, actions, why):
    bad = flow("ingress", 10, match, actions, cookie=0x77)
    with pytest.raises(FakeTableError, match=why) as err:
        switch(bad)
    assert bad.ofctl() in str(err.value)


def test_what_ovs_accepts_is_accepted():
    switch(flow("ingress", 10, {**V6, "ip_proto": 58, "icmpv6_type": 136},
                [SetField("ipv6_nd_tll", "02:00:00:00:00:01")]),
           flow("egress", 10, {**V6, "ip_proto": 58, "icmpv6_type": 135},   # NS -> NA, then tll
                [SetField("icmpv6_type", 136), SetField("nd_reserved", 0xE0000000),
                 SetField("nd_options_type", 2)]),
           flow("ingress", 10, {**V6, "ip_proto": 58, "icmpv6_type": 135,
                                "ipv6_nd_target": VM6}, [Output(1)]),
           flow("ingress", 10, {"eth_type": ETH_ARP, "arp_tpa": "10.0.0.1"}, [Output(1)]),
           flow("ingress", 10, {**V4, "ip_proto": 6, "tcp_dst": 80},
                [CT(zone=3, commit=True, nat=Nat("src", "100.64.0.1", port_min=1, port_max=9))]))


def test_delete_by_cookie_and_mask_meters_and_packet_outs():
    sw = switch(flow("ingress", 10, V6, [Output(2)], cookie=0x1_0001),
                flow("ingress", 11, V4, [Output(2)], cookie=0x1_0002),
                flow("egress", 10, V4, [Output(2)], cookie=0x1_0002),
                flow("egress", 11, V6, [Output(2)], cookie=0x2_0002))
    sw.apply([DeleteFlows(cookie=0x1_0000, cookie_mask=0xFFFF_0000, table="ingress")])
    assert [(f.table, f.cookie) for f in sw.flows()] == [("egress", 0x2_0002), ("egress", 0x1_0002)]
    sw.apply([DeleteStrict("egress", 11, Match.of(eth_type=ETH_IPV4))])   # no such flow
    assert len(sw.flows()) == 2
    sw.apply([DeleteStrict.of(sw.flows("egress")[0])])
    assert [f.cookie for f in sw.flows()] == [0x1_0002]
    sw.apply([DeleteFlows(cookie=0x2, cookie_mask=0xFFFF)])
    assert sw.flows() == []
    with pytest.raises(FakeTableError, match="meter 7 does not exist"):
        sw.apply([flow("ingress", 10, V6, [Controller()], meter=7)])
    sw.apply([MeterMod(7, rate_pps=100), flow("ingress", 10, V6, [Controller()], meter=7)])
    assert sw.meters[7].rate_pps == 100
    t = sw.trace(tcp6(), 1)
    assert t.punts and not t.dropped and t.outputs == []


def test_tun_metadata_needs_its_tlv_map_first_and_a_map_is_not_silently_changed():
    geneve = {"in_port": 1, "tun_metadata0": 0x1234}
    with pytest.raises(FakeTableError, match="tun_metadata0 is not mapped"):
        switch(flow("ingress", 10, geneve, [Output(2)]))
    with pytest.raises(FakeTableError, match="tun_metadata0 is not mapped"):
        switch(flow("ingress", 10, V6, [SetField("tun_metadata0", 1), Output(2)]))
    sw = switch()
    mapping = TlvMap(index=0, option_class=0xFFFF, option_type=0x64, length=4)
    sw.apply([mapping, mapping, flow("ingress", 10, geneve, [Output(2)])])   # again: harmless
    assert sw.trace({**tcp6(), "tun_metadata0": 0x1234}, 1).outputs
    assert sw.trace(tcp6(), 1).dropped                  # no option: 0, as in OVS
    with pytest.raises(FakeTableError, match="already mapped"):
        sw.apply([TlvMap(index=0, option_class=0xFFFF, option_type=0x65, length=4)])


# -- actions -----------------------------------------------------------------


def test_goto_and_resubmit_and_what_each_sees():
    sw = switch(
        flow("ingress", 10, V6, [SetField("reg1", 7), Resubmit("dnat"), Output(3)],
             goto="classify"),
        flow("dnat", 10, {**V6, "reg1": 7}, [SetField("reg2", 9)]),
        flow("classify", 10, {**V6, "reg2": 9}, [Output(4)]))
    t = sw.trace(tcp6(), 1)
    assert t.stages() == ["ingress", "dnat", "classify"]   # resubmit runs, returns, goto goes on
    assert t.ports() == [3, 4]
    assert t.output_packet(3)["reg2"] == 9                 # changes in a resubmit stay


def test_set_field_and_move_change_the_packet():
    sw = switch(flow("ingress", 10, V6, [
        Move("ipv6_dst", "reg0", 32),                       # the VM's IPv4 from the platform IPv6
        SetField("tun_ipv4_dst", "192.0.2.9"),
        Move("reg0", "reg1", 8, src_ofs=24, dst_ofs=4),
        SetField("eth_dst", "02:00:00:00:00:AA"),
        Output(2)]))
    out = sw.trace(tcp6(), 1).output_packet(2)
    assert out["reg0"] == 0x0A000004
    assert out["reg1"] == 0x0A << 4
    assert out["tun_ipv4_dst"] == "192.0.2.9" and out["eth_dst"] == "02:00:00:00:00:aa"


def test_output_in_port_hairpins_and_output_to_the_in_port_is_skipped():
    sw = switch(flow("ingress", 10, {"in_port": 1, **V6}, [Output(OFPP_IN_PORT), Output(1)]))
    t = sw.trace(tcp6(), 1)
    assert t.ports() == [1]
    assert "skipped" in str(t)


def test_resubmit_loop_is_an_error():
    sw = switch(flow("ingress", 10, V6, [Resubmit("ingress")]))
    with pytest.raises(FakeTableError, match="loop"):
        sw.trace(tcp6(), 1)


def test_packets_are_checked_and_canonical():
    sw = switch(flow("ingress", 10, V6, [Output(2)]))
    with pytest.raises(FakeTableError, match="tcp_dst needs ip_proto=6"):
        sw.trace({**V6, "tcp_dst": 80}, 1)
    with pytest.raises(FakeTableError, match="unknown packet field"):
        sw.trace({**V6, "ipv6_dest": VM6}, 1)
    out = sw.trace(tcp6(dst="FD41:0000::0001"), 1).output_packet(2)
    assert out["ipv6_dst"] == "fd41::1"


def test_trace_reads_well_and_output_packet_fails_with_the_trace():
    sw = switch(flow("ingress", 10, V6, goto="egress", cookie=0xAB))
    t = sw.trace(tcp6(), 1)
    assert t.dropped and t.dropped_at == "egress"
    text = str(t)
    assert "cookie=0xab,table=ingress,priority=10" in text and "egress: table miss" in text
    assert text.endswith("=> dropped at egress")
    with pytest.raises(AssertionError, match="expected one output to port 2"):
        t.output_packet(2)


# -- conntrack ---------------------------------------------------------------


def ct_pipeline(*ingress_actions, **kw):
    """ingress: actions; classify: per ct_state."""
    return switch(
        flow("ingress", 10, V6, [SetField("reg3", 5), *ingress_actions]),
        flow("classify", 10, {**V6, "ct_state": ct_state("+trk", "+est"), "reg3": 5}, [Output(2)]),
        flow("classify", 10, {**V6, "ct_state": ct_state("+trk", "+new")}, [Output(3)]), **kw)


def test_fixed_ct_recirculates_with_state_zone_and_registers():
    sw = ct_pipeline(CT(zone=5, table="classify"), Output(4))
    t = sw.trace(tcp6(), 1, ct=FixedCt({5: "+trk+est"}))
    assert t.stages() == ["ingress", "classify"]
    assert t.ports() == [2, 4]
    assert t.output_packet(2)["ct_zone"] == 5
    assert t.output_packet(2)["ct_state"] == CT_TRK | CT_EST
    assert "ct_state" not in t.output_packet(4)         # the other fork: ct fields cleared
    assert sw.trace(tcp6(), 1, ct=FixedCt({5: "+trk+new"})).ports() == [3, 4]
    with pytest.raises(FakeTableError, match="no state for zone 5"):
        sw.trace(tcp6(), 1, ct=FixedCt({6: "+trk"}))
    with pytest.raises(FakeTableError, match="no packet has ct_state"):
        FixedCt({5: "+new+rpl"})


PLATFORM, VM4, ALIAS = "100.64.0.1", "10.0.0.4", "169.254.0.7"


def snat4_switch(port_max=40009):
    """IPv4: from port 1, SNAT to PLATFORM in zone 7, out to the VM (port 2) only if +snat;
    from the VM (port 2), un-NAT, out to port 1 only if +est+rpl or +rel."""
    nat = Nat("src", PLATFORM, port_min=40000, port_max=port_max)
    return switch(
        flow("ingress", 10, {"in_port": 1, **V4}, [CT(zone=7, commit=True, nat=nat, table="snat")]),
        flow("ingress", 10, {"in_port": 2, **V4}, [CT(zone=7, nat=Nat(), table="dnat")]),
        flow("snat", 10, {**V4, "ct_state": ct_state("+trk", "+snat")}, [Output(2)]),
        flow("dnat", 10, {**V4, "ct_state": ct_state("+trk", "+est", "+rpl")}, [Output(1)]),
        # +rel may come with any flag, so it cannot share a priority with +est+rpl
        flow("dnat", 11, {**V4, "ct_state": ct_state("+trk", "+rel")}, [Output(1)]))


def test_simple_conntrack_new_then_established_then_reply_with_reverse_nat():
    sw = snat4_switch()
    first = sw.trace(tcp4(ALIAS, VM4, 1111, 80), 1)
    out = first.output_packet(2)
    assert (out["ipv4_src"], out["tcp_src"], out["ipv4_dst"]) == (PLATFORM, 40000, VM4)
    assert out["ct_state"] == CT_TRK | CT_NEW | CT_SNAT
    again = sw.trace(tcp4(ALIAS, VM4, 1111, 80), 1).output_packet(2)
    assert again["ct_state"] == CT_TRK | CT_EST | CT_SNAT and again["tcp_src"] == 40000
    other = sw.trace(tcp4(ALIAS, VM4, 2222, 80), 1).output_packet(2)
    assert other["tcp_src"] == 40001
    back = sw.trace(tcp4(VM4, PLATFORM, 80, 40000), 2).output_packet(1)
    assert back["ct_state"] == CT_TRK | CT_EST | CT_RPL | CT_SNAT
    assert (back["ipv4_src"], back["tcp_src"], back["ipv4_dst"], back["tcp_dst"]) == \
        (VM4, 80, ALIAS, 1111)
    assert sw.trace(tcp4(VM4, PLATFORM, 80, 40005), 2).dropped   # nothing to reply to
    assert len(sw.conntrack.connections(7)) == 2


def test_port_exhaustion_fails_open_without_snat_and_commits_nothing():
    sw = snat4_switch(port_max=40000)
    assert sw.trace(tcp4(ALIAS, VM4, 1111, 80), 1).is_output(2, tcp_src=40000)
    t = sw.trace(tcp4(ALIAS, VM4, 2222, 80), 1)
    assert t.dropped and t.dropped_at == "snat"
    assert t.cts == [(7, CT_TRK | CT_NEW, {**tcp4(ALIAS, VM4, 2222, 80), "in_port": 1})]
    assert len(sw.conntrack.connections(7)) == 1


def test_icmp_error_is_related_with_nat_on_outer_and_inner_headers():
    sw = snat4_switch()
    udp = {**V4, "ipv4_src": ALIAS, "ipv4_dst": VM4, "ip_proto": 17, "udp_src": 5353,
           "udp_dst": 53}
    assert sw.trace(udp, 1).is_output(2, ipv4_src=PLATFORM, udp_src=40000)
    unreachable = {**V4, "ipv4_src": VM4, "ipv4_dst": PLATFORM, "ip_proto": 1,
                   "icmpv4_type": 3, "icmpv4_code": 3,
                   "inner_ipv4_src": PLATFORM, "inner_ipv4_dst": VM4, "inner_ip_proto": 17,
                   "inner_udp_src": 40000, "inner_udp_dst": 53}
    out = sw.trace(unreachable, 2).output_packet(1)
    assert out["ct_state"] == CT_TRK | CT_REL | CT_RPL | CT_SNAT
    assert (out["ipv4_src"], out["ipv4_dst"]) == (VM4, ALIAS)
    assert (out["inner_ipv4_src"], out["inner_udp_src"]) == (ALIAS, 5353)
    assert (out["inner_ipv4_dst"], out["inner_udp_dst"]) == (VM4, 53)
    stray = {**unreachable, "inner_udp_src": 40009}
    t = sw.trace(stray, 2)
    assert t.dropped and t.cts[0][1] == CT_TRK | 0x10    # +trk+inv


def test_icmp_echo_uses_the_id_as_port_and_keeps_it_under_snat():
    sw = snat4_switch()
    ping = {**V4, "ipv4_src": ALIAS, "ipv4_dst": VM4, "ip_proto": 1, "icmpv4_type": 8,
            "icmpv4_code": 0, "icmp_id": 77}
    assert sw.trace(ping, 1).is_output(2, ipv4_src=PLATFORM, icmp_id=77)
    pong = {**ping, "ipv4_src": VM4, "ipv4_dst": PLATFORM, "icmpv4_type": 0}
    back = sw.trace(pong, 2).output_packet(1)
    assert back["ipv4_dst"] == ALIAS and back["ct_state"] & CT_RPL
    assert sw.trace({**pong, "icmp_id": 78}, 2).dropped


# The design's IPv6 side (DESIGN.md §4b): zone 1 SNATs the service to the pair's alias in
# the translator /96, zone 2 DNATs the VM's platform address to the VM's IPv4 in the /96;
# on the way back zone 2 un-DNATs and zone 1 un-SNATs.
XLAT_ALIAS, XLAT_VM = "fd64::a9fe:7", "fd64::a00:4"


def two_zone_switch():
    return switch(
        flow("ingress", 10, {"in_port": 1, **V6, "ipv6_dst": VM6},
             [CT(zone=1, commit=True, nat=Nat("src", XLAT_ALIAS), table="snat")]),
        flow("snat", 10, {**V6, "ct_state": ct_state("+trk", "+snat")},
             [CT(zone=2, commit=True, nat=Nat("dst", XLAT_VM), table="dnat")]),
        flow("dnat", 10, {**V6, "ct_state": ct_state("+trk", "+dnat"), "ct_zone": 2}, [Output(2)]),
        flow("ingress", 10, {"in_port": 2, **V6}, [CT(zone=2, nat=Nat(), table="classify")]),
        flow("classify", 10, {**V6, "ct_state": ct_state("+trk", "+est", "+rpl"), "ct_zone": 2},
             [CT(zone=1, nat=Nat(), table="egress")]),
        flow("egress", 10, {**V6, "ct_state": ct_state("+trk", "+est", "+rpl"), "ct_zone": 1},
             [Output(1)]))


def test_two_zones_in_sequence_snat_then_dnat_and_back():
    sw = two_zone_switch()
    t = sw.trace(tcp6(), 1)
    assert t.stages() == ["ingress", "snat", "dnat"]
    out = t.output_packet(2)
    assert (out["ipv6_src"], out["ipv6_dst"], out["tcp_src"]) == (XLAT_ALIAS, XLAT_VM, 33000)
    assert [(z, s) for z, s, _ in t.cts] == [(1, CT_TRK | CT_NEW | CT_SNAT),
                                             (2, CT_TRK | CT_NEW | CT_DNAT)]
    reply = tcp6(src=XLAT_VM, dst=XLAT_ALIAS, sport=80, dport=33000)
    t = sw.trace(reply, 2)
    assert t.stages() == ["ingress", "classify", "egress"]
    back = t.output_packet(1)
    assert (back["ipv6_src"], back["ipv6_dst"], back["tcp_src"], back["tcp_dst"]) == \
        (VM6, SVC6, 80, 33000)
    assert back["ct_state"] == CT_TRK | CT_EST | CT_RPL | CT_SNAT
    again = sw.trace(tcp6(), 1)
    assert [s for _, s, _ in again.cts] == [CT_TRK | CT_EST | CT_SNAT, CT_TRK | CT_EST | CT_DNAT]
    # a second service reaches the same VM through another connection
    assert sw.trace(tcp6(src="fd00:5::11"), 1).is_output(2, ipv6_src=XLAT_ALIAS, ipv6_dst=XLAT_VM)


def test_ct_without_table_continues_with_the_natted_packet():
    sw = switch(flow("ingress", 10, {**V4, "in_port": 1},
                     [CT(zone=9, commit=True, nat=Nat("src", PLATFORM)), Output(2)]))
    out = sw.trace(tcp4(ALIAS, VM4, 1111, 80), 1).output_packet(2)
    assert (out["ipv4_src"], out["tcp_src"]) == (PLATFORM, 1111)   # no port range: port kept
    assert "ct_state" not in out


def test_nat_without_commit_does_nothing_and_remembers_nothing():
    ct = SimpleConntrack()
    sw = switch(flow("ingress", 10, V4, [CT(zone=9, nat=Nat("src", PLATFORM)), Output(2)]), ct=ct)
    out = sw.trace(tcp4(ALIAS, VM4, 1111, 80), 1).output_packet(2)
    assert out["ipv4_src"] == ALIAS
    assert sw.trace(tcp4(ALIAS, VM4, 1111, 80), 1).cts[0][1] == CT_TRK | CT_NEW
    assert ct.connections(9) == []
