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
of the members' client remotes and the IDL finds the leader.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class NbServer:
    """A local ovsdb-server holding the NB database in ``run_dir``."""

    run_dir: Path
    extra_remotes: list[str] = field(default_factory=list)  # e.g. ["ptcp:6641:10.0.0.1"]
    # Raft: this member's cluster address (e.g. "tcp:10.0.0.1:6643"); with no
    # ``cluster_remotes`` it creates the cluster, otherwise it joins the members named.
    cluster_local: str | None = None
    cluster_remotes: list[str] = field(default_factory=list)
    # Run the server inside this network namespace (its TCP remotes listen there;
    # the unix socket and files are shared through the filesystem).
    netns: str | None = None

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    @property
    def db_path(self) -> Path:
        return self.run_dir / "nb.db"

    @property
    def sock_path(self) -> Path:
        return self.run_dir / "nb.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "nb.pid"

    @property
    def ctl_path(self) -> Path:
        return self.run_dir / "nb.ctl"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "nb.log"

    @property
    def remote(self) -> str:
        return f"unix:{self.sock_path}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _prepare_db(self) -> None:
        tool = _tool("ovsdb-tool")
        if not self.db_path.exists():
            if self.cluster_local and self.cluster_remotes:
                _run(tool, "join-cluster", str(self.db_path), SCHEMA_NAME, self.cluster_local,
                     *self.cluster_remotes)
            elif self.cluster_local:
                _run(tool, "create-cluster", str(self.db_path), str(SCHEMA_PATH), self.cluster_local)
            else:
                _run(tool, "create", str(self.db_path), str(SCHEMA_PATH))
            return
        if self.cluster_local:
            return  # a clustered database is upgraded online (ovsdb-client convert), by its leader
        needs = subprocess.run([tool, "needs-conversion", str(self.db_path), str(SCHEMA_PATH)],
                               capture_output=True, text=True)
        if needs.returncode:
            raise NbServerError(f"{self.db_path} is not a usable NB database: {needs.stderr.strip()}")
        if needs.stdout.strip() == "yes":
            _run(tool, "convert", str(self.db_path), str(SCHEMA_PATH))

    def start(self, timeout: float = 10.0) -> int:
        """Start the server if it is not running (idempotent); return its pid."""
        pid = self.pid()
        if pid:
            return pid
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (self.sock_path, self.ctl_path, self.pidfile):
            stale.unlink(missing_ok=True)
        self._prepare_db()
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        args = [*prefix, _tool("ovsdb-server"), str(self.db_path),
                f"--remote=punix:{self.sock_path}",
                # client remotes kept in the NB itself (``vnet64 connection set``), each
                # with its inactivity probe; the same in every member of a Raft cluster
                f"--remote=db:{SCHEMA_NAME},Platform,connections",
                *[f"--remote={r}" for r in self.extra_remotes],
                f"--pidfile={self.pidfile}", f"--unixctl={self.ctl_path}",
                f"--log-file={self.log_path}", "--detach", "--no-chdir"]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode:
            raise NbServerError(f"ovsdb-server did not start: {proc.stderr.strip()} "
                                f"(log: {self.log_path})")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid and self.sock_path.exists():
                return pid
            time.sleep(0.02)
        raise NbServerError(f"ovsdb-server did not come up within {timeout}s (log: {self.log_path})")

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
