"""The trace's walk (vnet64.controller.trace) over the flows the controller gives the
default topology's three nodes: hop by hop as the patent's FIG. 2A/2B, the forged cases
each ending on the flow that names their drop, and ovn-trace's --ct states. (The lab test
tests/lab/test_trace.py walks flows read back from real switches.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.unit.test_pipeline_trace import A6, PORTS, Platform, round_trip
from vnet64.controller import trace as T


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


def test_a_round_trip_hop_by_hop_with_the_patents_numbers(p):
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
