"""Sustained load (issue 4): svc1 opens 1,000 new TCP connections per second to a-vm1
for two minutes through its platform IPv6 address.

Each connection is one request, one answer, and the VM closes first (like an HTTP/1.0
server), so a-vm1 holds every connection in TIME_WAIT for 60 s, while svc1 (closing
second, so holding none) reuses its own source ports within seconds (docs/lab.md: median
5.75 s at this rate). A reused service port re-opens a connection that every conntrack
zone on the way still holds as closed: the platform must give it its old Platform_IP
port back - the VM's TIME_WAIT socket for that port belongs to this very service port
and accepts the new SYN (its timestamps only grew) - and must never give a port the VM
still holds to another service port, whose SYN the VM would refuse (PAWS) and which
would stall. The client (``vnet64_lab.connload``) paces connections open loop and
retries nothing.

OVS 3.1's userspace conntrack gets the re-open wrong (another port each time); the lab
runs ovs-vswitchd with vnet64's patch (``ovs-setup/patches/``, built by
``scripts/build-ovs.sh``). On the system's unpatched build, both tests here fail.

Asserted on the real packets, first the property: no connection failed, no SYN was
rejected by a TIME_WAIT socket (the VM's ``PAWSTimewait``), no packet was dropped by the
platform's drop flows on the way (host2, appliance, host1), and the VM answered every
SYN it received with a SYN-ACK. A SYN the service had to send again (the kernel's
``TCPSynRetrans``) is not a failure in itself: on a shared 2-core machine a scheduling
hiccup delays a burst of SYNs past the 1 s retransmission timer. Captures at both ends,
joined by each SYN's sequence number (``connload.syn_fates``), tell what became of each
one: answered late, first copy late or lost on the way (reported; with the platform's
drop flows silent, a lost copy was a full queue), or refused by the VM - the port-reuse
stall, which fails the test. Then that the run was the case asked for: every
connection started on schedule, every one the VM answered came from Platform_IP, most
met a TIME_WAIT socket of their Platform_IP port at the VM.

Without the conntrack patch (measured, ``VNET64_OVS_VSWITCHD`` naming a build with only
the other patch): 16,747 of 120,000 connections failed, 50,369 PAWS rejections, 7,216
SYNs refused by the VM; the re-open test saw five Platform_IP ports.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest
from vnet64_lab import connload, sh
from vnet64_lab.plan import VM_IF
from vnet64_lab.traffic import (A6, PLATFORM_IP, Capture, drop_flow_counts, in_ns, ns_of,
                                running_platform)

from tests.lab.conftest import ROOT, need_lab, new_lab

RATE, SECONDS = 1000, 120
PATH = ["host2", "appliance", "host1"]   # svc1's host, the appliance, a-vm1's host
PORT = 7000

# svc1: N connections to ADDR PORT one after another, all from source port SPORT; each
# one request, the answer, close after the server's FIN (svc1 then holds no TIME_WAIT)
REOPEN_CLIENT = r"""
import json, socket, sys, time
from vnet64_lab.connload import netstat
addr, port, sport, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
before, conns = netstat("TCPSynRetrans"), []
for _ in range(n):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", sport))
    s.settimeout(10)
    t0 = time.monotonic()
    s.connect((addr, port))
    ms = (time.monotonic() - t0) * 1000
    s.sendall(b"GET\n")
    answer = b""
    while chunk := s.recv(64):
        answer += chunk
    s.close()
    conns.append({"connect_ms": round(ms, 2), "answer": answer.decode()})
    time.sleep(0.5)
print(json.dumps({"conns": conns, "syn_retransmits": netstat("TCPSynRetrans") - before}))
"""


def paws_timewait(ns: str) -> int:
    """The kernel's PAWSTimewait in ``ns``: segments a TIME_WAIT socket rejected (PAWS)."""
    proc = in_ns(ns, sys.executable, "-c",
                 "from vnet64_lab.connload import netstat; print(netstat('PAWSTimewait'))")
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


def time_wait(ns: str) -> int:
    proc = in_ns(ns, sh.tool("ss"), "-Htan", "state", "time-wait")
    return len(proc.stdout.splitlines())


