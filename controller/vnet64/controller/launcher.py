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
Only TCP listening (or connecting to ``unix:``/``tcp:`` switch targets) is offered:
os-ken's TLS and active-connection options are not wired to this server, so they
are not offered either.
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
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
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

from vnet64 import journal
from vnet64.topology import NAME_RE

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
        cfg.StrOpt("log-level", default="INFO", choices=LEVELS, ignore_case=True,
                   help="DEBUG, INFO, WARNING or ERROR (default INFO)."),
        cfg.StrOpt("log-file", help="append the log to this file (default: standard error)"),
    ])
    conf.register_cli_opts([
        cfg.StrOpt("nb-remote", default=nb_remote,
                   help="the NB database: unix:PATH, tcp:IP:PORT, or a comma-separated list "
                        "of Raft members (default: $VNET64_NB, else the embedded NB "
                        f"unix:$VNET64_RUN_DIR/nb.sock; now {nb_remote}). Retried until "
                        "reachable"),
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


class OpenFlowServer(_Connections):
    """Accepts switch connections until :meth:`stop`; one thread per connection."""

    def __init__(self, host: str, port: int):
        super().__init__()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = hub.listen((host, port), family=family)   # SO_REUSEADDR, bind, listen
        self.address = self.sock.getsockname()[:2]

    def describe(self) -> str:
        return "listening for switches on %s port %d" % self.address

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
            self.server = OpenFlowServer(self.settings.listen_host, self.settings.listen_port)
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
                        switch=switch)
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
