"""The platform end to end on the default topology: real OVS, Geneve, conntrack, TAYGA
and the controller, with packets checked where they arrive.

svc1 (IPv6 only, on host2) opens TCP, UDP and ping to a-vm1 and b-vm1 (both
10.0.0.4, in different VNets, on host1) through their platform IPv6
addresses. The VMs run small echo servers that answer with their own name and
the peer address they saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from vnet64_lab import sh
from vnet64_lab.ovs import OvsNode

from tests.lab.conftest import ROOT, Capture, need_lab, new_lab
from vnet64.nb import api as nbapi

A6, B6 = "fd41::3930:1f:6600:a00:4", "fd41::3930:20:6600:a00:4"
SVC1 = "fd00:5e:1::10"
PLATFORM_IP = "100.100.0.1"
TCP_PORT, UDP_PORT, CLOSED_PORT = 8080, 8081, 9

ECHO_SERVER = r"""
import socket, sys, threading
name = sys.argv[1]
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", %(udp)d))
    while True:
        data, peer = s.recvfrom(4096)
        s.sendto(f"{name} {peer[0]}:{peer[1]} ".encode() + data, peer)
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", %(tcp)d))
t.listen(512)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, peer = t.accept()
    with c:
        data = c.recv(4096)
        c.sendall(f"{name} {peer[0]}:{peer[1]} ".encode() + data)
""" % {"udp": UDP_PORT, "tcp": TCP_PORT}

CLIENT = r"""
import json, socket, sys
kind, addr, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
out = {}
try:
    if kind == "tcp":
        s = socket.create_connection((addr, port), timeout=3)
        s.sendall(payload)
        out["reply"] = s.recv(4096).decode()
        out["peer"] = s.getpeername()[0]
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.connect((addr, port))
        s.send(payload)
        data = s.recv(4096)
        out["reply"] = data.decode()
        out["peer"] = s.getpeername()[0]
except OSError as exc:
    out["error"] = type(exc).__name__
