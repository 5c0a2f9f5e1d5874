"""One node's Open vSwitch: its own ovsdb-server + ovs-vswitchd, configured through ovsdbapp.

Each node keeps everything in its run directory (``OVS_RUNDIR = OVS_DBDIR =
OVS_LOGDIR``): ``conf.db``, ``db.sock``, pidfiles, logs and the bridges'
``*.mgmt`` sockets, so ``ovs-vsctl``/``ovs-appctl``/``ovs-ofctl`` find this
node's daemons when given :meth:`OvsNode.env`.

Bridges, ports and interfaces are written with ovsdbapp commands (one
transaction per step, ``check_error=True``). A transaction on Open_vSwitch waits
for ovs-vswitchd to apply it (``cur_cfg``), so vswitchd runs before the first
one; ovsdbapp only *logs* interfaces vswitchd failed to create, so
:meth:`OvsNode.wait_ports` checks ``ofport``/``error`` itself.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import ovs.db.idl
from ovsdbapp.backend.ovs_idl import command, connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl
from vnet64.ovsdb import OwnConnection

from . import sh
from .sh import LabError

VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


class NodeOvsdb(OwnConnection, impl_idl.OvsdbIdl):
    """ovsdbapp's Open_vSwitch API, one per node (the connection kept per instance)."""

    def run(self, *commands: Any) -> list:
        with self.create_transaction(check_error=True) as txn:
            for c in commands:
                txn.add(c)
        return [c.result for c in commands]


def _get(row: Any, column: str, default: Any) -> Any:
    """A column's value; a row inserted in this transaction has none yet."""
    try:
        return getattr(row, column)
    except AttributeError:
        return default


def _set(row: Any, column: str, value: Any) -> None:
    if _get(row, column, None) != value:
        setattr(row, column, value)


class EnsureBridge(command.BaseCommand):
    """Create or update a bridge with every attribute in one go (idempotent).

    Setting fail_mode, datapath id and the controller in the transaction that
    creates the bridge means br-int never runs a moment without them: no
    ``NORMAL`` flow, no datapath-id change, no controller-attach flush later.
    """

    def __init__(self, api: NodeOvsdb, name: str, *, datapath_type: str = "netdev",
                 fail_mode: str | None = None, other_config: dict | None = None,
                 protocols: list[str] | None = None, external_ids: dict | None = None,
                 controllers: list[str] | None = None, internal_mtu: int | None = None,
                 flow_tables: dict[int, str] | None = None,
                 table_prefixes: dict[str, list[str]] | None = None):
        super().__init__(api)
        self.flow_tables = dict(flow_tables or {})
        self.table_prefixes = dict(table_prefixes or {})
        self.name, self.datapath_type, self.fail_mode = name, datapath_type, fail_mode
        self.other_config = dict(other_config or {})
        self.protocols = list(protocols or [])
        self.external_ids = dict(external_ids or {})
        self.controllers = list(controllers or [])
        self.internal_mtu = internal_mtu

    def run_idl(self, txn: Any) -> None:
        tables = self.api._tables
        br = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.name, None)
        if br is None:
            br = txn.insert(tables["Bridge"])
            br.name = self.name
            port = txn.insert(tables["Port"])
            port.name = self.name
            iface = txn.insert(tables["Interface"])
            iface.name = self.name
            iface.type = "internal"
            port.interfaces = [iface]
            br.ports = [port]
            self.api._ovs.addvalue("bridges", br)
        else:
            iface = idlutils.row_by_value(self.api.idl, "Interface", "name", self.name)
        _set(br, "datapath_type", self.datapath_type)
        if self.fail_mode:
            _set(br, "fail_mode", [self.fail_mode])
        if self.protocols:
            _set(br, "protocols", self.protocols)
        _set(br, "other_config", {**dict(_get(br, 'other_config', {})), **self.other_config})
        _set(br, "external_ids", {**dict(_get(br, 'external_ids', {})), **self.external_ids})
        if self.internal_mtu:
            _set(iface, "mtu_request", [self.internal_mtu])
        if self.flow_tables:
            # Names for the pipeline's tables (Flow_Table rows): dump-flows --names shows them.
            current = {tid: row for tid, row in dict(_get(br, "flow_tables", {})).items()}
            rows = {}
            for tid, name in sorted(self.flow_tables.items()):
                row = current.get(tid)
                if row is None:
                    row = txn.insert(tables["Flow_Table"])
                if _get(row, "name", []) != [name]:
                    _set(row, "name", [name])
                prefixes = sorted(self.table_prefixes.get(name, []))
                if sorted(_get(row, "prefixes", [])) != prefixes:
                    _set(row, "prefixes", prefixes)
                rows[tid] = row
            if {t: r.uuid for t, r in current.items()} != {t: r.uuid for t, r in rows.items()}:
                br.flow_tables = rows
        if self.controllers:
            existing = _get(br, "controller", [])
            current = {c.target: c for c in existing}
            rows = []
            for target in self.controllers:
                row = current.get(target)
                if row is None:
                    row = txn.insert(tables["Controller"])
                    row.target = target
                # The controller is reached over the management network, never through
                # the bridge: no in-band hidden flows.
                _set(row, "connection_mode", ["out-of-band"])
                rows.append(row)
            if sorted(c.target for c in existing) != sorted(self.controllers):
                br.controller = rows
        self.result = str(br.uuid)


