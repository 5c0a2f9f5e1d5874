#!/usr/bin/env python3
"""Pair setup through vnet64-controller, and new connections inside one pair.

Brings up its own lab (prefix ``v64p-``, run dir ``/run/vnet64-lab-p``) on a
topology generated for the benchmark: the default three nodes (appliance,
host1 with the VMs, host2 with the service endpoints), ``--endpoints``
endpoints of service ``pairbench`` and ``--vms`` VMs (half in customer-a, half
in customer-b, same addresses in both) all subscribed to it, so there are
endpoints x VMs distinct pairs, each made of real namespaces and ports. A
separate service ``tcpbench`` has one endpoint ``tc`` and one VM ``tv``.

Part 1, pairs through the real controller, with real packets from the
endpoints' namespaces over the whole data path (host2 -> Geneve -> appliance
-> host1 -> packet-in -> controller -> flows + packet-out -> conntrack ->
TAYGA -> VM, and back). The first packet of a pair is an ICMPv6 echo request
from a raw socket in the endpoint's namespace (one ICMP id per pair, so
conntrack never mixes two pairs); the VM's kernel answers; a pair counts as
set up when its answer is back at the endpoint (kernel receive timestamp).

- saturation: closed loop, ``--window`` first packets of new pairs in flight,
  a new pair as soon as one is answered; pairs/s = answered / elapsed;
- latency: new pairs offered open-loop at each of ``--rates`` per second; RTT
  of each pair's first packet, p50/p99. Baseline: the pairs that answered,
  pinged again at the same rate right after (installed pair, existing
  conntrack entry) - the same path minus the controller and the upcalls;
- what-if, in each run: the same saturation test with the controller
  restarted at ``--log-level WARNING`` (oslo.config's ``OS_DEFAULT__LOG_LEVEL``),
  i.e. without its per-pair INFO line, then restarted at INFO again (the lab
  starts it at INFO).

Between runs every pair is removed the way the platform removes it (all
``pairbench`` subscriptions suspended in one NB transaction, the controller
revokes the pairs, then re-activated) and the datapath megaflows are flushed,
so each run sets up pairs that neither the controller nor OVS know; each run
uses new ICMP ids, so the conntrack entries are new too. Between phases the
benchmark waits until the controller is idle.

Part 2, new TCP connections per second inside one pair (``tc`` -> ``tv``,
installed once, so no controller after the first) next to a conntrack-only
OVS path measured in the same run and alternated with it: a separate
ovs-vswitchd (netdev) in its own namespace joining a client and a server
namespace, IPv4 SNAT with ``ct(commit,nat(src=...))`` forward and ``ct(nat)``
back (DESIGN.md §4b's VM-side zone without Geneve, TAYGA or the IPv6 zones).
The same client (non-blocking connect, then close; ``--tcp-concurrency``
connects in flight, each level in turn) and server (accept + close on 32
ports, so neither client ports nor NAT ports run short) on both paths; each
path's rate is its best level.

Every measurement is repeated ``--runs`` times; the table gives the median
(min-max). CPU use (% of one core) of the controller, the OVS daemons, TAYGA
and the load generator is read from /proc for each phase. Needs root.

    .venv/bin/python benchmarks/pair_setup.py             # full run, ~5 min
    .venv/bin/python benchmarks/pair_setup.py --runs 1 --endpoints 10 --vms 40 --rates 100
    .venv/bin/python benchmarks/pair_setup.py --profile /tmp/ctl.txt   # + py-spy of the controller

Prints a table and saves it to benchmarks/results/pair_setup.md. The aims
(issue 4) are reported as met or not; nothing here is tuned to meet them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))
sys.path.insert(0, str(ROOT / "ovs-setup"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import (CpuMeter, control_text, controller_pids, flow_count, report_end, med, note,
                    pct, rng, seconds_until_idle, start_run, summarise_profile, thread_ticks,
                    yes_no)
from vnet64 import helptext  # noqa: E402
from vnet64 import topology
from vnet64.controller.pipeline import CT_TIMEOUTS
from vnet64.nb import api as nbapi
from vnet64_lab import Lab, sh
from vnet64.node.ovsdb import SyncCtTimeouts
from vnet64_lab.ovs import OvsNode, terminate

PREFIX = "v64p-"
RUN_DIR = "/run/vnet64-lab-p"
CTB_RUN_DIR = "/run/vnet64-lab-p-ctb"        # the conntrack-only OVS (not under the lab's run dir)
CTB_NS, CTC_NS, CTS_NS = f"{PREFIX}ctb", f"{PREFIX}ctc", f"{PREFIX}cts"


def set_prefix(prefix: str, run_dir: str) -> None:
    """Use another lab prefix and run directory (e.g. the CI smoke test's own)."""
    global PREFIX, RUN_DIR, CTB_RUN_DIR, CTB_NS, CTC_NS, CTS_NS
    PREFIX, RUN_DIR, CTB_RUN_DIR = prefix, run_dir, f"{run_dir}-ctb"
    CTB_NS, CTC_NS, CTS_NS = f"{prefix}ctb", f"{prefix}ctc", f"{prefix}cts"
CTB_ZONE = 7
PAIR_SERVICE, TCP_SERVICE = "pairbench", "tcpbench"
TCP_PORT = 5001
TCP_PORTS = 32          # server ports 5001..5032: client ports and NAT ports never run short
AIM_PAIRS_PER_S = 3000
AIM_RATE = 1000         # new pairs/s at which first-packet p99 is judged
AIM_P99_MS = 10.0
AIM_TCP_RATIO = 0.8

ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129
ICMP6_FILTER = 1                      # <netinet/icmp6.h>, level IPPROTO_ICMPV6
SO_TIMESTAMPNS = SCM_TIMESTAMPNS = 35     # <asm-generic/socket.h>; not in Python 3.11's socket module
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


# ---------------------------------------------------------------------------
# The benchmark topology


def topology_text(n_ep: int, n_vm: int) -> str:
    vms, subs = [], []
    for i in range(n_vm):
        tenant = "ab"[i % 2]
        ip = IPv4Address("10.0.0.4") + i // 2           # a- and b- VMs share addresses
        name = f"p{tenant}{i // 2:03d}"
        vms.append(f"  - {{name: {name}, vnet: customer-{tenant}, ipv4: {ip}, host: host1}}")
        subs.append(f"  - {{vm: {name}, service: {PAIR_SERVICE}}}")
    eps = [f'      - {{name: e{i:02d}, ipv6: "fd00:5e:1::1:{i:x}", host: host2}}'
           for i in range(n_ep)]
    return "\n".join([
        "# Generated by benchmarks/pair_setup.py: the two-tenants nodes with many endpoints",
        "# and VMs, so that endpoints x VMs distinct pairs exist.",
        "name: pair-bench",
        ("platform: {platform_ip: 100.100.0.1, translator_prefix: \"fd64:64::/96\", "
        "region: westeurope, appliance: appliance}"),
        "regions:", "  - {name: westeurope, id: 0x3930}",
        "nodes:",
        "  - {name: appliance, role: appliance, underlay_ip: 192.168.66.10}",
        "  - {name: host1, role: host, underlay_ip: 192.168.66.11}",
        "  - {name: host2, role: host, underlay_ip: 192.168.66.12}",
        "vnets:",
        ("  - {name: customer-a, id: 0x1f, cidrs: [10.0.0.0/16], "
        "subnets: [{name: default, id: 0x6600, cidr: 10.0.0.0/16}]}"),
        ("  - {name: customer-b, id: 0x20, cidrs: [10.0.0.0/16], "
        "subnets: [{name: default, id: 0x6600, cidr: 10.0.0.0/16}]}"),
        "vms:", *vms,
        "  - {name: tv, vnet: customer-a, ipv4: 10.0.255.4, host: host1}",
        "services:",
        f"  - name: {PAIR_SERVICE}", "    endpoints:", *eps,
        f"  - name: {TCP_SERVICE}", "    endpoints:",
        '      - {name: tc, ipv6: "fd00:5e:2::10", host: host2}',
        "subscriptions:", *subs,
        f"  - {{vm: tv, service: {TCP_SERVICE}}}",
        ""])


# ---------------------------------------------------------------------------
# Helpers: namespaces, /proc CPU, OVS flow counts


@contextlib.contextmanager
def netns(name: str):
    """Run the block with this thread inside network namespace ``name``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
        yield
    finally:
        if _libc.setns(own, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the benchmark's namespace")
        os.close(target)
        os.close(own)


# ---------------------------------------------------------------------------
# Part 1: ICMPv6 echo load generator (raw sockets in the endpoints' namespaces)


class Pinger:
    """One raw ICMPv6 socket per endpoint namespace; sends echo requests, reads replies.

    Receive times are the kernel's (SO_TIMESTAMPNS), send times are taken just
    before ``sendto``; both on CLOCK_REALTIME.
    """

    def __init__(self, namespaces: list[str]):
        self.epoll = select.epoll()
        self.socks: list[socket.socket] = []
        self.by_fd: dict[int, socket.socket] = {}
        self.ifindex: list[int] = []      # eth0 in each namespace
        block_all_but_reply = [0xFFFFFFFF] * 8
        block_all_but_reply[ICMP6_ECHO_REPLY >> 5] &= ~(1 << (ICMP6_ECHO_REPLY & 31))
        filt = struct.pack("8I", *block_all_but_reply)
        for ns in namespaces:
            with netns(ns):
                s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
                self.ifindex.append(socket.if_nametoindex("eth0"))
            s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, filt)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setblocking(False)
            self.socks.append(s)
            self.by_fd[s.fileno()] = s
            self.epoll.register(s.fileno(), select.EPOLLIN)

    def close(self) -> None:
        self.epoll.close()
        for s in self.socks:
            s.close()

    def resolve_gateway(self) -> None:
        """Make each endpoint's kernel resolve fe80::1 (answered by the ND responder)."""
        for s, ifindex in zip(self.socks, self.ifindex, strict=True):
            with contextlib.suppress(OSError):
                s.sendto(struct.pack("!BBHHH", ICMP6_ECHO_REQUEST, 0, 0, 0, 0),
                         ("fe80::1", 0, 0, ifindex))

    def send(self, ep: int, dst: str, ident: int, seq: int) -> int:
        t = time.time_ns()
        self.socks[ep].sendto(struct.pack("!BBHHHQ", ICMP6_ECHO_REQUEST, 0, 0, ident, seq, t),
                              (dst, 0))
        return t

    def receive(self, timeout: float) -> list[tuple[int, int, int]]:
        """(ident, seq, kernel receive time ns) of every echo reply that arrived."""
        out = []
        for fd, _ in self.epoll.poll(timeout):
            s = self.by_fd[fd]
            while True:
                try:
                    data, anc, _, _ = s.recvmsg(64, 64)
                except BlockingIOError:
                    break
                if len(data) < 8 or data[0] != ICMP6_ECHO_REPLY:
                    continue
                ident, seq = struct.unpack_from("!HH", data, 4)
                t = time.time_ns()
                for level, kind, val in anc:
                    if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", val[:16])
                        t = sec * 1_000_000_000 + nsec
                out.append((ident, seq, t))
        return out


class PairPool:
    """The (endpoint, VM) pairs in an order that spreads consecutive pairs over both."""

    def __init__(self, n_ep: int, vm_ipv6: list[str]):
        n_vm = len(vm_ipv6)
        self.pairs = [(e, vm_ipv6[(k + e) % n_vm]) for k in range(n_vm) for e in range(n_ep)]
        assert len(set(self.pairs)) == len(self.pairs)
        self.id_base = 1

    def ids(self, n: int) -> list[int]:
        """``n`` ICMP ids not used by the previous run (wraps at 65535)."""
        out = [((self.id_base + k - 1) % 0xFFFF) + 1 for k in range(n)]
        self.id_base = (self.id_base + n) % 0xFFFF
        return out


def closed_loop(pinger: Pinger, pairs: list, ids: list[int], window: int, seconds: float,
                timeout: float = 1.0) -> dict:
    """New pairs with ``window`` first packets in flight; as many as answer in ``seconds``."""
    inflight: dict[int, int] = {}
    rtts, lost, sent, nxt = [], 0, 0, 0
    t_start = time.time_ns()
    t_stop = t_start + int(seconds * 1e9)
    t_last = t_start
    while True:
        now = time.time_ns()
        sending = now < t_stop and nxt < len(pairs)
        while sending and len(inflight) < window and nxt < len(pairs):
            ep, dst = pairs[nxt]
            inflight[ids[nxt]] = pinger.send(ep, dst, ids[nxt], 1)
            nxt += 1
            sent += 1
        if not sending and not inflight:
            break
        for ident, _seq, t in pinger.receive(0.002):
            t0 = inflight.pop(ident, None)
            if t0 is not None:
                rtts.append((t - t0) / 1e6)
                t_last = max(t_last, t)
        now = time.time_ns()
        for ident in [i for i, t0 in inflight.items() if now - t0 > timeout * 1e9]:
            del inflight[ident]
            lost += 1
    elapsed = (t_last - t_start) / 1e9
    return {"sent": sent, "answered": len(rtts), "lost": lost, "elapsed": elapsed,
            "rate": len(rtts) / elapsed if elapsed > 0 else 0.0,
            "p50": pct(rtts, 50), "p99": pct(rtts, 99)}


def open_loop(pinger: Pinger, pairs: list, ids: list[int], rate: float, seq: int,
              timeout: float = 1.0) -> dict:
    """One packet per pair at ``rate`` per second, on a fixed schedule; RTT of each.

    ``ok`` lists the indexes (into ``pairs``) of the pairs that answered.
    """
    index = {ident: i for i, ident in enumerate(ids)}
    sent_at: dict[int, int] = {}
    rtts, ok = [], []
    n = len(pairs)
    t_start = time.time_ns()
    period = 1e9 / rate
    nxt, late_max = 0, 0.0
    t_give_up = t_start + n * period + timeout * 1e9
    while nxt < n or (sent_at and time.time_ns() < t_give_up):
        now = time.time_ns()
        while nxt < n and t_start + nxt * period <= now:
            ep, dst = pairs[nxt]
            t = pinger.send(ep, dst, ids[nxt], seq)
            late_max = max(late_max, (t - (t_start + nxt * period)) / 1e6)
            sent_at[ids[nxt]] = t
            nxt += 1
        wait_s = max(0.0, (t_start + nxt * period - time.time_ns()) / 1e9) if nxt < n else 0.005
        for ident, s, t in pinger.receive(min(wait_s, 0.005)):
            if s != seq:
                continue
            t0 = sent_at.pop(ident, None)
            if t0 is not None:
                rtts.append((t - t0) / 1e6)
                ok.append(index[ident])
    return {"sent": n, "answered": len(rtts), "lost": n - len(rtts), "ok": ok,
            "late_max_ms": late_max,
            "p50": pct(rtts, 50), "p90": pct(rtts, 90), "p99": pct(rtts, 99),
            "max": max(rtts) if rtts else float("nan")}


# ---------------------------------------------------------------------------
# Part 2: TCP connection generator (subprocesses in the namespaces)

TCP_SERVER = r"""
import selectors, socket, sys
host, port, nports = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
sel = selectors.DefaultSelector()
for p in range(port, port + nports):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, p))
    s.listen(4096)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        while True:
            try:
                c, _ = key.fileobj.accept()
            except BlockingIOError:
                break
            c.close()
"""

TCP_CLIENT = r"""
import errno, json, select, socket, sys, time
addr, port, nports = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seconds, conc = float(sys.argv[4]), int(sys.argv[5])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
ep = select.epoll()
live, errors, lat = {}, {}, []
n = ok = late = 0
def start():
    global n
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setblocking(False)
    n += 1
    err = s.connect_ex((addr, port + n % nports))
    if err not in (0, errno.EINPROGRESS):
        errors[errno.errorcode.get(err, str(err))] = errors.get(errno.errorcode.get(err, str(err)), 0) + 1
        s.close()
        return
    live[s.fileno()] = (s, time.monotonic())
    ep.register(s.fileno(), select.EPOLLOUT)
print("go", flush=True)
cpu0 = time.process_time()
t0 = time.monotonic()
t_end, cpu = t0 + seconds, None
for _ in range(conc):
    start()
while live:
    for fd, _ in ep.poll(0.02):
        s, ts = live.pop(fd)
        ep.unregister(fd)
        now = time.monotonic()
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            errors[errno.errorcode.get(err, str(err))] = errors.get(errno.errorcode.get(err, str(err)), 0) + 1
        elif now <= t_end:
            ok += 1
            lat.append(now - ts)
        else:
            late += 1
        s.close()
        if now < t_end:
            start()
    now = time.monotonic()
    if cpu is None and now >= t_end:
        cpu = 100 * (time.process_time() - cpu0) / (now - t0)
        print("stop", flush=True)
    if now > t_end + 3:
        break
if cpu is None:
    cpu = 100 * (time.process_time() - cpu0) / (time.monotonic() - t0)
    print("stop", flush=True)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, round(p / 100 * (len(lat) - 1)))] * 1e3 if lat else float("nan")
print(json.dumps({"ok": ok, "rate": ok / seconds, "late": late, "unfinished": len(live),
                  "errors": errors, "failed": sum(errors.values()) + len(live),
                  "stalls": sum(1 for x in lat if x > 0.9),
                  "p50_ms": q(50), "p99_ms": q(99), "client_cpu": cpu}))
"""


class TcpPath:
    def __init__(self, name: str, client_ns: str, server_ns: str, listen: str, target: str):
        self.name, self.client_ns, self.server_ns = name, client_ns, server_ns
        self.listen, self.target = listen, target
        self.server: subprocess.Popen | None = None

    def start_server(self) -> None:
        sh.sysctl(self.client_ns, {"net.ipv4.ip_local_port_range": "1024 65535"})
        self.server = subprocess.Popen(
            [sh.tool("ip"), "netns", "exec", self.server_ns, sys.executable, "-c", TCP_SERVER,
             self.listen, str(TCP_PORT), str(TCP_PORTS)], stdout=subprocess.PIPE, text=True)
        if self.server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"TCP server in {self.server_ns} did not start")

    def stop_server(self) -> None:
        if self.server and self.server.poll() is None:
            terminate(self.server.pid, _comm(self.server.pid))
            self.server.wait(5)
        self.server = None

    def run(self, seconds: float, conc: int, cpu: CpuMeter | None = None) -> dict:
        """One client run; ``cpu`` is started and stopped with the client's own window."""
        proc = subprocess.Popen(
            [sh.tool("ip"), "netns", "exec", self.client_ns, sys.executable, "-c", TCP_CLIENT,
             self.target, str(TCP_PORT), str(TCP_PORTS), str(seconds), str(conc)],
            stdout=subprocess.PIPE, text=True)
        try:
            for mark in ("go", "stop"):
                line = proc.stdout.readline().strip()
                if line != mark:
                    raise RuntimeError(f"TCP client in {self.client_ns}: expected {mark}, got {line!r}")
                if cpu is not None:
                    (cpu.start if mark == "go" else cpu.stop)()
            result = json.loads(proc.stdout.readline())
        finally:
            proc.wait(seconds + 30)
        if cpu is not None:
            result["cpu"] = cpu.last
        return result


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def conntrack_only_path() -> tuple[OvsNode, TcpPath]:
    """A separate ovs-vswitchd (netdev) joining a client and a server with IPv4 SNAT."""
    for ns in (CTB_NS, CTC_NS, CTS_NS):
        sh.run([sh.tool("ip"), "netns", "add", ns])
        sh.ip(ns, "link", "set", "lo", "up")
    macs = {CTC_NS: "02:00:00:99:00:02", CTS_NS: "02:00:00:99:00:03"}
    addrs = {CTC_NS: "10.99.0.2", CTS_NS: "10.99.0.3"}
    for port, ns in (("c0", CTC_NS), ("s0", CTS_NS)):
        sh.ip(CTB_NS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh.ip(CTB_NS, "link", "set", port, "up")
        sh.sysctl(ns, {"net.ipv6.conf.all.disable_ipv6": 1})
        sh.ip_batch(ns, [f"link set eth0 address {macs[ns]}", f"addr add {addrs[ns]}/24 dev eth0",
                         "link set eth0 up"])
        sh.in_ns(ns, [sh.tool("ethtool"), "-K", "eth0", "tx", "off"])
    # client -> server's MAC; server's replies to the SNAT address -> client's MAC
    sh.ip(CTC_NS, "neigh", "replace", addrs[CTS_NS], "lladdr", macs[CTS_NS], "dev", "eth0",
          "nud", "permanent")
    sh.ip(CTS_NS, "neigh", "replace", "10.99.0.100", "lladdr", macs[CTC_NS], "dev", "eth0",
          "nud", "permanent")
    node = OvsNode("ctb", CTB_NS, CTB_RUN_DIR)
    node.start()
    sh.run([sh.tool("ovs-vsctl"), "--timeout=20", "add-br", "br0", "--",
            "set", "bridge", "br0", "datapath_type=netdev", "fail_mode=secure", "--",
            "add-port", "br0", "c0", "--", "set", "interface", "c0", "ofport_request=1", "--",
            "add-port", "br0", "s0", "--", "set", "interface", "s0", "ofport_request=2"],
           env=node.env())
    flows = (
        "table=0,priority=10,ip,in_port=1,"
        f"actions=ct(commit,zone={CTB_ZONE},nat(src=10.99.0.100:1024-65535),table=1)\n"
        f"table=0,priority=10,ip,in_port=2,actions=ct(zone={CTB_ZONE},nat,table=2)\n"
        "table=1,priority=10,ip,ct_state=+trk+snat-inv,actions=output:2\n"
        "table=2,priority=10,ip,ct_state=+trk-new-inv,actions=output:1\n")
    sh.run([sh.tool("ovs-ofctl"), "-O", "OpenFlow13", "add-flows", "br0", "-"],
           env=node.env(), input=flows)
    # The lab hosts' conntrack timeouts (closed TCP kept 75 s, longer than the server's
    # TIME_WAIT): with OVS's default 30 s, a NAT port is reused while the server still
    # holds it in TIME_WAIT and new connections hang (DESIGN §4b "Ports"; measured here too).
    api = node.connect()
    try:
        api.run(SyncCtTimeouts(api, "netdev", [CTB_ZONE], CT_TIMEOUTS, owner="pair_setup"))
    finally:
        api.close()
    return node, TcpPath("conntrack-only OVS (IPv4 SNAT)", CTC_NS, CTS_NS, "0.0.0.0",
                         addrs[CTS_NS])


# ---------------------------------------------------------------------------
# The run


class Bench:
    """One lab (``n_ep`` pairbench endpoints, ``n_vm`` VMs, plus tc/tv) and what runs in it."""

    def __init__(self, args: argparse.Namespace, n_ep: int, n_vm: int):
        self.args = args
        self.n_ep, self.n_vm = n_ep, n_vm
        self.lab = Lab(PREFIX, RUN_DIR)
        self.tmp = Path(tempfile.mkdtemp(prefix="vnet64-pair-bench-"))
        self.topo_path = self.tmp / "pair-bench.yaml"
        self.topo_path.write_text(topology_text(n_ep, n_vm))
        self.topo = topology.load(self.topo_path)
        self.api = None
        self.pinger = None
        self.ctb: OvsNode | None = None
        self.tcp_paths: list[TcpPath] = []
        self.facts: dict = {}

    def note(self, msg: str) -> None:
        note(msg)

    # -- lab ----------------------------------------------------------------

    def up(self) -> None:
        self.lab.down()
        t0 = time.monotonic()
        self.lab.up(self.topo_path)
        self.plan = self.lab.plan()
        self.nodes = {n.name: OvsNode(n.name, n.ns, n.run_dir) for n in self.plan.nodes}
        self.ns_of = {(v.kind, v.name): v.ns for v in self.plan.vifs}
        self.note(f"lab up in {time.monotonic() - t0:.1f}s ({self.n_ep + 1} endpoints, "
                  f"{self.n_vm + 1} VMs): {len(self.lab.namespaces())} namespaces")
        self.api = nbapi.connect(f"unix:{self.plan.nb_run_dir}/nb.sock")
        self._find_controllers((self.lab.state() or {}).get("controller", ""))
        # programmed: every VM steered on host1 and the appliance, pair miss flow present
        n_vm = len(self.topo.vms)
        sh.wait_for(lambda: flow_count(self.nodes["host1"], "v6_dnat") >= n_vm
             and flow_count(self.nodes["host1"], "pair") >= 1
             and flow_count(self.nodes["appliance"]) >= n_vm, 60, "the controller's flows")
        self.base_counts = self.counts()
        self.facts["settle_after_up"] = self.settle("after lab up", log=True)

    def _find_controllers(self, state: str) -> None:
        """The lab's controllers, once (re)started: ``controller_pids`` every one (each
        node's, or the central one: what "controller" CPU counts and what must be idle),
        ``controller_pid`` the one serving host1, where the pairs are set up (profiled)."""
        if not state.startswith("started"):
            raise RuntimeError(f"the lab did not start the controller: {state}")
        self.controller_pids = controller_pids(self.lab)
        self.controller_pid = self.lab.controller_pid("host1")
        self.args.control = self.lab.control

    def settle(self, when: str, timeout: float = 300.0, log: bool = False) -> float:
        """Wait until the controller is idle (< 10% of a core for 2 s in a row).

        With many ports, the port-status events of a fresh lab keep it busy well after
        its flows are in (each one recomputes the switch's proactive flows); after an
        overload, packet-ins queued in OVS keep arriving for a while.
        """
        seconds = seconds_until_idle(self.controller_pids, timeout)
        if seconds is None:
            raise RuntimeError(f"the controller stayed busy for {timeout:g}s {when}")
        if log:
            self.note(f"controller busy for {seconds:.0f}s more {when}")
        return seconds

    def counts(self) -> dict:
        h1, ap = self.nodes["host1"], self.nodes["appliance"]
        return {"v6_dnat": flow_count(h1, "v6_dnat"), "from_tunnel": flow_count(h1, "from_tunnel"),
                "appliance": flow_count(ap)}

    def cpu_meter(self) -> CpuMeter:
        procs = {"controller": list(self.controller_pids)}
        procs["ovs-vswitchd (3 nodes)"] = [n.pid("ovs-vswitchd") or 0 for n in self.nodes.values()]
        procs["ovs-vswitchd host1"] = [self.nodes["host1"].pid("ovs-vswitchd") or 0]
        tayga = sh.read_pid(Path(self.plan.translator("host1").run_dir) / "tayga.pid")
        procs["tayga host1"] = [tayga or 0]
        return CpuMeter(procs)

    def recycle(self) -> None:
        """Remove every pairbench pair (suspend the subscriptions), then re-activate them."""
        subs = [r for r in self.api.tables["Subscription"].rows.values()
                if r.service.name == PAIR_SERVICE]
        t0 = time.monotonic()
        self.api.run(*[self.api.db_set("Subscription", r.uuid, ("state", "suspended")) for r in subs])
        # left: the miss flow, and the tcpbench pair if installed
        sh.wait_for(lambda: flow_count(self.nodes["host1"], "pair") <= 2
             and flow_count(self.nodes["host1"], "v6_dnat") <= 1, 120, "pairs revoked")
        self.api.run(*[self.api.db_set("Subscription", r.uuid, ("state", "active")) for r in subs])
        sh.wait_for(lambda: self.counts() == self.base_counts, 120, "subscriptions restored")
        # Megaflows of the revoked pairs would still be in the datapaths (they idle out
        # after 10 s), and a pair set up again while its old megaflows are there loses its
        # first packets (measured: 12 of 20 re-used pairs; none with the flush, or after
        # 12 s). A new pair, or one back after its 300 s idle timeout, has no megaflow.
        for node in self.nodes.values():
            node.appctl("dpctl/del-flows")
        self.settle("after recycling")
        self.note(f"pairs removed, subscriptions restored, megaflows flushed in "
                  f"{time.monotonic() - t0:.1f}s")

    def restart_controller(self, log_level: str) -> None:
        os.environ["OS_DEFAULT__LOG_LEVEL"] = log_level
        try:
            self._find_controllers(self.lab.restart_controller())
        finally:
            del os.environ["OS_DEFAULT__LOG_LEVEL"]
        t0 = time.monotonic()

        def connected() -> bool:
            for node in self.nodes.values():
                out = sh.run([sh.tool("ovs-vsctl"), "--bare", "--columns=is_connected", "list",
                              "Controller"], env=node.env()).stdout.split()
                if out != ["true"]:
                    return False
            return True
        sh.wait_for(connected, 60, "the switches to reconnect to the restarted controller", 0.2)
        self.settle("after the controller restart")
        self.note(f"controller restarted with log level {log_level} (pid {self.controller_pid}); "
                  f"switches back after {time.monotonic() - t0:.1f}s")

    # -- part 1 ---------------------------------------------------------------

    def part1_setup(self) -> None:
        eps = [e for s in self.topo.services if s.name == PAIR_SERVICE for e in s.endpoints]
        self.pinger = Pinger([self.ns_of[("endpoint", e.name)] for e in eps])
        self.pinger.resolve_gateway()
        time.sleep(0.5)
        vm6 = [str(self.topo.platform_address(v.name).ipv6) for v in self.topo.vms
               if v.name != "tv"]
        self.pool = PairPool(len(eps), vm6)
        a = self.args
        self.n_lat = {rate: int(rate * a.lat_seconds) for rate in a.rates}
        self.n_sat = len(self.pool.pairs) - sum(self.n_lat.values())
        if self.n_sat < 200:
            raise RuntimeError(f"{len(self.pool.pairs)} pairs leave {self.n_sat} for the saturation "
                               "test; raise --endpoints/--vms or lower --rates/--lat-seconds")
        self.warm_up()

    def warm_up(self) -> None:
        """One pair per endpoint and per VM must answer (the path works); then recycle."""
        n = max(self.n_ep, len(self.pool.pairs) // self.n_ep)
        warm = self.pool.pairs[:n]
        r = open_loop(self.pinger, warm, self.pool.ids(len(warm)), 200, seq=1, timeout=3.0)
        if r["answered"] < len(warm):
            raise RuntimeError(f"warm-up: only {r['answered']} of {len(warm)} pairs answered; "
                               f"see {self.lab.controller_log('host1')}")
        self.note(f"warm-up: {len(warm)} pairs answered (p50 {r['p50']:.1f} ms)")
        self.settle("after the warm-up")
        self.recycle()

    def saturation(self) -> dict:
        a = self.args
        pairs_before = flow_count(self.nodes["host1"], "pair")
        cpu = self.cpu_meter()
        h1 = self.nodes["host1"].pid("ovs-vswitchd") or 0
        threads0 = thread_ticks(h1)
        cpu.start()
        r = closed_loop(self.pinger, self.pool.pairs[:self.n_sat], self.pool.ids(self.n_sat),
                        a.window, a.sat_seconds)
        r["cpu"] = cpu.stop()
        threads1 = thread_ticks(h1)
        r["host1_threads"] = {k: 100.0 * (v - threads0.get(k, 0)) / CpuMeter.HZ / cpu.dt
                              for k, v in threads1.items()}
        self.settle("after saturation")
        r["installed"] = flow_count(self.nodes["host1"], "pair") - pairs_before
        # CPU milliseconds per pair set up (cpu % x elapsed / pairs)
        r["ms_per_pair"] = {k: v / 100 * cpu.dt * 1000 / max(1, r["answered"])
                            for k, v in r["cpu"].items()}
        self.note(f"saturation: {r['answered']} pairs answered in {r['elapsed']:.2f}s = "
                  f"{r['rate']:.0f}/s (lost {r['lost']}, pair flows {r['installed']}, "
                  f"controller {r['cpu']['controller']:.0f}% CPU, RTT p50 {r['p50']:.0f} ms)")
        return r

    def part1_run(self) -> dict:
        out = {"sat": self.saturation(), "lat": {}}
        offset = self.n_sat
        for rate in self.args.rates:
            n = self.n_lat[rate]
            pairs = self.pool.pairs[offset:offset + n]
            offset += n
            ids = self.pool.ids(n)
            cpu = self.cpu_meter()
            cpu.start()
            new = open_loop(self.pinger, pairs, ids, rate, seq=1)
            new["cpu"] = cpu.stop()
            self.settle(f"after {rate:g} new pairs/s")
            ok = sorted(new["ok"])
            cpu.start()
            est = open_loop(self.pinger, [pairs[i] for i in ok], [ids[i] for i in ok], rate, seq=2)
            est["cpu"] = cpu.stop()
            out["lat"][rate] = {"new": new, "est": est}
            self.note(f"at {rate:g}/s: new pairs p50/p99 {new['p50']:.2f}/{new['p99']:.2f} ms "
                      f"(lost {new['lost']} of {new['sent']}, controller "
                      f"{new['cpu']['controller']:.0f}% CPU); installed pairs "
                      f"{est['p50']:.2f}/{est['p99']:.2f} ms (lost {est['lost']} of {est['sent']})")
        return out

    # -- part 2 ---------------------------------------------------------------

    def part2_setup(self) -> None:
        self.ctb, base = conntrack_only_path()
        tv6 = str(self.topo.platform_address("tv").ipv6)
        pair = TcpPath("one pair (full data path)", self.ns_of[("endpoint", "tc")],
                       self.ns_of[("vm", "tv")], "0.0.0.0", tv6)
        self.tcp_paths = [base, pair]
        for p in self.tcp_paths:
            p.start_server()
        # resolve fe80::1 before the first SYN
        with netns(pair.client_ns), contextlib.suppress(OSError), \
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", ("fe80::1", 9, 0, socket.if_nametoindex("eth0")))
        time.sleep(0.3)
        for p in self.tcp_paths:   # warm-up; installs the tc -> tv pair
            r = p.run(1.0, 4)
            if r["ok"] == 0:
                raise RuntimeError(f"no TCP connection over {p.name}: {r}")
        self.note("TCP warm-up done on both paths")

    def part2_run(self) -> dict:
        a = self.args
        out: dict = {p.name: {} for p in self.tcp_paths}
        tayga = sh.read_pid(Path(self.plan.translator("host1").run_dir) / "tayga.pid")
        for conc in a.tcp_concurrency:
            for p in self.tcp_paths:
                if p.client_ns == CTC_NS:
                    procs = {"ovs-vswitchd": [self.ctb.pid("ovs-vswitchd") or 0]}
                else:
                    procs = {"ovs-vswitchd": [n.pid("ovs-vswitchd") or 0 for n in self.nodes.values()],
                             "tayga": [tayga or 0], "controller": list(self.controller_pids)}
                procs["server"] = [p.server.pid]
                r = p.run(a.tcp_seconds, conc, CpuMeter(procs))
                r["cpu"].pop("generator")
                out[p.name][conc] = r
                self.note(f"TCP {p.name}, {conc} in flight: {r['rate']:.0f} conn/s (ok {r['ok']}, "
                          f"errors {r['errors'] or 0}, unfinished {r['unfinished']}, stalls "
                          f"{r['stalls']}, connect p50/p99 {r['p50_ms']:.2f}/{r['p99_ms']:.2f} ms)")
                time.sleep(a.tcp_pause)
        return out

    # -- profile ----------------------------------------------------------------

    def profile(self, path: Path) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            self.note("py-spy not installed (pip install py-spy); no profile")
            return
        raw = self.tmp / "controller.raw"
        proc = subprocess.Popen([spy, "record", "--pid", str(self.controller_pid), "--rate", "250",
                                 "--duration", str(int(self.args.sat_seconds) + 2), "--format", "raw",
                                 "--output", str(raw), "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        try:
            r = self.saturation()
        finally:
            proc.wait(self.args.sat_seconds + 30)
        path.write_text(f"py-spy of vnet64-controller (the one serving host1, {self.lab.control} "
                        f"control) during a saturation run of "
                        f"{r['rate']:.0f} pairs/s\n\n"
                        + (summarise_profile(raw.read_text()) if raw.exists() else "no samples\n"))
        self.note(f"controller profile saved to {path}")

    # -- teardown ---------------------------------------------------------------

    def down(self) -> None:
        for p in self.tcp_paths:
            with contextlib.suppress(Exception):
                p.stop_server()
        if self.pinger:
            self.pinger.close()
        if self.api:
            with contextlib.suppress(Exception):
                self.api.close()
        if self.ctb:
            self.ctb.stop()
        shutil.rmtree(CTB_RUN_DIR, ignore_errors=True)
        self.lab.down()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# Report


def tcp_section(title: str, intro: str, args, paths: list[str], runs: list[dict],
                judge: bool) -> list[str]:
    base_name, pair_name = paths
    best = {name: [max(r[name].values(), key=lambda x: x["rate"]) for r in runs]
            for name in paths}
    ratios = [p["rate"] / b["rate"] for b, p in zip(best[base_name], best[pair_name], strict=True)
              if b["rate"]]
    aim = f">= {AIM_TCP_RATIO}" if judge else "(not judged)"
    met = yes_no(med(ratios) >= AIM_TCP_RATIO) if judge else "-"
    lines = [
        "", f"### {title}", "", intro, "",
        "| measure | one pair | conntrack-only OVS | ratio | aim | met |",
        "|---|---|---|---|---|---|",
        (f"| new TCP connections/s (best level) | {rng([x['rate'] for x in best[pair_name]])} | "
         f"{rng([x['rate'] for x in best[base_name]])} | {rng(ratios, '.2f')} | {aim} | {met} |"),
        "",
        ("| path | in flight | conn/s | connect p50 / p99 (ms) | failed | stalls > 0.9 s | "
         "ovs-vswitchd CPU % | TAYGA CPU % | client CPU % | server CPU % |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in paths:
        for conc in args.tcp_concurrency:
            rs = [r[name][conc] for r in runs]
            tayga = med([x["cpu"].get("tayga", float("nan")) for x in rs])
            lines.append(
                f"| {name} | {conc} | {rng([x['rate'] for x in rs])} | "
                f"{med([x['p50_ms'] for x in rs]):.2f} / {med([x['p99_ms'] for x in rs]):.2f} | "
                f"{sum(x['failed'] for x in rs)} | {sum(x['stalls'] for x in rs)} | "
                f"{med([x['cpu']['ovs-vswitchd'] for x in rs]):.0f} | "
                f"{'-' if math.isnan(tayga) else f'{tayga:.0f}'} | "
                f"{med([x['client_cpu'] for x in rs]):.0f} | "
                f"{med([x['cpu']['server'] for x in rs]):.0f} |")
    return lines


def report(args, large: Bench, small: Bench | None, p1: list[dict], whatif: list[dict],
           p2_large: list[dict], p2_small: list[dict], started: datetime) -> str:
    ovs_version = sh.vswitchd_version()
    lines = [
        "# Pair setup through the controller, and connections inside one pair",
        "",
        (f"{started:%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
         f"kernel {platform.release()}, Python {platform.python_version()}, {ovs_version}, "
         f"commit {args.commit}. Shared, noisy machine (load average at start "
         f"{args.load_start}, at the end {getattr(args, 'load_end', '?')}; other labs ran at "
         f"the same time): compare the ratios, measured in the same run. {args.runs} runs; "
         "median (min-max)."),
        "",
        (f"Large lab `{PREFIX}` on a generated topology: appliance + host1 ({args.vms} VMs, "
         f"half in each of two VNets with the same addresses, + `tv`) + host2 "
         f"({args.endpoints} endpoints of `{PAIR_SERVICE}`, + `tc`) = "
         f"{args.endpoints * args.vms} distinct pairs; the real `vnet64-controller` as the "
         f"lab starts it: {control_text(getattr(args, 'control', 'node'))} (log level INFO, "
         "packet-in meter 5000 pps, burst 500). A pair is set "
         "up when the answer to its first packet (ICMPv6 echo from a raw socket in the "
         "endpoint's namespace, answered by the VM's kernel through TAYGA) is back at the "
         "endpoint; every run starts with no pair installed and no megaflow."),
    ]
    if p1:
        sat = [r["sat"]["rate"] for r in p1]
        lines += [
            "",
            "## New pairs through the controller",
            "",
            "| measure | value | baseline (same run) | ratio | aim | met |",
            "|---|---|---|---|---|---|",
            (f"| new pairs/s at saturation (closed loop, {args.window} first packets in "
             f"flight) | {rng(sat)} | - | - | >= {AIM_PAIRS_PER_S:,} | "
             f"{yes_no(med(sat) >= AIM_PAIRS_PER_S)} |"),
        ]
        if whatif:
            w = [r["rate"] for r in whatif]
            lines.append(
                f"| same, controller restarted at log level WARNING (what-if; each run right "
                f"after the INFO one) | {rng(w)} | {rng(sat)} (INFO) | "
                f"{med([x / y for x, y in zip(w, sat, strict=False)]):.2f}x | - | - |")
        for rate in args.rates:
            new = [r["lat"][rate]["new"] for r in p1]
            est = [r["lat"][rate]["est"] for r in p1]
            for q in ("p50", "p99"):
                judged = q == "p99" and rate == AIM_RATE
                lines.append(
                    f"| first-packet RTT {q} at {rate:g} new pairs/s (ms) | "
                    f"{rng([x[q] for x in new], '.2f')} | {rng([x[q] for x in est], '.2f')} "
                    f"(installed pair, same rate) | "
                    f"{med([x[q] / y[q] for x, y in zip(new, est, strict=True)]):.1f}x | "
                    f"{f'<= {AIM_P99_MS:g} ms' if judged else '-'} | "
                    f"{yes_no(med([x[q] for x in new]) <= AIM_P99_MS) if judged else '-'} |")
            lines.append(
                f"| first packets with no answer within 1 s at {rate:g} new pairs/s | "
                f"{rng([x['lost'] / x['sent'] * 100 for x in new], '.1f')} % | "
                f"{rng([y['lost'] / y['sent'] * 100 if y['sent'] else 0 for y in est], '.1f')} "
                "% | - | - | - |")
        lines += [
            "",
            "Per run (RTTs in ms):",
            "",
            "| run | saturation pairs/s | answered / sent (lost) | pair flows installed | "
            "RTT p50 / p99 at saturation | "
            + " | ".join(f"new @{r:g}/s p50 / p99 / max (lost) | installed @{r:g}/s p50 / p99 / max"
                         for r in args.rates) + " |",
            "|---|---|---|---|---|" + "---|---|" * len(args.rates),
        ]
        for i, r in enumerate(p1, 1):
            s = r["sat"]
            cells = [f"{i}", f"{s['rate']:.0f}", f"{s['answered']} / {s['sent']} ({s['lost']})",
                     f"{s['installed']}", f"{s['p50']:.0f} / {s['p99']:.0f}"]
            for rate in args.rates:
                n, e = r["lat"][rate]["new"], r["lat"][rate]["est"]
                cells.append(f"{n['p50']:.2f} / {n['p99']:.2f} / {n['max']:.0f} ({n['lost']})")
                cells.append(f"{e['p50']:.2f} / {e['p99']:.2f} / {e['max']:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        if whatif:
            lines += ["", "What-if runs (controller at WARNING): " + ", ".join(
                f"{r['rate']:.0f} pairs/s ({r['answered']} / {r['sent']})" for r in whatif) + "."]
        keys = list(p1[0]["sat"]["cpu"])
        lines += ["", (f"CPU, % of one core (median over runs; {os.cpu_count()} cores, shared "
                       "with other labs), and CPU milliseconds per pair at saturation:"), "",
                  "| phase | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        rows = [("saturation (INFO)", [r["sat"]["cpu"] for r in p1])]
        if whatif:
            rows.append(("saturation (WARNING, what-if)", [r["cpu"] for r in whatif]))
        for rate in args.rates:
            rows.append((f"new pairs at {rate:g}/s", [r["lat"][rate]["new"]["cpu"] for r in p1]))
            rows.append((f"installed pairs at {rate:g}/s",
                         [r["lat"][rate]["est"]["cpu"] for r in p1]))
        for label, cpus in rows:
            lines.append(f"| {label} | " + " | ".join(f"{med([c[k] for c in cpus]):.0f}"
                                                      for k in keys) + " |")
        per_pair = [("ms per pair, saturation (INFO)", [r["sat"]["ms_per_pair"] for r in p1])]
        if whatif:
            per_pair.append(("ms per pair, saturation (WARNING)", [r["ms_per_pair"] for r in whatif]))
        for label, vals in per_pair:
            lines.append(f"| {label} | " + " | ".join(f"{med([v[k] for v in vals]):.2f}"
                                                      for k in keys) + " |")
        platform_keys = ("controller", "ovs-vswitchd (3 nodes)", "tayga host1")
        if all(k in keys for k in platform_keys):
            per = {k: med([r["sat"]["ms_per_pair"][k] for r in p1]) for k in platform_keys}
            total = sum(per.values())
            lines += ["", (f"CPU per new pair at saturation, the platform's processes "
                           f"({', '.join(f'{k} {v:.2f}' for k, v in per.items())}): "
                           f"{total:.2f} ms. At the aim of {AIM_PAIRS_PER_S:,} new pairs/s that "
                           f"is {total * AIM_PAIRS_PER_S / 1000:.1f} cores busy; this machine "
                           f"has {os.cpu_count()}, shared with the generator and other labs.")]
        kinds = sorted({k for r in p1 for k in r["sat"]["host1_threads"]})
        split = {k: med([r["sat"]["host1_threads"].get(k, 0.0) for r in p1]) for k in kinds}
        lines += ["", "host1's ovs-vswitchd at saturation, % of one core by thread: " + ", ".join(
            f"{k} {v:.0f}" for k, v in sorted(split.items(), key=lambda kv: -kv[1]) if v >= 0.5)
            + "."]
        lines += ["", (f"After the large lab was up (flows in), the controller stayed busy "
                       f"for {large.facts.get('settle_after_up', 0):.0f} s more (host1 adds its "
                       f"{args.vms} VM ports one port-status message after another; the "
                       "controller reconciles a burst of them once).")]
        notes = []
        if AIM_RATE in args.rates and med(sat) < AIM_RATE:
            notes.append(f"{AIM_RATE} new pairs/s is above the saturation rate measured here, so "
                         "first packets queue (the RTT grows through the whole test) and those "
                         "beyond OVS's packet-in queue are dropped: the p99 there is queueing, "
                         "not setup time.")
        if AIM_RATE in args.rates:
            est99 = med([r["lat"][AIM_RATE]["est"]["p99"] for r in p1])
            if est99 > AIM_P99_MS:
                notes.append(f"Installed pairs alone have a p99 of {est99:.1f} ms at "
                             f"{AIM_RATE} packets/s in this lab: the {AIM_P99_MS:g} ms aim is "
                             "out of reach of this lab's data path, controller or not.")
        if notes:
            lines += ["", "Notes:", "", *[f"- {n}" for n in notes]]
    if p2_large or p2_small:
        lines += [
            "",
            "## New TCP connections per second inside one pair",
            "",
            ("`tc` (IPv6) -> `tv`'s platform address; the pair is installed once (no "
             "controller after that). Baseline, same run, alternating with it: a separate "
             "ovs-vswitchd (netdev) joining a client and a server namespace, "
             f"`ct(commit,zone={CTB_ZONE},nat(src=10.99.0.100:1024-65535))` forward, "
             f"`ct(zone={CTB_ZONE},nat)` back, output only if +snat / not +new (the VM-side "
             "zone of DESIGN.md §4b, without Geneve, TAYGA and the IPv6 zones), with the "
             f"lab hosts' conntrack timeout policy ("
             f"{', '.join(f'{k} {v} s' for k, v in CT_TIMEOUTS.items())}). Client: non-blocking connect, then close; "
             f"server: accept + close, on {TCP_PORTS} ports. {args.tcp_seconds:g} s per level "
             f"of connects in flight ({', '.join(str(c) for c in args.tcp_concurrency)}); a "
             "path's rate in a run is its best level. The one-pair path's ovs-vswitchd CPU is "
             "the sum of its three nodes."),
        ]
        if p2_small:
            names = [p.name for p in small.tcp_paths]
            lines += tcp_section(
                "Small lab (judged)",
                "The same three nodes with one endpoint and two VMs of `pairbench` besides "
                "`tc` and `tv` (2 endpoint ports on host2, 3 VM ports on host1).",
                args, names, p2_small, judge=True)
        if p2_large:
            names = [p.name for p in large.tcp_paths]
            lines += tcp_section(
                "Large lab (the pair-setup lab)",
                f"The lab above: host1 has {args.vms + 1} VM ports, host2 {args.endpoints + 1} "
                "endpoint ports. Every ovs-vswitchd of the userspace datapath polls all its "
                "ports from its main loop, so idle ports cost time on every packet.",
                args, names, p2_large, judge=False)
    lines += report_end(args.argv)
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=helptext.paragraphs(__doc__, 0, 1))
    parser.add_argument("--endpoints", type=int, default=40)
    parser.add_argument("--vms", type=int, default=160, help="an even number")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=int, default=128, help="first packets in flight at saturation")
    parser.add_argument("--sat-seconds", type=float, default=2.0)
    parser.add_argument("--rates", default=f"{AIM_RATE},250",
                        help="new pairs/s for the latency test, comma-separated")
    parser.add_argument("--lat-seconds", type=float, default=2.0)
    parser.add_argument("--tcp-seconds", type=float, default=2.0)
    parser.add_argument("--tcp-concurrency", default="16,64",
                        help="connects in flight, comma-separated levels")
    parser.add_argument("--tcp-pause", type=float, default=1.0)
    parser.add_argument("--no-what-if", action="store_true",
                        help="skip the saturation runs with the controller at log level WARNING")
    parser.add_argument("--skip-pairs", action="store_true")
    parser.add_argument("--skip-tcp", action="store_true")
    parser.add_argument("--profile", type=Path, help="also py-spy the controller in one more "
                        "saturation run; summary to this file")
    parser.add_argument("--out", type=Path,
                        help="save the table here (default benchmarks/results/pair_setup.md; "
                             "with --quick nothing is saved unless --out or --json is given)")
    parser.add_argument("--json", type=Path, help="also save the raw results as JSON")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke run (< 1 min of measurement): 10 endpoints x 40 VMs, one run, "
                             "one rate (100/s), short phases, no what-if, no small lab")
    parser.add_argument("--prefix", default=PREFIX, help=f"lab namespace prefix (default {PREFIX})")
    parser.add_argument("--run-dir", default=RUN_DIR, help=f"lab run directory (default {RUN_DIR})")
    args = parser.parse_args()
    if args.quick:
        args.endpoints, args.vms, args.runs, args.rates = 10, 40, 1, "100"
        args.window, args.sat_seconds, args.lat_seconds, args.tcp_seconds = 16, 1.0, 1.0, 1.0
        args.tcp_concurrency, args.tcp_pause, args.no_what_if = "16", 0.2, True
    elif args.out is None:
        args.out = ROOT / "benchmarks" / "results" / "pair_setup.md"
    set_prefix(args.prefix, args.run_dir)
    args.rates = [float(x) for x in args.rates.split(",")]
    args.tcp_concurrency = [int(x) for x in args.tcp_concurrency.split(",")]
    if (code := start_run(args, "pair_setup.py")) is not None:
        return code
    if args.vms % 2:
        parser.error("--vms must be even")
    started = datetime.now(UTC)
    p1, whatif, p2_large, p2_small = [], [], [], []
    large = Bench(args, args.endpoints, args.vms)
    try:
        large.up()
        if not args.skip_pairs:
            large.part1_setup()
        if not args.skip_tcp:
            large.part2_setup()
        for i in range(args.runs):
            note(f"run {i + 1} of {args.runs} in the large lab")
            if not args.skip_pairs:
                p1.append(large.part1_run())
                large.recycle()
                if not args.no_what_if:
                    # the same saturation test with the per-pair INFO line off, then back
                    large.restart_controller("WARNING")
                    large.warm_up()
                    whatif.append(large.saturation())
                    large.recycle()
                    large.restart_controller("INFO")
                    large.warm_up()
            if not args.skip_tcp:
                p2_large.append(large.part2_run())
        if args.profile and not args.skip_pairs:
            large.profile(args.profile)
    finally:
        large.down()
    small = None
    if not args.skip_tcp and not args.quick:
        small = Bench(args, 1, 2)
        # the TCP comparison again in a lab with 2 endpoints and 3 VMs in all: each
        # ovs-vswitchd of the userspace datapath polls all its ports from its main loop,
        # so the 200 ports of the large lab slow every packet down
        try:
            small.up()
            small.part2_setup()
            for i in range(args.runs):
                note(f"run {i + 1} of {args.runs} in the small lab")
                p2_small.append(small.part2_run())
        finally:
            small.down()
    args.load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    table = report(args, large, small, p1, whatif, p2_large, p2_small, started)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
        print(f"saved to {args.out}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"pairs": p1, "what_if": whatif, "tcp_large": p2_large,
                                         "tcp_small": p2_small}, default=str, indent=1))
        print(f"saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
