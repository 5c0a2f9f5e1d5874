"""Small fragments across the platform (issue 19, deviation 7; RFC 6146 3.4: fragments
MUST be handled; RFC 8200 5: any non-final fragment of at least 8 bytes of data is legal).

Open vSwitch's userspace reassembly (the ct action) drops non-final fragments shorter than
1280 bytes (IPv6) / 1200 (IPv4) by default ("v6/v4 frags too small"). The node agent
lowers both to 400 bytes, the lowest OVS accepts (controller/vnet64/node/datapath.py,
``min_fragment``), on every node of the userspace datapath: a datagram sent in 600-byte
fragments now crosses the platform both ways; pieces under 400 bytes are still dropped
(test_security.py, "tiny-fragments").
"""

from __future__ import annotations

import itertools
import random

import pytest
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, defragment6, fragment6
from vnet64_lab.traffic import A6, SVC1, UDP_PORT, ns_of, ovs_node, running_platform

from tests.lab.conftest import ROOT, need_lab, new_lab
from tests.lab.traffic import Pcap, carrying, frame, one, send_frames, udp6, vif

SPORTS = itertools.count(44000)
PIECE = 600          # bytes of each fragment: over OVS's floor (400), under its default (1280)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    need_lab()
    with running_platform(new_lab("g"), ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        yield plan, tmp_path_factory.mktemp("pcap")


@pytest.mark.parametrize("node", ["host1", "host2", "appliance"])
def test_every_node_takes_fragments_from_400_bytes(platform, node):
    plan, _ = platform
    status = ovs_node(plan, node).appctl("dpctl/ipf-get-status")
    assert "min v4 frag size: 400" in status and "min v6 frag size: 400" in status, status


def test_a_services_small_ipv6_fragments_reach_the_vm(platform):
    """svc1 sends a 1,500-byte datagram to a-vm1 in IPv6 fragments of 600 bytes: a-vm1's
    echo server gets it whole (the customer host's zones reassemble it before NAT) and
    svc1 gets the answer."""
    plan, tmp = platform
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    marker, sport = "frag6-", next(SPORTS)
    whole = IPv6(src=SVC1, dst=A6) / IPv6ExtHdrFragment(id=random.randint(1, 2**31)) \
        / UDP(sport=sport, dport=UDP_PORT) / marker.encode().ljust(1500, b"f")
    pieces = fragment6(whole, PIECE)
    assert len(pieces) >= 3 and all(len(p) <= PIECE for p in pieces)
    with Pcap(vm.ns, "eth0", tmp, bpf="udp or (ip[6:2] & 0x1fff != 0)") as at_vm, \
            Pcap(svc, "eth0", tmp, bpf="ip6") as at_svc:
        assert send_frames(svc, "eth0", [frame(plan, "svc1") / p for p in pieces]) == len(pieces)
        at_svc.wait(lambda p: any(q.haslayer(IPv6) and q[IPv6].src == A6 for q in carrying(p, marker)), 5)
        got_vm, got_svc = at_vm.stop(), at_svc.stop()
    assert carrying(got_vm, marker), "nothing of the datagram reached a-vm1"
    answers = [q for q in carrying(got_svc, marker) if q.haslayer(IPv6) and q[IPv6].src == A6]
    assert answers, [q.summary() for q in got_svc]


def test_a_vms_small_ipv4_fragments_reach_the_service(platform):
    """a-vm1 answers a flow svc1 opened with a 1,500-byte datagram in IPv4 fragments of
    600 bytes: svc1 gets it whole, payload byte for byte."""
    plan, tmp = platform
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    sport = next(SPORTS)
    with Pcap(vm.ns, "eth0", tmp, bpf="udp") as at_vm:
        assert send_frames(svc, "eth0", [udp6(plan, "open-frag4-", 100, sport)]) == 1
        request = one(at_vm.wait(lambda p: carrying(p, "open-frag4-"), 5), "open-frag4-", IP,
                      str(vm.ipv4.ip))[IP]
    payload = b"frag4-".ljust(1500, b"g")
    whole = IP(src=str(vm.ipv4.ip), dst=request.src, id=random.randint(1, 65535)) \
        / UDP(sport=request[UDP].dport, dport=request[UDP].sport) / payload
    pieces = fragment(whole, PIECE - 20)        # fragsize: data bytes per piece
    assert len(pieces) >= 3 and all(len(p) <= PIECE for p in pieces)
    with Pcap(svc, "eth0", tmp, bpf="ip6") as at_svc:
        assert send_frames(vm.ns, "eth0", [frame(plan, "a-vm1") / p for p in pieces]) == len(pieces)
        at_svc.wait(lambda p: carrying(p, b"frag4-"), 5)
        got = at_svc.stop()
    frags = [q[IPv6] for q in got if q.haslayer(IPv6ExtHdrFragment) and q[IPv6].src == A6]
    whole6 = IPv6(bytes(defragment6(frags))) if frags else \
        next((q[IPv6] for q in got if q.haslayer(UDP) and q[IPv6].src == A6), None)
    assert whole6 is not None and whole6.haslayer(UDP), [q.summary() for q in got]
    assert (whole6[UDP].sport, whole6[UDP].dport) == (UDP_PORT, sport)
    assert bytes(whole6[UDP].payload) == payload
