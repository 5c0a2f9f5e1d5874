"""The NB API: typed verbs over the vnet64 OVSDB schema, on ovsdbapp's IDL backend.

    api = connect("unix:/var/lib/vnet64/nb.sock")       # or "tcp:a:6641,tcp:b:6641,..."
    info = api.subscribe("a-vm1", "analytics")           # one transaction
    api.close()

Every write goes through ``NbApi.run`` (one transaction, ``check_error=True``),
which numbers it (``Platform.nb_cfg`` and its timestamp, see ``NextCfgCommand``);
errors come back as ``NbError`` subclasses with a message naming the object.
Reads come from the IDL replica, which the connection keeps up to date. The
connection is per instance (ovsdbapp's default shares one per class, which
would make a second NbApi silently talk to the first one's server).
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from typing import Any, Iterable

import ovs.db.idl
from ovsdbapp.backend import ovs_idl
from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp import api as ovsdbapp_api
from ovsdbapp import exceptions as ovsdbapp_exc

from .. import topology
from ..ovsdb import (CondIdl, OwnConnection, TlsError, TlsFiles, quick_reconnect, set_client_tls,
                     set_conditions, tls_failure, uses_ssl)
from . import commands as cmd
from .commands import Conflict, Invalid, NbError, NotFound  # noqa: F401 (re-exported)
from .server import SCHEMA_NAME, SCHEMA_PATH

LOG = logging.getLogger(__name__)


class NbUnavailable(NbError):
    pass


class NbTlsError(NbError):
    """The TLS files for an ssl: NB cannot be used (or none were given): a configuration
    error, not an NB that is down."""


class NbApi(OwnConnection, ovs_idl.Backend, ovsdbapp_api.API):
    schema = SCHEMA_NAME
    lookup_table = {t: (t, "name", None) for t in cmd.NAMED_TABLES}

    def __init__(self, conn: connection.Connection, start: bool = True,
                 conditions: dict[str, list] | None = None):
        self.conditions = conditions     # the last asked for (None: every row)
        super().__init__(conn, start=start, auto_index=True)

    def set_conditions(self, conditions: dict[str, list]) -> bool:
        """Monitor only the rows ``conditions`` names (table -> OVSDB condition clauses,
        ORed; ``[True]`` every row, ``[False]`` none); the tables not named keep theirs.
        Only an NB connected with ``connect(..., conditions=...)`` can. True if a
        condition changed; its rows arrive later (``conditions_acked``)."""
        with self.ovsdb_connection.lock:
            wanted = {**(self.conditions or {}), **conditions}
            changed = set_conditions(self.ovsdb_connection, self.idl, wanted, self.conditions)
            self.conditions = wanted
            return changed

    def conditions_acked(self) -> bool:
        """The server has acknowledged every condition asked for: the replica holds
        exactly the rows they name."""
        with self.ovsdb_connection.lock:
            return not isinstance(self.idl, CondIdl) or self.idl.conditions_acked()

    def autocreate_indices(self) -> None:
        for table in cmd.NAMED_TABLES:
            self.create_index(table, "name")
        for table, columns in cmd.EXTRA_INDEXES.items():
            if table not in self.tables:   # a client of an older schema (its tests write one)
                continue
            for column in columns:
                self.create_index(table, column)

    # -- plumbing -----------------------------------------------------------

    def run(self, *commands: Any, retries: int = 5) -> list:
        """Commit ``commands`` in one transaction; return their results.

        A server-side constraint violation (a concurrent writer won a race on a
        unique index) is retried after the replica catches up, so the loser sees
        the winner's row and fails with a clear Conflict (or, with may_exist,
        returns the winner's result).
        """
        for attempt in range(retries):
            seqno = self.idl.change_seqno
            try:
                with self.transaction(check_error=True, log_errors=False) as txn:
                    for c in commands:
                        txn.add(c)
                    txn.add(cmd.NextCfgCommand(self))   # numbers the change (nb_cfg), if any
                return [c.result for c in commands]
            except NbError:
                raise
            except ovsdbapp_exc.TimeoutException as exc:
                raise NbUnavailable(f"the NB did not answer in time: {exc}") from None
            except RuntimeError as exc:
                if cmd.is_constraint_violation(exc) and attempt + 1 < retries:
                    LOG.debug("constraint violation, retrying after the replica catches up: %s", exc)
                    wait_for(lambda: self.idl.change_seqno != seqno, timeout=1.0)
                    continue
                raise NbError(str(exc)) from None
        raise NbError("the transaction kept conflicting with concurrent writers")

    def __enter__(self) -> "NbApi":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writes -------------------------------------------------------------

    def load_topology(self, topo: topology.Topology) -> dict:
        return self.run(cmd.LoadTopologyCommand(self, topo))[0]

    def add_region(self, region: topology.Region, may_exist: bool = False) -> None:
        self.run(cmd.AddRegionCommand(self, region, may_exist))

    def add_node(self, node: topology.Node, may_exist: bool = False) -> None:
        self.run(cmd.AddNodeCommand(self, node, may_exist))

    def set_platform(self, platform: topology.Platform) -> None:
        self.run(cmd.SetPlatformCommand(self, platform))

    def add_vnet(self, vnet: topology.VNet, may_exist: bool = False) -> None:
        self.run(cmd.AddVNetCommand(self, vnet, may_exist))

    def add_vm(self, name: str, vnet: str, ipv4: Any, host: str, mac: str | None = None,
               subnet: str | None = None, may_exist: bool = False) -> dict:
        self.run(cmd.AddVMCommand(self, name, vnet, ipv4, host, mac, subnet, may_exist))
        return self.vm_info(name)

    def add_service(self, service: topology.Service, may_exist: bool = False) -> None:
        self.run(cmd.AddServiceCommand(self, service, may_exist))

    def add_vms(self, vms: Iterable[topology.VM]) -> None:
        """Bulk add in one transaction (benchmarks, large imports)."""
        self.run(*[cmd.AddVMCommand(self, v.name, v.vnet, v.ipv4, v.host, v.mac, v.subnet)
                   for v in vms])

    def subscribe(self, vm: str, service: str, may_exist: bool = False) -> dict:
        self.run(cmd.SubscribeCommand(self, vm, service, may_exist))
        return self.subscription_info(vm, service)

    def subscribe_many(self, pairs: Iterable[tuple[str, str]], may_exist: bool = False) -> int:
        """Several subscriptions in one transaction (bulk imports): all or none."""
        commands = [cmd.SubscribeCommand(self, vm, service, may_exist) for vm, service in pairs]
        self.run(*commands)
        return len(commands)

    def unsubscribe(self, vm: str, service: str, if_exists: bool = False) -> bool:
        return self.run(cmd.UnsubscribeCommand(self, vm, service, if_exists))[0]

    def rotate_tunnel_token(self) -> int:
        """A new tunnel token for the platform; returns it."""
        return self.run(cmd.RotateTunnelTokenCommand(self))[0]

    def set_direct_path(self, enabled: bool | None) -> bool:
        """The direct path on, off, or (None) the default; True if that changed it."""
        return self.run(cmd.SetDirectPathCommand(self, enabled))[0]

    def set_connections(self, targets: Iterable[str], inactivity_probe: int | None = None) -> bool:
        """The NB server's client remotes besides its unix socket (True if changed)."""
        return self.run(cmd.SetConnectionsCommand(self, targets, inactivity_probe))[0]

    def del_connections(self) -> bool:
        return self.run(cmd.DelConnectionsCommand(self))[0]

    def move_vm(self, vm: str, host: str) -> dict:
        self.run(cmd.MoveVMCommand(self, vm, host))
        return self.vm_info(vm)

    def set_node_controllers(self, node: str, targets: Iterable[str]) -> bool:
        """The OpenFlow controller targets of ``node``'s br-int (``tcp:IP:PORT`` or
        ``ssl:IP:PORT``), replacing the ones set before; [] clears them. True if changed."""
        return self.run(cmd.SetNodeControllersCommand(self, node, list(targets)))[0]

    def bind_port(self, node: str, logical_port: str, port: str, mac: str,
                  ofport: int | None = None) -> dict:
        """Record that OVS interface ``port`` on ``node`` is the port of the VM or endpoint
        named ``logical_port`` (its ``external_ids:iface-id``); ``mac`` is the interface's
        attached-mac ("" if none), ``ofport`` its OpenFlow port number (informational).

        One transaction: the VM's or endpoint's host becomes ``node`` (a VM's host mapping
        follows, as with ``move_vm``). Returns the binding (``binding_info``) plus
        ``moved_from``: the previous host if the object moved, else None. Comparing the MAC
        with the NB's (``logical_port(name)["mac"]``) is the caller's job.
        """
        return self.run(cmd.BindPortCommand(self, node, logical_port, port, mac, ofport))[0]

    def bind_ports(self, node: str, ports: Iterable[tuple[str, str, str, int | None]]) -> list[dict]:
        """Several ``bind_port`` (logical port, port, mac, ofport) in one transaction: all
        or none (a node agent binding a host's ports at start)."""
        return self.run(*[cmd.BindPortCommand(self, node, lport, port, mac, ofport)
                          for lport, port, mac, ofport in ports])

    def unbind_port(self, node: str, logical_port: str) -> bool:
        """Delete ``logical_port``'s binding if it is bound to ``node``; a binding to
        another node (the VM migrated) stays. Returns whether it deleted one."""
        return self.run(cmd.UnbindPortCommand(self, node, logical_port))[0]

    # -- reads --------------------------------------------------------------

    def connections(self) -> list[dict]:
        platform = next(iter(self.tables["Platform"].rows.values()), None)
        rows = sorted(platform.connections, key=lambda r: r.target) if platform else []
        return [{"target": r.target, "inactivity_probe": r.inactivity_probe[0] if r.inactivity_probe else None,
                 "is_connected": r.is_connected, "status": dict(r.status)} for r in rows]

    def _rows(self, table: str) -> list:
        return sorted(self.tables[table].rows.values(), key=lambda r: getattr(r, "name", ""))

    def platform_info(self) -> dict | None:
        row = next(iter(self.tables["Platform"].rows.values()), None)
        if row is None:
            return None
        return {"platform_ip": row.platform_ip, "translator_prefix": row.translator_prefix,
                "region": row.region[0].name if row.region else None,
                "appliance": row.appliance[0].name if row.appliance else None,
                "tunnel_token": f"{row.tunnel_token[0]:#010x}" if row.tunnel_token else None,
                "direct_path": _direct_path(row),
                # the newest change's number (NextCfgCommand) and its writer's clock (UTC)
                "nb_cfg": getattr(row, "nb_cfg", 0),
                "nb_cfg_time": _utc(getattr(row, "nb_cfg_timestamp", 0))}

    def region_info(self, row: Any) -> dict:
        return {"name": row.name, "region_id": f"{row.region_id:#06x}"}

    def vnet_info(self, name_or_row: Any) -> dict:
        row = cmd.get(self, "VNet", name_or_row) if isinstance(name_or_row, str) else name_or_row
        model = cmd.vnet_model(self, row)
        return {"name": row.name, "region": model.region, "vnet_id": f"{row.vnet_id:#06x}",
                "cidrs": [str(c) for c in model.cidrs],
                "subnets": [{"name": s.name, "subnet_id": f"{s.subnet_id:#06x}", "cidr": str(s.cidr)}
                            for s in model.subnets],
                "snat_vip": str(model.snat_vip) if model.snat_vip else None,
                "ct_zone": row.ct_zone}

    def node_info(self, row: Any) -> dict:
        return {"name": row.name, "role": row.role, "underlay_ip": row.underlay_ip,
                "datapath_id": f"{row.datapath_id:016x}", "controllers": sorted(row.controllers)}

    def vm_info(self, name_or_row: Any) -> dict:
        row = cmd.get(self, "VM", name_or_row) if isinstance(name_or_row, str) else name_or_row
        subs = sorted(s.service.name for s in cmd.subscriptions_of(self, row))
        return {"name": row.name, "vnet": row.vnet.name, "subnet": row.subnet.name,
                "ipv4": row.ipv4, "mac": row.mac, "host": row.host.name,
                "platform_ipv6": str(cmd.vm_address(row).ipv6),
                "subscriptions": subs, "binding": self._binding_of(row.name)}

    def endpoint_info(self, row: Any) -> dict:
        return {"name": row.name, "service": row.service.name, "ipv6": row.ipv6,
                "host": row.host.name, "mac": row.mac, "binding": self._binding_of(row.name)}

    @staticmethod
    def binding_info(row: Any) -> dict:
        return {"logical_port": row.logical_port, "kind": row.kind, "node": row.node.name,
                "port": row.port, "ofport": row.ofport[0] if row.ofport else None, "mac": row.mac}

    def _binding_of(self, name: str) -> dict | None:
        row = cmd.binding_of(self, name)
        if row is None:
            return None
        return {k: v for k, v in self.binding_info(row).items() if k not in ("logical_port", "kind")}

    def list_bindings(self, node: str | None = None) -> list[dict]:
        """Every port binding (of ``node`` only, if given), by logical port name."""
        rows = self.tables["Port_Binding"].rows.values()
        if node is not None:
            node_row = cmd.get(self, "Node", node)
            rows = [r for r in rows if r.node.uuid == node_row.uuid]
        return [self.binding_info(r) for r in sorted(rows, key=lambda r: r.logical_port)]

    def logical_port(self, name: str) -> dict:
        """What a node agent needs to bind an interface whose iface-id is ``name``: the
        object's kind ("vm" or "endpoint"), its NB MAC (to compare with attached-mac), its
        host, and its current binding (None if unbound)."""
        kind, row = cmd.logical_object(self, name)
        return {"name": row.name, "kind": kind, "mac": row.mac, "host": row.host.name,
                "binding": self._binding_of(row.name)}

    def service_info(self, name_or_row: Any) -> dict:
        row = cmd.get(self, "Service", name_or_row) if isinstance(name_or_row, str) else name_or_row
        eps = sorted(cmd.lookup(self, "Endpoint", service=row), key=lambda e: e.name)
        subs = [s for s in self.tables["Subscription"].rows.values() if s.service.uuid == row.uuid]
        return {"name": row.name,
                "endpoints": [{"name": e.name, "ipv6": e.ipv6, "host": e.host.name, "mac": e.mac}
                              for e in eps],
                "subscriptions": sorted(s.vm.name for s in subs)}

    def _subscription_dict(self, row: Any) -> dict:
        mapping = next(iter(cmd.lookup(self, "Host_Mapping", ipv6=row.ipv6)), None)
        return {"vm": row.vm.name, "service": row.service.name, "vnet": row.vm.vnet.name,
                "ipv4": row.vm.ipv4, "ipv6": row.ipv6, "state": row.state,
                "host": mapping.host.name if mapping else None}

    def subscription_info(self, vm: str, service: str) -> dict:
        vm_row = cmd.get(self, "VM", vm)
        svc_row = cmd.get(self, "Service", service)
        row = next(iter(cmd.subscriptions_of(self, vm_row, svc_row)), None)
        if row is None:
            raise NotFound(f"VM {vm} is not subscribed to {service}")
        return self._subscription_dict(row)

    def list(self, kind: str) -> list[dict]:
        if kind == "region":
            return [self.region_info(r) for r in self._rows("Region")]
        if kind == "vnet":
            return [self.vnet_info(r) for r in self._rows("VNet")]
        if kind == "node":
            return [self.node_info(r) for r in self._rows("Node")]
        if kind == "vm":
            return [self.vm_info(r) for r in self._rows("VM")]
        if kind == "service":
            return [self.service_info(r) for r in self._rows("Service")]
        if kind == "subscription":
            rows = sorted(self.tables["Subscription"].rows.values(),
                          key=lambda r: (r.vm.name, r.service.name))
            return [self._subscription_dict(r) for r in rows]
        if kind == "host-mapping":
            rows = sorted(self.tables["Host_Mapping"].rows.values(), key=lambda r: r.ipv6)
            return [{"ipv6": r.ipv6, "vnet": r.vnet.name, "ipv4": r.ipv4, "host": r.host.name}
                    for r in rows]
        raise ValueError(f"unknown kind {kind!r}")

    def show(self, name: str) -> dict:
        """Whatever object is called ``name`` (VM, VNet, service, endpoint, node, region)."""
        for table, render in (("VM", self.vm_info), ("VNet", self.vnet_info),
                              ("Service", self.service_info), ("Node", self.node_info),
                              ("Region", self.region_info)):
            row = cmd.find(self, table, name)
            if row is not None:
                return {"kind": table.lower(), **render(row)}
        row = cmd.find(self, "Endpoint", name)
        if row is not None:
            return {"kind": "endpoint", **self.endpoint_info(row)}
        raise NotFound(f"no VM, VNet, service, endpoint, node or region is called {name!r}")

    def count(self, table: str) -> int:
        return len(self.tables[table].rows)


