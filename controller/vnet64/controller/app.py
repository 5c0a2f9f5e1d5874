"""The thin os-ken shell: switch events in, role-logic messages out.

``Vnet64App`` owns no policy. It finds the switch an event belongs to, calls
the pluggable role logic (anything that implements :class:`Logic`; the shipped
one is ``vnet64.controller.logic:Logic``) and sends the flow-language messages
it returns through :mod:`ofmsg`, all messages of one reaction in one write
(flow-mods before the packet-out that needs them; no barrier, never a wait for
a reply inside a handler).

Per switch, in order:

1. features reply: ``OFPSetConfig(miss_send_len=0xffff)`` (os-ken never sends
   one; without it packet-ins may come truncated or not at all);
2. os-ken's own handshake asks for the port descriptions; once they are in
   (``MAIN_DISPATCHER``), ``logic.switch_connected(dpid, ports)`` gives the
   role's table map and proactive messages; they are sent, followed by the
   flow-stats requests of the resync: on a host, first the pairs' own flows of
   the ``pair`` table (``logic.adoption_read``: one flow per pair), then every
   flow; elsewhere every flow;
3. when the first dump is in (``REPLY_MORE`` followed),
   ``logic.resynced(dpid, flows[, complete])``; packet-ins that arrived
   meanwhile were held and are handed over now (so the logic never allocates
   before it has seen what the switch already holds); when the second (whole)
   dump is in, ``logic.swept(dpid, flows)`` deletes what is stale;
4. then packet-ins, flow-removed and port-status as they come; on disconnect
   ``logic.switch_disconnected``.

Over TLS (``Settings.ofp_tls``) a switch is bound to a node before step 2: it is served
only if its certificate's common name names the node whose datapath id it claims
(:mod:`.switch_cert`, ``--vnet64-switch-cert-name``). One that names another node, or
none, is refused - logged as a warning with its address, CN and the node it claims, and
its connection closed before any flow-mod - and a switch already serving that node keeps
its connection. Until the NB is read and names the node of its datapath id, a TLS switch
waits aside (``unbound``), checked again at every NB change that touches the nodes.

The NB side: a watcher thread connects an :class:`~vnet64.controller.nbview.NbView`
to the NB (retrying while it is unreachable; with ``Settings.node`` it replicates
only what that node needs, by conditional monitoring) and posts an event into this
app's own queue whenever the IDL's ``change_seqno`` moves (woken by the connection's
thread as it applies a change, ``NbView.wait_changed``; coalesced). On that event, on this app's one event thread, ``view.update()``
applies the journalled row changes to the one model the logic holds: the first time
it builds the model and the logic (``factory(load_model)``, ``load_model()`` giving
that model); after that it calls ``logic.nb_changed(delta)`` with what changed, or
``nb_changed(None)`` when the view rebuilt the model whole (a reconnect, an admin
change). Every logic call happens on the event thread, so the logic needs no locks.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from os_ken.base import app_manager
from os_ken.controller import event, ofp_event
from os_ken.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.ofproto import ofproto_v1_3 as ofp

# Imported here, in the main thread, on purpose: nbview pulls in ovs.poller (through
# ovsdbapp), which imports eventlet, and a thread that imports eventlet can never be
# joined (is_alive() stays true after it returns; measured with eventlet 0.41).
from .. import prom
from ..nb import commands as nb_cmd
from . import model, nbview, ofmsg, switch_cert
from .flows import FlowError, Message, TableMap
from .metrics import ControllerCollector
from .pipeline import tlv_map_problem

LOG = logging.getLogger("vnet64.controller")

DEFAULT_LOGIC = "vnet64.controller.logic:Logic"
PENDING_PACKET_INS = 4096   # held per switch while its resync runs; the oldest are dropped beyond
RESYNC_TIMEOUT = 30.0       # s without a complete flow dump before it is asked for again
TICK = 1.0                  # s between EventTicks (the resync watchdog)


def default_nb_remote() -> str:
    """``$VNET64_NB``, else the embedded NB's socket in ``$VNET64_RUN_DIR`` (/var/lib/vnet64)."""
    if os.environ.get("VNET64_NB"):
        return os.environ["VNET64_NB"]
    return f"unix:{os.environ.get('VNET64_RUN_DIR', '/var/lib/vnet64')}/nb.sock"


