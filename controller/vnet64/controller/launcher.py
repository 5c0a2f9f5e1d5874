"""``vnet64-controller``: start the os-ken apps, serve switches, stop cleanly.

os-ken 4.x ships no manager command, and its ``AppManager.run_apps`` cannot
stop with the native-threads hub (it calls ``.kill()`` on threads that have
none, and os-ken's listener blocks in ``accept()`` for ever). So this launcher
does what ``run_apps`` does — build the apps, create contexts, instantiate and
start them — with two replacements, and then waits for SIGTERM/SIGINT:

- :class:`OFPServerHandler`, os-ken's ``OFPHandler`` (hello, features, echo,
  port descriptions) with a listener that can be stopped: closing it ends the
  accept loop, and each switch connection is shut down so its threads end;
- :class:`ClosingDatapath`, os-ken's ``Datapath`` whose receive loop wakes the
  send loop when it ends. Without that the send thread waits in its queue for
  ever, ``serve()`` never returns, two threads leak per disconnect and the app
  never hears ``DEAD_DISPATCHER``.

On a signal: stop listening, close every switch connection (each delivers its
``DEAD_DISPATCHER``), stop the apps (their queues drain first), close the NB,
and exit 0 with no thread left. Switches keep their flows (fail-mode secure).

One process serves every node's br-int (a central controller), or, with
``--vnet64-node NAME``, only that node's: a controller per node, run on the
node next to its agent (connected to br-int's management socket, or listening on
127.0.0.1), as ovn-controller runs on
every chassis. The node goes to the role logic (``Logic(node=...)``, which
leaves any other switch alone) and to the apps' :class:`Settings`.

A per-node controller may also connect to its switch instead of waiting for it
(``--vnet64-switch unix:/var/run/openvswitch/br-int.mgmt``, as ovn-controller does):
the bridge's management socket, no controller target on the bridge, no port to open,
and a restarted controller is serving its switch the moment it is ready (a switch
reconnects to a listener only on its own backoff, up to a second). Open vSwitch gives
such a connection packet-ins once the controller sets a miss_send_len (the app does,
at every connection). :class:`OpenFlowConnector` retries every 0.1 s, backing off to
1 s, while the socket is missing or the switch restarts.

Options come from the command line or ``--config-file`` (oslo.config;
``[DEFAULT]`` and ``[vnet64]`` sections, option names with ``_``).
Listening is plain TCP, or TLS with os-ken's own option names (``--ctl-privkey``,
``--ctl-cert``, ``--ca-certs``: every switch's certificate is verified against the CA;
:class:`OpenFlowServer` does the handshake with Python's ``ssl``, and
:class:`TlsConnection` serves it to os-ken's ``Datapath``; the app then serves a switch
only as the node its certificate names, ``--vnet64-switch-cert-name``, :mod:`.switch_cert`);
connecting is to ``unix:``/``tcp:`` switch targets (br-int's management socket needs no
TLS). os-ken's other listener options are not wired to this server, so they are not offered.
The NB is reached over ``unix:``, ``tcp:`` or ``ssl:`` (``--vnet64-nb-private-key`` ...).
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import gc
import importlib
import ipaddress
import logging
import logging.handlers
import os
import select
import signal
import socket
import ssl
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The controller runs on native threads (os-ken's native hub) and never uses eventlet;
# python-ovs imports it when it can, only to detect monkey-patching, and with it dnspython
# and cryptography: 0.15-0.2 s of every start, which a restarted controller's switch
# waits for. Unimportable here, python-ovs takes its plain path. (An eventlet already
# imported, e.g. by a test runner, is left as it is.)
sys.modules.setdefault("eventlet", None)

# os_ken.base.app_manager must be imported before os_ken.controller.controller
# (the other order is a circular import); sorted, it is.
from os_ken.base import app_manager
from os_ken.controller import controller as of_controller
from os_ken.controller import ofp_handler
from os_ken.lib import hub
from oslo_config import cfg

from vnet64 import journal, pem, prom
from vnet64.nb.api import TLS_ENV as NB_TLS_ENV
from vnet64.nb.api import NbTlsError, tls_files, use_tls
from vnet64.topology import NAME_RE

from . import switch_cert
from .app import DEFAULT_LOGIC, Settings, default_nb_remote

LOG = logging.getLogger("vnet64.controller.launcher")

PROG = "vnet64-controller"
DESCRIPTION = ("The vnet64 controller: programs the vnet64 OVS bridges (service hosts, "
               "customer hosts, the SDN appliance) over OpenFlow 1.3 from the NB database: "
               "every node's, or with --vnet64-node only that node's (a controller per node). "
               "Stops cleanly on SIGTERM or SIGINT; switches keep their flows.")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class LauncherError(Exception):
    """Bad configuration: reported on stderr, exit status 2."""


# ---------------------------------------------------------------------------
# configuration


def make_conf() -> cfg.ConfigOpts:
    """Our own option set: ``--help`` lists exactly what this command honours."""
    conf = cfg.ConfigOpts()
    nb_remote = default_nb_remote()
    # oslo hands argparse no defaults, so "%(default)s" would print None: spell them out.
    conf.register_cli_opts([
        cfg.StrOpt("ofp-listen-host", default="0.0.0.0",
                   help="address to accept OpenFlow connections from switches on "
                        "(IPv4 or IPv6; default 0.0.0.0; unused with --vnet64-switch)"),
        cfg.PortOpt("ofp-tcp-listen-port", default=6653,
                    help="TCP port to accept OpenFlow connections on (default 6653; unused "
                         "with --vnet64-switch)"),
        cfg.StrOpt("ctl-privkey", metavar="PEM",
                   help="OpenFlow over TLS (os-ken's option): the controller's private key. "
                        "With --ctl-cert and --ca-certs the listener speaks TLS only "
                        "(switches: ssl:IP:PORT targets) and requires every switch's "
                        "certificate signed by --ca-certs; a handshake that fails is logged "
                        "and that connection closed. Default: plain TCP"),
        cfg.StrOpt("ctl-cert", metavar="PEM",
                   help="OpenFlow over TLS: the controller's certificate"),
        cfg.StrOpt("ca-certs", metavar="PEM",
                   help="OpenFlow over TLS: the CA certificate switches' certificates must be "
                        "signed by (ovs-pki: switchca/cacert.pem)"),
        cfg.StrOpt("log-level", default="INFO", choices=LEVELS, ignore_case=True,
                   help="DEBUG, INFO, WARNING or ERROR (default INFO)."),
        cfg.StrOpt("log-file", help="append the log to this file (default: standard error)"),
    ])
    conf.register_cli_opts([
        cfg.StrOpt("nb-remote", default=nb_remote,
                   help="the NB database: unix:PATH, tcp:IP:PORT, ssl:IP:PORT (with "
                        "--vnet64-nb-private-key/-certificate/-ca-cert), or a comma-separated list "
                        "of Raft members (default: $VNET64_NB, else the embedded NB "
                        f"unix:$VNET64_RUN_DIR/nb.sock; now {nb_remote}). Retried until "
                        "reachable"),
        cfg.StrOpt("nb-private-key", default=os.environ.get(NB_TLS_ENV["private_key"]),
                   metavar="PEM",
                   help="TLS, for an ssl:IP:PORT NB: this controller's private key (default "
                        f"${NB_TLS_ENV['private_key']})"),
        cfg.StrOpt("nb-certificate", default=os.environ.get(NB_TLS_ENV["certificate"]),
                   metavar="PEM",
                   help=f"TLS: its certificate (default ${NB_TLS_ENV['certificate']})"),
        cfg.StrOpt("nb-ca-cert", default=os.environ.get(NB_TLS_ENV["ca_cert"]), metavar="PEM",
                   help="TLS: the CA certificate the NB's certificate must be signed by "
                        f"(default ${NB_TLS_ENV['ca_cert']}); all three for ssl: remotes"),
        cfg.StrOpt("snat-ports", default="1024-65535", metavar="LOW-HIGH",
                   help="the Platform_IP source ports new connections to a VM may use "
                        "(default 1024-65535). When none is free towards a VM's address and "
                        "port, new connections are refused (TCP reset, else ICMP "
                        "'administratively prohibited') and existing ones keep theirs"),
        cfg.IntOpt("path-mtu", min=1280, max=65535, metavar="BYTES",
                   help="the largest IPv6 packet the platform carries from a service endpoint "
                        "to a VM: the endpoints' and the translator's link MTU (underlay MTU "
                        "- 50 - Geneve option bytes). A larger packet from an endpoint gets an "
                        "ICMPv6 Packet Too Big with this MTU from the gateway. Default: no check "
                        "(such packets are dropped on the way, silently)"),
        cfg.StrOpt("metrics", metavar="IP:PORT",
                   help="serve Prometheus metrics on http://IP:PORT/metrics: switches, pairs, "
                        "and every event the logic counts (packet-ins, pairs set up and "
                        "refused, connections refused at port exhaustion, ...). [::]:PORT for "
                        "every address; default: none"),
        cfg.StrOpt("metrics-private-key", default=os.environ.get(prom.METRICS_TLS_ENV["private_key"]),
                   metavar="PEM",
                   help="with --vnet64-metrics-certificate and -ca-cert: serve the metrics over "
                        "https://, wanting a client certificate signed by that CA (Prometheus's "
                        f"tls_config); this controller's private key (${prom.METRICS_TLS_ENV['private_key']})"),
        cfg.StrOpt("metrics-certificate", default=os.environ.get(prom.METRICS_TLS_ENV["certificate"]),
                   metavar="PEM", help=f"its certificate (${prom.METRICS_TLS_ENV['certificate']})"),
        cfg.StrOpt("metrics-ca-cert", default=os.environ.get(prom.METRICS_TLS_ENV["ca_cert"]),
                   metavar="PEM", help="the CA scrapers' certificates must be signed by "
                                       f"(${prom.METRICS_TLS_ENV['ca_cert']})"),
        cfg.StrOpt("node", metavar="NAME",
                   help="serve only this node's switch: a controller per node, run on the node "
                        "next to its agent, as ovn-controller runs on every chassis; it "
                        "connects to br-int's management socket (--vnet64-switch "
                        "unix:/var/run/openvswitch/br-int.mgmt) or listens locally "
                        "(--ofp-listen-host 127.0.0.1, with `vnet64 node set NAME --controller "
                        "tcp:127.0.0.1:6653`). A switch of another node that connects is left "
                        "alone. Default: every node of the NB (one central controller)"),
        cfg.StrOpt("switch", metavar="TARGET",
                   help="connect to this switch instead of listening: unix:PATH (a bridge's "
                        "management socket, e.g. unix:/var/run/openvswitch/br-int.mgmt, as "
                        "ovn-controller does; the bridge then needs no controller target) or "
                        "tcp:IP:PORT (a bridge listening with ptcp:); retried every 0.1-1 s "
                        "while it does not answer. With --vnet64-node, what a controller per "
                        "node runs. Default: listen (--ofp-listen-host/--ofp-tcp-listen-port)"),
        cfg.StrOpt("switch-cert-name", metavar="TEMPLATE",
                   help="with TLS (--ctl-privkey ...): the name a switch's certificate must "
                        "have to be served as a node: TEMPLATE with {node} replaced by the "
                        "name of the node whose datapath id the switch claims, compared with "
                        "the certificate's common name without the ' id:...' that ovs-pki req "
                        "appends (default switch-{node}: ovs-pki req switch-host1, signed by "
                        "the switch CA; {node} alone is OVN's convention). A switch whose "
                        "certificate names another node, or none, is refused, logged and "
                        "disconnected before it gets a flow; the node's own switch keeps "
                        "its connection"),
        cfg.StrOpt("logic", default=DEFAULT_LOGIC, metavar="MODULE:CLASS",
                   help="the role logic, built as CLASS(load_model); for tests "
                        f"(default {DEFAULT_LOGIC})"),
    ], group="vnet64")
    return conf


def parse(argv: list[str] | None) -> cfg.ConfigOpts:
    """Parse the command line (and config files); ``--help`` exits 0, bad usage exits 2."""
    conf = make_conf()
    try:
        conf(args=argv, project="vnet64", prog=PROG, description=DESCRIPTION,
             default_config_files=[], default_config_dirs=[])
    except cfg.Error as exc:
        raise LauncherError(str(exc)) from None
    except SystemExit as exc:   # argparse printed why; oslo exits 1 on a bad value, argparse 2
        raise SystemExit(2 if exc.code else 0) from None
    return conf


DEFAULT_SNAT_PORTS = (1024, 65535)


def parse_port_range(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` (1-65535, LOW <= HIGH) -> (LOW, HIGH)."""
    low, sep, high = text.partition("-")
    try:
        lo, hi = int(low), int(high if sep else low)
    except ValueError:
        raise LauncherError(f"--vnet64-snat-ports wants LOW-HIGH, got {text!r}") from None
    if not 1 <= lo <= hi <= 65535:
        raise LauncherError(f"--vnet64-snat-ports {text}: want 1 <= LOW <= HIGH <= 65535")
    return lo, hi


