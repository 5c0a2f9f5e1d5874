"""Moved to the lab package: ``from vnet64_lab.traffic import ...`` (the demo uses the
same helpers). This name stays so imports written against it keep working.

Below the re-export, test-only helpers of the acceptance suite and the security
matrix (test_acceptance.py, test_security.py): pcap captures read back with scapy,
crafted frames sent from inside a lab namespace, OVS table counters, a rogue node on
the fabric, the controller's health.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

from vnet64_lab import sh
from vnet64_lab import traffic as _t
from vnet64_lab.traffic import *  # noqa: F403
from vnet64_lab.traffic import _COUNTERS, _PAIR_FLOW  # noqa: F401

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)


def norm(addr: str) -> str:
    """Canonical text of an IPv4 or IPv6 address (so captures and NB strings compare)."""
    return str(ipaddress.ip_address(addr))


class Pcap:
    """tcpdump writing a pcap file inside a lab namespace; the packets are read back with
    scapy (``packets()`` at any time, ``wait()`` to poll for what a test expects)."""

    def __init__(self, ns: str, iface: str, directory: Path, bpf: str = ""):
        self.name = f"{ns}/{iface}"
        self.path = Path(directory) / f"{ns}-{iface}.pcap"
        self.cap = _t.Capture(ns, iface, bpf, count=None,
                              extra=("-w", str(self.path), "-U", "--immediate-mode"))
        self._final: list | None = None

    def packets(self) -> list:
        if self._final is not None:
            return self._final
        import scapy.contrib.geneve  # noqa: F401  (dissects UDP port 6081)
        import scapy.layers.inet6  # noqa: F401  (and Ethernet, IPv4, IPv6 for the reader)
        from scapy.error import Scapy_Exception
        from scapy.utils import PcapReader
        out: list = []
        try:
            with PcapReader(str(self.path)) as reader:
                out.extend(reader)   # a record still being written ends the read early
        except (OSError, EOFError, Scapy_Exception):
            pass
        return out

    def wait(self, predicate, timeout: float = 5.0) -> list:
        """Poll until ``predicate(packets)`` holds (or the timeout); the packets."""
        deadline = time.monotonic() + timeout
        while True:
            pkts = self.packets()
            if predicate(pkts) or time.monotonic() > deadline:
                return pkts
            time.sleep(0.05)

    def stop(self) -> list:
        if self._final is None:
            self.cap.stop()
            self._final = self.packets()
        return self._final

    def __enter__(self) -> Pcap:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def carrying(pkts: list, marker: bytes | str) -> list:
    """The packets whose bytes contain ``marker`` (a payload written by the test)."""
    m = marker.encode() if isinstance(marker, str) else marker
    return [p for p in pkts if m in bytes(p)]


def decap(pkt):
    """(outer IPv4, Geneve, inner Ethernet frame) of a Geneve packet; (None, None, pkt)
    for anything else."""
    from scapy.contrib.geneve import GENEVE
    from scapy.layers.inet import IP
    if pkt.haslayer(GENEVE):
        return pkt[IP], pkt[GENEVE], pkt[GENEVE].payload
    return None, None, pkt


# Sends hex-encoded frames (one per stdin line) on an interface with a packet socket:
# no scapy (and no 1 s import) inside the namespace; the test builds the frames.
SEND_FRAMES = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
gap = float(sys.argv[2])
sent, errors = 0, []
for line in sys.stdin:
    try:
        s.send(bytes.fromhex(line.strip()))
        sent += 1
    except OSError as exc:
        errors.append(str(exc))
    if gap:
        time.sleep(gap)
print(sent, *errors[:1], sep="\n")
"""


def send_frames(ns: str, iface: str, frames, gap: float = 0.0) -> int:
    """Send raw Ethernet frames (bytes or scapy packets) on ``iface`` inside ``ns``;
    the number the kernel took (a frame longer than the MTU is refused). ``gap``: seconds
    between two frames (a burst of hundreds can overflow the socket a userspace
    ovs-vswitchd reads the veth's other end with, and frames are lost before any flow)."""
    data = "".join(bytes(f).hex() + "\n" for f in frames)
    proc = subprocess.run([sh.tool("ip"), "netns", "exec", ns, sys.executable, "-c", SEND_FRAMES,
                           iface, str(gap)], input=data, capture_output=True, text=True, timeout=30,
                          check=False)
    if proc.returncode:
        raise _t.TrafficError(f"sending frames in {ns} failed: {proc.stderr}")
    return int(proc.stdout.split()[0])


