"""A controller per node (issue 17): one node's controller dies, the others do not notice.

On ``topologies/four-hosts.yaml`` with the lab's per-node control (always, whatever
``--lab-control`` says: this is what the module is about), every node runs its own
``vnet64-controller --vnet64-node NODE`` next to its agent, and long-lived TCP
connections run to VMs on every host while a pump thread sends a line over each every
0.1 s and checks every answer as it arrives (the VM that answered, the Platform_IP
port it saw):

1. kill -9 host1's controller (the pid in its pidfile): the other nodes' controllers
   keep running, untouched; new pairs to VMs on host2, host3 and host4 are set up as
   before (also one from an endpoint on host1: its side needs no controller); a new
   pair to a VM on host1 is not (its first packet goes to the dead controller); the
   connections through host1 keep flowing - answers keep arriving, from the same
   Platform_IP port, and a-web1 sees the connection's segments arrive meanwhile;
2. restart it with ``Lab.restart_controller("host1")``: it resyncs host1's switch and
   adopts host1's pairs (same cookies and aliases; its log says ``resynced`` and, at its
   first new pair, ``pairs_adopted=`` as many as host1 had); the connections went on
   without a gap, on the same ports; the pair that could not be set up while it was
   dead is set up now; no other controller saw a disconnection.

The tests run in this order and share the lab. Each node's controller connects to its
br-int's management socket itself, so a restarted one serves its switch as soon as it is
ready (no OVS reconnect backoff to wait for).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from vnet64_lab import Lab, sh
from vnet64_lab.traffic import (LINE_PORT, PLATFORM_IP, TCP_PORT, UDP_PORT, Capture, LineSession,
                                answer, client, controller_log_marks, controller_log_text,
                                ns_of, ovs_node, pair_flows, running_platform, wait_for)

from tests.lab.conftest import ROOT, need_lab

pytestmark = pytest.mark.lab

VICTIM = "host1"
# (endpoint, VM): the long-lived connections; the first two go through host1
SESSIONS = [("ana1", "a-web1"), ("ana2", "a-web1"),
            ("ana1", "a-web2"), ("bak2", "a-db1"), ("bak1", "c-batch1")]
# new pairs while host1's controller is dead: VMs elsewhere (one from host1's endpoint bak3)
NEW_ELSEWHERE = [("tcp", "bak1", "c-vm1"), ("tcp", "bak2", "b-vm2"), ("udp", "ana1", "c-vm1"),
                 ("tcp", "bak3", "c-batch1")]
FRESH_ON_VICTIM = ("ana2", "b-vm1")   # never used before: needs host1's controller
PUMP_EVERY = 0.1


class Pump(threading.Thread):
    """One line over every session every PUMP_EVERY s; each answer checked as it comes
    in: which VM answered, what it saw (Platform_IP and the connection's port)."""

    def __init__(self, sessions: dict[tuple[str, str], LineSession]):
        super().__init__(name="pump", daemon=True)
        self.sessions = sessions
        self.port = {k: None for k in sessions}
        self.answers: dict[tuple[str, str], list[float]] = {k: [] for k in sessions}
        self.problems: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            for key, s in self.sessions.items():
                text = f"{key[0]}-{key[1]}-{n}"
                out = s.send(text, timeout=5)
                if "error" in out:
                    self.problems.append(f"{key}: {out['error']} at line {n}")
                    continue
                vm, seen, port, payload = answer(out)
                if (vm, seen, payload) != (key[1], PLATFORM_IP, text):
                    self.problems.append(f"{key}: got {out} for {text!r}")
                elif self.port[key] is None:
                    self.port[key] = port
                elif port != self.port[key]:
                    self.problems.append(f"{key}: Platform_IP port {port}, was {self.port[key]}")
                else:
                    self.answers[key].append(time.monotonic())
            self.stopping.wait(PUMP_EVERY)

    def count(self, key, since: float, until: float | None = None) -> int:
        until = until if until is not None else float("inf")
        return sum(since <= t <= until for t in self.answers[key])

    def largest_gap(self, key, since: float, until: float) -> float:
        times = [since, *(t for t in self.answers[key] if since <= t <= until), until]
        return max(b - a for a, b in zip(times, times[1:]))

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


class Run:
    def __init__(self, lab: Lab, plan):
        self.lab, self.plan = lab, plan
        self.vm6 = {vm.name: str(plan.topology.platform_address(vm.name).ipv6)
                    for vm in plan.topology.vms}
        self.sessions: dict[tuple[str, str], LineSession] = {}
        self.pump: Pump | None = None
        self.pids: dict[str, int] = {}          # every controller's pid before the kill
        self.pairs_before: dict | None = None   # host1's pair flows before the kill
        self.marks: dict | None = None          # the controllers' logs at the kill
        self.killed_at = self.restarted_at = 0.0
        self.vm_cap: Capture | None = None

    def close(self) -> None:
        if self.pump is not None:
            self.pump.stop()
        if self.vm_cap is not None:
            self.vm_cap.stop()
        for s in self.sessions.values():
            s.close()


@pytest.fixture(scope="module")
def run():
    need_lab()
    lab = Lab("v64p-", "/run/vnet64-lab-p", control="node")
    with running_platform(lab, ROOT / "topologies" / "four-hosts.yaml") as (lab, plan):
        assert lab.control == "node"
        r = Run(lab, plan)
        try:
            yield r
        finally:
            r.close()


def new_pair(r: Run, kind: str, source: str, vm: str, timeout: float = 3.0) -> dict:
    port = TCP_PORT if kind == "tcp" else UDP_PORT
    return client(r.plan, kind, r.vm6[vm], port, f"{kind}-{source}-{vm}", timeout=timeout,
                  source=source)


def assert_answered(r: Run, kind: str, source: str, vm: str) -> None:
    out = new_pair(r, kind, source, vm)
    name, seen, _, payload = answer(out)
    assert (name, seen, payload) == (vm, PLATFORM_IP, f"{kind}-{source}-{vm}"), out


def kill_9(pid: int) -> None:
    assert b"vnet64.controller" in Path(f"/proc/{pid}/cmdline").read_bytes()
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):   # started by this process (lab.up): reap it
        os.waitpid(pid, 0)
    assert wait_for(lambda: not sh.proc_alive(pid), 5), "the controller survived SIGKILL"