def check_node(name: str | None) -> str | None:
    """``--vnet64-node``: a node name as the NB spells them, or None (every node)."""
    if name is None:
        return None
    if not NAME_RE.fullmatch(name):
        raise LauncherError(f"--vnet64-node wants a node name (a letter, then up to 31 letters, "
                            f"digits, '_', '.', '-'), got {name!r}")
    return name


def parse_switch_target(text: str | None) -> str | tuple[str, int] | None:
    """``--vnet64-switch``: ``unix:PATH`` -> PATH; ``tcp:IP:PORT`` -> (IP, PORT)."""
    if text is None:
        return None
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest.startswith("/"):
        return rest
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            number = int(port)
        except ValueError:
            number = 0
        if 1 <= number <= 65535:
            return (host, number)
    raise LauncherError(f"--vnet64-switch wants unix:/ABSOLUTE/PATH or tcp:IP:PORT, got {text!r}")


def resolve_logic(spec: str) -> Callable[..., Any]:
    """``module:attribute`` -> the callable that builds the role logic."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise LauncherError(f"--vnet64-logic wants MODULE:CLASS, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise LauncherError(f"cannot load the role logic {spec}: {exc}") from None
    except AttributeError:
        raise LauncherError(f"cannot load the role logic {spec}: {module} has no {attr}") from None
    if not callable(factory):
        raise LauncherError(f"the role logic {spec} is not callable")
    return factory


def setup_logging(level: str, log_file: str | None) -> None:
    handler: logging.Handler
    if log_file:
        try:
            handler = logging.handlers.WatchedFileHandler(log_file)
        except OSError as exc:
            raise LauncherError(f"cannot open the log file {log_file}: {exc}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    # under systemd, no time stamp of our own and each line's priority (vnet64.journal)
    handler.setFormatter(journal.formatter(LOG_FORMAT, None if log_file else sys.stderr))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)


# ---------------------------------------------------------------------------
# os-ken, made stoppable


class ClosingDatapath(of_controller.Datapath):
    """A ``Datapath`` whose end of receiving also ends sending (see the module doc)."""

    def _recv_loop(self) -> None:
        try:
            super()._recv_loop()   # os-ken closes the socket when it returns
        finally:
            # Wake the send loop from its queue; it exits on the closed socket (or
            # on close_socket), serve() returns and close() delivers DEAD_DISPATCHER.
            self.send(b"", close_socket=True)


class _Connections:
    """Switch connections served one thread each, until :meth:`stop`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: dict[threading.Thread, Any] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None

    def _serve(self, sock: socket.socket, addr: Any) -> None:
        me = threading.current_thread()
        try:
            dp = ClosingDatapath(sock, addr)
        except Exception:
            LOG.exception("could not set up the connection from %s", addr)
            sock.close()
            with self._lock:
                self._conns.pop(me, None)
            return
        with self._lock:
            self._conns[me] = dp
            stopping = self._stopping
        if stopping:   # stop() ran between accept and here: it did not see this socket
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        try:
            with contextlib.closing(dp):
                dp.serve()
        except Exception:
            LOG.exception("the OpenFlow connection from %s failed", addr)
        finally:
            with self._lock:
                self._conns.pop(me, None)

    def _wake(self) -> None:
        """Make the main thread (accept or connect loop) see ``_stopping``."""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting/connecting, shut every connection down, wait for their threads."""
        with self._lock:
            self._stopping = True
            conns = list(self._conns.items())
        self._wake()
        for _, dp in conns:
            if dp is not None:
                with contextlib.suppress(OSError):
                    dp.socket.shutdown(socket.SHUT_RDWR)   # recv() returns b"": the loop ends
        deadline = time.monotonic() + timeout
        for t in [self._thread, *(t for t, _ in conns)]:
            if t is not None and t.ident is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        left = [t.name for t in [self._thread, *(t for t, _ in conns)] if t and t.is_alive()]
        if left:
            LOG.error("OpenFlow threads still running after %gs: %s", timeout, ", ".join(left))


@dataclass(frozen=True)
class OfpTls:
    """The controller's TLS files for OpenFlow (os-ken's ``--ctl-privkey``, ``--ctl-cert``,
    ``--ca-certs``): every switch must present a certificate signed by ``ca_certs``, whose
    common name names the node it claims to be (``switch_cert_name``, :mod:`.switch_cert`)."""

    private_key: str
    certificate: str
    ca_certs: str
    switch_cert_name: str = switch_cert.DEFAULT_TEMPLATE

    def context(self) -> ssl.SSLContext:
        """A server context that requires and verifies the switch's certificate;
        LauncherError naming the file that cannot be used."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2    # as Open vSwitch
        ctx.verify_mode = ssl.CERT_REQUIRED
        return pem.load(ctx, self.private_key, self.certificate, self.ca_certs,
                        ("--ctl-privkey", "--ctl-cert", "--ca-certs"), LauncherError)