# One UDP datagram to each address (same source port), answers collected for a while.
UDP_MANY = r"""
import json, select, socket, sys, time
timeout, port, payload, addrs = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4:]
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 0))
for a in addrs:
    s.sendto(payload, (a, port))
got, deadline = {}, time.monotonic() + timeout
while len(got) < len(addrs) and (left := deadline - time.monotonic()) > 0:
    if select.select([s], [], [], left)[0]:
        data, peer = s.recvfrom(65536)
        got[peer[0]] = data.decode(errors="replace")
print(json.dumps({"local": s.getsockname()[1], "replies": got}))
"""


def udp_many(plan, source: str, addrs: list[str], payload: str, port: int = _t.UDP_PORT,
             timeout: float = 2.0) -> dict:
    """One datagram from ``source`` to each address: {"local": port, "replies": {addr: text}}
    (addresses in canonical form; an address that did not answer is missing)."""
    proc = _t.in_ns(_t.ns_of(plan, source), sys.executable, "-c", UDP_MANY, str(timeout), str(port),
                    payload, *addrs, timeout=timeout + 20)
    if proc.returncode:
        raise _t.TrafficError(f"udp_many in {source} failed: {proc.stderr}")
    out = json.loads(proc.stdout)
    out["replies"] = {norm(a): r for a, r in out["replies"].items()}
    return out


def vif(plan, name: str):
    return next(v for v in plan.vifs if v.name == name)


# Frames the tests build with scapy (test_translator_engine.py, test_icmp6_errors.py)

def frame(plan, who: str):
    """The Ethernet header of a frame ``who`` (a VM or endpoint) sends to its gateway."""
    from scapy.layers.l2 import Ether
    from vnet64 import gateway
    return Ether(src=vif(plan, who).mac, dst=gateway.GATEWAY_MAC)


def udp6(plan, marker: str, size: int, sport: int):
    """svc1 -> a-vm1's platform address, UDP to the VM's echo server: an IPv6 packet of
    ``size`` bytes carrying ``marker``."""
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    head = IPv6(src=_t.SVC1, dst=_t.A6, hlim=64) / UDP(sport=sport, dport=_t.UDP_PORT)
    return frame(plan, "svc1") / head / marker.encode().ljust(size - len(head), b"p")


def one(pkts: list, marker: str, layer, dst: str):
    """The one packet carrying ``marker`` towards ``dst`` (a capture sees both ways, and
    the VM's echo server answers with the marker)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    got = [p for p in carrying(pkts, marker) if p.haslayer(layer) and p[IP if IP in p else IPv6].dst == dst]
    assert len(got) == 1, f"{len(got)} packets carrying {marker!r}: {[p.summary() for p in got]}"
    return got[0]


def table_counts(plan, node: str) -> dict[int, int]:
    """table id -> packets a node's br-int dropped at that stage's miss: its explicit miss
    flow (priority 0, no match; its cookie names the reason, ``pipeline.DROP_REASONS``),
    and OpenFlow's own table-miss (lookups that matched nothing) for a stage without one."""
    ovs = _t.ovs_node(plan, node)
    counts: dict[int, int] = {}
    for line in ovs.ofctl("-O", "OpenFlow15", "--no-names", "dump-flows", "br-int").splitlines():
        m = re.search(r"table=(\d+), n_packets=(\d+),.* priority=0 actions=drop$", line)
        if m:
            counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + int(m.group(2))
    last, current = (0, 0), 0
    for line in ovs.ofctl("-O", "OpenFlow13", "dump-tables", "br-int").splitlines():
        m = re.match(r"\s+tables? (\d+)(?:\.\.\.(\d+))?:( ditto)?", line)
        if m:
            first, final = int(m.group(1)), int(m.group(2) or m.group(1))
            for t in range(first, final + 1) if m.group(3) else ():
                counts[t] = counts.get(t, 0) + last[0] - last[1]
            current = first
            continue
        m = re.search(r"lookup=(\d+), matched=(\d+)", line)
        if m:
            last = (int(m.group(1)), int(m.group(2)))
            counts[current] = counts.get(current, 0) + last[0] - last[1]
    return counts


