"""ICMP errors a VM sends about TCP reach the service (issue 4: "ICMP errors from either
side reach the other side's stack matched to the right socket").

a-vm1's own firewall (nftables in its namespace) rejects TCP to one port with ICMP
"administratively prohibited"; svc1's connect() to that port should fail at once with
EACCES. Known gap (strict xfail, docs/lab.md "Sustained load", last paragraph): TAYGA
translates the error and the IPv6 DNAT zone un-NATs it, but OVS 3.1's userspace
conntrack then marks it invalid in the IPv6 SNAT zone, so it never reaches svc1 and
the connect() times out. Errors about UDP do arrive (test_datapath_edges.py).
"""

from __future__ import annotations

import shutil

import pytest
from vnet64_lab.traffic import A6, Capture, client, in_ns, ns_of, running_platform

from tests.lab.conftest import ROOT, KnownGap, need_lab, new_lab

REJECTED_PORT = 9999


@pytest.mark.xfail(strict=True, raises=KnownGap, reason=(
    "an ICMP error about TCP from a VM is marked invalid by the IPv6 SNAT zone "
    "(OVS 3.1 userspace conntrack) and never reaches the service"))
def test_a_vms_icmp_error_about_tcp_reaches_the_service():
    need_lab()
    if not shutil.which("nft"):
        pytest.fail("nft is not installed (apt-get install nftables; scripts/setup.sh does)")
    lab = new_lab("w")
    with running_platform(lab, ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        vm = ns_of(plan, "a-vm1")
        for rule in (["add", "table", "inet", "vmfw"],
                     ["add", "chain", "inet", "vmfw", "in",
                      "{ type filter hook input priority 0; }"],
                     ["add", "rule", "inet", "vmfw", "in", "tcp", "dport", str(REJECTED_PORT),
                      "reject", "with", "icmp", "type", "admin-prohibited"]):
            proc = in_ns(vm, "nft", *rule)
            assert proc.returncode == 0, proc.stderr
        with Capture(vm, "eth0", "icmp", count=1) as sent:
            out = client(plan, "tcp", A6, REJECTED_PORT, "x", timeout=3)
            assert sent.done(3), "a-vm1 sent no ICMP error: the test's premise failed"
        if out == {"error": "TimeoutError"}:
            raise KnownGap("a-vm1's ICMP admin-prohibited about svc1's SYN never reached svc1")
        assert out == {"error": "PermissionError"}, out
