#!/usr/bin/env python3
"""Capacity: concurrent connections per customer VM and per host, and connection tear-down.

Issue 6, comparison 3 (capacity) and the tear-down half of comparison 2. Each
run brings up fresh labs (prefix ``v64c-``, run dir ``/run/vnet64-lab-c``) on
a generated topology: appliance + host1 (VMs ``cv1`` in customer-a and ``cv2``
in customer-b, both 10.0.0.4) + host2 (``--endpoints`` endpoints of service
``capbench``, subscribed to both VMs); the real ``vnet64-controller`` as the
lab starts it.

Capacity (its own fresh lab per run). The sockets live in small agent
processes (this script with ``--agent``, one epoll loop each) started with
``ip netns exec`` inside the endpoints' namespaces (clients) and the VMs'
(servers, sharing their ports with SO_REUSEPORT): a process may hold only
RLIMIT_NOFILE descriptors, whose hard limit here is 20,000 and may not be
raised without CAP_SYS_RESOURCE, so each agent raises its soft limit to the
hard one and the load is spread over as many agents as it takes (a new client
agent when the others are full; servers sized for ~15,000 connections each).
Each endpoint namespace gets ``net.ipv4.ip_local_port_range = 1024 65535``
(one source address has ~28k ports towards one destination with Linux's
default range; the client agents cycle through the endpoints, so the client
side never runs short before the platform). For each target
(VM, VM port) in ``--targets`` in turn, new connections are opened
(``--window`` connects in flight) and *held* until the platform refuses
``--stop-after`` connects since the last one it accepted; then:

- one more connect (the "next connect") and what it gets: the error and how
  long it took (ECONNREFUSED at once is the platform's reset; a timeout is not);
- every connection of this target sends one byte and must get it echoed by
  the VM's server (all of them); the server's accepted count must equal the
  held count (no refused connection reached the VM);
- host1's conntrack entries (``dpctl/ct-get-nconns``) and its ovs-vswitchd's
  RSS, against the fresh lab before the first target.

At the end every earlier target is checked again (``--final-sample`` held
connections of each, random): the later targets left them untouched.
Capacity per VM port is the held count of the first target; per VM the sum of
that VM's targets (2 ports -> 2x); per host the sum of all targets, with what
``dpctl/ct-get-maxconns`` and the measured entries and memory per connection
imply for the limit that hits first.

Tear-down (a fresh lab per run, before the capacity lab): ``--teardown-n``
connections opened and held on each of two paths, then closed by the client;
the rate is connections / (time from the first close to the server's read of
the last FIN). Twice per path with fresh connections: *all at once* (every
socket closed in one loop) and *batched* (``--close-batch`` closed, the next
batch once the server read their FINs). Path 1: endpoint e0 -> ``cv1`` through
the platform (port 7100). Path 2, the baseline in the same run: the
conntrack-only OVS path of ``benchmarks/pair_setup.py``
(``conntrack_only_path()``: one ovs-vswitchd, IPv4 SNAT in one zone, the lab
hosts' conntrack timeouts). The client's TCP retransmissions and the kernel's
backlog drops (``/proc/net/softnet_stat``, machine-wide) are counted. The
paths alternate between runs.

Every measurement is repeated ``--runs`` times; tables give the median
(min-max). Needs root. ``--quick`` (CI smoke): the controller restarted with
``--vnet64-snat-ports`` narrowed to ``--quick-ports`` ports (through
``OS_VNET64__SNAT_PORTS``), small numbers, one run, well under a minute;
nothing is saved unless ``--out``/``--json`` say where.

    .venv/bin/python benchmarks/capacity.py              # full: default ports, 2 runs, ~7 min
    .venv/bin/python benchmarks/capacity.py --quick      # CI smoke
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import random
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if "--agent" not in sys.argv:         # agents (below) need only the standard library
    sys.path.insert(0, str(ROOT / "controller"))
    sys.path.insert(0, str(ROOT / "ovs-setup"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import pair_setup as ps
    from common import (CpuMeter, control_text, flow_count, report_end, interrupted, med, note,
                        pct, rng_with, rss_kib, start_run, yes_no)
    from vnet64 import helptext, topology
    from vnet64_lab import Lab, sh
    from vnet64_lab.ovs import OvsNode

    rng = rng_with(",.0f", collapse=True)

PREFIX, RUN_DIR = "v64c-", "/run/vnet64-lab-c"
SERVICE = "capbench"
DEFAULT_PORTS = (1024, 65535)        # the controller's default Platform_IP port range
TEARDOWN_PORT = 7100
CONNECT_TIMEOUT = 15.0               # s: a connect not done by then is a timeout
PROBE_TIMEOUT = 10.0                 # s: the next connect after a fill
SERVER_SHARE = 15000                 # connections per server agent expected (fd limit 20,000 here)

TOPOLOGY = """\
# Generated by benchmarks/capacity.py: two VMs with the same address in two VNets
# on host1, several endpoints of one service on host2, all subscribed.
name: capacity-bench
platform: {{platform_ip: 100.100.0.1, translator_prefix: "fd64:64::/96", region: westeurope, appliance: appliance}}
regions:
  - {{name: westeurope, id: 0x3930}}
nodes:
  - {{name: appliance, role: appliance, underlay_ip: 192.168.68.10}}
  - {{name: host1, role: host, underlay_ip: 192.168.68.11}}
  - {{name: host2, role: host, underlay_ip: 192.168.68.12}}
vnets:
  - {{name: customer-a, id: 0x1f, cidrs: [10.0.0.0/16], subnets: [{{name: default, id: 0x6600, cidr: 10.0.0.0/24}}]}}
  - {{name: customer-b, id: 0x20, cidrs: [10.0.0.0/16], subnets: [{{name: default, id: 0x6600, cidr: 10.0.0.0/24}}]}}
vms:
  - {{name: cv1, vnet: customer-a, ipv4: 10.0.0.4, host: host1}}
  - {{name: cv2, vnet: customer-b, ipv4: 10.0.0.4, host: host1}}
services:
  - name: {service}
    endpoints:
{endpoints}
subscriptions:
  - {{vm: cv1, service: {service}}}
  - {{vm: cv2, service: {service}}}
