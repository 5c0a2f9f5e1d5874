"""What every vnet64 client of an OVSDB server shares, on top of ovsdbapp."""

from __future__ import annotations

import os
import queue
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import ovs.db.idl
import ovs.stream

from . import pem


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


# ---------------------------------------------------------------------------
# TLS (ssl: remotes)


class TlsError(ValueError):
    """The TLS files given cannot be used (missing, unreadable, not PEM, key and
    certificate not a pair), or an ssl: remote was given without them."""


@dataclass(frozen=True)
class TlsFiles:
    """A client's private key, its certificate and the CA certificate the server's must be
    signed by (PEM files, e.g. made with ``ovs-pki``), for ``ssl:IP:PORT`` remotes."""

    private_key: str
    certificate: str
    ca_cert: str

    @classmethod
    def of(cls, private_key: str | os.PathLike | None, certificate: str | os.PathLike | None,
           ca_cert: str | os.PathLike | None, option: str = "--{}") -> "TlsFiles | None":
        """The three files, or None when none is given; ``TlsError`` when only some are.
        ``option`` formats the option names in the message (``"--nb-{}"``)."""
        given = {"private-key": private_key, "certificate": certificate, "ca-cert": ca_cert}
        if not any(given.values()):
            return None
        missing = [option.format(k) for k, v in given.items() if not v]
        if missing:
            raise TlsError(f"TLS needs a private key, a certificate and a CA certificate: "
                           f"{', '.join(missing)} missing")
        return cls(str(private_key), str(certificate), str(ca_cert))

    def check(self) -> None:
        """Each file exists, is readable and holds what it should (``TlsError`` saying
        which does not): the key and certificate a pair, the CA certificate a certificate."""
        pem.load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), self.private_key, self.certificate,
                 self.ca_cert, ("TLS private key", "TLS certificate", "TLS CA certificate"),
                 TlsError)


def uses_ssl(remote: str) -> bool:
    """Whether any member of ``remote`` (comma-separated) is an ``ssl:`` remote."""
    return any(m.strip().startswith("ssl:") for m in remote.split(","))


def set_client_tls(tls: TlsFiles | None, remote: str = "") -> None:
    """Give python-ovs the TLS files for ``ssl:`` remotes (checked first: ``TlsError``).

    python-ovs keeps them as class attributes of ``ovs.stream.Stream``: they are the
    whole process's, for every ssl: connection it opens after this - one set of files
    per process (the last one set wins). With ``tls`` None nothing is set, and an
    ``ssl:`` member in ``remote`` with no files set before is a ``TlsError``."""
    if tls is None:
        if remote and uses_ssl(remote) and not client_tls():
            raise TlsError(f"{remote}: an ssl: remote needs a private key, a certificate and "
                           f"a CA certificate")
        return
    tls.check()
    ovs.stream.Stream.ssl_set_private_key_file(tls.private_key)
    ovs.stream.Stream.ssl_set_certificate_file(tls.certificate)
    ovs.stream.Stream.ssl_set_ca_cert_file(tls.ca_cert)


def client_tls() -> TlsFiles | None:
    """The TLS files python-ovs uses in this process, if set."""
    s = ovs.stream.Stream
    files = (s._SSL_private_key_file, s._SSL_certificate_file, s._SSL_ca_cert_file)
    return TlsFiles(*files) if all(files) else None


def tls_failure(remote: str, timeout: float = 2.0) -> str | None:
    """Why a TLS connection to the ``ssl:`` members of ``remote`` fails, if it does: a
    handshake with this process's files and a short wait for the server's verdict, so
    that a refused certificate is named ("tlsv1 alert unknown ca": the server does not
    trust ours; "certificate verify failed": we do not trust the server's) instead of
    being a timeout. None when no ssl: member refused (or none could be reached)."""
    tls = client_tls()
    if tls is None:
        return None
    reasons = []
    members = [m.strip() for m in remote.split(",") if m.strip().startswith("ssl:")]
    for member in members:
        label = f"{member}: " if len(members) > 1 else ""
        host, _, port = member[4:].rpartition(":")
        host = host.strip("[]")
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False          # as python-ovs: the CA is what is checked
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_verify_locations(tls.ca_cert)
            ctx.load_cert_chain(tls.certificate, tls.private_key)
            with socket.create_connection((host, int(port)), timeout=timeout) as raw:
                with ctx.wrap_socket(raw) as sock:
                    # TLS 1.3: the server checks our certificate after our handshake ends
                    # and its verdict (an alert) is the first thing it sends; a server that
                    # accepted us sends nothing until asked (nothing is sent here: data
                    # unread by a server that closes would reset the connection, alert
                    # and all)
                    sock.settimeout(1.0)
                    if not sock.recv(1):
                        reasons.append(f"{label}the server closed the TLS connection (does it "
                                       f"trust this client's certificate? its log says)")
        except ssl.SSLEOFError:
            reasons.append(f"{label}the server closed the connection during the TLS handshake "
                           f"(does it trust this client's certificate? its log says)")
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            hint = {"TLSV1_ALERT_UNKNOWN_CA": "the server does not trust this client's "
                                              "certificate (signed by another CA?)",
                    "CERTIFICATE_VERIFY_FAILED": "the server's certificate is not signed by "
                                                 "the CA certificate given"}.get(
                str(exc.reason), None)
            reasons.append(f"{label}TLS handshake failed ({reason.lower().replace('_', ' ')}"
                           + (f": {hint}" if hint else "") + ")")
        except (OSError, ValueError):
            continue      # not a TLS matter (unreachable, refused): the caller's reason stands
    return "; ".join(reasons) or None
