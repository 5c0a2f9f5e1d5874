"""The BPF translator engine (issue 21, lever 3: ``vnet64-node --translator-engine bpf``):
which engine carried which packets, and switching a host between them.

What the translated packets look like is the engine-independent suites' job: ``make test``
runs the translator, ICMP error, fragment, acceptance and security suites a second time
with ``--translator-engine bpf``. Here, in a lab whose hosts run the BPF engine:

- a connection's bulk (TCP, UDP, echo, both ways) is translated by the BPF program - its
  counters, exported by host1's agent, grow - and never enters TAYGA's tun;
- what it hands on (here: a UDP datagram too big for one packet, in fragments both ways)
  reaches TAYGA, and the answer still arrives whole;
- host1's agent restarted with ``--translator-engine tayga`` takes the program off ``ovs0``
  (TAYGA then carries everything, the metric is gone), and with ``bpf`` again puts the
  same build back; a restart with nothing to change attaches nothing anew.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from vnet64.node import sh
from vnet64_lab.lab import Lab
from vnet64_lab.traffic import A6, TCP_PORT, UDP_PORT, answer, client, ping, running_platform

from tests.lab.conftest import ROOT, TEST_RUN_DIR, need_lab
from tests.lab.test_metrics import scrape, value

PREFIX = "v64v-"   # (v64k- is test_bench_growth's)
METRIC = "vnet64_node_translator_bpf_packets_total"


@pytest.fixture(scope="module")
def platform():
    need_lab()
    for tool in ("clang", "bpftool"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (apt-get install clang libbpf-dev bpftool)")
    lab = Lab(PREFIX, f"{TEST_RUN_DIR}v", translator_engine="bpf")
    with running_platform(lab, ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        yield lab, plan


def tun_packets(plan, host: str) -> tuple[int, int]:
    """(into TAYGA, out of TAYGA): the packets of its tun ``nat64`` (the kernel transmits
    what TAYGA reads, and receives what TAYGA writes: its translations)."""
    out = sh.run([sh.tool("ip"), "-n", plan.translator(host).ns, "-s", "-j", "link", "show",
                  "nat64"]).stdout
    stats = json.loads(out)[0]["stats64"]
    return stats["tx"]["packets"], stats["rx"]["packets"]


def filter_shown(plan, host: str) -> str:
    """``tc filter show`` of the translator veth's ingress (empty: no program)."""
    return sh.run([sh.tool("tc"), "-n", plan.translator(host).ns, "filter", "show", "dev",
                   "ovs0", "ingress"]).stdout


def bpf_counts(plan, host: str) -> dict[str, float | None]:
    samples = scrape(plan, host)
    return {path: value(samples, METRIC, node=host, path=path)
            for path in ("6to4", "4to6", "to_tayga")}


def exchange(plan, tag: str, n: int = 10) -> None:
    """``n`` TCP requests and ``n`` UDP datagrams svc1 -> a-vm1, each answered."""
    for i in range(n):
        for kind, port in (("tcp", TCP_PORT), ("udp", UDP_PORT)):
            vm, _, _, payload = answer(client(plan, kind, A6, port, f"{tag}-{kind}-{i}"))
            assert (vm, payload) == ("a-vm1", f"{tag}-{kind}-{i}")


def test_the_bulk_is_translated_in_the_kernel_and_the_rest_by_tayga(platform):
    _, plan = platform
    assert "vnet64_xlat" in filter_shown(plan, "host1")
    exchange(plan, "warm", 1)          # the pair's first packet, through the controller
    tun0, bpf0 = tun_packets(plan, "host1"), bpf_counts(plan, "host1")
    assert None not in bpf0.values(), bpf0
    exchange(plan, "bulk")
    assert ping(plan, A6, count=5) == (5, 5)
    tun1, bpf1 = tun_packets(plan, "host1"), bpf_counts(plan, "host1")
    # each TCP request is at least SYN, data, FIN each way; a datagram and an echo one
    least = 10 * 3 + 10 + 5
    assert bpf1["6to4"] - bpf0["6to4"] >= least, (bpf0, bpf1)
    assert bpf1["4to6"] - bpf0["4to6"] >= least, (bpf0, bpf1)
    # nothing handed on, nothing out of TAYGA (what goes into its tun may be the
    # namespace's own router solicitations: TAYGA drops those)
    assert bpf1["to_tayga"] == bpf0["to_tayga"], (bpf0, bpf1)
    assert tun1[1] == tun0[1], f"TAYGA translated packets of the bulk: {tun0} -> {tun1}"

    # a datagram larger than svc1's MTU: IPv6 fragments in, the VM's answer IPv4
    # fragments out - neither is the BPF program's; TAYGA takes both ways
    big = "f" * 3000
    vm, _, _, payload = answer(client(plan, "udp", A6, UDP_PORT, big))
    assert (vm, payload) == ("a-vm1", big)
    tun2, bpf2 = tun_packets(plan, "host1"), bpf_counts(plan, "host1")
    assert tun2[0] > tun1[0] and tun2[1] > tun1[1], (tun1, tun2)
    assert bpf2["to_tayga"] - bpf1["to_tayga"] >= 2, (bpf1, bpf2)


