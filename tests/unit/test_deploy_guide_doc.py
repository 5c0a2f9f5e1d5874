"""docs/deploy.md is a program the lab test runs (tests/lab/test_deploy_guide.py); these
checks need no root: every command block says where it runs and is one the lab can run or
stand in for, the platform it writes is valid, and the substitutions change only what the
guide's last section says they change."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import guide as G
from vnet64 import topology

TEXT = G.GUIDE.read_text()
BLOCKS = G.blocks(TEXT)
STAND_INS = {"packages", "venv", "units", "tap", "guest"}   # tests/lab/test_deploy_guide.py
UNITS = {p.name for p in (Path(__file__).resolve().parents[2] / "deploy/systemd").iterdir()}


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> topology.Topology:
    path = tmp_path_factory.mktemp("guide") / "platform.yaml"
    path.write_text(G.heredoc(TEXT, "/etc/vnet64/platform.yaml"))
    return topology.load(path)


def test_every_block_names_machines_the_guide_has(platform):
    machines = {n.name for n in platform.nodes} | {"ca"}
    guests = {v.name for v in platform.vms} | {e.name for e in platform.endpoints}
    assert len(BLOCKS) > 20
    for b in BLOCKS:
        for t in b.targets:
            assert t == G.EVERY_MACHINE or t in machines | guests, (b.line, t)


def test_a_block_without_its_machines_is_refused():
    with pytest.raises(G.GuideError, match="must start with '# on MACHINES'"):
        G.blocks("text\n```sh\nvnet64 load x.yaml\n```\n")


def test_every_stand_in_is_known_and_what_it_stands_for_is_in_the_block(platform):
    guests = {v.name for v in platform.vms} | {e.name for e in platform.endpoints}
    for b in BLOCKS:
        if not b.tag:
            continue
        assert b.stand_in in STAND_INS, (b.line, b.tag)
        want = {"packages": "apt-get install", "venv": "pip install --require-hashes",
                "units": "systemctl enable --now", "tap": "ip tuntap add",
                "guest": "virsh start"}[b.stand_in]
        assert want in b.script, (b.line, b.tag)
        if b.stand_in in ("tap", "guest"):
            assert b.args and b.args[0] in guests, (b.line, b.tag)
    assert {b.stand_in for b in BLOCKS if b.tag} == STAND_INS


def test_no_block_runs_systemctl_apt_or_virsh_as_written():
    for b in BLOCKS:
        if not b.tag:
            for word in ("systemctl ", "apt-get ", "virsh ", "ip tuntap "):
                assert word not in b.script, (b.line, word)


def test_the_units_the_guide_starts_are_shipped():
    for b in BLOCKS:
        if b.stand_in == "units":
            for line in b.script.splitlines():
                if line.startswith("systemctl enable --now"):
                    for unit in line.split()[3:]:
                        unit = unit.replace("$NODE", "host1")
                        base = unit.split("@")[0] + "@.service" if "@" in unit else unit
                        assert base in UNITS, (b.line, unit)


def test_substitution_changes_only_the_listed_paths(tmp_path):
    script = ("cat /etc/vnet64/node.env /var/lib/vnet64/nb.db /run/vnet64-node/x\n"
              "ovs-pki --dir=/var/lib/openvswitch/pki init\n"
              "vnet64-controller --vnet64-switch unix:/var/run/openvswitch/br-int.mgmt\n"
              "cd /opt/vnet64/src && deploy/install-units.sh --venv /opt/vnet64/venv\n"
              "VNET64_NODE_OPTS=\"--uplink eth1\" # eth10 stays\n"
              "scp root@$n:/etc/vnet64/pki/$n-req.pem /etc/vnet64/pki/\n"
              "ip addr add 10.0.0.4/24 dev eth0\n")
    m = tmp_path / "machines/host1"
    out = G.substitute(script, m, Path("/v"), Path("/src"), Path("/ovs/host1"))
    assert out.splitlines() == [
        f"cat {m}/etc/vnet64/node.env {m}/var/lib/vnet64/nb.db {m}/run/vnet64-node/x",
        f"ovs-pki --dir={m}/var/lib/openvswitch/pki init",
        "vnet64-controller --vnet64-switch unix:/ovs/host1/br-int.mgmt",
        f"cd /src && deploy/install-units.sh --root {m} --no-reload --venv /v",
        "VNET64_NODE_OPTS=\"--uplink ul0\" # eth10 stays",
        f"scp root@$n:/etc/vnet64/pki/$n-req.pem {m}/etc/vnet64/pki/",
        "ip addr add 10.0.0.4/24 dev eth0"]


def test_scp_copies_between_the_machines_directories(tmp_path):
    (tmp_path / "host1/etc").mkdir(parents=True)
    (tmp_path / "host1/etc/a.pem").write_text("A")
    (tmp_path / "ca").mkdir()
    script = G.SCP_FUNCTION + "n=host1\nscp root@$n:/etc/a.pem .\nscp a.pem root@$n:/etc/b.pem\n"
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path / "ca", check=True,
                   env={"GUIDE_MACHINES": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert (tmp_path / "ca/a.pem").read_text() == "A"
    assert (tmp_path / "host1/etc/b.pem").read_text() == "A"


def test_a_unit_command_line_is_expanded_as_systemd_does(tmp_path):
    unit = tmp_path / "vnet64-controller@.service"
    unit.write_text("[Service]\nEnvironmentFile=/etc/vnet64/x.env\n"
                    "ExecStart=/v/bin/prog --a ${ONE} \\\n    --node %i $OPTS\n")
    env_file = tmp_path / "x.env"
    env_file.write_text('# comment\nOPTS="--b 1  --c 2"\nONE=x y\n')
    u = G.read_unit(tmp_path, "vnet64-controller@host3.service")
    assert u.environment_files == ("/etc/vnet64/x.env",)
    env = G.read_environment_file(env_file)
    assert G.exec_argv(u, env) == ["/v/bin/prog", "--a", "x y", "--node", "host3",
                                   "--b", "1", "--c", "2"]
