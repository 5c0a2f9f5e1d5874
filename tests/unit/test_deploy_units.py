"""The systemd units of ``deploy/systemd/`` and their installer, ``deploy/install-units.sh``.

Every unit is installed into a temporary ``--root`` with this test run's venv written into
its ``ExecStart=`` (so the executables resolve), then checked by ``systemd-analyze verify``.
systemd only warns about much that is wrong (a misspelt setting is "Unknown key ...,
ignoring", exit status 0), so any message at all fails the test; a test breaks a unit on
purpose to show that this catches it. Where Open vSwitch's own units are not installed,
stand-ins let the agent's unit resolve its dependencies (after the system's units in the
search path, so the real ones win). Skipped without ``systemd-analyze`` (Debian: the
``systemd`` package, which ``make setup`` installs).

The rest needs no systemd: what the units promise (deploy/README.md), that the controller
and the agent accept the command lines and the example configuration the units give them,
and the installer itself (files land, configurations are kept, a second run is a no-op).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vnet64.controller import launcher
from vnet64.node import cli as node_cli

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
INSTALL = DEPLOY / "install-units.sh"
SHIPPED_VENV = "/opt/vnet64/venv"
VENV = Path(sys.prefix)             # this run's venv: bin/vnet64-node, bin/vnet64-controller
UNIT_SUFFIXES = (".service", ".socket", ".target", ".timer", ".path")
UNITS = sorted(p.name for p in (DEPLOY / "systemd").iterdir() if p.suffix in UNIT_SUFFIXES)
SERVICES = [u for u in UNITS if u.endswith(".service")]
CONFIGS = sorted(p.name for p in (DEPLOY / "config").iterdir() if p.is_file())
ANALYZE = shutil.which("systemd-analyze")
OVS_UNITS = ("openvswitch-switch.service", "ovsdb-server.service", "ovs-vswitchd.service")
STAND_IN = """[Unit]
Description=stand-in for {name} (Open vSwitch's unit is not installed here)
[Service]
Type=oneshot
ExecStart=/bin/true
"""

needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed "
                                   "(Debian: apt-get install systemd)")


def install(root: Path, *args: str, env: dict[str, str] | None = None,
            venv: Path | str = VENV) -> subprocess.CompletedProcess:
    return subprocess.run([str(INSTALL), "--root", str(root), "--venv", str(venv), *args],
                          capture_output=True, text=True, timeout=60, check=False, env=env)


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's settings: section -> key -> values (continuation lines joined)."""
    out: dict[str, dict[str, list[str]]] = {}
    section, pending = "", ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(section, {}).setdefault(key.strip(), []).append(" ".join(value.split()))
    return out


def shipped(unit: str) -> dict[str, dict[str, list[str]]]:
    return directives((DEPLOY / "systemd" / unit).read_text())


def words(values: list[str]) -> list[str]:
    return [w for v in values for w in v.split()]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min)?", value)
    assert m, f"not a time span this test reads: {value!r}"
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "min": 60}[m.group(2)]


# ---------------------------------------------------------------------------
# systemd-analyze verify


@pytest.fixture(scope="module")
def unit_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    proc = install(root)
    assert proc.returncode == 0, proc.stderr
    return root / "etc" / "systemd" / "system"


@pytest.fixture(scope="module")
def search_path(tmp_path_factory, unit_dir) -> list[str]:
    """Where verify looks for units: ours, then the system's, then Open vSwitch stand-ins."""
    stand_ins = tmp_path_factory.mktemp("stand-ins")
    for name in OVS_UNITS:
        (stand_ins / name).write_text(STAND_IN.format(name=name))
    env = {k: v for k, v in os.environ.items() if k != "SYSTEMD_UNIT_PATH"}
    system = subprocess.run([ANALYZE, "unit-paths"], capture_output=True, text=True, env=env,
                            timeout=60, check=True).stdout.split()
    return [str(unit_dir), *system, str(stand_ins)]


