"""Traffic through a running lab: echo servers in the VMs, clients in the service
endpoint's namespace, tcpdump captures inside lab namespaces, reading a node's
flows. Used by the end-to-end lab tests and by the demo (``vnet64_lab.demo``).

The VMs run :data:`ECHO_SERVER`: it answers with the VM's own name and the
peer address it saw (so a test checks at the endpoint which tenant's VM
answered and that it saw Platform_IP), on

- ``TCP_PORT``: one request, one answer, then close;
- ``UDP_PORT``: every datagram;
- ``LINE_PORT``: a long-lived TCP connection, one answer per line.

:func:`running_platform` brings a topology up with its controllers (one per
node, or the central one: the lab's control mode), waits until the switches are
programmed and starts the echo servers; it takes everything down again however
the ``with`` block ends (unless ``keep``). :func:`controller_log` is the log of
the controller serving a node, :func:`controller_log_text` all of them.

Failures raise :class:`TrafficError`, an ``AssertionError``, so a test that
calls a helper fails the way a plain ``assert`` would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from vnet64_lab import Lab, sh
from vnet64_lab.ovs import OvsNode



class TrafficError(AssertionError):
    """A helper could not do what it was asked (no answer, a process did not start...)."""


A6, B6 = "fd41::3930:1f:6600:a00:4", "fd41::3930:20:6600:a00:4"
SVC1 = "fd00:5e:1::10"
PLATFORM_IP = "100.100.0.1"
TCP_PORT, UDP_PORT, LINE_PORT, CLOSED_PORT = 8080, 8081, 8082, 9

ECHO_SERVER = r"""
import socket, sys, threading
name = sys.argv[1]
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", %(udp)d))
    while True:
        data, peer = s.recvfrom(4096)
        s.sendto(f"{name} {peer[0]}:{peer[1]} ".encode() + data, peer)
def lines(c, peer):
    buf = b""
    with c:
        while True:
            data = c.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                c.sendall(f"{name} {peer[0]}:{peer[1]} ".encode() + line + b"\n")
def line_server(l):
    while True:
        c, peer = l.accept()
        threading.Thread(target=lines, args=(c, peer), daemon=True).start()