def ofp_tls(private_key: str | None, certificate: str | None, ca_certs: str | None,
            switch_cert_name: str | None = None) -> OfpTls | None:
    """The three options (and ``--vnet64-switch-cert-name``), or None (plain TCP) when none
    is given; LauncherError when only some are, or a file cannot be used."""
    given = {"--ctl-privkey": private_key, "--ctl-cert": certificate, "--ca-certs": ca_certs}
    if not any(given.values()):
        if switch_cert_name is not None:
            raise LauncherError("--vnet64-switch-cert-name is for OpenFlow over TLS "
                                "(--ctl-privkey, --ctl-cert, --ca-certs)")
        return None
    missing = [k for k, v in given.items() if not v]
    if missing:
        raise LauncherError("OpenFlow over TLS needs --ctl-privkey, --ctl-cert and --ca-certs "
                            f"(the switches' CA: their certificates are verified): "
                            f"{', '.join(missing)} missing")
    template = switch_cert.DEFAULT_TEMPLATE if switch_cert_name is None else switch_cert_name
    try:
        switch_cert.check_template(template)
    except ValueError as exc:
        raise LauncherError(f"--vnet64-switch-cert-name {exc}") from None
    tls = OfpTls(private_key, certificate, ca_certs, template)
    tls.context()   # checked now, not at the first switch
    return tls


