"""What systemd does when a unit's main process dies, as ``tests/support/guide.py`` reads it
for the lab's recovery test (tests/lab/test_deploy_recovery.py, which restarts a killed
process "as systemd would per the unit" since systemd is not PID 1 there). No root.

``tests/unit/test_deploy_units.py`` checks that every shipped service has ``Restart=``
on-failure or always and a ``RestartSec=`` of 5 s at most; these check that the recovery
test reads those settings as systemd does, so what it restarts and when is the unit's.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.support import guide as G

SYSTEMD = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
SERVICES = sorted(p.name for p in SYSTEMD.glob("*.service"))


def instance(name: str) -> str:
    return name.replace("@.", "@host1.")


@pytest.mark.parametrize("name", SERVICES)
def test_every_shipped_service_is_restarted_after_kill_9(name):
    unit = G.read_unit(SYSTEMD, instance(name))
    text = (SYSTEMD / name).read_text()
    assert unit.restart == re.search(r"^Restart=(\S+)", text, re.M).group(1)
    assert unit.restart_sec == G.time_span(re.search(r"^RestartSec=(\S+)", text, re.M).group(1))
    assert 0 < unit.restart_sec <= 5
    assert unit.restarts_after_signal(signal.SIGKILL), name
    # a clean stop (systemctl stop: SIGTERM) is not restarted by on-failure
    assert unit.restarts_after_signal(signal.SIGTERM) == (unit.restart == "always")


def test_the_agent_leaves_its_children_and_the_others_do_not():
    assert G.read_unit(SYSTEMD, "vnet64-node.service").kill_mode == "process"    # TAYGA
    for name in ("vnet64-nb.service", "vnet64-controller@host1.service"):
        assert G.read_unit(SYSTEMD, name).kill_mode == "control-group"           # the default


@pytest.mark.parametrize("restart, kill, term", [
    ("no", False, False), ("always", True, True), ("on-failure", True, False),
    ("on-abnormal", True, False), ("on-abort", True, False), ("on-success", False, False),
    ("on-watchdog", False, False),
])
def test_restart_after_a_signal_follows_systemds_table(restart, kill, term, tmp_path):
    """systemd.service(5), Restart=: an unclean signal (SIGKILL) restarts with always,
    on-failure, on-abnormal and on-abort; a clean one (SIGTERM) only with always."""
    (tmp_path / "x.service").write_text(f"[Service]\nExecStart=/bin/true\nRestart={restart}\n")
    unit = G.read_unit(tmp_path, "x.service")
    assert unit.restarts_after_signal(signal.SIGKILL) is kill
    assert unit.restarts_after_signal(signal.SIGTERM) is term


def test_a_unit_without_restart_settings_has_systemds_defaults(tmp_path):
    (tmp_path / "x.service").write_text("[Service]\nExecStart=/bin/true\n")
    unit = G.read_unit(tmp_path, "x.service")
    assert (unit.restart, unit.restart_sec, unit.kill_mode) == ("no", 0.1, "control-group")
    assert not unit.restarts_after_signal(signal.SIGKILL)


@pytest.mark.parametrize("text, seconds", [
    ("2", 2), ("2s", 2), ("1.5s", 1.5), ("100ms", 0.1), ("1min 30s", 90), ("1min30s", 90),
    ("2h", 7200),
])
def test_time_spans(text, seconds):
    assert G.time_span(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "2 fortnights", "-1s"])
def test_a_bad_time_span_is_refused(text):
    with pytest.raises(G.GuideError):
        G.time_span(text)
