"""The node agents' Prometheus metrics (issue 20, item 4; ``vnet64-node --metrics``),
scraped as Prometheus does - over HTTP from the management network - and read with
prometheus_client's own text-format parser: the NAT port-use gauge follows connections
held open to a VM.
"""

from __future__ import annotations

import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families
from vnet64_lab import plan as P
from vnet64_lab.traffic import A6, LINE_PORT, LineSession, in_ns, running_platform

from tests.lab.conftest import ROOT, need_lab, new_lab

SCRAPE = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


@pytest.fixture(scope="module")
def platform():
    need_lab()
    with running_platform(new_lab("m"), ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        yield plan


def scrape(plan, node: str) -> dict[tuple[str, tuple], float]:
    """{(metric, sorted labels): value} of one node agent's /metrics, fetched from the
    controller's namespace on the management network."""
    n = next(n for n in plan.nodes if n.name == node)
    proc = in_ns(plan.ctl_ns, sys.executable, "-c", SCRAPE,
                 f"http://{n.management_ip.ip}:{P.METRICS_PORT}/metrics")
    assert proc.returncode == 0, proc.stderr
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(proc.stdout) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    want = tuple(sorted(labels.items()))
    return next((v for (n, ls), v in samples.items() if n == name and set(want) <= set(ls)), None)


def test_the_port_use_gauge_follows_held_connections(platform):
    plan = platform
    first = scrape(plan, "host1")
    assert value(first, "vnet64_node_info", node="host1", role="host", datapath="netdev") == 1
    labels = {"node": "host1", "vm": "a-vm1", "proto": "tcp", "vm_ip": "10.0.0.4", "vm_port": str(LINE_PORT)}
    base = value(first, "vnet64_nat_ports_in_use", **labels) or 0
    held = []
    try:
        for i in range(1, 4):
            held.append(LineSession(plan, A6, LINE_PORT))
            assert held[-1].send(f"held-{i}")["reply"].endswith(f"held-{i}")
            now = scrape(plan, "host1")
            assert value(now, "vnet64_nat_ports_in_use", **labels) == base + i, now
            assert value(now, "vnet64_nat_port_use_ratio", **labels) == pytest.approx((base + i) / 64512)
            assert value(now, "vnet64_nat_sessions", node="host1", vm="a-vm1") >= base + i
        zones = {dict(ls)["zone"] for (n, ls) in now if n == "vnet64_conntrack_entries"}
        assert {"65534", "65533"} <= zones, zones          # the IPv6 SNAT and DNAT zones
    finally:
        for s in held:
            s.close()


def test_the_appliance_exports_no_nat_ports(platform):
    samples = scrape(platform, "appliance")
    assert value(samples, "vnet64_node_info", node="appliance", role="appliance") == 1
    assert not any(n.startswith("vnet64_nat_") for n, _ in samples)