def verify(search_path: list[str], unit: str) -> tuple[int, str]:
    """``systemd-analyze verify`` of ``unit`` (a template as instance host1): its exit
    status and every message it printed."""
    env = {**os.environ, "SYSTEMD_UNIT_PATH": ":".join(search_path)}
    proc = subprocess.run([ANALYZE, "verify", "--man=no", unit.replace("@.", "@host1.")],
                          capture_output=True, text=True, env=env, timeout=60, check=False,
                          cwd=search_path[0])
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def test_units_are_shipped():
    assert {"vnet64-node.service", "vnet64-controller.service",
            "vnet64-controller@.service"} <= set(UNITS)


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_finds_nothing(unit, search_path):
    status, messages = verify(search_path, unit)
    assert (status, messages) == (0, ""), f"systemd-analyze verify {unit}:\n{messages}"


@needs_analyze
@pytest.mark.parametrize("change, message", [
    (("RestartSec=", "RestartSecs="), "Unknown key"),             # only a warning to systemd
    (("/bin/vnet64-node ", "/bin/vnet64-nodes "), "is not executable"),
    (("Requires=openvswitch-switch.service", "Requires=no-such-v64.service"), "not found"),
    (("Type=exec", "Type=execute"), "Failed to parse"),
])
def test_verify_catches_a_broken_unit(change, message, unit_dir, search_path, tmp_path):
    """What the test above would say of a broken unit (here the agent's, broken in a copy)."""
    text = (unit_dir / "vnet64-node.service").read_text()
    old, new = change
    assert old in text
    (tmp_path / "vnet64-node.service").write_text(text.replace(old, new, 1))
    status, messages = verify([str(tmp_path), *search_path], "vnet64-node.service")
    assert (status, messages) != (0, "")
    assert message in messages, messages


# ---------------------------------------------------------------------------
# what the units promise


@pytest.mark.parametrize("unit", SERVICES)
def test_every_service_restarts_with_a_limit_and_logs_to_the_journal(unit):
    d = shipped(unit)
    service, section = d["Service"], d["Unit"]
    assert service["Restart"][-1] in ("on-failure", "always"), unit
    assert seconds(service["RestartSec"][-1]) <= 5, unit
    assert "StartLimitIntervalSec" in section and "StartLimitBurst" in section, unit
    for key in ("StandardOutput", "StandardError"):
        assert service.get(key, ["journal"])[-1] == "journal", f"{unit}: {key} not the journal"
    assert not re.search(r"--log[-_]file", " ".join(service["ExecStart"])), unit
    program = Path(service["ExecStart"][-1].split()[0])
    if program.name.startswith("vnet64"):
        assert str(program.parent) == f"{SHIPPED_VENV}/bin", \
            f"{unit}: the installer writes --venv in place of {SHIPPED_VENV}/bin"


@pytest.mark.parametrize("unit", SERVICES)
def test_every_service_has_its_settings_in_etc_vnet64_with_a_shipped_example(unit):
    settings = " ".join(v for values in shipped(unit)["Service"].values() for v in values)
    named = set(re.findall(r"/etc/vnet64/([\w@-]+(?:\.[\w@-]+)*)", settings))
    assert named, f"{unit} names no settings file in /etc/vnet64"
    assert named <= set(CONFIGS), f"{unit}: no example in deploy/config for {named - set(CONFIGS)}"


def test_the_agent_is_bound_to_open_vswitch_and_leaves_tayga_running():
    d = shipped("vnet64-node.service")
    assert "openvswitch-switch.service" in words(d["Unit"]["Requires"])
    assert set(OVS_UNITS) <= set(words(d["Unit"]["After"]))
    assert "openvswitch-switch.service" in words(d["Install"]["WantedBy"])
    assert d["Service"]["KillMode"] == ["process"]      # TAYGA is in the agent's cgroup
    assert d["Service"]["EnvironmentFile"] == ["/etc/vnet64/node.env"]