"""

def ename(err: int) -> str:
    return errno.errorcode.get(err, str(err))


# ---------------------------------------------------------------------------
# Sockets in other namespaces, one epoll loop


def new_socket(family: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setblocking(False)
    return s


class Loop:
    """An epoll loop with a handler per file descriptor."""

    def __init__(self):
        self.ep = select.epoll()
        self.handlers: dict[int, object] = {}

    def add(self, fd: int, events: int, handler) -> None:
        self.handlers[fd] = handler
        self.ep.register(fd, events)

    def remove(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.ep.unregister(fd)

    def once(self, timeout: float) -> None:
        try:
            events = self.ep.poll(timeout, 4096)
        except InterruptedError:
            return
        for fd, ev in events:
            h = self.handlers.get(fd)
            if h is not None:
                h(fd, ev)

    def run_until(self, done, timeout: float, tick=None) -> bool:
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                return False
            self.once(0.01)
            if tick:
                tick()
        return True


class Server:
    """Listening sockets (SO_REUSEPORT, so several server processes share a port): accept,
    echo what arrives, close on EOF."""

    def __init__(self, loop: Loop, ports: list[int]):
        self.loop, self.conns = loop, {}
        self.accepted: dict[int, int] = {p: 0 for p in ports}
        self.eofs: dict[int, int] = {p: 0 for p in ports}
        self.last_eof: dict[int, float] = {p: 0.0 for p in ports}
        self.accept_errors: dict[str, int] = {}
        self.listeners = []
        for p in ports:
            s = new_socket(socket.AF_INET)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("0.0.0.0", p))
            s.listen(65535)
            self.listeners.append(s)
            loop.add(s.fileno(), select.EPOLLIN, lambda fd, ev, s=s, p=p: self._accept(s, p))

    def _accept(self, lsock: socket.socket, port: int) -> None:
        while True:
            try:
                c, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:       # EMFILE: this process holds all it may
                why = ename(exc.errno or 0)
                self.accept_errors[why] = self.accept_errors.get(why, 0) + 1
                return
            c.setblocking(False)
            self.conns[c.fileno()] = (c, port)
            self.accepted[port] += 1
            self.loop.add(c.fileno(), select.EPOLLIN, self._readable)

    def _readable(self, fd: int, ev: int) -> None:
        c, port = self.conns[fd]
        try:
            data = c.recv(256)
        except OSError:
            data = b""
        if data:
            with contextlib.suppress(OSError):
                c.send(data)
            return
        self.eofs[port] += 1
        self.last_eof[port] = time.monotonic()
        self.loop.remove(fd)
        del self.conns[fd]
        c.close()

    def stats(self) -> dict:
        return {"accepted": self.accepted, "eofs": self.eofs, "last_eof": self.last_eof,
                "open": len(self.conns), "accept_errors": self.accept_errors}


class Opener:
    """Open connections to (dst, port), ``window`` in flight, until the platform refuses
    ``stop_after`` connects since the last accepted one, ``limit`` are held, or ``budget``
    seconds pass. Established sockets are held (in ``held``)."""

    def __init__(self, loop: Loop, dst: str, port: int):
        self.loop, self.dst, self.port = loop, dst, port
        self.family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        self.held: list[socket.socket] = []
        self.errors: dict[str, int] = {}
        self.inflight: dict[int, tuple[socket.socket, float]] = {}
        self.started = 0
        self.refused_since_ok = 0
        self.first_refusal_at: int | None = None
        self.connect_ms: list[float] = []

    def _start(self) -> None:
        self.started += 1
        s = new_socket(self.family)
        rc = s.connect_ex((self.dst, self.port))
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            self._error(ename(rc))
            return
        self.inflight[s.fileno()] = (s, time.monotonic())
        self.loop.add(s.fileno(), select.EPOLLOUT, self._done)

    def _error(self, why: str) -> None:
        self.errors[why] = self.errors.get(why, 0) + 1
        if why == "ECONNREFUSED":
            self.refused_since_ok += 1
            if self.first_refusal_at is None:
                self.first_refusal_at = len(self.held)

    def _done(self, fd: int, ev: int) -> None:
        s, t0 = self.inflight.pop(fd)
        self.loop.remove(fd)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            s.close()
            self._error(ename(err))
            return
        self.connect_ms.append((time.monotonic() - t0) * 1000)
        self.held.append(s)
        self.refused_since_ok = 0

    def _expire(self) -> None:
        now = time.monotonic()
        for fd in [fd for fd, (_, t0) in self.inflight.items() if now - t0 > CONNECT_TIMEOUT]:
            s, _ = self.inflight.pop(fd)
            self.loop.remove(fd)
            s.close()
            self._error("timeout")

    def run(self, window: int, stop_after: int, limit: int, budget: float) -> dict:
        t0 = time.monotonic()
        end = t0 + budget
        stopped = None
        while True:
            if stopped is None:
                if self.refused_since_ok >= stop_after:
                    stopped = "refused"
                elif time.monotonic() > end:
                    stopped = "time budget"
                elif len(self.held) >= limit:
                    stopped = "limit"
                elif self.errors.get("EADDRNOTAVAIL", 0) > 1000:
                    stopped = "client ports"      # the client side ran out, not the platform
                elif self.errors.get("EMFILE", 0):
                    stopped = "file descriptors"
            if stopped is None:
                while len(self.inflight) < window and len(self.held) + len(self.inflight) < limit:
                    self._start()
            elif not self.inflight:
                break
            self.loop.once(0.01)
            self._expire()
        seconds = time.monotonic() - t0
        return {"held": len(self.held), "attempts": self.started, "errors": dict(self.errors),
                "first_refusal_at": self.first_refusal_at, "stopped_by": stopped,
                "seconds": seconds, "connect_ms": self.connect_ms}


def probe(loop: Loop, dst: str, port: int) -> dict:
    """One connect and what it gets: error (or "connected") and how long it took."""
    s = new_socket(socket.AF_INET6 if ":" in dst else socket.AF_INET)
    t0 = time.monotonic()
    rc = s.connect_ex((dst, port))
    out: dict = {}
    if rc not in (0, errno.EINPROGRESS):
        out = {"error": ename(rc), "ms": 0.0}
    else:
        def done(fd, ev):
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            out.update(error=ename(err) if err else "connected",
                       ms=round((time.monotonic() - t0) * 1000, 2))
            loop.remove(fd)
        loop.add(s.fileno(), select.EPOLLOUT, done)
        if not loop.run_until(lambda: bool(out), PROBE_TIMEOUT):
            loop.remove(s.fileno())
            out = {"error": "timeout", "ms": round(PROBE_TIMEOUT * 1000, 0)}
    s.close()
    return out


def check(loop: Loop, conns: list[socket.socket], window: int = 256, timeout: float = 60.0) -> dict:
    """Each connection sends one byte and must get it back; ``window`` in flight."""
    pending = list(conns)
    waiting: dict[int, socket.socket] = {}
    ok, failed = 0, 0
    t0 = time.monotonic()

    def answered(fd, ev):
        nonlocal ok, failed
        s = waiting.pop(fd)
        loop.remove(fd)
        try:
            data = s.recv(16)
        except OSError:
            data = b""
        if data == b"?":
            ok += 1
        else:
            failed += 1

    def refill():
        nonlocal failed
        while pending and len(waiting) < window:
            s = pending.pop()
            try:
                s.send(b"?")
            except OSError:
                failed += 1
                continue
            waiting[s.fileno()] = s
            loop.add(s.fileno(), select.EPOLLIN, answered)

    refill()
    loop.run_until(lambda: not pending and not waiting, timeout, refill)
    for fd in list(waiting):
        loop.remove(fd)
    return {"checked": len(conns), "answered": ok, "failed": failed + len(waiting),
            "seconds": time.monotonic() - t0}


# ---------------------------------------------------------------------------
# Agents: processes inside the lab's namespaces (``ip netns exec``), driven by JSON
# lines on stdin. Each may hold at most RLIMIT_NOFILE sockets (a hard limit this
# benchmark may not raise: no CAP_SYS_RESOURCE here), so the load is spread over
# several: servers share their ports with SO_REUSEPORT, clients take turns.


def agent_main(kind: str, ports: list[int]) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = Loop()
    server = Server(loop, ports) if kind == "server" else None
    held: dict[str, list[socket.socket]] = {}
    rnd = random.Random(os.getpid())
    buf = b""

    def reply(obj) -> None:
        os.write(1, (json.dumps(obj) + "\n").encode())

    def command(c: dict) -> None:
        cmd = c["cmd"]
        if cmd == "stats":
            reply(server.stats())
        elif cmd == "wait":        # until accepted[port] >= n or eofs[port] >= n
            what, port, n = c["what"], c["port"], c["n"]
            table = server.accepted if what == "accepted" else server.eofs
            ok = loop.run_until(lambda: table[port] >= n, c["timeout"])
            reply({"ok": ok, **server.stats()})
        elif cmd == "open":
            op = Opener(loop, c["dst"], c["port"])
            r = op.run(c["window"], c["stop_after"], c["limit"], c["budget"])
            held.setdefault(c["key"], []).extend(op.held)
            reply(r)
        elif cmd == "probe":
            reply(probe(loop, c["dst"], c["port"]))
        elif cmd == "check":
            conns = held.get(c["key"], [])
            if c.get("sample") is not None and c["sample"] < len(conns):
                conns = rnd.sample(conns, c["sample"])
            reply(check(loop, conns))
        elif cmd == "close":       # close (count or all) held connections of a key, as fast as we can
            conns = held.get(c["key"], [])
            n = len(conns) if c.get("count") is None else min(c["count"], len(conns))
            conns, held[c["key"]] = conns[:n], conns[n:]
            t0 = time.monotonic()
            for s in conns:
                s.close()
            reply({"t0": t0, "t1": time.monotonic(), "closed": len(conns)})
        elif cmd == "snmp":        # this namespace's TCP counters
            rows = [r.split() for r in Path("/proc/net/snmp").read_text().splitlines()
                    if r.startswith("Tcp:")]
            reply(dict(zip(rows[0][1:], (int(x) for x in rows[1][1:]), strict=True)))
        elif cmd == "idle":        # serve for a while (e.g. late accepts)
            loop.run_until(lambda: False, c["seconds"])
            reply({})
        else:
            reply({"error": f"unknown command {cmd}"})

    def readable(fd, ev) -> None:
        nonlocal buf
        data = os.read(0, 65536)
        if not data:
            raise SystemExit(0)
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            c = json.loads(line)
            if c["cmd"] == "quit":
                raise SystemExit(0)
            command(c)

    os.set_blocking(0, False)
    loop.add(0, select.EPOLLIN, readable)
    reply({"ready": True, "nofile": hard})
    while True:
        loop.once(1.0)


class Agent:
    def __init__(self, ns: str, kind: str, ports: list[int] | None = None):
        self.ns, self.kind = ns, kind
        self.proc = subprocess.Popen(
            [sh.tool("ip"), "netns", "exec", ns, sys.executable, str(Path(__file__).resolve()),
             "--agent", kind, "--agent-ports", ",".join(str(p) for p in ports or [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        hello = self._read()
        self.nofile = hello["nofile"]
        self.quota = self.nofile - 200       # sockets this client may still hold
        self.keys: dict[str, int] = {}       # held connections per key

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} agent in {self.ns} died (rc {self.proc.poll()})")
        return json.loads(line)

    def call(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()      # our own child, by its Popen handle
                self.proc.wait(5)


# ---------------------------------------------------------------------------
# One lab


def topology_text(n_endpoints: int) -> str:
    eps = "\n".join(f'      - {{name: e{i}, ipv6: "fd00:5e:1::1:{i:x}", host: host2}}'
                    for i in range(n_endpoints))
    return TOPOLOGY.format(service=SERVICE, endpoints=eps)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.lab = Lab(args.prefix, args.run_dir)
        self.tmp = Path(tempfile.mkdtemp(prefix="vnet64-capacity-"))
        self.topo_path = self.tmp / "capacity.yaml"
        self.topo_path.write_text(topology_text(args.endpoints))
        self.topo = topology.load(self.topo_path)
        self.ctb: OvsNode | None = None
        self.agents: list[Agent] = []
        # the conntrack-only path of pair_setup.py, under this benchmark's prefix
        ps.CTB_NS, ps.CTC_NS, ps.CTS_NS = (f"{args.prefix}ctb", f"{args.prefix}ctc",
                                           f"{args.prefix}cts")
        ps.CTB_RUN_DIR = f"{args.run_dir}-ctb"

    def agent(self, ns: str, kind: str, ports: list[int] | None = None) -> Agent:
        a = Agent(ns, kind, ports)
        self.agents.append(a)
        return a

    def up(self) -> None:
        self.down()
        t0 = time.monotonic()
        self.lab.up(self.topo_path)
        self.plan = self.lab.plan()
        self.nodes = {n.name: OvsNode(n.name, n.ns, n.run_dir) for n in self.plan.nodes}
        self.ns_of = {v.name: v.ns for v in self.plan.vifs}
        self.endpoints = [self.ns_of[f"e{i}"] for i in range(self.args.endpoints)]
        self.vm6 = {v.name: str(self.topo.platform_address(v.name).ipv6) for v in self.topo.vms}
        sh.wait_for(lambda: flow_count(self.nodes["host1"], "v6_dnat") >= 4     # 2 VMs, miss, invalid
                    and flow_count(self.nodes["appliance"]) >= 2, 60, "the controller's flows")
        if self.args.snat_ports != DEFAULT_PORTS:
            # the controller that sets host1's pairs up: its own, or the central one
            ctl = self.lab.controller("host1")
            served = 1 if ctl.node else len(self.plan.nodes)
            log = ctl.log
            size = log.stat().st_size
            os.environ["OS_VNET64__SNAT_PORTS"] = "%d-%d" % self.args.snat_ports
            try:
                state = self.lab.restart_controller("host1")
            finally:
                del os.environ["OS_VNET64__SNAT_PORTS"]
            if not state.startswith("started"):
                raise RuntimeError(f"controller restart: {state}")
            try:   # the new controller programmed every switch it serves (one line each)
                sh.wait_for(lambda: log.read_bytes()[size:].count(b"proactive flows") >= served,
                            60, "the restarted controller's flows")
            except Exception:
                print(log.read_bytes()[size:][-3000:].decode(errors="replace"), file=sys.stderr)
                raise
            time.sleep(1.0)
        for ns in self.endpoints:
            sh.sysctl(ns, {"net.ipv4.ip_local_port_range": "1024 65535"})
        self.host1 = self.nodes["host1"]
        note(f"lab up in {time.monotonic() - t0:.1f}s ({self.args.endpoints} endpoints, "
             f"Platform_IP ports {self.args.snat_ports[0]}-{self.args.snat_ports[1]})")
        # resolve fe80::1 in every endpoint before the first SYN
        for ns in self.endpoints:
            with ps.netns(ns), contextlib.suppress(OSError), \
                    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                s.sendto(b"x", ("fe80::1", 9, 0, socket.if_nametoindex("eth0")))
        time.sleep(0.3)

    def down(self) -> None:
        for a in self.agents:
            a.stop()
        self.agents.clear()
        OvsNode("ctb", ps.CTB_NS, ps.CTB_RUN_DIR).stop()
        self.ctb = None
        shutil.rmtree(ps.CTB_RUN_DIR, ignore_errors=True)
        self.lab.down()

    def cleanup(self) -> None:
        self.down()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def nconns(self, node: OvsNode) -> int:
        return int(node.appctl("dpctl/ct-get-nconns").strip().split()[-1])

    def vswitchd_rss(self) -> int:
        return rss_kib(self.host1.pid("ovs-vswitchd"))

    # -- capacity -------------------------------------------------------------

    def fill(self, clients: list[Agent], vm: str, port: int) -> dict:
        """Open and hold connections to (vm, port) until the platform refuses them; the
        client agents take turns (each up to its quota), a new one when all are full."""
        a, key = self.args, f"{vm}:{port}"
        t0 = time.monotonic()
        total = {"held": 0, "attempts": 0, "errors": {}, "first_refusal_at": None,
                 "stopped_by": None, "connect_ms": []}
        while total["stopped_by"] in (None, "limit", "file descriptors"):
            if total["held"] >= a.limit:
                break
            free = [c for c in clients if c.quota > a.window]
            if not free:
                free = [self.agent(self.endpoints[len(clients) % len(self.endpoints)], "client")]
                clients.append(free[0])
            c = free[0]
            limit = min(c.quota, a.limit - total["held"])
            r = c.call(cmd="open", key=key, dst=self.vm6[vm], port=port, window=a.window,
                       stop_after=a.stop_after, limit=limit,
                       budget=max(1.0, a.fill_budget - (time.monotonic() - t0)))
            c.quota -= r["held"] + r["errors"].get("timeout", 0)
            c.keys[key] = c.keys.get(key, 0) + r["held"]
            if r["first_refusal_at"] is not None and total["first_refusal_at"] is None:
                total["first_refusal_at"] = total["held"] + r["first_refusal_at"]
            total["held"] += r["held"]
            total["attempts"] += r["attempts"]
            for k, v in r["errors"].items():
                total["errors"][k] = total["errors"].get(k, 0) + v
            total["connect_ms"] += r["connect_ms"]
            total["stopped_by"] = r["stopped_by"]
            if r["stopped_by"] == "file descriptors":
                c.quota = 0
        seconds = time.monotonic() - t0
        ms = total.pop("connect_ms")
        total.update(seconds=round(seconds, 2), rate=round(total["held"] / seconds, 1),
                     refused=total["errors"].get("ECONNREFUSED", 0),
                     timeouts=total["errors"].get("timeout", 0),
                     connect_ms={"p50": round(pct(ms, 50), 2), "p99": round(pct(ms, 99), 2),
                                 "max": round(max(ms, default=float("nan")), 1)})
        return total

    def capacity(self) -> dict:
        a = self.args
        prange = a.snat_ports[1] - a.snat_ports[0] + 1
        out: dict = {"maxconns": int(self.host1.appctl("dpctl/ct-get-maxconns").strip().split()[-1]),
                     "ct_before": self.nconns(self.host1), "rss_before_kib": self.vswitchd_rss(),
                     "host2_ct_before": self.nconns(self.nodes["host2"]), "fills": []}
        servers: dict[str, list[Agent]] = {}
        for vm in sorted({t[0] for t in a.targets}):
            ports = sorted({p for v, p in a.targets if v == vm})
            n = max(1, -(-(len(ports) * prange) // SERVER_SHARE))
            servers[vm] = [self.agent(self.ns_of[vm], "server", ports) for _ in range(n)]
        clients: list[Agent] = []
        t_all = time.monotonic()
        for vm, port in a.targets:
            key = f"{vm}:{port}"
            r = self.fill(clients, vm, port)
            # late accepts: every held connection must have reached one of the VM's servers
            accepted = lambda: sum(s.call(cmd="stats")["accepted"][str(port)] for s in servers[vm])  # noqa: E731
            sh.wait_for(lambda: accepted() >= r["held"], 10, "accepts", 0.2)
            r["next_connect"] = probe_from(clients[0], self.vm6[vm], port)
            time.sleep(0.3)
            r["server_accepted"] = accepted()
            r["server_accept_errors"] = [s.call(cmd="stats")["accept_errors"] for s in servers[vm]]
            chk = [c.call(cmd="check", key=key) for c in clients if c.keys.get(key)]
            r["check"] = {"checked": sum(x["checked"] for x in chk),
                          "answered": sum(x["answered"] for x in chk),
                          "seconds": round(sum(x["seconds"] for x in chk), 2)}
            r.update(target=key, vm=vm, port=port, ct_after=self.nconns(self.host1),
                     rss_after_kib=self.vswitchd_rss())
            out["fills"].append(r)
            other = {k: v for k, v in r["errors"].items() if k not in ("ECONNREFUSED", "timeout")}
            note(f"{key}: held {r['held']:,} (first refusal after {r['first_refusal_at']}, "
                 f"refused {r['refused']}, timeouts {r['timeouts']}, other {other or 0}) in "
                 f"{r['seconds']:.1f}s = {r['rate']:.0f}/s, stopped by {r['stopped_by']}; next "
                 f"connect {r['next_connect']['error']} after {r['next_connect']['ms']} ms; VM "
                 f"accepted {r['server_accepted']:,}; answered {r['check']['answered']:,} of "
                 f"{r['check']['checked']:,}; host1 conntrack {r['ct_after']:,}, ovs-vswitchd "
                 f"RSS {r['rss_after_kib'] / 1024:.0f} MiB; {len(clients)} client processes")
        out["fill_seconds"] = round(time.monotonic() - t_all, 1)
        # every target again, after all the later fills and refusals
        fc = {"checked": 0, "answered": 0}
        for vm, port in a.targets:
            key = f"{vm}:{port}"
            total = sum(c.keys.get(key, 0) for c in clients)
            for c in clients:
                if c.keys.get(key):
                    x = c.call(cmd="check", key=key,
                               sample=-(-a.final_sample * c.keys[key] // max(1, total)))
                    fc["checked"] += x["checked"]
                    fc["answered"] += x["answered"]
        fc["per_target"] = a.final_sample
        out["final_check"] = fc
        out["ct_after"] = self.nconns(self.host1)
        out["host2_ct_after"] = self.nconns(self.nodes["host2"])
        out["rss_after_kib"] = self.vswitchd_rss()
        out["held_total"] = sum(f["held"] for f in out["fills"])
        out["client_processes"] = len(clients)
        out["server_processes"] = sum(len(s) for s in servers.values())
        n = out["held_total"] or 1
        out["ct_per_conn"] = (out["ct_after"] - out["ct_before"]) / n
        out["refused_total"] = sum(f["refused"] for f in out["fills"])
        # each refused attempt leaves its two IPv6-zone entries until they expire
        out["ct_per_conn_net"] = (out["ct_after"] - out["ct_before"] - 2 * out["refused_total"]) / n
        out["kib_per_conn"] = (out["rss_after_kib"] - out["rss_before_kib"]) / n
        note(f"final check: {fc['answered']:,} of {fc['checked']:,} answered; "
             f"{out['held_total']:,} held, host1 conntrack {out['ct_per_conn']:.2f} entries and "
             f"{out['kib_per_conn']:.2f} KiB of ovs-vswitchd RSS per connection")
        return out

    # -- tear-down --------------------------------------------------------------

    def teardown_setup(self) -> None:
        self.ctb, base = ps.conntrack_only_path()
        sh.sysctl(ps.CTC_NS, {"net.ipv4.ip_local_port_range": "1024 65535"})
        tayga = sh.read_pid(Path(self.plan.translator("host1").run_dir) / "tayga.pid")
        self.paths = {
            "platform": {"client": self.agent(self.endpoints[0], "client"), "dst": self.vm6["cv1"],
                         "server": self.agent(self.ns_of["cv1"], "server", [TEARDOWN_PORT]),
                         "procs": {"ovs-vswitchd": [n.pid("ovs-vswitchd") or 0
                                                    for n in self.nodes.values()],
                                   "tayga": [tayga or 0]}},
            "baseline": {"client": self.agent(ps.CTC_NS, "client"), "dst": base.target,
                         "server": self.agent(ps.CTS_NS, "server", [TEARDOWN_PORT]),
                         "procs": {"ovs-vswitchd": [self.ctb.pid("ovs-vswitchd") or 0]}},
        }

    def teardown(self, which: str, nth: int, batch: int | None) -> dict:
        """Open ``--teardown-n`` connections, then close them: all at once (``batch``
        None) or ``batch`` at a time, each batch after the server read the last one's FINs."""
        a, p = self.args, self.paths[which]
        srv, cli, key = p["server"], p["client"], f"td{nth}-{batch}"
        port = str(TEARDOWN_PORT)
        st0 = srv.call(cmd="stats")
        eof0, acc0 = st0["eofs"][port], st0["accepted"][port]
        o = cli.call(cmd="open", key=key, dst=p["dst"], port=TEARDOWN_PORT, window=a.window,
                     stop_after=1, limit=a.teardown_n, budget=120)
        n = o["held"]
        srv.call(cmd="wait", what="accepted", port=TEARDOWN_PORT, n=acc0 + n, timeout=10)
        procs = dict(p["procs"], server=[srv.proc.pid], client=[cli.proc.pid])
        retrans0 = cli.call(cmd="snmp")["RetransSegs"]
        drops0 = softnet_drops()
        cpu = CpuMeter(procs)
        cpu.start()
        t0, closed, ok, loop_s = None, 0, True, 0.0
        end = time.monotonic() + a.teardown_timeout
        while closed < n and ok:
            c = cli.call(cmd="close", key=key, count=batch)
            t0 = c["t0"] if t0 is None else t0
            loop_s += c["t1"] - c["t0"]
            closed += c["closed"]
            w = srv.call(cmd="wait", what="eofs", port=TEARDOWN_PORT, n=eof0 + closed,
                         timeout=max(0.1, end - time.monotonic()))
            ok = w["ok"]
        cpu_use = cpu.stop()
        retrans = cli.call(cmd="snmp")["RetransSegs"] - retrans0
        drops = softnet_drops() - drops0
        eofs = w["eofs"][port] - eof0
        seconds = w["last_eof"][port] - t0 if eofs else float("nan")
        r = {"opened": n, "batch": batch, "open_errors": o["errors"],
             "open_rate": round(n / o["seconds"], 1), "eofs": eofs,
             "complete": bool(ok) and eofs == n, "seconds": round(seconds, 3),
             "rate": round(eofs / seconds, 1) if eofs and seconds > 0 else 0.0,
             "close_loop_s": round(loop_s, 3), "client_retransmits": retrans,
             "softnet_drops": drops,
             "cpu": {k: round(v, 1) for k, v in cpu_use.items() if k != "generator"}}
        how = "all at once" if batch is None else f"{batch} at a time"
        note(f"tear-down {which}, {how}: {n:,} opened ({r['open_rate']:.0f}/s), closed; the "
             f"server read {eofs:,} FINs in {seconds:.2f}s = {r['rate']:.0f}/s; client "
             f"retransmitted {retrans:,} segments, kernel backlog drops {drops:,}"
             f"{'' if r['complete'] else ' **INCOMPLETE**'}")
        return r


