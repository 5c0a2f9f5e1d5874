"""Edges of the data path on real OVS + TAYGA: full-size packets and ICMP errors from
the service side, the meter on the packet-in path.

(The basic exchanges are in test_datapath.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from vnet64.controller.pipeline import PACKET_IN_METER
from vnet64_lab import sh
from vnet64_lab.ovs import OvsNode
from vnet64_lab.traffic import ns_of, programmed, wait_for

from tests.lab.conftest import ROOT, need_lab, new_lab
from tests.lab.traffic import meter_drops, tunnel_token

A6 = "fd41::3930:1f:6600:a00:4"
BULK_PORT, BIG_UDP_PORT, LATE_UDP_PORT = 9001, 9002, 9003
BULK_BYTES = 2_000_000

VM_SERVERS = r"""
import socket, sys, threading, time
MTU = int(sys.argv[1])
def bulk():
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", %(bulk)d)); t.listen(16)
    while True:
        c, _ = t.accept()
        got = 0
        while True:
            d = c.recv(65536)
            if not d:
                break
            got += len(d)
        c.sendall(str(got).encode().ljust(16) + b"v" * %(bulk_bytes)d)
        c.close()
def big_udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", %(big)d))
    while True:
        _, peer = s.recvfrom(100)
        s.sendto(b"u" * (MTU - 28), peer)       # the largest datagram the VM's MTU allows
def late_udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", %(late)d))
    _, peer = s.recvfrom(100)
    s.connect(peer)
    s.send(b"first")
    time.sleep(1.0)                             # the service closes its socket meanwhile
    s.send(b"second")
    s.settimeout(3)
    try:
        s.recv(100)
        print("late: answered", flush=True)
    except ConnectionRefusedError:
        print("late: refused", flush=True)
    except OSError as exc:
        print(f"late: {type(exc).__name__}", flush=True)
