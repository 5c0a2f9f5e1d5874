#!/usr/bin/env python3
"""Data path: service -> customer VM throughput and request/response latency.

Compares, in one run and alternating between them (a, b1, b2, c, a-appliance, a-bpf,
a-bpf-appliance, a-recirc, a-bpf-recirc, a, b1, ...; each run starts one path later), the
paths a service
endpoint (IPv6) can take to a customer VM:

- ``a``   vnet64 as shipped (the direct path on, the default): svc1 -> a-vm1's platform
  IPv6 on ``topologies/two-tenants.yaml`` in the lab (prefix ``v64q-``, run dir
  ``/run/vnet64-lab-q``, with NB and controller): a pair's first packets host2 ->
  Geneve -> appliance -> host1, the rest host2 -> host1 directly (host2 learned where
  a-vm1 is from the first answer); at host1 conntrack in 3 zones, TAYGA -> a-vm1
  (IPv4); replies host1 -> host2 directly;
- ``b1``  plain OVS Geneve, service host -> customer host, IPv6 end to end, no
  translation, no conntrack: the datapath's own ceiling;
- ``b2``  the same plain IPv6 Geneve forwarding through an appliance hop (service
  host -> appliance -> customer host, replies direct: the hops of the patent's path,
  ``a-appliance``): isolates the cost of translation;
- ``c``   the workaround vnet64 replaces: a jumpbox "VM" in the customer VNet, on
  the customer host, reached over plain Geneve (like ``b1``) on its IPv6 side,
  doing NAT64 with TAYGA (the service's IPv6 -> an address of TAYGA's dynamic
  pool, ``<jumpbox /96>::<VM IPv4>`` -> the VM's IPv4) and kernel NAT44 (nftables
  masquerade to its own VNet address), then through the customer host's OVS to
  the VM (IPv4);
- ``a-appliance`` vnet64 with the direct path off (``NbApi.set_direct_path(False)``,
  the NB platform setting, for this path's measurements only; set back to the default
  after each): every packet host2 -> appliance -> host1, the patent's path; replies
  host1 -> host2. ``a`` / ``a-appliance`` is the direct path's gain.
- ``a-bpf`` vnet64 as ``a`` (direct path on) but host1's translator engine ``bpf``
  (issue 21's lever 3): host1's agent restarted with ``--translator-engine bpf`` for
  this path's measurements only (``Lab.restart_agent``; back to the lab's engine after
  each), so a tc-BPF program at the ingress of the translator namespace's ``ovs0``
  translates unfragmented TCP/UDP/echo in the kernel and sends it straight back to
  br-int; TAYGA gets only the rest. The program's counters (6to4, 4to6, to_tayga) are
  read around each measurement: it must have translated at least every transaction /
  every TCP segment of the goodput. ``a-bpf`` / ``a`` is the lever's gain. Its work runs
  in softirq: the report gives CPU per 100 Mbit/s from the whole machine's busy time
  too, not only from the processes' sum.
- ``a-bpf-appliance`` both switches at once (direct path off, host1's engine bpf): the
  BPF translator on the patent's path; ``a-bpf-appliance`` / ``a-appliance`` is the
  lever's gain there, and ``a-bpf-appliance`` / ``b2`` (the same hops, no translation)
  what translation still costs.
- ``a-recirc`` vnet64 as ``a`` but host1's translation stage as it was before issue 21's
  lever 2 (commit fb46a2b took one OVS recirculation out each way): test flows of their
  own cookie (``RECIRC_COOKIE``), added on host1 before each of this path's measurements
  and removed after it, route the translated traffic through the old, longer pipeline (in
  ``v6_dnat`` a copy of each per-VM flow whose DNAT ``ct`` recirculates to
  ``to_translator``; back, ``from_translator`` un-DNATs and recirculates to table 31,
  which un-SNATs and recirculates to ``to_service``). Their packet counters are read around
  each measurement (the traffic must have taken them) and their presence at its end (the
  controller reconciles a switch's flows only when it connects, and leaves cookies it did
  not write alone). ``a`` / ``a-recirc`` is lever 2 alone.
- ``a-bpf-recirc`` ``a-bpf`` with the same test flows: ``a-bpf`` / ``a-bpf-recirc`` is
  lever 2 alone with the BPF translator; ``a-bpf`` is all three levers at once (the
  direct path, lever 2, lever 3), held against ``c``, ``b2`` and ``b1``.

``b1``, ``b2`` and ``c`` run on three separate ovs-vswitchd (netdev) instances
in the benchmark's own namespaces (``<prefix>dp-*``), built like the lab's
nodes: br-phy on a veth to a Linux-bridge fabric, br-int with a Geneve port
(``remote_ip=flow``), tunnel neighbours seeded, TX checksum offload off on every
veth, userspace TSO off (the OVS default). MTUs are the lab's: underlay 1500,
IPv6 endpoints / br-int / jumpbox IPv6 side 1442, IPv4 VMs / jumpbox VNet side
1422.

Measures, per path: iperf3 TCP throughput with ``--streams`` parallel streams
and with one stream (``--seconds`` each), TCP and UDP request/response latency
(64-byte transactions one at a time for ``--lat-seconds``, a Python client and
echo server in the namespaces; p50/p99), CPU of every ovs-vswitchd, TAYGA and
iperf3 (from /proc) per Gbit/s, and OVS's own counters
(``dpif-netdev/pmd-stats-show``) of each node; the whole machine's busy and softirq
time and the ksoftirqd threads' CPU (kernel work no metered process may be charged
with). Needs root.

    .venv/bin/python benchmarks/datapath.py                # full run, ~12-14 min
    .venv/bin/python benchmarks/datapath.py --quick        # CI smoke: every path once, briefly

Saves benchmarks/results/datapath.md and .json (``--out``). ``--quick`` saves
nothing unless ``--out`` or ``--json`` is given (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))
sys.path.insert(0, str(ROOT / "ovs-setup"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import (CpuMeter, cpu_ticks, report_end, med, note, rng, start_run,  # noqa: E402
                    switch_engine, thread_ticks, yes_no)
from vnet64 import helptext  # noqa: E402
from vnet64.controller.pipeline import HOST_TABLES, ZONE_V6_DNAT, ZONE_V6_SNAT  # noqa: E402
from vnet64.nb import api as nbapi  # noqa: E402
from vnet64.node import translator  # noqa: E402
from vnet64_lab import Lab, sh  # noqa: E402
from vnet64_lab.ovs import OvsNode, terminate  # noqa: E402
from vnet64_lab.traffic import A6, SVC1, ns_of, programmed, wait_for  # noqa: E402

PREFIX = "v64q-"
RUN_DIR = "/run/vnet64-lab-q"
TOPOLOGY = ROOT / "topologies" / "two-tenants.yaml"
IPERF_PORT, ECHO_PORT = 5201, 7007
# issue 21's aims: throughput a/c, a/b2, a/b1 (4 streams and 1 stream)
AIM_C, AIM_B2, AIM_B1 = 1.2, 1.0, 0.8
# a/b1 before the direct path (benchmarks/results/datapath.md at be25537), 4 streams / 1 stream
B1_BEFORE = {"multi": 0.40, "single": 0.36}

UNDERLAY_MTU, V6_MTU, V4_MTU = 1500, 1442, 1422
GW_MAC = "02:00:00:00:00:01"                 # the virtual gateway MAC of the plain paths
VNI = "0x6464"
# the plain paths' three nodes: name -> (underlay IP, br-phy MAC)
DP_NODES = {"s": ("192.168.77.12", "02:00:00:77:00:12"),
            "ap": ("192.168.77.10", "02:00:00:77:00:10"),
            "c": ("192.168.77.11", "02:00:00:77:00:11")}
SVC6, VM6_DIRECT, VM6_VIA_AP = "fd98::10", "fd99::2", "fd99::3"
JUMP_PREFIX, JUMP6, JUMP_POOL, JUMP_TAYGA4 = "fd99:64::/96", "fd99:1::5", "192.168.255.0/24", "192.168.255.1"
VM4, JUMP4 = "10.0.0.4", "10.0.0.5"
JUMP_TARGET = "fd99:64::a00:4"               # <jumpbox /96>::10.0.0.4
# veths of the plain paths: port on a node -> (node, peer namespace suffix, peer ifname,
# peer MAC, ofport, MTU)
DP_PORTS = {"p-svc": ("s", "svc", "eth0", "02:00:00:98:00:10", 10, V6_MTU),
            "p-vm6": ("c", "vm6", "eth0", "02:00:00:99:00:02", 10, V6_MTU),
            "p-jump6": ("c", "jump", "eth0", "02:00:00:99:01:05", 11, V6_MTU),
            "p-jump4": ("c", "jump", "eth1", "02:00:00:0a:00:05", 12, V4_MTU),
            "p-vm4": ("c", "vm4", "eth0", "02:00:00:0a:00:04", 13, V4_MTU)}

# Userspace processes a packet passes through, forward + back, by construction of each
# path (each is a wake-up and a socket crossing): a (a pair's packets after its first
# answer): host2, host1, TAYGA, host1 / host1, TAYGA, host1, host2; a-appliance: host2,
# appliance, host1, TAYGA, host1 / the same as a; b1: s, c / c, s; b2: s, ap, c / c, s;
# c: s, c, TAYGA, c / c, TAYGA, c, s; a-bpf: host2, host1, host1 / host1, host1, host2 (the
# BPF translator runs in the kernel, in softirq, between host1's two passes);
# a-bpf-appliance: host2, appliance, host1, host1 / host1, host1, host2.
HOPS = {"a": (4, 4), "b1": (2, 2), "b2": (3, 2), "c": (4, 4), "a-appliance": (5, 4),
        "a-bpf": (3, 3), "a-bpf-appliance": (4, 3), "a-recirc": (4, 4), "a-bpf-recirc": (3, 3)}
# the paths whose throughput, latency and CPU are held against issue 21's aims
AIMED = ("a", "a-bpf")
# the paths on which host1's translator engine is bpf (its counters are checked)
BPF_PATHS = ("a-bpf", "a-bpf-appliance", "a-bpf-recirc")
# The what-if of issue 21's lever 2 (commit fb46a2b: one OVS recirculation fewer each way on
# the customer host): a-recirc / a-bpf-recirc are a / a-bpf with host1's translation stage
# put back as it was before, by test flows of their own cookie, added for their
# measurements only (before()) and removed after each (after()): in v6_dnat, a copy of
# each per-VM flow at RECIRC_PRIO whose DNAT recirculates to to_translator (which outputs
# what is +trk-inv) instead of going on to xlat0 in the same pass; in from_translator, IPv6
# back from the translator un-DNATs and recirculates to table RECIRC_TABLE (below the
# stage's alias-source and multicast flows, above its catch-all), which un-SNATs and
# recirculates to to_service, as the stage's one flow did in one pass since.
RECIRC_PATHS = {"a-recirc": "a", "a-bpf-recirc": "a-bpf"}    # what-if -> its path as shipped
RECIRC_COOKIE = "0x7e57002100000000"
RECIRC_PRIO, RECIRC_FROM_XLAT_PRIO, RECIRC_TABLE = 150, 50, 31
# the test flows' packets per table (v6_dnat: forward; from_translator and table 31: back)
RECIRC_COUNTERS = ("v6_dnat", "from_translator", "t31")
# TCP payload per segment on every path (IPv4 side 1422 - 40, IPv6 side 1442 - 60)
MSS = V4_MTU - 40
# CPU columns by role, to compare the paths component by component
ROLES = {"service host OVS": ("ovs-vswitchd host2", "ovs-vswitchd s"),
         "appliance OVS": ("ovs-vswitchd appliance", "ovs-vswitchd ap"),
         "customer host OVS": ("ovs-vswitchd host1", "ovs-vswitchd c"),
         "translator (TAYGA)": ("tayga host1", "tayga jumpbox"),
         "iperf3 (both ends)": ("iperf3 server", "iperf3 client")}

# ---------------------------------------------------------------------------
# Load generators: iperf3, and a request/response client + echo server in Python

ECHO_SERVER = r"""
import socket, sys, threading
# TCP on the wildcard address; UDP on each address given (a wildcard UDP socket would
# answer from whichever address the kernel picks, not the one the client asked)
host, port, udp_hosts = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
def udp(h):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((h, port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with c:
        while True:
            data = c.recv(2048)
            if not data:
                return
            c.sendall(data)
t = socket.socket(fam, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((host, port))
t.listen(64)
for h in udp_hosts:
    threading.Thread(target=udp, args=(h,), daemon=True).start()
print("ready", flush=True)
while True:
    c, _ = t.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# One transaction at a time (64 bytes out, the same 64 back) for ``seconds``;
# 20 transactions first as a warm-up, not counted.
RR_CLIENT = r"""
import json, socket, sys, time
proto, addr, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
msg = b"x" * 64
lat, lost, out = [], 0, {}
try:
    if proto == "tcp":
        s = socket.create_connection((addr, port), timeout=3)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.connect((addr, port))
    s.settimeout(1.0)
    def one():
        t0 = time.perf_counter_ns()
        s.send(msg)
        got = 0
        while got < len(msg):
            got += len(s.recv(2048))
            if proto == "udp":
                break
        return time.perf_counter_ns() - t0
    for _ in range(20):
        try:
            one()
        except socket.timeout:
            pass
    t_end = time.monotonic() + seconds
    t0 = time.monotonic()
    while time.monotonic() < t_end:
        try:
            lat.append(one() / 1e3)
        except socket.timeout:
            lost += 1
            if proto == "tcp":
                raise
    elapsed = time.monotonic() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, round(p / 100 * (len(lat) - 1)))] if lat else None
    out = {"n": len(lat), "lost": lost, "per_s": len(lat) / elapsed,
           "p50_us": q(50), "p99_us": q(99)}
except OSError as exc:
    out = {"n": len(lat), "lost": lost, "error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(out))
"""

# One UDP transaction (a-appliance's after(): host2 learns a-vm1's host from its answer);
# prints "ok" once answered, up to 3 tries. With a third argument "tcp", a TCP echo too
# (a-bpf's before/after: the translator answers both after the agent's restart).
ONE_UDP = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.connect((sys.argv[1], int(sys.argv[2])))
for _ in range(3):
    s.send(b"warm-up")
    try:
        s.recv(2048)
        print("ok")
        break
    except socket.timeout:
        pass
else:
    print("no answer")
    sys.exit()
if sys.argv[3:] == ["tcp"]:
    t = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    t.sendall(b"warm-up")
    print("ok" if t.recv(2048) else "tcp: no answer")
"""


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def rss_kb(pid: int) -> int:
    try:
        m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


class Servers:
    """iperf3 and the echo server in each server namespace; stopped by pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.iperf: dict[str, int] = {}

    def start(self, ns: str, bind: str, udp: list[str]) -> None:
        if ns in self.iperf:
            return
        p = subprocess.Popen([sh.tool("ip"), "netns", "exec", ns, "iperf3", "-s", "-p",
                              str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        self.iperf[ns] = p.pid
        e = subprocess.Popen([sh.tool("ip"), "netns", "exec", ns, sys.executable, "-c",
                              ECHO_SERVER, bind, str(ECHO_PORT), ",".join(udp)], stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
        self.procs.append(e)
        if e.stdout.readline().strip() != "ready":
            raise RuntimeError(f"echo server in {ns} did not start")
        sh.wait_for(lambda: comm(p.pid) == "iperf3" and p.poll() is None, 5,
                    f"iperf3 server in {ns}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                terminate(p.pid, comm(p.pid))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        self.procs, self.iperf = [], {}


# ---------------------------------------------------------------------------
# Paths


class Path_:
    """One way from a client namespace to a server: what to run and what to meter."""

    def __init__(self, name: str, label: str, client_ns: str, server_ns: str, target: str,
                 ovs: dict[str, OvsNode], tayga: dict[str, int],
                 tuns: dict[str, tuple[str, str]] | None = None):
        self.name, self.label = name, label
        self.client_ns, self.server_ns, self.target = client_ns, server_ns, target
        self.ovs, self.tayga = ovs, tayga
        self.tuns = tuns or {}        # TAYGA's tun per translator: (namespace, device)
        # around each of the path's measurements (a-appliance: the direct path off / back on;
        # a-bpf: host1's translator engine bpf / back)
        self.before = self.after = lambda: None
        # a-bpf: the BPF translator's counters (translator.BPF_STATS), read around each
        self.bpf: Callable[[], dict[str, int] | None] | None = None
        # a-recirc: the test flows' packet counters per table and how many are in place
        # (Bench.recirc_counters), read around each
        self.testflows: Callable[[], dict[str, int]] | None = None

    def testflows_delta(self, t0: dict[str, int] | None) -> dict[str, int] | None:
        """The test flows' packets during a measurement, and how many of them were still in
        place at its end (``flows``; ``expected``: how many before() added)."""
        if self.testflows is None:
            return None
        t1 = self.testflows()
        out = {k: t1.get(k, 0) - (t0 or {}).get(k, 0) for k in RECIRC_COUNTERS}
        out["flows"], out["expected"] = t1.get("flows", 0), t1.get("expected", 0)
        return out

    def bpf_delta(self, b0: dict[str, int] | None) -> dict[str, int] | None:
        if self.bpf is None:
            return None
        b1 = self.bpf()
        if b0 is None or b1 is None:
            return {"error": "no BPF translator attached"}
        return {k: b1.get(k, 0) - b0.get(k, 0) for k in b1}

    def procs(self, server_pid: int) -> dict[str, list[int]]:
        out = {f"ovs-vswitchd {k}": [n.pid("ovs-vswitchd") or 0] for k, n in self.ovs.items()}
        out.update({f"tayga {k}": [pid] for k, pid in self.tayga.items()})
        out["iperf3 server"] = [server_pid]
        return out

    def iperf(self, seconds: float, streams: int, server_pid: int) -> dict:
        meter = CpuMeter(self.procs(server_pid))
        threads0 = {k: thread_ticks(n.pid("ovs-vswitchd") or 0) for k, n in self.ovs.items()}
        rx0 = {k: port_rx(n) for k, n in self.ovs.items()}
        tun0 = {k: link_stats(*t) for k, t in self.tuns.items()}
        for n in self.ovs.values():
            n.appctl("dpif-netdev/pmd-stats-clear", check=False)
        # iperf3's JSON to a file, not a pipe: it writes it all at the end, and a long run
        # with many streams outgrows a pipe's buffer while we only poll the process
        out_file = tempfile.TemporaryFile("w+")
        b0 = self.bpf() if self.bpf else None
        f0 = self.testflows() if self.testflows else None
        m0 = machine_ticks()
        meter.start()
        proc = subprocess.Popen(
            [sh.tool("ip"), "netns", "exec", self.client_ns, "iperf3", "-c", self.target,
             "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-P", str(streams), "-J",
             "--connect-timeout", "3000"], stdout=out_file, text=True)
        client_t0 = 0
        with contextlib.suppress(Exception):
            sh.wait_for(lambda: comm(proc.pid) == "iperf3" or proc.poll() is not None, 2,
                        "iperf3 client")
        client_t0 = cpu_ticks(proc.pid)
        client_t1 = client_t0
        while proc.poll() is None:       # the client's CPU, read just before it exits
            client_t1 = cpu_ticks(proc.pid) or client_t1
            time.sleep(0.05)
        out_file.seek(0)
        out_text = out_file.read()
        out_file.close()
        cpu = meter.stop()
        m1 = machine_ticks()
        bpf = self.bpf_delta(b0)
        tf = self.testflows_delta(f0)
        cpu.pop("generator", None)
        machine = {k: 100.0 * (m1[k] - m0[k]) / CpuMeter.HZ / meter.dt
                   for k in ("busy", "softirq", "steal", "ksoftirqd")}
        cpu["iperf3 client"] = 100.0 * (client_t1 - client_t0) / CpuMeter.HZ / meter.dt
        cpu["total"] = sum(cpu.values())
        try:
            data = json.loads(out_text)
        except json.JSONDecodeError:
            data = {"error": out_text[-500:]}
        if "error" in data or "end" not in data:
            return {"gbps": 0.0, "error": str(data.get("error"))[:300], "cpu": cpu, "bpf": bpf,
                    "testflows": tf}
        end = data["end"]
        recv = end.get("sum_received", {})
        sent = end.get("sum_sent", {})
        gbps = recv.get("bits_per_second", 0.0) / 1e9
        gbit = recv.get("bytes", 0) * 8 / 1e9
        threads = {}
        for k, n in self.ovs.items():
            t1 = thread_ticks(n.pid("ovs-vswitchd") or 0)
            threads[k] = {t: 100.0 * (v - threads0[k].get(t, 0)) / CpuMeter.HZ / meter.dt
                          for t, v in t1.items() if v - threads0[k].get(t, 0) > 0}
        pmd = {k: pmd_stats(n) for k, n in self.ovs.items()}
        for k, n in self.ovs.items():
            # what the kernel delivered to the node's ports minus what OVS read from them:
            # packets dropped in the receive sockets of ovs-vswitchd (never counted by OVS)
            rx1 = port_rx(n)
            delivered = sum(v - rx0[k].get(p, 0) for p, v in rx1.items())
            pmd[k]["delivered"] = delivered
            pmd[k]["rx_lost"] = delivered - pmd[k].get("packets", 0)
        tuns = {}
        for k, t in self.tuns.items():
            t1 = link_stats(*t)
            tuns[k] = {f: t1.get(f, 0) - tun0[k].get(f, 0) for f in t1}
        # CPU per 100 Mbit/s: % of one core per 0.1 Gbit/s of goodput
        per100 = {k: (v / (gbps * 10) if gbps > 0 else float("nan")) for k, v in cpu.items()}
        out = {"gbps": gbps, "gbit": gbit, "retransmits": sent.get("retransmits", 0),
               "elapsed": meter.dt, "cpu": cpu, "cpu_per_100mbit": per100,
               "ovs_threads": threads, "pmd": pmd, "tun": tuns, "machine": machine,
               "machine_per_100mbit": {k: (v / (gbps * 10) if gbps > 0 else float("nan"))
                                       for k, v in machine.items()}}
        if bpf is not None:
            # the program translated at least every segment of the goodput (server -> client
            # acks, 4to6, are fewer: delayed ACKs, one per two segments or more)
            out["bpf"] = bpf
            out["bpf_min_6to4"] = int(recv.get("bytes", 0) // MSS)
            out["bpf_ok"] = ("error" not in bpf and bpf.get("6to4", 0) >= out["bpf_min_6to4"]
                             and bpf.get("4to6", 0) > 0)
        if tf is not None:
            # every forward segment took the old v6_dnat flow, and the acks the old return
            out["testflows"] = tf
            out["testflows_ok"] = (tf["flows"] == tf["expected"] > 0
                                   and tf["v6_dnat"] >= int(recv.get("bytes", 0) // MSS)
                                   and tf["from_translator"] > 0 and tf["t31"] > 0)
        return out

    def rr(self, proto: str, seconds: float) -> dict:
        b0 = self.bpf() if self.bpf else None
        f0 = self.testflows() if self.testflows else None
        proc = sh.in_ns(self.client_ns, [sys.executable, "-c", RR_CLIENT, proto, self.target,
                                         str(ECHO_PORT), f"{seconds:g}"],
                        check=False, timeout=seconds + 30)
        try:
            out = json.loads(proc.stdout)
        except json.JSONDecodeError:
            out = {"n": 0, "error": (proc.stderr or proc.stdout)[-300:]}
        bpf = self.bpf_delta(b0)
        if bpf is not None:
            # every counted transaction is a packet each way (a TCP one may carry more)
            out["bpf"] = bpf
            out["bpf_ok"] = ("error" not in bpf and bpf.get("6to4", 0) >= out.get("n", 0)
                             and bpf.get("4to6", 0) >= out.get("n", 0))
        tf = self.testflows_delta(f0)
        if tf is not None:
            out["testflows"] = tf
            out["testflows_ok"] = (tf["flows"] == tf["expected"] > 0
                                   and all(tf[k] >= out.get("n", 0) > 0 for k in RECIRC_COUNTERS))
        return out


def port_rx(node: OvsNode) -> dict[str, int]:
    """Packets the kernel delivered to each system port of a node's datapath (veths;
    ``dpctl/show -s`` reads the kernel's counters), whether or not OVS read them."""
    out, cur = {}, None
    for line in node.appctl("dpctl/show", "-s", check=False).splitlines():
        m = re.match(r"\s+port \d+: (\S+)(.*)", line)
        if m:
            cur = None if ("tap" in m.group(2) or "geneve" in m.group(2)) else m.group(1)
            continue
        m = re.match(r"\s+RX packets:(\d+)", line)
        if m and cur:
            out[cur] = int(m.group(1))
    return out


def machine_ticks() -> dict[str, int]:
    """Whole-machine CPU ticks from /proc/stat (every process, other labs' too)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal
    return {"busy": f[0] + f[1] + f[2] + f[5] + f[6], "softirq": f[6], "steal": f[7],
            "total": sum(f[:8]), "ksoftirqd": sum(cpu_ticks(p) for p in ksoftirqd_pids())}


def ksoftirqd_pids() -> list[int]:
    """The kernel's softirq threads (softirq work the interrupted context did not finish)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and comm(int(d.name)).startswith("ksoftirqd/"):
            out.append(int(d.name))
    return out


def link_stats(ns: str, dev: str) -> dict[str, int]:
    proc = sh.ip(ns, "-s", "-j", "link", "show", "dev", dev, check=False)
    try:
        st = json.loads(proc.stdout)[0]["stats64"]
    except (json.JSONDecodeError, IndexError, KeyError):
        return {}
    return {"rx_packets": st["rx"]["packets"], "rx_dropped": st["rx"]["dropped"],
            "tx_packets": st["tx"]["packets"], "tx_dropped": st["tx"]["dropped"]}


def pmd_stats(node: OvsNode) -> dict:
    """The main thread's numbers from ``dpif-netdev/pmd-stats-show`` (non-PMD ports)."""
    text = node.appctl("dpif-netdev/pmd-stats-show", check=False)
    out: dict[str, float] = {}
    section = text.split("main thread", 1)[-1]
    for key, pat in (("packets", r"packets received:\s*(\d+)"),
                     ("passes", r"datapath passes per packet:\s*([\d.]+)"),
                     ("emc_hits", r"emc hits:\s*(\d+)"),
                     ("smc_hits", r"smc hits:\s*(\d+)"),
                     ("megaflow_hits", r"megaflow hits:\s*(\d+)"),
                     ("upcalls", r"miss with success upcall:\s*(\d+)"),
                     ("failed_upcalls", r"miss with failed upcall:\s*(\d+)"),
                     ("cycles_per_packet", r"avg cycles per packet:\s*([\d.]+)"),
                     ("proc_cycles_per_packet", r"avg processing cycles per packet:\s*([\d.]+)"),
                     ("busy_pct", r"processing cycles:\s*\d+\s*\(([\d.]+)%\)")):
        m = re.search(pat, section)
        if m:
            out[key] = float(m.group(1))
    return out


class PlainPaths:
    """b1, b2 and c: three ovs-vswitchd (netdev) in the benchmark's own namespaces."""

    def __init__(self, prefix: str, run_dir: Path):
        self.prefix, self.run_dir = prefix, run_dir
        self.fab = f"{prefix}dp-fab"
        self.node_ns = {k: f"{prefix}dp-{k}" for k in DP_NODES}
        self.ep_ns = {k: f"{prefix}dp-{k}" for k in ("svc", "vm6", "jump", "vm4")}
        self.nodes = {k: OvsNode(f"dp-{k}", ns, run_dir / k) for k, ns in self.node_ns.items()}
        self.tayga_pid = 0

    def namespaces(self) -> list[str]:
        return [self.fab, *self.node_ns.values(), *self.ep_ns.values()]

    def stop(self) -> None:
        if self.tayga_pid:
            terminate(self.tayga_pid, "tayga")
        for n in self.nodes.values():
            if n.run_dir.exists():
                n.stop()

    def build(self) -> None:
        for ns in self.namespaces():
            sh.run([sh.tool("ip"), "netns", "add", ns])
            sh.ip(ns, "link", "set", "lo", "up")
        sh.ip_batch(self.fab, [f"link add br0 mtu {UNDERLAY_MTU} type bridge", "link set br0 up"])
        for k, ns in self.node_ns.items():
            sh.sysctl(ns, {"net.ipv6.conf.all.disable_ipv6": 1,
                           "net.ipv6.conf.default.disable_ipv6": 1,
                           "net.ipv4.conf.all.arp_ignore": 1,
                           "net.ipv4.conf.default.arp_ignore": 1})
            sh.ip_batch(ns, [f"link add ul0 mtu {UNDERLAY_MTU} type veth peer name u-{k} "
                             f"mtu {UNDERLAY_MTU} netns {self.fab}", "link set ul0 up"])
            sh.ip(self.fab, "link", "set", f"u-{k}", "master", "br0", "up")
            sh.in_ns(ns, [sh.tool("ethtool"), "-K", "ul0", "tx", "off"])
        for port, (node, ep, ifname, mac, _, mtu) in DP_PORTS.items():
            sh.ip_batch(self.node_ns[node], [
                f"link add {port} mtu {mtu} type veth peer name {ifname} mtu {mtu} address {mac} "
                f"netns {self.ep_ns[ep]}", f"link set {port} up"])
            sh.in_ns(self.node_ns[node], [sh.tool("ethtool"), "-K", port, "tx", "off"])
            sh.in_ns(self.ep_ns[ep], [sh.tool("ethtool"), "-K", ifname, "tx", "off"])
        for k, node in self.nodes.items():
            self._ovs(k, node)
        self._endpoints()
        self._flows()

    def _ovs(self, k: str, node: OvsNode) -> None:
        node.start()
        ul_ip, ul_mac = DP_NODES[k]
        args = ["--timeout=20", "add-br", "br-phy", "--",
                "set", "bridge", "br-phy", "datapath_type=netdev", f"other_config:hwaddr={ul_mac}",
                "--", "set", "interface", "br-phy", f"mtu_request={UNDERLAY_MTU}",
                "--", "add-port", "br-phy", "ul0",
                "--", "add-br", "br-int", "--",
                "set", "bridge", "br-int", "datapath_type=netdev", "fail_mode=secure",
                "other_config:disable-in-band=true",
                "--", "set", "interface", "br-int", f"mtu_request={V6_MTU}",
                "--", "add-port", "br-int", "geneve0", "--", "set", "interface", "geneve0",
                "type=geneve", "options:remote_ip=flow", "options:key=flow", "ofport_request=1"]
        for port, (owner, _, _, _, ofport, _) in DP_PORTS.items():
            if owner == k:
                args += ["--", "add-port", "br-int", port, "--", "set", "interface", port,
                         f"ofport_request={ofport}"]
        sh.run([sh.tool("ovs-vsctl"), *args], env=node.env())
        ns = self.node_ns[k]
        sh.wait_for(lambda: sh.ip(ns, "link", "show", "br-phy", check=False).returncode == 0, 10,
                    f"br-phy in {ns}")
        sh.ip_batch(ns, [f"addr replace {ul_ip}/24 dev br-phy", "link set br-phy up"])
        for other, (ip, mac) in DP_NODES.items():
            if other != k:
                node.appctl("tnl/neigh/set", "br-phy", ip, mac)
        sh.wait_for(lambda: "192.168.77.0/24" in node.appctl("ovs/route/show", check=False), 10,
                    f"the underlay route in dp-{k}'s OVS")

    def _endpoints(self) -> None:
        gw6 = ["route add default via fe80::1 dev eth0",
               f"neigh replace fe80::1 lladdr {GW_MAC} dev eth0 nud permanent"]
        for ep, addrs in (("svc", [SVC6]), ("vm6", [VM6_DIRECT, VM6_VIA_AP])):
            ns = self.ep_ns[ep]
            sh.sysctl(ns, {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0})
            sh.ip_batch(ns, ["link set eth0 up", *[f"addr add {a}/128 dev eth0 nodad" for a in addrs]])
            sh.ip_batch(ns, gw6, family="-6")
        vm4 = self.ep_ns["vm4"]
        sh.sysctl(vm4, {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1})
        sh.ip_batch(vm4, [f"addr add {VM4}/24 dev eth0", "link set eth0 up"])
        # The jumpbox: IPv6 toward the service on eth0, IPv4 in the VNet on eth1, TAYGA in
        # between (stateless NAT64 with a dynamic pool for the service's address), and
        # NAT44 (masquerade to its own VNet address) out of eth1.
        j = self.ep_ns["jump"]
        jdir = self.run_dir / "jump"
        jdir.mkdir(parents=True, exist_ok=True)
        conf = jdir / "tayga.conf"
        conf.write_text(f"tun-device nat64\nipv4-addr {JUMP_TAYGA4}\nprefix {JUMP_PREFIX}\n"
                        f"dynamic-pool {JUMP_POOL}\ndata-dir {jdir}\n")
        sh.sysctl(j, {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1,
                      "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
                      "net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0})
        sh.in_ns(j, [sh.tool("tayga"), "--mktun", "-c", str(conf)])
        sh.ip_batch(j, ["link set eth0 up", "link set eth1 up", f"addr add {JUMP6}/128 dev eth0 nodad",
                        f"addr add {JUMP4}/24 dev eth1", f"link set nat64 mtu {V6_MTU} up",
                        f"route add {JUMP_POOL} dev nat64"])
        sh.ip_batch(j, [*gw6, f"route add {JUMP_PREFIX} dev nat64"], family="-6")
        sh.run([sh.tool("ip"), "netns", "exec", j, sh.tool("nft"), "-f", "-"], input=(
            "table ip jumpbox {\n chain post {\n  type nat hook postrouting priority srcnat;\n"
            '  oifname "eth1" masquerade\n }\n}\n'))
        pidfile = jdir / "tayga.pid"
        sh.in_ns(j, [sh.tool("tayga"), "-c", str(conf), "-p", str(pidfile)])
        sh.wait_for(lambda: (pid := sh.read_pid(pidfile)) and sh.proc_alive(pid, "tayga"), 10,
                    "the jumpbox's TAYGA")
        self.tayga_pid = sh.read_pid(pidfile) or 0

    def _flows(self) -> None:
        ul = {k: v[0] for k, v in DP_NODES.items()}
        mac = {p: v[3] for p, v in DP_PORTS.items()}

        def encap(to: str) -> str:
            return f"set_field:{VNI}->tun_id,set_field:{ul[to]}->tun_dst,output:1"

        def deliver(port: str) -> str:
            return (f"set_field:{GW_MAC}->eth_src,set_field:{mac[port]}->eth_dst,"
                    f"output:{DP_PORTS[port][4]}")
        flows = {
            "s": [f"priority=100,in_port=10,ipv6,ipv6_dst={VM6_DIRECT},actions={encap('c')}",
                  f"priority=100,in_port=10,ipv6,ipv6_dst={VM6_VIA_AP},actions={encap('ap')}",
                  f"priority=100,in_port=10,ipv6,ipv6_dst={JUMP_PREFIX},actions={encap('c')}",
                  f"priority=100,in_port=1,tun_id={VNI},ipv6,ipv6_dst={SVC6},"
                  f"actions={deliver('p-svc')}"],
            "ap": [f"priority=100,in_port=1,tun_id={VNI},tun_src={ul['s']},ipv6,"
                   f"ipv6_dst={VM6_VIA_AP},actions=set_field:{ul['c']}->tun_dst,IN_PORT"],
            "c": [f"priority=100,in_port=1,tun_id={VNI},ipv6,ipv6_dst={VM6_DIRECT},"
                  f"actions={deliver('p-vm6')}",
                  f"priority=100,in_port=1,tun_id={VNI},ipv6,ipv6_dst={VM6_VIA_AP},"
                  f"actions={deliver('p-vm6')}",
                  f"priority=100,in_port=1,tun_id={VNI},ipv6,ipv6_dst={JUMP_PREFIX},"
                  f"actions={deliver('p-jump6')}",
                  f"priority=100,in_port=10,ipv6,ipv6_dst={SVC6},actions={encap('s')}",
                  f"priority=100,in_port=11,ipv6,ipv6_dst={SVC6},actions={encap('s')}",
                  "priority=100,in_port=12,actions=output:13",   # the VNet: jumpbox <-> VM
                  "priority=100,in_port=13,actions=output:12"],
        }
        for k, lines in flows.items():
            sh.run([sh.tool("ovs-ofctl"), "-O", "OpenFlow13", "add-flows", "br-int", "-"],
                   env=self.nodes[k].env(), input="\n".join(lines) + "\n")


# ---------------------------------------------------------------------------
# The run


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.lab = Lab(args.prefix, args.run_dir)
        self.dp_dir = Path(f"{args.run_dir}-dp")
        self.plain = PlainPaths(args.prefix, self.dp_dir)
        self.servers = Servers()
        self.paths: list[Path_] = []
        self.nb: nbapi.NbApi | None = None     # the lab's NB, one connection for the run
        self.switch_s: list[float] = []          # each direct path switch, NB write to flows
        self.engine_s: list[float] = []          # each translator engine switch of host1
        self.bpf_objects: list[str] = []         # the BPF translator objects a-bpf ran
        self.xl1: translator.Translator | None = None   # host1's, to read (tc, bpftool)
        self.recirc_expected = 0                 # test flows a-recirc's before() added
        self.recirc_checks: list[str] = []       # what a-recirc's first before() verified
        self.recirc_removed = 0                  # after()s that left no test flow behind

    def cleanup(self) -> None:
        """Everything this benchmark (or an interrupted earlier run) created, by pid/pidfile."""
        with contextlib.suppress(Exception):
            self.servers.stop()
        if self.nb is not None:
            with contextlib.suppress(Exception):
                self.nb.close()
            self.nb = None
        if self.dp_dir.exists():
            # the plain paths' daemons by their pidfiles (TAYGA's under jump/)
            pid = sh.read_pid(self.dp_dir / "jump" / "tayga.pid")
            if pid:
                terminate(pid, "tayga")
            self.plain.stop()
        # every namespace with the prefix (the lab's and ours), and what runs in them
        self.lab.down()
        shutil.rmtree(self.dp_dir, ignore_errors=True)

    def up(self) -> None:
        t0 = time.monotonic()
        r = self.lab.up(TOPOLOGY)
        if not str(r.get("controller", "")).startswith("started"):
            raise RuntimeError(f"the lab did not start the controller: {r}")
        plan = self.plan = self.lab.plan()
        if not wait_for(lambda: programmed(plan), 30):
            raise RuntimeError("the controller did not program the switches")
        note(f"lab {self.args.prefix} up and programmed in {time.monotonic() - t0:.1f}s")
        t0 = time.monotonic()
        self.plain.build()
        note(f"plain paths (3 ovs-vswitchd, jumpbox with TAYGA + nftables) built in "
             f"{time.monotonic() - t0:.1f}s")
        lab_ovs = {n.name: OvsNode(n.name, n.ns, n.run_dir) for n in plan.nodes}
        self.lab_ovs = lab_ovs
        t1 = plan.translator("host1")
        # only read: whether the BPF translator is on ovs0, and its counters
        self.xl1 = translator.Translator("host1", t1.ns, Path(t1.run_dir), t1.mac, t1.mtu,
                                         True, engine="bpf")
        # one dict for every vnet64 path: an agent restart that restarted TAYGA updates it
        self.tayga1 = {"host1": sh.read_pid(Path(t1.run_dir) / "tayga.pid") or 0}
        svc1, avm1 = ns_of(plan, "svc1"), ns_of(plan, "a-vm1")
        p, n = self.plain.ep_ns, self.plain.nodes
        xl1 = (plan.translator("host1").ns, "nat64")
        jtun = (p["jump"], "nat64")
        a = Path_("a", "vnet64 as shipped, direct path on (svc1 -> a-vm1 platform IPv6)",
                  svc1, avm1, A6, lab_ovs, self.tayga1, tuns={"host1": xl1})
        self.paths = [
            a,
            Path_("b1", "plain IPv6 Geneve, host to host", p["svc"], p["vm6"], VM6_DIRECT,
                  {"s": n["s"], "c": n["c"]}, {}),
            Path_("b2", "plain IPv6 Geneve via an appliance hop", p["svc"], p["vm6"], VM6_VIA_AP,
                  {"s": n["s"], "ap": n["ap"], "c": n["c"]}, {}),
            Path_("c", "jumpbox (TAYGA NAT64 + nftables NAT44)", p["svc"], p["vm4"], JUMP_TARGET,
                  {"s": n["s"], "c": n["c"]}, {"jumpbox": self.plain.tayga_pid},
                  tuns={"jumpbox": jtun}),
        ]
        if not self.args.no_appliance_path:
            self.nb = nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock")
            w = Path_("a-appliance", "vnet64, direct path off (every packet via the appliance)",
                      svc1, avm1, A6, lab_ovs, self.tayga1, tuns={"host1": xl1})
            w.before, w.after = self.direct_path_off, self.direct_path_back
            self.paths.append(w)
        if not self.args.no_bpf_path:
            if self.lab.translator_engine != "tayga":
                raise RuntimeError(f"the lab's translator engine is {self.lab.translator_engine}"
                                   ": a-bpf compares engine bpf with tayga (path a); run with "
                                   "VNET64_TRANSLATOR_ENGINE=tayga or --no-bpf-path")
            x = Path_("a-bpf", "vnet64, direct path on, host1's translator engine bpf "
                      "(tc-BPF in front of TAYGA)", svc1, avm1, A6, lab_ovs, self.tayga1,
                      tuns={"host1": xl1})
            x.before, x.after, x.bpf = self.engine_bpf, self.engine_back, self.xl1.bpf_stats
            self.paths.append(x)
            if not self.args.no_appliance_path:
                y = Path_("a-bpf-appliance", "vnet64, direct path off and host1's translator "
                          "engine bpf", svc1, avm1, A6, lab_ovs, self.tayga1, tuns={"host1": xl1})
                y.bpf = self.xl1.bpf_stats

                def before() -> None:
                    self.engine_bpf()
                    self.direct_path_off()

                def after() -> None:
                    self.direct_path_back()
                    self.engine_back()
                y.before, y.after = before, after
                self.paths.append(y)
        if not self.args.no_recirc_path:
            r = Path_("a-recirc", "vnet64 as a, host1's translation stage as before lever 2 "
                      "(one recirculation more each way; test flows)", svc1, avm1, A6, lab_ovs,
                      self.tayga1, tuns={"host1": xl1})
            r.before, r.after, r.testflows = self.recirc_on, self.recirc_off, self.recirc_counters
            self.paths.append(r)
            if not self.args.no_bpf_path:
                rb = Path_("a-bpf-recirc", "vnet64 as a-bpf, host1's translation stage as "
                           "before lever 2 (test flows)", svc1, avm1, A6, lab_ovs, self.tayga1,
                           tuns={"host1": xl1})
                rb.bpf, rb.testflows = self.xl1.bpf_stats, self.recirc_counters

                def before_rb() -> None:
                    self.engine_bpf()
                    self.recirc_on()

                def after_rb() -> None:
                    try:
                        self.recirc_off()
                    finally:
                        self.engine_back()
                rb.before, rb.after = before_rb, after_rb
                self.paths.append(rb)
        self.servers.start(avm1, "0.0.0.0", ["0.0.0.0"])
        self.servers.start(p["vm6"], "::", [VM6_DIRECT, VM6_VIA_AP])
        self.servers.start(p["vm4"], "0.0.0.0", ["0.0.0.0"])
        for path in self.paths:      # warm-up: the pair's first packet goes to the controller
            path.before()
            try:
                r = path.rr("tcp", 1.0)
                u = path.rr("udp", 1.0)
            finally:
                path.after()
            if not r.get("n") or not u.get("n"):
                raise RuntimeError(f"path {path.name}: no answer (tcp {r}, udp {u})")
        note("every path answers (TCP and UDP)")

    def to_appliance_resubmits(self) -> bool:
        """Whether host2's ``to_appliance`` flows go on to ``direct`` (the direct path on)."""
        text = self.lab_ovs["host2"].ofctl("-O", "OpenFlow15", "dump-flows", "br-int",
                                           f"table={HOST_TABLES.id('to_appliance')}")
        return any("resubmit" in line for line in text.splitlines() if "cookie=" in line)

    def learned_a_vm1(self) -> bool:
        """Whether host2 holds a learned ``direct`` entry sending a-vm1's address to host1."""
        h1 = str(self.plan.node("host1").underlay_ip.ip)
        text = self.lab_ovs["host2"].ofctl("-O", "OpenFlow15", "dump-flows", "br-int",
                                           f"table={HOST_TABLES.id('direct')}")
        return any(f"ipv6_dst={A6}" in line and f"{h1}->tun_dst" in line
                   for line in text.splitlines())

    def host1_takes_svc1_direct(self) -> bool:
        """Whether host1 accepts svc1's pair with a-vm1 straight from host2 (its
        ``from_tunnel`` flow for that pair, the direct path on)."""
        text = self.lab_ovs["host1"].ofctl("-O", "OpenFlow15", "dump-flows", "br-int",
                                           f"table={HOST_TABLES.id('from_tunnel')}")
        return any(f"ipv6_src={SVC1}" in line and f"ipv6_dst={A6}" in line
                   for line in text.splitlines())

    def host1_no_svc1_direct(self) -> bool:
        """Whether host1 holds no direct path flow from svc1 (no pair's, no pass-on)."""
        text = self.lab_ovs["host1"].ofctl("-O", "OpenFlow15", "dump-flows", "br-int",
                                           f"table={HOST_TABLES.id('from_tunnel')}")
        return not any(f"ipv6_src={SVC1}" in line for line in text.splitlines())

    def direct_path_off(self) -> None:
        """a-appliance's before(): the NB's direct path off; wait until host2's controller
        took ``resubmit(,direct)`` out of ``to_appliance``, host1's its direct flows for
        svc1, and their datapaths follow."""
        t0 = time.monotonic()
        self.nb.set_direct_path(False)
        if not wait_for(lambda: not self.to_appliance_resubmits()
                        and self.host1_no_svc1_direct(), 15):
            raise RuntimeError("direct path off: host2's to_appliance flows still resubmit "
                               "to direct, or host1 still takes svc1 direct, after 15 s")
        for node in ("host2", "host1"):
            self.lab_ovs[node].appctl("revalidator/wait")
        self.switch_s.append(time.monotonic() - t0)

    def direct_path_back(self) -> None:
        """a-appliance's after(): the direct path back to the default (on); wait for the
        resubmit, then one transaction so host2 learns a-vm1's host again before ``a``."""
        t0 = time.monotonic()
        self.nb.set_direct_path(None)
        if not wait_for(self.to_appliance_resubmits, 15):
            raise RuntimeError("direct path back on: host2's to_appliance flows do not "
                               "resubmit to direct after 15 s")
        proc = sh.in_ns(self.paths[0].client_ns, [sys.executable, "-c", ONE_UDP, A6,
                                                  str(ECHO_PORT)], check=False, timeout=10)
        if proc.stdout.strip() != "ok":
            raise RuntimeError(f"direct path back on: a-vm1 did not answer the warm-up "
                               f"transaction: {proc.stdout.strip()} {proc.stderr[-300:]}")
        if not wait_for(self.learned_a_vm1, 5):
            raise RuntimeError("direct path back on: host2 learned no direct entry for a-vm1")
        if not wait_for(self.host1_takes_svc1_direct, 10):
            raise RuntimeError("direct path back on: host1 does not take svc1 -> a-vm1 "
                               "straight from host2 after 10 s")
        for node in ("host2", "host1"):
            self.lab_ovs[node].appctl("revalidator/wait")
        self.switch_s.append(time.monotonic() - t0)

    def restart_host1(self, engine: str) -> None:
        """Restart host1's agent with translator ``engine``, wait until the BPF translator
        is on ``ovs0`` (``bpf``) or off (the lab's ``tayga``), a-vm1 answers a UDP and a TCP
        transaction, and the direct path holds (host2's learned entry, host1's flow)."""
        t0 = time.monotonic()
        obj = switch_engine(self.lab, "host1", engine)
        if obj is not None and obj not in self.bpf_objects:
            self.bpf_objects.append(obj)
        proc = sh.in_ns(self.paths[0].client_ns, [sys.executable, "-c", ONE_UDP, A6,
                                                  str(ECHO_PORT), "tcp"], check=False, timeout=15)
        if proc.stdout.strip().splitlines() != ["ok", "ok"]:
            raise RuntimeError(f"host1's agent restarted with engine {engine}: a-vm1 did not "
                               f"answer: {proc.stdout.strip()} {proc.stderr[-300:]}")
        if not wait_for(lambda: self.learned_a_vm1() and self.host1_takes_svc1_direct(), 10):
            raise RuntimeError(f"host1's agent restarted with engine {engine}: the direct "
                               "path is not back after 10 s")
        for node in ("host2", "host1"):
            self.lab_ovs[node].appctl("revalidator/wait")
        # the agent leaves TAYGA running when its configuration is the same; if not, meter
        # the new one
        pid = sh.read_pid(Path(self.plan.translator("host1").run_dir) / "tayga.pid") or 0
        if pid != self.tayga1["host1"]:
            note(f"host1's TAYGA is now pid {pid} (was {self.tayga1['host1']})")
            self.tayga1["host1"] = pid
        self.engine_s.append(time.monotonic() - t0)

    def host1_flows(self, *filters: str) -> str:
        return self.lab_ovs["host1"].ofctl("-O", "OpenFlow15", "dump-flows", "br-int", *filters)

    def recirc_flows(self) -> list[str]:
        """The old translation stage's test flows for host1 (``add-flows`` lines), from the
        controller's current v6_dnat flows: a copy of each per-VM DNAT flow whose ``ct``
        recirculates to to_translator, and the two-pass return (module constants)."""
        t = HOST_TABLES.id
        text = self.host1_flows(f"table={t('v6_dnat')}")
        out = []
        for line in text.splitlines():
            if RECIRC_COOKIE in line:
                continue
            m = re.search(r"\bpriority=100,(ct_state=-inv\+trk,ipv6,ipv6_dst=\S+) "
                          r"actions=ct\(commit,(zone=\d+,nat\(dst=[^)]+\))\),", line)
            if m:
                out.append(f"cookie={RECIRC_COOKIE},table={t('v6_dnat')},priority={RECIRC_PRIO},"
                           f"{m.group(1)},actions=ct(commit,table={t('to_translator')},"
                           f"{m.group(2)})")
        if not any(f"ipv6_dst={A6}," in f for f in out):
            raise RuntimeError(f"a-recirc: host1's v6_dnat holds no per-VM DNAT flow for a-vm1 "
                               f"as lever 2 left it (priority 100, ct(commit,zone=..,nat(dst=..)) "
                               f"then out to the translator):\n{text[-2000:]}")
        out += [f"cookie={RECIRC_COOKIE},table={t('from_translator')},"
                f"priority={RECIRC_FROM_XLAT_PRIO},ipv6,actions=ct(table={RECIRC_TABLE},"
                f"zone={ZONE_V6_DNAT},nat)",
                f"cookie={RECIRC_COOKIE},table={RECIRC_TABLE},priority=10,ipv6,"
                f"actions=ct(table={t('to_service')},zone={ZONE_V6_SNAT},nat)"]
        return out

    def recirc_counters(self) -> dict[str, int]:
        """The test flows' packets per table (after a revalidator round, so that the
        datapath's flows pushed their stats) and how many are in place."""
        self.lab_ovs["host1"].appctl("revalidator/wait")
        t = HOST_TABLES.id
        key = {t("v6_dnat"): "v6_dnat", t("from_translator"): "from_translator",
               RECIRC_TABLE: "t31"}
        out = {k: 0 for k in RECIRC_COUNTERS}
        out["flows"], out["expected"] = 0, self.recirc_expected
        for line in self.host1_flows(f"cookie={RECIRC_COOKIE}/-1").splitlines():
            m = re.search(r"\btable=(\d+), n_packets=(\d+)", line)
            if m:
                out["flows"] += 1
                k = key.get(int(m.group(1)), "other")
                out[k] = out.get(k, 0) + int(m.group(2))
        return out

    def recirc_on(self) -> None:
        """a-recirc's before(): the old translation stage on host1 (test flows); check that
        they are in place, that table 50 still outputs what is +trk-inv, and that a-vm1
        answers a UDP and a TCP transaction through them."""
        lines = self.recirc_flows()
        sh.run([sh.tool("ovs-ofctl"), "-O", "OpenFlow15", "add-flows", "br-int", "-"],
               env=self.lab_ovs["host1"].env(), input="\n".join(lines) + "\n")
        self.recirc_expected = len(lines)
        c = self.recirc_counters()       # also waits for the revalidators
        if c["flows"] != len(lines) or c.get("other"):
            raise RuntimeError(f"a-recirc: {c['flows']} of host1's {len(lines)} test flows "
                               f"in place after add-flows ({c})")
        t50 = self.host1_flows(f"table={HOST_TABLES.id('to_translator')}")
        if not any("ct_state=-inv+trk" in x and "output:" in x for x in t50.splitlines()):
            raise RuntimeError(f"a-recirc: host1's to_translator does not output what is "
                               f"+trk-inv:\n{t50}")
        if not self.recirc_checks:
            proc = sh.in_ns(self.paths[0].client_ns, [sys.executable, "-c", ONE_UDP, A6,
                                                      str(ECHO_PORT), "tcp"],
                            check=False, timeout=15)
            c2 = self.recirc_counters()
            if (proc.stdout.strip().splitlines() != ["ok", "ok"]
                    or not all(c2[k] > c[k] for k in RECIRC_COUNTERS)):
                raise RuntimeError(f"a-recirc: a UDP and a TCP transaction through host1's "
                                   f"test flows: {proc.stdout.strip()} {proc.stderr[-300:]}; "
                                   f"their counters {c} -> {c2}")
            self.recirc_checks.append(
                f"{len(lines)} test flows in place ({len(lines) - 2} v6_dnat copies); a UDP and "
                f"a TCP transaction took them (packets per table {c} -> {c2})")

    def recirc_off(self) -> None:
        """a-recirc's after(): the test flows out; check that none is left."""
        self.lab_ovs["host1"].ofctl("-O", "OpenFlow15", "del-flows", "br-int",
                                    f"cookie={RECIRC_COOKIE}/-1")
        left = self.recirc_counters()["flows"]     # also waits for the revalidators
        if left:
            raise RuntimeError(f"a-recirc: {left} test flows left on host1 after del-flows")
        self.recirc_expected = 0
        self.recirc_removed += 1

    def engine_bpf(self) -> None:
        """a-bpf's before(): host1's translator engine bpf."""
        self.restart_host1("bpf")

    def engine_back(self) -> None:
        """a-bpf's after(): host1's translator engine back to the lab's (tayga)."""
        self.restart_host1(self.lab.translator_engine)

    def run_once(self, i: int) -> dict:
        """Every measurement on every path; run ``i`` starts with path ``i`` (rotated), so
        no path is always the first after a switch of test kind."""
        a = self.args
        k = i % len(self.paths)
        order = self.paths[k:] + self.paths[:k]
        note("order: " + ", ".join(p.name for p in order))
        out: dict = {p.name: {} for p in self.paths}
        for kind, streams in (("multi", a.streams), ("single", 1)):
            for p in order:
                p.before()
                try:
                    r = p.iperf(a.seconds, streams, self.servers.iperf[p.server_ns])
                finally:
                    p.after()
                out[p.name][kind] = r
                cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu"].items())
                lost = ", ".join(f"{k} {v.get('rx_lost', 0)}" for k, v in r.get("pmd", {}).items())
                mach = r.get("machine", {})
                note(f"{p.name:8} iperf3 -P {streams}: {r['gbps'] * 1000:.0f} Mbit/s "
                     f"(machine busy {mach.get('busy', 0):.0f}% of {os.cpu_count() * 100}%, "
                     f"softirq {mach.get('softirq', 0):.0f}%, ksoftirqd "
                     f"{mach.get('ksoftirqd', 0):.0f}%) "
                     f"(retransmits {r.get('retransmits', '-')}; CPU %: {cpu}; lost before "
                     f"OVS read them: {lost}; host1 datapath passes per packet "
                     f"{r.get('pmd', {}).get('host1', {}).get('passes', float('nan')):.2f})"
                     + bpf_note(r) + testflows_note(r)
                     + (f" ERROR {r['error']}" if r.get("error") else ""))
                time.sleep(a.pause)
        for proto in ("tcp", "udp"):
            for p in order:
                p.before()
                try:
                    r = p.rr(proto, a.lat_seconds)
                finally:
                    p.after()
                out[p.name][proto] = r
                note(f"{p.name:8} {proto} 64-byte transactions: {r.get('n', 0)} "
                     f"(lost {r.get('lost', '-')}), p50 {r.get('p50_us') or float('nan'):.0f} us, "
                     f"p99 {r.get('p99_us') or float('nan'):.0f} us" + bpf_note(r)
                     + testflows_note(r)
                     + (f" ERROR {r['error']}" if r.get("error") else ""))
        return out

    @staticmethod
    def testflows_problems(runs: list[dict], n: str) -> list[str]:
        """Every measurement of what-if ``n`` (a-recirc) whose traffic did not take the test
        flows, or at whose end they were not all in place."""
        return [f"run {i + 1} {k}: {r[n][k].get('testflows')}" for i, r in enumerate(runs)
                if n in r for k in ("multi", "single", "tcp", "udp")
                if not r[n][k].get("testflows_ok")]

    @staticmethod
    def bpf_problems(runs: list[dict], n: str) -> list[str]:
        """Every measurement of path ``n`` (engine bpf) in which the BPF translator did not
        translate the path's traffic."""
        return [f"run {i + 1} {k}: {r[n][k].get('bpf')}" for i, r in enumerate(runs)
                if n in r for k in ("multi", "single", "tcp", "udp")
                if not r[n][k].get("bpf_ok")]

    def jumpbox_resources(self) -> dict:
        j = self.plain.ep_ns["jump"]
        ct = sh.in_ns(j, ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"], check=False)
        lab_tayga = self.paths[0].tayga["host1"]
        return {"tayga_rss_kb": rss_kb(self.plain.tayga_pid),
                "lab_tayga_rss_kb": rss_kb(lab_tayga),
                "conntrack_entries": int(ct.stdout.strip() or 0) if ct.returncode == 0 else None,
                "ovs_rss_kb": {k: rss_kb(n.pid("ovs-vswitchd") or 0)
                               for k, n in {**{f"lab {k}": v for k, v in self.lab_ovs.items()},
                                            **{f"plain {k}": v for k, v in self.plain.nodes.items()}
                                            }.items()}}


def testflows_note(r: dict) -> str:
    """The old translation stage's test flows in a run log line (a-recirc)."""
    t = r.get("testflows")
    if t is None:
        return ""
    return (" (test flows: " + ", ".join(f"{k} {v}" for k, v in t.items())
            + ("" if r.get("testflows_ok") else " - NOT the path's traffic or not in place")
            + ")")


def bpf_note(r: dict) -> str:
    """The BPF translator's counters in a run log line (a-bpf)."""
    b = r.get("bpf")
    if b is None:
        return ""
    return (" (BPF translator: " + ", ".join(f"{k} {v}" for k, v in b.items())
            + ("" if r.get("bpf_ok") else " - NOT the path's traffic") + ")")


# ---------------------------------------------------------------------------
# Report


def ratio_list(runs: list[dict], num: str, den: str, kind: str) -> list[float]:
    out = []
    for r in runs:
        x, y = r.get(num, {}).get(kind, {}), r.get(den, {}).get(kind, {})
        if x.get("gbps") and y.get("gbps"):
            out.append(x["gbps"] / y["gbps"])
    return out


def cpu_ratio(runs: list[dict], num: str, den: str, kind: str) -> list[float]:
    """Per run: den's total CPU per bit / num's (> 1: num needs less CPU per bit)."""
    out = []
    for r in runs:
        x = r.get(num, {}).get(kind, {}).get("cpu_per_100mbit", {}).get("total")
        y = r.get(den, {}).get(kind, {}).get("cpu_per_100mbit", {}).get("total")
        if x and y and x == x and y == y:
            out.append(y / x)
    return out


def role_cpu(runs: list[dict], n: str, kind: str = "multi") -> dict[str, float]:
    """Median % of a core per 100 Mbit/s for each role the path has."""
    out = {}
    for role, cols in ROLES.items():
        vals = []
        for r in runs:
            per = r[n][kind]["cpu_per_100mbit"]
            present = [per[c] for c in cols if c in per and r[n][kind]["cpu"].get(c, 0) > 0.5]
            if present:
                vals.append(sum(present))
        if vals:
            out[role] = med(vals)
    return out


def lat_ratio(runs: list[dict], num: str, den: str, proto: str, q: str) -> list[float]:
    out = []
    for r in runs:
        x, y = r.get(num, {}).get(proto, {}).get(q), r.get(den, {}).get(proto, {}).get(q)
        if x and y:
            out.append(x / y)
    return out


def summarise(runs: list[dict], names: list[str]) -> dict:
    s: dict = {"throughput_gbps": {}, "latency_us": {}, "ratios": {}}
    for n in names:
        s["throughput_gbps"][n] = {k: med([r[n][k]["gbps"] for r in runs]) for k in ("multi", "single")}
        s["latency_us"][n] = {f"{proto}_{q}": med([r[n][proto].get(f"{q}_us") or float("nan")
                                                   for r in runs])
                              for proto in ("tcp", "udp") for q in ("p50", "p99")}
    for num, den in ratio_pairs(names):
        for kind in ("multi", "single"):
            s["ratios"][f"{num}/{den} {kind}"] = med(ratio_list(runs, num, den, kind))
        for proto in ("tcp", "udp"):
            s["ratios"][f"{num}/{den} {proto}_p50"] = med(
                lat_ratio(runs, num, den, proto, "p50_us"))
    s["cpu_per_100mbit_total"] = {
        n: med([r[n]["multi"]["cpu_per_100mbit"].get("total", float("nan")) for r in runs])
        for n in names}
    s["machine_per_100mbit"] = {
        n: {k: med([r[n]["multi"].get("machine_per_100mbit", {}).get(k, float("nan"))
                    for r in runs]) for k in ("busy", "softirq", "ksoftirqd")} for n in names}
    s["bpf"] = {}
    for n in [x for x in BPF_PATHS if x in names]:
        s["bpf"][n] = {kind: {k: med([r[n][kind].get("bpf", {}).get(k, float("nan"))
                                      for r in runs]) for k in translator.BPF_STATS}
                       for kind in ("multi", "single", "tcp", "udp")}
        s["bpf"][n]["every_measurement_translated"] = not Bench.bpf_problems(runs, n)
    s["host1_passes_per_packet"] = {
        n: {k: med([r[n][k].get("pmd", {}).get("host1", {}).get("passes", float("nan"))
                    for r in runs]) for k in ("multi", "single")}
        for n in names if "host1" in runs[0][n]["multi"].get("pmd", {})}
    s["testflows"] = {}
    for n in [x for x in RECIRC_PATHS if x in names]:
        s["testflows"][n] = {kind: {k: med([r[n][kind].get("testflows", {}).get(k, float("nan"))
                                            for r in runs]) for k in RECIRC_COUNTERS}
                             for kind in ("multi", "single", "tcp", "udp")}
        s["testflows"][n]["every_measurement_took_them"] = not Bench.testflows_problems(runs, n)
    return s


def ratio_pairs(names: list[str]) -> list[tuple[str, str]]:
    """The ratios the report and the summary give: each vnet64 path against b1, b2 and c;
    a against a-appliance (the direct path), a-bpf against a and a-bpf-appliance against
    a-appliance (the BPF translator), a against a-recirc and a-bpf against a-bpf-recirc
    (lever 2, one recirculation fewer each way), a-bpf against a-recirc (levers 2 and 3)."""
    out = []
    for num in ("a", "a-bpf", "a-appliance", "a-bpf-appliance", "a-recirc", "a-bpf-recirc"):
        if num not in names:
            continue
        dens = ["b1", "b2", "c"] + {"a": ["a-appliance", "a-recirc"],
                                    "a-bpf": ["a", "a-bpf-recirc", "a-recirc"],
                                    "a-bpf-appliance": ["a-appliance"]}.get(num, [])
        out += [(num, d) for d in dens if d in names]
    return out


def softirq_accounting() -> str:
    """How this kernel charges softirq time (the BPF translator's, the veths'), in words."""
    config = ""
    with contextlib.suppress(OSError):
        config = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    if not config:
        with contextlib.suppress(OSError):
            config = Path(f"/boot/config-{platform.release()}").read_text()
    if "CONFIG_IRQ_TIME_ACCOUNTING=y" in config:
        return ("This kernel accounts softirq time precisely (CONFIG_IRQ_TIME_ACCOUNTING): "
                "it is charged to no process, so the processes' sum leaves it out.")
    if "# CONFIG_IRQ_TIME_ACCOUNTING is not set" in config:
        return ("This kernel samples CPU time per tick without CONFIG_IRQ_TIME_ACCOUNTING: "
                "a tick that lands in softirq is charged to the task it interrupted (often "
                "the ovs-vswitchd whose send ran the softirq, but also ksoftirqd, the idle "
                "task or another lab's process), so the processes' sum holds an unknown "
                "part of the softirq work; only the machine's busy time holds all of it.")
    return "How this kernel charges softirq time is unknown (no kernel config found)."


def machine_line(args, started: datetime) -> str:
    ovs_version = sh.vswitchd_version()
    iperf_version = sh.run(["iperf3", "--version"], check=False).stdout.split("\n")[0]
    tayga = "TAYGA " + (sh.run(["dpkg-query", "-W", "-f=${Version}", "tayga"], check=False).stdout
                        or "?")
    # path a's translators run vnet64's build when installed (the jumpbox, c, the system's)
    binary, patched = translator.tayga_binary()
    tayga += (f" + vnet64 patch ({binary}; the jumpbox's: the system's)" if patched
              else f" (path a: {binary})")
    if getattr(args, "bpf_objects", None):
        src = translator.BPF_SOURCE.relative_to(ROOT)
        dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--",
                                str(src)], check=False).returncode != 0
        tayga += (f", a-bpf's BPF translator {', '.join(args.bpf_objects)} (clang "
                  + sh.run([sh.tool("clang"), "--version"], check=False).stdout.split("\n")[0]
                  + f"; {src} " + ("modified in the work tree since that commit"
                                   if dirty else "as committed") + ")")
    return (f"{started:%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, kernel "
            f"{platform.release()}, Python {platform.python_version()}, {ovs_version}, "
            f"{iperf_version}, {tayga}, commit {args.commit}. Shared, noisy machine (load average "
            f"at start {args.load_start}, at the end {getattr(args, 'load_end', '?')}; other labs "
            f"ran at the same time): compare the ratios, measured in the same run. {args.runs} "
            f"run(s); median (min-max).")


def report(args, bench: Bench, runs: list[dict], jump: dict, started: datetime) -> str:
    names = [p.name for p in bench.paths]
    labels = {p.name: p.label for p in bench.paths}
    S = args.streams

    def tput(n: str, kind: str) -> str:
        return rng([r[n][kind]["gbps"] * 1000 for r in runs])

    def lat(n: str, proto: str, q: str) -> str:
        return rng([r[n][proto].get(f"{q}_us") or float("nan") for r in runs])

    lines = [
        "# Data path: service -> customer VM throughput and latency",
        "",
        machine_line(args, started),
        "",
        ("Paths (DESIGN.md §4b; `benchmarks/datapath.py --help`): **a** vnet64 as shipped, "
         "on `topologies/two-tenants.yaml` with the real controller, the direct path on (the "
         "default): a pair's first packets svc1 on host2 -> Geneve -> appliance -> host1, "
         "the rest host2 -> host1 directly (host2 learned from the first answer where a-vm1 "
         "is); at host1 conntrack NAT in two IPv6 zones, TAYGA, conntrack SNAT to "
         "Platform_IP in the VNet's zone -> a-vm1, IPv4; replies host1 -> host2 directly; "
         "**b1** plain IPv6 Geneve host to host (2 ovs-vswitchd, no translation, no conntrack); "
         "**b2** plain IPv6 Geneve through an appliance hop (service host -> appliance -> "
         "customer host, replies direct: a-appliance's hops, no translation, no conntrack); "
         "**c** a "
         "jumpbox namespace in the customer VNet on the customer host, reached like b1, doing "
         "NAT64 with TAYGA (dynamic pool for the service's address) + kernel NAT44 (nftables "
         "masquerade) and sending IPv4 through the customer host's OVS to the VM"
         + ("; **a-appliance** vnet64 with the direct path off (NB `Platform.direct_path` "
            "false, set for this path's measurements only and back to the default after "
            "each, with one transaction so host2 learns a-vm1's host again before a): every "
            "packet host2 -> appliance -> host1, the patent's path; replies host1 -> host2. "
            "a / a-appliance is the direct path's gain." if "a-appliance" in names else "")
         + ("; **a-bpf** vnet64 as a (direct path on) but host1's translator engine `bpf` "
            "(issue 21's lever 3: host1's agent restarted with `--translator-engine bpf` for "
            "this path's measurements only and back to `tayga` after each, waiting for the "
            "tc filter on ovs0 and an answered UDP and TCP transaction): a tc-BPF program at "
            "the ingress of the translator namespace's ovs0 translates unfragmented TCP/UDP/"
            "echo in the kernel and hands only the rest to TAYGA. a-bpf / a is the lever's "
            "gain; its program's counters are read around every measurement"
            if "a-bpf" in names else "")
         + ("; **a-bpf-appliance** both at once (direct path off, host1's engine bpf): "
            "a-bpf-appliance / a-appliance is the lever's gain on the patent's path, "
            "a-bpf-appliance / b2 (the same hops, no translation) what translation still "
            "costs there" if "a-bpf-appliance" in names else "")
         + ("; **a-recirc** vnet64 as a, but host1's translation stage as before issue 21's "
            "lever 2 (commit fb46a2b), for this path's measurements only: test flows of "
            f"their own cookie ({RECIRC_COOKIE}), added before each measurement and removed "
            "after it, put back one OVS recirculation each way - in v6_dnat a copy of each "
            f"per-VM flow at priority {RECIRC_PRIO} whose DNAT `ct` recirculates to "
            "to_translator (table 50, which outputs what is +trk-inv) instead of going on to "
            "xlat0 in the same pass; in from_translator, IPv6 back from the translator "
            f"(priority {RECIRC_FROM_XLAT_PRIO}, below the stage's alias-source and "
            f"multicast flows) un-DNATs and recirculates to table {RECIRC_TABLE}, which "
            "un-SNATs and recirculates to to_service. Their packet counters are read around "
            "every measurement and their presence checked at its end. a / a-recirc is lever "
            "2 alone" if "a-recirc" in names else "")
         + ("; **a-bpf-recirc** a-bpf with the same test flows: a-bpf / a-bpf-recirc is "
            "lever 2 alone with the BPF translator. **a-bpf** is all three levers at once "
            "(the direct path, lever 2, the BPF translator): its rows against c, b2, b1"
            if "a-bpf-recirc" in names else "")
         + "."
         + f" MTUs: underlay {UNDERLAY_MTU}, IPv6 endpoints / br-int / jumpbox IPv6 side "
         f"{V6_MTU}, IPv4 VMs / jumpbox VNet side {V4_MTU} (as the lab's); every OVS is "
         "netdev (userspace), no Geneve options, TX checksum offload off on the veths, "
         "userspace TSO off."),
        "",
        (f"Throughput: iperf3 TCP, svc -> VM, {args.seconds:g} s, {S} parallel streams "
         f"(\"-P {S}\") and one stream. Latency: one 64-byte transaction at a time for "
         f"{args.lat_seconds:g} s (Python client and echo server in the namespaces, one TCP "
         "connection with TCP_NODELAY / one connected UDP socket), round-trip p50 / p99."),
        "",
        "## Aims (issue 21)",
        "",
        "| measure | value | aim | met |",
        "|---|---|---|---|",
    ]

    def p50(n: str, proto: str) -> float:
        return med([r[n][proto].get("p50_us") or float("nan") for r in runs])

    def cpu100(n: str) -> float:
        return med([r[n]["multi"]["cpu_per_100mbit"].get("total", float("nan")) for r in runs])
    def mach100(n: str, key: str = "busy") -> float:
        return med([r[n]["multi"].get("machine_per_100mbit", {}).get(key, float("nan"))
                    for r in runs])
    aimed = [n for n in AIMED if n in names]
    for den, aim in (("c", AIM_C), ("b2", AIM_B2), ("b1", AIM_B1)):
        for kind, title in (("multi", f"{S} streams"), ("single", "1 stream")):
            for num in aimed:
                rs = ratio_list(runs, num, den, kind)
                t = title + (f" (a before the direct path {B1_BEFORE[kind]:.2f})"
                             if den == "b1" and num == "a" else "")
                lines.append(f"| throughput {num}/{den}, {t} | {rng(rs, '.2f')} | >= {aim} | "
                             f"{yes_no(bool(rs) and med(rs) >= aim)} |")
        if den == "c":
            for proto in ("tcp", "udp"):
                for num in aimed:
                    pa, pc = p50(num, proto), p50("c", proto)
                    lines.append(f"| {proto.upper()} transaction p50, {num} vs c (us) | "
                                 f"{pa:.0f} vs {pc:.0f} | {num} below c | {yes_no(pa < pc)} |")
    cc = cpu100("c")
    for num in aimed:
        ca = cpu100(num)
        lines.append(f"| CPU per 100 Mbit/s, {S} streams, sum of the path's processes, {num} "
                     f"vs c (% of a core) | {ca:.0f} vs {cc:.0f} | {num} <= c | "
                     f"{yes_no(ca <= cc)} |")
    for num in aimed:
        ma, mc = mach100(num), mach100("c")
        lines.append(f"| CPU per 100 Mbit/s, {S} streams, whole machine busy (softirq "
                     f"included; other labs too), {num} vs c (% of a core) | {ma:.0f} vs "
                     f"{mc:.0f} | {num} <= c | {yes_no(ma <= mc)} |")
    ca = cpu100("a")

    def gain_rows(lever: str, num: str, den: str) -> list[str]:
        """A lever's throughput (4 and 1 streams) and transaction p50 rows, num / den."""
        out = [f"| {lever}: throughput {num}/{den}, {title} | "
               f"{rng(ratio_list(runs, num, den, kind), '.2f')} | - | - |"
               for kind, title in (("multi", f"{S} streams"), ("single", "1 stream"))]
        return out + [f"| {lever}: {proto.upper()} transaction p50, {num} / {den} "
                      f"| {rng(lat_ratio(runs, num, den, proto, 'p50_us'), '.2f')} "
                      f"({p50(num, proto):.0f} vs {p50(den, proto):.0f} us) | - | - |"
                      for proto in ("tcp", "udp")]
    if "a-appliance" in names:
        lines += gain_rows("gain of the direct path", "a", "a-appliance")
        lines.append(f"| gain of the direct path: CPU per 100 Mbit/s, {S} streams, "
                     f"a vs a-appliance | {ca:.0f} vs {cpu100('a-appliance'):.0f} | - | - |")
    def passes(n: str, kind: str = "multi") -> float:
        return med([r[n][kind].get("pmd", {}).get("host1", {}).get("passes", float("nan"))
                    for r in runs])
    for num, den in [(n, w) for w, n in RECIRC_PATHS.items() if n in names and w in names]:
        lever = ("lever 2 (one recirculation fewer each way) alone"
                 + (", with the BPF translator" if num == "a-bpf" else ""))
        lines += gain_rows(lever, num, den)
        lines.append(f"| {lever}: CPU per 100 Mbit/s, {S} streams, {num} vs {den}: sum of the "
                     f"processes; whole machine busy; host1's OVS (% of a core) | "
                     f"{cpu100(num):.0f} vs {cpu100(den):.0f}; {mach100(num):.0f} vs "
                     f"{mach100(den):.0f}; {role_cpu(runs, num).get('customer host OVS', 0):.0f}"
                     f" vs {role_cpu(runs, den).get('customer host OVS', 0):.0f} | - | - |")
        lines.append(f"| {lever}: host1's datapath passes per packet (pmd-stats), {S} streams; "
                     f"1 stream, {num} vs {den} | {passes(num):.2f} vs {passes(den):.2f}; "
                     f"{passes(num, 'single'):.2f} vs {passes(den, 'single'):.2f} | "
                     f"{num} below {den} | {yes_no(passes(num) < passes(den))} |")
    if "a-bpf" in names and "a-recirc" in names:
        lever = "levers 2 and 3 together"
        lines += gain_rows(lever, "a-bpf", "a-recirc")
        lines.append(f"| {lever}: CPU per 100 Mbit/s, {S} streams, a-bpf vs a-recirc: sum of "
                     f"the processes; whole machine busy (% of a core) | "
                     f"{cpu100('a-bpf'):.0f} vs {cpu100('a-recirc'):.0f}; "
                     f"{mach100('a-bpf'):.0f} vs {mach100('a-recirc'):.0f} | - | - |")
    if "a-bpf" in names:
        lever = "lever 3 (BPF translator) alone"
        lines += gain_rows(lever, "a-bpf", "a")
        lines.append(f"| {lever}: CPU per 100 Mbit/s, {S} streams, a-bpf vs a: sum of the "
                     f"processes; whole machine busy; softirq (% of a core) | "
                     f"{cpu100('a-bpf'):.0f} vs {ca:.0f}; {mach100('a-bpf'):.0f} vs "
                     f"{mach100('a'):.0f}; {mach100('a-bpf', 'softirq'):.0f} vs "
                     f"{mach100('a', 'softirq'):.0f} | - | - |")
    if "a-bpf-appliance" in names:
        lever = "lever 3 with the direct path off"
        for kind, title in (("multi", f"{S} streams"), ("single", "1 stream")):
            for den in ("a-appliance", "b2"):
                lines.append(f"| {lever}: throughput a-bpf-appliance/{den}, {title} | "
                             f"{rng(ratio_list(runs, 'a-bpf-appliance', den, kind), '.2f')} "
                             "| - | - |")
        for proto in ("tcp", "udp"):
            lr = lat_ratio(runs, "a-bpf-appliance", "a-appliance", proto, "p50_us")
            lines.append(
                f"| {lever}: {proto.upper()} transaction p50, a-bpf-appliance / a-appliance "
                f"| {rng(lr, '.2f')} "
                f"({p50('a-bpf-appliance', proto):.0f} vs {p50('a-appliance', proto):.0f} us) "
                "| - | - |")
    for n in [x for x in BPF_PATHS if x in names]:
        bad = bench.bpf_problems(runs, n)

        def cnt(k: str, n=n) -> float:
            return med([r[n]["multi"].get("bpf", {}).get(k, float("nan")) for r in runs])
        tun = med([r[n]["multi"].get("tun", {}).get("host1", {}).get("tx_packets",
                                                                       float("nan"))
                   for r in runs])
        lines.append(f"| {n}: the BPF translator translated the path's traffic (6to4 >= "
                     f"the goodput's segments, 4to6 > 0; per transaction test 6to4 and 4to6 "
                     f">= transactions) | {S}-stream test, median: 6to4 {cnt('6to4'):.0f}, "
                     f"4to6 {cnt('4to6'):.0f}, to TAYGA {cnt('to_tayga'):.0f}; TAYGA's tun "
                     f"got {tun:.0f} | every measurement | {yes_no(not bad)}"
                     + (f" ({len(bad)} failed: {'; '.join(bad)})" if bad else "") + " |")
    for n in [x for x in RECIRC_PATHS if x in names]:
        bad = bench.testflows_problems(runs, n)

        def tcnt(k: str, n=n) -> float:
            return med([r[n]["multi"].get("testflows", {}).get(k, float("nan")) for r in runs])
        lines.append(f"| {n}: the path's traffic took host1's test flows (v6_dnat copies >= the "
                     f"goodput's segments, from_translator and table {RECIRC_TABLE} > 0; per "
                     "transaction test each >= transactions), all in place at the end of "
                     "each measurement, none left after it | "
                     f"{S}-stream test, median packets: v6_dnat {tcnt('v6_dnat'):.0f}, "
                     f"from_translator {tcnt('from_translator'):.0f}, table {RECIRC_TABLE} "
                     f"{tcnt('t31'):.0f}; {bench.recirc_removed} removals checked | "
                     f"every measurement | {yes_no(not bad)}"
                     + (f" ({len(bad)} failed: {'; '.join(bad)})" if bad else "") + " |")
    lines += [
        "",
        "## Throughput and latency per path",
        "",
        (f"| path | Mbit/s, {S} streams | Mbit/s, 1 stream | retransmits ({S} / 1) | "
         "TCP p50 / p99 (us) | UDP p50 / p99 (us) | UDP lost | machine busy, softirq "
         f"(% of one core, of {os.cpu_count() * 100}; {S} streams) |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        rt = (f"{med([r[n]['multi'].get('retransmits', 0) for r in runs]):.0f} / "
              f"{med([r[n]['single'].get('retransmits', 0) for r in runs]):.0f}")
        lines.append(
            f"| **{n}** {labels[n]} | {tput(n, 'multi')} | {tput(n, 'single')} | {rt} | "
            f"{lat(n, 'tcp', 'p50')} / {lat(n, 'tcp', 'p99')} | "
            f"{lat(n, 'udp', 'p50')} / {lat(n, 'udp', 'p99')} | "
            f"{sum(r[n]['udp'].get('lost', 0) for r in runs)} | "
            f"{med([r[n]['multi'].get('machine', {}).get('busy', float('nan')) for r in runs]):.0f}, "
            f"{med([r[n]['multi'].get('machine', {}).get('softirq', float('nan')) for r in runs]):.0f} |")
    lines += ["", ("Userspace processes per round trip (by construction; each is a wake-up "
                   "and two socket crossings; the client and the echo server at the ends, the "
                   "same on every path, are not counted) next to the transaction p50:"), "",
              "| path | forward | back | total | TCP p50 (us) | UDP p50 (us) |",
              "|---|---|---|---|---|---|"]
    for n in names:
        fw, bk = HOPS.get(n, (0, 0))
        p50 = med([r[n]["tcp"].get("p50_us") or float("nan") for r in runs])
        u50 = med([r[n]["udp"].get("p50_us") or float("nan") for r in runs])
        lines.append(f"| {n} | {fw} | {bk} | {fw + bk} | {p50:.0f} | {u50:.0f} |")
    lines += ["", "Ratios (median over runs of the per-run ratio; min-max):", "",
              ("| ratio | throughput, {S} streams | throughput, 1 stream | CPU per bit, den / num, "
               "{S} streams | TCP p50 | UDP p50 |").replace("{S}", str(S)),
              "|---|---|---|---|---|---|"]
    for num, den in ratio_pairs(names):
        lines.append(
            f"| {num}/{den} | {rng(ratio_list(runs, num, den, 'multi'), '.2f')} | "
            f"{rng(ratio_list(runs, num, den, 'single'), '.2f')} | "
            f"{rng(cpu_ratio(runs, num, den, 'multi'), '.2f')} | "
            f"{rng(lat_ratio(runs, num, den, 'tcp', 'p50_us'), '.2f')} | "
            f"{rng(lat_ratio(runs, num, den, 'udp', 'p50_us'), '.2f')} |")
    # CPU by role
    lines += ["", (f"CPU per 100 Mbit/s by role, {S} streams (% of one core per 100 Mbit/s of "
                   "goodput, median over runs; a role a path does not have is `-`):"), "",
              "| path | " + " | ".join(ROLES) + " | total |", "|---|" + "---|" * (len(ROLES) + 1)]
    for n in names:
        rc = role_cpu(runs, n)
        total = med([r[n]["multi"]["cpu_per_100mbit"].get("total", float("nan")) for r in runs])
        lines.append(f"| {n} | " + " | ".join(f"{rc[k]:.0f}" if k in rc else "-" for k in ROLES)
                     + f" | {total:.0f} |")
    # CPU: the processes' sum against the whole machine (softirq work, e.g. a-bpf's program)
    lines += ["", (f"CPU per 100 Mbit/s, {S} streams, counted two ways (% of one core per 100 "
                   "Mbit/s, median over runs): the sum of the path's metered processes (the "
                   "tables above and below), and the whole machine's busy time (every process "
                   "and the kernel's softirq, so the BPF translator's work too; other labs' "
                   "load as well, so an upper bound), with its softirq share and the "
                   "ksoftirqd threads (softirq work deferred to them, charged to no metered "
                   "process). " + softirq_accounting()), "",
              "| path | sum of processes | machine busy | of which softirq | ksoftirqd | "
              "machine busy - processes |", "|---|---|---|---|---|---|"]
    for n in names:
        proc100 = med([r[n]["multi"]["cpu_per_100mbit"].get("total", float("nan"))
                       for r in runs])
        m = {k: mach100(n, k) for k in ("busy", "softirq", "ksoftirqd")}
        lines.append(f"| {n} | {proc100:.0f} | {m['busy']:.0f} | {m['softirq']:.0f} | "
                     f"{m['ksoftirqd']:.1f} | {m['busy'] - proc100:.0f} |")
    # CPU
    for kind, title in (("multi", f"{S} streams"), ("single", "1 stream")):
        keys: list[str] = []
        for n in names:
            for k in runs[0][n][kind]["cpu"]:
                if k not in keys:
                    keys.append(k)
        keys = [k for k in keys if k != "total"] + ["total"]
        lines += ["", f"CPU during the iperf3 run, {title}: % of one core (median), and in "
                  "brackets % of one core per 100 Mbit/s of goodput:", "",
                  "| path | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for n in names:
            cells = []
            for k in keys:
                vals = [r[n][kind]["cpu"].get(k) for r in runs]
                if vals[0] is None:
                    cells.append("-")
                    continue
                per = med([r[n][kind]["cpu_per_100mbit"].get(k, float("nan")) for r in runs])
                cells.append(f"{med(vals):.0f} ({per:.0f})")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    # OVS internals
    lines += ["", (f"OVS per node during the {S}-stream run (median over runs): the main "
                   "thread's share of a core (it polls every port of a netdev bridge without "
                   "DPDK) and the busiest other threads; packets the kernel delivered to the "
                   "node's ports (veth RX counters, `dpctl/show -s`) and packets the main thread "
                   "read (`dpif-netdev/pmd-stats-show`): the difference is lost in "
                   "ovs-vswitchd's receive sockets before OVS sees it (OVS counts no drop for "
                   "it); datapath passes per packet, EMC hits, megaflow hits, upcalls:"), "",
              "| path | node | main thread % | other threads % | delivered | read by OVS | "
              "lost before OVS | passes/packet | EMC hits | megaflow hits | upcalls |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        for node in runs[0][n]["multi"].get("ovs_threads", {}):
            th = [r[n]["multi"]["ovs_threads"].get(node, {}) for r in runs]
            main = med([t.get("ovs-vswitchd", 0.0) for t in th])
            others: dict[str, list[float]] = {}
            for t in th:
                for k, v in t.items():
                    if k != "ovs-vswitchd":
                        others.setdefault(k, []).append(v)
            other = ", ".join(f"{k} {med(v):.0f}" for k, v in
                              sorted(others.items(), key=lambda kv: -med(kv[1]))[:3]
                              if med(v) >= 1) or "-"
            pm = [r[n]["multi"]["pmd"].get(node, {}) for r in runs]

            def g(key: str, pm=pm) -> float:
                return med([p.get(key, float("nan")) for p in pm])
            lost = [100.0 * p["rx_lost"] / p["delivered"] for p in pm if p.get("delivered")]
            lines.append(f"| {n} | {node} | {main:.0f} | {other} | {g('delivered'):.0f} | "
                         f"{g('packets'):.0f} | {g('rx_lost'):.0f} ({med(lost):.1f} %) | "
                         f"{g('passes'):.2f} | {g('emc_hits'):.0f} | "
                         f"{g('megaflow_hits'):.0f} | {g('upcalls'):.0f} |")
    tun_lines = []
    for n in names:
        for k in runs[0][n]["multi"].get("tun", {}):
            tn = [r[n]["multi"]["tun"][k] for r in runs]
            tun_lines.append(
                f"| {n} | {k} | {med([t.get('tx_packets', 0) for t in tn]):.0f} | "
                f"{med([t.get('tx_dropped', 0) for t in tn]):.0f} | "
                f"{med([t.get('rx_packets', 0) for t in tn]):.0f} |")
    if tun_lines:
        lines += ["", (f"TAYGA's tun during the {S}-stream run (median): packets the kernel "
                       "queued to TAYGA, packets dropped because TAYGA's queue was full, "
                       "packets TAYGA wrote back:"), "",
                  "| path | translator | to TAYGA | dropped (queue full) | from TAYGA |",
                  "|---|---|---|---|---|", *tun_lines]
    lines += ["", "## The jumpbox's extra resources (one per customer VNet)", "",
              (f"TAYGA in the jumpbox: RSS {jump['tayga_rss_kb']} kB (the lab's shared per-host "
               f"TAYGA: {jump['lab_tayga_rss_kb']} kB); CPU: the `tayga jumpbox` column above; "
               f"kernel conntrack entries in the jumpbox after the run: "
               f"{jump['conntrack_entries']}. The jumpbox's NAT44 and IP forwarding run in "
               "the kernel (softirq) and are charged to whichever process sent the packet "
               "into its veth or tun (mostly the customer host's ovs-vswitchd and TAYGA), "
               "so they appear in those columns, not separately. A real jumpbox is a whole "
               "VM per customer VNet (an OS image, its own memory, at least a vCPU); this "
               "namespace has none of that cost. vnet64 needs none per VNet: one TAYGA and "
               "the conntrack zones per host, shared by every VNet."), "",
              "ovs-vswitchd RSS (kB): " + ", ".join(f"{k} {v}" for k, v in jump["ovs_rss_kb"].items()) + "."]
    lines += report_end(args.argv, args.findings, "Findings")
    return "\n".join(lines) + "\n"


def findings(runs: list[dict], names: list[str], switch_s: list[float] = (),
             engine_s: list[float] = (), recirc_checks: list[str] = (),
             recirc_removed: int = 0) -> list[str]:
    """Observations computed from the measurements: what saturated, where packets died,
    what the direct path changed (``switch_s``: each switch of it, NB write to flows)."""
    out = []
    busy = [r[n][k].get("machine", {}).get("busy", float("nan"))
            for r in runs for n in names for k in ("multi", "single")]
    cap = (os.cpu_count() or 1) * 100
    out.append(f"- Whole machine during the throughput tests: {med(busy):.0f}% busy of {cap}% "
               f"(min {min(busy):.0f}%), other labs included: "
               + ("every path is CPU-bound, so throughput follows CPU cost per bit and the "
                  "share of the cores the path's processes get." if med(busy) >= 0.9 * cap
                  else "the cores were not saturated."))
    if "a" in names:
        ra = role_cpu(runs, "a")
        for den in ("b2", "c") + (("a-appliance",) if "a-appliance" in names else ()):
            rd = role_cpu(runs, den)
            diff = ", ".join(f"{k} {ra.get(k, 0) - rd.get(k, 0):+.0f}" for k in ROLES
                             if k in ra or k in rd)
            out.append(f"- a minus {den}, % of a core per 100 Mbit/s by role (multi-stream "
                       f"run): {diff}.")
        for n in [x for x in ("a", "a-appliance", "a-bpf", "a-bpf-appliance", "a-recirc",
                              "a-bpf-recirc") if x in names]:
            pm = [r[n][k]["pmd"] for r in runs for k in ("multi", "single")]
            ap = [p.get("appliance", {}).get("packets", 0) for p in pm]
            h1 = [p.get("host1", {}).get("packets", 0) for p in pm]
            out.append(f"- {n}: packets the appliance's OVS read per throughput test, median "
                       f"{med(ap):.0f} (max {max(ap):.0f}), against host1's {med(h1):.0f}.")
    if "a-bpf" in names:
        ra, rb = role_cpu(runs, "a"), role_cpu(runs, "a-bpf")
        diff = ", ".join(f"{k} {rb.get(k, 0) - ra.get(k, 0):+.0f}" for k in ROLES
                         if k in ra or k in rb)
        mb = {n: med([r[n]["multi"].get("machine_per_100mbit", {}).get("busy", float("nan"))
                      for r in runs]) for n in ("a", "a-bpf")}
        out.append(f"- a-bpf minus a, % of a core per 100 Mbit/s by role (multi-stream run): "
                   f"{diff}; whole machine busy per 100 Mbit/s {mb['a-bpf'] - mb['a']:+.0f} "
                   f"({mb['a-bpf']:.0f} vs {mb['a']:.0f}).")
    for w, n in [(w, n) for w, n in RECIRC_PATHS.items() if w in names and n in names]:
        rw, rn = role_cpu(runs, w), role_cpu(runs, n)
        diff = ", ".join(f"{k} {rn.get(k, 0) - rw.get(k, 0):+.0f}" for k in ROLES
                         if k in rn or k in rw)
        pw = [r[w]["multi"]["pmd"].get("host1", {}).get("passes", float("nan")) for r in runs]
        pn = [r[n]["multi"]["pmd"].get("host1", {}).get("passes", float("nan")) for r in runs]
        out.append(f"- {n} minus {w} (lever 2), % of a core per 100 Mbit/s by role "
                   f"(multi-stream run): {diff}; host1's datapath passes per packet "
                   f"{med(pn):.2f} vs {med(pw):.2f} (per run: "
                   + ", ".join(f"{x:.2f}/{y:.2f}" for x, y in zip(pn, pw)) + ").")
    for n in [x for x in RECIRC_PATHS if x in names]:
        for kind in ("multi", "single", "tcp", "udp"):
            t = [r[n][kind].get("testflows", {}) for r in runs]
            what = ({"multi": "multi-stream throughput test", "single": "1-stream throughput "
                     "test"}.get(kind) or f"{kind.upper()} transaction test")
            out.append(
                f"- {n}, host1's test flows per {what} (median packets): "
                + ", ".join(f"{k} {med([x.get(k, float('nan')) for x in t]):.0f}"
                            for k in RECIRC_COUNTERS)
                + f"; in place at the end: {min((x.get('flows', 0) for x in t), default=0)} "
                f"of {max((x.get('expected', 0) for x in t), default=0)} (fewest); took the "
                f"path's traffic in {sum(bool(r[n][kind].get('testflows_ok')) for r in runs)} "
                f"of {len(runs)} runs.")
    if "a-recirc" in names:
        out.append(f"- The test flows (a-recirc, a-bpf-recirc): "
                   + ("; ".join(recirc_checks) or "not checked")
                   + f"; {recirc_removed} removals, each checked (none left).")
    for n in [x for x in BPF_PATHS if x in names]:
        for kind in ("multi", "single", "tcp", "udp"):
            b = [r[n][kind].get("bpf", {}) for r in runs]
            tun = [r[n][kind].get("tun", {}).get("host1", {}).get("tx_packets")
                   for r in runs]
            what = ({"multi": "multi-stream throughput test", "single": "1-stream throughput "
                     "test"}.get(kind) or f"{kind.upper()} transaction test")
            need = ([r[n][kind].get("bpf_min_6to4", 0) for r in runs]
                    if kind in ("multi", "single") else
                    [r[n][kind].get("n", 0) for r in runs])
            out.append(
                f"- {n}, BPF translator per {what} (median): "
                + ", ".join(f"{k} {med([x.get(k, float('nan')) for x in b]):.0f}"
                            for k in translator.BPF_STATS)
                + (f"; at least {med(need):.0f} needed ("
                   + ("the goodput's bytes / MSS" if kind in ("multi", "single")
                      else "transactions") + ")")
                + (f"; TAYGA's tun got {med([t for t in tun if t is not None]):.0f}"
                   if any(t is not None for t in tun) else "")
                + f"; translated the path's traffic in "
                f"{sum(bool(r[n][kind].get('bpf_ok')) for r in runs)} of {len(runs)} "
                "runs.")
    if engine_s:
        out.append(f"- Switching host1's translator engine (agent restart until the tc filter "
                   f"is on / off, a UDP and a TCP transaction answer and the direct path "
                   f"holds): median {med(list(engine_s)):.2f} s, max {max(engine_s):.2f} s, "
                   f"{len(engine_s)} switches.")
    if switch_s:
        out.append(f"- Switching the direct path (NB write until host2's flows show it; back on "
                   f"also one answered transaction and the learned entry): median "
                   f"{med(list(switch_s)):.2f} s, max {max(switch_s):.2f} s, "
                   f"{len(switch_s)} switches.")
    for n in names:
        cpu = {k: med([r[n]["multi"]["cpu"].get(k, float("nan")) for r in runs])
               for k in runs[0][n]["multi"]["cpu"] if k != "total"}
        per = med([r[n]["multi"]["cpu_per_100mbit"].get("total", float("nan")) for r in runs])
        top = max(cpu.items(), key=lambda kv: kv[1] if kv[1] == kv[1] else -1)
        lost = {node: med([r[n]["multi"]["pmd"].get(node, {}).get("rx_lost", 0) for r in runs])
                for node in runs[0][n]["multi"].get("pmd", {})}
        dlv = {node: med([r[n]["multi"]["pmd"].get(node, {}).get("delivered", 0) for r in runs])
               for node in lost}
        passes = {node: med([r[n]["multi"]["pmd"].get(node, {}).get("passes", float("nan"))
                             for r in runs]) for node in lost}
        worst = max(lost.items(), key=lambda kv: kv[1]) if lost else ("-", 0)
        out.append(
            f"- {n}: {per:.0f}% of a core per 100 Mbit/s in all ({len(cpu)} processes); busiest "
            f"{top[0]} at {top[1]:.0f}%; most packets lost before OVS read them on {worst[0]} "
            f"({worst[1]:.0f} of {dlv.get(worst[0], 0):.0f} delivered); datapath passes per "
            "packet: " + ", ".join(f"{k} {v:.2f}" for k, v in passes.items()) + ".")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=helptext.paragraphs(__doc__, 0, 1),
        epilog="--quick: one run, 1 s per throughput test, 0.5 s per latency test (CI smoke); "
               "prints the table but saves nothing unless --out / --json are given.")
    parser.add_argument("--runs", type=int, default=3, help="rounds over every path (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per iperf3 test")
    parser.add_argument("--lat-seconds", type=float, default=2.0, help="per latency test")
    parser.add_argument("--streams", type=int, default=4, help="parallel TCP streams")
    parser.add_argument("--pause", type=float, default=0.5, help="between iperf3 tests")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke mode (see below); for other prefixes, --prefix v64j- etc.")
    parser.add_argument("--keep", action="store_true",
                        help="leave everything up after the runs (to explore; the next run "
                             "or `vnet64-lab down` with the same prefix removes it)")
    parser.add_argument("--no-appliance-path", action="store_true",
                        help="skip a-appliance (vnet64 with the direct path off)")
    parser.add_argument("--no-bpf-path", action="store_true",
                        help="skip a-bpf (vnet64 with host1's translator engine bpf) and "
                             "a-bpf-appliance (also the direct path off; skipped with "
                             "--no-appliance-path too)")
    parser.add_argument("--no-recirc-path", action="store_true",
                        help="skip a-recirc and a-bpf-recirc (a and a-bpf with host1's "
                             "translation stage as before issue 21's lever 2: test flows)")
    parser.add_argument("--prefix", default=os.environ.get("VNET64_BENCH_PREFIX", PREFIX),
                        help=f"namespace prefix (default {PREFIX}; env VNET64_BENCH_PREFIX)")
    parser.add_argument("--run-dir", default=os.environ.get("VNET64_BENCH_RUN_DIR", RUN_DIR),
                        help=f"lab run dir (default {RUN_DIR}; the plain paths use RUN_DIR-dp)")
    parser.add_argument("--out", type=Path, help="Markdown report (default "
                        "benchmarks/results/datapath.md, not written with --quick)")
    parser.add_argument("--json", type=Path, help="JSON results (default: --out with .json)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds, args.lat_seconds, args.pause = 1, 1.0, 0.5, 0.2
    if args.out is None and not args.quick:
        args.out = ROOT / "benchmarks" / "results" / "datapath.md"
    if args.json is None and args.out is not None:
        args.json = args.out.with_suffix(".json")
    if (code := start_run(args, "datapath.py")) is not None:
        return code
    for tool in ("iperf3", "nft", "tayga"):
        sh.tool(tool)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    started = datetime.now(UTC)
    bench = Bench(args)
    runs: list[dict] = []
    try:
        bench.cleanup()     # leftovers of an interrupted run
        bench.up()
        for i in range(args.runs):
            note(f"run {i + 1} of {args.runs}")
            runs.append(bench.run_once(i))
        jump = bench.jumpbox_resources()
    except BaseException:
        bench.cleanup()
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if args.keep:
        note(f"--keep: left up (prefix {args.prefix}, run dirs {args.run_dir}, "
             f"{bench.dp_dir}); iperf3 and echo servers still run")
    else:
        bench.cleanup()
    names = [p.name for p in bench.paths]
    args.load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    args.findings = findings(runs, names, bench.switch_s, bench.engine_s,
                             bench.recirc_checks, bench.recirc_removed)
    args.bpf_objects = bench.bpf_objects
    table = report(args, bench, runs, jump, started)
    print(table)
    result = {"machine": machine_line(args, started), "args": {
        k: v for k, v in vars(args).items() if k in ("runs", "seconds", "lat_seconds", "streams",
                                                     "quick", "prefix", "no_appliance_path",
                                                     "no_bpf_path", "no_recirc_path")},
        "paths": {p.name: p.label for p in bench.paths}, "summary": summarise(runs, names),
        "runs": runs, "jumpbox": jump, "bpf_objects": bench.bpf_objects,
        "recirc_checks": {"first_before": bench.recirc_checks,
                          "after_removed_all": bench.recirc_removed},
        "mtu": {"underlay": UNDERLAY_MTU, "ipv6": V6_MTU, "ipv4": V4_MTU}}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
        print(f"saved to {args.out}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
