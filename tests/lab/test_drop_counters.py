"""Counters that explain (issue 20, item 3): a packet a node does not forward is counted
under its reason, read as an operator reads it - ``vnet64-node stats --json`` against each
node's Open vSwitch, ``vnet64-lab stats``, and the agent's Prometheus metrics.

Each case sends N frames that the platform must not forward, for one reason, and checks
that exactly that reason on exactly that node went up by N, and that no other reason on
any node moved - except the ones the lab's own links feed on their own (an endpoint's or
a VM's router solicitations and MLD reports, the translator namespace's multicast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from vnet64_lab.ovs import OvsNode
from vnet64_lab.traffic import A6, LINK_NOISE_REASONS, PLATFORM_IP, SVC1, running_platform

from tests.lab.conftest import ROOT, need_lab, new_lab
from tests.lab.test_metrics import scrape, value
from tests.lab.traffic import frame, send_frames, vif

N = 300
BACKGROUND = LINK_NOISE_REASONS      # fed by the lab's links themselves, whatever the test sends


@pytest.fixture(scope="module")
def platform():
    need_lab()
    with running_platform(new_lab("d"), ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        yield lab, plan


def node_stats(plan, node: str) -> dict[str, int]:
    """``vnet64-node stats --json`` on ``node``'s Open vSwitch: reason -> packets."""
    n = next(n for n in plan.nodes if n.name == node)
    proc = subprocess.run([sys.executable, "-m", "vnet64.node.cli", "stats", "--json",
                           "--ovs", f"unix:{n.run_dir}/db.sock"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert all(r["meaning"] for r in rows), rows
    return {r["reason"]: r["packets"] for r in rows}


def all_stats(plan) -> dict[tuple[str, str], int]:
    """Every node's counts, once each node's revalidators have pushed their datapath flows'
    statistics to the OpenFlow flows (they do so about once a second on their own)."""
    for n in plan.nodes:
        OvsNode(n.name, n.ns, n.run_dir).appctl("revalidator/wait")
    return {(n.name, reason): packets for n in plan.nodes
            for reason, packets in node_stats(plan, n.name).items()}


def forged_destination(plan):
    """svc1 -> platform addresses of a VNet id no VM has: the appliance finds no host."""
    return "svc1", [frame(plan, "svc1") / IPv6(src=SVC1, dst=f"fd41::3930:99:6600:a00:{i % 250 + 1:x}")
                    / UDP(sport=40000 + i, dport=7) / b"forged-destination" for i in range(N)]


def spoofed_source(plan):
    """svc1 -> a-vm1's platform address from an address that is not svc1's."""
    return "svc1", [frame(plan, "svc1") / IPv6(src="fd00:5e:1::99", dst=A6)
                    / UDP(sport=40000 + i, dport=7) / b"spoofed" for i in range(N)]


def vm_initiated(plan):
    """a-vm1 -> Platform_IP, no reply to anything: VMs cannot open connections."""
    vm = vif(plan, "a-vm1")
    return "a-vm1", [frame(plan, "a-vm1") / IP(src=str(vm.ipv4.ip), dst=PLATFORM_IP)
                     / UDP(sport=5000, dport=30000 + i) / b"vm-initiated" for i in range(N)]


def ttl_exceeded(plan):
    """a-vm1 -> Platform_IP with TTL 1: its gateway answers (punted, metered)."""
    vm = vif(plan, "a-vm1")
    return "a-vm1", [frame(plan, "a-vm1") / IP(src=str(vm.ipv4.ip), dst=PLATFORM_IP, ttl=1)
                     / UDP(sport=5000, dport=30000 + i) / b"ttl-1" for i in range(N)]


@pytest.mark.parametrize("make, node, reason", [
    (forged_destination, "appliance", "unknown_destination"),
    (spoofed_source, "host2", "spoofed_source"),
    (vm_initiated, "host1", "vm_initiated"),
    (ttl_exceeded, "host1", "ttl_exceeded"),
], ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_a_forged_flood_raises_exactly_its_own_counter(platform, make, node, reason):
    _, plan = platform
    sender, frames = make(plan)
    before = all_stats(plan)
    assert (node, reason) in before, sorted(before)
    v = vif(plan, sender)
    assert send_frames(v.ns, "eth0", frames, gap=0.002) == N
    after = all_stats(plan)
    moved = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert moved.get((node, reason)) == N, moved
    assert not {k: d for k, d in moved.items() if k != (node, reason) and k[1] not in BACKGROUND}, moved


def test_the_metrics_and_the_lab_say_the_same(platform):
    """The appliance's ``vnet64_dropped_packets_total`` (scraped over HTTP) and ``vnet64-lab
    stats --json`` report the node's own count, and the lab sums the nodes."""
    lab, plan = platform
    sender, frames = forged_destination(plan)
    assert send_frames(vif(plan, sender).ns, "eth0", frames, gap=0.002) == N
    mine = all_stats(plan)[("appliance", "unknown_destination")]    # the counters settled
    assert mine >= N
    samples = scrape(plan, "appliance")
    assert value(samples, "vnet64_dropped_packets_total", node="appliance",
                 reason="unknown_destination", kind="drop", table="route") == mine
    assert value(samples, "vnet64_flows", node="appliance", table="route") >= 1
    env = dict(os.environ, VNET64_LAB_PREFIX=lab.prefix, VNET64_LAB_RUN_DIR=str(lab.run_dir))
    proc = subprocess.run([sys.executable, "-m", "vnet64_lab.cli", "stats", "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    row = {r["reason"]: r for r in out["nodes"]["appliance"]}["unknown_destination"]
    assert row["packets"] == mine and row["where"] == ["route"]
    platform_sum = {r["reason"]: r["packets"] for r in out["platform"]}
    assert platform_sum["unknown_destination"] == sum(
        {r["reason"]: r["packets"] for r in rows}.get("unknown_destination", 0)
        for rows in out["nodes"].values())
