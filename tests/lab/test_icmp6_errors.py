"""ICMP errors through the IPv6 conntrack zones, PMTUD end to end, hop limits, Parameter
Problem and ICMP extensions (issue 19, deviations 1, 3 and 6; RFC 7915 4.1/4.2/5.1/5.2,
RFC 6146 3.5, RFC 8201/1191, RFC 1812, RFC 4884).

An ICMPv6 error about a pair's packet is NATed by the two IPv6 zones of the customer
host: its outer header like the packet it answers, and the packet it quotes back to what
its sender sent. Open vSwitch 3.1's userspace conntrack did that with the checksum
update of the connection's protocol on the ICMPv6 header: a Packet Too Big about UDP had
its MTU overwritten, and one about TCP had its quoted source address damaged and was
then refused as invalid. vnet64's patched ovs-vswitchd
(ovs-setup/patches/openvswitch-3.1-conntrack-related-icmpv6.patch) fixes the cause;
each test here failed with Debian's ovs-vswitchd 3.1.

The PMTUD tests shrink the path of a live TCP connection: an nftables rule in the
receiver's namespace drops the sender's packets above the new MTU from then on (a router
whose link got smaller), and the test answers the first dropped packet with the error
that router sends - ICMPv6 Packet Too Big from svc1's side, ICMPv4 Fragmentation Needed
from a-vm1's. The sender must get that error translated (with the MTU adjusted by 20,
RFC 7915 4.2/5.2), lower its segment size, and complete the transfer byte for byte.

Hop limits: the platform is one router hop (controller customer module doc, "Hop
limits"): each starting value 1-4, both ways, arrives one less or is answered by the
sender's gateway with a Time Exceeded. With Debian's TAYGA (no "hop-limit-adjust")
values 2-4 arrive three less or expire silently.

Parameter Problem crosses both ways with its pointer mapped to the same field (RFC 7915
Figures 3 and 6), and an ICMP extension structure (an MPLS label stack object) crosses in
Time Exceeded and Destination Unreachable byte for byte: TAYGA 0.9.2 dropped both (vnet64's
tayga-0.9.2-rfc7915-parameter-problem / -icmp-extensions patches).
"""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import ICMPv6PacketTooBig, ICMPv6ParamProblem, IPerror6, IPv6, in6_chksum
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum
from vnet64_lab.traffic import (A6, LINE_PORT, PLATFORM_IP, SVC1, UDP_PORT, LineSession, in_ns, ns_of,
                                running_platform)

from tests.lab.conftest import ROOT, need_lab, new_lab
from tests.lab.traffic import Pcap, carrying, frame, one, send_frames, udp6, vif

