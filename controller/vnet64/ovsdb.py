"""What every vnet64 client of an OVSDB server shares, on top of ovsdbapp."""

from __future__ import annotations

import queue
from typing import Any

import ovs.db.idl


class OwnConnection:
    """Mixin for ovsdbapp backends: the connection belongs to the instance.

    ovsdbapp's ``Backend`` keeps the connection on the *class*, so a second API
    object (another node's database, or a second NB) would silently talk to the
    first one's server. Put this mixin first in the bases.
    """

    def __init__(self, conn: Any, *args: Any, **kwargs: Any):
        self._conn = conn
        super().__init__(conn, *args, **kwargs)

    @property
    def ovsdb_connection(self) -> Any:
        return self._conn

    @ovsdb_connection.setter
    def ovsdb_connection(self, value: Any) -> None:
        self._conn = value

    def close(self) -> None:
        """Stop the connection's thread and close the IDL."""
        try:
            self._conn.stop(timeout=5)
        except TypeError:  # older ovsdbapp: stop() without timeout
            self._conn.stop()


NB_RECONNECT_MS = 1000    # python-ovs's floor; its default backs off up to 8 s


def quick_reconnect(idl: ovs.db.idl.Idl) -> None:
    """Retry a lost server every second instead of backing off up to 8 s. A Raft NB
    elects a new leader in 1-3 s; with the default back-off a client wrote again only
    3-15 s after the leader died (tests/nb/test_cluster_cli.py), with this in ~3 s."""
    idl._session.reconnect.set_backoff(NB_RECONNECT_MS, NB_RECONNECT_MS)


class CondIdl(ovs.db.idl.Idl):
    """An IDL for conditional monitoring (``monitor_cond``) run by ovsdbapp's ``Connection``.

    ``Idl.wait`` wakes the thread at once while a condition change is pending; when it
    cannot be sent yet (no connection, or another request's reply outstanding: a whole
    NB outage, or the initial dump) the thread would spin at 100% CPU. This waits for
    the session instead; ``run()`` sends the change as soon as it can.
    """

    def wait(self, poller: Any) -> None:
        if self.cond_changed and (self._request_id is not None or not self._session.is_connected()):
            self._session.wait(poller)
            self._session.recv_wait(poller)
            return
        super().wait(poller)

    def conditions_acked(self) -> bool:
        """Every condition asked for has been acknowledged by the server (its rows are
        in the replica). Call it holding the connection's lock."""
        return all(t.condition_state.new is None and t.condition_state.requested is None
                   for t in self.tables.values())


def set_conditions(conn: Any, idl: ovs.db.idl.Idl, conds: dict[str, list],
                   old: dict[str, list] | None = None) -> bool:
    """Ask for ``conds`` (table -> clauses, ORed; ``[True]``/``[False]``: every row / none)
    on the tables whose condition differs from ``old``, and wake ``conn``'s thread so
    that its next IDL run sends them. True if any changed. Hold ``conn.lock``."""
    old = old or {}
    changed = False
    for table, cond in conds.items():
        if old.get(table) != cond:
            idl.cond_change(table, cond)
            changed = True
    if changed:
        wake(conn)
    return changed


def wake(conn: Any) -> None:
    """Wake ovsdbapp's connection thread (blocked on the socket and its queue's pipe)."""
    try:
        conn.txns.put_nowait(_Wakeup())
    except queue.Full:
        pass   # a wakeup is queued already


class _Wakeup:
    """A no-op transaction: queued on ovsdbapp's ``Connection``, it wakes the connection's
    thread, which runs the IDL - sending a pending condition change - and then takes it
    off the queue, consuming the pipe's byte. (``TransactionQueue.alert_notify()`` alone
    would leave that byte unread: the thread would spin at 100% CPU.)"""

    def __init__(self) -> None:
        self.results: queue.Queue = queue.Queue(1)   # where the thread puts do_commit()'s result

    def do_commit(self) -> None:
        return None