def softnet_drops() -> int:
    """Packets the kernel dropped because a CPU's input backlog was full (machine-wide)."""
    return sum(int(row.split()[1], 16) for row in Path("/proc/net/softnet_stat").read_text().splitlines())


def probe_from(client: Agent, dst: str, port: int) -> dict:
    return client.call(cmd="probe", dst=dst, port=port)


# ---------------------------------------------------------------------------
# Report


def report(args, runs: list[dict], started: datetime) -> str:
    ovs_version = sh.vswitchd_version()
    lo, hi = args.snat_ports
    prange = hi - lo + 1
    caps = [r["capacity"] for r in runs]
    lines = [
        "# Capacity: concurrent connections per VM and per host; connection tear-down",
        "",
        (f"{started:%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
         f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
         f"kernel {platform.release()}, Python {platform.python_version()}, {ovs_version}, "
         f"commit {args.commit}. Shared machine (load average at start {args.load_start}, at "
         f"the end {args.load_end}; other labs ran at the same time). {args.runs} run(s), fresh "
         "labs each; median (min-max)."
         + (" **--quick**: a smoke run, not a measurement." if args.quick else "")),
        "",
        (f"Lab: appliance + host1 (`cv1` in customer-a, `cv2` in customer-b, both 10.0.0.4) + "
         f"host2 ({args.endpoints} endpoints of `{SERVICE}`); the real `vnet64-controller` "
         f"({control_text(Lab(args.prefix, args.run_dir).wanted_control)}), "
         f"Platform_IP ports {lo}-{hi} ({prange:,} per VM address and port"
         f"{'' if (lo, hi) == DEFAULT_PORTS else ', narrowed with --vnet64-snat-ports'}). The "
         "sockets live in agent processes inside the endpoints' namespaces (clients) and the VMs' "
         "(servers sharing their ports with SO_REUSEPORT), at most ~20,000 each (the hard "
         "RLIMIT_NOFILE here); endpoints' `ip_local_port_range` 1024-65535, client agents cycle "
         f"through the endpoints; {args.window} connects in flight; a target is full when "
         f"{args.stop_after} connects in a row since the last accepted one were refused."),
        "",
        "## Capacity per VM port, per VM, per host",
        "",
        "| target | held (capacity) | first refusal after | refused / timeouts / other errors | "
        "next connect gets | VM accepted = held | held answering | opened at (conn/s) | "
        "host1 conntrack entries after | host1 ovs-vswitchd RSS after (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (vm, port) in enumerate(args.targets):
        fs = [c["fills"][i] for c in caps]
        other = sum(sum(v for k, v in f["errors"].items() if k not in ("ECONNREFUSED", "timeout"))
                    for f in fs)
        nexts = sorted({f"{f['next_connect']['error']} ({f['next_connect']['ms']:.1f} ms)" for f in fs})
        lines.append(
            f"| {vm}:{port} | {rng(f['held'] for f in fs)} | "
            f"{rng(f['first_refusal_at'] if f['first_refusal_at'] is not None else float('nan') for f in fs)} | "
            f"{sum(f['refused'] for f in fs)} / {sum(f['timeouts'] for f in fs)} / {other} | "
            f"{', '.join(nexts)} | {yes_no(all(f['server_accepted'] == f['held'] for f in fs))} | "
            f"{sum(f['check']['answered'] for f in fs):,} of {sum(f['check']['checked'] for f in fs):,} | "
            f"{rng(f['rate'] for f in fs)} | {rng(f['ct_after'] for f in fs)} | "
            f"{rng(f['rss_after_kib'] / 1024 for f in fs)} |")
    first = [c["fills"][0]["held"] for c in caps]
    by_vm: dict[str, list[int]] = {}
    for i, (vm, _) in enumerate(args.targets):
        by_vm.setdefault(vm, []).append(i)
    lines += ["", "| scope | connections held | / one VM port | expected |", "|---|---|---|---|",
              f"| one VM address and port ({args.targets[0][0]}:{args.targets[0][1]}) | "
              f"{rng(first)} | 1.00x | {prange:,} (the port range) |"]
    for vm, idx in by_vm.items():
        tot = [sum(c["fills"][i]["held"] for i in idx) for c in caps]
        lines.append(f"| VM {vm}, {len(idx)} port(s) | {rng(tot)} | "
                     f"{med([t / f for t, f in zip(tot, first, strict=True)]):.2f}x | "
                     f"{len(idx) * prange:,} |")
    tot = [c["held_total"] for c in caps]
    lines.append(f"| host1, {len(by_vm)} VMs, {len(args.targets)} VM ports | {rng(tot)} | "
                 f"{med([t / f for t, f in zip(tot, first, strict=True)]):.2f}x | "
                 f"{len(args.targets) * prange:,} |")
    fc = [c["final_check"] for c in caps]
    maxconns = caps[0]["maxconns"]
    ct_pc = med([c["ct_per_conn"] for c in caps])
    kib_pc = med([c["kib_per_conn"] for c in caps])
    ct_limit = maxconns / ct_pc if ct_pc > 0 else float("nan")
    mem_at_limit = ct_limit * kib_pc / 2**20
    lines += [
        "",
        (f"After the last target, ~{fc[0]['per_target']:,} random held connections of every "
         f"target were checked again: {sum(f['answered'] for f in fc):,} of "
         f"{sum(f['checked'] for f in fc):,} answered (the later fills and refusals left the "
         "earlier connections untouched)."),
        "",
        "## Memory and the limit that hits first (host1)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| conntrack entries per held connection (host1, `dpctl/ct-get-nconns`) | "
        f"{rng((c['ct_per_conn'] for c in caps), '.2f')} |",
        f"| the same, an estimate without the refused attempts' leftovers (up to 2 each, IPv6 zones, they expire) | "
        f"{rng((c['ct_per_conn_net'] for c in caps), '.2f')} |",
        f"| host1 ovs-vswitchd RSS per held connection (KiB) | "
        f"{rng((c['kib_per_conn'] for c in caps), '.2f')} |",
        f"| host1 ovs-vswitchd RSS before / after (MiB) | "
        f"{rng(c['rss_before_kib'] / 1024 for c in caps)} / {rng(c['rss_after_kib'] / 1024 for c in caps)} |",
        f"| host1 conntrack entries before / after | {rng(c['ct_before'] for c in caps)} / "
        f"{rng(c['ct_after'] for c in caps)} |",
        f"| host2 conntrack entries before / after (encapsulation only) | "
        f"{rng(c['host2_ct_before'] for c in caps)} / {rng(c['host2_ct_after'] for c in caps)} |",
        f"| OVS userspace conntrack limit (`dpctl/ct-get-maxconns`) | {maxconns:,} entries |",
        f"| connections per host at that limit (limit / entries per connection) | {ct_limit:,.0f} |",
        f"| host1 ovs-vswitchd RSS that implies (measured KiB per connection x that) | "
        f"{mem_at_limit:.1f} GiB more |",
        f"| VM ports (address+port pairs) needed to reach it at {prange:,} each | "
        f"{ct_limit / prange:,.1f} |",
    ]
    lines += ["", "## Connection tear-down: platform vs conntrack-only OVS", "",
              (f"{args.teardown_n:,} connections opened and held on each path (platform: endpoint "
               f"e0 -> `cv1`:{TEARDOWN_PORT}; baseline: `pair_setup.py`'s conntrack-only OVS "
               "path, one ovs-vswitchd, IPv4 SNAT in one zone, the lab hosts' conntrack timeouts), "
               "then closed by the client (the client closes first); rate = connections / (first "
               "close -> the server read the last FIN). *All at once*: every socket closed in one "
               f"loop; *batched*: {args.close_batch} closed, then the next {args.close_batch} once "
               "the server read their FINs (a closed loop, nothing queues up). Fresh "
               "connections for each; same run, the paths in alternating order."), "",
              "| measure | platform | conntrack-only OVS | ratio |", "|---|---|---|---|"]
    all_td = []
    for label, suffix in (("all at once", ""), (f"batched, {args.close_batch} at a time", " batched")):
        tp = [r["teardown"]["platform" + suffix] for r in runs]
        tb = [r["teardown"]["baseline" + suffix] for r in runs]
        all_td += tp + tb
        ratios = [p["rate"] / b["rate"] for p, b in zip(tp, tb, strict=True) if b["rate"]]
        lines += [
            f"| **connections closed per second, {label}** | {rng(p['rate'] for p in tp)} | "
            f"{rng(b['rate'] for b in tb)} | {rng(ratios, '.2f')} |",
            f"| {label}: FINs read / connections (every run) | {sum(p['eofs'] for p in tp):,} / "
            f"{sum(p['opened'] for p in tp):,} | {sum(b['eofs'] for b in tb):,} / "
            f"{sum(b['opened'] for b in tb):,} | - |",
            f"| {label}: last FIN read after (s) | {rng((p['seconds'] for p in tp), '.2f')} | "
            f"{rng((b['seconds'] for b in tb), '.2f')} | - |",
            f"| {label}: TCP segments the client retransmitted | "
            f"{rng(p['client_retransmits'] for p in tp)} | {rng(b['client_retransmits'] for b in tb)} | - |",
            f"| {label}: kernel input-backlog drops (softnet_stat, machine-wide) | "
            f"{rng(p['softnet_drops'] for p in tp)} | {rng(b['softnet_drops'] for b in tb)} | - |",
            f"| {label}: ovs-vswitchd CPU % (platform: its 3 nodes) | "
            f"{rng(p['cpu']['ovs-vswitchd'] for p in tp)} | {rng(b['cpu']['ovs-vswitchd'] for b in tb)} | - |",
        ]
    tp = [r["teardown"][k] for r in runs for k in ("platform", "platform batched")]
    tb = [r["teardown"][k] for r in runs for k in ("baseline", "baseline batched")]
    lines.append(
        f"| new connections opened per second (the same connections, {args.window} in flight) | "
        f"{rng(p['open_rate'] for p in tp)} | {rng(b['open_rate'] for b in tb)} | "
        f"{rng([p['open_rate'] / b['open_rate'] for p, b in zip(tp, tb, strict=True) if b['open_rate']], '.2f')} |")
    lines += ["", "## Aims", "", "| aim | measured | met |", "|---|---|---|",
              f"| one VM address+port holds the port range ({prange:,}; within 0.1 %, as ports "
              f"found before {args.stop_after} refusals in a row) | {rng(first)} (exactly in "
              f"{sum(f['held'] == prange for c in caps for f in c['fills'])} of "
              f"{sum(len(c['fills']) for c in caps)} fills) | "
              f"{yes_no(all(f['held'] >= prange * 0.999 for c in caps for f in c['fills']))} |",
              "| the connect after exhaustion is refused at once (ECONNREFUSED, not a timeout) | "
              + ", ".join(sorted({f['next_connect']['error'] for c in caps for f in c['fills']}))
              + f" | {yes_no(all(f['next_connect']['error'] == 'ECONNREFUSED' for c in caps for f in c['fills']))} |",
              "| every held connection still answers (each target after its refusal, then a sample "
              "of all at the end) | "
              f"{sum(f['check']['answered'] for c in caps for f in c['fills']) + sum(x['answered'] for x in fc):,} "
              f"of {sum(f['check']['checked'] for c in caps for f in c['fills']) + sum(x['checked'] for x in fc):,} | "
              f"{yes_no(all(f['check']['answered'] == f['check']['checked'] for c in caps for f in c['fills']) and all(x['answered'] == x['checked'] for x in fc))} |",
              f"| capacity per VM is per address *and* port ({len(by_vm[args.targets[0][0]])} ports -> "
              f"{len(by_vm[args.targets[0][0]])}x the range, within 0.1 %) | "
              f"{med([sum(c['fills'][i]['held'] for i in by_vm[args.targets[0][0]]) / c['fills'][0]['held'] for c in caps if c['fills'][0]['held']]):.2f}x | "
              f"{yes_no(all(abs(sum(c['fills'][i]['held'] for i in by_vm[args.targets[0][0]]) - len(by_vm[args.targets[0][0]]) * prange) <= len(by_vm[args.targets[0][0]]) * prange * 0.001 for c in caps))} |",
              f"| tear-down completes on both paths (every FIN read) | "
              f"{sum(t['eofs'] for t in all_td):,} / {sum(t['opened'] for t in all_td):,} | "
              f"{yes_no(all(t['complete'] for t in all_td))} |"]
    notes = list(args.notes)
    early = [f for c in caps for f in c["fills"]
             if f["first_refusal_at"] is not None and f["first_refusal_at"] < f["held"]]
    if early:
        lo_ = min(f["first_refusal_at"] for f in early)
        notes.append(
            f"- Refusals begin before a port range is full: the first one came after {lo_:,} "
            f"held connections ({lo_ / prange:.0%} of the range) in the earliest case; refused "
            "and accepted connects then interleave until every port is taken. This is "
            "consistent with OVS's userspace NAT trying a bounded number of candidate ports per "
            "new connection rather than the whole range; a refused connect is clean (reset, "
            "ECONNREFUSED at once) and the service can simply retry it.")
    burst_p = [r["teardown"]["platform"] for r in runs]
    burst_b = [r["teardown"]["baseline"] for r in runs]
    rp = med([t["client_retransmits"] / t["opened"] for t in burst_p if t["opened"]])
    rb = med([t["client_retransmits"] / t["opened"] for t in burst_b if t["opened"]])
    if rp > 0.5 or rb > 0.5:
        notes.append(
            f"- Closing all at once, the client retransmitted {rp:.1f} segments per connection on "
            f"the platform and {rb:.1f} on the conntrack-only path, and the kernel's input backlog "
            "(`net.core.netdev_max_backlog` per CPU, machine-wide `/proc/net/softnet_stat`) "
            f"dropped {rng(t['softnet_drops'] for t in burst_p)} / "
            f"{rng(t['softnet_drops'] for t in burst_b)} packets meanwhile: a burst of thousands "
            "of FINs is partly lost and recovered by TCP's retransmission timer, so that rate is "
            "set by the timer's backoff and varies a lot between runs"
            + ("; here the platform, whose path crosses more kernel queues (veths, TAYGA's tun), "
               "lost more of the burst" if rp > 1.5 * rb else "")
            + ". The batched rate is the steadier comparison.")
    lines += report_end(args.argv, notes)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (raising that needs CAP_SYS_RESOURCE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main() -> int:
    if "--agent" in sys.argv:
        i = sys.argv.index("--agent")
        ports = sys.argv[sys.argv.index("--agent-ports") + 1] if "--agent-ports" in sys.argv else ""
        return agent_main(sys.argv[i + 1], [int(p) for p in ports.split(",") if p])
    parser = argparse.ArgumentParser(
        description=helptext.paragraphs(__doc__, 0, 1),
        epilog="Results: benchmarks/results/capacity.md and capacity.json, unless --quick (then "
               "only where --out/--json say; nothing by default).")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: narrowed port range, small numbers, one run, nothing saved "
                             "unless --out/--json")
    parser.add_argument("--quick-ports", type=int, default=200,
                        help="Platform_IP ports per VM address+port in --quick (default 200)")
    parser.add_argument("--targets", default="cv1:7001,cv1:7002,cv2:7001,cv2:7002",
                        help="VM:port to fill in turn (default cv1:7001,cv1:7002,cv2:7001,cv2:7002)")
    parser.add_argument("--endpoints", type=int, default=3)
    parser.add_argument("--window", type=int, default=64, help="connects in flight")
    parser.add_argument("--stop-after", type=int, default=256,
                        help="refused connects since the last accepted one that end a fill")
    parser.add_argument("--limit", type=int, default=200_000, help="most connections per target")
    parser.add_argument("--fill-budget", type=float, default=120.0, help="seconds per target at most")
    parser.add_argument("--final-sample", type=int, default=5000,
                        help="held connections of each target checked again at the end")
    parser.add_argument("--teardown-n", type=int, default=10000,
                        help="connections closed on each path (one client process: < 19,800)")
    parser.add_argument("--teardown-timeout", type=float, default=90.0)
    parser.add_argument("--close-batch", type=int, default=256,
                        help="the batched tear-down closes this many, then waits for their FINs")
    parser.add_argument("--prefix", default=PREFIX, help=f"lab namespace prefix (default {PREFIX})")
    parser.add_argument("--run-dir", default=RUN_DIR, help=f"lab run directory (default {RUN_DIR})")
    parser.add_argument("--out", type=Path, help="Markdown results")
    parser.add_argument("--json", type=Path, help="JSON results")
    args = parser.parse_args()
    args.snat_ports = DEFAULT_PORTS
    if args.quick:
        args.runs = 1
        args.snat_ports = (20000, 20000 + args.quick_ports - 1)
        args.targets = "cv1:7001,cv1:7002,cv2:7001"
        args.stop_after, args.final_sample = 32, 100
        args.teardown_n = args.quick_ports * 3 // 8     # the narrowed range holds both sets
        args.close_batch = 16
    else:
        args.out = args.out or ROOT / "benchmarks" / "results" / "capacity.md"
        args.json = args.json or ROOT / "benchmarks" / "results" / "capacity.json"
    args.targets = [(t.split(":")[0], int(t.split(":")[1])) for t in args.targets.split(",")]
    args.notes = []
    if (code := start_run(args, "capacity.py")) is not None:
        return code
    if not re.fullmatch(r"v64[a-z0-9]*-", args.prefix):
        parser.error("--prefix must look like v64X-")
    nofile = raise_nofile()
    signal.signal(signal.SIGTERM, interrupted)
    started = datetime.now(UTC)
    note(f"capacity: {args.runs} run(s), targets "
         f"{', '.join(f'{v}:{p}' for v, p in args.targets)}, lab {args.prefix} in {args.run_dir}, "
         f"RLIMIT_NOFILE {nofile:,} per process")
    bench = Bench(args)
    runs: list[dict] = []
    try:
        for i in range(args.runs):
            note(f"run {i + 1} of {args.runs}: tear-down lab")
            bench.up()
            bench.teardown_setup()
            order = ["platform", "baseline"] if i % 2 == 0 else ["baseline", "platform"]
            td = {which: bench.teardown(which, i, None) for which in order}
            td.update({f"{which} batched": bench.teardown(which, i, args.close_batch)
                       for which in order})
            bench.down()
            note(f"run {i + 1} of {args.runs}: capacity lab")
            bench.up()
            cap = bench.capacity()
            bench.down()
            runs.append({"teardown": td, "capacity": cap})
    finally:
        bench.cleanup()
    args.load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = report(args, runs, started)
    print(text)
    result = {"started": started.isoformat(), "commit": args.commit, "machine": platform.node(),
              "cpus": os.cpu_count(), "argv": args.argv, "quick": args.quick,
              "snat_ports": list(args.snat_ports),
              "port_range": args.snat_ports[1] - args.snat_ports[0] + 1,
              "targets": [f"{v}:{p}" for v, p in args.targets], "endpoints": args.endpoints,
              "window": args.window, "teardown_n": args.teardown_n, "runs": runs}
    for path, body in ((args.out, text), (args.json, json.dumps(result, indent=1, default=str))):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            print(f"saved {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
