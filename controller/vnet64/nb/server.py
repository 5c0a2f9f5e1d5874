"""The embedded NB: one local ``ovsdb-server`` with the vnet64 schema.

Layout of a run directory (``--run-dir``, default ``$VNET64_RUN_DIR`` or
``/var/lib/vnet64``)::

    nb.db    the database file (survives restarts)
    nb.sock  the unix socket clients connect to (``unix:<run-dir>/nb.sock``)
    nb.pid   ovsdb-server's pidfile
    nb.ctl   its unixctl socket (``ovs-appctl -t <run-dir>/nb.ctl ...``)
    nb.log   its log

The server is started detached and keeps running after the command that
started it, so later commands reuse it. A database written by an older schema
version is converted in place before the server starts.

The same class runs one member of a Raft cluster (``cluster_local`` and, to
join, ``cluster_remotes``); clients then connect with the comma-separated list
of the members' client remotes and the IDL finds the leader. ``nb/cluster.py``
creates, joins, reads and leaves a cluster (``vnet64 nb create-cluster`` ...).

The database may live elsewhere (``data_dir``), and the pidfile and log too;
``exec_foreground`` runs the server in the foreground instead (``vnet64 nb run``,
what the systemd unit starts), its log going to the journal.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

SCHEMA_PATH = Path(__file__).with_name("vnet64_nb.ovsschema")
SCHEMA_NAME = "VNet64_Northbound"
# vnet64-lab's default run directory: its NB is <dir>/nb (nb.sock) while its state says
# "up". The vnet64 CLI uses that NB when it is given none and no embedded run dir.
LAB_RUN_DIR = "/run/vnet64-lab"


def running_lab_nb(run_dir: str | Path | None = None) -> str | None:
    """The NB remote of a lab that is up under ``run_dir`` (default $VNET64_LAB_RUN_DIR or
    LAB_RUN_DIR), else None."""
    base = Path(run_dir or os.environ.get("VNET64_LAB_RUN_DIR") or LAB_RUN_DIR)
    try:
        state = json.loads((base / "state.json").read_text())
    except (OSError, ValueError):
        return None
    sock = base / "nb" / "nb.sock"
    return f"unix:{sock}" if state.get("phase") == "up" and sock.exists() else None
DEFAULT_RUN_DIR = "/var/lib/vnet64"


class NbServerError(RuntimeError):
    pass


def default_run_dir() -> Path:
    return Path(os.environ.get("VNET64_RUN_DIR", DEFAULT_RUN_DIR))


def _tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if not path:
        raise NbServerError(f"{name} not found: install the openvswitch-switch package "
                            f"(apt-get install openvswitch-switch)")
    return path


def _run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        raise NbServerError(f"{' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def pid_alive(pid: int, name: str = "ovsdb-server") -> bool:
    """True when ``pid`` is a live (non-zombie) process whose command is ``name``."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return comm == name[:15] and state != "Z"


