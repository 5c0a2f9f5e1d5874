"""Two endpoints ping one VM at the same time with the same ICMP echo identifier.

On the VM's side both pairs become Platform_IP: the VNet zone's SNAT rewrites the
source address, so both pings would have the same reply tuple (VM -> Platform_IP,
echo id) unless the identifier is translated too, as NAT translates ports for TCP
and UDP. OVS 3.1's userspace conntrack translates no echo identifier (the second
endpoint's echoes were refused, "administratively prohibited", while the first's
entry lived); the lab's patched ovs-vswitchd (``ovs-setup/patches/``) gives the second
echo another identifier when its own is taken, as Linux does. DESIGN §4b listed the
case as untested.

Asserted on the packets: both endpoints get every echo reply (matched on their own
identifier and sequence), and the VM saw the echoes from Platform_IP under two
identifiers, one of them the endpoints' own; and when the VM's firewall rejects the
echoes, every ICMP error it sends reaches the right endpoint quoting the identifier that
endpoint sent (the translated one is put back in the quoted echo too). Both tests fail
on the stock build.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import pytest
from vnet64_lab import sh
from vnet64_lab.traffic import PLATFORM_IP, Capture, in_ns, ns_of, running_platform

from tests.lab.conftest import ROOT, need_lab, new_lab

A_WEB1 = "fd41::3930:1f:6600:a00:4"   # a-web1 (customer-a 10.0.0.4, host1) in four-hosts
IDENT, COUNT = 4242, 10

# COUNT echo requests with one identifier, 0.3 s apart; counts this socket's answers:
# echo replies with that identifier and sequence, and ICMPv6 errors quoting one of them
PINGER = r"""
import json, socket, struct, sys, time
dst, ident, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.settimeout(0.05)
replies, errors = set(), {}
for seq in range(count):
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"vnet64 echo id", (dst, 0))
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            continue
        if data[0] == 129 and struct.unpack_from("!HH", data, 4) == (ident, seq):
            replies.add(seq)
        elif data[0] in (1, 2, 3, 4) and len(data) >= 8 + 40 + 8 and data[8 + 6] == 58 \
                and data[48] == 128 and struct.unpack_from("!H", data, 52)[0] == ident:
            key = f"type {data[0]} code {data[1]}"
            errors[key] = errors.get(key, 0) + 1
print(json.dumps({"replies": len(replies), "errors": errors}))
"""


@pytest.fixture(scope="module")
def platform():
    need_lab()
    with running_platform(new_lab("i"), ROOT / "topologies" / "four-hosts.yaml") as (lab, plan):
        yield plan


def ping_both(plan, vm_bpf: str) -> tuple[dict, str]:
    """ana1 and ana2 run PINGER at once; what each got, and what a-web1 captured."""
    with Capture(ns_of(plan, "a-web1"), "eth0", vm_bpf, count=None) as cap:
        procs = {ep: subprocess.Popen(
            [sh.tool("ip"), "netns", "exec", ns_of(plan, ep), sys.executable, "-c", PINGER,
             A_WEB1, str(IDENT), str(COUNT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True) for ep in ("ana1", "ana2")}
        seen = {}
        for ep, proc in procs.items():
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            seen[ep] = json.loads(out)
        return seen, cap.stop()


def request_ids(capture: str) -> tuple[set[str], Counter]:
    """Sources and identifiers of the echo requests in a tcpdump printout at a-web1."""
    requests = re.findall(r"(\S+) > 10\.0\.0\.4: ICMP echo request, id (\d+)", capture)
    return {src for src, _ in requests}, Counter(int(i) for _, i in requests)


def test_two_endpoints_ping_one_vm_with_the_same_echo_id(platform):
    seen, at_vm = ping_both(platform, "icmp[icmptype] == icmp-echo")
    sources, ids = request_ids(at_vm)
    print(f"\nsame echo id {IDENT} from ana1 and ana2 to a-web1: {json.dumps(seen)}; "
          f"a-web1 saw ids {dict(ids)}")

    assert seen == {ep: {"replies": COUNT, "errors": {}} for ep in ("ana1", "ana2")}, \
        f"not every echo was answered: {seen}"
    assert sources == {PLATFORM_IP}, sources
    assert len(ids) == 2 and IDENT in ids and sorted(ids.values()) == [COUNT, COUNT], \
        f"a-web1 did not see the two endpoints' echoes under two identifiers: {dict(ids)}"


def test_errors_about_a_translated_echo_quote_the_endpoints_own_identifier(platform):
    """a-web1's firewall rejects echo requests (ICMP "administratively prohibited"): the
    error about the echo whose identifier was translated must come back to its endpoint
    quoting the identifier it sent, or its socket would not recognise it."""
    vm = ns_of(platform, "a-web1")
    # Linux sends at most ~1 error per second per peer after a burst of 6 (icmp_ratelimit);
    # every echo should get its error here, so the VM's namespace lifts that while it runs
    ratelimit = in_ns(vm, "sysctl", "-n", "net.ipv4.icmp_ratelimit").stdout.strip()
    rules = (["add", "table", "inet", "vmfw"],
             ["add", "chain", "inet", "vmfw", "in", "{ type filter hook input priority 0; }"],
             ["add", "rule", "inet", "vmfw", "in", "icmp", "type", "echo-request",
              "reject", "with", "icmp", "type", "admin-prohibited"])
    try:
        assert in_ns(vm, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0").returncode == 0
        for rule in rules:
            proc = in_ns(vm, "nft", *rule)
            assert proc.returncode == 0, proc.stderr
        seen, at_vm = ping_both(platform, "icmp")
    finally:
        in_ns(vm, "nft", "delete", "table", "inet", "vmfw")
        in_ns(vm, "sysctl", "-qw", f"net.ipv4.icmp_ratelimit={ratelimit}")
    sources, ids = request_ids(at_vm)
    errors_sent = len(re.findall(r"10\.0\.0\.4 > 100\.100\.0\.1: ICMP host 10\.0\.0\.4 unreachable - "
                                 r"admin prohibited", at_vm))
    print(f"\nrejected echoes, id {IDENT} from ana1 and ana2: {json.dumps(seen)}; a-web1 saw ids "
          f"{dict(ids)} and sent {errors_sent} errors")

    assert sources == {PLATFORM_IP} and len(ids) == 2 and IDENT in ids, \
        f"not the case asked for (two identifiers at the VM): {dict(ids)}"
    assert errors_sent == 2 * COUNT, f"a-web1 sent {errors_sent} errors, not {2 * COUNT}:\n{at_vm}"
    # TAYGA: ICMPv4 admin-prohibited -> ICMPv6 unreachable, code 1 (RFC 7915 4.2)
    assert seen == {ep: {"replies": 0, "errors": {"type 1 code 1": COUNT}} for ep in ("ana1", "ana2")}, \
        f"an endpoint did not get the errors about its own echoes: {seen}"