def test_a_host_switched_to_tayga_and_back(platform):
    lab, plan = platform
    shown = filter_shown(plan, "host1")
    build = re.search(r"xlat-[0-9a-f]{12}\.o", shown).group(0)
    lab.restart_agent("host1", translator_engine="tayga")
    try:
        assert "vnet64_xlat" not in filter_shown(plan, "host1")
        assert value(scrape(plan, "host1"), METRIC, node="host1", path="6to4") is None
        tun0 = tun_packets(plan, "host1")
        exchange(plan, "tayga", 3)
        tun1 = tun_packets(plan, "host1")
        assert tun1[0] - tun0[0] >= 3 * 3 + 3 and tun1[1] - tun0[1] >= 3 * 3 + 3, (tun0, tun1)
    finally:
        lab.restart_agent("host1")          # the lab's engine: bpf
    again = filter_shown(plan, "host1")
    assert build in again, again            # the same build (settings unchanged)
    prog_id = re.search(r"\bid (\d+) name vnet64_xlat", again).group(1)
    log = Path(lab.agent_dir("host1")) / "agent.log"
    before = len(log.read_text().splitlines())
    lab.restart_agent("host1")               # nothing to change: nothing attached anew
    assert re.search(r"\bid (\d+) name vnet64_xlat", filter_shown(plan, "host1")).group(1) == prog_id
    said = log.read_text().splitlines()[before:]
    assert said and not [line for line in said if "BPF translator" in line], said
    tun0 = tun_packets(plan, "host1")
    exchange(plan, "back", 3)
    assert tun_packets(plan, "host1")[1] == tun0[1]


# -- the program alone, field by field: a veth between two namespaces of the test's own,
# the program at one end's ingress, scapy at the other end (no OVS, no TAYGA: what it
# hands on simply goes nowhere)

PROGRAM_NS = ("v64vb-send", "v64vb-xlat")