def stderr_is_journal() -> bool:
    """True when standard error is systemd's journal (``$JOURNAL_STREAM`` names it)."""
    try:
        dev, ino = (int(x) for x in os.environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


_CLUSTER_ADDRESS = re.compile(r"^(tcp|ssl):(\[[^\]]+\]|[^:\[\]]+):(\d+)$")
_LISTEN_REMOTE = re.compile(r"^(ptcp|pssl):(\d+)(?::.*)?$")


def parse_cluster_address(text: str, what: str = "cluster address") -> tuple[str, str, int]:
    """``tcp:IP:PORT`` or ``ssl:IP:PORT`` (IPv6 in brackets) -> (protocol, IP, port);
    a Raft member's address is an IP, not a host name."""
    m = _CLUSTER_ADDRESS.match(text)
    try:
        ip = str(ipaddress.ip_address(m.group(2).strip("[]"))) if m else None
    except ValueError:
        ip = None
    if not m or ip is None or not 0 < int(m.group(3)) < 65536 or \
            (":" in ip) != m.group(2).startswith("["):
        raise NbServerError(f"{what} {text!r} is not tcp:IP:PORT or ssl:IP:PORT "
                            f"(an IP address, IPv6 in brackets, e.g. tcp:10.0.0.1:6643)")
    return m.group(1), ip, int(m.group(3))


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on, in its own network namespace."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return set()
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:   # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class NbServer:
    """A local ovsdb-server holding the NB database (``<data_dir>/nb.db``); its socket,
    unixctl socket, pidfile and log in ``run_dir`` unless given elsewhere."""

    run_dir: Path
    extra_remotes: list[str] = field(default_factory=list)  # e.g. ["ptcp:6641:10.0.0.1"]
    # Raft: this member's cluster address (e.g. "tcp:10.0.0.1:6643"); with no
    # ``cluster_remotes`` it creates the cluster, otherwise it joins the members named.
    # They make the database when it does not exist yet; an existing member's database
    # must be at ``cluster_local`` when given.
    cluster_local: str | None = None
    cluster_remotes: list[str] = field(default_factory=list)
    # Run the server inside this network namespace (its TCP remotes listen there;
    # the unix socket and files are shared through the filesystem).
    netns: str | None = None
    data_dir: Path | None = None      # where nb.db lives (default: run_dir)
    pidfile: Path | None = None       # default <run_dir>/nb.pid
    log_path: Path | None = None      # default <run_dir>/nb.log
    # TLS for ssl:/pssl: remotes and ssl: cluster addresses (PEM files, all three)
    private_key: Path | None = None
    certificate: Path | None = None
    ca_cert: Path | None = None

    def __post_init__(self) -> None:
        # absolute: ovsdb-server resolves relative socket paths against its own run dir
        self.run_dir = Path(self.run_dir).absolute()
        self.data_dir = Path(self.data_dir).absolute() if self.data_dir else self.run_dir
        self.pidfile = Path(self.pidfile).absolute() if self.pidfile else self.run_dir / "nb.pid"
        self.log_path = Path(self.log_path).absolute() if self.log_path else self.run_dir / "nb.log"
        for name in ("private_key", "certificate", "ca_cert"):
            if getattr(self, name):
                setattr(self, name, Path(getattr(self, name)).absolute())

    @property
    def db_path(self) -> Path:
        return self.data_dir / "nb.db"

    @property
    def sock_path(self) -> Path:
        return self.run_dir / "nb.sock"

    @property
    def ctl_path(self) -> Path:
        return self.run_dir / "nb.ctl"

    @property
    def remote(self) -> str:
        return f"unix:{self.sock_path}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    # -- the database file ---------------------------------------------------

    def is_clustered(self) -> bool:
        """True if the database file exists and is a Raft member's."""
        return self.db_path.exists() and subprocess.run(
            [_tool("ovsdb-tool"), "db-is-clustered", str(self.db_path)],
            capture_output=True).returncode == 0

    def db_local_address(self) -> str | None:
        """The cluster address recorded in a Raft member's database file, else None."""
        if not self.is_clustered():
            return None
        return _run(_tool("ovsdb-tool"), "db-local-address", str(self.db_path)).strip()

    def _prepare_db(self) -> None:
        tool = _tool("ovsdb-tool")
        if not self.db_path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self.cluster_local and self.cluster_remotes:
                _run(tool, "join-cluster", str(self.db_path), SCHEMA_NAME, self.cluster_local,
                     *self.cluster_remotes)
            elif self.cluster_local:
                _run(tool, "create-cluster", str(self.db_path), str(SCHEMA_PATH), self.cluster_local)
            else:
                _run(tool, "create", str(self.db_path), str(SCHEMA_PATH))
            return
        local = self.db_local_address()
        if local or self.cluster_local:
            if self.cluster_local and local != self.cluster_local:
                raise NbServerError(
                    f"{self.db_path} is " + (f"the Raft member at {local}" if local else
                                             "a standalone NB database")
                    + f", not the member at {self.cluster_local} asked for: nothing started")
            return  # a clustered database is upgraded online (ovsdb-client convert), by its leader
        needs = subprocess.run([tool, "needs-conversion", str(self.db_path), str(SCHEMA_PATH)],
                               capture_output=True, text=True)
        if needs.returncode:
            raise NbServerError(f"{self.db_path} is not a usable NB database: {needs.stderr.strip()}")
        if needs.stdout.strip() == "yes":
            _run(tool, "convert", str(self.db_path), str(SCHEMA_PATH))

    # -- the server process ---------------------------------------------------

    def _check_tls(self) -> list[str]:
        files = {"--private-key": self.private_key, "--certificate": self.certificate,
                 "--ca-cert": self.ca_cert}
        given = {k: v for k, v in files.items() if v}
        wants_tls = any(r.startswith(("ssl:", "pssl:")) for r in
                        [*self.extra_remotes, self.cluster_local or "", *self.cluster_remotes,
                         self.db_local_address() or ""])
        if given and len(given) < 3 or wants_tls and not given:
            raise NbServerError("TLS needs all three of --private-key, --certificate and --ca-cert "
                                "(ssl: and pssl: addresses need them)")
        for option, path in given.items():
            if not path.is_file():
                raise NbServerError(f"{option} {path}: no such file")
        return [f"{k}={v}" for k, v in given.items()]

    def _server_args(self, detach: bool) -> list[str]:
        tls = self._check_tls()
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        args = [*prefix, _tool("ovsdb-server"), str(self.db_path),
                f"--remote=punix:{self.sock_path}",
                # client remotes kept in the NB itself (``vnet64 connection set``), each
                # with its inactivity probe; the same in every member of a Raft cluster
                f"--remote=db:{SCHEMA_NAME},Platform,connections",
                *[f"--remote={r}" for r in self.extra_remotes], *tls,
                f"--pidfile={self.pidfile}", f"--unixctl={self.ctl_path}"]
        if detach:
            return [*args, f"--log-file={self.log_path}", "--detach", "--no-chdir"]
        return args

    def _clear_stale(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        for stale in (self.sock_path, self.ctl_path, self.pidfile):
            stale.unlink(missing_ok=True)

    def _listens(self, local: str | None) -> dict[tuple[str, int], str]:
        """(IP, port) the server must listen on: its Raft address and its p* remotes."""
        ports = {}
        for remote in self.extra_remotes:
            m = _LISTEN_REMOTE.match(remote)
            if m:
                ip = remote.split(":", 2)[2].strip("[]") if remote.count(":") >= 2 else "0.0.0.0"
                ports[(ip, int(m.group(2)))] = remote
        if local:
            _, ip, port = parse_cluster_address(local)
            ports[(ip, port)] = f"the cluster address {local}"
        return ports

    def _check_free(self, local: str | None) -> None:
        """Refuse before anything is made or started when a port the server needs is taken
        (a member that cannot listen would still join, and the cluster would keep a member
        that never answers)."""
        if self.netns:
            return      # another namespace: checked after the start
        for (ip, port), what in self._listens(local).items():
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((ip, port))
                except OSError as exc:
                    raise NbServerError(f"cannot listen on {what}: {exc.strerror} "
                                        f"(port {port} on {ip}): nothing started") from None

    def start(self, timeout: float = 10.0) -> int:
        """Start the server if it is not running (idempotent); return its pid.

        Waits until it serves its unix socket and listens on its Raft address and
        p* remotes; a port it cannot bind (in use) stops it again with an error."""
        pid = self.pid()
        if pid:
            return pid
        local = self.db_local_address() or self.cluster_local
        self._check_free(local)
        self._check_tls()
        self._clear_stale()
        self._prepare_db()
        expected = {port: what for (_, port), what in self._listens(local).items()}
        proc = subprocess.run(self._server_args(detach=True), capture_output=True, text=True)
        if proc.returncode:
            raise NbServerError(f"ovsdb-server did not start: {proc.stderr.strip()} "
                                f"(log: {self.log_path})")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid and self.sock_path.exists() and set(expected) <= listening_ports(pid):
                return pid
            time.sleep(0.02)
        pid = self.pid()
        missing = [what for port, what in expected.items() if port not in listening_ports(pid)] \
            if pid else []
        self.stop()
        if missing:
            raise NbServerError(f"ovsdb-server could not listen on {', '.join(missing)} (port in "
                                f"use?); stopped it again (log: {self.log_path})")
        raise NbServerError(f"ovsdb-server did not come up within {timeout:g}s (log: {self.log_path})")

    def exec_foreground(self, log_file: bool = False) -> NoReturn:
        """Run the server in this process, in the foreground (``vnet64 nb run``, the
        systemd unit): the database is made or converted as ``start`` does, then this
        process becomes ovsdb-server, logging to stderr - to syslog when stderr is the
        journal - and to ``log_path`` too with ``log_file``. It does not return."""
        pid = self.pid()
        if pid:
            raise NbServerError(f"an NB is already running from {self.run_dir} (pid {pid}): "
                                f"stop it first (vnet64 nb stop)")
        self._check_free(self.db_local_address() or self.cluster_local)
        self._check_tls()
        self._clear_stale()
        self._prepare_db()
        # Under systemd, through syslog: journald then keeps each record's level
        # (journalctl -p warning), which lines on stderr would lose.
        log_options = ["-vconsole:off", "-vsyslog:info"] if stderr_is_journal() else \
            ["-vconsole:info", "-vsyslog:off"]
        args = [*self._server_args(detach=False), *log_options]
        if log_file:
            args.append(f"--log-file={self.log_path}")
        os.execvp(args[0], args)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the server started from this run dir; True if one was running."""
        pid = self.pid()
        if not pid:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.02)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        for stale in (self.sock_path, self.ctl_path, self.pidfile):
            stale.unlink(missing_ok=True)
        return True

    def memory_kib(self) -> int | None:
        """Resident memory of the server (VmRSS), for benchmarks and status."""
        pid = self.pid()
        if not pid:
            return None
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return None