class EnsurePort(command.BaseCommand):
    """Create or update a single-interface port on a bridge (idempotent)."""

    def __init__(self, api: NodeOvsdb, bridge: str, name: str, *, type: str = "",
                 options: dict | None = None, external_ids: dict | None = None,
                 ofport_request: int | None = None, mtu_request: int | None = None):
        super().__init__(api)
        self.bridge, self.name, self.type = bridge, name, type
        self.options = dict(options or {})
        self.external_ids = dict(external_ids or {})
        self.ofport_request, self.mtu_request = ofport_request, mtu_request

    def run_idl(self, txn: Any) -> None:
        tables = self.api._tables
        br = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.bridge)
        port = idlutils.row_by_value(self.api.idl, "Port", "name", self.name, None)
        if port is None:
            port = txn.insert(tables["Port"])
            port.name = self.name
            iface = txn.insert(tables["Interface"])
            iface.name = self.name
            port.interfaces = [iface]
            br.addvalue("ports", port)
        else:
            iface = port.interfaces[0]
        _set(iface, "type", self.type)
        _set(iface, "options", self.options)
        _set(iface, "external_ids", {**dict(_get(iface, 'external_ids', {})), **self.external_ids})
        _set(port, "external_ids", {**dict(_get(port, 'external_ids', {})), **self.external_ids})
        if self.ofport_request:
            _set(iface, "ofport_request", [self.ofport_request])
        if self.mtu_request:
            _set(iface, "mtu_request", [self.mtu_request])
        self.result = str(port.uuid)


class SetSystem(command.BaseCommand):
    """external_ids of the Open_vSwitch row (system-id, hostname, role)."""

    def __init__(self, api: NodeOvsdb, external_ids: dict):
        super().__init__(api)
        self.external_ids = dict(external_ids)

    def run_idl(self, txn: Any) -> None:
        row = self.api._ovs
        _set(row, "external_ids", {**dict(_get(row, 'external_ids', {})), **self.external_ids})


class EnsureCtTimeouts(command.BaseCommand):
    """Conntrack timeout policy for ``zones`` of the netdev datapath (idempotent).

    Creates the ``netdev`` Datapath row if needed; every zone gets one CT_Zone
    pointing at one shared CT_Timeout_Policy with ``timeouts``.
    """

    def __init__(self, api: NodeOvsdb, zones: list[int], timeouts: dict[str, int]):
        super().__init__(api)
        self.zones = sorted(set(zones))
        self.timeouts = dict(timeouts)

    def run_idl(self, txn: Any) -> None:
        tables = self.api._tables
        root = self.api._ovs
        dp = dict(_get(root, "datapaths", {})).get("netdev")
        if dp is None:
            dp = txn.insert(tables["Datapath"])
            dp.datapath_version = ""
            root.setkey("datapaths", "netdev", dp)
        current = dict(_get(dp, "ct_zones", {}))
        policy = None
        for zone in self.zones:
            row = current.get(zone)
            tp = _get(row, "timeout_policy", []) if row is not None else []
            if tp and dict(tp[0].timeouts) == self.timeouts:
                continue
            if policy is None:
                policy = txn.insert(tables["CT_Timeout_Policy"])
                policy.timeouts = self.timeouts
            if row is None:
                row = txn.insert(tables["CT_Zone"])
                dp.setkey("ct_zones", zone, row)
            row.timeout_policy = [policy]