class TlsConnection:
    """A switch's TLS connection as os-ken's ``Datapath`` uses a socket (``recv``,
    ``sendall``, ``shutdown``, ``close``, ``setsockopt``, ``settimeout``), safe for its two
    threads: OpenSSL allows one call on a connection at a time, so the TLS socket is
    non-blocking, every call on it is made holding a lock, and a thread waits for its
    socket with ``poll`` without it (a blocking read would keep the writer out).

    A TLS error ends the connection (``ConnectionResetError``): os-ken's receive loop
    retries on ``ssl.SSLError`` (eventlet's timeouts), which would spin.

    ``common_name``: the subject CN of the switch's certificate (None: none, or several),
    which the app binds to the node the switch claims to be."""

    def __init__(self, sock: ssl.SSLSocket):
        self._ssl = sock
        self._lock = threading.Lock()
        self.common_name = switch_cert.common_name(sock.getpeercert())
        sock.setblocking(False)

    def _wait(self, events: int) -> None:
        poller = select.poll()
        poller.register(self._ssl.fileno(), events)
        poller.poll()

    def _call(self, fn: Callable[[], Any]) -> Any:
        while True:
            with self._lock:
                try:
                    return fn()
                except ssl.SSLWantReadError:
                    events = select.POLLIN
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
                except ssl.SSLError as exc:
                    raise ConnectionResetError(f"TLS: {exc.reason or exc}") from None
            if self._ssl.fileno() < 0:
                raise ConnectionResetError("closed")
            self._wait(events)

    def recv(self, n: int) -> bytes:
        return self._call(lambda: self._ssl.recv(n))

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            # SSL_write takes all or (want read/write) nothing; retried with the same bytes
            sent = self._call(lambda: self._ssl.send(view))
            view = view[sent:]

    def shutdown(self, how: int) -> None:
        # the TCP socket itself (SSLSocket.shutdown would drop the TLS state under a
        # reader): a waiting poll() wakes, and the next read sees the end
        socket.socket.shutdown(self._ssl, how)

    def settimeout(self, value: float | None) -> None:
        """Ignored: the connection waits in poll() (os-ken sets a read timeout only to
        wake its loop)."""

    def setsockopt(self, *args: Any) -> None:
        self._ssl.setsockopt(*args)

    def close(self) -> None:
        with self._lock:
            self._ssl.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ssl, name)