def listener(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(512)
    return s
t, l = listener(%(tcp)d), listener(%(line)d)
threading.Thread(target=udp, daemon=True).start()
threading.Thread(target=line_server, args=(l,), daemon=True).start()
print("ready", flush=True)
while True:
    c, peer = t.accept()
    with c:
        data = c.recv(4096)
        c.sendall(f"{name} {peer[0]}:{peer[1]} ".encode() + data)
""" % {"udp": UDP_PORT, "tcp": TCP_PORT, "line": LINE_PORT}  # noqa: UP031  (the code has braces)

CLIENT = r"""
import json, socket, sys
kind, addr, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
timeout = float(sys.argv[5])
out = {}
try:
    if kind == "tcp":
        s = socket.create_connection((addr, port), timeout=timeout)
        s.sendall(payload)
        out["reply"] = s.recv(4096).decode()
        out["peer"] = s.getpeername()[0]
        out["local"] = s.getsockname()[1]
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.connect((addr, port))
        s.send(payload)
        data = s.recv(4096)
        out["reply"] = data.decode()
        out["peer"] = s.getpeername()[0]
        out["local"] = s.getsockname()[1]
except OSError as exc:
    out["error"] = type(exc).__name__
print(json.dumps(out))
"""

# A long-lived TCP connection: one line from stdin -> sent; the answer line -> stdout (JSON).
LINE_CLIENT = r"""
import json, socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((addr, port), timeout=10)   # a new pair's first SYN goes via the controller
except OSError as exc:
    print(json.dumps({"error": type(exc).__name__}), flush=True)
    sys.exit()
print(json.dumps({"local_port": s.getsockname()[1], "peer": s.getpeername()[0]}), flush=True)
buf = b""
for cmd in sys.stdin:
    out = {}
    try:
        s.sendall(cmd.encode())
        while b"\n" not in buf:
            data = s.recv(4096)
            if not data:
                raise ConnectionResetError("closed by the peer")
            buf += data
        line, buf = buf.split(b"\n", 1)
        out["reply"] = line.decode()
    except OSError as exc:
        out["error"] = type(exc).__name__
    print(json.dumps(out), flush=True)
"""


def in_ns(ns: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sh.tool("ip"), "netns", "exec", ns, *cmd], check=False,
                          capture_output=True, text=True, timeout=timeout)


def ns_of(plan, name: str) -> str:
    """The namespace of a VM or service endpoint."""
    return next(v.ns for v in plan.vifs if v.name == name)


def client(plan, kind: str, addr: str, port: int, payload: str = "hello",
           timeout: float = 3.0, source: str = "svc1") -> dict:
    """One TCP request or UDP datagram from ``source``: {"reply", "peer", "local"} (the
    client's own port) or {"error"}."""
    proc = in_ns(ns_of(plan, source), sys.executable, "-c", CLIENT, kind, addr, str(port),
                 payload, str(timeout), timeout=timeout + 20)
    if proc.returncode:
        raise TrafficError(f"client in {source} failed: {proc.stderr}")
    return json.loads(proc.stdout)


def answer(out: dict) -> tuple[str, str, str, str]:
    """(VM name, address seen by the VM, port seen by the VM, payload) of an echo reply."""
    if "error" in out:
        raise TrafficError(str(out))
    name, seen, payload = out["reply"].split(" ", 2)
    addr, port = seen.rsplit(":", 1)
    return name, addr, port, payload


def ping(plan, addr: str, count: int = 3, source: str = "svc1") -> tuple[int, int]:
    """(transmitted, received) of ``ping -6`` from ``source`` to ``addr``."""
    proc = in_ns(ns_of(plan, source), "ping", "-6", "-n", "-c", str(count), "-i", "0.2",
                 "-W", "2", addr, timeout=count * 3 + 10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
    if not m:
        raise TrafficError(proc.stdout + proc.stderr)
    return int(m.group(1)), int(m.group(2))


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return predicate()


def ovs_node(plan, node: str) -> OvsNode:
    n = plan.node(node)
    return OvsNode(n.name, n.ns, n.run_dir)


def flows(plan, node: str, *args: str) -> str:
    """``ovs-ofctl -O OpenFlow13 dump-flows br-int [ARGS]`` of a node."""
    return ovs_node(plan, node).ofctl("-O", "OpenFlow13", "dump-flows", "br-int", *args)


_COUNTERS = re.compile(r"(duration|n_packets|n_bytes|idle_age|hard_age)=[^,\s]+,?\s*")


def flow_lines(plan, node: str, *args: str) -> list[str]:
    """The flows of a node without their counters (comparable across dumps), sorted."""
    return sorted(_COUNTERS.sub("", line).strip()
                  for line in flows(plan, node, *args).splitlines()
                  if line.strip().startswith("cookie="))


# Drop reasons (controller pipeline.DROP_REASONS) the lab's own links feed whatever a test
# sends: the router solicitations and MLD reports of the endpoints', VMs' and translator
# namespaces' interfaces (link-local multicast, which no flow forwards)
LINK_NOISE_REASONS = frozenset({"not_to_platform", "vm_not_to_platform", "translator_multicast"})


def drop_flow_counts(plan, nodes: list[str]) -> dict[str, int]:
    """Packets each explicit drop flow (``actions=drop``: every table's miss, refused
    pairs, spoofed returns, ...) has dropped so far, by ``node: flow`` without counters,
    but for the flows of ``LINK_NOISE_REASONS``. Two readings subtracted say whether the
    platform's own flows dropped anything."""
    from vnet64.controller.pipeline import Cookie
    out = {}
    for node in nodes:
        for line in flows(plan, node).splitlines():
            line = line.strip()
            ck = re.match(r"cookie=(0x[0-9a-f]+)", line)
            try:
                noise = bool(ck) and Cookie.decode(int(ck.group(1), 16)).reason in LINK_NOISE_REASONS
            except ValueError:
                noise = False
            if line.startswith("cookie=") and re.search(r"actions=drop$", line) and not noise:
                n = re.search(r"n_packets=(\d+)", line)
                out[f"{node}: {_COUNTERS.sub('', line).strip()}"] = int(n.group(1)) if n else 0
    return out


PAIR_TABLE = 20
_PAIR_FLOW = re.compile(r"cookie=(0x[0-9a-f]+).*ipv6_src=([0-9a-f:]+),ipv6_dst=([0-9a-f:]+)"
                        r".*nat\(src=([0-9a-f:.]+)\)")


def pair_flows(plan, node: str) -> dict[tuple[str, str], tuple[int, str]]:
    """(service IPv6, VM IPv6) -> (cookie, SNAT address) of the pair flows in ``pair``."""
    out = {}
    for line in flows(plan, node, f"table={PAIR_TABLE}").splitlines():
        m = _PAIR_FLOW.search(line)
        if m:
            out[(m.group(2), m.group(3))] = (int(m.group(1), 16), m.group(4))
    return out


def programmed(plan) -> bool:
    """Every subscribed VM routed by the appliance and steered on its host; every
    endpoint known on its host."""
    from vnet64.controller.model import from_topology
    model = from_topology(plan.topology)
    dumps: dict[str, str] = {}

    def has(node: str, text: str) -> bool:
        if node not in dumps:
            dumps[node] = flows(plan, node)
        return text in dumps[node]
    return (all(has(model.appliance, str(vm.ipv6)) and has(vm.host, str(vm.ipv6))
                for vm in model.vms if vm.subscribed)
            and all(has(ep.host, str(ep.ipv6)) for ep in model.endpoints))


def controller_log(lab: Lab, node: str | None = None) -> Path:
    """The log of the controller serving ``node``: its own (a controller per node) or
    the central one (which needs no node)."""
    return lab.controller_log(node)


def controller_logs(lab: Lab) -> list[Path]:
    """Every controller's log: one per node, or the central one."""
    return [c.log for c in lab.controllers()]


def controller_log_marks(lab: Lab) -> dict[Path, int]:
    """Where every controller's log ends now (for :func:`controller_log_text`)."""
    return {log: log.stat().st_size if log.exists() else 0 for log in controller_logs(lab)}


def controller_log_text(lab: Lab, since: dict[Path, int] | None = None) -> str:
    """Every controller's log (what each wrote after ``since``, from
    :func:`controller_log_marks`), one after the other. Each line of a switch names
    its node (``[host1 <dpid>] ...``), so a search for a node's lines works in both
    control modes."""
    out = []
    for log in controller_logs(lab):
        try:
            data = log.read_bytes()
        except OSError:
            continue
        out.append(data[(since or {}).get(log, 0):].decode(errors="replace"))
    return "".join(text if text.endswith("\n") or not text else text + "\n" for text in out)


def start_echo_server(plan, vm: str, detach: bool = False) -> subprocess.Popen:
    """:data:`ECHO_SERVER` in ``vm``'s namespace; ``detach``: in its own session and
    holding none of its starter's file descriptors (it outlives its starter and a
    Ctrl-C, and whoever reads the starter's output sees it end; ``Lab.down`` stops it
    with the namespace)."""
    quiet = {"stdin": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} if detach else {}
    proc = subprocess.Popen([sh.tool("ip"), "netns", "exec", ns_of(plan, vm), sys.executable,
                             "-c", ECHO_SERVER, vm], stdout=subprocess.PIPE, text=True,
                            start_new_session=detach, **quiet)
    line = proc.stdout.readline().strip()
    if detach:
        proc.stdout.close()
    if line != "ready":
        raise TrafficError(f"echo server in {vm} did not start (said {line!r})")
    return proc


@contextlib.contextmanager
def running_platform(lab: Lab, topology: str | Path, keep: bool = False):
    """(lab, plan): ``topology`` up with the controller, switches programmed, an echo
    server in every VM. Everything is stopped and taken down on exit, however the block
    ends - unless ``keep``: then the lab and the (detached) echo servers stay up."""
    lab.down()   # leftovers of an interrupted earlier run
    servers: list[subprocess.Popen] = []
    try:
        result = lab.up(topology)
        if not result["controller"].startswith("started"):
            raise TrafficError(f"the lab did not start the controller: {result}")
        plan = lab.plan()
        ready = wait_for(lambda: programmed(plan))
        if not ready:
            tails = "\n".join(f"== {log}\n{log.read_text(errors='replace')[-3000:]}"
                              for log in controller_logs(lab) if log.exists())
            raise TrafficError(f"the controllers did not program the switches:\n{tails}")
        for vm in plan.topology.vms:
            servers.append(start_echo_server(plan, vm.name, detach=keep))
        yield lab, plan
    finally:
        if not keep:
            for proc in servers:
                proc.terminate()   # our own children, by pid
                proc.wait(5)
            lab.down()


class LineSession:
    """A long-lived TCP connection from an endpoint to a VM's ``LINE_PORT``."""

    def __init__(self, plan, addr: str, port: int = LINE_PORT, source: str = "svc1"):
        self.proc = subprocess.Popen(
            [sh.tool("ip"), "netns", "exec", ns_of(plan, source), sys.executable, "-c",
             LINE_CLIENT, addr, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1)
        self.hello = self._read(15)
        if "error" in self.hello:
            self.close()
            raise AssertionError(f"could not connect to [{addr}]:{port}: {self.hello}")

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return {"error": f"no answer within {timeout:g}s"}
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"client exited: {self.proc.stderr.read()}"}
        return json.loads(line)

    def send(self, line: str, timeout: float = 10) -> dict:
        """Send one line; the answer ({"reply"} or {"error"})."""
        self.write(line)
        return self.read(timeout)

    def write(self, line: str) -> None:
        """Send one line without waiting for its answer (``read()`` takes it later)."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 10) -> dict:
        """The answer to the line ``write()`` sent ({"reply"} or {"error"})."""
        return self._read(timeout)

    def close(self) -> None:
        end_child(self.proc)


def end_child(proc: subprocess.Popen) -> None:
    """End a line-speaking child we started: its stdin closed (it finishes on EOF), then
    killed by its pid if it has not within 5 s; its pipes closed."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()   # our own child, by its pid
            proc.wait(5)
    for f in (proc.stdout, proc.stderr):
        with contextlib.suppress(OSError):
            f.close()


class Capture:
    """tcpdump inside a namespace, started (and listening) before anything is sent.

    ``count``: stop after that many packets (``None``: run until :meth:`stop`).
    ``extra``: more tcpdump options, e.g. ``("-w", path, "-U")`` for a pcap file.
    """

    def __init__(self, ns: str, iface: str, bpf: str, count: int | None = 1, extra: tuple = ()):
        self.ns, self.iface = ns, iface
        self.proc = subprocess.Popen(
            [sh.tool("ip"), "netns", "exec", ns, "tcpdump", "-i", iface, "-nn", "-l", "-e",
             *(("-c", str(count)) if count else ()), *extra, *([bpf] if bpf else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._wait_listening(5.0)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.1)
            if ready:  # raw reads: a buffered readline could hide the line select saw
                chunk = os.read(self.proc.stderr.fileno(), 4096).decode(errors="replace")
                seen += chunk
                if "listening on" in seen:
                    return
                if not chunk and self.proc.poll() is not None:
                    break
        self.stop()
        raise TrafficError(f"tcpdump on {self.iface} in {self.ns} did not start: {seen.strip()}")

    def done(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> str:
        """Stop tcpdump; its output. What it said on stderr at the end (its packet counts)
        is kept in ``self.summary``; ``dropped()`` reads the kernel's drops from it."""
        if self.proc.poll() is None:
            self.proc.terminate()  # our own child, by its pid
        out, self.summary = self.proc.communicate(timeout=5)
        return out

    def dropped(self) -> int | None:
        """Packets the kernel dropped before tcpdump read them (None: not reported)."""
        m = re.search(r"(\d+) packets? dropped by kernel", getattr(self, "summary", "") or "")
        return int(m.group(1)) if m else None

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def until_captured(caps: list[Capture], send, timeout: float = 5.0) -> list[str]:
    """Call ``send()`` until every capture has its packets (polling, no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    interval = 0.05
    while True:
        send()
        if all(c.done(interval) for c in caps) or time.monotonic() > deadline:
            break
        interval = min(interval * 2, 0.5)
    return [c.stop() for c in caps]
