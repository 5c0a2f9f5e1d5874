"""Survival (issue 4): the controller dies, comes back, and a switch restarts.

On the default topology with the real controllers, in the lab's control mode (one
per node: "the controller" below is every node's; or the central one):

1. kill -9 the controller while a long-lived TCP connection from svc1 to a-vm1
   runs: the connection keeps echoing, ping and new connections inside the
   existing pair keep working (the datapath needs no controller for them);
2. restart it the way the lab starts it: it rebuilds its pair allocations from
   the switches' flows (cookies) and the NB. The open connection still works, a
   new connection in the same pair uses the same alias, a new pair gets another
   alias, flows planted while it was down with vnet64 cookies the NB does not
   want are swept (and a pair's flows left without its pair-table flow, as when
   that flow idles out while no controller listens: ``Logic.resynced`` deletes a
   pair that is not whole), and exactly one set of pair flows exists per live pair;
3. restart host1's ovs-vswitchd (its flows go with the process): the controller
   reprograms it and new connections to both VMs work.

The tests run in this order and share the lab (one module-scoped fixture).
In central control OVS backs controller reconnects off up to 8 s; ``max_backoff`` is
set to 1 s while the switches are connected (OVS 3.1 takes it only then), so every
reconnect below happens within about a second without being forced. A controller per
node connects to its switch itself, as soon as it runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import pytest
from vnet64_lab import Lab, sh
from vnet64_lab.ovs import terminate
from vnet64_lab.traffic import (A6, B6, LINE_PORT, PLATFORM_IP, SVC1, TCP_PORT, UDP_PORT, LineSession,
                                answer, client, controller_log_marks, controller_log_text,
                                controller_logs, flow_lines, flows, ovs_node, pair_flows, ping,
                                running_platform, wait_for)

from tests.lab.conftest import ROOT, need_lab
from vnet64.controller.pipeline import APPLIANCE_TABLES, HOST_TABLES, cookie

PAIR_FEATURE = (cookie("host", "pair", 0), 0xFFFF000000000000)
GHOST6 = "fd41::3930:1f:6600:a00:99"     # a platform address no VM of the NB has
STRANGER = "fd00:5e:1::99"               # an IPv6 that is no service endpoint
STALE = {
    # node -> flows with vnet64 cookies that the NB does not want (planted while the controller is down)
    "host1": [
        # a pair that is not subscribed (no such endpoint), with one of its companion flows
        (f"cookie={cookie('host', 'pair', 0x77):#x},table={HOST_TABLES.id('pair')},priority=100,"
         f"ipv6,ipv6_src={STRANGER},ipv6_dst={A6},actions=drop"),
        (f"cookie={cookie('host', 'pair', 0x77):#x},table={HOST_TABLES.id('from_translator')},"
         f"priority=100,ip,nw_src=198.18.0.119,nw_dst=10.0.0.4,actions=drop"),
        # a pair whose pair-table flow idled out while no controller listened (so its
        # flow-removed, which deletes the rest, went nowhere): its other flows are left
        (f"cookie={cookie('host', 'pair', 0x78):#x},table={HOST_TABLES.id('from_translator')},"
         f"priority=100,ip,nw_src=198.18.0.120,nw_dst=10.0.0.4,actions=drop"),
        (f"cookie={cookie('host', 'pair', 0x78):#x},table={HOST_TABLES.id('vm_return')},"
         f"priority=100,ip,in_port=99,nw_dst=198.18.0.120,actions=drop"),
        # steering/DNAT for a VM address that does not exist
        (f"cookie={cookie('host', 'vm', 'ghost-vm'):#x},table={HOST_TABLES.id('v6_dnat')},"
         f"priority=100,ipv6,ipv6_dst={GHOST6},actions=drop"),
    ],
    "appliance": [
        (f"cookie={cookie('appliance', 'route', 'ghost-vm'):#x},"
         f"table={APPLIANCE_TABLES.id('route')},priority=100,ipv6,ipv6_dst={GHOST6},actions=drop"),
    ],
}
STALE_COOKIES = {
    "host1": {cookie("host", "pair", 0x77), cookie("host", "pair", 0x78), cookie("host", "vm", "ghost-vm")},
    "appliance": {cookie("appliance", "route", "ghost-vm")},
}


class Run:
    """What the tests of this module hand on to each other."""

    def __init__(self, lab: Lab, plan):
        self.lab, self.plan = lab, plan
        self.session: LineSession | None = None
        self.seen_port: str | None = None   # Platform_IP port a-vm1 sees on the long-lived connection
        self.a_pair: tuple[int, str] | None = None
        self.lines = 0

    def exchange(self, tag: str) -> None:
        """One line over the long-lived connection, answered by a-vm1 on the same connection."""
        self.lines += 1
        text = f"{tag}-{self.lines}"
        name, addr, port, payload = answer(self.session.send(text))
        assert (name, addr, payload) == ("a-vm1", PLATFORM_IP, text)
        assert port == self.seen_port, "the long-lived connection's Platform_IP port changed"


@pytest.fixture(scope="module")
def run():
    need_lab()
    lab = Lab("v64s-", "/run/vnet64-lab-s")
    with running_platform(lab, ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        lab.quicken_reconnects(plan)   # central: reconnect within ~1 s (module docstring)
        r = Run(lab, plan)
        try:
            yield r
        finally:
            if r.session is not None:
                r.session.close()


# ---------------------------------------------------------------------------
# helpers


def controller_pids(lab: Lab) -> list[int]:
    """The pids of the lab's controllers that run (every node's, or the central one)."""
    return [pid for c in lab.controllers() if (pid := c.pid())]


def all_controllers_run(lab: Lab) -> bool:
    return all(c.pid() for c in lab.controllers())


def kill_9(pid: int) -> None:
    """SIGKILL one of the lab's controllers (a pid from its pidfile), and reap it."""
    assert b"vnet64.controller" in Path(f"/proc/{pid}/cmdline").read_bytes()
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):   # started by this process (lab.up): reap it
        os.waitpid(pid, 0)
    assert wait_for(lambda: not sh.proc_alive(pid), 5), "the controller survived SIGKILL"


