"""CI smoke of the growth and restart benchmarks (issue 6): both run with ``--quick``.

Each script runs as a subprocess in its own lab (prefix ``v64k-``, run dir
``/run/vnet64-lab-k``, one after the other) and writes its JSON to a temporary
file. The tests check behaviour, never timings:

- growth: every subscription is in the NB and programmed - the appliance got
  exactly one ``route`` flow per subscribed VM, host1 exactly one ``v6_dnat``
  flow (and 7 flows in all) per VM that has a port there, host2 nothing - and
  the controller logged no error;
- resync: after kill -9 and restart of the controller, the long-lived TCP
  connection still answers on the same port, every pair's flows are still
  there with the same cookie (adopted, not re-allocated), the planted stale
  flow is swept, and new pairs set up afterwards get aliases no live pair has.

About 80 s in all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vnet64_lab import Lab

from tests.lab.conftest import ROOT, need_lab

PREFIX, RUN_DIR = "v64k-", "/run/vnet64-lab-k"


def log_tails(run_dir: str, lines: int = 15) -> str:
    """The end of the lab's controller and agent logs (what a hung run was doing): the
    central controller's, or each node's."""
    out = []
    for log in sorted(Path(run_dir).glob("ctl/controller.log")) + sorted(
            Path(run_dir).glob("controllers/*/controller.log")) + sorted(
            Path(run_dir).glob("agents/*/agent.log")):
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
        out.append(f"== {log}\n" + "\n".join(text))
    return "\n".join(out) or f"(no logs under {run_dir})"


def run_quick(script: str, tmp_path) -> tuple[dict, str]:
    out = tmp_path / f"{script}.json"
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--quick", "--prefix",
             PREFIX, "--run-dir", RUN_DIR, "--json", str(out)],
            capture_output=True, text=True, timeout=240, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        # a hang guard, not a timing: say what the lab was doing, then take it down
        tails = log_tails(RUN_DIR)
        Lab(PREFIX, RUN_DIR).down()
        pytest.fail(f"{script} --quick did not finish in {exc.timeout:g} s:\n"
                    f"{(exc.stdout or b'')[-3000:]!r}\n{tails}")
    assert proc.returncode == 0, f"{script} --quick failed ({proc.returncode}):\n" \
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(autouse=True)
def lab_only():
    need_lab()


def test_growth_quick_programs_every_subscription(tmp_path):
    result, stdout = run_quick("growth", tmp_path)
    assert "| subscriptions | VM ports on host1 |" in stdout, stdout[-3000:]
    per_vm = result["host_flows_per_vm"]
    sizes = result["sizes"]
    assert [int(n) for n in sizes] == [200, 1000]
    for n_text, runs in sizes.items():
        n = int(n_text)
        assert len(runs) == 1
        r = runs[0]
        ports = round(n * result["host_port_share"])
        assert r["ports"] == ports
        assert r["nb_counts"] == {"VM": n, "Subscription": n, "Host_Mapping": n}
        b, a = r["before"], r["after"]
        assert a["appliance route"] == b["appliance route"] + n, (n, b, a)
        assert a["appliance"] == b["appliance"] + n, (n, b, a)
        assert a["host1 v6_dnat"] == b["host1 v6_dnat"] + ports, (n, b, a)
        # + the return path to the service's endpoint, which a controller reading only
        # host1's rows gets with host1's first subscribed VM (besides the stage's miss flow)
        # and, for the direct path, the flow passing on what that endpoint's host sends
        # straight to host1 with no pair there (from_tunnel)
        assert a["host1 to_service"] == 2, (n, b, a)
        assert a["host1"] == b["host1"] + per_vm * ports + 2 * (2 - b["host1 to_service"]), (n, b, a)
        assert a["host2"] == b["host2"], (n, b, a)
        assert r["complete"]
        assert r["log_errors"] == 0, "\n".join(r["log_error_lines"])


def test_resync_quick_keeps_the_connection_and_every_pair(tmp_path):
    result, stdout = run_quick("resync", tmp_path)
    assert "| active pairs | resync (s) |" in stdout, stdout[-3000:]
    sizes = result["sizes"]
    assert [int(n) for n in sizes] == [0, 20, 100]
    for n_text, runs in sizes.items():
        n = int(n_text)
        r = runs[0]
        assert r["connection_ok"], r.get("connection_error")
        assert r["pairs_before"] == n + 1 and r["pairs_after"] == n + 1, r
        assert r["pairs_kept"] and r["flows_kept"], "a pair was re-allocated or lost its flows"
        assert r["flows_per_pair"] == 4       # + the direct path's (svc1 is on host2)
        assert r["stale_swept"], "the stale pair flow survived the resync"
        assert r["new_pairs"] == 20 and r["no_duplicate"], "duplicate allocation after the resync"
        # --kill host1 (the default): host1's controller restarted, or the central one
        # serving every switch
        restarted = {"host1"} if result["control"] == "node" else {"appliance", "host1", "host2"}
        assert set(r["per_switch"]) == restarted, r["per_switch"]
        assert r["log_errors"] == 0, "\n".join(r["log_error_lines"])
        assert r["ok"]
