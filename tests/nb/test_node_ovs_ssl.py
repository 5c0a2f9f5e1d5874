"""The node agent's Open vSwitch SSL settings (``ovs-vsctl set-ssl``, through its OVSDB
connection), against a real ovsdb-server holding an Open_vSwitch database (no
ovs-vswitchd: the transactions' wait for it is skipped)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from ovsdbapp.schema.open_vswitch import impl_idl

from vnet64.node import ovsdb as node_ovsdb
from vnet64.node.ovsdb import SetSsl, ssl_files


@pytest.fixture
def ovs_db(tmp_path, monkeypatch, request):
    """An ovsdb-server with a fresh Open_vSwitch database, killed by its pid at the end."""
    db, sock, pidfile = tmp_path / "conf.db", tmp_path / "db.sock", tmp_path / "ovsdb.pid"
    subprocess.run(["ovsdb-tool", "create", str(db), node_ovsdb.VSWITCH_SCHEMA], check=True)
    subprocess.run(["ovsdb-server", str(db), f"--remote=punix:{sock}", f"--pidfile={pidfile}",
                    f"--unixctl={tmp_path / 'ctl'}", f"--log-file={tmp_path / 'log'}",
                    "--detach", "--no-chdir"], check=True)

    def kill():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    request.addfinalizer(kill)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    subprocess.run(["ovs-vsctl", f"--db=unix:{sock}", "--no-wait", "init"], check=True)
    # no ovs-vswitchd here to bump cur_cfg: do not wait for it
    monkeypatch.setattr(impl_idl.OvsVsctlTransaction, "do_post_commit", lambda self, txn: None)
    api = node_ovsdb.connect(f"unix:{sock}", timeout=10)
    request.addfinalizer(api.close)
    api.sock = sock
    return api


def get_ssl(sock) -> str:
    return subprocess.run(["ovs-vsctl", f"--db=unix:{sock}", "get-ssl"], capture_output=True,
                          text=True, check=True).stdout


def test_set_ssl_is_what_ovs_vsctl_set_ssl_makes_and_is_idempotent(ovs_db):
    files = ("/etc/vnet64/sw-privkey.pem", "/etc/vnet64/sw-cert.pem", "/etc/vnet64/controllerca.pem")
    assert ovs_db.run(SetSsl(ovs_db, files)) == [True]
    shown = get_ssl(ovs_db.sock)
    assert f"Private key: {files[0]}" in shown and f"Certificate: {files[1]}" in shown
    assert f"CA Certificate: {files[2]}" in shown
    assert ovs_db.run(SetSsl(ovs_db, files)) == [False]        # nothing to change
    assert ssl_files(ovs_db) == files
    moved = (files[0], files[1], "/etc/vnet64/other-ca.pem")
    assert ovs_db.run(SetSsl(ovs_db, moved)) == [True]
    assert "CA Certificate: /etc/vnet64/other-ca.pem" in get_ssl(ovs_db.sock)
    # cleanup removes the settings only if they are still the ones the agent made
    assert ovs_db.run(SetSsl(ovs_db, None, remove_only_if=files)) == [False]
    assert ssl_files(ovs_db) == moved
    assert ovs_db.run(SetSsl(ovs_db, None, remove_only_if=moved)) == [True]
    assert ssl_files(ovs_db) is None and get_ssl(ovs_db.sock).strip() == ""
