"""The controller's relay of ICMPv6 errors back from TAYGA (customer module doc): the
bytes it re-injects (read back with scapy) and Logic's dispatch and counters.

OVS 3.1's damage is reproduced byte for byte: ``nat_packet_ipv6`` un-NATs the outer
source of a related error and "updates the checksum" of the inner protocol (TCP) at the
outer L4 offset 16 - the first 16 bits of the quoted source address - then recomputes
the ICMPv6 checksum over the damaged message."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether

from tests.conftest import DEFAULT_TOPOLOGY
from vnet64 import topology
from vnet64.controller import model as M
from vnet64.controller.flows import PacketOut, Resubmit
from vnet64.controller.logic import Logic
from vnet64.controller.pipeline import tables_for
from vnet64.controller.roles.customer import relayed_icmp6_error
from vnet64.ports import GENEVE_PORT, XLAT_PORT, vif_port

A6 = "fd41::3930:1f:6600:a00:4"          # a-vm1's platform address (outer source after un-DNAT)
XLAT_VM = "fd64:64::a00:4"               # what TAYGA gave as outer source (before un-DNAT)
ALIAS6 = "fd64:64::c612:1"               # the pair's alias: outer destination, quoted source
XLAT = 2


def error(inner_l4, outer=ICMPv6DestUnreach(code=1)) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IPv6(src=A6, dst=ALIAS6) / outer / IPv6(src=ALIAS6, dst=A6) / inner_l4)


def _add(a: int, b: int) -> int:
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


def ovs_damaged(frame: bytes) -> bytes:
    """What OVS 3.1's v6 DNAT zone leaves of a correct error about TCP: the 16 bits at
    ICMPv6 offset 16 'checksum-updated' for XLAT_VM -> A6 (recalc_csum128), then the
    ICMPv6 checksum recomputed."""
    old, new = IPv6Address(XLAT_VM).packed, IPv6Address(A6).packed
    off = 14 + 40 + 16
    field = struct.unpack_from("!H", frame, off)[0]
    acc = ~field & 0xFFFF
    for i in range(0, 16, 2):
        acc = _add(acc, ~struct.unpack_from("!H", old, i)[0] & 0xFFFF)
        acc = _add(acc, struct.unpack_from("!H", new, i)[0])
    damaged = frame[:off] + struct.pack("!H", ~acc & 0xFFFF) + frame[off + 2:]
    pkt = Ether(damaged)
    del pkt[IPv6].payload.cksum
    return bytes(pkt)


def test_a_damaged_error_gets_its_quoted_source_back_and_a_valid_checksum():
    good = error(TCP(sport=40000, dport=9999, flags="S"))
    bad = ovs_damaged(good)
    assert bad != good and Ether(bad)[IPv6].payload.payload.src != ALIAS6   # the premise
    fixed = relayed_icmp6_error(bad)
    assert fixed == good
    pkt = Ether(fixed)
    icmp = pkt[IPv6].payload
    sent = icmp.cksum
    del icmp.cksum
    assert Ether(bytes(pkt))[IPv6].payload.cksum == sent
    quoted = icmp.payload
    assert (quoted.src, quoted.dst, quoted.payload.sport) == (ALIAS6, A6, 40000)


@pytest.mark.parametrize("inner_l4,outer", [
    (UDP(sport=40000, dport=53), ICMPv6DestUnreach(code=4)),
    (TCP(sport=40000, dport=9999, flags="S"), ICMPv6DestUnreach(code=1)),
    (UDP(sport=40000, dport=53) / (b"x" * 1300), ICMPv6PacketTooBig(mtu=1280)),
])
def test_an_intact_error_is_relayed_unchanged(inner_l4, outer):
    frame = error(inner_l4, outer)
    assert relayed_icmp6_error(frame) == frame


def test_ethernet_trailer_is_not_relayed():
    frame = error(TCP(sport=40000, dport=9999))
    assert relayed_icmp6_error(frame + b"\0" * 6) == frame


@pytest.mark.parametrize("frame", [
    bytes(Ether() / IPv6(src=A6, dst=ALIAS6) / ICMPv6EchoRequest() / (b"x" * 60)),   # not an error
    error(TCP())[:14 + 40 + 8 + 20],                                      # quote shorter than IPv6
    bytes(Ether() / IPv6(src=A6, dst=ALIAS6) / ICMPv6DestUnreach() / (b"\x45" + b"\0" * 59)),
    error(TCP())[:14 + 20],                                               # truncated
    bytes(Ether(type=0x0800) / (b"\0" * 120)),                            # not IPv6
    error(TCP())[:-4],                                                    # shorter than its length
])
def test_anything_else_is_not_relayed(frame):
    assert relayed_icmp6_error(frame) is None


def host1_logic() -> tuple[Logic, int]:
    topo = topology.load(DEFAULT_TOPOLOGY)
    model = M.from_topology(topo, bindings=M.topology_bindings(topo, vif_port))
    logic = Logic(lambda: model)
    dpid = model.node("host1").datapath_id
    logic.switch_connected(dpid, {GENEVE_PORT: 1, XLAT_PORT: XLAT, vif_port("vm", "a-vm1"): 10,
                                  vif_port("vm", "b-vm1"): 11})
    return logic, dpid


def test_logic_relays_from_v6_unsnat_back_into_it_and_counts():
    logic, dpid = host1_logic()
    table = tables_for("host").id("v6_unsnat")
    good = error(TCP(sport=40000, dport=9999, flags="S"))
    assert logic.packet_in(dpid, table, XLAT, ovs_damaged(good)) == \
        [PacketOut(good, XLAT, (Resubmit("v6_unsnat"),))]
    assert logic.packet_in(dpid, table, XLAT, good) == [PacketOut(good, XLAT, (Resubmit("v6_unsnat"),))]
    assert logic.stats["icmp6_errors_relayed"] == 2 and logic.stats["icmp6_errors_repaired"] == 1
    assert logic.packet_in(dpid, table, XLAT, error(TCP())[:14 + 20]) == []
    assert logic.stats["packet_ins_ignored"] == 1