# The environment variables every NB client reads its TLS files from when not given on
# its command line, next to $VNET64_NB (the remote): vnet64, vnet64-node, vnet64-controller.
TLS_ENV = {"private_key": "VNET64_NB_PRIVATE_KEY", "certificate": "VNET64_NB_CERTIFICATE",
           "ca_cert": "VNET64_NB_CA_CERT"}


def _direct_path(row: Any) -> str:
    value = getattr(row, "direct_path", [])
    if value:
        return "on" if value[0] else "off"
    return f"default ({'on' if topology.DIRECT_PATH_DEFAULT else 'off'})"


def _utc(ms: int) -> str | None:
    if not ms:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(timespec="milliseconds")


def tls_from_env(environ: Any = None) -> dict[str, str | None]:
    """The NB TLS files named by the environment (``TLS_ENV``), None where unset."""
    environ = os.environ if environ is None else environ
    return {k: environ.get(v) or None for k, v in TLS_ENV.items()}


def tls_files(private_key: Any, certificate: Any, ca_cert: Any, option: str = "--nb-{}") -> TlsFiles | None:
    """``TlsFiles`` of the three (None if none is given), checked: ``NbTlsError`` naming
    the option (``option`` formats it) or file at fault."""
    try:
        tls = TlsFiles.of(private_key, certificate, ca_cert, option)
        if tls is not None:
            tls.check()
        return tls
    except TlsError as exc:
        raise NbTlsError(str(exc)) from None


