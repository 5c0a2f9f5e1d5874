"""down leaves nothing - after a clean up, a crashed daemon, or an up killed half way."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from vnet64_lab import sh
from vnet64_lab.ovs import OvsNode

from .conftest import ROOT, TOPOLOGIES, need_lab, new_lab

pytestmark = pytest.mark.lab


@pytest.fixture
def fresh_lab():
    need_lab()
    lab = new_lab("u")
    lab.down()
    yield lab
    lab.down()


def _lab_pids(lab) -> list[int]:
    pids = [sh.read_pid(p) for p in lab.run_dir.rglob("*.pid")]
    return [p for p in pids if p]


def _assert_gone(lab, pids: list[int]) -> None:
    assert not lab.namespaces(), f"namespaces left: {lab.namespaces()}"
    assert not lab.run_dir.exists(), f"{lab.run_dir} left"
    alive = [p for p in pids if sh.proc_alive(p)]
    assert not alive, f"processes left: {alive}"


@pytest.mark.parametrize("topology", TOPOLOGIES, ids=lambda p: p.stem)
def test_down_removes_every_namespace_process_and_run_dir(fresh_lab, topology):
    fresh_lab.up(topology)
    pids = _lab_pids(fresh_lab)
    plan = fresh_lab.plan()
    # ovsdb-server + vswitchd + the agent per node, TAYGA per host, the NB, the controllers
    # (one per node, or the central one)
    assert len(pids) == (3 * len(plan.nodes) + len(plan.translators) + 1
                         + len(fresh_lab.controllers(plan)))
    assert set(plan.namespaces) == set(fresh_lab.namespaces())
    result = fresh_lab.down()
    assert result["namespaces"] == len(plan.namespaces)
    _assert_gone(fresh_lab, pids)
    assert fresh_lab.down()["namespaces"] == 0  # idempotent


def test_up_repairs_a_lab_whose_daemon_died(fresh_lab):
    topology = ROOT / "topologies" / "two-tenants.yaml"
    fresh_lab.up(topology)
    plan = fresh_lab.plan()
    n = plan.nodes[1]
    node = OvsNode(n.name, n.ns, n.run_dir)
    old = node.pid("ovs-vswitchd")
    subprocess.run(["kill", "-9", str(old)], check=True)  # our own daemon, by its pidfile
    sh.wait_for(lambda: not sh.proc_alive(old), 5, "the killed vswitchd to die")
    assert any("ovs-vswitchd not running" in p for p in fresh_lab.health())
    assert not fresh_lab.up(topology)["already_up"]
    assert not fresh_lab.health()
    new = OvsNode(n.name, n.ns, n.run_dir).pid("ovs-vswitchd")
    assert new and new != old


def test_down_after_an_up_killed_half_way(fresh_lab):
    topology = ROOT / "topologies" / "four-hosts.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "vnet64_lab.cli", "--prefix", fresh_lab.prefix,
                             "--run-dir", str(fresh_lab.run_dir), "up", str(topology)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill it once some node's daemons exist but before it finishes.
        sh.wait_for(lambda: proc.poll() is not None or any(
            Path(p).name == "ovs-vswitchd.pid" for p in fresh_lab.run_dir.rglob("*.pid")),
            30, "the up to be half way")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    state = fresh_lab.state()
    assert state and state["phase"] == "building", "up finished before it could be killed"
    pids = _lab_pids(fresh_lab)
    fresh_lab.down()
    _assert_gone(fresh_lab, pids)
    # and the next up works
    assert not fresh_lab.up(topology)["already_up"]
    assert not fresh_lab.health()


def test_up_refuses_another_topology_while_one_is_up(fresh_lab):
    from vnet64_lab.sh import LabError
    fresh_lab.up(ROOT / "topologies" / "two-tenants.yaml")
    with pytest.raises(LabError, match="run `vnet64-lab down` first"):
        fresh_lab.up(ROOT / "topologies" / "four-hosts.yaml")
    assert not fresh_lab.health()
