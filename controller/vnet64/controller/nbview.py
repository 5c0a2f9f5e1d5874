"""The controller's view of the NB: a replica kept up to date row by row, and the
:class:`~vnet64.controller.model.Model` changed in place from it.

``NbView(remote)`` connects to the NB (``unix:``/``tcp:``/``ssl:``, or a comma-separated
list of Raft members; the leader is found for you) with a plain ``ovs.db.idl.Idl``
(no ovsdbapp custom indexes: they cost ~10% of the IDL's CPU at 100k rows), run by
ovsdbapp's ``Connection`` thread, registering only the tables and columns the model
needs. The IDL's ``notify`` hook journals which rows changed (table, uuid);
``update()`` (called on the app's event thread) applies them to :attr:`NbView.model`,
always the same object, and returns the :class:`~vnet64.controller.model.Delta`::

    view = NbView("unix:/var/lib/vnet64/nb.sock", node="host1")
    view.connect(timeout=3.0)           # NbUnavailable while unreachable
    view.update()                        # None: the model was (re)built whole
    ...
    delta = view.update()                # only what changed since

The Host_Mapping table (a row per subscription: the appliance's flows follow it, and
it is the only table the appliance replicates that grows) is not kept as the IDL's
generic ``Row`` objects: ``_Idl`` processes its row updates itself and keeps each row
as (IPv6 address, host Node uuid) in ``_Idl.host_mappings`` (0.3 instead of 1.7 KiB a
row, see ``benchmarks/nbview_memory.py``); everything else reads it from there.

Full rebuilds (``update()`` returns None): the first call, and whenever the journal
cannot be trusted - the IDL cleared its replica to re-read it (a reconnect: its
``__clear``), a monitor reply arrived (initial dump, reconnect, even one that only
sent the changes since), ``change_seqno`` moved by more than the rows notified (an
update the IDL could only partly parse), or a notify failed. Also for the rare
admin changes whose dependents this module does not track: an update or delete of a
Region, VNet, Subnet or Service row, a Node renamed, the Platform_IP changed (every
VM's SNAT address may follow it). Creates of Region/VNet/Subnet/Service rows change
nothing by themselves. The rebuild derives every value from the replica and brings the
kept object to them with put/remove calls (an equal value's put is a no-op), so a
logic holding it keeps seeing the current model.

Incremental (``update()`` returns the delta): a VM row is re-derived from its row,
VNet, Subnet, Region, host Node, its Subscriptions (its services) and Platform_IP; a
Subscription's change re-derives its VM (old and new, from the view's own
subscription index, so a deleted row needs no data); an Endpoint from its row,
Service and host; a Binding from its Port_Binding and Node; a Route from its
Host_Mapping and Node. A Node's other columns and the Platform's prefix, appliance
and tunnel token are put as they are (``Delta.platform``); its change number
(``nb_cfg``, every write transaction's) is kept beside the model in
:attr:`NbView.nb_cfg`, never a delta by itself. Every removal of a batch is
applied before its puts, so a name or address handed from one row to another in one
transaction ends up on the new owner. The property test (tests/nb/test_nbview.py)
checks that the model equals a fresh full build after every step.

Conditional monitoring (``NbView(remote, node="host1")``, OVSDB ``monitor_cond``; the
clauses of one table's condition are ORed: a row is sent if it matches any, see
ovsdb-server(7) 4.1.12):

- until the node's own Node row is known: Platform and Node only;
- a host: its VMs (``host == node``), their Subscriptions (one ``vm == uuid`` clause
  per VM), the Endpoints on it or of a service one of its VMs is actively subscribed
  to, its Port_Bindings, every Platform/Node/Region/VNet/Subnet/Service row, no
  Host_Mapping;
- the appliance: Platform, Node and Host_Mapping only.

The conditions follow the replica (a VM bound to this node brings its subscriptions,
they bring their services' endpoints): what they are made of (this node's VMs, the
services of their active subscriptions) is kept up to date from the journalled Node,
VM and Subscription rows in O(changes), and the conditions are rebuilt and sent
(``Idl.cond_change``; the connection's thread sends them, woken by a no-op queued
transaction) only when that changed; the rows they add or remove arrive as ordinary
row changes and reach the model on a later ``update()``. ``connect()``
waits until the conditions stop changing, so the first model is whole. On a
reconnect the IDL asks for the conditions the server last acknowledged and sends the
newer ones after (or, with a condition change in flight, re-reads everything with the
newest conditions: ``Idl.sync_conditions``); either way it is a monitor reply, so a
full rebuild.

Thread model: the connection's thread applies the server's updates and calls
``notify`` holding ``Connection.lock``; ``update()``, ``connect()`` and every read of
the replica hold the same lock.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
import uuid as uuidlib
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import ovs.db.error
import ovs.db.idl
from ovsdbapp import exceptions as ovsdbapp_exc
from ovsdbapp.backend.ovs_idl import connection

from .. import address, gateway
from ..nb.api import NbUnavailable, unavailable, use_tls
from ..nb.server import SCHEMA_PATH
from ..ovsdb import CondIdl, TlsFiles, quick_reconnect, set_conditions
from .model import DIRECT_PATH_DEFAULT, VM, Binding, Delta, Endpoint, Model, Node, Route

LOG = logging.getLogger("vnet64.controller.nb")

DEFAULT_PLATFORM_IP = IPv4Address("100.100.0.1")        # as model.from_nb
DEFAULT_TRANSLATOR_PREFIX = IPv6Network("fd64:64::/96")

# What the model reads of the NB: nothing else is replicated.
COLUMNS: dict[str, tuple[str, ...]] = {
    "Platform": ("platform_ip", "translator_prefix", "appliance", "tunnel_token", "direct_path",
                 "nb_cfg", "nb_cfg_timestamp"),
    "Node": ("name", "role", "underlay_ip", "datapath_id"),
    "Region": ("region_id",),
    "VNet": ("name", "region", "vnet_id", "snat_vip", "ct_zone"),
    "Subnet": ("subnet_id", "cidr"),
    "VM": ("name", "vnet", "subnet", "ipv4", "mac", "host"),
    "Service": ("name",),
    "Endpoint": ("name", "service", "ipv6", "mac", "host"),
    "Subscription": ("vm", "service", "state"),
    "Host_Mapping": ("ipv6", "host"),
    "Port_Binding": ("logical_port", "kind", "node", "port", "ofport"),
}
# Tables whose updates and deletes this module does not follow (rare admin changes).
_ADMIN = frozenset(("Region", "VNet", "Subnet", "Service"))
# Tables whose changes may change a node's conditions.
_COND_INPUTS = frozenset(("Node", "VM", "Subscription"))
_ALL_TABLES = tuple(COLUMNS)
# The table kept out of the IDL's row store (_Idl.host_mappings), and its row's defaults.
_LEAN = "Host_Mapping"
_LEAN_DEFAULT: tuple = ("", uuidlib.UUID(int=0))
_EVERYWHERE = ("Platform", "Node")                       # every view, always
_HOST_ALL = ("Region", "VNet", "Subnet", "Service")      # a host: every row


def _v(row: Any, column: str) -> Any:
    """The raw value of a scalar (or optional, max 1) column: str, int, uuid.UUID or None
    (``Datum.as_scalar`` without its checks: these columns are never maps)."""
    values = row._data[column].values
    return next(iter(values)).value if len(values) == 1 else None


def _cond_uuid(column: str, value: uuidlib.UUID) -> list:
    return [column, "==", ["uuid", str(value)]]


class _Idl(CondIdl):
    """A plain IDL that journals the rows it changes for :class:`NbView`, and keeps the
    Host_Mapping table (the appliance's 100,000 rows) out of its generic row store.

    Every other table's rows are ``Row`` objects in ``tables[name].rows`` as usual. A
    Host_Mapping row is one entry of :attr:`host_mappings`: uuid -> (IPv6 address,
    host Node uuid) - its ``ipv6`` column parsed (the text itself if it is no address),
    its ``host`` reference (one uuid object per node, shared) - ~0.3 KiB a row where
    the generic ``Row`` with its ``Datum`` and ``Atom`` objects took ~1.7 KiB (and kept
    the initial dump's strings alive). Its update processing (``update2``/``update3``:
    ``initial``/``insert``/``modify``/``delete``; and the old ``update``) is done here,
    with the generic code's semantics (a modify of a missing row is a parse error, an
    insert of an existing row replaces it, a delete of a missing one is ignored); each
    change moves ``change_seqno`` and is journalled like a ``notify``.
    """

    def __init__(self, remote: str, helper: Any, leader_only: bool = True):
        self.journal: dict[str, set] = {}
        self.journal_full = True     # nothing applied yet: the first update is a full build
        self.journal_why = "first load"
        self.notices = 0             # notices since the last take (change_seqno accounting)
        self.host_mappings: dict[uuidlib.UUID, tuple[Any, uuidlib.UUID]] = {}
        self._node_refs: dict[str, uuidlib.UUID] = {}   # a Node uuid's text -> its one object
        self.changed = threading.Event()   # set when a run() moved change_seqno
        super().__init__(remote, helper, leader_only=leader_only)
        self._lean = self.tables.get(_LEAN)

    def run(self) -> Any:
        """``Idl.run`` (the connection's thread), waking :meth:`NbView.wait_changed`
        when it changed the replica."""
        seqno = self.change_seqno
        try:
            return super().run()
        finally:
            if self.change_seqno != seqno:
                self.changed.set()

    def notify(self, event: Any, row: Any, updates: Any = None) -> None:
        self._note(row._table.name, row.uuid, event)

    def _note(self, table: str, uuid: uuidlib.UUID, event: str) -> None:
        try:
            self.notices += 1
            if self.journal_full:
                return
            if table in _ADMIN and event != ovs.db.idl.ROW_CREATE:
                self.mark_full(f"{table} row {event}")
                return
            self.journal.setdefault(table, set()).add(uuid)
        except Exception:  # noqa: BLE001  never lose a change silently: rebuild instead
            LOG.exception("NB journal failed; the next update rebuilds the model")
            self.mark_full("journal error")

    def mark_full(self, why: str) -> None:
        if not self.journal_full:
            self.journal_full, self.journal_why = True, why
        self.journal.clear()

    def _Idl__clear(self) -> None:   # the IDL re-reads everything (reconnect)
        self.mark_full("NB reconnected: replica re-read")
        seqno, had = self.change_seqno, bool(self.host_mappings)
        self.host_mappings.clear()
        super()._Idl__clear()
        if had and self.change_seqno == seqno:
            self.change_seqno += 1

    # -- Host_Mapping, kept lean -------------------------------------------------

    def _Idl__process_update2(self, table: Any, uuid: uuidlib.UUID, row_update: Any) -> Any:
        if table is not self._lean:
            return super()._Idl__process_update2(table, uuid, row_update)
        store = self.host_mappings
        old = store.get(uuid)
        if "delete" in row_update:
            if old is None:
                LOG.debug("cannot delete missing row %s from table %s", uuid, _LEAN)
                return False
            del store[uuid]
            event = ovs.db.idl.ROW_DELETE
        elif "insert" in row_update or "initial" in row_update:
            if old is not None:
                LOG.warning("cannot add existing row %s to table %s", uuid, _LEAN)
            columns = row_update["insert"] if "insert" in row_update else row_update["initial"]
            store[uuid] = self._lean_row(columns, _LEAN_DEFAULT)
            event = ovs.db.idl.ROW_CREATE
        elif "modify" in row_update:
            if old is None:
                raise ovs.db.error.Error("Modify non-existing row")
            # update2's diff of a scalar column (ipv6, host: exactly one value) is the new value
            new = self._lean_row(row_update["modify"], old)
            if new == old:
                return False
            store[uuid] = new
            event = ovs.db.idl.ROW_UPDATE
        else:
            raise ovs.db.error.Error("<row-update> unknown operation", row_update)
        self.change_seqno += 1
        self._note(_LEAN, uuid, event)
        return False      # nothing for the generic code to count or notify

    def _Idl__process_update(self, table: Any, uuid: uuidlib.UUID, old: Any, new: Any) -> Any:
        """The old ``monitor`` protocol (a server without ``monitor_cond``): ``new`` holds
        every column after an insert or modify, none after a delete."""
        if table is not self._lean:
            return super()._Idl__process_update(table, uuid, old, new)
        store = self.host_mappings
        had = store.get(uuid)
        if not new:
            if had is None:
                return False
            del store[uuid]
            event = ovs.db.idl.ROW_DELETE
        else:
            value = self._lean_row(new, _LEAN_DEFAULT if had is None else had)
            if value == had:
                return False
            store[uuid] = value
            event = ovs.db.idl.ROW_CREATE if had is None else ovs.db.idl.ROW_UPDATE
        self.change_seqno += 1
        self._note(_LEAN, uuid, event)
        return False

    def _lean_row(self, columns: Any, base: tuple) -> tuple:
        """(ipv6, host) from a row's JSON columns, the others as in ``base``."""
        if not isinstance(columns, dict):
            raise ovs.db.error.Error(f"<row> for table {_LEAN} is not an object", columns)
        ipv6, host = base
        for column, value in columns.items():
            if column == "ipv6" and isinstance(value, str):
                try:
                    ipv6 = IPv6Address(value)
                except ValueError:
                    ipv6 = value            # _route raises on it, as it did on the Row's text
            elif (column == "host" and isinstance(value, list) and len(value) == 2
                  and value[0] == "uuid" and isinstance(value[1], str)):
                ref = self._node_refs.get(value[1])
                if ref is None:
                    try:
                        ref = uuidlib.UUID(value[1])
                    except ValueError:
                        LOG.warning("bad uuid %r in column host of table %s", value[1], _LEAN)
                        continue
                    self._node_refs[str(ref)] = ref
                host = ref
            else:
                LOG.warning("unexpected column %s=%r updating table %s", column, value, _LEAN)
        return ipv6, host


class NbView:
    """The NB replica of one controller (all of it, or what ``node`` needs) and its model.

    ``remote``, ``tls``: as ``vnet64.nb.api.connect``. ``node``: the node this controller
    serves (conditional monitoring); None: the whole NB (the central controller)."""

    def __init__(self, remote: str, node: str | None = None, leader_only: bool = True,
                 tls: TlsFiles | None = None):
        self.remote = remote
        self.tls = tls
        self.node = node
        self.leader_only = leader_only
        self.model = Model(DEFAULT_PLATFORM_IP, DEFAULT_TRANSLATOR_PREFIX, None)
        self.idl: _Idl | None = None
        self.conn: connection.Connection | None = None
        self.stats = {"full": 0, "incremental": 0, "cond_changes": 0}
        self._seqno = 0                        # idl.change_seqno when last taken
        self._keys: dict[str, dict] = {t: {} for t in ("Node", "VM", "Endpoint", "Port_Binding",
                                                       "Host_Mapping")}
        self._sub_vm: dict[uuidlib.UUID, uuidlib.UUID] = {}          # subscription -> VM
        self._subs_of: dict[uuidlib.UUID, set[uuidlib.UUID]] = {}    # VM -> subscriptions
        self._vnet_cache: dict[uuidlib.UUID, tuple] = {}
        self._subnet_cache: dict[uuidlib.UUID, tuple] = {}
        self._conds: dict[str, list] | None = None   # last conditions asked for
        # What the conditions are made of (a node's view), kept up to date row by row:
        self._me: uuidlib.UUID | None = None         # this node's Node row
        self._my_role: str | None = None
        self._mine: dict[uuidlib.UUID, list] = {}    # the VMs on it -> their `vm ==` clause
        self._counted: dict[uuidlib.UUID, uuidlib.UUID] = {}   # their active subscriptions -> service
        self._svc_count: dict[uuidlib.UUID, int] = {}          # service -> such subscriptions
        self._cond_dirty = True
        self._lock = threading.Lock()          # one update() at a time
        # The newest NB change the model holds: (Platform.nb_cfg, its writer's timestamp
        # in ms), both 0 before the first numbered change. Not part of the model: a
        # change of them alone is an empty delta.
        self.nb_cfg: tuple[int, int] = (0, 0)

    # -- connection -----------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> "NbView":
        """Connect and read the NB (for a node: until its conditions stop changing);
        NbUnavailable if it cannot be reached within ``timeout`` seconds."""
        members = [r.strip() for r in self.remote.split(",") if r.strip()]
        if not members:
            raise NbUnavailable("no NB remote given")
        missing = [m for m in members if m.startswith("unix:") and not os.path.exists(m[5:])]
        if missing and len(missing) == len(members):
            raise NbUnavailable(f"cannot reach the NB at {self.remote}: {missing[0][5:]} does not "
                                f"exist (is the NB running? 'vnet64 nb start' starts the embedded one)")
        use_tls(self.remote, self.tls)   # NbTlsError: files missing or unusable
        helper = ovs.db.idl.SchemaHelper(location=str(SCHEMA_PATH))
        for table, columns in COLUMNS.items():
            helper.register_columns(table, list(columns))
        idl = _Idl(self.remote, helper, leader_only=self.leader_only)
        quick_reconnect(idl)
        conn = connection.Connection(idl, timeout=timeout)
        self.idl, self.conn, self._conds, self._seqno = idl, conn, None, 0
        if self.node is not None:
            # Before the first request: the monitor asks for these (Idl.sync_conditions).
            with conn.lock:
                self._recount_all()
                self._send_conditions()
        try:
            conn.start()
        except Exception as exc:  # noqa: BLE001  a timeout, or whatever the socket raised
            idl.close()
            self.idl = self.conn = None
            if isinstance(exc, ovsdbapp_exc.TimeoutException):
                reason = f"no answer within {timeout:g}s"
            else:
                try:
                    reason = str(exc) or type(exc).__name__
                except Exception:  # noqa: BLE001  some exceptions cannot format themselves
                    reason = type(exc).__name__
            raise unavailable(self.remote, reason) from None
        if self.node is not None:
            self._settle(timeout)
        LOG.info("NB connected: %s%s", self.remote, f" (rows of node {self.node})" if self.node else "")
        return self

    def _settle(self, timeout: float) -> None:
        """Follow the conditions until they stop changing (node, its VMs, their
        subscriptions, their services' endpoints: a few rounds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.conn.lock:
                self._recount_all()
                changed = self._send_conditions()
            if not changed and self.conditions_acked():
                return
            while not self.conditions_acked() and time.monotonic() < deadline:
                time.sleep(0.005)
        LOG.warning("NB conditions for node %s not settled within %gs; going on", self.node, timeout)

    def close(self) -> None:
        """Stop the connection's thread (it closes the IDL) and free its wakeup pipe
        (otherwise left to the garbage collector: a process that reconnects often
        would run out of file descriptors)."""
        conn, self.conn, self.idl = self.conn, None, None
        if conn is None:
            return
        try:
            stopped = conn.stop(timeout=5)
        except TypeError:  # older ovsdbapp: stop() without timeout
            stopped = conn.stop()
        if stopped is not False:
            conn.txns.close()

    @property
    def lock(self) -> Any:
        """The lock the connection's thread holds while it changes the replica."""
        return self.conn.lock

    def change_seqno(self) -> int:
        return self.idl.change_seqno if self.idl is not None else 0

    def wait_changed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the replica to change (at once if it changed
        since the last call); True if it did. A watcher that reads ``change_seqno`` and
        then waits here misses nothing, and hears of a change as it is applied instead
        of at its next poll."""
        idl = self.idl
        if idl is None:
            time.sleep(timeout)
            return False
        fired = idl.changed.wait(timeout)
        idl.changed.clear()
        return fired

    def conditions_acked(self) -> bool:
        """Every condition asked for has been acknowledged by the server (its rows are in)."""
        if self.idl is None:
            return True
        with self.conn.lock:
            return self.idl.conditions_acked()

    def settled(self) -> bool:
        """Nothing left to apply: conditions acknowledged and no row change unapplied
        (for tests and benchmarks that wait for the view to catch up)."""
        if self.idl is None:
            return False
        with self.conn.lock:
            return (self.conditions_acked() and not self.idl.journal_full
                    and not self.idl.journal and self.idl.change_seqno == self._seqno)

    def node_name(self, dpid: int) -> str | None:
        """The name of the NB node with datapath id ``dpid``, from the replica."""
        if self.idl is None:
            return None
        with self.conn.lock:
            for row in self.idl.tables["Node"].rows.values():
                if _v(row, "datapath_id") == dpid:
                    return _v(row, "name")
        return None

    # -- update ---------------------------------------------------------------

    def update(self) -> Delta | None:
        """Bring :attr:`model` up to date with the replica. None: it was rebuilt whole
        (the first time, after a reconnect, or an admin change); else what changed."""
        if self.idl is None:
            return None
        with self._lock:
            delta, rows = self._update()
            if rows >= TRIM_AFTER_ROWS:
                trim_heap()
            return delta

    def _update(self) -> tuple[Delta | None, int]:
        """``update()``'s work, and how many rows it read (the replica's, for a rebuild)."""
        with self.conn.lock:
            idl = self.idl
            journal, full, why = idl.journal, idl.journal_full, idl.journal_why
            seqno, notices = idl.change_seqno, idl.notices
            if not full and seqno - self._seqno != notices:
                full, why = True, "NB (re)connected or monitor restarted"
            idl.journal, idl.journal_full, idl.notices = {}, False, 0
            self._seqno = seqno
            delta: Delta | None = None
            if not full:
                try:
                    delta = self._apply(journal)
                except _Full as exc:
                    full, why = True, str(exc)
                except Exception:  # noqa: BLE001  a bug here must not leave the model half done
                    LOG.exception("incremental NB update failed; rebuilding the model")
                    full, why = True, "incremental update failed"
            if full:
                started = time.monotonic()
                self._rebuild()
                self.stats["full"] += 1
                LOG.info("NB model rebuilt (%s) in %.2fs: %r", why, time.monotonic() - started,
                         self.model)
            else:
                self.stats["incremental"] += 1
                if delta:
                    LOG.debug("NB delta: platform %s, %d nodes, %d VMs, %d endpoints, "
                              "%d bindings, %d routes", delta.platform, len(delta.nodes),
                              len(delta.vms), len(delta.endpoints), len(delta.bindings),
                              len(delta.routes))
            if full or "Platform" in journal:
                self.nb_cfg = self._nb_cfg()
            if self.node is not None:
                if full:
                    self._recount_all()
                elif _COND_INPUTS.intersection(journal):
                    self._recount(journal)
                self._send_conditions()
            if full:
                return None, len(idl.host_mappings) + sum(len(t.rows) for t in idl.tables.values())
            return delta, sum(len(us) for us in journal.values())

    # -- the full build -------------------------------------------------------

    def _rebuild(self) -> None:
        """Recompute the model from the replica into the kept object: every value put
        (a put of an equal value is a no-op), every other object removed first."""
        self._vnet_cache.clear()
        self._subnet_cache.clear()
        self._sub_vm.clear()
        self._subs_of.clear()
        tables, kept = self.idl.tables, self.model
        for u, row in tables["Subscription"].rows.items():
            vm = _v(row, "vm")
            self._sub_vm[u] = vm
            self._subs_of.setdefault(vm, set()).add(u)
        platform = self._platform()
        puts = []
        for table, derive in (("Node", self._node), ("VM", lambda r: self._vm(r, platform[0])),
                              ("Endpoint", self._endpoint), ("Port_Binding", self._binding),
                              ("Host_Mapping", self._route)):
            keys = self._keys[table]
            keys.clear()
            values = []
            for u, row in self._rows(table).items():
                value = derive(row)
                if value is not None:
                    keys[u] = _key(value)
                    values.append(value)
            # The model's own key sets (its private dicts: the sorted views would sort
            # 100k objects for nothing).
            for gone in set(_HELD[table](kept)) - set(keys.values()):
                _REMOVE[table](kept, gone)
            puts.append((_PUT[table], values))
        kept.set_platform(*platform)
        for put, values in puts:
            for value in values:
                put(kept, value)
        kept.take_delta()

    # -- the incremental path -------------------------------------------------

    def _apply(self, journal: dict[str, set]) -> Delta:
        model, tables = self.model, self.idl.tables
        if "Platform" in journal:
            platform = self._platform()
            if platform[0] != model.platform_ip:
                raise _Full("Platform_IP changed")
            model.set_platform(*platform)
        dirty_vms = set(journal.get("VM", ()))
        for u in journal.get("Subscription", ()):
            old_vm = self._sub_vm.pop(u, None)
            if old_vm is not None:
                dirty_vms.add(old_vm)
                subs = self._subs_of.get(old_vm)
                if subs is not None:
                    subs.discard(u)
                    if not subs:
                        del self._subs_of[old_vm]
            row = tables["Subscription"].rows.get(u)
            if row is not None:
                vm = _v(row, "vm")
                self._sub_vm[u] = vm
                self._subs_of.setdefault(vm, set()).add(u)
                dirty_vms.add(vm)
        work = []   # (table, uuid, new value or None)
        for u in journal.get("Node", ()):
            row = tables["Node"].rows.get(u)
            new = self._node(row) if row is not None else None
            old = self._keys["Node"].get(u)
            if old is not None and new is not None and old != new.name:
                raise _Full(f"node {old} renamed {new.name}")
            work.append(("Node", u, new))
        platform_ip = model.platform_ip
        for u in dirty_vms:
            row = tables["VM"].rows.get(u)
            work.append(("VM", u, self._vm(row, platform_ip) if row is not None else None))
        for table, derive in (("Endpoint", self._endpoint), ("Port_Binding", self._binding),
                              ("Host_Mapping", self._route)):
            rows = self._rows(table)
            for u in journal.get(table, ()):
                row = rows.get(u)
                work.append((table, u, derive(row) if row is not None else None))
        # Removals first: a key handed from one row to another in one batch ends on the new one.
        puts = []
        for table, u, new in work:
            keys = self._keys[table]
            old = keys.get(u)
            new_key = _key(new) if new is not None else None
            if old is not None and old != new_key:
                _REMOVE[table](model, old)
            if new is None:
                keys.pop(u, None)
            else:
                keys[u] = new_key
                puts.append((table, new))
        for table, new in puts:
            _PUT[table](model, new)
        return model.take_delta()

    # -- derivations (one row -> one model value; None: a reference is missing) ---

    def _rows(self, table: str) -> dict:
        """A table's rows in the replica: uuid -> Row, or for Host_Mapping -> (ipv6, host)."""
        return self.idl.host_mappings if table == _LEAN else self.idl.tables[table].rows

    def _platform(self) -> tuple:
        row = next(iter(self.idl.tables["Platform"].rows.values()), None)
        if row is None:
            return DEFAULT_PLATFORM_IP, DEFAULT_TRANSLATOR_PREFIX, None, None, DIRECT_PATH_DEFAULT
        appliance = None
        ref = _v(row, "appliance")
        if ref is not None:
            node = self.idl.tables["Node"].rows.get(ref)
            appliance = _v(node, "name") if node is not None else None
        direct = _v(row, "direct_path")
        return (IPv4Address(_v(row, "platform_ip")), IPv6Network(_v(row, "translator_prefix")),
                appliance, _v(row, "tunnel_token"), DIRECT_PATH_DEFAULT if direct is None else direct)

    def _nb_cfg(self) -> tuple[int, int]:
        row = next(iter(self.idl.tables["Platform"].rows.values()), None)
        if row is None:
            return (0, 0)
        return (_v(row, "nb_cfg") or 0, _v(row, "nb_cfg_timestamp") or 0)

    def _node(self, row: Any) -> Node:
        return Node(_v(row, "name"), _v(row, "role"), IPv4Address(_v(row, "underlay_ip")),
                    _v(row, "datapath_id"))

    def _host(self, row: Any, column: str = "host") -> str | None:
        node = self.idl.tables["Node"].rows.get(_v(row, column))
        return _v(node, "name") if node is not None else None

    def _vnet(self, u: uuidlib.UUID) -> tuple | None:
        """(name, region id, VNet id, SNAT VIP, zone) of a VNet row, cached per build."""
        got = self._vnet_cache.get(u)
        if got is None:
            tables = self.idl.tables
            row = tables["VNet"].rows.get(u)
            region = tables["Region"].rows.get(_v(row, "region")) if row is not None else None
            if region is None:
                return None
            vip = _v(row, "snat_vip")
            got = (_v(row, "name"), _v(region, "region_id"), _v(row, "vnet_id"),
                   IPv4Address(vip) if vip is not None else address.DEFAULT_SNAT_VIP,
                   _v(row, "ct_zone"))
            self._vnet_cache[u] = got
        return got

    def _subnet(self, u: uuidlib.UUID) -> tuple | None:
        got = self._subnet_cache.get(u)
        if got is None:
            row = self.idl.tables["Subnet"].rows.get(u)
            if row is None:
                return None
            got = (_v(row, "subnet_id"), gateway.vm_gateway(IPv4Network(_v(row, "cidr"))))
            self._subnet_cache[u] = got
        return got

    def _services(self, vm: uuidlib.UUID) -> frozenset[str]:
        tables = self.idl.tables
        subs, services = tables["Subscription"].rows, tables["Service"].rows
        out = set()
        for s in self._subs_of.get(vm, ()):
            row = subs.get(s)
            if row is None or _v(row, "state") != "active":
                continue
            svc = services.get(_v(row, "service"))
            if svc is not None:
                out.add(_v(svc, "name"))
        return frozenset(out)

    def _vm(self, row: Any, platform_ip: IPv4Address) -> VM | None:
        vnet, subnet, host = self._vnet(_v(row, "vnet")), self._subnet(_v(row, "subnet")), self._host(row)
        if vnet is None or subnet is None or host is None:
            return None
        vnet_name, region_id, vnet_id, vip, zone = vnet
        ipv4 = IPv4Address(_v(row, "ipv4"))
        addr = address.PlatformAddress(region_id, vnet_id, subnet[0], ipv4, vip)
        return VM(name=_v(row, "name"), vnet=vnet_name, host=host, ipv4=ipv4, mac=_v(row, "mac"),
                  ipv6=addr.ipv6, zone=zone, gateway=subnet[1],
                  snat_ip=platform_ip if vip == address.DEFAULT_SNAT_VIP else vip,
                  services=self._services(row.uuid))

    def _endpoint(self, row: Any) -> Endpoint | None:
        svc = self.idl.tables["Service"].rows.get(_v(row, "service"))
        host = self._host(row)
        if svc is None or host is None:
            return None
        return Endpoint(_v(row, "name"), _v(svc, "name"), IPv6Address(_v(row, "ipv6")),
                        _v(row, "mac"), host)

    def _binding(self, row: Any) -> Binding | None:
        node = self._host(row, "node")
        if node is None:
            return None
        return Binding(_v(row, "logical_port"), _v(row, "kind"), node, _v(row, "port"),
                       _v(row, "ofport"))

    def _route(self, mapping: tuple) -> Route | None:
        """A Host_Mapping row as the replica keeps it (``_Idl.host_mappings``)."""
        ipv6, host = mapping
        node = self.idl.tables["Node"].rows.get(host)
        if node is None:
            return None
        return Route(ipv6 if isinstance(ipv6, IPv6Address) else IPv6Address(ipv6), _v(node, "name"))

    # -- conditions -----------------------------------------------------------

    def _recount_all(self) -> None:
        """What the conditions are made of, from the whole replica (a full rebuild)."""
        tables = self.idl.tables
        me = next((r for r in tables["Node"].rows.values() if _v(r, "name") == self.node), None)
        self._me = me.uuid if me is not None else None
        self._my_role = _v(me, "role") if me is not None else None
        self._mine = {u: _cond_uuid("vm", u) for u, r in tables["VM"].rows.items()
                      if self._me is not None and _v(r, "host") == self._me}
        self._counted.clear()
        self._svc_count.clear()
        for u in tables["Subscription"].rows:
            self._recount_sub(u)
        self._cond_dirty = True

    def _recount(self, journal: dict[str, set]) -> None:
        """The same, from the journalled rows only (O(changes), not O(this node's VMs))."""
        tables = self.idl.tables
        if "Node" in journal:
            me = next((r for r in tables["Node"].rows.values() if _v(r, "name") == self.node), None)
            if (me.uuid if me is not None else None, _v(me, "role") if me is not None else None) \
                    != (self._me, self._my_role):
                self._recount_all()
                return
        vms = tables["VM"].rows
        for u in journal.get("VM", ()):
            row = vms.get(u)
            on = row is not None and self._me is not None and _v(row, "host") == self._me
            if on != (u in self._mine):
                if on:
                    self._mine[u] = _cond_uuid("vm", u)
                else:
                    del self._mine[u]
                self._cond_dirty = True
                for sub in self._subs_of.get(u, ()):
                    self._recount_sub(sub)
        for sub in journal.get("Subscription", ()):
            self._recount_sub(sub)

    def _recount_sub(self, u: uuidlib.UUID) -> None:
        """Count subscription ``u`` towards its service if it is an active one of a VM
        on this node (the services whose endpoints this node monitors)."""
        old = self._counted.pop(u, None)
        if old is not None:
            self._svc_count[old] -= 1
            if not self._svc_count[old]:
                del self._svc_count[old]
                self._cond_dirty = True
        row = self.idl.tables["Subscription"].rows.get(u)
        if row is not None and _v(row, "state") == "active" and _v(row, "vm") in self._mine:
            svc = _v(row, "service")
            self._counted[u] = svc
            self._svc_count[svc] = self._svc_count.get(svc, 0) + 1
            if self._svc_count[svc] == 1:
                self._cond_dirty = True

    def _conditions(self) -> dict[str, list]:
        """What node ``self.node`` monitors, given what its replica holds now."""
        out: dict[str, list] = {t: [False] for t in _ALL_TABLES}
        for t in _EVERYWHERE:
            out[t] = [True]
        me = self._me
        if me is None:
            return out
        if self._my_role == "appliance":
            out["Host_Mapping"] = [True]
            return out
        for t in _HOST_ALL:
            out[t] = [True]
        out["VM"] = [_cond_uuid("host", me)]
        out["Port_Binding"] = [_cond_uuid("node", me)]
        if self._mine:   # in no particular order: built only when the set changed
            out["Subscription"] = list(self._mine.values())
        out["Endpoint"] = [_cond_uuid("host", me)] + [_cond_uuid("service", s)
                                                      for s in sorted(self._svc_count)]
        return out

    def _send_conditions(self) -> bool:
        """Ask for the conditions if what they are made of changed (only the tables
        whose condition changed); True if any did. Called holding the connection's lock."""
        if not self._cond_dirty:
            return False
        self._cond_dirty = False
        conds = self._conditions()
        if conds == self._conds:
            return False
        set_conditions(self.conn, self.idl, conds, self._conds)
        self._conds = conds
        self.stats["cond_changes"] += 1
        if self._me is None:
            what = "not in the NB (yet): Platform and Node rows only"
        elif self._my_role == "appliance":
            what = "the appliance: Platform, Node and Host_Mapping rows"
        else:
            what = (f"a host: its {len(self._mine)} VMs and their subscriptions, the endpoints "
                    f"on it and of {len(self._svc_count)} services, its port bindings")
        LOG.info("NB conditions for node %s, %s", self.node, what)
        return True