# ---------------------------------------------------------------------------


def test_kill_9_one_nodes_controller_the_others_keep_setting_pairs_up(run):
    r, lab, plan = run, run.lab, run.plan
    r.pids = {c.name: c.pid() for c in lab.controllers(plan)}
    assert sorted(r.pids) == sorted(n.name for n in plan.nodes) and all(r.pids.values()), r.pids
    for source, vm in SESSIONS:
        r.sessions[(source, vm)] = LineSession(plan, r.vm6[vm], LINE_PORT, source=source)
    r.pump = Pump(r.sessions)
    r.pump.start()
    assert wait_for(lambda: all(r.pump.count(k, 0) >= 3 for k in r.sessions), 15), \
        (r.pump.problems, {k: len(v) for k, v in r.pump.answers.items()})
    r.pairs_before = pair_flows(plan, VICTIM)
    ep6 = {e.name: str(e.ipv6) for e in plan.topology.endpoints}
    through_victim = {(ep6[ep], r.vm6[vm]) for ep, vm in SESSIONS
                      if plan.topology.vm(vm).host == VICTIM}
    assert len(through_victim) == 2 and set(r.pairs_before) == through_victim, r.pairs_before
    # the segments of host1's connections, seen where they arrive (a-web1's eth0)
    r.vm_cap = Capture(ns_of(plan, "a-web1"), "eth0", f"tcp dst port {LINE_PORT}", count=None)

    r.marks = controller_log_marks(lab)
    r.killed_at = time.monotonic()
    kill_9(lab.controller_pid(VICTIM))
    assert not lab.controller_pid(VICTIM)
    others = {name: pid for name, pid in r.pids.items() if name != VICTIM}
    assert {n: lab.controller_pid(n) for n in others} == others, "another controller went too"

    # new pairs to VMs on the other hosts: their own controllers set them up
    for kind, source, vm in NEW_ELSEWHERE:
        assert_answered(r, kind, source, vm)
    # a new pair to a VM on host1 needs host1's controller: its first packet goes nowhere
    assert "error" in new_pair(r, "udp", *FRESH_ON_VICTIM, timeout=1.5)
    assert FRESH_ON_VICTIM not in {(ep, vm) for ep, vm in SESSIONS}

    # host1's connections kept flowing (3 s at least with no controller on host1)
    wait_for(lambda: time.monotonic() - r.killed_at >= 3, 10)
    now = time.monotonic()
    assert not r.pump.problems, r.pump.problems
    for key in r.sessions:
        assert r.pump.count(key, r.killed_at, now) >= 10, (key, r.pump.count(key, r.killed_at, now))
    seen_at_vm = r.vm_cap.stop()
    r.vm_cap = None
    segments = seen_at_vm.count(f".{LINE_PORT}: Flags [P.]")
    assert segments >= 20, seen_at_vm[-2000:]
    print(f"\nhost1's controller dead {now - r.killed_at:.1f}s: answers per connection "
          f"{ {f'{k[0]}->{k[1]}': r.pump.count(k, r.killed_at, now) for k in r.sessions} }, "
          f"{segments} data segments reached a-web1")
    assert not lab.controller_pid(VICTIM), "something restarted host1's controller"