def test_the_agent_takes_its_settings_from_node_env():
    """node.env documents the variables the unit and vnet64-node read, and its example
    options are vnet64-node's."""
    d = shipped("vnet64-node.service")
    argv = shlex.split(d["Service"]["ExecStart"][-1])
    assert argv[1:] == ["$VNET64_NODE_OPTS"]        # unbraced: split into words, none if empty
    text = (DEPLOY / "config" / "node.env").read_text()
    assert re.search(r"^#VNET64_NB=tcp:", text, re.M)
    assert re.search(r"^VNET64_NODE_OPTS=$", text, re.M)
    example = re.search(r'^#VNET64_NODE_OPTS="(.*)"$', text, re.M).group(1)
    args = node_cli.build_parser(False).parse_args(shlex.split(example))
    assert (args.name, args.datapath, args.uplink) == ("host1", "netdev", "eth1")


def controller_argv(unit: str) -> list[str]:
    argv = shlex.split(shipped(unit)["Service"]["ExecStart"][-1].replace("%i", "host1"))
    assert argv[0] == f"{SHIPPED_VENV}/bin/vnet64-controller"
    return [a.replace("/etc/vnet64/", f"{DEPLOY}/config/") for a in argv[1:]]


def test_the_central_controller_serves_every_node_with_the_example_settings():
    conf = launcher.parse(controller_argv("vnet64-controller.service"))
    assert (conf.vnet64.node, conf.vnet64.switch) == (None, None)    # every node, listening
    assert (conf.ofp_listen_host, conf.ofp_tcp_listen_port) == ("0.0.0.0", 6653)


def test_the_node_controller_serves_its_node_on_its_br_int_whatever_the_file_says(tmp_path):
    """Through br-int's management socket (docs/node.md), the command line winning over
    the shared file."""
    mgmt = "unix:/var/run/openvswitch/br-int.mgmt"
    conf = launcher.parse(controller_argv("vnet64-controller@.service"))
    assert (conf.vnet64.node, conf.vnet64.switch) == ("host1", mgmt)
    assert launcher.parse_switch_target(conf.vnet64.switch) == "/var/run/openvswitch/br-int.mgmt"
    (tmp_path / "controller.conf").write_text("[vnet64]\nnode = other\n"
                                              "switch = tcp:192.0.2.9:6653\n")
    argv = [a.replace(f"{DEPLOY}/config/", f"{tmp_path}/") for a in
            controller_argv("vnet64-controller@.service")]
    conf = launcher.parse(argv)
    assert (conf.vnet64.node, conf.vnet64.switch) == ("host1", mgmt)
    d = shipped("vnet64-controller@.service")
    assert "openvswitch-switch.service" in words(d["Unit"]["After"])
    assert "Requires" not in d["Unit"]     # it retries the socket: Open vSwitch may restart


def test_the_example_controller_conf_sets_nothing_but_documents_the_options():
    conf = launcher.parse(["--config-file", str(DEPLOY / "config" / "controller.conf")])
    defaults = launcher.parse([])
    for name in ("ofp_listen_host", "ofp_tcp_listen_port", "log_level"):
        assert conf[name] == defaults[name]
    for name in ("nb_remote", "path_mtu", "snat_ports", "node", "switch"):
        assert conf.vnet64[name] == defaults.vnet64[name]
    text = (DEPLOY / "config" / "controller.conf").read_text()
    for name in ("ofp_listen_host", "ofp_tcp_listen_port", "log_level", "nb_remote",
                 "path_mtu", "snat_ports"):
        assert re.search(rf"^#{name} = ", text, re.M), name


# ---------------------------------------------------------------------------
# the installer