class Logic(Protocol):
    """What the role logic offers the app. Every method runs on the app's event thread.

    The logic is built as ``factory(load_model)`` once the NB replica is in;
    ``load_model()`` returns the :class:`vnet64.controller.model.Model` of the NB - always
    the same object, which the app changes in place before each ``nb_changed``.
    Message lists may be empty; order matters within one list (a meter before
    the flows that use it, flows before the packet-out that needs them).
    """

    def switch_connected(self, dpid: int, ports: dict[str, int]) -> tuple[TableMap, list[Message]] | None:
        """A switch finished its handshake. ``ports``: port name -> OpenFlow port number.
        None: not a switch of ours (it is left alone, and asked again after NB changes)."""

    def resynced(self, dpid: int, flows: list[tuple[int, int, int, dict]]) -> list[Message]:
        """Every flow the switch held right after ``switch_connected``'s messages:
        (cookie, table id, priority, match dict in the flow language's canonical form)."""

    def switch_disconnected(self, dpid: int) -> None:
        """The connection is gone (the switch may keep its flows: fail-mode secure)."""

    def ports_changed(self, dpid: int, ports: dict[str, int]) -> list[Message]:
        """A port was added, removed or changed; ``ports`` is the whole new map."""

    def packet_in(self, dpid: int, table_id: int, in_port: int, data: bytes) -> list[Message]:
        """A packet the pipeline sent to the controller (the whole frame)."""

    def flow_removed(self, dpid: int, cookie: int, reason: int) -> list[Message]:
        """A flow with ``send_flow_rem`` left the switch; ``reason`` is OFPRR_* (idle
        timeout 0, hard timeout 1, delete 2, ...)."""

    def nb_changed(self, delta: model.Delta | None = None) -> dict[int, list[Message]]:
        """The NB changed: datapath id -> messages for that switch. ``delta``: the model
        objects that changed (passed positionally); None: the model was rebuilt whole."""


LogicFactory = Callable[[Callable[[], Any]], Logic]


@dataclass
class Settings:
    """What the launcher hands the apps (as the ``vnet64`` keyword of every app)."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 6653
    nb_remote: str = field(default_factory=default_nb_remote)
    logic_factory: LogicFactory | None = None
    nb_poll_interval: float = 0.05
    nb_connect_timeout: float = 3.0
    on_fatal: Callable[[str], None] | None = None   # the launcher stops with exit status 1
    node: str | None = None   # --vnet64-node: serve only this node's switch and replicate only
                              # its NB rows (None: every node, the whole NB)
    switch: str | tuple[str, int] | None = None   # --vnet64-switch: connect to this switch
                              # (unix socket path, or (IP, port)) instead of listening
    ofp_tls: Any = None       # launcher.OfpTls: listen with TLS (--ctl-privkey ...), each switch
                              # served as the node its certificate names; None: TCP
    nb_tls: Any = None        # vnet64.ovsdb.TlsFiles for an ssl: NB (--vnet64-nb-private-key ...)
    metrics: tuple[str, int] | None = None   # --vnet64-metrics: Prometheus on (IP, port)
    metrics_tls: Any = None                  # ... over HTTPS with these files (TlsFiles)


class EventNbChanged(event.EventBase):
    """Posted by the NB watcher into the app's own queue."""


class EventTick(event.EventBase):
    """Posted every TICK seconds by the poster thread: the app's clock for timeouts."""


class EventPortsChanged(event.EventBase):
    """Posted into the app's own queue by the first port-status message of a burst: the
    switch's ports are reconciled once, when the queue reaches it, with every change
    that arrived before (a host that adds 200 VM ports costs one reconcile, not 200)."""

    def __init__(self, dp: Any):
        super().__init__()
        self.dp = dp


