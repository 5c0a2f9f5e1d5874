"""The trace's walk (vnet64.controller.trace) over the flows the controller gives the
default topology's three nodes: hop by hop as the patent's FIG. 2A/2B, the forged cases
each ending on the flow that names their drop, and ovn-trace's --ct states. (The lab test
tests/lab/test_trace.py walks flows read back from real switches.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.unit.test_pipeline_trace import A6, PORTS, Platform, round_trip
from vnet64.controller import trace as T
from vnet64.controller.flows import DeleteFlows
from vnet64.controller.pipeline import cookie


def tracer(p: Platform, ct: str | None = None) -> T.Tracer:
    nodes = {}
    for n in p.model.nodes:
        flows = [SimpleNamespace(flow=f, cookie=f.cookie, text=f.ofctl(), error=None)
                 for f in p.sw[n.name].flows()]
        nodes[n.name] = T.NodeFlows(n.name, n.role, str(n.underlay_ip),
                                    {no: name for name, no in PORTS[n.name].items()}, flows)
    return T.Tracer(p.model, nodes, ct=ct)


@pytest.fixture
def p() -> Platform:
    p = Platform()
    round_trip(p, A6, 10, 40000)          # svc1 -> a-vm1's pair is set up, as after traffic
    return p


def forget_direct(p: Platform) -> None:
    """host2 forgets what the round trip taught it: svc1's packets go through the appliance."""
    p.sw["host2"].apply(DeleteFlows(cookie("host", "learned", 0), 0xFFFF << 48, "direct"))


def test_a_round_trip_hop_by_hop_with_the_patents_numbers(p):
    forget_direct(p)
    hops = T.trace(tracer(p), p.model, "svc1", "a-vm1", "tcp", 80, 41000, reply=True)
    assert [(h.node, h.outcome) for h in hops] == [
        ("host2", "tunnel"), ("appliance", "tunnel"), ("host1", "translator"), ("host1", "delivered"),
        ("host1", "translator"), ("host1", "tunnel"), ("host2", "delivered")]
    assert [h.received for h in hops] == ["210", None, "(210)", None, "253", None, None]
    assert [h.patent for h in hops] == ["216", "234", None, "248", None, "262", "(258)"]
    at_vm = hops[3].sent
    assert (at_vm["ipv4_src"], at_vm["ipv4_dst"], at_vm["tcp_dst"]) == ("100.100.0.1", "10.0.0.4", 80)
    back = hops[-1].sent
    assert (back["ipv6_src"], back["ipv6_dst"], back["tcp_src"], back["tcp_dst"]) == \
        (A6, "fd00:5e:1::10", 80, 41000)
    # owners from the cookies, with NB names; conntrack's answers on the steps that ask it
    pair = next(s for s in hops[2].steps if s.stage == "pair")
    assert pair.owner == "pair 1: svc1 -> a-vm1" and pair.ct == "zone 65534: +new+trk+snat"
    assert [s.owner for s in hops[1].steps] == ["base", "peer host2", f"route {A6} -> host1"]
    assert next(s for s in hops[4].steps if s.stage == "from_vm").ct == "zone 1: +est+rpl+trk+snat"
    text = T.render(hops)
    for no in ("[210]", "[216]", "[234]", "[(210)]", "[248]", "[253]", "[262]", "[(258)]"):
        assert no in text


def test_with_the_direct_path_the_service_host_sends_straight_to_the_vms_host(p):
    """After the round trip's answer host2 knows where a-vm1 is: 210 goes host2 -> host1,
    no appliance hop (216 and 234 are the patent's packets through the appliance)."""
    hops = T.trace(tracer(p), p.model, "svc1", "a-vm1", "tcp", 80, 41000, reply=True)
    assert [(h.node, h.outcome) for h in hops] == [
        ("host2", "tunnel"), ("host1", "translator"), ("host1", "delivered"),
        ("host1", "translator"), ("host1", "tunnel"), ("host2", "delivered")]
    assert [h.received for h in hops] == ["210", "(210)", None, "253", None, None]
    assert [h.patent for h in hops] == [None, None, "248", None, "262", "(258)"]
    assert hops[0].sent["tun_ipv4_dst"] == str(p.model.node("host1").underlay_ip)
    assert "the direct path (an entry host2 learnt)" in hops[0].detail
    assert any(s.stage == "direct" and s.owner.startswith("learned") for s in hops[0].steps), \
        [(s.stage, s.owner) for s in hops[0].steps]


