"""Traffic helpers shared by the end-to-end lab tests: echo servers in the VMs,
clients in the service endpoint's namespace, and reading a node's flows.

The VMs run :data:`ECHO_SERVER`: it answers with the VM's own name and the
peer address it saw (so a test checks at the endpoint which tenant's VM
answered and that it saw Platform_IP), on

- ``TCP_PORT``: one request, one answer, then close;
- ``UDP_PORT``: every datagram;
- ``LINE_PORT``: a long-lived TCP connection, one answer per line.

:func:`running_platform` brings a topology up with the controller, waits
until the switches are programmed and starts the echo servers; it takes
everything down again however the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from vnet64_lab import Lab, sh
from vnet64_lab.ovs import OvsNode

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
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.connect((addr, port))
        s.send(payload)
        data = s.recv(4096)
        out["reply"] = data.decode()
        out["peer"] = s.getpeername()[0]
except OSError as exc:
    out["error"] = type(exc).__name__
print(json.dumps(out))
"""

# A long-lived TCP connection: one line from stdin -> sent; the answer line -> stdout (JSON).
LINE_CLIENT = r"""
import json, socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((addr, port), timeout=5)
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
    """One TCP request or UDP datagram from ``source``: {"reply", "peer"} or {"error"}."""
    proc = in_ns(ns_of(plan, source), sys.executable, "-c", CLIENT, kind, addr, str(port),
                 payload, str(timeout), timeout=timeout + 20)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def answer(out: dict) -> tuple[str, str, str, str]:
    """(VM name, address seen by the VM, port seen by the VM, payload) of an echo reply."""
    assert "error" not in out, out
    name, seen, payload = out["reply"].split(" ", 2)
    addr, port = seen.rsplit(":", 1)
    return name, addr, port, payload


def ping(plan, addr: str, count: int = 3, source: str = "svc1") -> tuple[int, int]:
    """(transmitted, received) of ``ping -6`` from ``source`` to ``addr``."""
    proc = in_ns(ns_of(plan, source), "ping", "-6", "-n", "-c", str(count), "-i", "0.2",
                 "-W", "2", addr, timeout=count * 3 + 10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
    assert m, proc.stdout + proc.stderr
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


def controller_log(lab: Lab) -> Path:
    return lab.run_dir / "ctl" / "controller.log"


def start_echo_server(plan, vm: str) -> subprocess.Popen:
    proc = subprocess.Popen([sh.tool("ip"), "netns", "exec", ns_of(plan, vm), sys.executable,
                             "-c", ECHO_SERVER, vm], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@contextlib.contextmanager
def running_platform(lab: Lab, topology: str | Path):
    """(lab, plan): ``topology`` up with the controller, switches programmed, an echo
    server in every VM. Everything is stopped and taken down on exit."""
    lab.down()   # leftovers of an interrupted earlier run
    servers: list[subprocess.Popen] = []
    try:
        result = lab.up(topology)
        assert result["controller"].startswith("started"), result
        plan = lab.plan()
        ready = wait_for(lambda: programmed(plan))
        log = controller_log(lab)
        assert ready, f"controller did not program the switches:\n{log.read_text()[-3000:]}"
        for vm in plan.topology.vms:
            servers.append(start_echo_server(plan, vm.name))
        yield lab, plan
    finally:
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
        self.hello = self._read(10)
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
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()   # our own child, by its pid
                self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                f.close()