SPORTS = itertools.count(43000)   # a fresh service port (so a fresh flow) per exchange


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    need_lab()
    with running_platform(new_lab("i"), ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        # svc1's own kernel stays quiet about the VM's answers no socket of it waits for
        nft(ns_of(plan, "svc1"), "add table inet quiet",
            "add chain inet quiet out { type filter hook output priority 0; }",
            "add rule inet quiet out icmpv6 type destination-unreachable drop")
        yield plan, tmp_path_factory.mktemp("pcap")


def nft(ns: str, *commands: str) -> None:
    for command in commands:
        proc = in_ns(ns, "nft", command)
        assert proc.returncode == 0, (command, proc.stderr)


def icmp6_checksum_ok(ip6) -> None:
    again = IPv6(bytes(ip6))
    fresh = again.copy()
    del fresh.payload.cksum
    assert again.payload.cksum == IPv6(bytes(fresh)).payload.cksum, "ICMPv6 checksum"


def icmp_checksum_ok(ip) -> None:
    again = IP(bytes(ip))
    fresh = again.copy()
    del fresh[ICMP].chksum
    assert again[ICMP].chksum == IP(bytes(fresh))[ICMP].chksum, "ICMPv4 checksum"


def as_vm_got_it(plan, tmp, marker: str, size: int, sport: int):
    """svc1 opens a UDP flow to a-vm1's echo server: its datagram as a-vm1 received it."""
    vm = vif(plan, "a-vm1")
    with Pcap(vm.ns, "eth0", tmp, bpf="udp") as at_vm:
        assert send_frames(ns_of(plan, "svc1"), "eth0", [udp6(plan, marker, size, sport)]) == 1
        return one(at_vm.wait(lambda p: carrying(p, marker), 5), marker, IP, str(vm.ipv4.ip))[IP]


def as_service_got_it(plan, tmp, marker: str, size: int, sport: int):
    """svc1 opens a UDP flow to a-vm1's echo server: a-vm1's answer as svc1 received it."""
    svc = ns_of(plan, "svc1")
    with Pcap(svc, "eth0", tmp, bpf="udp") as at_svc:
        assert send_frames(svc, "eth0", [udp6(plan, marker, size, sport)]) == 1
        pkts = at_svc.wait(lambda p: any(q.haslayer(IPv6) and q[IPv6].src == A6 for q in carrying(p, marker)), 5)
    return next(q for q in carrying(pkts, marker) if q[IPv6].src == A6)[IPv6]


@pytest.mark.parametrize("mtu", [1261, 1400])
def test_packet_too_big_about_udp_reaches_the_service_with_its_mtu(platform, mtu):
    """a-vm1 reports svc1's datagram too big (Fragmentation Needed, MTU ``mtu``): svc1
    gets a Packet Too Big with MTU ``mtu`` + 20 (RFC 7915 4.2) quoting its own datagram
    (was 11429 for 1261: the MTU's low half "updated" as a UDP checksum)."""
    plan, tmp = platform
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    marker, sport = f"ptb4-{mtu}-", next(SPORTS)
    request = as_vm_got_it(plan, tmp, marker, 1300, sport)
    too_big = frame(plan, "a-vm1") / IP(src=str(vm.ipv4.ip), dst=request.src) \
        / ICMP(type=3, code=4, nexthopmtu=mtu) / bytes(request)[:548]
    with Pcap(svc, "eth0", tmp, bpf="icmp6") as at_svc:
        assert send_frames(vm.ns, "eth0", [too_big]) == 1
        got = at_svc.wait(lambda p: any(q.haslayer(ICMPv6PacketTooBig) for q in p), 5)
    ptbs = [q[IPv6] for q in got if q.haslayer(ICMPv6PacketTooBig)]
    assert len(ptbs) == 1, [q.summary() for q in got]
    ptb = ptbs[0]
    what = f"{ptb.summary()} mtu={ptb[ICMPv6PacketTooBig].mtu}"
    assert (ptb.src, ptb.dst, ptb[ICMPv6PacketTooBig].mtu) == (A6, SVC1, mtu + 20), what
    quoted = ptb[IPerror6]
    assert (quoted.src, quoted.dst, quoted.plen) == (SVC1, A6, 1300 - 40), what
    assert (quoted[UDPerror].sport, quoted[UDPerror].dport) == (sport, UDP_PORT), what
    icmp6_checksum_ok(ptb)


def test_packet_too_big_about_udp_reaches_the_vm_with_its_mtu(platform):
    """svc1 reports a-vm1's answer too big (Packet Too Big, MTU 1400): a-vm1 gets a
    Fragmentation Needed with MTU 1380 (RFC 7915 5.2) quoting its own datagram (was
    1422: the PTB reached the translator with MTU 56787)."""
    plan, tmp = platform
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    marker, sport = "ptb6-", next(SPORTS)
    echoed = as_service_got_it(plan, tmp, marker, 200, sport)
    too_big = frame(plan, "svc1") / IPv6(src=SVC1, dst=A6) / ICMPv6PacketTooBig(mtu=1400) / bytes(echoed)
    with Pcap(vm.ns, "eth0", tmp, bpf="icmp") as at_vm:
        assert send_frames(svc, "eth0", [too_big]) == 1
        got = at_vm.wait(lambda p: carrying(p, marker), 5)
    errors = [q[IP] for q in carrying(got, marker) if q.haslayer(IPerror)]
    assert len(errors) == 1, [q.summary() for q in got]
    err = errors[0]
    what = f"{err.summary()} type={err[ICMP].type} code={err[ICMP].code} mtu={err[ICMP].nexthopmtu}"
    assert (err.src, err.dst) == (PLATFORM_IP, str(vm.ipv4.ip)), what
    assert (err[ICMP].type, err[ICMP].code, err[ICMP].nexthopmtu) == (3, 4, 1380), what
    quoted = err[IPerror]
    assert (quoted.src, quoted.dst, quoted.proto) == (str(vm.ipv4.ip), PLATFORM_IP, 17), what
    assert quoted[UDPerror].sport == UDP_PORT, what
    icmp_checksum_ok(err)


# The path's new MTU, IPv6 (svc1's side) and IPv4 (a-vm1's side): one translation apart
PATH_MTU6, PATH_MTU4 = 1280, 1260
LINE = "pmtud-" + "x" * 7000      # several full-size segments each way


def first_dropped(cap: Pcap, src: str, limit: int):
    """The first packet from ``src`` longer than ``limit`` (L3 bytes) the capture saw."""
    def big(pkts):
        for p in pkts:
            ip = p[IPv6] if IPv6 in p else p[IP] if IP in p else None
            if ip is not None and ip.src == src and TCP in ip and len(ip) > limit:
                return ip
        return None
    cap.wait(lambda p: big(p) is not None, 5)
    return big(cap.packets())


def sizes_after(pkts: list, src: str, dropped, limit: int) -> list[int]:
    """L3 lengths of the data segments from ``src`` from the resending of ``dropped``
    within ``limit`` on: everything its sender sent once it had lowered its segment size."""
    out, resent = [], False
    for p in pkts:
        ip = p[IPv6] if IPv6 in p else p[IP] if IP in p else None
        if ip is None or ip.src != src or TCP not in ip or not len(ip[TCP].payload):
            continue
        resent = resent or (ip[TCP].seq == dropped[TCP].seq and len(ip) <= limit)
        if resent:
            out.append(len(ip))
    return out


def forget_path_mtus(*namespaces: str) -> None:
    """Each namespace forgets the path MTUs it learnt (a test's error stays in its test)."""
    for ns in namespaces:
        for family in ("-4", "-6"):
            proc = in_ns(ns, "ip", family, "route", "flush", "cache")
            assert proc.returncode == 0, proc.stderr


@contextlib.contextmanager
def shrunk_path(plan, receiver: str, drop: str):
    """A live TCP connection svc1 -> a-vm1 (warmed up), then ``receiver``'s namespace
    drops what nftables rule ``drop`` matches: the path shrank. Undone afterwards, path
    MTUs learnt on either side forgotten."""
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    forget_path_mtus(vm.ns, svc)
    session = LineSession(plan, A6, LINE_PORT)
    try:
        assert session.send("warm-up")["reply"].endswith("warm-up")
        nft(receiver, "add table inet path",
            "add chain inet path in { type filter hook input priority 0; }",
            f"add rule inet path in {drop} drop")
        yield session
    finally:
        session.close()
        in_ns(receiver, "nft", "delete table inet path")
        forget_path_mtus(vm.ns, svc)


def test_pmtud_from_the_service_side_a_vm_sends_smaller(platform):
    """svc1's side of the path shrinks to 1280 bytes while a-vm1 sends: svc1's Packet
    Too Big about a-vm1's TCP segment reaches a-vm1 as Fragmentation Needed 1260 quoting
    that segment, and a-vm1's TCP resends in segments that fit; the transfer completes."""
    plan, tmp = platform
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    with shrunk_path(plan, svc, f"ip6 saddr {A6} meta length > {PATH_MTU6}") as session, \
            Pcap(svc, "eth0", tmp, bpf="tcp") as at_svc, Pcap(vm.ns, "eth0", tmp, bpf="icmp") as at_vm:
        session.write(LINE)
        dropped = first_dropped(at_svc, A6, PATH_MTU6)
        assert dropped is not None, "a-vm1 sent nothing larger than the new path MTU"
        too_big = frame(plan, "svc1") / IPv6(src=SVC1, dst=A6) \
            / ICMPv6PacketTooBig(mtu=PATH_MTU6) / bytes(dropped)[:1280 - 48]
        assert send_frames(svc, "eth0", [too_big]) == 1
        answer = session.read(15)
        errors = [q[IP] for q in at_vm.wait(lambda p: any(q.haslayer(IPerror) for q in p), 3)
                  if q.haslayer(IPerror)]
        after = sizes_after(at_svc.stop(), A6, dropped, PATH_MTU6)
    assert len(errors) == 1, [e.summary() for e in errors]
    err = errors[0]
    what = f"{err.summary()} mtu={err[ICMP].nexthopmtu}"
    assert (err[ICMP].type, err[ICMP].code, err[ICMP].nexthopmtu) == (3, 4, PATH_MTU4), what
    assert (err.src, err.dst, err[IPerror].src, err[IPerror].dst) == \
        (PLATFORM_IP, str(vm.ipv4.ip), str(vm.ipv4.ip), PLATFORM_IP), what
    assert (err[TCPerror].sport, err[TCPerror].seq) == (LINE_PORT, dropped[TCP].seq), what
    icmp_checksum_ok(err)
    assert answer.get("reply", "").endswith(LINE), {k: str(v)[:80] for k, v in answer.items()}
    assert after and max(after) <= PATH_MTU6, after


def test_pmtud_from_the_vm_side_the_service_sends_smaller(platform):
    """a-vm1's side of the path shrinks to 1260 bytes while svc1 sends: a-vm1's
    Fragmentation Needed about svc1's segment reaches svc1 as Packet Too Big 1280 quoting
    that segment as svc1 sent it (through both IPv6 zones), and svc1's TCP resends in
    segments that fit; the transfer completes."""
    plan, tmp = platform
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    with shrunk_path(plan, vm.ns, f"ip saddr {PLATFORM_IP} meta length > {PATH_MTU4}") as session, \
            Pcap(vm.ns, "eth0", tmp, bpf="tcp") as at_vm, Pcap(svc, "eth0", tmp, bpf="icmp6") as at_svc:
        session.write(LINE)
        dropped = first_dropped(at_vm, PLATFORM_IP, PATH_MTU4)
        assert dropped is not None, "svc1 sent nothing larger than the new path MTU"
        too_big = frame(plan, "a-vm1") / IP(src=str(vm.ipv4.ip), dst=PLATFORM_IP) \
            / ICMP(type=3, code=4, nexthopmtu=PATH_MTU4) / bytes(dropped)[:548]
        assert send_frames(vm.ns, "eth0", [too_big]) == 1
        answer = session.read(15)
        got = at_svc.wait(lambda p: any(q.haslayer(ICMPv6PacketTooBig) for q in p), 3)
        after = sizes_after(at_vm.stop(), PLATFORM_IP, dropped, PATH_MTU4)
    ptbs = [q[IPv6] for q in got if q.haslayer(ICMPv6PacketTooBig)]
    assert len(ptbs) == 1, [q.summary() for q in got]
    ptb = ptbs[0]
    what = f"{ptb.summary()} mtu={ptb[ICMPv6PacketTooBig].mtu}"
    assert (ptb.src, ptb.dst, ptb[ICMPv6PacketTooBig].mtu) == (A6, SVC1, PATH_MTU6), what
    quoted = ptb[IPerror6]
    assert (quoted.src, quoted.dst) == (SVC1, A6), what
    assert (quoted[TCPerror].sport, quoted[TCPerror].dport, quoted[TCPerror].seq) == \
        (session.hello["local_port"], LINE_PORT, dropped[TCP].seq), what
    icmp6_checksum_ok(ptb)
    assert answer.get("reply", "").endswith(LINE), {k: str(v)[:80] for k, v in answer.items()}
    assert after and max(after) <= PATH_MTU4, after


# Hop limits (deviation 3): the platform is one router hop, each side's gateway answers
# expiry (controller customer module doc, "Hop limits")

@pytest.mark.parametrize("hops", [1, 2, 3, 4])
def test_a_services_hop_limit_arrives_one_less_or_expires_at_its_gateway(platform, hops):
    """svc1 -> a-vm1 with hop limit ``hops``: 1 is answered by svc1's gateway (fe80::1)
    with a Time Exceeded quoting the packet, and nothing reaches a-vm1; more arrives at
    a-vm1 with TTL ``hops`` - 1 (was - 3, and 2 and 3 expired silently)."""
    plan, tmp = platform
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    marker = f"hops6-{hops}-"
    packet = udp6(plan, marker, 100, next(SPORTS))
    packet[IPv6].hlim = hops
    with Pcap(vm.ns, "eth0", tmp, bpf="udp") as at_vm, Pcap(svc, "eth0", tmp, bpf="icmp6") as at_svc:
        assert send_frames(svc, "eth0", [packet]) == 1
        if hops == 1:
            got = at_svc.wait(lambda p: carrying(p, marker), 5)
        else:
            got = at_vm.wait(lambda p: carrying(p, marker), 5)
        at_vm.wait(lambda p: len(carrying(p, marker)) > 1, 0.5)      # and nothing more
        delivered = [q[IP] for q in carrying(at_vm.stop(), marker) if q[IP].dst == str(vm.ipv4.ip)]
    if hops == 1:
        errors = [q[IPv6] for q in carrying(got, marker) if q.haslayer(IPerror6)]
        assert len(errors) == 1 and not delivered, ([q.summary() for q in got], delivered)
        err = errors[0]
        assert (err.src, err.dst, err.payload.type, err.payload.code) == ("fe80::1", SVC1, 3, 0), err.summary()
        assert (err[IPerror6].src, err[IPerror6].dst, err[IPerror6].hlim) == (SVC1, A6, 1)
        icmp6_checksum_ok(err)
    else:
        assert len(delivered) == 1, [q.summary() for q in delivered]
        assert delivered[0].ttl == hops - 1, delivered[0].summary()


@pytest.mark.parametrize("ttl", [1, 2, 3, 4])
def test_a_vms_ttl_arrives_one_less_or_expires_at_its_gateway(platform, ttl):
    """a-vm1 answers a flow svc1 opened with TTL ``ttl``: 1 is answered by a-vm1's
    gateway (its subnet's first address) with an ICMPv4 Time Exceeded quoting the
    packet, and nothing reaches svc1; more arrives at svc1 with hop limit ``ttl`` - 1."""
    plan, tmp = platform
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    sport, opener = next(SPORTS), f"open-ttl-{ttl}-"
    request = as_vm_got_it(plan, tmp, opener, 100, sport)
    marker = f"ttl4-{ttl}-"
    reply = frame(plan, "a-vm1") / IP(src=str(vm.ipv4.ip), dst=request.src, ttl=ttl) \
        / UDP(sport=request[UDP].dport, dport=request[UDP].sport) / marker.encode()
    gateway4 = str(vm.ipv4.network.network_address + 1)
    with Pcap(vm.ns, "eth0", tmp, bpf="icmp") as at_vm, Pcap(svc, "eth0", tmp, bpf="udp") as at_svc:
        assert send_frames(vm.ns, "eth0", [reply]) == 1
        if ttl == 1:
            got = at_vm.wait(lambda p: carrying(p, marker), 5)
        else:
            got = at_svc.wait(lambda p: carrying(p, marker), 5)
        at_svc.wait(lambda p: len(carrying(p, marker)) > 1, 0.5)     # and nothing more
        delivered = [q[IPv6] for q in carrying(at_svc.stop(), marker)]
    if ttl == 1:
        errors = [q[IP] for q in carrying(got, marker) if q.haslayer(IPerror)]
        assert len(errors) == 1 and not delivered, ([q.summary() for q in got], delivered)
        err = errors[0]
        assert (err.src, err.dst, err[ICMP].type, err[ICMP].code) == (gateway4, str(vm.ipv4.ip), 11, 0), \
            err.summary()
        assert (err[IPerror].src, err[IPerror].dst, err[IPerror].ttl) == (str(vm.ipv4.ip), request.src, 1)
        icmp_checksum_ok(err)
    else:
        assert len(delivered) == 1, [q.summary() for q in delivered]
        assert (delivered[0].src, delivered[0].hlim) == (A6, ttl - 1), delivered[0].summary()


# Parameter Problem (RFC 7915 4.2 / 5.2, pointer maps of Figures 3 and 6)

@pytest.mark.parametrize("ptr6,ptr4", [(7, 8), (6, 9), (4, 2), (30, 16), (2, None)])
def test_a_services_parameter_problem_reaches_the_vm_with_its_pointer_mapped(platform, ptr6, ptr4):
    """svc1 reports a-vm1's answer with a Parameter Problem pointing at byte ``ptr6`` of
    its IPv6 header: a-vm1 gets an ICMPv4 Parameter Problem pointing at the same field of
    its own IPv4 header, ``ptr4``; nothing for a field IPv4 has not (the flow label). TAYGA
    0.9.2 dropped them all."""
    plan, tmp = platform
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    marker, sport = f"pp6-{ptr6}-", next(SPORTS)
    echoed = as_service_got_it(plan, tmp, marker, 200, sport)
    problem = frame(plan, "svc1") / IPv6(src=SVC1, dst=A6) / ICMPv6ParamProblem(code=0, ptr=ptr6) / bytes(echoed)
    with Pcap(vm.ns, "eth0", tmp, bpf="icmp") as at_vm:
        assert send_frames(svc, "eth0", [problem]) == 1
        got = at_vm.wait(lambda p: carrying(p, marker), 2 if ptr4 is None else 5)
    errors = [q[IP] for q in carrying(got, marker) if q.haslayer(IPerror)]
    if ptr4 is None:
        assert not errors, [e.summary() for e in errors]
        return
    assert len(errors) == 1, [q.summary() for q in got]
    err = errors[0]
    what = f"{err.summary()} type={err[ICMP].type} code={err[ICMP].code} ptr={err[ICMP].ptr}"
    assert (err.src, err.dst) == (PLATFORM_IP, str(vm.ipv4.ip)), what
    assert (err[ICMP].type, err[ICMP].code, err[ICMP].ptr) == (12, 0, ptr4), what
    assert (err[IPerror].src, err[IPerror].dst, err[UDPerror].sport) == (str(vm.ipv4.ip), PLATFORM_IP, UDP_PORT)
    icmp_checksum_ok(err)


@pytest.mark.parametrize("ptr4,ptr6", [(8, 7), (9, 6), (2, 4), (13, 8), (16, 24), (4, None)])
def test_a_vms_parameter_problem_reaches_the_service_with_its_pointer_mapped(platform, ptr4, ptr6):
    """a-vm1 reports svc1's datagram with an ICMPv4 Parameter Problem pointing at byte
    ``ptr4`` of its IPv4 header: svc1 gets an ICMPv6 Parameter Problem pointing at the
    same field of the IPv6 header it sent, ``ptr6``, through both IPv6 zones (the pointer
    intact: OVS 3.1 overwrote it as a UDP checksum); nothing for a field IPv6 has not
    (the Identification)."""
    plan, tmp = platform
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    marker, sport = f"pp4-{ptr4}-", next(SPORTS)
    request = as_vm_got_it(plan, tmp, marker, 300, sport)
    problem = frame(plan, "a-vm1") / IP(src=str(vm.ipv4.ip), dst=request.src) \
        / ICMP(type=12, code=0, ptr=ptr4) / bytes(request)[:548]
    with Pcap(svc, "eth0", tmp, bpf="icmp6") as at_svc:
        assert send_frames(vm.ns, "eth0", [problem]) == 1
        got = at_svc.wait(lambda p: any(q.haslayer(ICMPv6ParamProblem) for q in p), 2 if ptr6 is None else 5)
    errors = [q[IPv6] for q in got if q.haslayer(ICMPv6ParamProblem)]
    if ptr6 is None:
        assert not errors, [e.summary() for e in errors]
        return
    assert len(errors) == 1, [q.summary() for q in got]
    err = errors[0]
    what = f"{err.summary()} code={err[ICMPv6ParamProblem].code} ptr={err[ICMPv6ParamProblem].ptr}"
    assert (err.src, err.dst) == (A6, SVC1), what
    assert (err[ICMPv6ParamProblem].code, err[ICMPv6ParamProblem].ptr) == (0, ptr6), what
    assert (err[IPerror6].src, err[IPerror6].dst, err[UDPerror].sport) == (SVC1, A6, sport), what
    icmp6_checksum_ok(err)


# ICMP extensions (RFC 4884; deviation 6)

def mpls_extension(label: int) -> bytes:
    """An ICMP extension structure (RFC 4884 7): version 2 header with its checksum, one
    MPLS label stack object (RFC 4950: class 1, c-type 1) holding ``label``."""
    obj = struct.pack("!HBBI", 8, 1, 1, (label << 12) | 0x1FF)     # label, S=1, TTL 255
    head = struct.pack("!BBH", 0x20, 0, 0)
    return struct.pack("!BBH", 0x20, 0, scapy_checksum(head + obj)) + obj


def test_a_vms_time_exceeded_keeps_its_extension_to_the_service(platform):
    """a-vm1 reports svc1's datagram expired, the way a router that appends an MPLS label
    stack does: svc1 gets an ICMPv6 Time Exceeded whose length field (64-bit words) covers
    its own datagram padded to 128 bytes, followed by the same extension, byte for byte
    (TAYGA 0.9.2 dropped it and left the length 0)."""
    plan, tmp = platform
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    marker, sport = "ext4-", next(SPORTS)
    request = as_vm_got_it(plan, tmp, marker, 100, sport)
    quoted = bytes(request).ljust(128, b"\0")          # 80 bytes, padded (RFC 4884 5.1)
    ext = mpls_extension(0x12345)
    body = quoted + ext
    icmp = struct.pack("!BBHBBH", 11, 0, 0, 0, len(quoted) // 4, 0) + body
    icmp = icmp[:2] + struct.pack("!H", scapy_checksum(icmp)) + icmp[4:]
    error = frame(plan, "a-vm1") / IP(src=str(vm.ipv4.ip), dst=request.src, proto=1) / Raw(icmp)
    with Pcap(svc, "eth0", tmp, bpf="icmp6") as at_svc:
        assert send_frames(vm.ns, "eth0", [error]) == 1
        got = at_svc.wait(lambda p: carrying(p, marker), 5)
    errors = [q[IPv6] for q in carrying(got, marker) if q.haslayer(IPerror6)]
    assert len(errors) == 1, [q.summary() for q in got]
    err = errors[0]
    raw = bytes(err.payload)                            # the ICMPv6 message
    assert (raw[0], raw[1], err.src, err.dst) == (3, 0, A6, SVC1), err.summary()
    orig = raw[4] * 8
    assert orig == 128, raw[:8].hex()                   # 40 + 8 + 20 bytes of svc1's datagram, padded
    assert IPv6(raw[8:8 + orig]).src == SVC1 and marker.encode() in raw[8:8 + orig]
    assert raw[8 + orig:] == ext, raw[8 + orig:].hex()
    icmp6_checksum_ok(err)


def test_a_services_unreachable_keeps_its_extension_to_the_vm(platform):
    """svc1 reports a-vm1's answer unreachable with an extension: a-vm1 gets an ICMPv4
    port unreachable whose length field (32-bit words) covers its own datagram padded to
    128 bytes, followed by the same extension."""
    plan, tmp = platform
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    marker, sport = "ext6-", next(SPORTS)
    echoed = bytes(as_service_got_it(plan, tmp, marker, 100, sport))
    quoted = echoed.ljust(-(-len(echoed) // 8) * 8, b"\0").ljust(128, b"\0")
    ext = mpls_extension(0x54321)
    message = struct.pack("!BBHBBH", 1, 4, 0, len(quoted) // 8, 0, 0) + quoted + ext
    error = frame(plan, "svc1") / IPv6(src=SVC1, dst=A6, nh=58) / Raw(message)
    error[IPv6].payload = Raw(message[:2] + struct.pack("!H", in6_chksum(58, error[IPv6], message)) + message[4:])
    with Pcap(vm.ns, "eth0", tmp, bpf="icmp") as at_vm:
        assert send_frames(svc, "eth0", [error]) == 1
        got = at_vm.wait(lambda p: carrying(p, marker), 5)
    errors = [q[IP] for q in carrying(got, marker) if q.haslayer(ICMP)]
    assert len(errors) == 1, [q.summary() for q in got]
    err = errors[0]
    raw = bytes(err.payload)                            # the ICMPv4 message
    assert (raw[0], raw[1], err.src, err.dst) == (3, 3, PLATFORM_IP, str(vm.ipv4.ip)), err.summary()
    orig = raw[5] * 4
    assert orig == 128, raw[:8].hex()
    assert IP(raw[8:8 + orig]).src == str(vm.ipv4.ip) and marker.encode() in raw[8:8 + orig]
    assert raw[8 + orig:] == ext, raw[8 + orig:].hex()
    icmp_checksum_ok(err)
