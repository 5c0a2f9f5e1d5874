"""The lab's TLS setting without a lab: what ``up`` would run, read from a state file.

A run directory holding only ``state.json`` and the topology's copy is enough for
``Lab`` to say how it runs its daemons (the commands, the NB's remotes, br-int's
targets); the lab tests (tests/lab/test_tls_platform.py) run them for real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from vnet64_lab import lab as L
from vnet64_lab.cli import main as lab_main

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "topologies" / "two-tenants.yaml"


def _lab(tmp_path: Path, control: str, tls: bool | None) -> L.Lab:
    """A lab 'up' as far as its files go: state.json and the topology's copy."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    shutil.copyfile(TOPOLOGY, run / L.TOPOLOGY_COPY)
    state = {"phase": "up", "control": control}
    if tls is not None:
        state["tls"] = tls
    (run / L.STATE_FILE).write_text(json.dumps(state))
    return L.Lab("v64q-", run)


def _opt(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_tls_comes_from_the_argument_else_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(L.TLS_ENV, raising=False)
    assert L.Lab("v64q-", tmp_path / "a").tls is False
    assert L.Lab("v64q-", tmp_path / "a", tls=True).tls is True
    monkeypatch.setenv(L.TLS_ENV, "1")
    assert L.Lab("v64q-", tmp_path / "a").tls is True
    assert L.Lab("v64q-", tmp_path / "a", tls=False).tls is False


def test_a_lab_that_is_up_keeps_its_setting(monkeypatch, tmp_path):
    monkeypatch.setenv(L.TLS_ENV, "1")
    assert _lab(tmp_path, "node", None).tls is False    # a lab from before the setting
    lab = L.Lab("v64q-", _lab(tmp_path / "x", "node", False).run_dir, tls=True)
    assert lab.tls is False and lab.wanted_tls is True


def test_without_tls_nothing_changes(tmp_path):
    lab = _lab(tmp_path, "central", False)
    plan = lab.plan()
    assert lab.nb_remote(plan) == plan.nb_tcp_remote == "tcp:172.31.255.1:6641"
    assert lab.nb_listen_remote(plan) == "ptcp:6641:172.31.255.1"
    assert lab.bridge_controllers(plan) == ["tcp:172.31.255.1:6653"]
    agent = lab.agent_command(plan, plan.node("host1"))
    ctl = lab.controller_command(plan, lab.controller())
    assert not [a for a in agent + ctl if "private-key" in a or "privkey" in a or "cert" in a]
    server = lab.nb_server(plan)
    assert (server.private_key, server.certificate, server.ca_cert) == (None, None, None)


def test_node_control_over_tls(tmp_path):
    lab = _lab(tmp_path, "node", True)
    plan, pki = lab.plan(), tmp_path / "run" / "pki"
    assert lab.nb_remote(plan) == "ssl:172.31.255.1:6641"
    assert lab.nb_listen_remote(plan) == "pssl:6641:172.31.255.1"
    assert lab.bridge_controllers(plan) == []       # each controller connects to br-int.mgmt
    server = lab.nb_server(plan)
    assert (server.private_key, server.certificate, server.ca_cert) == (
        pki / "nb-privkey.pem", pki / "nb-cert.pem", pki / "ca/controllerca/cacert.pem")
    agent = lab.agent_command(plan, plan.node("host1"))
    assert _opt(agent, "--nb") == "ssl:172.31.255.1:6641"
    assert _opt(agent, "--nb-private-key") == str(pki / "agent-host1-privkey.pem")
    assert _opt(agent, "--nb-certificate") == str(pki / "agent-host1-cert.pem")
    assert _opt(agent, "--nb-ca-cert") == str(pki / "ca/controllerca/cacert.pem")
    assert "--ovs-private-key" not in agent        # no ssl: switch target to serve
    ctl = lab.controller_command(plan, lab.controller("host1"))
    assert _opt(ctl, "--vnet64-nb-remote") == "ssl:172.31.255.1:6641"
    assert _opt(ctl, "--vnet64-nb-private-key") == str(pki / "controller-host1-privkey.pem")
    assert _opt(ctl, "--vnet64-nb-ca-cert") == str(pki / "ca/controllerca/cacert.pem")
    assert _opt(ctl, "--vnet64-switch").startswith("unix:") and "--ctl-privkey" not in ctl


def test_central_control_over_tls(tmp_path):
    lab = _lab(tmp_path, "central", True)
    plan, pki = lab.plan(), tmp_path / "run" / "pki"
    assert lab.bridge_controllers(plan) == ["ssl:172.31.255.1:6653"]
    assert lab.controller_target(plan) == "ssl:172.31.255.1:6653"
    agent = lab.agent_command(plan, plan.node("appliance"))
    assert _opt(agent, "--ovs-private-key") == str(pki / "switch-appliance-privkey.pem")
    assert _opt(agent, "--ovs-certificate") == str(pki / "switch-appliance-cert.pem")
    assert _opt(agent, "--ovs-ca-cert") == str(pki / "ca/controllerca/cacert.pem")
    ctl = lab.controller_command(plan, lab.controller())
    assert _opt(ctl, "--ctl-privkey") == str(pki / "controller-privkey.pem")
    assert _opt(ctl, "--ctl-cert") == str(pki / "controller-cert.pem")
    assert _opt(ctl, "--ca-certs") == str(pki / "ca/switchca/cacert.pem")
    assert _opt(ctl, "--vnet64-nb-certificate") == str(pki / "controller-cert.pem")


def test_the_pki_is_made_with_ovs_pki(tmp_path):
    if not shutil.which("ovs-pki"):
        pytest.skip("ovs-pki is not installed")
    lab = _lab(tmp_path, "central", True)
    plan = lab.plan()
    lab._make_pki(plan)
    pki = lab.pki
    names = ["nb", "controller", *(f"agent-{n.name}" for n in plan.nodes),
             *(f"switch-{n.name}" for n in plan.nodes)]
    for name in names:
        assert Path(pki.key(name)).is_file() and Path(pki.cert(name)).is_file(), name
    for name, ca in [("nb", pki.controller_ca), ("controller", pki.controller_ca),
                     ("agent-host1", pki.controller_ca), ("switch-host1", pki.switch_ca)]:
        proc = subprocess.run(["openssl", "verify", "-CAfile", ca, pki.cert(name)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
    proc = subprocess.run(["openssl", "verify", "-CAfile", pki.controller_ca,
                           pki.cert("switch-host1")], capture_output=True, text=True)
    assert proc.returncode != 0          # a switch's certificate is not the controller CA's


def test_the_cli_option(tmp_path, monkeypatch):
    monkeypatch.delenv(L.TLS_ENV, raising=False)
    seen = {}

    def fake_up(self, topology):
        seen["tls"] = self.wanted_tls
        return {"already_up": True, "topology": str(topology)}
    monkeypatch.setattr(L.Lab, "up", fake_up)
    assert lab_main(["--prefix", "v64q-", "--run-dir", str(tmp_path / "r"), "up", "--tls"]) == 0
    assert seen["tls"] is True
    assert lab_main(["--prefix", "v64q-", "--run-dir", str(tmp_path / "r"), "up"]) == 0
    assert seen["tls"] is False
