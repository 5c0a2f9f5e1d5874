"""The controller's Prometheus metrics (issue 20, item 4; ``vnet64-controller
--vnet64-metrics IP:PORT``), read from the running app when scraped:

- ``vnet64_controller_info{scope}`` 1 (``scope``: the node a per-node controller
  serves, or ``central``);
- ``vnet64_controller_switches{scope,state}``: switches connected, by state
  (``waiting`` for the NB, ``unknown`` - no node of the NB -, ``resyncing`` while their
  flows are read back, ``ready`` after);
- ``vnet64_controller_pairs{scope,node}``: the pairs a host's switch holds;
- ``vnet64_controller_events_total{scope,event}``: what the logic counted since start -
  packet-ins, pairs set up / released / refused, connections refused at port
  exhaustion, ICMP errors the gateways sent, flow-mod errors, ... (``Logic.stats``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


def _snapshot(d: dict) -> dict:
    """A copy of a dict the app's thread may be changing (retried if it changed meanwhile)."""
    for _ in range(5):
        try:
            return dict(d)
        except RuntimeError:
            continue
    return {}


class ControllerCollector(Collector):
    def __init__(self, app: Any):
        self.app = app

    def collect(self) -> Iterator[Any]:
        scope = self.app.settings.node or "central"
        info = GaugeMetricFamily("vnet64_controller_info", "this controller (always 1)", labels=["scope"])
        info.add_metric([scope], 1)
        yield info
        states = Counter(getattr(sw, "state", "ready") for sw in _snapshot(self.app.switches).values())
        switches = GaugeMetricFamily("vnet64_controller_switches", "switches connected, by state",
                                     labels=["scope", "state"])
        for state in ("waiting", "unknown", "resyncing", "ready"):
            switches.add_metric([scope, state], states.get(state, 0))
        yield switches
        logic = self.app.logic
        if logic is None:       # no NB model yet
            return
        pairs = GaugeMetricFamily("vnet64_controller_pairs", "pairs a host's switch holds",
                                  labels=["scope", "node"])
        for sw in _snapshot(logic.switches).values():
            if sw.node.role == "host":
                pairs.add_metric([scope, sw.node.name], len(sw.pairs))
        yield pairs
        events = CounterMetricFamily("vnet64_controller_events", "what the logic counted since start",
                                     labels=["scope", "event"])
        for name, n in sorted(_snapshot(logic.stats).items()):
            events.add_metric([scope, name], n)
        yield events
