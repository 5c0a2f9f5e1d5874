"""Every packet a pipeline does not forward ends on a flow whose cookie names why
(``pipeline.DROP_REASONS``): the flows the controller installs on each node of the
default topology, read as ``vnet64-node stats --explain`` reads their counters."""

from __future__ import annotations

import pytest

from tests.support.fake import FakeSwitch
from tests.unit.test_pipeline_trace import PORTS, Platform
from vnet64.controller.flows import Controller
from vnet64.controller.logic import Logic
from vnet64.controller.pipeline import (DROP, DROP_REASONS, PACKET_IN_METER, PRIO_MISS, PUNT,
                                        REASON_NAMES, RESUBMIT_STAGES, Cookie, drop_cookie, name_id,
                                        tables_for)


@pytest.fixture(scope="module")
def switches() -> dict[str, FakeSwitch]:
    p = Platform()
    # with a path MTU, as the launcher runs it: the endpoints' Packet Too Big punts too
    p.logic = Logic(lambda: p.model, path_mtu=1400)
    for node in p.model.nodes:
        tables, msgs = p.logic.switch_connected(node.datapath_id, PORTS[node.name])
        p.sw[node.name] = FakeSwitch(tables)
        p.sw[node.name].apply(msgs)
    return {n: p.sw[n] for n in p.sw}


def test_every_stage_has_a_miss_flow_that_names_its_reason(switches):
    for node, sw in switches.items():
        role = "appliance" if node == "appliance" else "host"
        for stage, _ in tables_for(role).stages:
            misses = [f for f in sw.flows(stage) if f.priority == PRIO_MISS and not f.match.as_dict()]
            if stage in RESUBMIT_STAGES:      # a miss there changes nothing: no flow, nothing installed
                assert not sw.flows(stage), (node, stage)
                continue
            assert len(misses) == 1, (node, stage)
            miss = misses[0]
            if (role, stage) == ("host", "pair"):     # a new pair's first packet: to the controller
                assert miss.actions == (Controller(),) and miss.meter == PACKET_IN_METER
                assert Cookie.decode(miss.cookie).reason is None
            else:
                assert not miss.actions and miss.goto is None, (node, miss.ofctl())
                assert Cookie.decode(miss.cookie).reason in DROP_REASONS, (node, miss.ofctl())


def test_every_flow_that_does_not_forward_names_its_reason_and_only_those(switches):
    used = set()
    for node, sw in switches.items():
        for f in sw.flows():
            c = Cookie.decode(f.cookie)
            drops = not f.actions and f.goto is None
            punts = Controller() in f.actions and not (f.table == "pair" and f.priority == PRIO_MISS)
            if drops or punts:
                assert c.reason is not None, (node, f.ofctl())
                assert DROP_REASONS[c.reason][1] == (PUNT if punts else DROP), (node, f.ofctl())
                used.add(c.reason)
            else:
                assert c.reason is None, (node, f.ofctl())
    # every reason but a refused pair's (installed when the controller refuses one) is on
    # some node of the default topology
    assert used == set(DROP_REASONS) - {"refused_pair"}


def test_the_cookie_carries_the_reason_and_the_owner():
    c = Cookie.decode(drop_cookie("host", "spoofed_source", "svc1"))
    assert (c.role, c.feature, c.reason) == ("host", "drop", "spoofed_source")
    assert c.obj & 0xFFFFFFFF == name_id("svc1")
    assert str(c) == f"host/drop/spoofed_source/{name_id('svc1'):#x}"
    assert Cookie.decode(drop_cookie("appliance", "unknown_destination")).reason == "unknown_destination"
    assert len(REASON_NAMES) == len(DROP_REASONS)        # the ids are unique
    with pytest.raises(ValueError):
        drop_cookie("host", "no-such-reason")
    with pytest.raises(ValueError):
        drop_cookie("host", "refused_pair")             # that one is the deny flows' own feature
