"""deploy/prometheus/vnet64-alerts.yml: Prometheus's rule-file structure, and every vnet64
metric it uses is one the node agent's collector exports (checked on a real exposition).
Not run through promtool (the prometheus package is not installed by make setup)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_sessions import DUMP
from vnet64.node.metrics import NodeCollector

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "vnet64-alerts.yml"


def exported() -> set[str]:
    registry = CollectorRegistry()
    registry.register(NodeCollector("host1", "host", "netdev", lambda: DUMP,
                                    lambda: [(1, "10.0.0.4", "a-vm1")]))
    return {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}


def test_rules_are_a_prometheus_rule_file_over_exported_metrics():
    doc = yaml.safe_load(RULES.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert {g["name"] for g in doc["groups"]} == {"vnet64"}
    assert all(set(r) <= {"alert", "expr", "for", "labels", "annotations"} for r in rules)
    assert all(r["labels"]["severity"] in ("warning", "critical") for r in rules)
    have = exported()
    for r in rules:
        for name in re.findall(r"\bvnet64_\w+", r["expr"]):
            assert name in have, f"{r['alert']}: {name} is not exported ({sorted(have)})"
    near = next(r for r in rules if r["alert"] == "Vnet64NatPortsNearlyExhausted")
    assert near["expr"] == "vnet64_nat_port_use_ratio > 0.8"     # the 80 %