class SwitchLog(logging.LoggerAdapter):
    """Log lines prefixed with the switch's node name and datapath id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['node']} {self.extra['dpid']:016x}] {msg}", kwargs


@dataclass
class Switch:
    """The app's view of one connected switch (the logic keeps its own)."""

    dp: Any
    log: SwitchLog
    ports: dict[str, int]
    state: str = "waiting"   # waiting (no logic yet) | unknown | resyncing | ready
    tables: TableMap | None = None
    stats_xid: int | None = None
    found: list = field(default_factory=list)
    complete: bool = True     # the flows asked for (stats_xid) are the whole table
    sweep_xid: int | None = None   # the whole table, read after a partial first read
    sweep_found: list = field(default_factory=list)
    sweep_done: list | None = None  # a whole table read before the first read was handled
    pending: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=PENDING_PACKET_INS))
    dropped: int = 0
    removed: list = field(default_factory=list)   # (cookie, reason) of flow-removeds held in resync
    resync_started: float = 0.0
    resync_seconds: float | None = None   # how long the last resync took (connect to ready)
    ports_pending: bool = False   # an EventPortsChanged is on its way


def peer_address(dp: Any) -> str:
    """A switch connection's peer: ``IP:PORT``, or the unix socket's name."""
    address = dp.address if isinstance(dp.address, tuple) else (dp.address,)
    return ":".join(map(str, address[:2]))


def port_names(ports: Iterable[Any]) -> dict[str, int]:
    """os-ken ``OFPPort`` values -> name -> port number (LOCAL included, as OVS names it)."""
    out = {}
    for p in ports:
        name = p.name.decode("utf-8", "replace") if isinstance(p.name, bytes) else str(p.name)
        out[name] = p.port_no
    return out