for f in (bulk, big_udp, late_udp):
    threading.Thread(target=f, daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(3600)
""" % {"bulk": BULK_PORT, "big": BIG_UDP_PORT, "late": LATE_UDP_PORT, "bulk_bytes": BULK_BYTES}

SERVICE = r"""
import json, socket, sys
kind, addr = sys.argv[1], sys.argv[2]
out = {}
try:
    if kind == "bulk":
        s = socket.create_connection((addr, %(bulk)d), timeout=10)
        s.sendall(b"s" * 1_000_000)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        out["vm_got"] = int(data[:16])
        out["service_got"] = len(data) - 16
    elif kind == "big_udp":
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(3)
        s.sendto(b"?", (addr, %(big)d))
        out["size"] = len(s.recv(65536))
    elif kind == "late_udp":
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(3)
        s.sendto(b"?", (addr, %(late)d))
        out["first"] = s.recv(100).decode()
        s.close()                                # the VM's "second" now meets a closed port
except OSError as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
""" % {"bulk": BULK_PORT, "big": BIG_UDP_PORT, "late": LATE_UDP_PORT}


def service(plan, kind: str) -> dict:
    proc = subprocess.run([sh.tool("ip"), "netns", "exec", ns_of(plan, "svc1"), sys.executable,
                           "-c", SERVICE, kind, A6], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def platform():
    need_lab()
    lab = new_lab("e")
    lab.down()
    server = None
    try:
        lab.up(ROOT / "topologies" / "two-tenants.yaml")
        plan = lab.plan()
        assert wait_for(lambda: programmed(plan)), "the controller did not program the switches"
        vm = next(v for v in plan.vifs if v.name == "a-vm1")
        server = subprocess.Popen([sh.tool("ip"), "netns", "exec", vm.ns, sys.executable, "-c",
                                   VM_SERVERS, str(vm.mtu)], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        yield lab, plan, server
    finally:
        if server is not None:
            server.terminate()   # our own child, by pid
            server.wait(5)
        lab.down()


def test_bulk_tcp_both_ways_crosses_translation_and_geneve_without_loss(platform):
    """Full-size segments both ways: MTUs leave room for +20 bytes of IPv6 and Geneve."""
    _, plan, _ = platform
    out = service(plan, "bulk")
    assert out.get("vm_got") == 1_000_000, out
    assert out.get("service_got") == BULK_BYTES, out


def test_largest_vm_datagram_reaches_the_service_whole(platform):
    """A datagram filling the VM's IPv4 MTU becomes 20 bytes bigger in IPv6 and still fits."""
    _, plan, _ = platform
    vm = next(v for v in plan.vifs if v.name == "a-vm1")
    out = service(plan, "big_udp")
    assert out.get("size") == vm.mtu - 28, out


def test_icmp_error_from_the_service_reaches_the_vms_connected_socket(platform):
    """The reverse direction of ICMP errors: service port closed -> the VM's socket is refused."""
    _, plan, server = platform
    out = service(plan, "late_udp")
    assert out.get("first") == "first", out
    line = server.stdout.readline().strip()
    assert line == "late: refused", f"the VM's socket did not get the service's ICMP error: {line}"


FLOOD = r"""
import os, socket, struct, sys, time
host1, vm6, seconds = sys.argv[1], socket.inet_pton(socket.AF_INET6, sys.argv[2]), float(sys.argv[3])
token = int(sys.argv[4], 16)
geneve = struct.pack("!BBHI", 2, 0, 0x6558, 0x6464 << 8)          # 2 words of options, TEB, VNI 0x6464
geneve += struct.pack("!HBBI", 0xFFFF, 0x64, 1, token)            # the tunnel token's option
eth = bytes.fromhex("020000000002" "020000000001") + struct.pack("!H", 0x86DD)
udp = struct.pack("!HHHH", 1234, 80, 8, 0)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    src = socket.inet_pton(socket.AF_INET6, "fd00:5e:1::") [:12] + os.urandom(4)
    ip6 = struct.pack("!IHBB", 6 << 28, 8, 17, 64) + src + vm6
    s.sendto(geneve + eth + ip6 + udp, (host1, 6081))
    sent += 1
print(sent)
"""


def test_a_flood_of_new_pairs_is_metered_and_the_controller_stays_responsive(platform):
    """Forged first packets of unknown pairs (from the appliance's address, so they reach
    host1's pair table) are dropped by the meter beyond its rate; a legitimate new pair
    set up during the flood still works."""
    lab, plan, _ = platform
    host1 = plan.node("host1")
    node = OvsNode(host1.name, host1.ns, host1.run_dir)
    # The controller's meter admits 5,000 packet-ins/s; a loaded 2-core machine may not
    # even deliver that many forged packets. Lower the band for this test so "the
    # excess" exists whatever the load (the meter, not its rate, is under test).
    node.ofctl("-O", "OpenFlow13", "mod-meter", "br-int",
               "meter=1,pktps,burst,band=type=drop,rate=200,burst_size=20")
    flood = subprocess.Popen([sh.tool("ip"), "netns", "exec", plan.node("appliance").ns,
                              sys.executable, "-c", FLOOD, str(host1.underlay_ip.ip), A6, "4",
                              tunnel_token(plan)],
                             stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)   # let the flood build up before the legitimate pair (no sync needed)
        out = service(plan, "bulk")      # a-vm1's pair may be new or old: either way it must work
        assert out.get("service_got") == BULK_BYTES, out
    finally:
        sent = int(flood.communicate(timeout=30)[0].strip() or 0)
    dropped = meter_drops(plan, "host1")
    assert sent > 5000, f"the flood only sent {sent} packets"
    assert dropped.get(PACKET_IN_METER, 0) > 0, f"the new pairs' meter dropped nothing: {dropped}"
    assert lab.controller_pid("host1"), "host1's controller died under the flood"
    assert "Traceback" not in lab.controller_log("host1").read_text()
