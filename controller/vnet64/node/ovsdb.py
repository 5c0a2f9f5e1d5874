"""The node's own Open vSwitch database, through ovsdbapp: idempotent commands.

Every command compares before it writes, so converging a node that is already as
wanted writes nothing (and disturbs nothing). Rows the agent makes carry
``external_ids:vnet64-node=<node>``, so ``vnet64-node cleanup`` removes what it made and
only that. A transaction on Open_vSwitch waits for ovs-vswitchd to apply it
(``cur_cfg``); ovsdbapp only *logs* interfaces vswitchd failed to create, so
:func:`port_errors` reads ``ofport``/``error`` itself.
"""

from __future__ import annotations

import os
from typing import Any

import ovs.db.idl
from ovsdbapp.backend.ovs_idl import command, connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

from ..ovsdb import OwnConnection

VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
OWNER = "vnet64-node"       # external_ids key naming the node whose agent made a row


def default_remote() -> str:
    """The local ovsdb-server, where ovs-vsctl would look (``$OVS_RUNDIR/db.sock``)."""
    return f"unix:{os.environ.get('OVS_RUNDIR', '/var/run/openvswitch')}/db.sock"


class NodeOvsdb(OwnConnection, impl_idl.OvsdbIdl):
    """ovsdbapp's Open_vSwitch API with its own connection."""

    def run(self, *commands: Any) -> list:
        with self.create_transaction(check_error=True) as txn:
            for c in commands:
                txn.add(c)
        return [c.result for c in commands]

    def rows(self, table: str) -> list:
        return list(self.tables[table].rows.values())


def connect(remote: str | None = None, timeout: float = 10.0) -> NodeOvsdb:
    helper = ovs.db.idl.SchemaHelper(location=VSWITCH_SCHEMA)
    helper.register_all()
    idl = connection.OvsdbIdl(remote or default_remote(), helper)
    return NodeOvsdb(connection.Connection(idl, timeout=timeout))


def get(row: Any, column: str, default: Any) -> Any:
    """A column's value; a row inserted in this transaction has none yet."""
    try:
        return getattr(row, column)
    except AttributeError:
        return default


def _set(row: Any, column: str, value: Any) -> None:
    if get(row, column, None) != value:
        setattr(row, column, value)


class EnsureBridge(command.BaseCommand):
    """Create or update a bridge with every attribute in one go (idempotent).

    Setting fail_mode, datapath id and the controller in the transaction that
    creates the bridge means br-int never runs a moment without them: no
    ``NORMAL`` flow, no datapath-id change, no controller-attach flush later.
    """

    def __init__(self, api: NodeOvsdb, name: str, *, datapath_type: str,
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
        self.controllers = controllers
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
        _set(br, "other_config", {**dict(get(br, 'other_config', {})), **self.other_config})
        _set(br, "external_ids", {**dict(get(br, 'external_ids', {})), **self.external_ids})
        if self.internal_mtu:
            _set(iface, "mtu_request", [self.internal_mtu])
        if self.flow_tables:
            # Names for the pipeline's tables (Flow_Table rows): dump-flows --names shows them.
            current = {tid: row for tid, row in dict(get(br, "flow_tables", {})).items()}
            rows = {}
            for tid, name in sorted(self.flow_tables.items()):
                row = current.get(tid)
                if row is None:
                    row = txn.insert(tables["Flow_Table"])
                if get(row, "name", []) != [name]:
                    _set(row, "name", [name])
                prefixes = sorted(self.table_prefixes.get(name, []))
                if sorted(get(row, "prefixes", [])) != prefixes:
                    _set(row, "prefixes", prefixes)
                rows[tid] = row
            if {t: r.uuid for t, r in current.items()} != {t: r.uuid for t, r in rows.items()}:
                br.flow_tables = rows
        if self.controllers is not None:
            existing = get(br, "controller", [])
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
        _set(iface, "external_ids", {**dict(get(iface, 'external_ids', {})), **self.external_ids})
        _set(port, "external_ids", {**dict(get(port, 'external_ids', {})), **self.external_ids})
        if self.ofport_request:
            _set(iface, "ofport_request", [self.ofport_request])
        if self.mtu_request:
            _set(iface, "mtu_request", [self.mtu_request])
        self.result = str(port.uuid)


class DeleteBridge(command.BaseCommand):
    """Delete a bridge with its ports, if it exists and was made for ``owner``."""

    def __init__(self, api: NodeOvsdb, name: str, owner: str):
        super().__init__(api)
        self.name, self.owner = name, owner

    def run_idl(self, txn: Any) -> None:
        br = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.name, None)
        self.result = False
        if br is None or dict(br.external_ids).get(OWNER) != self.owner:
            return
        for port in br.ports:
            for iface in port.interfaces:
                iface.delete()
            port.delete()
        self.api._ovs.delvalue("bridges", br)
        br.delete()
        self.result = True


class SetSystem(command.BaseCommand):
    """Keys of the Open_vSwitch row's external_ids (or other_config): set the given ones;
    a key whose value is None is removed."""

    def __init__(self, api: NodeOvsdb, external_ids: dict | None = None,
                 other_config: dict | None = None):
        super().__init__(api)
        self.changes = {"external_ids": dict(external_ids or {}),
                        "other_config": dict(other_config or {})}

    def run_idl(self, txn: Any) -> None:
        row = self.api._ovs
        for column, changes in self.changes.items():
            if not changes:
                continue
            value = dict(get(row, column, {}))
            for k, v in changes.items():
                if v is None:
                    value.pop(k, None)
                else:
                    value[k] = v
            _set(row, column, value)


