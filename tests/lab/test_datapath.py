"""The platform end to end on the default topology: real OVS, Geneve, conntrack, TAYGA
and the controller, with packets checked where they arrive.

svc1 (IPv6 only, on host2) opens TCP, UDP and ping to a-vm1 and b-vm1 (both
10.0.0.4, in different VNets, on host1) through their platform IPv6
addresses. The VMs run small echo servers that answer with their own name and
the peer address they saw.
"""

from __future__ import annotations

import pytest
from vnet64_lab.ovs import OvsNode
from vnet64_lab.traffic import (A6, B6, CLOSED_PORT, PLATFORM_IP, TCP_PORT, UDP_PORT, client,
                                flows, in_ns, running_platform, wait_for)

from tests.lab.conftest import ROOT, Capture, need_lab, new_lab
from vnet64.nb import api as nbapi


@pytest.fixture(scope="module")
def platform():
    """The default topology up, with the controller, and echo servers in both VMs."""
    need_lab()
    with running_platform(new_lab("d"), ROOT / "topologies" / "two-tenants.yaml") as up:
        yield up


@pytest.mark.parametrize("vm, addr", [("a-vm1", A6), ("b-vm1", B6)])
def test_tcp_from_the_service_reaches_the_right_vm_from_platform_ip(platform, vm, addr):
    _, plan = platform
    out = client(plan, "tcp", addr, TCP_PORT, f"to-{vm}")
    assert "error" not in out, out
    name, seen, payload = out["reply"].split(" ", 2)
    assert name == vm, "the packet reached the wrong tenant's VM"
    assert seen.split(":")[0] == PLATFORM_IP, f"{vm} saw {seen}, not Platform_IP"
    assert payload == f"to-{vm}"
    assert out["peer"] == addr


@pytest.mark.parametrize("vm, addr", [("a-vm1", A6), ("b-vm1", B6)])
def test_udp_from_the_service_gets_the_vms_answer(platform, vm, addr):
    _, plan = platform
    out = client(plan, "udp", addr, UDP_PORT, "ping-udp")
    assert "error" not in out, out
    name, seen, _ = out["reply"].split(" ", 2)
    assert name == vm and seen.startswith(PLATFORM_IP + ":")
    assert out["peer"] == addr


@pytest.mark.parametrize("addr", [A6, B6])
def test_ping_from_the_service(platform, addr):
    _, plan = platform
    ns = next(v.ns for v in plan.vifs if v.name == "svc1")
    proc = in_ns(ns, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", addr)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_closed_udp_port_on_the_vm_refuses_the_services_connected_socket(platform):
    _, plan = platform
    out = client(plan, "udp", A6, CLOSED_PORT)
    assert out.get("error") == "ConnectionRefusedError", out


def test_return_path_skips_the_appliance(platform):
    _, plan = platform
    fabric_if = {n.name: n.fabric_if for n in plan.nodes}
    host1 = str(plan.node("host1").underlay_ip.ip)
    with Capture(plan.fabric_ns, fabric_if["appliance"], f"udp port 6081 and src host {host1}",
                 count=1) as via_appliance, \
            Capture(plan.fabric_ns, fabric_if["host2"], f"udp port 6081 and src host {host1}",
                    count=1) as direct:
        out = client(plan, "tcp", A6, TCP_PORT)
        assert "error" not in out, out
        assert direct.done(5), "no return traffic from host1 reached host2 directly"
        assert not via_appliance.done(0.5), "return traffic went through the appliance"


def test_unsubscribe_cuts_the_pair_and_resubscribe_restores_it(platform):
    lab, plan = platform
    api = nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock")
    try:
        assert "error" not in client(plan, "tcp", A6, TCP_PORT)
        api.unsubscribe("a-vm1", "analytics")
        cut = wait_for(lambda: A6 not in flows(plan, "appliance"), timeout=5)
        assert cut, "the appliance still routes the unsubscribed VM"
        assert client(plan, "tcp", A6, TCP_PORT).get("error"), "unsubscribed VM still reachable"
        assert "error" not in client(plan, "tcp", B6, TCP_PORT), "the other tenant was affected"
        api.subscribe("a-vm1", "analytics")
        assert wait_for(lambda: A6 in flows(plan, "appliance"), timeout=5)
        assert "error" not in client(plan, "tcp", A6, TCP_PORT)
    finally:
        api.subscribe("a-vm1", "analytics", may_exist=True)
        api.close()


def test_closed_connections_hold_their_platform_port_longer_than_the_vms_time_wait(platform):
    """DESIGN §4b "Ports": the VNet zone keeps TIME_WAIT entries > 60 s (Linux's TIME_WAIT)."""
    _, plan = platform
    assert "error" not in client(plan, "tcp", A6, TCP_PORT)
    n = plan.node("host1")
    node = OvsNode(n.name, n.ns, n.run_dir)
    entries = [line for line in node.appctl("dpctl/dump-conntrack", "-s", "zone=1").splitlines()
               if "TIME_WAIT" in line and "100.100.0.1" in line]
    assert entries, "no closed connection in a-vm1's VNet zone"
    timeouts = [int(line.split("timeout=")[1].split(",")[0]) for line in entries]
    assert max(timeouts) > 60, entries
