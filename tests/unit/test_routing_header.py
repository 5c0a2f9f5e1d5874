"""A routing header with Segments Left != 0 (RFC 7915 5.1: must not be translated,
Parameter Problem SHOULD go back): the packet the translator namespace bounces is
punted by ``from_translator``, and the controller answers the service (customer module
doc, "Routing headers") - the bytes read back with scapy, Logic's dispatch and counters.
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv6Address

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (ICMPv6ParamProblem, IPerror6, IPv6, IPv6ExtHdrDestOpt,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import Ether

from tests.conftest import DEFAULT_TOPOLOGY
from tests.support.fake import FakeSwitch
from vnet64 import gateway, topology
from vnet64.controller import model as M
from vnet64.controller.flows import CT, Output, PacketOut, SetField
from vnet64.controller.logic import Logic
from vnet64.controller.pipeline import VNI, ZONE_ENDPOINTS, tables_for
from vnet64.controller.roles.customer import routing_header_error
from vnet64.ports import GENEVE_PORT, XLAT_PORT, vif_port

SVC1, A6, B6 = "fd00:5e:1::10", "fd41::3930:1f:6600:a00:4", "fd41::3930:20:6600:a00:4"
XLAT_VM = "fd64:64::a00:4"               # a-vm1's IPv4 as TAYGA sees it (after the DNAT zone)
SVC_MAC = "02:00:00:00:5e:01"
XLAT, GENEVE = 2, 1
TOKEN = 0x5EC0E7A1


def bounced(alias6: str, *ext, segleft: int = 1, payload: bytes = b"rh-marker") -> bytes:
    """svc1's packet to a-vm1 with a type 0 routing header, as the IPv6 zones left it
    (source = the pair's alias, destination = TAYGA's address of a-vm1) and as the
    translator namespace sent it back."""
    ip = IPv6(src=alias6, dst=XLAT_VM, hlim=63)
    for header in ext:
        ip = ip / header
    return bytes(Ether(src=gateway.GATEWAY_MAC, dst="02:00:00:00:00:02") / ip
                 / IPv6ExtHdrRouting(type=0, addresses=[B6], segleft=segleft)
                 / UDP(sport=41000, dport=7) / payload)


def answer(frame: bytes) -> Ether:
    return Ether(routing_header_error(frame, IPv6Address(SVC1), IPv6Address(A6), SVC_MAC))


@pytest.mark.parametrize("ext,pointer", [((), 40 + 3),
                                         ((IPv6ExtHdrHopByHop(),), 40 + 8 + 3),
                                         ((IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()), 40 + 16 + 3)])
def test_parameter_problem_points_at_segments_left_and_quotes_what_the_service_sent(ext, pointer):
    original = Ether(bounced("fd64:64::c612:1", *ext))
    got = answer(bytes(original))
    assert (got.src, got.dst) == (gateway.GATEWAY_MAC, SVC_MAC)
    assert (got[IPv6].src, got[IPv6].dst, got[IPv6].hlim) == (A6, SVC1, 64)
    problem = got[ICMPv6ParamProblem]
    assert (problem.type, problem.code, problem.ptr) == (4, 0, pointer)
    quoted = got[IPerror6]
    assert (quoted.src, quoted.dst) == (SVC1, A6)        # as svc1 sent it: its socket matches
    assert bytes(quoted)[pointer] == 1                    # the byte pointed at: Segments Left
    assert bytes(quoted)[40:] == bytes(original[IPv6])[40:]
    # the checksum scapy computes for the same message is the one we wrote
    again = got.copy()
    del again[ICMPv6ParamProblem].cksum
    assert Ether(bytes(again))[ICMPv6ParamProblem].cksum == problem.cksum


def test_the_quote_is_cut_to_fit_1280_bytes():
    got = answer(bounced("fd64:64::c612:1", payload=b"x" * 1400))
    assert len(got[IPv6]) == 1280


@pytest.mark.parametrize("frame", [
    bounced("fd64:64::c612:1", segleft=0),                                     # spent: translated
    bytes(Ether() / IPv6(src="fd64:64::c612:1", dst=XLAT_VM) / UDP()),         # no routing header
    bytes(Ether(type=0x0800) / (b"\0" * 80)),                                  # not IPv6
    bounced("fd64:64::c612:1")[:14 + 40 + 4],                                  # shorter than its length
])
def test_anything_else_gets_no_answer(frame):
    assert routing_header_error(frame, IPv6Address(SVC1), IPv6Address(A6), SVC_MAC) is None


@pytest.fixture
def host1():
    topo = topology.load(DEFAULT_TOPOLOGY)
    model = M.from_topology(topo, tunnel_token=TOKEN, bindings=M.topology_bindings(topo, vif_port))
    logic = Logic(lambda: model)
    dpid = model.node("host1").datapath_id
    tables, msgs = logic.switch_connected(dpid, {GENEVE_PORT: GENEVE, XLAT_PORT: XLAT,
                                                 vif_port("vm", "a-vm1"): 10,
                                                 vif_port("vm", "b-vm1"): 11})
    sw = FakeSwitch(tables)
    sw.apply(msgs)
    return model, logic, dpid, sw


def test_from_translator_punts_what_comes_from_an_alias_and_translates_the_rest(host1):
    _, _, _, sw = host1
    pkt = {"eth_type": 0x86DD, "ipv6_src": "fd64:64::c612:1", "ipv6_dst": XLAT_VM, "ip_proto": 17,
           "udp_src": 41000, "udp_dst": 7}
    t = sw.trace(pkt, XLAT)
    assert [stage for stage, _ in t.punts] == ["from_translator"], str(t)
    t = sw.trace({**pkt, "ipv6_src": XLAT_VM, "ipv6_dst": "fd64:64::c612:1"}, XLAT)   # TAYGA's output
    assert not t.punts, str(t)


def test_logic_sends_the_answer_straight_to_the_services_host_and_counts(host1):
    model, logic, dpid, _ = host1
    pair_frame = bytes(Ether() / IPv6(src=SVC1, dst=A6) / UDP(sport=41000, dport=7))
    logic.packet_in(dpid, tables_for("host").id("pair"), GENEVE, pair_frame)      # the pair: alias 1
    frame = bounced("fd64:64::c612:1")
    [out] = logic.packet_in(dpid, tables_for("host").id("from_translator"), XLAT, frame)
    host2 = str(model.node("host2").underlay_ip)
    assert out == PacketOut(routing_header_error(frame, IPv6Address(SVC1), IPv6Address(A6),
                                                 model.endpoint_by_ipv6(IPv6Address(SVC1)).mac),
                            0xFFFFFFFD, (SetField("tunnel_id", VNI), SetField("tun_ipv4_dst", host2),
                                         SetField("tun_metadata0", TOKEN), Output(GENEVE)))
    assert logic.stats["icmp6_param_problems_sent"] == 1
    # an alias no pair holds, or a packet that is no such thing: nothing, counted as ignored
    assert logic.packet_in(dpid, tables_for("host").id("from_translator"), XLAT,
                           bounced("fd64:64::c612:9")) == []
    assert logic.packet_in(dpid, tables_for("host").id("from_translator"), XLAT,
                           bounced("fd64:64::c612:1", segleft=0)) == []
    assert logic.stats["packet_ins_ignored"] == 2


def test_an_endpoint_on_the_same_host_gets_it_through_its_zone():
    topo = topology.load(DEFAULT_TOPOLOGY)
    bindings = [b if b.kind == "vm" else dataclasses.replace(b, node="host1")    # svc1's port on host1
                for b in M.topology_bindings(topo, vif_port)]
    model = M.from_topology(topo, tunnel_token=TOKEN, bindings=bindings)
    ep = model.endpoints[0]
    assert ep.host == "host1"
    logic = Logic(lambda: model)
    dpid = model.node("host1").datapath_id
    logic.switch_connected(dpid, {GENEVE_PORT: GENEVE, XLAT_PORT: XLAT, vif_port("vm", "a-vm1"): 10,
                                  vif_port("endpoint", ep.name): 12})
    logic.packet_in(dpid, tables_for("host").id("pair"), GENEVE,
                    bytes(Ether() / IPv6(src=SVC1, dst=A6) / UDP(sport=41000, dport=7)))
    [out] = logic.packet_in(dpid, tables_for("host").id("from_translator"), XLAT,
                            bounced("fd64:64::c612:1"))
    assert out.actions == (CT(zone=ZONE_ENDPOINTS, table="to_endpoint"),)