def misses(before: dict, after: dict, table: int) -> int:
    """Packets dropped at ``table``'s miss between two table_counts."""
    return after.get(table, 0) - before.get(table, 0)


def drop_counts(plan, node: str) -> dict[str, int]:
    """reason -> packets a node did not forward (``vnet64.node.drops``, as ``vnet64-node
    stats`` reads them)."""
    from vnet64.node import drops
    return {r["reason"]: r["packets"] for r in drops.totals(drops.read(_t.ovs_node(plan, node).ofctl, "br-int"))}


def tunnel_token(plan) -> str:
    """The platform's tunnel token as the NB shows it (hex), read from the lab's NB."""
    from vnet64.nb import api as nbapi
    with nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock") as api:
        return api.platform_info()["tunnel_token"]


def flow_packets(plan, node: str, contains: str, *filters: str) -> int:
    """Sum of n_packets over a node's flows whose dump line contains ``contains``."""
    total = 0
    for line in _t.flows(plan, node, *filters).splitlines():
        if contains in line:
            m = re.search(r"n_packets=(\d+)", line)
            total += int(m.group(1)) if m else 0
    return total


def coverage(plan, node: str, counter: str) -> int:
    """An ovs-vswitchd coverage counter's total (0 when it never fired)."""
    out = _t.ovs_node(plan, node).appctl("coverage/read-counter", counter, check=False)
    return int(out.strip() or 0) if out.strip().isdigit() else 0


def meter_drops(plan, node: str) -> dict[int, int]:
    """Packets each meter of a node's br-int dropped (meter id -> its one band's count)."""
    out = _t.ovs_node(plan, node).ofctl("-O", "OpenFlow13", "meter-stats", "br-int")
    drops, meter = {}, None
    for line in out.splitlines():
        if m := re.search(r"meter[:=](\d+)", line):
            meter = int(m.group(1))
        if (m := re.search(r"^\s*0: packet_count:(\d+)", line)) and meter is not None:
            drops[meter] = int(m.group(1))
    return drops


def meter_inputs(plan, node: str) -> dict[int, int]:
    """Packets that went through each meter of a node's br-int (meter id -> its
    packet_in_count): what the flows ahead of it punted, counted by the datapath."""
    out = _t.ovs_node(plan, node).ofctl("-O", "OpenFlow13", "meter-stats", "br-int")
    return {int(m.group(1)): int(m.group(2))
            for m in re.finditer(r"meter[:=](\d+) flow_count:\d+ packet_in_count:(\d+)", out)}


def ipf_counters(plan, node: str) -> dict[str, int]:
    """The userspace conntrack's fragment reassembly counters (``dpctl/ipf-get-status``)."""
    out = _t.ovs_node(plan, node).appctl("dpctl/ipf-get-status")
    return {m.group(1).strip(): int(m.group(2))
            for m in re.finditer(r"^\s*([a-z0-9 ]+?):\s*(\d+)\s*$", out, re.MULTILINE)}


def nft_counter(ns: str, family: str, table: str, name: str) -> int:
    """Packets a named nftables counter inside a namespace has counted."""
    proc = _t.in_ns(ns, "nft", "-j", "list", "counter", family, table, name)
    return next(item["counter"]["packets"] for item in json.loads(proc.stdout)["nftables"]
                if "counter" in item)


def nstat(ns: str) -> dict[str, int]:
    """The kernel's SNMP counters inside a namespace (absolute values)."""
    proc = _t.in_ns(ns, "nstat", "-a", "-z", "--json")
    data = json.loads(proc.stdout or "{}")
    return {k: int(v) for table in data.values() for k, v in table.items()}


def conntrack(plan, node: str, zone: int) -> list[str]:
    return _t.ovs_node(plan, node).appctl("dpctl/dump-conntrack", f"zone={zone}").splitlines()