class OvsNode:
    """The OVS daemons of one lab node, living in namespace ``ns``."""

    def __init__(self, name: str, ns: str, run_dir: str | Path):
        self.name, self.ns, self.run_dir = name, ns, Path(run_dir)

    # -- paths --------------------------------------------------------------

    def env(self) -> dict[str, str]:
        d = str(self.run_dir)
        return {"OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d, "OVS_SYSCONFDIR": d}

    @property
    def db_path(self) -> Path:
        return self.run_dir / "conf.db"

    @property
    def sock(self) -> Path:
        return self.run_dir / "db.sock"

    @property
    def remote(self) -> str:
        return f"unix:{self.sock}"

    def pidfile(self, daemon: str) -> Path:
        return self.run_dir / f"{daemon}.pid"

    def pid(self, daemon: str) -> int | None:
        pid = sh.read_pid(self.pidfile(daemon))
        return pid if pid and sh.proc_alive(pid, daemon) else None

    # -- daemons ------------------------------------------------------------

    def start(self) -> None:
        """Create the database if needed, then start ovsdb-server and ovs-vswitchd."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = self.env()
        if not self.db_path.exists():
            sh.run([sh.tool("ovsdb-tool"), "create", str(self.db_path), VSWITCH_SCHEMA])
            # The root row, as `ovs-vsctl init` would write it; vswitchd needs it.
            sh.run([sh.tool("ovsdb-tool"), "transact", str(self.db_path), json.dumps(
                ["Open_vSwitch", {"op": "insert", "table": "Open_vSwitch", "row": {}}])])
        if not self.pid("ovsdb-server"):
            sh.in_ns(self.ns, [
                sh.tool("ovsdb-server"), str(self.db_path), f"--remote=punix:{self.sock}",
                f"--pidfile={self.pidfile('ovsdb-server')}",
                f"--unixctl={self.run_dir / 'ovsdb-server.ctl'}",
                f"--log-file={self.run_dir / 'ovsdb-server.log'}", "--detach", "--no-chdir"],
                env=env)
            sh.wait_for(lambda: self.pid("ovsdb-server") and self.sock.exists(), 10,
                        f"ovsdb-server of {self.name}")
        if not self.pid("ovs-vswitchd"):
            sh.in_ns(self.ns, [
                sh.vswitchd()[0], self.remote,
                f"--pidfile={self.pidfile('ovs-vswitchd')}",
                f"--log-file={self.run_dir / 'ovs-vswitchd.log'}", "--detach", "--no-chdir"],
                env=env)
            sh.wait_for(lambda: self.pid("ovs-vswitchd"), 10, f"ovs-vswitchd of {self.name}")

    def stop(self, timeout: float = 5.0) -> list[str]:
        """Stop both daemons by pidfile; return what was stopped."""
        stopped = []
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            pid = self.pid(daemon)
            if pid and terminate(pid, daemon, timeout):
                stopped.append(f"{daemon}[{pid}]")
        return stopped

    # -- database -----------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> NodeOvsdb:
        helper = ovs.db.idl.SchemaHelper(location=VSWITCH_SCHEMA)
        helper.register_all()
        idl = connection.OvsdbIdl(self.remote, helper)
        return NodeOvsdb(connection.Connection(idl, timeout=timeout))

    def appctl(self, *args: str, target: str = "ovs-vswitchd", check: bool = True) -> str:
        return sh.run([sh.tool("ovs-appctl"), "-t", target, *args], env=self.env(),
                      check=check).stdout

    def ofctl(self, *args: str, check: bool = True) -> str:
        return sh.run([sh.tool("ovs-ofctl"), *args], env=self.env(), check=check).stdout

    def wait_ports(self, api: NodeOvsdb, names: list[str], timeout: float = 10.0) -> None:
        """Wait until vswitchd gave every interface an OpenFlow port; raise its error if not."""
        def ready() -> bool:  # the connection's thread keeps the replica current
            for name in names:
                iface = idlutils.row_by_value(api.idl, "Interface", "name", name, None)
                if iface is None:
                    return False
                if iface.error:
                    raise LabError(f"{self.name}: interface {name}: {iface.error[0]}")
                if not iface.ofport or iface.ofport[0] <= 0:
                    return False
            return True
        sh.wait_for(ready, timeout, f"ports {', '.join(names)} on {self.name}")


def terminate(pid: int, comm: str, timeout: float = 5.0) -> bool:
    """SIGTERM a process we started (checked by name), SIGKILL if it lingers."""
    if not sh.proc_alive(pid, comm):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sh.proc_alive(pid):
        time.sleep(0.01)
    if sh.proc_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True
