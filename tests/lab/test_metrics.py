"""The node agents' and controllers' Prometheus metrics (issue 20, item 4; ``vnet64-node
--metrics``, ``vnet64-controller --vnet64-metrics``), scraped as Prometheus does - over
HTTP from the management network - and read with prometheus_client's own text-format
parser: the NAT port-use gauge follows connections held open to a VM, and the controller
counts an event exactly once.
"""

from __future__ import annotations

import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, UDP
from vnet64_lab import plan as P
from vnet64_lab.traffic import A6, LINE_PORT, PLATFORM_IP, LineSession, in_ns, running_platform

from tests.lab.conftest import ROOT, need_lab, new_lab
from tests.lab.traffic import frame, send_frames, vif

# a scraper: plain HTTP, or HTTPS with a client certificate (argv: url [key cert ca])
SCRAPE = r"""
import ssl, sys, urllib.request
ctx = None
if len(sys.argv) > 2:
    ctx = ssl.create_default_context(cafile=sys.argv[4])
    ctx.check_hostname = False          # ovs-pki certificates name no host
    ctx.load_cert_chain(sys.argv[3], sys.argv[2])
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5, context=ctx).read().decode())
"""


@pytest.fixture(scope="module")
def platform():
    need_lab()
    with running_platform(new_lab("m"), ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        yield lab, plan


def scrape(plan, node: str, port: int = P.METRICS_PORT, pki=None) -> dict[tuple[str, tuple], float]:
    """{(metric, sorted labels): value} of one node agent's /metrics (or, on
    ``CONTROLLER_METRICS_PORT``, its controller's), fetched from the controller's namespace
    on the management network; ``node`` None: the central controller's. ``pki`` (a lab
    over TLS's ``LabPki``): over HTTPS with the lab's ``scraper`` certificate."""
    ip = plan.controller_ip.ip if node is None else next(n for n in plan.nodes if n.name == node).management_ip.ip
    tls = [pki.key("scraper"), pki.cert("scraper"), pki.controller_ca] if pki is not None else []
    proc = in_ns(plan.ctl_ns, sys.executable, "-c", SCRAPE,
                 f"{'https' if pki else 'http'}://{ip}:{port}/metrics", *tls)
    assert proc.returncode == 0, proc.stderr
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(proc.stdout) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    want = tuple(sorted(labels.items()))
    return next((v for (n, ls), v in samples.items() if n == name and set(want) <= set(ls)), None)


def test_the_port_use_gauge_follows_held_connections(platform):
    _, plan = platform
    first = scrape(plan, "host1")
    assert value(first, "vnet64_node_info", node="host1", role="host", datapath="netdev") == 1
    labels = {"node": "host1", "vm": "a-vm1", "proto": "tcp", "vm_ip": "10.0.0.4", "vm_port": str(LINE_PORT)}
    base = value(first, "vnet64_nat_ports_in_use", **labels) or 0
    new0 = value(first, "vnet64_nat_new_connections_total", **labels) or 0
    held = []
    try:
        for i in range(1, 4):
            held.append(LineSession(plan, A6, LINE_PORT))
            assert held[-1].send(f"held-{i}")["reply"].endswith(f"held-{i}")
            now = scrape(plan, "host1")
            assert value(now, "vnet64_nat_ports_in_use", **labels) == base + i, now
            assert value(now, "vnet64_nat_port_use_ratio", **labels) == pytest.approx((base + i) / 64512)
            assert value(now, "vnet64_nat_sessions", node="host1", vm="a-vm1") >= base + i
            # one new connection since the last scrape (the first one is the baseline)
            assert value(now, "vnet64_nat_new_connections_total", **labels) == new0 + i, now
        zones = {dict(ls)["zone"] for (n, ls) in now if n == "vnet64_conntrack_entries"}
        assert {"65534", "65533"} <= zones, zones          # the IPv6 SNAT and DNAT zones
    finally:
        for s in held:
            s.close()


def test_the_appliance_exports_no_nat_ports(platform):
    samples = scrape(platform[1], "appliance")
    assert value(samples, "vnet64_node_info", node="appliance", role="appliance") == 1
    assert not any(n.startswith("vnet64_nat_") for n, _ in samples)


def test_the_controller_counts_what_it_does(platform):
    """host1's controller (or the central one): its switch ready, pairs held, and an
    event counted exactly once - a-vm1's packet with TTL 1, which its gateway answers."""
    lab, plan = platform
    node, scope = (None, "central") if lab.control == "central" else ("host1", "host1")
    session = LineSession(plan, A6, LINE_PORT)      # a pair on host1, at least
    try:
        session.send("pair")
        before = scrape(plan, node, P.CONTROLLER_METRICS_PORT)
        assert value(before, "vnet64_controller_info", scope=scope) == 1
        assert value(before, "vnet64_controller_switches", scope=scope, state="ready") >= 1
        assert value(before, "vnet64_controller_pairs", scope=scope, node="host1") >= 1
        assert value(before, "vnet64_controller_events_total", scope=scope, event="pairs_installed") >= 1
        assert value(before, "vnet64_controller_nb_connected", scope=scope) == 1
        assert value(before, "vnet64_controller_resync_seconds", scope=scope, node="host1") >= 0
        assert value(before, "vnet64_controller_resyncs_total", scope=scope) >= 1
        assert value(before, "vnet64_controller_nb_updates_total", scope=scope, kind="full") >= 1
        assert value(before, "vnet64_controller_nb_apply_seconds", scope=scope) >= 0
        sent = value(before, "vnet64_controller_events_total", scope=scope,
                     event="icmp_time_exceeded_sent") or 0
        vm = vif(plan, "a-vm1")
        expiring = frame(plan, "a-vm1") / IP(src=str(vm.ipv4.ip), dst=PLATFORM_IP, ttl=1) \
            / UDP(sport=LINE_PORT, dport=9) / b"ttl-1"
        assert send_frames(vm.ns, "eth0", [expiring]) == 1
        for _ in range(50):
            after = scrape(plan, node, P.CONTROLLER_METRICS_PORT)
            if value(after, "vnet64_controller_events_total", scope=scope, event="icmp_time_exceeded_sent") == sent + 1:
                break
        assert value(after, "vnet64_controller_events_total", scope=scope,
                     event="icmp_time_exceeded_sent") == sent + 1, after
    finally:
        session.close()


def test_every_controller_and_agent_reports_the_nb_change_it_applied(platform):
    """The NB's propagation lag: a write numbers its change (Platform nb_cfg, with its
    commit time); every controller and node agent comes to report that number as
    applied, with a lag between 0 and the time the test itself saw pass from before the
    write to after the reading."""
    import time

    from vnet64 import topology
    from vnet64.nb import api as nbapi
    lab, plan = platform
    readers = [(None, "vnet64_controller_nb", {"scope": "central"}, P.CONTROLLER_METRICS_PORT)] \
        if lab.control == "central" else \
        [(n.name, "vnet64_controller_nb", {"scope": n.name}, P.CONTROLLER_METRICS_PORT) for n in plan.nodes]
    readers += [(n.name, "vnet64_node_nb", {"node": n.name}, P.METRICS_PORT) for n in plan.nodes]
    with nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock") as api:
        before = api.platform_info()["nb_cfg"]
        t0 = time.time()
        api.add_region(topology.Region("metrics-probe", 0x7F))     # a change no flow follows
        cfg = api.platform_info()["nb_cfg"]
    assert cfg == before + 1
    for node, prefix, labels, port in readers:
        for _ in range(100):
            samples = scrape(plan, node, port)
            if value(samples, f"{prefix}_cfg", **labels) == cfg:
                break
            time.sleep(0.05)
        elapsed = time.time() - t0
        assert value(samples, f"{prefix}_cfg", **labels) == cfg, (node, prefix)
        assert 0 <= value(samples, f"{prefix}_lag_seconds", **labels) <= elapsed, (node, prefix, samples)
