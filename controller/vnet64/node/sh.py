"""Subprocess helpers of the node agent (and of the lab, which reuses them): tools by
name, commands here or inside a named network namespace, pidfiles, polling.

The agent runs in its host's own network namespace; ``ip_ns``/``in_ns`` reach only
namespaces it made itself (the translator's) or that the caller names.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path


class CommandError(RuntimeError):
    """A command failed, or something waited for never came; the message says which."""


def tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}")
         if os.access(p, os.X_OK)), None)
    if not path:
        raise CommandError(f"{name} not found (Debian: apt-get install openvswitch-switch tayga "
                           f"iproute2 ethtool procps nftables)")
    return path


def run(args: list[str], env: Mapping[str, str] | None = None, check: bool = True,
        input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env} if env else None
    proc = subprocess.run(args, check=False, capture_output=True, text=True, env=full_env,
                          input=input, timeout=timeout)
    if check and proc.returncode:
        raise CommandError(f"{' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def ip_ns(ns: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``ip [-n NS] ARGS``: in ``ns``, or in this process's namespace when None."""
    return run([tool("ip"), *(["-n", ns] if ns else []), *args], check=check)


def ip_batch(ns: str | None, lines: Iterable[str], family: str | None = None) -> None:
    """Several ``ip`` commands in one process, inside ``ns`` (None: here; ``family``:
    "-4"/"-6")."""
    text = "\n".join(lines) + "\n"
    if text.strip():
        run([tool("ip"), *([family] if family else []), *(["-n", ns] if ns else []),
             "-batch", "-"], input=text)


def in_ns(ns: str | None, args: list[str], env: Mapping[str, str] | None = None,
          check: bool = True, timeout: float = 60,
          input: str | None = None) -> subprocess.CompletedProcess:
    """``args`` inside ``ns`` (``ip netns exec``), or here when None."""
    prefix = [tool("ip"), "netns", "exec", ns] if ns else []
    return run([*prefix, *args], env=env, check=check, timeout=timeout, input=input)


def sysctl(settings: Mapping[str, str | int], ns: str | None = None) -> None:
    """Write sysctls (the net.* tree is per namespace): in ``ns``, or here when None."""
    if settings:
        in_ns(ns, [tool("sysctl"), "-q", "-w", *(f"{k}={v}" for k, v in settings.items())])


def link_exists(name: str, ns: str | None = None) -> bool:
    return ip_ns(ns, "link", "show", "dev", name, check=False).returncode == 0


def netns_list() -> list[str]:
    out = run([tool("ip"), "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    proc = run([tool("ip"), "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.01) -> object:
    """Poll ``predicate`` until it returns something true; raise CommandError naming
    ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CommandError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def proc_alive(pid: int, comm: str | None = None) -> bool:
    """True for a live, non-zombie process (whose command is ``comm`` when given)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and (comm is None or name == comm[:15])


def comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def read_pid(pidfile: str | Path) -> int | None:
    try:
        return int(Path(pidfile).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def terminate(pid: int, comm: str, timeout: float = 5.0) -> bool:
    """SIGTERM a process we started (checked by name), SIGKILL if it lingers."""
    if not proc_alive(pid, comm):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc_alive(pid):
        time.sleep(0.01)
    if proc_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True