class SetSsl(command.BaseCommand):
    """The Open_vSwitch row's SSL settings, as ``ovs-vsctl set-ssl KEY CERT CA`` makes them:
    the private key and certificate ovs-vswitchd presents on ``ssl:`` controller (and
    manager) connections, and the CA certificate their certificates must be signed by.
    Changed only if they differ (``result``: True if written). ``files`` None removes the
    SSL row, but only if it still holds ``remove_only_if`` (what the agent set)."""

    def __init__(self, api: NodeOvsdb, files: tuple[str, str, str] | None,
                 remove_only_if: tuple[str, str, str] | None = None):
        super().__init__(api)
        self.files, self.remove_only_if = files, remove_only_if

    def run_idl(self, txn: Any) -> None:
        root = self.api._ovs
        row = (get(root, "ssl", []) or [None])[0]
        have = (row.private_key, row.certificate, row.ca_cert) if row is not None else None
        self.result = False
        if self.files is None:
            if row is not None and have == self.remove_only_if:
                root.ssl = []
                row.delete()
                self.result = True
            return
        if have == tuple(self.files):
            return
        if row is None:
            row = txn.insert(self.api._tables["SSL"])
            root.ssl = [row]
        row.private_key, row.certificate, row.ca_cert = self.files
        self.result = True


def ssl_files(api: NodeOvsdb) -> tuple[str, str, str] | None:
    """What ``ovs-vsctl get-ssl`` shows: (private key, certificate, CA certificate), or None."""
    row = (get(api._ovs, "ssl", []) or [None])[0]
    return (row.private_key, row.certificate, row.ca_cert) if row is not None else None


class SyncCtTimeouts(command.BaseCommand):
    """Conntrack timeout policy of exactly ``zones`` for one datapath type (idempotent).

    Creates the Datapath row of ``datapath_key`` if needed; every zone gets a CT_Zone
    pointing at one CT_Timeout_Policy with ``timeouts``, marked as ``owner``'s. Zones
    marked as ``owner``'s that are no longer wanted are removed (a VNet deleted from the
    NB); zones someone else configured are left alone. ``result``: (added, removed).
    """

    def __init__(self, api: NodeOvsdb, datapath_key: str, zones: list[int],
                 timeouts: dict[str, int], owner: str):
        super().__init__(api)
        self.key, self.zones = datapath_key, sorted(set(zones))
        self.timeouts, self.owner = dict(timeouts), owner

    def run_idl(self, txn: Any) -> None:
        tables = self.api._tables
        root = self.api._ovs
        dp = dict(get(root, "datapaths", {})).get(self.key)
        if dp is None:
            if not self.zones:
                self.result = ([], [])
                return
            dp = txn.insert(tables["Datapath"])
            dp.datapath_version = ""
            root.setkey("datapaths", self.key, dp)
        current = dict(get(dp, "ct_zones", {}))
        mine = {z for z, row in current.items()
                if dict(get(row, "external_ids", {})).get(OWNER) == self.owner}
        added, policy = [], None
        for zone in self.zones:
            row = current.get(zone)
            tp = get(row, "timeout_policy", []) if row is not None else []
            if tp and dict(tp[0].timeouts) == self.timeouts:
                continue
            if policy is None:
                policy = txn.insert(tables["CT_Timeout_Policy"])
                policy.timeouts = self.timeouts
                policy.external_ids = {OWNER: self.owner}
            if row is None:
                row = txn.insert(tables["CT_Zone"])
                row.external_ids = {OWNER: self.owner}
                dp.setkey("ct_zones", zone, row)
            row.timeout_policy = [policy]
            added.append(zone)
        removed = sorted(mine - set(self.zones))
        for zone in removed:
            dp.delkey("ct_zones", zone)
        self.result = (added, removed)


def interfaces_with_iface_id(api: NodeOvsdb, bridge: str) -> dict[str, dict]:
    """The interfaces of ``bridge`` that name a logical port (``external_ids:iface-id``):
    interface name -> {uuid, iface_id, attached_mac, ofport, error}."""
    br = idlutils.row_by_value(api.idl, "Bridge", "name", bridge, None)
    if br is None:
        return {}
    out = {}
    for port in br.ports:
        for iface in port.interfaces:
            ext = dict(iface.external_ids)
            if "iface-id" not in ext:
                continue
            out[iface.name] = {"uuid": str(iface.uuid), "iface_id": ext["iface-id"],
                               "attached_mac": ext.get("attached-mac"),
                               "ofport": iface.ofport[0] if iface.ofport else None,
                               "error": iface.error[0] if iface.error else None}
    return out


def port_errors(api: NodeOvsdb, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """(interfaces without an OpenFlow port yet, {interface: vswitchd's error})."""
    pending, errors = [], {}
    for name in names:
        iface = idlutils.row_by_value(api.idl, "Interface", "name", name, None)
        if iface is None:
            pending.append(name)
        elif iface.error:
            errors[name] = iface.error[0]
        elif not iface.ofport or iface.ofport[0] <= 0:
            pending.append(name)
    return pending, errors


def bridge_of_datapath_id(api: NodeOvsdb, dpid: str, besides: str) -> str | None:
    """Another bridge (not ``besides``) that already uses datapath id ``dpid``."""
    for br in api.rows("Bridge"):
        if br.name == besides:
            continue
        have = dict(br.other_config).get("datapath-id") or (br.datapath_id or [None])[0]
        if have and have.lower().lstrip("0") == dpid.lower().lstrip("0"):
            return br.name
    return None