def snapshot(root: Path) -> dict[str, tuple[int, bytes, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes(),
                                       stat.S_IMODE(p.stat().st_mode))
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def fake_systemctl(tmp_path) -> tuple[dict[str, str], Path]:
    """An environment whose ``systemctl`` only records that it was called."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "systemctl-calls"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, calls


def test_install_puts_units_and_configs_in_place(tmp_path, fake_systemctl):
    env, calls = fake_systemctl
    proc = install(tmp_path, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    unit_dir, config_dir = tmp_path / "etc/systemd/system", tmp_path / "etc/vnet64"
    assert sorted(p.name for p in unit_dir.iterdir()) == UNITS
    assert sorted(p.name for p in config_dir.iterdir()) == CONFIGS
    for unit in UNITS:
        text = (unit_dir / unit).read_text()
        assert f"{SHIPPED_VENV}/" not in text, unit
        assert text == (DEPLOY / "systemd" / unit).read_text().replace(f"{SHIPPED_VENV}/",
                                                                        f"{VENV}/")
        assert f"installed  {unit_dir / unit}" in proc.stdout
    agent = directives((unit_dir / "vnet64-node.service").read_text())
    assert agent["Service"]["ExecStart"] == [f"{VENV}/bin/vnet64-node $VNET64_NODE_OPTS"]
    for name in CONFIGS:
        assert (config_dir / name).read_bytes() == (DEPLOY / "config" / name).read_bytes()
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [*unit_dir.iterdir(), *config_dir.iterdir()]}
    assert modes == {0o644}
    assert not calls.exists(), "systemctl was run for another root"


def test_install_keeps_existing_configs(tmp_path):
    config_dir = tmp_path / "etc/vnet64"
    config_dir.mkdir(parents=True)
    mine = "VNET64_NB=tcp:10.9.9.9:6641\n"
    (config_dir / "node.env").write_text(mine)
    proc = install(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (config_dir / "node.env").read_text() == mine
    assert re.search(r"^kept +\S+/node\.env \(yours; the shipped example is "
                     r"deploy/config/node\.env\)$", proc.stdout, re.M), proc.stdout
    assert (config_dir / "controller.conf").exists()      # the missing one is installed


def test_a_second_install_changes_nothing(tmp_path, fake_systemctl):
    env, calls = fake_systemctl
    assert install(tmp_path, env=env).returncode == 0
    before = snapshot(tmp_path)
    proc = install(tmp_path, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert snapshot(tmp_path) == before
    assert proc.stdout.splitlines()[-1] == "nothing changed"
    assert not re.search(r"^(installed|updated)", proc.stdout, re.M), proc.stdout
    assert not calls.exists()


def test_install_replaces_a_changed_unit_and_a_new_venv(tmp_path):
    assert install(tmp_path).returncode == 0
    unit = tmp_path / "etc/systemd/system/vnet64-node.service"
    unit.write_text(unit.read_text() + "# edited by hand\n")
    proc = install(tmp_path)
    assert re.search(r"^updated +\S+/vnet64-node\.service$", proc.stdout, re.M), proc.stdout
    assert "edited by hand" not in unit.read_text()
    proc = install(tmp_path, venv="/srv/vnet64/venv/")           # trailing slash dropped
    assert proc.returncode == 0, proc.stderr
    assert "ExecStart=/srv/vnet64/venv/bin/vnet64-node $VNET64_NODE_OPTS" in unit.read_text()


def test_install_help_tells_the_options():
    proc = subprocess.run([str(INSTALL), "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: deploy/install-units.sh [--root DIR] [--venv DIR] "
                                  "[--no-reload]\n")
    for option in ("--root DIR", "--venv DIR", "--no-reload", "/etc/systemd/system/",
                   "/etc/vnet64/", "never overwritten", "daemon-reload", SHIPPED_VENV):
        assert option in proc.stdout, option


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--venv", "relative/venv"], "--venv wants an absolute path"),
    (["--venv", "/opt/my venv"], "--venv wants an absolute path"),
    (["--venv", "/opt/%i"], "--venv wants an absolute path"),
    (["--root"], "--root needs a directory"),
    (["--root", "/nonexistent-v64"], "--root /nonexistent-v64: no such directory"),
])
def test_install_refuses_bad_arguments_and_says_why(args, message, tmp_path):
    proc = subprocess.run([str(INSTALL), *args], capture_output=True, text=True, timeout=60,
                          check=False, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"install-units.sh: error: {message}"), proc.stderr
    assert not (tmp_path / "etc").exists()