def use_tls(remote: str, tls: TlsFiles | None) -> None:
    """Set this process's TLS files for ``ssl:`` remotes (``vnet64.ovsdb.set_client_tls``:
    python-ovs has one set per process); ``NbTlsError`` if they cannot be used, or if
    ``remote`` has an ssl: member and no files were ever given."""
    try:
        set_client_tls(tls, remote)
    except TlsError as exc:
        raise NbTlsError(str(exc)) from None


def unavailable(remote: str, reason: str) -> NbUnavailable:
    """The NbUnavailable for a connection that failed; for an ssl: NB, with the TLS
    handshake's own reason when that is what failed (a refused certificate)."""
    why = tls_failure(remote) if uses_ssl(remote) else None
    return NbUnavailable(f"cannot reach the NB at {remote}: {why or reason}")


def connect(remote: str, timeout: float = 10.0,
            conditions: dict[str, list] | None = None, tls: TlsFiles | None = None) -> NbApi:
    """Connect to an NB at ``remote`` (``unix:PATH``, ``tcp:IP:PORT``, ``ssl:IP:PORT``, or
    a comma-separated list of Raft cluster members; the leader is found for you).

    ``tls``: the private key, certificate and CA certificate for ssl: members (set for
    the whole process: ``use_tls``); a certificate the server refuses, or a server
    certificate not signed by the CA, is an NbUnavailable that says so.

    ``conditions`` (table -> OVSDB condition clauses): replicate only those rows
    (``monitor_cond``; tables not named: every row); ``NbApi.set_conditions`` changes
    them later. A node agent uses it to read only the rows its ports name."""
    members = [r.strip() for r in remote.split(",") if r.strip()]
    if not members:
        raise NbUnavailable("no NB remote given")
    missing = [m for m in members if m.startswith("unix:") and not os.path.exists(m[5:])]
    if missing and len(missing) == len(members):
        raise NbUnavailable(f"cannot reach the NB at {remote}: {missing[0][5:]} does not exist "
                            f"(is the NB running? 'vnet64 nb start' starts the embedded one)")
    use_tls(remote, tls)
    helper = ovs.db.idl.SchemaHelper(location=str(SCHEMA_PATH))
    helper.register_all()
    if conditions is None:
        idl = ovs.db.idl.Idl(remote, helper, leader_only=True)
    else:
        idl = CondIdl(remote, helper, leader_only=True)
        for table, cond in conditions.items():   # the first monitor request asks for these
            idl.cond_change(table, cond)
    quick_reconnect(idl)
    conn = connection.Connection(idl, timeout=timeout)
    try:
        return NbApi(conn, conditions=conditions)
    except Exception as exc:  # OvsdbConnectionUnavailable wrapping a timeout or socket error
        idl.close()
        cause = exc.__cause__ or exc
        if isinstance(cause, ovsdbapp_exc.TimeoutException):
            reason = f"no answer within {timeout:g}s"
        else:
            try:
                reason = str(cause) or type(cause).__name__
            except Exception:  # some ovsdbapp exceptions cannot format themselves
                reason = type(cause).__name__
        raise unavailable(remote, reason) from None


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true (for tests that watch the replica)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
