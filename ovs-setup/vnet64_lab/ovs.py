"""One node's Open vSwitch: its own ovsdb-server + ovs-vswitchd, configured through ovsdbapp.

Each node keeps everything in its run directory (``OVS_RUNDIR = OVS_DBDIR =
OVS_LOGDIR``): ``conf.db``, ``db.sock``, pidfiles, logs and the bridges'
``*.mgmt`` sockets, so ``ovs-vsctl``/``ovs-appctl``/``ovs-ofctl`` find this
node's daemons when given :meth:`OvsNode.env`.

The node agent (``vnet64.node``) configures the node; the lab uses the same ovsdbapp
commands (``vnet64.node.ovsdb``) for what a hypervisor does - attaching VM ports. A
transaction on Open_vSwitch waits for ovs-vswitchd to apply it (``cur_cfg``), so
vswitchd runs before the first one; ovsdbapp only *logs* interfaces vswitchd failed to
create, so :meth:`OvsNode.wait_ports` checks ``ofport``/``error`` itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from ovsdbapp.backend.ovs_idl import idlutils
from vnet64.node.ovsdb import VSWITCH_SCHEMA, EnsureBridge, EnsurePort, NodeOvsdb, connect  # noqa: F401
from vnet64.node.sh import terminate  # noqa: F401

from . import sh
from .sh import LabError


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
        return connect(self.remote, timeout=timeout)

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