print(json.dumps(out))
"""


def in_ns(ns: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sh.tool("ip"), "netns", "exec", ns, *cmd], capture_output=True,
                          text=True, timeout=timeout)


def client(plan, kind: str, addr: str, port: int, payload: str = "hello") -> dict:
    ns = next(v.ns for v in plan.vifs if v.name == "svc1")
    proc = in_ns(ns, sys.executable, "-c", CLIENT, kind, addr, str(port), payload)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return predicate()


def flows(plan, node: str) -> str:
    n = plan.node(node)
    return OvsNode(n.name, n.ns, n.run_dir).ofctl("-O", "OpenFlow13", "dump-flows", "br-int")


@pytest.fixture(scope="module")
def platform():
    """The default topology up, with the controller, and echo servers in both VMs."""
    need_lab()
    lab = new_lab("d")
    lab.down()
    servers: list[subprocess.Popen] = []
    try:
        result = lab.up(ROOT / "topologies" / "two-tenants.yaml")
        assert result["controller"].startswith("started"), result
        plan = lab.plan()
        ready = wait_for(lambda: all(A6 in flows(plan, n) or n == "host2" for n in ("host1", "appliance"))
                         and "fd00:5e:1::10" in flows(plan, "host2"))
        log = (lab.run_dir / "ctl" / "controller.log")
        assert ready, f"controller did not program the switches:\n{log.read_text()[-3000:]}"
        for vm in ("a-vm1", "b-vm1"):
            ns = next(v.ns for v in plan.vifs if v.name == vm)
            proc = subprocess.Popen([sh.tool("ip"), "netns", "exec", ns, sys.executable, "-c",
                                     ECHO_SERVER, vm], stdout=subprocess.PIPE, text=True)
            servers.append(proc)
            assert proc.stdout.readline().strip() == "ready"
        yield lab, plan
    finally:
        for proc in servers:
            proc.terminate()   # our own children, by pid
            proc.wait(5)
        lab.down()


@pytest.mark.parametrize("vm, addr", [("a-vm1", A6), ("b-vm1", B6)])
def test_tcp_from_the_service_reaches_the_right_vm_from_platform_ip(platform, vm, addr):
    _, plan = platform
    out = client(plan, "tcp", addr, TCP_PORT, f"to-{vm}")
    assert "error" not in out, out
    name, seen, payload = out["reply"].split(" ", 2)
    assert name == vm, "the packet reached the wrong tenant's VM"
    assert seen.split(":")[0] == PLATFORM_IP, f"{vm} saw {seen}, not Platform_IP"
    assert payload == f"to-{vm}"
    assert out["peer"] == addr


@pytest.mark.parametrize("vm, addr", [("a-vm1", A6), ("b-vm1", B6)])
def test_udp_from_the_service_gets_the_vms_answer(platform, vm, addr):
    _, plan = platform
    out = client(plan, "udp", addr, UDP_PORT, "ping-udp")
    assert "error" not in out, out
    name, seen, _ = out["reply"].split(" ", 2)
    assert name == vm and seen.startswith(PLATFORM_IP + ":")
    assert out["peer"] == addr


@pytest.mark.parametrize("addr", [A6, B6])
def test_ping_from_the_service(platform, addr):
    _, plan = platform
    ns = next(v.ns for v in plan.vifs if v.name == "svc1")
    proc = in_ns(ns, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", addr)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_closed_udp_port_on_the_vm_refuses_the_services_connected_socket(platform):
    _, plan = platform
    out = client(plan, "udp", A6, CLOSED_PORT)
    assert out.get("error") == "ConnectionRefusedError", out


def test_return_path_skips_the_appliance(platform):
    _, plan = platform
    fabric_if = {n.name: n.fabric_if for n in plan.nodes}
    host1 = str(plan.node("host1").underlay_ip.ip)
    with Capture(plan.fabric_ns, fabric_if["appliance"], f"udp port 6081 and src host {host1}",
                 count=1) as via_appliance, \
            Capture(plan.fabric_ns, fabric_if["host2"], f"udp port 6081 and src host {host1}",
                    count=1) as direct:
        out = client(plan, "tcp", A6, TCP_PORT)
        assert "error" not in out, out
        assert direct.done(5), "no return traffic from host1 reached host2 directly"
        assert not via_appliance.done(0.5), "return traffic went through the appliance"


def test_unsubscribe_cuts_the_pair_and_resubscribe_restores_it(platform):
    lab, plan = platform
    api = nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock")
    try:
        assert "error" not in client(plan, "tcp", A6, TCP_PORT)
        api.unsubscribe("a-vm1", "analytics")
        cut = wait_for(lambda: A6 not in flows(plan, "appliance"), timeout=5)
        assert cut, "the appliance still routes the unsubscribed VM"
        assert client(plan, "tcp", A6, TCP_PORT).get("error"), "unsubscribed VM still reachable"
        assert "error" not in client(plan, "tcp", B6, TCP_PORT), "the other tenant was affected"
        api.subscribe("a-vm1", "analytics")
        assert wait_for(lambda: A6 in flows(plan, "appliance"), timeout=5)
        assert "error" not in client(plan, "tcp", A6, TCP_PORT)
    finally:
        api.subscribe("a-vm1", "analytics", may_exist=True)
        api.close()


def test_closed_connections_hold_their_platform_port_longer_than_the_vms_time_wait(platform):
    """DESIGN §4b "Ports": the VNet zone keeps TIME_WAIT entries > 60 s (Linux's TIME_WAIT)."""
    _, plan = platform
    assert "error" not in client(plan, "tcp", A6, TCP_PORT)
    n = plan.node("host1")
    node = OvsNode(n.name, n.ns, n.run_dir)
    entries = [line for line in node.appctl("dpctl/dump-conntrack", "-s", "zone=1").splitlines()
               if "TIME_WAIT" in line and "100.100.0.1" in line]
    assert entries, "no closed connection in a-vm1's VNet zone"
    timeouts = [int(line.split("timeout=")[1].split(",")[0]) for line in entries]
    assert max(timeouts) > 60, entries