def kill_9_controller(lab: Lab) -> None:
    """kill -9 the controller: the central one, or every node's."""
    assert all_controllers_run(lab), "a controller is not running"
    for pid in controller_pids(lab):
        kill_9(pid)


def log_since(lab: Lab, marks: dict[Path, int]) -> str:
    return controller_log_text(lab, marks)


def wait_resynced(lab: Lab, marks: dict[Path, int], nodes: list[str], timeout: float = 20) -> float:
    """Seconds until every node's switch was resynced (per the logs written after ``marks``)."""
    t0 = time.monotonic()
    done = wait_for(lambda: all(re.search(rf"\[{n} [0-9a-f]+\] resynced", log_since(lab, marks))
                                for n in nodes), timeout)
    assert done, f"not every switch of {nodes} resynced:\n{log_since(lab, marks)[-4000:]}"
    return time.monotonic() - t0


def assert_clean_log(lab: Lab) -> None:
    for path in controller_logs(lab):
        log = path.read_text()
        assert "Traceback" not in log, f"{path}:\n{log[-6000:]}"
        assert " ERROR " not in log, [line for line in log.splitlines() if " ERROR " in line]


def cookies(plan, node: str, value: int, mask: int) -> list[int]:
    """The cookie of every flow of ``node`` that matches value/mask (one per flow)."""
    dump = flows(plan, node, f"cookie={value:#x}/{mask:#x}")
    return [int(c, 16) for c in re.findall(r"cookie=(0x[0-9a-f]+)", dump)]


def tcp_ok(plan, addr: str, vm: str) -> None:
    """A new TCP connection from svc1 reaches ``vm``, which sees Platform_IP."""
    out = client(plan, "tcp", addr, TCP_PORT, f"to-{vm}")
    name, seen, _, payload = answer(out)
    assert (name, seen, payload) == (vm, PLATFORM_IP, f"to-{vm}"), out
    assert out["peer"] == addr