TLS_HANDSHAKE_TIMEOUT = 10.0
TLS_HINTS = {
    "CERTIFICATE_VERIFY_FAILED": "its certificate is not signed by the CA of --ca-certs",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "it presented no certificate (no SSL settings in its "
                                         "Open vSwitch?)",
    "TLSV1_ALERT_UNKNOWN_CA": "it does not trust the controller's certificate (its CA "
                              "certificate is another CA's)",
    "WRONG_VERSION_NUMBER": "it does not speak TLS (a tcp: controller target?)",
    "HTTP_REQUEST": "it does not speak TLS",
}


def handshake_failure(exc: Exception) -> str:
    """A failed server-side handshake, in words: OpenSSL's reason and what it means."""
    if isinstance(exc, socket.timeout):
        return f"no handshake within {TLS_HANDSHAKE_TIMEOUT:g}s"
    reason = getattr(exc, "reason", None)
    if reason:
        hint = TLS_HINTS.get(reason)
        return reason.lower().replace("_", " ") + (f": {hint}" if hint else "")
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class OpenFlowServer(_Connections):
    """Accepts switch connections until :meth:`stop`; one thread per connection. With
    ``tls``, each connection's TLS handshake (in its own thread) must verify the switch's
    certificate against the CA; one that fails is logged and closed, and nothing else."""

    def __init__(self, host: str, port: int, tls: OfpTls | None = None):
        super().__init__()
        self.tls = tls
        self.context = tls.context() if tls else None
        self._handshaking: dict[threading.Thread, socket.socket] = {}
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = hub.listen((host, port), family=family)   # SO_REUSEADDR, bind, listen
        self.address = self.sock.getsockname()[:2]

    def describe(self) -> str:
        return ("listening for switches on %s port %d" % self.address
                + (" (TLS: switch certificates signed by %s, each named %s for the node it "
                   "serves)" % (self.tls.ca_certs, self.tls.switch_cert_name) if self.tls else ""))

    def _serve(self, sock: socket.socket, addr: Any) -> None:
        if self.context is not None:
            peer = "%s port %d" % tuple(addr[:2])
            me = threading.current_thread()
            sock.settimeout(TLS_HANDSHAKE_TIMEOUT)
            # (wrap_socket takes the descriptor over: ``sock`` is empty from here on)
            tls_sock = self.context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
            with self._lock:
                self._handshaking[me] = tls_sock
                stopping = self._stopping
            try:
                if stopping:
                    raise ConnectionAbortedError("the controller is stopping")
                tls_sock.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                if not self._stopping:
                    LOG.warning("TLS handshake with the switch at %s failed: %s; connection "
                                "closed", peer, handshake_failure(exc))
                tls_sock.close()
                with self._lock:
                    self._conns.pop(me, None)
                return
            finally:
                with self._lock:
                    self._handshaking.pop(me, None)
            sock = TlsConnection(tls_sock)
            LOG.info("TLS connection from the switch at %s (certificate %s)", peer,
                     sock.common_name or "without a single common name")
        super()._serve(sock, addr)

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._accept_loop, name="of-accept")
        self._thread.start()
        return self._thread

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, addr = self.sock.accept()
            except OSError as exc:
                if self._stopping:
                    return
                LOG.error("accepting a switch connection failed: %s", exc)
                time.sleep(0.1)
                continue
            with self._lock:
                if self._stopping:
                    sock.close()
                    return
                t = threading.Thread(target=self._serve, args=(sock, addr),
                                     name=f"of-{addr[0]}:{addr[1]}")
                self._conns[t] = None
            t.start()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes accept() (Linux)
        self.sock.close()
        with self._lock:
            handshaking = list(self._handshaking.values())
        for sock in handshaking:     # a TLS handshake under way ends now, not at its timeout
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)   # the TCP socket, not TLS state


