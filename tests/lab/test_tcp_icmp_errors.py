"""ICMP errors a VM sends about TCP reach the service (issue 4: "ICMP errors from either
side reach the other side's stack matched to the right socket").

a-vm1's own firewall (nftables in its namespace) rejects TCP to one port with ICMP
"administratively prohibited"; svc1's connect() to that port must fail at once with
EACCES, and the ICMPv6 error svc1 receives must quote svc1's own SYN (its address and
port, the VM's platform address): that is what the kernel matches the socket by.

The IPv6 zones NAT the error and the SYN it quotes; the quoted TCP checksum must still be
right for the quoted addresses (a stack may check it). OVS 3.1's userspace conntrack
damaged the quoted source address there (the controller used to repair and re-inject such
errors, leaving that checksum wrong); vnet64's patched ovs-vswitchd fixes the cause
(ovs-setup/patches/openvswitch-3.1-conntrack-related-icmpv6.patch), and no packet of this
path goes to the controller.
"""

from __future__ import annotations

import shutil

import pytest
import vnet64_lab.traffic as _t
from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw
from vnet64_lab.traffic import A6, SVC1, Capture, client, in_ns, ns_of, running_platform

from tests.lab.conftest import ROOT, need_lab, new_lab
from tests.lab.traffic import Pcap

REJECTED_PORT = 9999


def test_a_vms_icmp_error_about_tcp_reaches_the_service(tmp_path):
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
        with Capture(vm, "eth0", "icmp", count=1) as sent, \
                Pcap(ns_of(plan, "svc1"), "eth0", tmp_path, bpf="icmp6 and ip6[40] == 1") as got:
            out = client(plan, "tcp", A6, REJECTED_PORT, "x", timeout=3)
            assert sent.done(3), "a-vm1 sent no ICMP error: the test's premise failed"
            errors = got.wait(lambda p: len(p) >= 1, 3)
        assert out == {"error": "PermissionError"}, out
        assert errors, "no ICMPv6 destination unreachable reached svc1"
        err = errors[0]["IPv6"]
        # TAYGA: ICMPv4 admin-prohibited -> ICMPv6 unreachable, code 1 (RFC 7915 4.2)
        assert (err.src, err.dst, err.payload.type, err.payload.code) == (A6, SVC1, 1, 1), err.summary()
        quoted = err.payload.payload      # the IPv6 header of svc1's SYN, as svc1 sent it
        assert (quoted.src, quoted.dst) == (SVC1, A6), quoted.summary()
        assert quoted.payload.dport == REJECTED_PORT and quoted.payload.flags == "S", quoted.summary()
        # the whole SYN is quoted, with a TCP checksum right for the quoted addresses
        tcp = bytes(quoted.payload)
        assert len(tcp) == quoted.plen, quoted.summary()
        again = IPv6(bytes(IPv6(src=quoted.src, dst=quoted.dst, nh=6) / Raw(tcp)))
        fresh = again.copy()
        del fresh[TCP].chksum
        assert again[TCP].chksum == IPv6(bytes(fresh))[TCP].chksum, "quoted TCP checksum"
        # ... and not by way of the controller
        assert not any("CONTROLLER" in line for line in _t.flows(plan, "host1", "table=to_service").splitlines())
        assert [line for line in _t.flows(plan, "host1", "table=from_translator").splitlines()
                if "CONTROLLER" in line and "ipv6" in line and "ipv6_src=" not in line] == []