def controller_pids(lab) -> dict[str, int | None]:
    """Every controller of the lab (each node's, or ``central``) -> its pid while it runs."""
    return {c.name: c.pid() for c in lab.controllers()}


def assert_controller_healthy(lab) -> None:
    """Every controller runs (each node's, or the central one), and no log of theirs
    holds a traceback or an ERROR line."""
    pids = controller_pids(lab)
    assert all(pids.values()), f"a controller is not running: {pids}"
    for log in _t.controller_logs(lab):
        text = log.read_text()
        assert "Traceback" not in text, f"{log}:\n{text[-6000:]}"
        errors = [line for line in text.splitlines() if " ERROR " in line]
        assert not errors, (str(log), errors)


@contextlib.contextmanager
def mirrored_decap(plan, node: str, name: str = "vnet64-test-decap"):
    """An OVS mirror of what ``geneve0`` hands to br-int (the packet right after the
    decapsulator) onto br-int's own port, where tcpdump can see it."""
    env = _t.ovs_node(plan, node).env()
    vsctl = sh.tool("ovs-vsctl")

    def remove() -> None:
        found = sh.run([vsctl, "--bare", "--columns=_uuid", "find", "Mirror", f"name={name}"], env=env)
        for uuid in found.stdout.split():
            sh.run([vsctl, "remove", "Bridge", "br-int", "mirrors", uuid], env=env)

    remove()
    sh.run([vsctl, "--", "--id=@g", "get", "Port", "geneve0", "--", "--id=@o", "get", "Port", "br-int",
            "--", "--id=@m", "create", "Mirror", f"name={name}", "select-src-port=@g",
            "output-port=@o", "--", "add", "Bridge", "br-int", "mirrors", "@m"], env=env)
    try:
        yield
    finally:
        remove()


class Rogue:
    """A node the platform does not know: namespace ``<prefix>rogue`` with a leg
    (``u-rogue``) in the fabric's bridge and an underlay address of its own. It sends
    hand-made Geneve frames, with its own or a spoofed outer source address."""

    def __init__(self, plan, host_octet: int = 99):
        self.plan = plan
        self.ns = f"{plan.prefix}rogue"
        net = plan.settings.underlay_cidr
        self.ip = str(net.network_address + host_octet)
        self.mac = "02:00:5e:00:00:99"
        sh.run([sh.tool("ip"), "netns", "add", self.ns])
        try:
            sh.ip_batch(self.ns, [
                "link set lo up",
                f"link add r0 address {self.mac} type veth peer name u-rogue netns {plan.fabric_ns}",
                f"addr add {self.ip}/{net.prefixlen} dev r0", "link set r0 up"])
            sh.ip_batch(plan.fabric_ns, ["link set u-rogue master br0 up"])
            # the checksums written by the kernel must be on the wire (OVS verifies Geneve's)
            sh.in_ns(self.ns, [sh.tool("ethtool"), "-K", "r0", "tx", "off"])
        except Exception:
            self.remove()
            raise

    def geneve(self, to_node: str, inner, src: str | None = None, vni: int = 0x6464,
               token: int | None = None):
        """A Geneve frame from this node (or from ``src``, spoofed) to ``to_node``; with
        ``token``, it carries the platform's tunnel-token option with that value."""
        from scapy.contrib.geneve import GENEVE, GeneveOptions
        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether

        from vnet64.controller.pipeline import TOKEN_OPTION
        n = self.plan.node(to_node)
        options = [] if token is None else [GeneveOptions(
            classid=TOKEN_OPTION.option_class, type=TOKEN_OPTION.option_type,
            data=token.to_bytes(TOKEN_OPTION.length, "big"))]
        return (Ether(src=self.mac, dst=n.underlay_mac) / IP(src=src or self.ip, dst=str(n.underlay_ip.ip))
                / UDP(sport=50000, dport=6081) / GENEVE(vni=vni, proto=0x6558, options=options) / inner)

    def send(self, frames) -> int:
        return send_frames(self.ns, "r0", frames)

    def remove(self) -> None:
        sh.run([sh.tool("ip"), "netns", "del", self.ns], check=False)