# After an update() that read this many rows, the C heap's free pages go back to the
# system (trim_heap): the IDL's C JSON parser builds each message's whole tree in malloc'd
# memory before Python gets it (~0.6 KiB a Host_Mapping row), and glibc keeps what was
# freed in the middle of a heap for good - measured: an appliance's 100,000 mappings
# left 63 MiB there (0.6 KiB per subscription of RSS); giving it back took 18 ms.
TRIM_AFTER_ROWS = 10_000


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc ``malloc_trim``; elsewhere
    nothing)."""
    if _MALLOC_TRIM is not None:
        started = time.monotonic()
        _MALLOC_TRIM(0)
        LOG.debug("C heap trimmed in %.0f ms", (time.monotonic() - started) * 1000)


def _malloc_trim() -> Any:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):   # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()


class _Full(Exception):
    """The journal names a change this module does not follow row by row."""


def _key(value: Any) -> Any:
    return value.ipv6 if isinstance(value, Route) else (
        value.logical_port if isinstance(value, Binding) else value.name)


_PUT = {"Node": Model.put_node, "VM": Model.put_vm, "Endpoint": Model.put_endpoint,
        "Port_Binding": Model.put_binding, "Host_Mapping": Model.put_route}
_HELD = {"Node": lambda m: m._nodes, "VM": lambda m: m._vms, "Endpoint": lambda m: m._eps,
         "Port_Binding": lambda m: m._bindings, "Host_Mapping": lambda m: m._routes}
_REMOVE = {"Node": Model.remove_node, "VM": Model.remove_vm, "Endpoint": Model.remove_endpoint,
           "Port_Binding": Model.remove_binding, "Host_Mapping": Model.remove_route}
