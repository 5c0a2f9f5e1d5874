"""TCP simultaneous open through the platform (issue 19, deviation 4; RFC 6146 3.5.2.2,
RFC 5382 REQ-2): svc1 sends a SYN to a-vm1 and a-vm1, instead of answering it, sends
its own SYN on that same flow - from its address and port to the Platform_IP address
and port it saw svc1's SYN come from. The platform must take that SYN back to svc1 as
a SYN from a-vm1's platform address, and the connection must open: both connect()s
succeed and data flows both ways.

With real kernel sockets: a-vm1's firewall (nftables in its namespace) drops svc1's
SYNs (SYN without ACK) to the port, so its kernel neither answers nor resets them;
svc1's nonblocking connect() waits; a capture at a-vm1's eth0 shows the Platform_IP
port svc1's SYN came from; a-vm1 connect()s there from the port svc1 called. svc1's
kernel, in SYN-SENT, answers that SYN with a SYN-ACK (RFC 9293 3.5, figure 8) and both
ends reach ESTABLISHED.

OVS 3.1's userspace conntrack took the VM's SYN as ``+trk+new+dnat`` in its VNet zone
(not ``+rpl``: ``vm_return`` dropped it) and left the replying peer's sequence tracking
unset, so the SYN-ACK that follows was ``+inv`` in every zone even where flows let the
SYN through. The lab runs vnet64's patched ovs-vswitchd
(ovs-setup/patches/openvswitch-3.1-conntrack-tcp-simultaneous-open.patch): the SYN is
``+est+rpl``, as Linux's conntrack has it, and the flows take it as the reply it is
(docs/lab.md, "TCP simultaneous open").
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from vnet64_lab import sh
from vnet64_lab.traffic import A6, PLATFORM_IP, SVC1, flows, in_ns, ns_of, ovs_node, running_platform

from tests.lab.conftest import ROOT, need_lab, new_lab
from tests.lab.traffic import Pcap, nft_counter, vif

VM_PORT = 7001        # the port svc1 calls on a-vm1, and the one a-vm1 calls back from
SVC_PORT = 47001      # svc1's own port
SIZE = 200_000        # bytes each way: many segments, window scaling in play

# Both ends: SIZE bytes of a pattern of one's own sent (then shutdown(SHUT_WR)) while the
# other end's bytes are read to EOF; the result as JSON (the bytes read as a digest).
EXCHANGE = r"""
import hashlib, json, socket, threading
def exchange(s, who, size, out):
    s.settimeout(10)
    out["local"], out["peer"] = s.getsockname()[:2], s.getpeername()[:2]
    data = (who.encode() * (size // len(who) + 1))[:size]
    def send():
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    got = bytearray()
    while chunk := s.recv(65536):
        got += chunk
    t.join(10)
    out["got"], out["sha256"] = len(got), hashlib.sha256(got).hexdigest()
"""

# svc1: bind, nonblocking connect() to a-vm1's platform address, wait (the VM's SYN
# comes while it is in SYN-SENT), then exchange.
SVC_SIDE = EXCHANGE + r"""
import errno, select, sys
addr, port, sport, size, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
out = {}
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", sport))
s.setblocking(False)
out["connect_ex"] = errno.errorcode.get(s.connect_ex((addr, port)), "0")
print("connecting", flush=True)
_, writable, _ = select.select([], [s], [], wait)
err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
if not writable:
    out["error"] = "timeout"
elif err:
    out["error"] = errno.errorcode.get(err, str(err))
else:
    s.setblocking(True)
    try:
        exchange(s, "svc1>", size, out)
    except OSError as exc:
        out["error"] = type(exc).__name__
print(json.dumps(out), flush=True)
"""

# a-vm1: bind the port svc1 called, connect() to where svc1's SYN came from, exchange.
VM_SIDE = EXCHANGE + r"""
import sys
src, sport, addr, port, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
out = {}
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src, sport))
s.settimeout(8)
try:
    s.connect((addr, port))
    exchange(s, "a-vm1>", size, out)
except OSError as exc:
    out["error"] = type(exc).__name__
print(json.dumps(out), flush=True)
"""


def tracked(plan) -> list[str]:
    """The conntrack entries of this test's connection on both hosts, every zone."""
    return [f"{node}: {line}" for node in ("host1", "host2")
            for line in ovs_node(plan, node).appctl("dpctl/dump-conntrack").splitlines()
            if f"port={VM_PORT}" in line]