class Vnet64App(app_manager.OSKenApp):
    OFP_VERSIONS: ClassVar[list[int]] = [ofp.OFP_VERSION]

    def __init__(self, *args: Any, vnet64: Settings | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settings = vnet64 or Settings()
        self.logic: Logic | None = None
        self.nb: nbview.NbView | None = None
        self.switches: dict[int, Switch] = {}
        self.resyncs = 0                      # resyncs finished since start (metrics)
        self.errors: collections.Counter = collections.Counter()   # switch errors, logic failures (metrics)
        self._nb_seen_at: float | None = None   # when the replica's last change was seen
        self.nb_apply_seconds: float | None = None   # ... until its messages were sent (metrics)
        self.nb_cfg: int | None = None          # the newest NB change number applied (Platform.nb_cfg)
        self.nb_lag_seconds: float | None = None   # its commit (the writer's clock) to applied
        # over TLS: connections whose datapath id is no node's yet (or no NB yet): their
        # certificate cannot be bound to a node, so they are not served (see _bind)
        self.unbound: dict[Any, str] = {}   # datapath -> why it waits (logged once each)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._nb_pending = False
        self._nb_retry = False   # an NB update failed: try again at the next tick
        self._posts: queue.SimpleQueue = queue.SimpleQueue()   # see _post_to_self
        self._poster: threading.Thread | None = None
        self._metrics: Any = None   # the Prometheus server (--vnet64-metrics)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Any:
        if self.settings.metrics is not None:   # first: an address in use stops us before anything
            host, port = self.settings.metrics
            tls = self.settings.metrics_tls
            self._metrics = prom.serve(ControllerCollector(self), host, port, tls)
            LOG.info("Prometheus metrics on %s%s", prom.url(host, port, tls is not None),
                     " (client certificates required)" if tls is not None else "")
        super().start()
        self._poster = threading.Thread(target=self._post_loop, name="vnet64-poster", daemon=True)
        self._poster.start()
        self._watcher = threading.Thread(target=self._watch_nb, name="vnet64-nb-watcher",
                                         daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics = None
        self._stop.set()
        self._posts.put(None)
        if self._watcher is not None:
            self._watcher.join(timeout=self.settings.nb_connect_timeout + 5)
        super().stop()   # drains the queue: DEAD events of the switches closed before us
        if self._poster is not None:   # unblocked by that drain if it waited for room
            self._poster.join(timeout=5)

    def _post_to_self(self, ev: event.EventBase) -> None:
        """Queue ``ev`` for this app's own event loop, from one of its handlers.

        os-ken's ``send_event`` waits while the app's queue (128 events) is full, and
        only the event loop - the caller - frees room in it: a handler posting to its
        own app in a burst (host1 adding 1,000 VM ports) waited for good, and with it
        every switch connection and the NB watcher (seen in benchmarks/growth.py at
        100,000 subscriptions). The poster thread waits instead.
        """
        self._posts.put(ev)

    def _post_loop(self) -> None:
        next_tick = time.monotonic() + TICK
        while True:
            try:   # a tick every TICK seconds, however many posts come in between
                ev = self._posts.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                ev, next_tick = EventTick(), time.monotonic() + TICK
            if ev is None:
                return
            self.send_event(self.name, ev)

    @set_ev_cls(EventTick)
    def _on_tick(self, ev: EventTick) -> None:
        """A switch whose flow dump is not complete after RESYNC_TIMEOUT is asked again
        (its packet-ins stay held meanwhile: without the dump no pair can be adopted);
        an NB model update that failed is tried again."""
        if self._nb_retry:
            self._nb_retry = False
            self._post_to_self(EventNbChanged())   # never send_event to ourselves: see there
        now = time.monotonic()
        for sw in list(self.switches.values()):
            if sw.state != "resyncing" or now - sw.resync_started < RESYNC_TIMEOUT:
                continue
            sw.log.error("no complete flow dump %.0fs after asking for it (%d flows in); "
                         "asking again", now - sw.resync_started, len(sw.found))
            self._ask_for_flows(sw)

    def close(self) -> None:
        if self.nb is not None:
            self.nb.close()
            self.nb = None

    # -- the NB -------------------------------------------------------------

    def _watch_nb(self) -> None:
        remote, view, seqno, last_warning = self.settings.nb_remote, None, None, 0.0
        while not self._stop.is_set():
            if view is None:
                try:
                    view = nbview.NbView(remote, node=self.settings.node,
                                         tls=self.settings.nb_tls).connect(
                        timeout=self.settings.nb_connect_timeout)
                except Exception as exc:  # noqa: BLE001  NbUnavailable, or whatever the IDL raises
                    view = None
                    if time.monotonic() - last_warning > 30:
                        LOG.warning("NB not reachable, retrying: %s", exc)
                        last_warning = time.monotonic()
                    self._stop.wait(1.0)
                    continue
                if self._stop.is_set():
                    view.close()
                    break
                self.nb = view
            current = view.change_seqno()
            if current != seqno:
                seqno = current
                self._post_nb_changed()
            # woken as soon as the connection's thread applies a change; the interval
            # only bounds how late a stop is seen
            view.wait_changed(self.settings.nb_poll_interval)

    def _post_nb_changed(self) -> None:
        if not self._nb_pending:
            self._nb_pending = True
            self._nb_seen_at = time.monotonic()
            self.send_event(self.name, EventNbChanged())

    def _load_model(self) -> Any:
        """The model the view keeps up to date (the same object every time)."""
        return self.nb.model

    @set_ev_cls(EventNbChanged)
    def _on_nb_changed(self, ev: EventNbChanged) -> None:
        self._nb_pending = False
        try:
            delta = self.nb.update() if self.nb is not None else None
        except Exception:  # noqa: BLE001  a model the view could not build (a bug, bad NB data)
            if self.logic is None:
                LOG.exception("the NB model could not be built")
                if self.settings.on_fatal:
                    self.settings.on_fatal("the NB model could not be built")
                return
            # Half done, maybe: the logic is not told; the view rebuilds it whole at the
            # next tick (and says so again if it still cannot).
            LOG.exception("the NB model could not be updated; rebuilding it in %gs", TICK)
            with self.nb.lock:
                self.nb.idl.mark_full("the last update failed")
            self._nb_retry = True
            return
        nodes_changed = delta is None or bool(delta.nodes)
        if self.logic is None:
            if not self._build_logic():
                return
        else:
            if nodes_changed and self.settings.ofp_tls is not None:
                self._rebind()
            for dpid, msgs in (self._call(None, "nb_changed", delta, default={}) or {}).items():
                sw = self.switches.get(dpid)
                if sw is not None and sw.state in ("resyncing", "ready"):
                    self._send(sw, msgs)
        if nodes_changed:
            for dp in list(self.unbound):   # bound now (and served), refused, or still waiting
                self._connected(dp)
        for sw in list(self.switches.values()):
            if sw.state in ("waiting", "unknown"):
                self._program(sw)
        if self._nb_seen_at is not None:
            self.nb_apply_seconds = time.monotonic() - self._nb_seen_at
        if self.nb is not None:
            self.nb_cfg, lag = nb_cmd.applied_nb_cfg(self.nb_cfg, self.nb.nb_cfg, time.time())
            if lag is not None:
                self.nb_lag_seconds = lag

    def _build_logic(self) -> bool:
        factory = self.settings.logic_factory
        if factory is None:
            LOG.error("no role logic configured")
            return False
        try:
            self.logic = factory(self._load_model)
        except Exception:
            LOG.exception("the role logic could not be built")
            if self.settings.on_fatal:
                self.settings.on_fatal("the role logic could not be built")
            return False
        LOG.info("role logic %s ready", type(self.logic).__module__ + "." + type(self.logic).__name__)
        return True

    # -- switches -----------------------------------------------------------

    def nb_connected(self) -> bool:
        """Whether the NB view's session is up (for the metrics; read from their thread)."""
        view = self.nb
        session = getattr(view.idl, "_session", None) if view is not None and view.idl is not None else None
        return bool(session is not None and session.is_connected())   # python-ovs keeps it private

    def _node_name(self, dpid: int) -> str:
        """The node's name from the view's replica (every view holds every Node row)."""
        if self.nb is None:
            return "?"
        return self.nb.node_name(dpid) or "?"

    def _switch(self, dp: Any) -> Switch | None:
        sw = self.switches.get(dp.id)
        return sw if sw is not None and sw.dp is dp else None

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _on_features(self, ev: Any) -> None:
        dp = ev.msg.datapath
        for write in ofmsg.serialize(dp, [ofmsg.set_config(dp)]):
            dp.send(write)

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _on_state(self, ev: Any) -> None:
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER:
            self._connected(dp)
        elif ev.state == DEAD_DISPATCHER and dp.id is not None:
            self._disconnected(dp)

    # -- binding a TLS switch's certificate to its node ----------------------

    def _model_node(self, dpid: int) -> str | None:
        """The node with datapath id ``dpid`` in the model the logic serves (None: no such
        node, or no model yet)."""
        if self.logic is None or self.nb is None:
            return None
        node = self.nb.model.node_by_dpid(dpid)
        return node.name if node is not None else None

    def _bind(self, dp: Any) -> bool:
        """Over TLS: whether ``dp`` may be served, its certificate naming the node of its
        datapath id. Refused (logged, closed): it names another node, or none. Unknown
        (kept in ``unbound``, False): no node has that datapath id, or no NB yet."""
        tls = self.settings.ofp_tls
        if tls is None:
            return True
        cn = getattr(dp.socket, "common_name", None)
        node = self._model_node(dp.id)
        if node is None:
            why = "no NB yet" if self.logic is None else "no node of the NB has its datapath id"
            if self.unbound.get(dp) != why:
                self.unbound[dp] = why
                LOG.info("[? %016x] switch at %s (certificate %s): %s; not served until its "
                         "node is known and its certificate names it", dp.id, peer_address(dp),
                         cn, why)
            return False
        self.unbound.pop(dp, None)
        problem = switch_cert.binding_problem(cn, node, tls.switch_cert_name)
        if problem is None:
            return True
        LOG.warning("[%s %016x] refused the switch at %s: it claims node %s (datapath id "
                    "%016x), but %s; connection closed", node, dp.id, peer_address(dp), node,
                    dp.id, problem)
        sw = self._switch(dp)
        if sw is not None:      # bound before, to a node the NB has since renamed or moved
            del self.switches[dp.id]
            if sw.state in ("resyncing", "ready"):
                self._call(sw, "switch_disconnected", dp.id)
        with contextlib.suppress(OSError, AttributeError):
            dp.socket.shutdown(socket.SHUT_RDWR)   # os-ken's loops end; DEAD_DISPATCHER follows
        return False

    def _rebind(self) -> None:
        """The NB's nodes changed: every switch served over TLS must still be the node its
        datapath id now belongs to (a switch whose id is no node's any more stays: the
        logic leaves it alone, and it is checked again before it is served)."""
        for sw in list(self.switches.values()):
            if self._model_node(sw.dp.id) is not None:
                self._bind(sw.dp)

    def _connected(self, dp: Any) -> None:
        if not self._bind(dp):   # (before the switch replaces an older connection of that id)
            return
        dpid = dp.id
        log = SwitchLog(LOG, {"node": self._node_name(dpid), "dpid": dpid})
        old = self.switches.get(dpid)
        if old is not None and old.dp is not dp:
            log.info("reconnected; the older connection is dropped")
        sw = Switch(dp, log, port_names(dict(dp.ports or {}).values()))
        self.switches[dpid] = sw
        log.info("connected from %s (%d ports)", peer_address(dp), len(sw.ports))
        if self.logic is None:
            log.info("waiting for the NB before programming")
            return
        self._program(sw)

    def _program(self, sw: Switch) -> None:
        dpid = sw.dp.id
        if sw.log.extra["node"] == "?":
            sw.log.extra["node"] = self._node_name(dpid)
        result = self._call(sw, "switch_connected", dpid, dict(sw.ports), default=None)
        if result is None:
            if sw.state != "unknown":
                sw.log.warning("not a node of the NB (or its logic failed): left alone")
            sw.state = "unknown"
            return
        sw.tables, msgs = result
        sw.state = "resyncing"
        sw.log.info("%s pipeline: %d messages; reading the switch's flows",
                    sw.tables.role, len(msgs))
        self._ask_for_flows(sw, msgs, [ofmsg.tlv_table_request(sw.dp)])

    def _ask_for_flows(self, sw: Switch, msgs: Iterable[Message] = (), extra: Iterable[Any] = ()) -> None:
        """Send ``msgs``, ``extra`` and the flow-stats requests of a resync, in one write;
        the resync then waits for the first request's reply (its xid) from now.

        When the logic names a first read (``adoption_read``: a table and a cookie
        filter - the pairs' own flows, one per pair), that is asked for first and the
        whole table right after it: ``resynced(..., complete=False)`` gets the first,
        ``swept`` the whole one once the switch is ready. Otherwise one request for the
        whole table and ``resynced`` with it."""
        first = self._call(sw, "adoption_read", sw.dp.id, default=None) \
            if hasattr(self.logic, "adoption_read") else None
        requests = [ofmsg.flow_stats_request(sw.dp)]
        if first is not None:
            table_id, cookie, mask = first
            requests.insert(0, ofmsg.flow_stats_request(sw.dp, cookie, mask, table_id))
        sw.found, sw.resync_started = [], time.monotonic()
        sw.sweep_found, sw.sweep_done = [], None
        self._send(sw, msgs, extra=[*extra, *requests])
        sw.stats_xid, sw.complete = requests[0].xid, first is None
        sw.sweep_xid = requests[1].xid if first is not None else None

    def _disconnected(self, dp: Any) -> None:
        self.unbound.pop(dp, None)
        sw = self._switch(dp)
        if sw is None:
            return
        del self.switches[dp.id]
        sw.log.info("disconnected")
        if self.logic is not None and sw.state in ("resyncing", "ready"):
            self._call(sw, "switch_disconnected", dp.id)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _on_flow_stats(self, ev: Any) -> None:
        msg = ev.msg
        sw = self._switch(msg.datapath)
        if sw is not None and sw.sweep_xid is not None and msg.xid == sw.sweep_xid:
            self._on_sweep_stats(sw, msg)
            return
        if sw is None or sw.state != "resyncing" or msg.xid != sw.stats_xid:
            return
        sw.found.extend(ofmsg.flow_entry(s) for s in msg.body)
        if msg.flags & ofp.OFPMPF_REPLY_MORE:
            return
        found, sw.found, sw.stats_xid = sw.found, [], None
        entries = [(e.cookie, e.table_id, e.priority, e.match) for e in found]
        if sw.complete:
            msgs = list(self._call(sw, "resynced", sw.dp.id, entries, default=[]))
        else:
            msgs = list(self._call(sw, "resynced", sw.dp.id, entries, False, default=[]))
        sw.state = "ready"
        sw.resync_seconds = time.monotonic() - sw.resync_started
        self.resyncs += 1
        held = list(sw.pending)
        sw.pending.clear()
        removed, sw.removed = sw.removed, []
        sw.log.info("resynced in %.2fs: %d flows read%s, %d messages; %d packet-ins held%s%s",
                    sw.resync_seconds, len(found),
                    "" if sw.complete else " (the pairs' own)", len(msgs), len(held),
                    f" ({sw.dropped} dropped)" if sw.dropped else "",
                    f", {len(removed)} flow removals held" if removed else "")
        # Removals first: the dump may predate them, so resynced() may have adopted a pair
        # that is gone since; and a held first packet of that pair must find it released.
        for ck, reason in removed:
            msgs += self._call(sw, "flow_removed", sw.dp.id, ck, reason, default=[])
        for table_id, in_port, data in held:
            msgs += self._call(sw, "packet_in", sw.dp.id, table_id, in_port, data, default=[])
        self._send(sw, msgs)
        if sw.sweep_done is not None:       # the whole table came first (it should not)
            self._sweep(sw, sw.sweep_done)

    def _on_sweep_stats(self, sw: Switch, msg: Any) -> None:
        """The whole table, asked for right after the first read: ``swept`` once ready."""
        sw.sweep_found.extend(ofmsg.flow_entry(s) for s in msg.body)
        if msg.flags & ofp.OFPMPF_REPLY_MORE:
            return
        found, sw.sweep_found, sw.sweep_xid = sw.sweep_found, [], None
        if sw.state == "ready":
            self._sweep(sw, found)
        else:
            sw.sweep_done = found

    def _sweep(self, sw: Switch, found: list) -> None:
        sw.sweep_done = None
        msgs = list(self._call(sw, "swept", sw.dp.id,
                               [(e.cookie, e.table_id, e.priority, e.match) for e in found],
                               default=[]))
        sw.log.info("swept %.2fs after connecting: %d flows read, %d messages",
                    time.monotonic() - sw.resync_started, len(found), len(msgs))
        self._send(sw, msgs)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _on_packet_in(self, ev: Any) -> None:
        msg = ev.msg
        sw = self._switch(msg.datapath)
        if sw is None or sw.state in ("waiting", "unknown"):
            return
        in_port = msg.match.get("in_port", ofp.OFPP_CONTROLLER)
        if sw.state == "resyncing":
            if len(sw.pending) == sw.pending.maxlen:
                sw.dropped += 1
            sw.pending.append((msg.table_id, in_port, bytes(msg.data)))
            return
        self._send(sw, self._call(sw, "packet_in", sw.dp.id, msg.table_id, in_port,
                                  bytes(msg.data), default=[]))

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def _on_flow_removed(self, ev: Any) -> None:
        msg = ev.msg
        sw = self._switch(msg.datapath)
        if sw is None or sw.state not in ("resyncing", "ready"):
            return
        if sw.state == "resyncing":   # applied after the dump's adoption, not before it
            sw.removed.append((msg.cookie, msg.reason))
            return
        self._send(sw, self._call(sw, "flow_removed", sw.dp.id, msg.cookie, msg.reason,
                                  default=[]))

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _on_port_status(self, ev: Any) -> None:
        msg = ev.msg
        sw = self._switch(msg.datapath)
        if sw is None:
            return
        [(name, port_no)] = port_names([msg.desc]).items()
        if msg.reason == ofp.OFPPR_DELETE:
            if sw.ports.get(name) == port_no:
                del sw.ports[name]
        else:
            sw.ports[name] = port_no
        sw.log.info("port %s (%d) %s", name, port_no,
                    {ofp.OFPPR_ADD: "added", ofp.OFPPR_DELETE: "deleted"}.get(msg.reason, "modified"))
        if sw.state in ("resyncing", "ready") and not sw.ports_pending:
            sw.ports_pending = True
            self._post_to_self(EventPortsChanged(sw.dp))

    @set_ev_cls(EventPortsChanged)
    def _on_ports_changed(self, ev: EventPortsChanged) -> None:
        sw = self._switch(ev.dp)
        if sw is None:
            return   # gone, or reconnected: the new connection was programmed whole
        sw.ports_pending = False
        if sw.state in ("resyncing", "ready"):
            self._send(sw, self._call(sw, "ports_changed", sw.dp.id, dict(sw.ports), default=[]))

    @set_ev_cls(ofp_event.EventOFPExperimenter, MAIN_DISPATCHER)
    def _on_experimenter(self, ev: Any) -> None:
        """The TLV map asked for on connect: say so if it is not ours (pipeline.tlv_map_problem)."""
        msg = ev.msg
        sw = self._switch(msg.datapath)
        if sw is None or (msg.experimenter, msg.exp_type) != (ofmsg.NX_VENDOR_ID, ofmsg.NXT_TLV_TABLE_REPLY):
            return
        problem = tlv_map_problem(ofmsg.tlv_table_reply(bytes(msg.data)))
        if problem:
            sw.log.error("%s", problem)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _on_error(self, ev: Any) -> None:
        msg = ev.msg
        if (msg.type, msg.code) == (ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_METER_EXISTS):
            return   # ofmsg sends ADD then MODIFY: the ADD fails on a switch that kept the meter
        if msg.type == ofp.OFPET_EXPERIMENTER:
            if (msg.experimenter, msg.exp_type) == (ofmsg.NX_VENDOR_ID, ofmsg.NXTTMFC_ALREADY_MAPPED):
                return   # the TLV map sent on every connect: the switch kept it
            what = f"experimenter {msg.experimenter:#x} error type {msg.exp_type}"
        else:
            what = ofp.ofp_error_code_to_str(msg.type, msg.code)
        sw = self._switch(msg.datapath)
        log = sw.log if sw is not None else LOG
        failed = ""
        if len(msg.data) >= 8:
            failed = f" to {ofp.ofp_msg_type_to_str(msg.data[1])} xid {int.from_bytes(msg.data[4:8], 'big')}"
        log.warning("switch error%s: %s", failed, what)
        self.errors[f"switch: {what.split('(')[0].strip()}"] += 1

    # -- helpers ------------------------------------------------------------

    def _call(self, sw: Switch | None, method: str, *args: Any, default: Any = None) -> Any:
        """Call the logic; a failure is logged (with the switch) and gives ``default``."""
        try:
            result = getattr(self.logic, method)(*args)
        except Exception:  # noqa: BLE001  a logic bug must not take the switch's events down
            (sw.log if sw is not None else LOG).exception("role logic %s failed", method)
            self.errors[f"logic: {method}"] += 1
            return default
        return default if result is None and default is not None else result

    def _send(self, sw: Switch, msgs: Iterable[Message], extra: Iterable[Any] = ()) -> None:
        """Translate and send in as few writes as possible (one, up to ~64 KB)."""
        dp = sw.dp
        out = []
        for m in msgs:
            try:
                out.extend(ofmsg.to_messages(dp, sw.tables, [m]))
            except (FlowError, ValueError, KeyError, TypeError) as exc:
                sw.log.error("cannot send %r: %s", m, exc)
        out.extend(extra)
        if not out:
            return
        for write in ofmsg.serialize(dp, out):
            if not dp.send(write):
                sw.log.debug("connection closing; %d bytes not sent", len(write))
                return
