"""The controller's Prometheus metrics (issue 20, item 4; ``vnet64-controller
--vnet64-metrics IP:PORT``), read from the running app when scraped:

- ``vnet64_controller_info{scope}`` 1 (``scope``: the node a per-node controller
  serves, or ``central``);
- ``vnet64_controller_switches{scope,state}``: switches connected, by state
  (``waiting`` for the NB, ``unknown`` - no node of the NB -, ``resyncing`` while their
  flows are read back, ``ready`` after);
- ``vnet64_controller_pairs{scope,node}``: the pairs a host's switch holds;
- ``vnet64_controller_resync_seconds{scope,node}``: how long each connected switch's last
  resync took (connect to ready: its flows read back, pairs adopted), and
  ``vnet64_controller_resyncs_total{scope}`` how many finished since start;
- ``vnet64_controller_nb_connected{scope}``: 1 while the NB session is up, and
  ``vnet64_controller_nb_updates_total{scope,kind}`` the NB changes applied (``full``
  rebuilds, ``incremental`` deltas, ``cond_changes`` of a node's conditions), and
  ``vnet64_controller_nb_apply_seconds{scope}`` how long the last one took from the
  replica's update to the flows sent (the controller's part of the NB's lag);
- ``vnet64_controller_nb_cfg{scope}``: the newest NB change applied (``Platform.nb_cfg``,
  which every write transaction raises by one: compare with ``vnet64 platform show``), and
  ``vnet64_controller_nb_lag_seconds{scope}`` its propagation lag: from the writer's
  commit (its ``nb_cfg_timestamp``) to this controller's flows sent (wall clocks of two
  machines; the first change a controller sees after its start has none);
- ``vnet64_controller_errors_total{scope,error}``: errors switches sent back (``switch:
  <code>``, e.g. a flow-mod the switch refused) and role-logic calls that failed
  (``logic: <event>``), each also a WARNING / ERROR in the log;
- ``vnet64_controller_events_total{scope,event}``: what the logic counted since start -
  packet-ins, pairs set up / released / refused, connections refused at port
  exhaustion, ICMP errors the gateways sent, ... (``Logic.stats``).
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
        resync = GaugeMetricFamily("vnet64_controller_resync_seconds",
                                   "the last resync of a connected switch (connect to ready)",
                                   labels=["scope", "node"])
        for sw in _snapshot(self.app.switches).values():
            seconds = getattr(sw, "resync_seconds", None)
            if seconds is not None:
                resync.add_metric([scope, str(sw.log.extra.get("node", "?"))], seconds)
        yield resync
        resyncs = CounterMetricFamily("vnet64_controller_resyncs", "resyncs finished since start",
                                      labels=["scope"])
        resyncs.add_metric([scope], getattr(self.app, "resyncs", 0))
        yield resyncs
        nb = GaugeMetricFamily("vnet64_controller_nb_connected", "1 while the NB session is up",
                               labels=["scope"])
        nb.add_metric([scope], 1 if self.app.nb_connected() else 0)
        yield nb
        apply = getattr(self.app, "nb_apply_seconds", None)
        if apply is not None:
            lag = GaugeMetricFamily("vnet64_controller_nb_apply_seconds",
                                    "the last NB change: from the replica's update to the flows sent",
                                    labels=["scope"])
            lag.add_metric([scope], apply)
            yield lag
        cfg = getattr(self.app, "nb_cfg", None)
        if cfg is not None:
            applied = GaugeMetricFamily("vnet64_controller_nb_cfg", "the newest NB change applied "
                                        "(Platform nb_cfg)", labels=["scope"])
            applied.add_metric([scope], cfg)
            yield applied
        nb_lag = getattr(self.app, "nb_lag_seconds", None)
        if nb_lag is not None:
            lag = GaugeMetricFamily("vnet64_controller_nb_lag_seconds",
                                    "the newest NB change: from its commit to the flows sent",
                                    labels=["scope"])
            lag.add_metric([scope], nb_lag)
            yield lag
        errors = CounterMetricFamily("vnet64_controller_errors", "switch errors and logic failures",
                                     labels=["scope", "error"])
        for what, n in sorted(_snapshot(getattr(self.app, "errors", {})).items()):
            errors.add_metric([scope, what], n)
        yield errors
        view = self.app.nb
        if view is not None:
            updates = CounterMetricFamily("vnet64_controller_nb_updates", "NB changes applied",
                                          labels=["scope", "kind"])
            for kind, n in sorted(_snapshot(view.stats).items()):
                updates.add_metric([scope, kind], n)
            yield updates
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
