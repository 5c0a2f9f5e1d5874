"""The node agent's Prometheus collector (node/metrics.py) on a conntrack dump, through
prometheus_client's own exposition and parser."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_sessions import DUMP
from vnet64.node.metrics import NodeCollector


def exposed(role: str, conntrack=lambda: DUMP) -> dict:
    registry = CollectorRegistry()
    registry.register(NodeCollector("host1", role, "netdev", conntrack,
                                    lambda: [(1, "10.0.0.4", "a-vm1"), (2, "10.0.0.4", "b-vm1")],
                                    (1024, 2047)))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_a_host_exports_conntrack_zones_and_nat_port_use():
    m = exposed("host")
    assert m[("vnet64_node_info", (("datapath", "netdev"), ("node", "host1"), ("role", "host")))] == 1
    assert m[("vnet64_conntrack_entries", (("node", "host1"), ("zone", "1")))] == 4
    assert m[("vnet64_conntrack_entries", (("node", "host1"), ("zone", "65534")))] == 1
    key = (("node", "host1"), ("proto", "tcp"), ("vm", "a-vm1"), ("vm_ip", "10.0.0.4"), ("vm_port", "8082"))
    assert m[("vnet64_nat_ports_in_use", key)] == 1
    assert m[("vnet64_nat_port_use_ratio", key)] == 1 / 1024
    assert m[("vnet64_nat_sessions", (("node", "host1"), ("vm", "a-vm1")))] == 3


def test_the_appliance_has_no_nat_and_a_failed_read_still_answers():
    assert not any(n.startswith("vnet64_nat_") for n, _ in exposed("appliance"))

    def broken() -> str:
        raise OSError("ovs-vswitchd is not running")
    m = exposed("host", broken)
    assert [n for n, _ in m] == ["vnet64_node_info"]


def test_drops_per_reason_and_flows_per_stage():
    from tests.unit.test_drops import FLOWS, METERS, TABLES
    from vnet64.node import drops
    registry = CollectorRegistry()
    registry.register(NodeCollector("host1", "host", "netdev", lambda: DUMP, lambda: [],
                                    drops=lambda: drops.parse_flows(FLOWS) + drops.parse_meters(METERS),
                                    tables=lambda: drops.parse_tables(TABLES, "host")))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert families["vnet64_dropped_packets"].type == "counter"
    m = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    key = (("kind", "drop"), ("node", "host1"), ("reason", "spoofed_source"), ("table", "from_endpoint"))
    assert m[("vnet64_dropped_packets_total", key)] == 300
    assert m[("vnet64_dropped_bytes_total", key)] == 24000
    meter = (("kind", "meter"), ("node", "host1"), ("reason", "new_pair_rate"), ("table", "meter 1"))
    assert m[("vnet64_dropped_packets_total", meter)] == 4
    assert m[("vnet64_flows", (("node", "host1"), ("table", "from_endpoint")))] == 9
    assert not any(dict(ls).get("reason") == "packet_too_big" for _, ls in m)


def test_a_failed_flow_read_keeps_the_rest():
    def broken():
        raise OSError("no br-int")
    registry = CollectorRegistry()
    registry.register(NodeCollector("host1", "host", "netdev", lambda: DUMP, lambda: [], drops=broken))
    names = {s.name for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
    assert "vnet64_conntrack_entries" in names and not any(n.startswith("vnet64_dropped") for n in names)


def test_new_connections_are_counted_from_the_second_scrape_on():
    """The first scrape is the baseline; a connection that appears by the next one counts
    once, one that stays or goes counts nothing more (a rate(), and the highest recent
    one with max_over_time, in Prometheus)."""
    extra = ("tcp,orig=(src=198.18.0.1,dst=10.0.0.4,sport=40002,dport=8082),reply=(src=10.0.0.4,"
             "dst=100.100.0.1,sport=8082,dport=1030),zone=1,timeout=86390,protoinfo=(state=ESTABLISHED)\n")
    dumps = iter([DUMP, DUMP + extra, DUMP + extra, DUMP])
    registry = CollectorRegistry()
    registry.register(NodeCollector("host1", "host", "netdev", lambda: next(dumps),
                                    lambda: [(1, "10.0.0.4", "a-vm1"), (2, "10.0.0.4", "b-vm1")]))
    key = (("node", "host1"), ("proto", "tcp"), ("vm", "a-vm1"), ("vm_ip", "10.0.0.4"), ("vm_port", "8082"))

    def new() -> float:
        text = generate_latest(registry).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}[
            ("vnet64_nat_new_connections_total", key)]
    assert [new(), new(), new(), new()] == [0, 1, 1, 1]


def test_the_nb_change_applied_and_its_lag():
    """The agent's newest applied NB change number and its lag; neither before the agent
    has applied one, no lag for the first it saw."""
    def names_and_values(nb):
        registry = CollectorRegistry()
        registry.register(NodeCollector("host1", "host", "netdev", lambda: DUMP, lambda: [], nb=nb))
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
    assert not any(n.startswith("vnet64_node_nb") for n, _ in names_and_values(lambda: (None, None)))
    m = names_and_values(lambda: (12, None))
    assert m[("vnet64_node_nb_cfg", (("node", "host1"),))] == 12
    assert not any(n == "vnet64_node_nb_lag_seconds" for n, _ in m)
    m = names_and_values(lambda: (13, 0.125))
    assert m[("vnet64_node_nb_cfg", (("node", "host1"),))] == 13
    assert m[("vnet64_node_nb_lag_seconds", (("node", "host1"),))] == 0.125
