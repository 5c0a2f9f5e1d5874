"""The vnet64 CLI end to end against an embedded NB it starts itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vnet64 import cli
from vnet64.nb.server import NbServer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "topologies" / "two-tenants.yaml")
READ_COMMANDS = [["vm", "list"], ["vnet", "list"], ["service", "list"], ["node", "list"],
                 ["region", "list"], ["subscription", "list"], ["host-mapping", "list"],
                 ["platform"], ["platform", "show"], ["show", "a-vm1"], ["show", "svc1"], ["show", "customer-b"],
                 ["show", "host1"], ["binding", "list"], ["binding", "list", "--node", "host1"],
                 ["nb", "status"], ["address", "decode", "fd41:0:0:3930:1f:6600:a00:4"]]


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    path = tmp_path / "run"
    monkeypatch.setenv("VNET64_RUN_DIR", str(path))
    monkeypatch.delenv("VNET64_NB", raising=False)
    yield path
    NbServer(path).stop()


@pytest.fixture
def vnet64(run_dir, capsys):
    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_load_then_list_shows_both_subscriptions(vnet64):
    code, out, err = vnet64("load", DEFAULT)
    assert code == 0, err
    assert "loaded two-tenants: 1 regions, 3 nodes, 2 vnets, 2 vms, 1 services, 2 subscriptions" in out
    code, out, _ = vnet64("subscription", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["VM", "SERVICE", "VNET", "IPV4", "IPV6", "HOST", "STATE"]
    assert lines[1].split() == ["a-vm1", "analytics", "customer-a", "10.0.0.4", "fd41::3930:1f:6600:a00:4",
                                "host1", "active"]
    assert lines[2].split() == ["b-vm1", "analytics", "customer-b", "10.0.0.4", "fd41::3930:20:6600:a00:4",
                                "host1", "active"]


def test_every_read_command_speaks_json(vnet64):
    assert vnet64("load", DEFAULT)[0] == 0
    for command in READ_COMMANDS:
        code, out, err = vnet64(*command, "--json")
        assert code == 0, (command, err)
        json.loads(out)


def test_platform_rotate_token_prints_the_new_token_that_show_then_shows(vnet64):
    code, _, err = vnet64("platform", "rotate-token")
    assert code == 1 and "load a topology first" in err
    assert vnet64("load", DEFAULT)[0] == 0
    before = json.loads(vnet64("platform", "--json")[1])["tunnel_token"]
    code, out, err = vnet64("platform", "rotate-token")
    assert code == 0, err
    token = out.split()[-1]
    assert out == f"tunnel token {token}\n" and token != before and int(token, 16) > 0
    assert json.loads(vnet64("platform", "show", "--json")[1])["tunnel_token"] == token
    assert token in vnet64("platform")[1]


def test_platform_direct_path_sets_shows_and_refuses_bad_input(vnet64):
    code, _, err = vnet64("platform", "direct-path", "off")
    assert code == 1 and "load a topology first" in err
    assert vnet64("load", DEFAULT)[0] == 0
    assert vnet64("platform", "direct-path", "off") == (0, "direct path off\n", "")
    assert vnet64("platform", "direct-path", "off") == (0, "direct path off (unchanged)\n", "")
    assert json.loads(vnet64("platform", "--json")[1])["direct_path"] == "off"
    assert vnet64("platform", "direct-path", "default") == (0, "direct path default (on)\n", "")
    with pytest.raises(SystemExit) as exc:       # argparse's own refusal
        vnet64("platform", "direct-path", "maybe")
    assert exc.value.code == 2


def test_subscribe_prints_the_address_and_refuses_a_duplicate(vnet64):
    assert vnet64("load", DEFAULT)[0] == 0
    assert vnet64("unsubscribe", "a-vm1", "analytics") == (0, "unsubscribed a-vm1 from analytics\n", "")
    assert vnet64("subscribe", "a-vm1", "analytics") == (0, "fd41::3930:1f:6600:a00:4\n", "")
    code, out, err = vnet64("subscribe", "a-vm1", "analytics")
    assert (code, out) == (1, "")
    assert err == ("vnet64: error: VM a-vm1 is already subscribed to analytics "
                   "(address fd41::3930:1f:6600:a00:4)\n")
    assert vnet64("subscribe", "a-vm1", "analytics", "--may-exist")[:2] == (0, "fd41::3930:1f:6600:a00:4\n")
    code, _, err = vnet64("unsubscribe", "a-vm1", "nope")
    assert code == 1 and "service 'nope' does not exist" in err


def test_bad_topology_is_rejected_and_nothing_is_written(vnet64, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(DEFAULT).read_text().replace("vnet: customer-b,", "vnet: customer-q,"))
    code, out, err = vnet64("load", str(bad))
    assert code == 1 and out == ""
    assert "vnet64: error: bad.yaml:35: vms[1].vnet: unknown VNet 'customer-q'" in err
    code, out, _ = vnet64("vm", "list", "--json")
    assert code == 0 and json.loads(out) == []


def test_bad_cli_input_names_the_problem_and_writes_nothing(vnet64):
    assert vnet64("load", DEFAULT)[0] == 0
    cases = [
        (["vm", "add", "x1", "--vnet", "customer-a", "--ipv4", "10.9.0.5", "--host", "host1"],
         "VM x1: IPv4 10.9.0.5 is outside the ranges of VNet customer-a (10.0.0.0/16)"),
        (["vm", "add", "x1", "--vnet", "customer-a", "--ipv4", "10.0.0.4", "--host", "host1"],
         "IPv4 10.0.0.4 is already used in VNet customer-a by VM 'a-vm1'"),
        (["vm", "add", "x1", "--vnet", "customer-z", "--ipv4", "10.0.0.5", "--host", "host1"],
         "VNet 'customer-z' does not exist"),
        (["vm", "add", "x1", "--vnet", "customer-a", "--ipv4", "10.0.0.5", "--host", "hostx"],
         "node 'hostx' does not exist"),
        (["vm", "add", "1x", "--vnet", "customer-a", "--ipv4", "10.0.0.5", "--host", "host1"],
         "VM name must start with a letter"),
        (["vm", "add", "x1", "--vnet", "customer-a", "--ipv4", "ten", "--host", "host1"],
         "VM IPv4 must be an IPv4 address, got 'ten'"),
        (["vnet", "add", "c9", "--id", "0x1f", "--cidr", "10.0.0.0/16", "--subnet", "s:1:10.0.0.0/24"],
         "VNet id 0x1f is already used by VNet 'customer-a' in region westeurope"),
        (["vnet", "add", "c9", "--id", "0x99", "--cidr", "10.0.0.0/16", "--subnet", "s:1:10.1.0.0/24"],
         "subnet 10.1.0.0/24 is not inside the VNet's ranges (10.0.0.0/16)"),
        (["vnet", "add", "c9", "--id", "0x99", "--cidr", "10.0.0.0/33", "--subnet", "s:1:10.0.0.0/24"],
         "IPv4 range must be an IPv4 network like 10.0.0.0/16"),
        (["service", "add", "s2", "--endpoint", "e9=fd41::9@host2"], "inside the steering prefix"),
        (["service", "add", "s2", "--endpoint", "e9"], "--endpoint must be NAME=IPV6@HOST"),
        (["node", "add", "host3", "--role", "host", "--underlay-ip", "192.168.64.11"],
         "underlay IP 192.168.64.11 is already used by node 'host1'"),
        (["address", "encode", "--region", "0x10000", "--vnet", "1", "--subnet", "1", "--ipv4", "10.0.0.4"],
         "region id 0x10000 is out of range 0..0xffff"),
        (["address", "decode", "2001:db8::1"], "outside the reserved prefix fd41::/16"),
    ]
    for args, message in cases:
        code, out, err = vnet64(*args)
        assert code == 1, args
        assert message in err, (args, err)
    code, out, _ = vnet64("vm", "list", "--json")
    assert sorted(v["name"] for v in json.loads(out)) == ["a-vm1", "b-vm1"]
    assert len(json.loads(vnet64("vnet", "list", "--json")[1])) == 2
    assert len(json.loads(vnet64("service", "list", "--json")[1])) == 1
    assert len(json.loads(vnet64("node", "list", "--json")[1])) == 3


def test_adds_are_idempotent_with_may_exist(vnet64):
    args = ["vnet", "add", "c3", "--region", "westeurope", "--id", "0x21", "--cidr", "10.0.0.0/16",
            "--subnet", "default:0x1:10.0.1.0/24"]
    assert vnet64("region", "add", "westeurope", "0x3930")[0] == 0
    assert vnet64(*args)[0] == 0
    code, _, err = vnet64(*args)
    assert code == 1 and "VNet 'c3' already exists (use --may-exist" in err
    assert vnet64(*args, "--may-exist")[0] == 0
    code, _, err = vnet64(*args[:-1], "default:0x2:10.0.1.0/24", "--may-exist")
    assert code == 1 and "already exists with different settings" in err


def test_vm_move_updates_the_host_mapping(vnet64):
    assert vnet64("load", DEFAULT)[0] == 0
    assert vnet64("vm", "move", "a-vm1", "host2")[0] == 0
    rows = json.loads(vnet64("host-mapping", "list", "--json")[1])
    assert {r["vnet"]: r["host"] for r in rows} == {"customer-a": "host2", "customer-b": "host1"}


def test_address_commands_need_no_nb(vnet64, run_dir):
    assert vnet64("address", "encode", "--region", "0x3930", "--vnet", "0x1f", "--subnet", "0x6600",
                  "--ipv4", "10.0.0.4") == (0, "fd41::3930:1f:6600:a00:4\n", "")
    code, out, _ = vnet64("address", "decode", "fd41:0:0:3930:1f:6600:a00:4", "--json")
    assert json.loads(out) == {"ipv6": "fd41::3930:1f:6600:a00:4", "region": "0x3930", "vnet": "0x001f",
                               "subnet": "0x6600", "ipv4": "10.0.0.4", "snat_vip": "0.0.0.0"}
    assert not run_dir.exists()


def test_nb_status_and_stop(vnet64, run_dir):
    code, out, _ = vnet64("nb", "status")
    assert code == 3 and re.search(r"^running +False$", out, re.M)
    assert vnet64("nb", "start")[0] == 0
    assert vnet64("nb", "start")[0] == 0  # idempotent
    code, out, _ = vnet64("nb", "status", "--json")
    assert json.loads(out)["running"] is True
    assert vnet64("nb", "stop")[1] == "NB stopped\n"
    assert vnet64("nb", "stop")[1].startswith("no NB running")


def test_installed_script_reports_errors_on_stderr_with_exit_status(run_dir):
    script = Path(sys.executable).with_name("vnet64")
    proc = subprocess.run([str(script), "show", "nobody"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "vnet64: error: no VM, VNet, service, endpoint, node or region is called 'nobody'\n"
    proc = subprocess.run([str(script), "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'frobnicate'" in proc.stderr
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for word in ("address", "load", "vnet", "vm", "service", "subscribe", "unsubscribe", "show", "--nb"):
        assert word in proc.stdout


def test_a_reader_that_goes_away_ends_the_command_quietly(vnet64, run_dir):
    """`vnet64 vm list | head -0`: the pipe is closed before the list is written; the
    command stops with 141 (as a shell reports SIGPIPE) and no traceback."""
    assert vnet64("load", DEFAULT)[0] == 0
    script = Path(sys.executable).with_name("vnet64")
    for command in (["vm", "list"], ["show", "a-vm1", "--json"], ["address", "decode",
                                                                  "fd41:0:0:3930:1f:6600:a00:4"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = subprocess.run([str(script), *command], stdout=write_end,
                                  stderr=subprocess.PIPE, text=True)
        finally:
            os.close(write_end)
        assert (proc.returncode, proc.stderr) == (141, ""), command


def test_nb_option_talks_to_a_named_server_and_not_the_embedded_one(vnet64, run_dir, tmp_path):
    other = NbServer(tmp_path / "elsewhere")
    other.start()
    try:
        assert vnet64("--nb", other.remote, "load", DEFAULT)[0] == 0
        code, out, _ = vnet64("--nb", other.remote, "vm", "list", "--json")
        assert code == 0 and len(json.loads(out)) == 2
        assert not run_dir.exists()  # the embedded NB was never started
        code, _, err = vnet64("--nb", f"unix:{tmp_path}/nothing.sock", "--timeout", "1", "vm", "list")
        assert code == 1 and "cannot reach the NB at unix:" in err
    finally:
        other.stop()


def test_node_set_gives_br_int_its_controllers(vnet64):
    assert vnet64("load", DEFAULT)[0] == 0
    code, out, err = vnet64("node", "set", "host1", "--controller", "tcp:172.31.255.1:6653",
                            "--controller", "ssl:[fd00::1]:6653")
    assert code == 0, err
    assert "controllers  ssl:[fd00::1]:6653, tcp:172.31.255.1:6653\n" in out
    lines = vnet64("node", "list")[1].splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "UNDERLAY_IP", "DATAPATH_ID", "CONTROLLERS"]
    assert [line.split()[-1] for line in lines[1:]] == ["-", "ssl:[fd00::1]:6653,tcp:172.31.255.1:6653", "-"]
    code, out, err = vnet64("node", "set", "host1", "--controller", "tcp:172.31.255.1:70000")
    assert (code, out) == (1, "")
    assert err == ("vnet64: error: node host1: controller target 'tcp:172.31.255.1:70000': "
                   "port 70000 is not in 1..65535\n")
    code, _, err = vnet64("node", "set", "hostx", "--controller", "tcp:172.31.255.1:6653")
    assert code == 1 and "node 'hostx' does not exist" in err
    show = json.loads(vnet64("show", "host1", "--json")[1])
    assert show["controllers"] == ["ssl:[fd00::1]:6653", "tcp:172.31.255.1:6653"]
    code, out, _ = vnet64("node", "set", "host1", "--no-controllers", "--json")
    assert code == 0 and json.loads(out)["controllers"] == []
    for bad in (["node", "set", "host1"],
                ["node", "set", "host1", "--no-controllers", "--controller", "tcp:1.2.3.4:6653"]):
        with pytest.raises(SystemExit) as exit_:
            vnet64(*bad)
        assert exit_.value.code == 2


def test_bindings_are_listed_and_shown_with_their_vm(vnet64, run_dir):
    from vnet64 import topology
    from vnet64.nb import api as nbapi
    assert vnet64("load", DEFAULT)[0] == 0
    assert vnet64("binding", "list") == (0, "LOGICAL_PORT  KIND  NODE  PORT  OFPORT  MAC\n", "")
    mac = topology.default_mac("a-vm1")
    with nbapi.connect(NbServer(run_dir).remote) as api:      # what a node agent writes
        api.bind_port("host2", "a-vm1", "vnet7", mac, ofport=7)
        api.bind_port("host2", "svc1", "tap-svc1", topology.default_mac("svc1"))
    lines = vnet64("binding", "list")[1].splitlines()
    assert [line.split() for line in lines[1:]] == [
        ["a-vm1", "vm", "host2", "vnet7", "7", mac],
        ["svc1", "endpoint", "host2", "tap-svc1", "-", topology.default_mac("svc1")]]
    assert vnet64("binding", "list", "--node", "host1")[1].count("\n") == 1     # the header only
    rows = json.loads(vnet64("binding", "list", "--node", "host2", "--json")[1])
    assert rows[0] == {"logical_port": "a-vm1", "kind": "vm", "node": "host2", "port": "vnet7",
                       "ofport": 7, "mac": mac}
    code, _, err = vnet64("binding", "list", "--node", "hostx")
    assert code == 1 and "node 'hostx' does not exist" in err
    # the VM followed its binding to host2; show says where its port is
    out = vnet64("show", "a-vm1")[1]
    assert "host           host2\n" in out
    assert f"binding        vnet7 on host2 (ofport 7, mac {mac})\n" in out
    assert "binding        unbound\n" in vnet64("show", "b-vm1")[1]
    assert "binding  tap-svc1 on host2 (mac " in vnet64("show", "svc1")[1]
    assert json.loads(vnet64("show", "a-vm1", "--json")[1])["binding"] == {
        "node": "host2", "port": "vnet7", "ofport": 7, "mac": mac}
    rows = json.loads(vnet64("host-mapping", "list", "--json")[1])
    assert {r["vnet"]: r["host"] for r in rows} == {"customer-a": "host2", "customer-b": "host1"}


def test_without_nb_or_run_dir_the_commands_use_a_running_labs_nb(tmp_path, monkeypatch, capsys):
    """After ``vnet64-lab up`` the CLI operates the lab's NB, not a second, empty embedded
    one; --run-dir (or $VNET64_RUN_DIR) still means the embedded NB."""
    lab_dir = tmp_path / "lab"
    lab_nb = NbServer(lab_dir / "nb")
    lab_nb.start()
    monkeypatch.delenv("VNET64_NB", raising=False)
    monkeypatch.delenv("VNET64_RUN_DIR", raising=False)
    monkeypatch.setenv("VNET64_LAB_RUN_DIR", str(lab_dir))
    embedded = tmp_path / "embedded"
    try:
        assert cli.main(["--nb", lab_nb.remote, "load", DEFAULT]) == 0
        capsys.readouterr()
        (lab_dir / "state.json").write_text(json.dumps({"phase": "building"}))
        assert cli.main(["--run-dir", str(embedded), "vm", "list", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []          # embedded, asked for
        (lab_dir / "state.json").write_text(json.dumps({"phase": "up"}))
        assert cli.main(["vm", "list", "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 2      # the lab's
        assert cli.main(["nb", "status", "--json"]) in (0, 3)
        assert json.loads(capsys.readouterr().out)["commands_use"] == lab_nb.remote
    finally:
        lab_nb.stop()
        NbServer(embedded).stop()