def pattern(who: str, size: int = SIZE) -> str:
    return hashlib.sha256((who.encode() * (size // len(who) + 1))[:size]).hexdigest()


def syns(pkts: list, layer, src: str, dst: str, sport: int | None, dport: int) -> list:
    """The pure SYNs (no ACK) from src(:sport) to dst:dport in a capture."""
    return [p for p in pkts if p.haslayer(layer) and p.haslayer(TCP)
            and (p[layer].src, p[layer].dst, p[TCP].dport) == (src, dst, dport)
            and sport in (None, p[TCP].sport) and p[TCP].flags.S and not p[TCP].flags.A]


def vm_firewall(ns: str) -> None:
    """a-vm1's kernel never sees svc1's SYNs to VM_PORT (so it neither answers nor resets
    them); the SYN-ACK that comes after the VM's own SYN passes."""
    for rule in (["add", "table", "inet", "simopen"],
                 ["add", "counter", "inet", "simopen", "syns"],
                 ["add", "chain", "inet", "simopen", "in", "{ type filter hook input priority 0; }"],
                 ["add", "rule", "inet", "simopen", "in", "tcp", "dport", str(VM_PORT),
                  "tcp", "flags", "&", "(syn", "|", "ack)", "==", "syn", "counter", "name", "syns", "drop"]):
        proc = in_ns(ns, "nft", *rule)
        assert proc.returncode == 0, (rule, proc.stderr)


def simultaneous_open(plan, tmp_path) -> dict:
    """svc1 calls a-vm1, a-vm1 calls back on the same flow; what each end and the
    captures saw: {"svc", "vm"} (the ends' JSON), {"syn_at_vm", "syn_at_svc"} (the
    pure SYNs each end's eth0 saw from the other), "nat_port"."""
    vm, svc = vif(plan, "a-vm1"), ns_of(plan, "svc1")
    with Pcap(vm.ns, "eth0", tmp_path, bpf=f"tcp port {VM_PORT}") as at_vm, \
            Pcap(svc, "eth0", tmp_path, bpf=f"tcp port {SVC_PORT}") as at_svc:
        caller = subprocess.Popen([sh.tool("ip"), "netns", "exec", svc, sys.executable, "-c", SVC_SIDE,
                                   A6, str(VM_PORT), str(SVC_PORT), str(SIZE), "20"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert caller.stdout.readline().strip() == "connecting", caller.stderr.read()
            came = at_vm.wait(lambda p: syns(p, IP, PLATFORM_IP, str(vm.ipv4.ip), None, VM_PORT), 5)
            seen = syns(came, IP, PLATFORM_IP, str(vm.ipv4.ip), None, VM_PORT)
            assert seen, f"svc1's SYN did not reach a-vm1: {[p.summary() for p in came]}"
            nat_port = seen[0][TCP].sport      # svc1's port as a-vm1 sees it
            assert nft_counter(vm.ns, "inet", "simopen", "syns") >= 1, "the VM's firewall kept no SYN out"
            # a-vm1 calls back: its SYN, from the port svc1 called, to where svc1's SYN came from
            answered = in_ns(vm.ns, sys.executable, "-c", VM_SIDE, str(vm.ipv4.ip), str(VM_PORT),
                             PLATFORM_IP, str(nat_port), str(SIZE), timeout=40)
            assert answered.returncode == 0, answered.stderr
            out, err = caller.communicate(timeout=40)
        finally:
            if caller.poll() is None:
                caller.kill()   # our own child, by its pid
                caller.communicate(timeout=5)
        got = at_svc.wait(lambda p: syns(p, IPv6, A6, SVC1, VM_PORT, SVC_PORT), 2)
    return {"svc": json.loads(out.splitlines()[-1]) if out.strip() else {"error": err},
            "vm": json.loads(answered.stdout), "nat_port": nat_port, "syn_at_vm": seen,
            "syn_at_svc": syns(got, IPv6, A6, SVC1, VM_PORT, SVC_PORT), "at_svc": got}


def test_a_vm_answers_a_services_syn_with_its_own_syn(tmp_path):
    need_lab()
    if not shutil.which("nft"):
        pytest.fail("nft is not installed (apt-get install nftables; scripts/setup.sh does)")
    with running_platform(new_lab("o"), ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        vm = vif(plan, "a-vm1")
        vm_firewall(vm.ns)
        r = simultaneous_open(plan, tmp_path)
        report = (f"svc1: {r['svc']}\na-vm1: {r['vm']}\n" + "\n".join(tracked(plan)) + "\n"
                  + flows(plan, "host1", "table=vm_return") + flows(plan, "host1", "table=to_service"))
    print(f"\n{report}")
    # a-vm1's SYN reached svc1 as a SYN from a-vm1's platform address and the port svc1 called
    assert r["syn_at_svc"], f"a-vm1's SYN did not reach svc1 ({[p.summary() for p in r['at_svc']]}):\n{report}"
    assert r["syn_at_vm"][0][TCP].seq != r["syn_at_svc"][0][TCP].seq, "the SYN svc1 got is its own"
    svc, at_vm = r["svc"], r["vm"]
    # both connect()s succeeded, each end sees the other where it expects it
    assert "error" not in at_vm and "error" not in svc, report
    assert svc["connect_ex"] == "EINPROGRESS", report
    assert at_vm["peer"] == [PLATFORM_IP, r["nat_port"]], report
    assert at_vm["local"] == [str(vm.ipv4.ip), VM_PORT], report
    assert svc["peer"] == [A6, VM_PORT] and svc["local"] == [SVC1, SVC_PORT], report
    # ... and the bytes went both ways, all of them, unchanged
    assert (svc["got"], svc["sha256"]) == (SIZE, pattern("a-vm1>")), report
    assert (at_vm["got"], at_vm["sha256"]) == (SIZE, pattern("svc1>")), report