@pytest.mark.parametrize("src, dst, src_addr, node, stage, reason", [
    ("svc1", "fd41::3930:99:6600:a00:4", None, "appliance", "route", "unknown_destination"),
    ("svc1", "a-vm1", "fd00:5e:1::99", "host2", "from_endpoint", "spoofed_source"),
    ("svc1", "2001:db8::1", None, "host2", "from_endpoint", "not_to_platform"),
    ("a-vm1", "platform", None, "host1", "vm_return", "vm_initiated"),
    ("a-vm1", "10.0.0.5", None, "host1", "from_vm", "vm_not_to_platform"),
])
def test_a_forged_packet_ends_on_its_named_drop(p, src, dst, src_addr, node, stage, reason):
    hops = T.trace(tracer(p), p.model, src, dst, "udp", 7, src_addr=src_addr)
    last = hops[-1]
    assert (last.node, last.outcome, last.reason) == (node, "dropped", reason), T.render(hops)
    assert last.steps[-1].stage == stage and last.steps[-1].owner.startswith(f"drop: {reason}")
    assert last.detail.startswith(f"in {stage}: {reason} - ")


def test_a_pair_not_set_up_yet_ends_at_the_controller():
    hops = T.trace(tracer(Platform()), Platform().model, "svc1", "a-vm1", "tcp", 80)
    assert (hops[-1].node, hops[-1].outcome) == ("host1", "punted")
    assert "first packet of a pair" in hops[-1].detail


def test_assumed_conntrack_states(p):
    # every lookup "new": the VM's answer is no reply, so vm_return drops it
    hops = T.trace(tracer(p, ct="new"), p.model, "svc1", "a-vm1", "tcp", 80, 41000, reply=True)
    assert (hops[-1].node, hops[-1].reason) == ("host1", "vm_initiated"), T.render(hops)
    # "est": the service's packet still goes through, conntrack's answers say +est
    hops = T.trace(tracer(p, ct="est"), p.model, "svc1", "a-vm1", "tcp", 80, 41001)
    assert hops[-1].outcome == "delivered"
    assert all("+new" not in c for h in hops for c in h.cts) and any("+est" in c for h in hops for c in h.cts)
    with pytest.raises(ValueError):
        tracer(p, ct="bogus")


def test_bad_names_are_errors(p):
    for src, dst in (("nobody", "a-vm1"), ("svc1", "no-such-vm")):
        with pytest.raises(ValueError):
            T.trace(tracer(p), p.model, src, dst)


# ofproto/trace of OVS 3.1 in the lab (host2: svc1's packet; host1: a VM's, recirculated)
OFPROTO_HOST2 = """\
Flow: udp6,in_port=10,vlan_tci=0x0000,dl_src=02:65:0e:99:9d:89,dl_dst=02:76:36:34:00:01,ipv6_src=fd00:5e:1::10,ipv6_dst=fd41::3930:1f:6600:a00:4,ipv6_label=0x00000,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,tp_src=40000,tp_dst=7

bridge("br-int")
----------------
 0. in_port=10, priority 100, cookie 0x102000017bcfcd2
    goto_table:10
10. ipv6,in_port=10,ipv6_src=fd00:5e:1::10,ipv6_dst=fd41::/16, priority 100, cookie 0x102000017bcfcd2
    check_pkt_larger(1456)->NXM_NX_REG0[0]
    goto_table:14
    14. ipv6,reg0=0x1/0x1,in_port=10, priority 120, cookie 0x108000f17bcfcd2
            meter:2
            CONTROLLER:65535
    goto_table:14
14. ipv6,in_port=10, priority 100, cookie 0x102000017bcfcd2
    ct(commit,zone=65532)
    drop
     -> Sets the packet to an untracked state, and clears all the conntrack fields.
    set_field:0x6464->tun_id
    set_field:192.168.64.10->tun_dst
    set_field:0xf48b0b7->tun_metadata0
    resubmit(,15)
    15. No match.
            drop
    output:1
     -> output to native tunnel
     -> tunneling to 192.168.64.10 via br-phy
     -> tunneling from 02:eb:57:06:89:69 192.168.64.12 to 02:4c:86:12:32:36 192.168.64.10

bridge("br-phy")
----------------
 0. priority 0
    NORMAL
     -> forwarding to learned port

Final flow: unchanged
Megaflow: recirc_id=0,eth,udp6,in_port=10,ipv6_src=fd00:5e:1::10,ipv6_dst=fd41::/16,nw_ecn=0,nw_ttl=64,nw_frag=no
Datapath actions: check_pkt_len(size=1456,gt(meter(1),userspace(pid=0,controller(reason=1,dont_send=1,continuation=0,recirc_id=1,rule_cookie=0x108000f17bcfcd2,controller_id=0,max_len=65535))),le(ct(commit,zone=65532),tnl_push(tnl_port(1),header(size=58,type=5,eth(dst=02:4c:86:12:32:36,src=02:eb:57:06:89:69,dl_type=0x0800),ipv4(src=192.168.64.12,dst=192.168.64.10,proto=17,tos=0,ttl=64,frag=0x4000),udp(src=0,dst=6081,csum=0x0),geneve(vni=0x6464,options({class=0xffff,type=0x64,len=4,0xf48b0b7}))),out_port(5)),4))
"""