class _UnixSocket(socket.socket):
    """A unix stream socket that takes os-ken's TCP options (TCP_NODELAY) as no-ops."""

    def setsockopt(self, level: int, *args: Any) -> None:
        if level != socket.IPPROTO_TCP:
            super().setsockopt(level, *args)


class OpenFlowConnector(_Connections):
    """Connects to one switch (``unix`` path or (IP, port)) and serves the connection;
    connects again when it ends, until :meth:`stop`: every ``RETRY`` seconds at first,
    backing off to ``MAX_RETRY`` while the switch does not answer."""

    RETRY, MAX_RETRY = 0.1, 1.0

    def __init__(self, target: str | tuple[str, int]):
        super().__init__()
        self.target = target
        self.label = f"unix:{target}" if isinstance(target, str) else "tcp:%s:%d" % target
        self._stop_event = threading.Event()

    def describe(self) -> str:
        return f"connecting to the switch at {self.label}"

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._connect_loop, name="of-connect")
        self._thread.start()
        return self._thread

    def _connect(self) -> socket.socket:
        if isinstance(self.target, str):
            sock = _UnixSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            family = socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(5.0)
            sock.connect(self.target)
            sock.settimeout(None)
        except OSError:
            sock.close()
            raise
        return sock

    def _connect_loop(self) -> None:
        wait, failing = self.RETRY, None
        while not self._stop_event.is_set():
            try:
                sock = self._connect()
            except OSError as exc:
                why = exc.strerror or str(exc)
                if why != failing:   # once per reason, not every retry
                    LOG.warning("cannot connect to the switch at %s (%s); retrying", self.label, why)
                    failing = why
                self._stop_event.wait(wait)
                wait = min(wait * 2, self.MAX_RETRY)
                continue
            LOG.info("connected to the switch at %s", self.label)
            wait, failing = self.RETRY, None
            addr = self.label if isinstance(self.target, str) else self.target
            with self._lock:
                if self._stopping:
                    sock.close()
                    return
                self._conns[threading.current_thread()] = None
            self._serve(sock, addr)     # until the connection ends
            if not self._stop_event.is_set():
                LOG.warning("the switch at %s closed the connection; connecting again", self.label)
                self._stop_event.wait(self.RETRY)

    def _wake(self) -> None:
        self._stop_event.set()

    def stop(self, timeout: float = 5.0) -> None:
        # the loop's own thread serves the connection: shut it, then join the loop
        with self._lock:
            self._stopping = True
            dps = [dp for dp in self._conns.values() if dp is not None]
        self._wake()
        for dp in dps:
            with contextlib.suppress(OSError):
                dp.socket.shutdown(socket.SHUT_RDWR)
        if self._thread is not None and self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                LOG.error("OpenFlow thread still running after %gs: %s", timeout, self._thread.name)