def test_restart_adopts_its_pairs_and_new_pairs_work_there_again(run):
    r, lab, plan = run, run.lab, run.plan
    assert r.pump is not None and r.pump.is_alive() and not lab.controller_pid(VICTIM), \
        "runs after the kill -9 test"
    r.restarted_at = time.monotonic()
    assert lab.restart_controller(VICTIM).startswith("started (pids host1 ")
    log = lab.controller_log(VICTIM)

    def since() -> str:
        return log.read_bytes()[r.marks[log]:].decode(errors="replace")
    assert wait_for(lambda: re.search(rf"\[{VICTIM} [0-9a-f]+\] resynced", since()), 20), since()

    # the pairs were adopted: host1 holds exactly the same pair flows (cookies, aliases)
    assert pair_flows(plan, VICTIM) == r.pairs_before
    # a pair that could not be set up while the controller was dead is set up now
    assert_answered(r, "tcp", *FRESH_ON_VICTIM)
    pairs = pair_flows(plan, VICTIM)
    assert len(pairs) == len(r.pairs_before) + 1
    assert len({alias for _, alias in pairs.values()}) == len(pairs), f"duplicate alias: {pairs}"
    summary = wait_for(lambda: re.search(r"pairs: .*pairs_adopted=(\d+)", since()), 5)
    assert summary and int(summary.group(1)) == len(r.pairs_before), since()[-3000:]

    # every connection went on, on its own port, without a gap through the kill and restart
    time.sleep(1.0)
    r.pump.stop()
    end = time.monotonic()
    assert not r.pump.problems, r.pump.problems
    gaps = {}
    for key in r.sessions:
        assert r.pump.count(key, r.restarted_at, end) >= 5, key
        gaps[key] = gap = r.pump.largest_gap(key, r.killed_at, end)
        assert gap < 2.0, f"{key}: no answer for {gap:.1f}s"
    print(f"\nrestart -> host1 resynced, {len(r.pairs_before)} pairs adopted; largest gap "
          f"between answers since the kill: {max(gaps.values()) * 1000:.0f} ms")
    for kind, source, vm in NEW_ELSEWHERE[:2]:   # and the other hosts still set pairs up
        assert_answered(r, kind, source, vm)

    # the other controllers never noticed: same processes, no switch (dis)connected
    now = {c.name: c.pid() for c in lab.controllers(plan)}
    assert now == {**r.pids, VICTIM: now[VICTIM]} and now[VICTIM] != r.pids[VICTIM], now
    text = controller_log_text(lab, r.marks)
    # ("[? dpid]": host1's restarted controller, connected to its switch before the NB)
    assert not re.search(r"\[(?!host1 |\? )\S+ [0-9a-f]+\] (dis)?connected", text), text[-3000:]
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]