@pytest.fixture
def program(tmp_path):
    need_lab()
    for tool in ("clang", "bpftool"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (apt-get install clang libbpf-dev bpftool)")
    from vnet64.node.translator import Translator
    obj, _ = Translator("t", PROGRAM_NS[1], tmp_path, "02:00:00:00:00:02", 1442, False,
                        "bpf").bpf_object("fd64:64::/96", "192.0.0.1")
    ip = sh.tool("ip")

    def cleanup() -> None:
        for ns in PROGRAM_NS:
            sh.run([ip, "netns", "del", ns], check=False)
    cleanup()
    try:
        for ns in PROGRAM_NS:
            sh.run([ip, "netns", "add", ns])
        sh.run([ip, "-n", PROGRAM_NS[0], "link", "add", "eth0", "mtu", "1442", "type", "veth",
                "peer", "name", "ovs0", "mtu", "1442", "netns", PROGRAM_NS[1]])
        for ns, dev in zip(PROGRAM_NS, ("eth0", "ovs0"), strict=True):
            sh.run([ip, "-n", ns, "link", "set", dev, "up"])
        tc = [sh.tool("tc"), "-n", PROGRAM_NS[1]]
        sh.run([*tc, "qdisc", "add", "dev", "ovs0", "clsact"])
        sh.run([*tc, "filter", "add", "dev", "ovs0", "ingress", "bpf", "direct-action", "obj",
                str(obj), "sec", "tc"])
        yield PROGRAM_NS[0]
    finally:
        cleanup()


EXCHANGE = r"""
import socket, sys
from scapy.all import Ether, raw
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0)); s.settimeout(0.3)
for frame in sys.stdin.read().split():
    s.send(bytes.fromhex(frame))
    got = ""
    try:
        while True:
            data, addr = s.recvfrom(4000)
            # what comes back to the sender's MAC (not the namespaces' own MLD and RS)
            if addr[2] != socket.PACKET_OUTGOING and data[:6] == bytes.fromhex(frame[12:24]):
                got = data.hex(); break
    except socket.timeout:
        pass
    print(got or "-")
"""


def test_the_program_alone_translates_field_by_field_and_leaves_the_rest(program):
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
    from scapy.layers.l2 import Ether

    def x(v4: str) -> str:
        return f"fd64:64::{v4}"
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    translated = [   # (sent, what scapy says the translation is, sans Identification)
        (eth / IPv6(src=x("198.18.0.1"), dst=x("10.0.0.4"), hlim=64, tc=0x28)
         / TCP(sport=40000, dport=80, flags="S", seq=7) / (b"t" * 10),
         IP(src="198.18.0.1", dst="10.0.0.4", ttl=63, tos=0x28, flags=0)
         / TCP(sport=40000, dport=80, flags="S", seq=7) / (b"t" * 10)),
        (eth / IPv6(src=x("198.18.0.1"), dst=x("10.0.0.4"), hlim=9) / UDP(sport=5, dport=53)
         / (b"u" * 1300),
         IP(src="198.18.0.1", dst="10.0.0.4", ttl=8, flags="DF") / UDP(sport=5, dport=53)
         / (b"u" * 1300)),
        (eth / IPv6(src=x("198.18.0.1"), dst=x("10.0.0.4"), hlim=2) / ICMPv6EchoRequest(id=3, seq=4, data=b"e"),
         IP(src="198.18.0.1", dst="10.0.0.4", ttl=1) / ICMP(type=8, id=3, seq=4) / b"e"),
        (eth / IP(src="10.0.0.4", dst="198.18.0.1", ttl=64, tos=0x10, flags="DF")
         / TCP(sport=80, dport=40000, flags="SA") / (b"r" * 33),
         IPv6(src=x("10.0.0.4"), dst=x("198.18.0.1"), hlim=63, tc=0x10)
         / TCP(sport=80, dport=40000, flags="SA") / (b"r" * 33)),
        (eth / IP(src="10.0.0.4", dst="198.18.0.1", ttl=64) / ICMP(type=0, id=3, seq=4) / b"e",
         IPv6(src=x("10.0.0.4"), dst=x("198.18.0.1"), hlim=63) / ICMPv6EchoReply(id=3, seq=4, data=b"e")),
    ]
    handed_on = [    # none of these is the program's: nothing comes back
        eth / IPv6(src=x("198.18.0.1"), dst=x("10.0.0.4"), hlim=1) / UDP(sport=5, dport=53) / b"ttl",
        eth / IPv6(src=x("198.18.0.1"), dst=x("10.0.0.4")) / IPv6ExtHdrFragment(id=1) / UDP() / b"f",
        eth / IPv6(src="fd00:5e:1::10", dst=x("10.0.0.4")) / UDP(sport=5, dport=53) / b"pfx",
        eth / IPv6(src=x("198.18.0.1"), dst=x("192.0.0.1")) / UDP(sport=5, dport=53) / b"tayga",
        eth / IP(src="10.0.0.4", dst="198.18.0.1", flags="DF") / UDP(sport=53, dport=5, chksum=0) / b"z",
        eth / IP(src="10.0.0.4", dst="198.18.0.1") / UDP(sport=53, dport=5) / (b"big" * 430),
        eth / IP(src="10.0.0.4", dst="198.18.0.1", flags="MF") / UDP(sport=53, dport=5) / b"frag",
        eth / IP(src="10.0.0.4", dst="198.18.0.1", flags="DF") / ICMP(type=3, code=3) / b"err",
        eth / IP(src="10.0.0.4", dst="198.18.0.1", flags="DF", options=[IPOption_NOP()] * 4) / UDP() / b"o",
    ]
    frames = [bytes(sent) for sent, _ in translated] + [bytes(f) for f in handed_on]
    proc = sh.run([sh.tool("ip"), "netns", "exec", program, sys.executable, "-c", EXCHANGE],
                  input=" ".join(f.hex() for f in frames))
    got = proc.stdout.split()
    assert len(got) == len(frames), proc.stderr
    for (sent, want), answer in zip(translated, got[:len(translated)], strict=True):
        assert answer != "-", f"not translated: {sent.summary()}"
        frame = Ether(bytes.fromhex(answer))
        assert (frame.src, frame.dst) == (sent.dst, sent.src), frame.summary()   # back to br-int
        if IP in want:
            ip4 = frame[IP]
            assert ip4.id != 0, ip4.summary()
            want[IP].id = ip4.id
        assert bytes(frame.payload) == bytes(want), \
            f"{sent.summary()}:\n got  {frame.payload!r}\n want {want!r}"
    for sent, answer in zip(handed_on, got[len(translated):], strict=True):
        assert answer == "-", f"translated what TAYGA should have: {sent.summary()}"