class OFPServerHandler(ofp_handler.OFPHandler):
    """os-ken's OpenFlow handshake handler, serving from :class:`OpenFlowServer`."""

    def __init__(self, *args: Any, vnet64: Settings | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settings = vnet64 or Settings()
        self.server: OpenFlowServer | OpenFlowConnector | None = None

    def start(self) -> threading.Thread:
        if self.settings.switch is not None:
            self.server = OpenFlowConnector(self.settings.switch)
        else:
            self.server = OpenFlowServer(self.settings.listen_host, self.settings.listen_port,
                                         tls=self.settings.ofp_tls)
        app_manager.OSKenApp.start(self)   # the event loop; not OFPHandler's unstoppable server
        LOG.info("%s", self.server.describe())
        return self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()   # every switch's DEAD_DISPATCHER reaches the app before it stops
        super().stop()


# ---------------------------------------------------------------------------
# running


def run(settings: Settings, stop: threading.Event) -> int:
    """``AppManager.run_apps``, stoppable: serve until ``stop`` is set; the exit status."""
    from .app import Vnet64App

    status = {"code": 0}

    def fatal(reason: str) -> None:
        status["code"] = 1
        stop.set()

    settings.on_fatal = settings.on_fatal or fatal
    manager = app_manager.AppManager()
    manager.applications_cls = {"ofp_event": OFPServerHandler, "vnet64": Vnet64App}
    try:
        contexts = manager.create_contexts()
        manager.instantiate_apps(vnet64=settings, **contexts)
    except OSError as exc:
        LOG.error("cannot listen on %s port %d: %s", settings.listen_host, settings.listen_port,
                  exc.strerror or exc)
        status["code"] = 1
    else:
        while not stop.wait(1.0):
            pass
        LOG.info("stopping")
    finally:
        manager.close()   # listener, switch connections, apps (queues drained), NB
    left = [t for t in threading.enumerate() if t is not threading.current_thread() and t.is_alive()]
    if left:
        LOG.error("threads still running at exit: %s", ", ".join(t.name for t in left))
        return status["code"] or 1
    LOG.info("stopped")
    return status["code"]


GC_THRESHOLD = (50_000, 20, 100)   # CPython's default: (700, 10, 10)


def tune_gc() -> None:
    """Collect less often, and never scan what start-up made.

    The controller allocates in bursts of small, long-lived objects (a model value and
    flows per subscription; the IDL's rows): with CPython's default thresholds the
    collector walks the growing heap over and over - the appliance's 100,000 routes took
    4-7 s to compute instead of 2-3.5 s (measured without a lab, same machine, minutes
    apart). ``gc.freeze()`` moves the objects of the imports out of every later scan.
    Reference cycles are still collected, just in larger batches."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")  # imported by ovs
    try:
        conf = parse(sys.argv[1:] if argv is None else argv)
        factory = resolve_logic(conf.vnet64.logic)
        snat_ports = parse_port_range(conf.vnet64.snat_ports)
        if snat_ports != DEFAULT_SNAT_PORTS:
            if conf.vnet64.logic != DEFAULT_LOGIC:
                raise LauncherError("--vnet64-snat-ports applies to the default logic only")
            factory = functools.partial(factory, snat_ports=snat_ports)
        if conf.vnet64.path_mtu is not None:
            if conf.vnet64.logic != DEFAULT_LOGIC:
                raise LauncherError("--vnet64-path-mtu applies to the default logic only")
            factory = functools.partial(factory, path_mtu=conf.vnet64.path_mtu)
        node = check_node(conf.vnet64.node)
        switch = parse_switch_target(conf.vnet64.switch)
        try:
            metrics = prom.listen_address(conf.vnet64.metrics) if conf.vnet64.metrics else None
        except ValueError as exc:
            raise LauncherError(f"--vnet64-metrics {exc}") from None
        ofp = ofp_tls(conf.ctl_privkey, conf.ctl_cert, conf.ca_certs, conf.vnet64.switch_cert_name)
        if ofp is not None and switch is not None:
            raise LauncherError("--ctl-privkey/--ctl-cert/--ca-certs are for listening; "
                                "--vnet64-switch connects (to br-int's management socket: no "
                                "TLS needed there)")
        try:
            nb_tls = tls_files(conf.vnet64.nb_private_key, conf.vnet64.nb_certificate,
                               conf.vnet64.nb_ca_cert, option="--vnet64-nb-{}")
            use_tls(conf.vnet64.nb_remote, nb_tls)     # an ssl: NB with no files: refused now
        except NbTlsError as exc:
            raise LauncherError(str(exc)) from None
        try:
            metrics_tls = tls_files(conf.vnet64.metrics_private_key, conf.vnet64.metrics_certificate,
                                    conf.vnet64.metrics_ca_cert, option="--vnet64-metrics-{}")
        except NbTlsError as exc:
            raise LauncherError(str(exc)) from None
        if metrics_tls is not None and metrics is None:
            raise LauncherError("--vnet64-metrics-private-key/-certificate/-ca-cert need "
                                "--vnet64-metrics IP:PORT")
        if node is not None:
            if conf.vnet64.logic != DEFAULT_LOGIC:
                raise LauncherError("--vnet64-node applies to the default logic only")
            factory = functools.partial(factory, node=node)
        setup_logging(conf.log_level, conf.log_file)
    except LauncherError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        LOG.info("%s received", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    faulthandler.register(signal.SIGUSR1, all_threads=True)   # kill -USR1: every thread's stack
    settings = Settings(listen_host=conf.ofp_listen_host, listen_port=conf.ofp_tcp_listen_port,
                        nb_remote=conf.vnet64.nb_remote, logic_factory=factory, node=node,
                        switch=switch, ofp_tls=ofp, nb_tls=nb_tls, metrics=metrics,
                        metrics_tls=metrics_tls)
    tune_gc()
    LOG.info("%s starting: NB %s, logic %s, serving %s", PROG, settings.nb_remote,
             conf.vnet64.logic, f"node {node} only" if node else "every node")
    code = run(settings, stop)
    logging.shutdown()
    if code and any(t.is_alive() and not t.daemon for t in threading.enumerate()
                    if t is not threading.current_thread()):
        import os
        os._exit(code)   # a thread we could not stop would keep the process alive
    return code
