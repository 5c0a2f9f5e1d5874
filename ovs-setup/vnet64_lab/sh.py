"""Subprocess helpers: ``ip`` in a namespace, commands inside one, polling.

Nothing here ever touches the root namespace's network: every ``ip`` call is
``ip -n <namespace>``, and commands run through ``ip netns exec``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping

# The generic helpers are the node agent's (one implementation): the lab runs the same
# commands a host does, plus its own namespaces.
from vnet64.node.sh import (CommandError, netns_list, netns_pids, proc_alive, read_pid,  # noqa: F401
                            run, tool, wait_for)
from vnet64.node import sh as _node_sh

# Lab failures; the same class as the node agent's command errors, so an error raised by
# a shared helper is a LabError too.
LabError = CommandError

TOOLS = ("ip", "ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-appctl", "ovs-ofctl",
         "tayga", "ethtool", "sysctl", "nft", "nsenter")

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


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _node_sh.ip_ns(ns, *args, check=check)


def ip_batch(ns: str, lines: Iterable[str], family: str | None = None) -> None:
    """Several ``ip`` commands in one process, all inside ``ns`` (``family``: "-4"/"-6")."""
    _node_sh.ip_batch(ns, lines, family)


def in_ns(ns: str, args: list[str], env: Mapping[str, str] | None = None,
          check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return _node_sh.in_ns(ns, args, env=env, check=check, timeout=timeout)


def sysctl(ns: str, settings: Mapping[str, str | int]) -> None:
    """Write sysctls of ``ns`` (the net.* tree is per namespace)."""
    _node_sh.sysctl(settings, ns)