def restart_vswitchd(plan, node: str) -> tuple[int, int]:
    """Stop a node's ovs-vswitchd by its pidfile and start it again the way the lab does
    (same database, so same bridges and ports; every flow is gone). The node's agent
    notices and redoes the kernel side (underlay address on br-phy's new tap, links up,
    tunnel neighbours seeded); the new vswitchd learns the underlay route."""
    n = plan.node(node)
    ovs = ovs_node(plan, node)
    old = ovs.pid("ovs-vswitchd")
    assert old and terminate(old, "ovs-vswitchd")
    ovs.start()   # ovsdb-server still runs: only ovs-vswitchd starts
    new = ovs.pid("ovs-vswitchd")
    assert new and new != old
    sh.wait_for(lambda: sh.run([sh.tool("ovs-ofctl"), "show", "br-phy"], env=ovs.env(),
                               check=False).returncode == 0, 10, f"br-phy in {node}'s new vswitchd")
    net = str(plan.settings.underlay_cidr)
    sh.wait_for(lambda: net in ovs.appctl("ovs/route/show", check=False), 10,
                f"the underlay route in {node}'s new vswitchd")
    peers = [str(o.underlay_ip.ip) for o in plan.nodes if o.name != node]
    sh.wait_for(lambda: all(p in ovs.appctl("tnl/neigh/show", check=False) for p in peers), 10,
                f"{node}'s agent to seed the new vswitchd's tunnel neighbours")
    assert str(n.underlay_ip) in sh.ip(n.ns, "-4", "addr", "show", "dev", "br-phy").stdout
    return old, new


# ---------------------------------------------------------------------------
# tests


def test_kill_9_the_controller_connections_keep_flowing(run):
    lab, plan = run.lab, run.plan
    run.session = LineSession(plan, A6, LINE_PORT)
    assert run.session.hello["peer"] == A6
    first = answer(run.session.send("hello"))
    assert first[:2] == ("a-vm1", PLATFORM_IP) and first[3] == "hello"
    run.seen_port = first[2]
    run.a_pair = pair_flows(plan, "host1")[(SVC1, A6)]
    assert ping(plan, A6) == (3, 3)

    kill_9_controller(lab)
    assert not controller_pids(lab)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3:   # traffic spread over 3 s with no controller at all
        run.exchange("while-dead")
        time.sleep(0.2)
    assert run.lines >= 10
    assert ping(plan, A6, count=5) == (5, 5), "ping to a-vm1 stopped with the controller"
    tcp_ok(plan, A6, "a-vm1")   # a new connection inside the existing pair: datapath only
    name, seen, _, _ = answer(client(plan, "udp", A6, UDP_PORT, "udp-while-dead"))
    assert (name, seen) == ("a-vm1", PLATFORM_IP)
    run.exchange("while-dead")
    assert not controller_pids(lab), "something restarted the controller behind the test's back"
    assert pair_flows(plan, "host1")[(SVC1, A6)] == run.a_pair