@pytest.fixture(scope="module")
def platform():
    need_lab()
    with running_platform(new_lab("l"), ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        yield plan


@contextlib.contextmanager
def connload_server(plan, vm: str):
    """``vnet64_lab.connload server`` in ``vm``; the dict it yields gets the server's
    JSON summary when the block ends (the server is stopped by its pid)."""
    server = subprocess.Popen([sh.tool("ip"), "netns", "exec", ns_of(plan, vm), sys.executable,
                               "-m", "vnet64_lab.connload", "server", str(PORT)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict = {}
    try:
        assert server.stdout.readline().strip() == "ready", server.stderr.read()
        yield seen
    finally:
        server.terminate()      # our own child, by its pid: it prints what it saw
        out, err = server.communicate(timeout=30)
    lines = out.strip().splitlines()
    assert lines, f"the connload server printed nothing: {err}"
    seen.update(json.loads(lines[-1]))


def test_a_reopened_connection_keeps_its_platform_port(platform):
    """Five connections from svc1's port 40123, one after another: the VM sees all five
    from one Platform_IP port, each new SYN accepted by the TIME_WAIT socket the previous
    one left."""
    plan, n = platform, 5
    vm_ns, svc_ns = ns_of(plan, "a-vm1"), ns_of(plan, "svc1")
    vm_before = paws_timewait(vm_ns)
    with connload_server(plan, "a-vm1") as seen:
        proc = in_ns(svc_ns, sys.executable, "-c", REOPEN_CLIENT, A6, str(PORT), "40123", str(n),
                     timeout=60)
        assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    paws_tw = paws_timewait(vm_ns) - vm_before
    print(f"\nre-open: {json.dumps(result)}\nVM: {json.dumps(seen)}; PAWS rejections {paws_tw}")

    assert [c["answer"] for c in result["conns"]] == ["OK\n"] * n
    assert seen["answered"] == n and seen["peers"] == [PLATFORM_IP]
    assert seen["on_time_wait"] == n - 1, f"not every SYN met the previous TIME_WAIT socket: {seen}"
    assert seen["peer_ports"] == 1, \
        f"the re-opened connections came from {seen['peer_ports']} Platform_IP ports, not one"
    # a SYN sent again here would be the slow machine's, not the platform's (the big test
    # tells the two apart): reported above, not failed on
    assert paws_tw == 0, f"the VM's TIME_WAIT sockets rejected {paws_tw} SYNs (PAWS)"


@contextlib.contextmanager
def syn_captures(plan, directory):
    """pcap files of svc1's outgoing SYNs and a-vm1's SYNs, SYN-ACKs and resets, for
    ``connload.syn_fates``; the dict it yields gets ``fates`` when the block ends (and
    ``capture_drops``: packets the kernel dropped before tcpdump read them)."""
    paths = {"svc1": str(directory / "svc1-syns.pcap"), "a-vm1": str(directory / "a-vm1-syns.pcap")}
    bpfs = {"svc1": connload.CLIENT_SYN_BPF.format(port=PORT),
            "a-vm1": connload.SERVER_SYN_BPF.format(port=PORT)}
    caps, out = [], {}
    try:
        for name in ("svc1", "a-vm1"):
            caps.append(Capture(ns_of(plan, name), VM_IF, bpfs[name], count=None,
                                extra=("-w", paths[name], "-B", "16384", "-s", "128")))
        yield out
    finally:
        for cap in caps:
            cap.stop()
    out["capture_drops"] = sum(cap.dropped() or 0 for cap in caps)
    out["fates"] = connload.syn_fates(paths["svc1"], paths["a-vm1"])


def brief(entries: list[dict], n: int = 5) -> str:
    return "; ".join(f"svc1 port {e['sport']}: sent at {e['sent']} s, VM got {e['arrived']}, "
                     f"SYN-ACK {e['synack']}" for e in entries[:n])


def test_a_thousand_new_tcp_connections_per_second_for_two_minutes(platform, tmp_path):
    plan = platform
    vm_ns, svc_ns = ns_of(plan, "a-vm1"), ns_of(plan, "svc1")
    vm_before = paws_timewait(vm_ns)
    drops_before = drop_flow_counts(plan, PATH)
    with syn_captures(plan, tmp_path) as syns, connload_server(plan, "a-vm1") as seen:
        client = in_ns(svc_ns, sys.executable, "-m", "vnet64_lab.connload", "client", A6,
                       str(PORT), "--rate", str(RATE), "--seconds", str(SECONDS),
                       timeout=SECONDS + 120)
        assert client.returncode == 0, client.stderr
        result = json.loads(client.stdout)
        vm_after = paws_timewait(vm_ns)
        held = time_wait(vm_ns)
    paws_tw = vm_after - vm_before
    dropped = {flow: n - drops_before.get(flow, 0)
               for flow, n in drop_flow_counts(plan, PATH).items() if n > drops_before.get(flow, 0)}
    fates = syns["fates"]
    slow = fates["answered_late"] + fates["first_copy_late"] + fates["first_copy_lost"]
    print(f"\nsustained load: {json.dumps(result)}\nVM: answered {seen['answered']} from "
          f"{seen['peers']} on {seen['peer_ports']} distinct ports, {seen['on_time_wait']} of "
          f"them on a TIME_WAIT socket of their port; TIME_WAIT sockets at the end {held}; "
          f"segments rejected by a TIME_WAIT socket (PAWS) {paws_tw}\n"
          f"SYNs: svc1 sent {fates['syns_sent']} for {fates['connections']} connections "
          f"({fates['sent_again']} sent again), the VM got {fates['server_got']} and answered "
          f"all but {fates['server_refused']} with a SYN-ACK; captures lost "
          f"{syns['capture_drops']} packets; the platform's drop flows dropped "
          f"{sum(dropped.values())} packets\n"
          f"SYNs sent again: {len(fates['answered_late'])} answered late, "
          f"{len(fates['first_copy_late'])} with the first copy late and "
          f"{len(fates['first_copy_lost'])} with it lost on the way (a slow path: reported, "
          f"not failed on), {len(fates['refused'])} refused by the VM, "
          f"{len(fates['never_arrived'])} never arrived")
    if slow:
        spread = [e["at"] for e in slow]
        print(f"  slow-path retransmits within {max(spread) - min(spread):.2f} s: {brief(slow)}")

    # the property: nothing failed, nothing refused because of port reuse, nothing dropped
    # by the platform's flows (a SYN lost on the way was then a full queue: the machine, not
    # vnet64). A pair refused for want of ports is dropped for 5 s by a flow that is gone
    # when the counters are read, but its first SYN was answered with a reset: failed.
    assert not result["failed"], (
        f"{result['failed']} of {result['started']} connections failed ({result['errors']}; "
        f"by start time: {result['failed_by_start']}); connect time p99 "
        f"{result['connect_ms']['p99']} ms")
    assert not paws_tw, f"the VM's TIME_WAIT sockets rejected {paws_tw} SYNs (PAWS): port reuse"
    assert not dropped, f"the platform's flows dropped packets during the run: {dropped}"
    if syns["capture_drops"]:
        # without every packet, a missing SYN-ACK proves nothing: the checks above decide
        print(f"  the captures lost {syns['capture_drops']} packets: SYN fates not asserted")
    else:
        assert not fates["refused"] and not fates["server_refused"], (
            f"the VM refused SYNs (port reuse): {fates['server_refused']} received SYNs got "
            f"no SYN-ACK; retransmitted and refused: {brief(fates['refused'])}")
    # and that it was the case asked for
    assert result["started"] == RATE * SECONDS, "the client did not keep the schedule"
    assert seen["peers"] == [PLATFORM_IP], f"the VM saw sources other than Platform_IP: {seen}"
    assert result["answered"] <= seen["answered"], "answers the VM never sent"
    assert seen["on_time_wait"] > RATE * SECONDS // 2 and held > RATE, \
        f"few new connections met a TIME_WAIT socket at the VM: not the case asked for ({seen})"
