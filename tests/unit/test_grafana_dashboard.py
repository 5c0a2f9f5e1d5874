"""deploy/grafana/vnet64-dashboard.json: what deploy/grafana/dashboard.py builds with the
Grafana Foundation SDK (typed builders generated from Grafana's dashboard schema), loads
back into the SDK's dashboard model unchanged, and queries only metrics the node agents'
and controllers' collectors export (checked on real expositions)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace as NS

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_drops import FLOWS, METERS, TABLES
from tests.unit.test_sessions import DUMP
from vnet64.controller.metrics import ControllerCollector
from vnet64.node import drops
from vnet64.node.metrics import NodeCollector

ROOT = Path(__file__).resolve().parents[2]
JSON = ROOT / "deploy" / "grafana" / "vnet64-dashboard.json"


def exported() -> set[str]:
    registry = CollectorRegistry()
    registry.register(NodeCollector("host1", "host", "netdev", lambda: DUMP, lambda: [(1, "10.0.0.4", "a-vm1")],
                                    drops=lambda: drops.parse_flows(FLOWS) + drops.parse_meters(METERS),
                                    tables=lambda: drops.parse_tables(TABLES, "host"),
                                    nb=lambda: (3, 0.02)))
    logic = NS(switches={1: NS(node=NS(role="host", name="host1"), pairs={1: None})},
               stats=Counter(packet_ins=1))
    registry.register(ControllerCollector(NS(settings=NS(node="host1"), switches={1: NS(state="ready", resync_seconds=0.1,
                                                                    log=NS(extra={"node": "host1"}))},
                                             logic=logic, resyncs=1, nb_connected=lambda: True,
                                             errors=Counter({"switch: OFPBMC_BAD_FIELD": 1}),
                                             nb=NS(stats={"full": 1}), nb_cfg=3, nb_lag_seconds=0.01)))
    text = generate_latest(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_committed_json_is_what_the_generator_builds():
    proc = subprocess.run([sys.executable, str(ROOT / "deploy" / "grafana" / "dashboard.py"), "--check"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_it_loads_into_grafanas_dashboard_model_unchanged():
    doc = json.loads(JSON.read_text())
    again = json.loads(json.dumps(Dashboard.from_json(doc), cls=JSONEncoder))
    assert again == doc
    assert doc["uid"] == "vnet64" and doc["templating"]["list"][0]["type"] == "datasource"
    ids = [p["id"] for p in doc["panels"]]
    assert len(set(ids)) == len(ids)         # Grafana keys panels by id


def test_every_query_is_over_exported_metrics():
    have = exported()
    exprs = [t["expr"] for p in json.loads(JSON.read_text())["panels"] for t in p.get("targets") or []]
    assert len(exprs) >= 9
    used = {name for e in exprs for name in re.findall(r"\bvnet64_\w+", e)}
    assert used <= have, sorted(used - have)
    # the alert's signal and the drop reasons are on it
    assert {"vnet64_nat_port_use_ratio", "vnet64_dropped_packets_total"} <= used
