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
identifiers, one of them the endpoints' own.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

from vnet64_lab import sh
from vnet64_lab.traffic import PLATFORM_IP, Capture, ns_of, running_platform

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


def test_two_endpoints_ping_one_vm_with_the_same_echo_id():
    need_lab()
    with running_platform(new_lab("i"), ROOT / "topologies" / "four-hosts.yaml") as (lab, plan):
        with Capture(ns_of(plan, "a-web1"), "eth0", "icmp[icmptype] == icmp-echo",
                     count=None) as cap:
            procs = {ep: subprocess.Popen(
                [sh.tool("ip"), "netns", "exec", ns_of(plan, ep), sys.executable, "-c", PINGER,
                 A_WEB1, str(IDENT), str(COUNT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True) for ep in ("ana1", "ana2")}
            seen = {}
            for ep, proc in procs.items():
                out, err = proc.communicate(timeout=30)
                assert proc.returncode == 0, err
                seen[ep] = json.loads(out)
            at_vm = cap.stop()
    requests = re.findall(r"(\S+) > 10\.0\.0\.4: ICMP echo request, id (\d+)", at_vm)
    ids = Counter(int(i) for _, i in requests)
    print(f"\nsame echo id {IDENT} from ana1 and ana2 to a-web1: {json.dumps(seen)}; "
          f"a-web1 saw ids {dict(ids)}")

    assert seen == {ep: {"replies": COUNT, "errors": {}} for ep in ("ana1", "ana2")}, \
        f"not every echo was answered: {seen}"
    assert {src for src, _ in requests} == {PLATFORM_IP}, requests
    assert len(ids) == 2 and IDENT in ids and sorted(ids.values()) == [COUNT, COUNT], \
        f"a-web1 did not see the two endpoints' echoes under two identifiers: {dict(ids)}"