OFPROTO_HOST1 = """\
bridge("br-int")
----------------
 0. in_port=10, priority 100, cookie 0x1040000e1d9df31
    goto_table:40
40. ip,in_port=10,nw_src=10.0.0.4,nw_dst=100.100.0.1, priority 100, cookie 0x1040000e1d9df31
    ct(table=42,zone=1,nat)

Datapath actions: ct(zone=1,nat),recirc(0x1)

===============================================================================
recirc(0x1) - resume conntrack with ct_state=est|rpl|trk
===============================================================================

bridge("br-int")
----------------
    thaw
        Resuming from table 42
42. priority 0, cookie 0x108000d00000000
    drop

Datapath actions: drop
"""


def test_ovs_steps_follow_the_taken_branch_and_the_recirculation():
    # not the nested gt branch; resubmit(,15)'s table, where nothing matched
    assert T.ovs_steps(OFPROTO_HOST2) == [(0, 100), (10, 100), (14, 100), (15, None)]
    learnt = OFPROTO_HOST2.replace("    15. No match.\n            drop\n",
                                   "    15. ipv6,ipv6_src=fd00:5e:1::10, priority 100, cookie 0x10a000017bcfcd2\n")
    assert T.ovs_steps(learnt) == [(0, 100), (10, 100), (14, 100), (15, 100)]
    assert T.ovs_steps(OFPROTO_HOST1) == [(0, 100), (40, 100), (42, 0)]
    assert T.ovs_steps('bridge("br-int")\n----\n 1. No match.\n    drop\n') == [(1, None)]


def test_ovs_flow_speaks_ofproto_trace():
    pkt = {"eth_type": 0x86DD, "eth_src": "02:00:00:00:00:01", "ipv6_src": "fd00:5e:1::10",
           "ipv6_dst": "fd41::1", "ip_proto": 17, "udp_src": 40000, "udp_dst": 7, "nw_ttl": 64,
           "tunnel_id": 0x6464, "tun_metadata0": 0x5EC0E7A1, "tun_ipv4_src": "192.168.64.12"}
    assert T.ovs_flow(pkt, 1) == ("in_port=1,udp6,dl_src=02:00:00:00:00:01,ipv6_src=fd00:5e:1::10,"
                                  "ipv6_dst=fd41::1,udp_src=40000,udp_dst=7,nw_ttl=64,"
                                  "tun_src=192.168.64.12,tun_id=0x6464,tun_metadata0=0x5ec0e7a1")
    assert T.ovs_flow({"eth_type": 0x0800, "ip_proto": 1, "icmpv4_type": 8}, 3) == "in_port=3,icmp,icmp_type=8"


def test_with_an_ofproto_trace_each_hop_says_whether_ovs_agrees(p):
    calls = []

    def fake_ofproto(node: str, flow: str, states: list[str]) -> str:
        calls.append((node, flow, states))
        return OFPROTO_HOST2 if node == "host2" else 'bridge("br-int")\n 0. No match.\n'
    forget_direct(p)     # as the captured text: host2 learnt nothing (resubmit(,15): no match)
    t = T.Tracer(p.model, tracer(p).nodes, ofproto_trace=fake_ofproto)
    hops = T.trace(t, p.model, "svc1", "a-vm1", "udp", 7)
    assert hops[0].ovs["agrees"] and calls[0][2] == ["new,trk"]         # the sim's ct answer
    assert not hops[1].ovs["agrees"] and hops[1].ovs["differs_at"] == 0
    assert "ofproto/trace DIFFERS from stage 1" in T.render(hops)
