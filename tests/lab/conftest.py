"""Fixtures for lab tests: a real lab per shipped topology, brought up once per module.

The tests use their own namespace prefix and run directory, so a lab a user
has up under the default ``v64-`` prefix is never touched. Every fixture that
builds something takes it down in its finalizer, so a failing test leaks
nothing.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from vnet64_lab import Lab, sh
from vnet64_lab import plan as P

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = sorted((ROOT / "topologies").glob("*.yaml"))
TEST_PREFIX = "v64t-"
TEST_RUN_DIR = "/run/vnet64-lab-test"


def need_lab() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces, OVS)")
    for tool in ("ovs-vswitchd", "ovsdb-server", "tayga", "tcpdump"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            pytest.fail(f"{tool} is not installed (apt-get install openvswitch-switch tayga tcpdump)")


def new_lab(suffix: str = "") -> Lab:
    return Lab(TEST_PREFIX if not suffix else f"v64{suffix}-", f"{TEST_RUN_DIR}{suffix}")


@pytest.fixture(scope="module", params=TOPOLOGIES, ids=lambda p: p.stem)
def lab(request):
    """(Lab, Plan) of one shipped topology, up for the whole module."""
    need_lab()
    lab = new_lab()
    lab.down()  # leftovers of an interrupted earlier run
    try:
        result = lab.up(request.param)
        assert not result["already_up"]
        yield lab, lab.plan()
    finally:
        lab.down()


class Capture:
    """tcpdump inside a namespace, started (and listening) before anything is sent."""

    def __init__(self, ns: str, iface: str, bpf: str, count: int = 1, extra: tuple = ()):
        self.proc = subprocess.Popen(
            [sh.tool("ip"), "netns", "exec", ns, "tcpdump", "-i", iface, "-nn", "-l", "-e",
             "-c", str(count), *extra, bpf],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._wait_listening(5.0)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.1)
            if ready:  # raw reads: a buffered readline could hide the line select saw
                chunk = os.read(self.proc.stderr.fileno(), 4096).decode(errors="replace")
                seen += chunk
                if "listening on" in seen:
                    return
                if not chunk and self.proc.poll() is not None:
                    break
        self.stop()
        raise AssertionError(f"tcpdump did not start: {seen.strip()}")

    def done(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()  # our own child, by its pid
        out, _ = self.proc.communicate(timeout=5)
        return out

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def until_captured(caps: list[Capture], send, timeout: float = 5.0) -> list[str]:
    """Call ``send()`` until every capture has its packets (polling, no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    interval = 0.05
    while True:
        send()
        if all(c.done(interval) for c in caps) or time.monotonic() > deadline:
            break
        interval = min(interval * 2, 0.5)
    return [c.stop() for c in caps]


def node_ofctl(plan: P.Plan, node: str, *args: str) -> str:
    from vnet64_lab.ovs import OvsNode
    n = plan.node(node)
    return OvsNode(n.name, n.ns, n.run_dir).ofctl("-O", "OpenFlow13", *args)
