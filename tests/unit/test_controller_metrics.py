"""The controller's Prometheus collector (controller/metrics.py) on a stand-in app, through
prometheus_client's exposition and parser; and the one listen-address syntax both
--metrics options share (vnet64.prom)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace as NS

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vnet64 import prom
from vnet64.controller.metrics import ControllerCollector


def exposed(app) -> dict:
    registry = CollectorRegistry()
    registry.register(ControllerCollector(app))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def host(name: str, pairs: int):
    return NS(node=NS(role="host", name=name), pairs=dict.fromkeys(range(pairs)))


def test_switches_pairs_and_events():
    logic = NS(switches={1: host("host1", 3), 2: NS(node=NS(role="appliance", name="appliance"), pairs={})},
               stats=Counter(packet_ins=7, pairs_installed=3))
    ready = NS(state="ready", resync_seconds=0.25, log=NS(extra={"node": "host1"}))
    app = NS(settings=NS(node=None), switches={1: ready, 2: NS(state="resyncing", resync_seconds=None)},
             logic=logic, resyncs=3, nb_connected=lambda: True,
             errors=Counter({"switch: OFPBMC_BAD_FIELD": 2, "logic: packet_in": 1}), nb_apply_seconds=0.012,
             nb=NS(stats={"full": 1, "incremental": 4, "cond_changes": 0}), nb_cfg=41, nb_lag_seconds=0.03)
    m = exposed(app)
    assert m[("vnet64_controller_resync_seconds", (("node", "host1"), ("scope", "central")))] == 0.25
    assert not any(n == "vnet64_controller_resync_seconds" and ("node", "appliance") in ls for n, ls in m)
    assert m[("vnet64_controller_resyncs_total", (("scope", "central"),))] == 3
    assert m[("vnet64_controller_nb_apply_seconds", (("scope", "central"),))] == 0.012
    assert m[("vnet64_controller_nb_cfg", (("scope", "central"),))] == 41
    assert m[("vnet64_controller_nb_lag_seconds", (("scope", "central"),))] == 0.03
    assert m[("vnet64_controller_errors_total", (("error", "switch: OFPBMC_BAD_FIELD"), ("scope", "central")))] == 2
    assert m[("vnet64_controller_errors_total", (("error", "logic: packet_in"), ("scope", "central")))] == 1
    assert m[("vnet64_controller_nb_connected", (("scope", "central"),))] == 1
    assert m[("vnet64_controller_nb_updates_total", (("kind", "incremental"), ("scope", "central")))] == 4
    assert m[("vnet64_controller_info", (("scope", "central"),))] == 1
    assert m[("vnet64_controller_switches", (("scope", "central"), ("state", "ready")))] == 1
    assert m[("vnet64_controller_switches", (("scope", "central"), ("state", "resyncing")))] == 1
    assert m[("vnet64_controller_pairs", (("node", "host1"), ("scope", "central")))] == 3
    assert not any(n == "vnet64_controller_pairs" and ("node", "appliance") in ls for n, ls in m)
    assert m[("vnet64_controller_events_total", (("event", "packet_ins"), ("scope", "central")))] == 7


def test_before_the_nb_only_info_and_switches():
    m = exposed(NS(settings=NS(node="host1"), switches={1: NS(state="waiting")}, logic=None,
                   resyncs=0, nb_connected=lambda: False, nb=None))
    assert {n for n, _ in m} == {"vnet64_controller_info", "vnet64_controller_switches",
                                 "vnet64_controller_resyncs_total", "vnet64_controller_nb_connected"}
    assert m[("vnet64_controller_nb_connected", (("scope", "host1"),))] == 0
    assert m[("vnet64_controller_switches", (("scope", "host1"), ("state", "waiting")))] == 1


@pytest.mark.parametrize("text,want", [("10.0.0.1:9964", ("10.0.0.1", 9964)),
                                       ("[::]:9964", ("::", 9964)), ("0.0.0.0:1", ("0.0.0.0", 1))])
def test_listen_address(text, want):
    assert prom.listen_address(text) == want


@pytest.mark.parametrize("text", ["9964", "host:9964", "10.0.0.1:0", "10.0.0.1:70000", "[::]", "::1:80"])
def test_a_bad_listen_address_says_so(text):
    with pytest.raises(ValueError, match="expected IP:PORT"):
        prom.listen_address(text)


def test_the_nb_change_number_and_its_lag():
    """nb_commands.applied_nb_cfg: the lag is told only when the applied number moves
    past one applied before (the first one a reader sees was made before it was there),
    from the change's own timestamp, never below 0 (two machines' clocks)."""
    from vnet64.nb.commands import applied_nb_cfg
    assert applied_nb_cfg(None, (7, 1_000_000), 1_005.0) == (7, None)      # the first: no lag
    assert applied_nb_cfg(7, (7, 1_000_000), 1_005.0) == (7, None)         # nothing new
    assert applied_nb_cfg(7, (9, 1_004_750), 1_005.0) == (9, 0.25)
    assert applied_nb_cfg(9, (10, 1_005_100), 1_005.0) == (10, 0.0)        # a writer's clock ahead
    assert applied_nb_cfg(10, (11, 0), 1_005.0) == (11, None)              # not timed
