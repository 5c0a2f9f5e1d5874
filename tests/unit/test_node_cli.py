"""``vnet64-node``'s exit status when it is stopped before the node is up: a stop
(SIGTERM from ``systemctl stop``) while it waits for the NB or Open vSwitch is not a
failure (exit 0, so the unit does not end "failed"); the same error without a stop is."""

from __future__ import annotations

import pytest

from vnet64.node import cli as node_cli
from vnet64.node.agent import AgentError


class WaitingAgent:
    """Stands in for the agent: "waits for the NB", stopped or not by then."""

    stopped = True

    def __init__(self, opts):
        pass

    def run(self, stop, once=False):
        if self.stopped:
            stop.set()                        # what the SIGTERM handler does
        raise AgentError("stopped before the NB answered")

    def close(self):
        pass


@pytest.fixture
def main(monkeypatch, tmp_path):
    monkeypatch.setattr(node_cli, "Agent", WaitingAgent)
    monkeypatch.setattr(node_cli, "setup_logging", lambda level, log_file: None)
    monkeypatch.setattr(node_cli.signal, "signal", lambda *a: None)
    return lambda: node_cli.main(["--nb", "tcp:192.0.2.1:6641", "--name", "host1",
                                  "--datapath", "netdev", "--run-dir", str(tmp_path)])


def test_a_stop_while_waiting_exits_0(main, monkeypatch, capsys):
    monkeypatch.setattr(WaitingAgent, "stopped", True)
    assert main() == 0
    assert capsys.readouterr().err == ""


def test_the_same_error_without_a_stop_exits_2(main, monkeypatch, capsys):
    monkeypatch.setattr(WaitingAgent, "stopped", False)
    assert main() == 2
    assert capsys.readouterr().err == "vnet64-node: error: stopped before the NB answered\n"
