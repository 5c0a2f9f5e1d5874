"""Subprocess helpers: ``ip`` in a namespace, commands inside one, polling.

Nothing here ever touches the root namespace's network: every ``ip`` call is
``ip -n <namespace>``, and commands run through ``ip netns exec``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path


class LabError(RuntimeError):
    pass


TOOLS = ("ip", "ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-appctl", "ovs-ofctl",
         "tayga", "ethtool", "sysctl", "nft")


def tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}")
         if os.access(p, os.X_OK)), None)
    if not path:
        raise LabError(f"{name} not found (Debian: apt-get install openvswitch-switch tayga "
                       f"iproute2 ethtool procps)")
    return path


# vnet64's build of ovs-vswitchd (scripts/build-ovs.sh: the system's OVS with the
# patches in ovs-setup/patches/); VNET64_OVS_VSWITCHD names another binary.
PATCHED_VSWITCHD = "/usr/local/libexec/vnet64/ovs-vswitchd"


def vswitchd() -> tuple[str, bool]:
    """The ovs-vswitchd the lab runs, and whether it is vnet64's patched build.

    Without the build the system's runs (``make setup`` builds it): everything works
    but sustained connection load to one VM stalls (docs/lab.md, "Sustained load")."""
    path = os.environ.get("VNET64_OVS_VSWITCHD") or PATCHED_VSWITCHD
    if os.access(path, os.X_OK):
        return path, path == PATCHED_VSWITCHD
    if os.environ.get("VNET64_OVS_VSWITCHD"):
        raise LabError(f"VNET64_OVS_VSWITCHD={path}: not an executable file")
    return tool("ovs-vswitchd"), False


def vswitchd_version() -> str:
    """What benchmarks record: the version line of the ovs-vswitchd the lab runs, and
    whether it is vnet64's patched build."""
    path, patched = vswitchd()
    line = run([path, "--version"]).stdout.splitlines()[0]
    return f"{line} + vnet64 patches ({path})" if patched else line


def check_tools() -> None:
    for name in TOOLS:
        tool(name)


def run(args: list[str], env: Mapping[str, str] | None = None, check: bool = True,
        input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env} if env else None
    proc = subprocess.run(args, check=False, capture_output=True, text=True, env=full_env, input=input,
                          timeout=timeout)
    if check and proc.returncode:
        raise LabError(f"{' '.join(args)} failed ({proc.returncode}): "
                       f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([tool("ip"), "-n", ns, *args], check=check)


def ip_batch(ns: str, lines: Iterable[str], family: str | None = None) -> None:
    """Several ``ip`` commands in one process, all inside ``ns`` (``family``: "-4"/"-6")."""
    text = "\n".join(lines) + "\n"
    if text.strip():
        run([tool("ip"), *([family] if family else []), "-n", ns, "-batch", "-"], input=text)


def in_ns(ns: str, args: list[str], env: Mapping[str, str] | None = None,
          check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return run([tool("ip"), "netns", "exec", ns, *args], env=env, check=check, timeout=timeout)


def sysctl(ns: str, settings: Mapping[str, str | int]) -> None:
    """Write sysctls of ``ns`` (the net.* tree is per namespace)."""
    in_ns(ns, [tool("sysctl"), "-q", "-w", *(f"{k}={v}" for k, v in settings.items())])


def netns_list() -> list[str]:
    out = run([tool("ip"), "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    proc = run([tool("ip"), "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.01) -> object:
    """Poll ``predicate`` until it returns something true; raise LabError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g}s waiting for {what}")
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


def read_pid(pidfile: str | Path) -> int | None:
    try:
        return int(Path(pidfile).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