def test_restart_rebuilds_allocations_from_the_switches_and_sweeps_stale_flows(run):
    lab, plan = run.lab, run.plan
    assert run.session is not None and not controller_pids(lab), "runs after the kill -9 test"
    for node, specs in STALE.items():
        for spec in specs:
            ovs_node(plan, node).ofctl("-O", "OpenFlow13", "add-flow", "br-int", spec)
        planted = set(cookies(plan, node, 0, 0))
        assert STALE_COOKIES[node] <= planted, (node, planted)

    marks = controller_log_marks(lab)
    t0 = time.monotonic()
    assert lab.restart_controller().startswith("started")
    wait_resynced(lab, marks, [n.name for n in plan.nodes])
    resync = time.monotonic() - t0
    print(f"\ncontroller restart -> every switch resynced: {resync:.2f}s")

    # stale flows swept (the sweep is sent right after the resync)
    for node, stale in STALE_COOKIES.items():
        left = wait_for(lambda node=node, stale=stale: not stale & set(cookies(plan, node, 0, 0)), 5)
        assert left, f"{node} kept stale flows:\n{flows(plan, node)}"
    assert GHOST6 not in flows(plan, "host1") + flows(plan, "appliance")
    assert STRANGER not in flows(plan, "host1")

    # the open connection survived the restart and kept its conntrack state
    for _ in range(3):
        run.exchange("after-restart")
    # a new connection in the same pair: same pair flow, same alias
    tcp_ok(plan, A6, "a-vm1")
    assert pair_flows(plan, "host1")[(SVC1, A6)] == run.a_pair, "the pair was re-allocated"

    # a new pair: another alias (the allocator knows the first one is taken)
    tcp_ok(plan, B6, "b-vm1")
    pairs = pair_flows(plan, "host1")
    assert set(pairs) == {(SVC1, A6), (SVC1, B6)}, pairs
    (a_cookie, a_alias), (b_cookie, b_alias) = pairs[(SVC1, A6)], pairs[(SVC1, B6)]
    assert a_cookie != b_cookie and a_alias != b_alias, f"duplicate allocation: {pairs}"
    print(f"pair aliases: a-vm1 {a_alias} (kept), b-vm1 {b_alias} (new)")

    # no leak: one set of pair flows (pair + SNAT + return rule + the direct path's: svc1 is
    # on host2) per live pair, nothing else
    per_cookie = cookies(plan, "host1", *PAIR_FEATURE)
    assert sorted(per_cookie) == sorted([a_cookie] * 4 + [b_cookie] * 4), \
        flows(plan, "host1", f"cookie={PAIR_FEATURE[0]:#x}/{PAIR_FEATURE[1]:#x}")
    assert not cookies(plan, "host2", *PAIR_FEATURE)
    assert_clean_log(lab)


def test_a_restarted_switch_gets_its_pipeline_back(run):
    lab, plan = run.lab, run.plan
    if run.session is not None:   # its conntrack state lives in the vswitchd about to restart
        run.session.close()
        run.session = None
    proactive = [line for line in flow_lines(plan, "host1")
                 if not re.match(r"cookie=0x10[56]", line)]   # not the pairs' or denials'
    assert len(proactive) > 20, proactive
    meters = ovs_node(plan, "host1").ofctl("-O", "OpenFlow13", "dump-meters", "br-int")
    assert "meter=1" in meters

    marks = controller_log_marks(lab)
    t0 = time.monotonic()
    old, new = restart_vswitchd(plan, "host1")
    wait_resynced(lab, marks, ["host1"])
    back = wait_for(lambda: [line for line in flow_lines(plan, "host1")
                             if not re.match(r"cookie=0x10[56]", line)] == proactive, 10)
    assert back, "host1's proactive flows differ after its restart:\n" + "\n".join(
        sorted(set(flow_lines(plan, "host1")) ^ set(proactive)))
    print(f"\nhost1 vswitchd restart ({old} -> {new}) -> pipeline back: {time.monotonic() - t0:.2f}s")
    assert "meter=1" in ovs_node(plan, "host1").ofctl("-O", "OpenFlow13", "dump-meters", "br-int")
    assert all_controllers_run(lab), "a controller died"

    for addr, vm in ((A6, "a-vm1"), (B6, "b-vm1")):
        tcp_ok(plan, addr, vm)
        name, seen, _, _ = answer(client(plan, "udp", addr, UDP_PORT, "udp-after-switch-restart"))
        assert (name, seen) == (vm, PLATFORM_IP)
        assert ping(plan, addr) == (3, 3)
    pairs = pair_flows(plan, "host1")
    assert set(pairs) == {(SVC1, A6), (SVC1, B6)}, pairs
    assert pairs[(SVC1, A6)][1] != pairs[(SVC1, B6)][1], f"duplicate allocation: {pairs}"
    assert sorted(cookies(plan, "host1", *PAIR_FEATURE)) == sorted(
        [c for c, _ in pairs.values()] * 4)      # each pair's four flows (with the direct path's)
    # the other switches were not disturbed
    assert not re.search(r"\[(host2|appliance) [0-9a-f]+\] (dis)?connected", log_since(lab, marks))
    assert_clean_log(lab)
