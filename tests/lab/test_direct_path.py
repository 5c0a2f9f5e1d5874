"""The direct path (issue 21, lever 1): once a reply from a VM's host has reached a service
host, the pair's later packets go from the service host straight to the VM's host; the
appliance carries a pair's first packets, and whatever a stale entry sends after a move.

Checked on the fabric, as the packets go: only the first datagram of an exchange crosses the
appliance; a VM that moves is reached through the appliance again, then directly at its new
host; Geneve that claims a host's address but not for one of that host's endpoints is
dropped, and with the direct path off every packet goes through the appliance again.
"""

from __future__ import annotations

import json
import sys
from ipaddress import IPv4Address

import pytest
from scapy.layers.inet6 import IPv6
from vnet64_lab.traffic import (A6, B6, SVC1, UDP_PORT, answer, client, flow_lines, in_ns, ns_of,
                                ovs_node, running_platform, wait_for)

from tests.lab.conftest import ROOT, need_lab, new_lab
from tests.lab.test_vm_move import PORTS, attach, detach
from tests.lab.traffic import Pcap, Rogue, carrying, decap, drop_counts, norm, tunnel_token
from vnet64.controller.pipeline import HOST_TABLES
from vnet64.nb import api as nbapi

# One UDP socket: each datagram ``<marker>-<i>`` waits for its answer before the next.
EXCHANGE = r"""
import json, socket, sys
addr, port, marker, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(2.0)
s.connect((addr, port))
answers = []
for i in range(n):
    s.send(f"{marker}-{i}".encode())
    try:
        answers.append(s.recv(4096).decode())
    except socket.timeout:
        answers.append(None)
print(json.dumps({"local": s.getsockname()[1], "answers": answers}))
"""


@pytest.fixture(scope="module")
def platform():
    need_lab()
    # (test_vm_move's attach/detach, used here, keep b-vm1's port name in PORTS)
    lab = new_lab("r")
    with running_platform(lab, ROOT / "topologies" / "two-tenants.yaml") as up:
        yield up


@pytest.fixture(scope="module")
def nb(platform):
    api = nbapi.connect(f"unix:{platform[1].nb_run_dir}/nb.sock")
    yield api
    api.close()


def underlay(plan, node: str) -> str:
    return str(plan.node(node).underlay_ip.ip)


def exchange(plan, addr: str, marker: str, n: int) -> dict:
    proc = in_ns(ns_of(plan, "svc1"), sys.executable, "-c", EXCHANGE, addr, str(UDP_PORT), marker, str(n))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def unanswered(plan, out: dict, marker: str) -> str:
    """Which datagrams of an exchange got no answer, and what every node did not forward
    (for an assertion's message)."""
    lost = [f"{marker}-{i}" for i, a in enumerate(out["answers"]) if not a]
    return f"no answer to {lost}; not forwarded: " + "; ".join(
        f"{n.name} {drop_counts(plan, n.name)}" for n in plan.nodes)


def forward_legs(plan, caps: dict[str, Pcap], marker: str, vm6: str) -> list[tuple[str, str, str]]:
    """(capture point, outer source, outer destination) of every Geneve packet svc1 -> ``vm6``
    carrying ``marker`` seen on the fabric, in capture order per point."""
    out = []
    for where, cap in caps.items():
        for pkt in carrying(cap.packets(), marker):
            outer, _, inner = decap(pkt)
            if outer is not None and inner.haslayer(IPv6) and norm(inner[IPv6].src) == SVC1 \
                    and norm(inner[IPv6].dst) == vm6:
                out.append((where, str(outer.src), str(outer.dst)))
    return out


def fabric(plan, tmp_path, *nodes: str) -> dict[str, Pcap]:
    return {n: Pcap(plan.fabric_ns, plan.node(n).fabric_if, tmp_path, bpf="udp port 6081") for n in nodes}


def learned(plan, node: str, vm6: str) -> list[str]:
    """The direct entries ``node`` learnt towards ``vm6`` (its ``direct`` stage)."""
    return [line for line in flow_lines(plan, node, f"table={HOST_TABLES.id('direct')}") if vm6 in line]


def settled(plan, node: str) -> None:
    """The node's datapath flows revalidated against its OpenFlow tables (a learnt flow
    takes effect for packets of a datapath flow made before it only after this)."""
    ovs_node(plan, node).appctl("revalidator/wait")


def test_a_pairs_later_packets_bypass_the_appliance(platform, tmp_path):
    """svc1 -> a-vm1: the first datagram goes host2 -> appliance -> host1 (the pair is set
    up there) and its answer teaches host2 where a-vm1 is; then nine more, each after the
    last one's answer, go host2 -> host1 - the appliance's underlay sees none of them."""
    _, plan = platform
    h2, ap, h1 = underlay(plan, "host2"), underlay(plan, "appliance"), underlay(plan, "host1")
    caps = fabric(plan, tmp_path, "appliance", "host1")
    try:
        first = exchange(plan, A6, "first", 1)
        assert first["answers"][0].startswith("a-vm1 "), first
        assert wait_for(lambda: learned(plan, "host2", A6), 5), "host2 learnt nothing"
        settled(plan, "host2")
        later = exchange(plan, A6, "later", 9)
        assert all(a and a.startswith("a-vm1 ") for a in later["answers"]), unanswered(plan, later, "later")
        for cap in caps.values():
            cap.wait(lambda p: len(carrying(p, "later-8")) >= 1, 3)
    finally:
        for cap in caps.values():
            cap.stop()
    assert forward_legs(plan, {"appliance": caps["appliance"]}, "first-0", A6) == [
        ("appliance", h2, ap), ("appliance", ap, h1)]
    for m in range(9):
        assert not forward_legs(plan, {"appliance": caps["appliance"]}, f"later-{m}", A6), m
        assert forward_legs(plan, {"host1": caps["host1"]}, f"later-{m}", A6) == [("host1", h2, h1)], m
    # host2 learnt it: (svc1, a-vm1's platform address) -> host1, in its direct stage
    (entry,) = learned(plan, "host2", A6)
    assert f"ipv6_src={SVC1}" in entry and "idle_timeout=60" in entry, entry
    assert f"load:{int(IPv4Address(h1)):#x}->NXM_NX_TUN_IPV4_DST[]" in entry, entry


def entry_to(plan, vm6: str, host: str) -> bool:
    """host2's direct entry for (svc1, ``vm6``) sends to ``host``'s underlay address."""
    want = f"load:{int(IPv4Address(underlay(plan, host))):#x}->NXM_NX_TUN_IPV4_DST[]"
    return any(want in line for line in learned(plan, "host2", vm6))


def first_then_rest(plan, caps: dict[str, Pcap], vm6: str, marker: str, teaches: str) -> str:
    """Datagrams svc1 -> ``vm6`` until one is answered (its marker is returned); once its
    answer has taught host2 to send to ``teaches`` (and host2's datapath follows), four
    more on one socket, every one answered."""
    try:
        # the first answered one (the new host may still be taking the VM in: retried)
        first = None
        for attempt in range(20):
            out = client(plan, "udp", vm6, UDP_PORT, f"{marker}-first-{attempt}", timeout=0.5)
            if out.get("reply", "").startswith("b-vm1 "):
                first = f"{marker}-first-{attempt}"
                break
        assert first is not None, f"b-vm1 never answered after its move ({marker})"
        assert wait_for(lambda: entry_to(plan, vm6, teaches), 5), learned(plan, "host2", vm6)
        settled(plan, "host2")
        rest = exchange(plan, vm6, marker, 4)
        assert all(a and a.startswith("b-vm1 ") for a in rest["answers"]), rest
        for cap in caps.values():
            cap.wait(lambda p: len(carrying(p, f"{marker}-3")) >= 1, 2)
    finally:
        for cap in caps.values():
            cap.stop()
    return first


def test_a_moved_vm_goes_through_the_appliance_then_direct_to_its_new_host(platform, nb, tmp_path):
    """b-vm1 is reached directly on host1, then migrates to host2 (svc1's own host) and
    back. After the first move, the first datagram takes host2's stale entry to host1, which
    passes it on to the appliance, which sends it to host2; its answer (local: no tunnel)
    sets the entry to the appliance, and the rest go through the appliance as for any VM
    on the service's own host. Back on host1, the first datagram goes through the
    appliance, and the answer from host1 makes the rest direct again."""
    _, plan = platform
    h2, ap, h1 = underlay(plan, "host2"), underlay(plan, "appliance"), underlay(plan, "host1")
    assert all(a for a in exchange(plan, B6, "before-move", 3)["answers"])
    assert wait_for(lambda: entry_to(plan, B6, "host1"), 5), learned(plan, "host2", B6)
    settled(plan, "host2")
    PORTS.clear()
    PORTS["host1"] = "v-b-vm1"
    try:
        detach(plan, "b-vm1", "host1")
        attach(plan, "b-vm1", "host2", "vnet9")
        assert wait_for(lambda: nb.vm_info("b-vm1")["host"] == "host2", 10)
        caps = fabric(plan, tmp_path, "appliance", "host1")
        first = first_then_rest(plan, caps, B6, "moved", teaches="appliance")
        # host2 -> host1 (stale), host1 -> appliance, appliance -> host2 (the new host)
        legs = forward_legs(plan, caps, first, B6)
        assert ("host1", h2, h1) in legs and ("host1", h1, ap) in legs and ("appliance", ap, h2) in legs, legs
        for m in range(4):     # local to svc1 now: through the appliance, host1 no more
            legs = forward_legs(plan, caps, f"moved-{m}", B6)
            assert ("appliance", h2, ap) in legs and not any(w == "host1" for w, _, _ in legs), (m, legs)
        detach(plan, "b-vm1", "host2")
        attach(plan, "b-vm1", "host1", "vnet3")
        assert wait_for(lambda: nb.vm_info("b-vm1")["host"] == "host1", 10)
        caps = fabric(plan, tmp_path, "appliance", "host1")
        first = first_then_rest(plan, caps, B6, "back", teaches="host1")
        assert forward_legs(plan, caps, first, B6) == [
            ("appliance", h2, ap), ("appliance", ap, h1), ("host1", ap, h1)]
        for m in range(4):
            assert forward_legs(plan, caps, f"back-{m}", B6) == [("host1", h2, h1)], m
    finally:
        # leave b-vm1 on host1 under its lab name for the module's other tests
        host = next(iter(PORTS), None)
        if host is not None and (host, PORTS[host]) != ("host1", "v-b-vm1"):
            detach(plan, "b-vm1", host)
            attach(plan, "b-vm1", "host1", "v-b-vm1")


def reseed(plan, node: str, peer: str) -> None:
    """``node``'s tunnel neighbour ``peer`` back to the MAC its kernel resolved."""
    from vnet64_lab import sh
    shown = json.loads(sh.ip(plan.node(node).ns, "-j", "neigh", "show", "dev", "br-phy").stdout)
    mac = next(n["lladdr"] for n in shown if n.get("dst") == underlay(plan, peer))
    ovs_node(plan, node).appctl("tnl/neigh/set", "br-phy", underlay(plan, peer), mac)


def test_direct_geneve_not_from_a_hosts_own_endpoint_is_dropped(platform, tmp_path):
    """A node that claims host2's underlay address, with the tunnel token, sends host1
    Geneve for a-vm1 (svc1's pair exists and is direct) from an address that is not
    host2's endpoint: host1 drops it as ``not_direct``; a-vm1 sees nothing."""
    _, plan = platform
    assert all(exchange(plan, A6, "pair-exists", 2)["answers"])
    from scapy.layers.inet import UDP
    from scapy.layers.l2 import Ether
    token = int(tunnel_token(plan), 16)
    rogue = Rogue(plan)
    try:
        before = drop_counts(plan, "host1").get("not_direct", 0)
        inner = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") \
            / IPv6(src="fd00:5e:1::99", dst=A6) / UDP(sport=45001, dport=UDP_PORT) / b"forged-direct"
        vm = Pcap(next(v.ns for v in plan.vifs if v.name == "a-vm1"), "eth0", tmp_path)
        try:
            assert rogue.send([rogue.geneve("host1", inner, src=underlay(plan, "host2"), token=token)]) == 1
            counted = wait_for(lambda: drop_counts(plan, "host1").get("not_direct", 0) > before, 5)
        finally:
            got = vm.stop()
    finally:
        rogue.remove()
        # Open vSwitch learns a tunnel neighbour from every Geneve packet it receives
        # (outer source address -> source MAC): the forged one taught host1 that host2
        # is at the rogue's MAC. host2's next direct packet would correct it; the next test
        # turns the direct path off, so it is put back as the node agent seeded it.
        reseed(plan, "host1", "host2")
    assert counted, drop_counts(plan, "host1")
    assert not carrying(got, "forged-direct")


def test_with_the_direct_path_off_everything_goes_through_the_appliance(platform, nb, tmp_path):
    _, plan = platform
    h2, ap = underlay(plan, "host2"), underlay(plan, "appliance")
    assert nb.set_direct_path(False) is True
    try:
        assert wait_for(lambda: not [ln for ln in flow_lines(plan, "host2", f"table={HOST_TABLES.id('to_appliance')}")
                                     if "resubmit" in ln], 10)
        caps = fabric(plan, tmp_path, "appliance")
        try:
            out = exchange(plan, A6, "off", 5)
            caps["appliance"].wait(lambda p: len(carrying(p, "off-4")) >= 2, 2)
        finally:
            caps["appliance"].stop()
        assert all(out["answers"]), out
        for m in range(5):
            assert ("appliance", h2, ap) in forward_legs(plan, caps, f"off-{m}", A6), m
        # host1 holds no direct-path flow for svc1 any more: no pair's, no pass-on
        assert not [ln for ln in flow_lines(plan, "host1", f"table={HOST_TABLES.id('from_tunnel')}") if f"ipv6_src={SVC1}" in ln]
    finally:
        assert nb.set_direct_path(None) is True
    assert wait_for(lambda: [ln for ln in flow_lines(plan, "host2", f"table={HOST_TABLES.id('to_appliance')}") if "resubmit" in ln], 10)
    assert answer(client(plan, "udp", A6, UDP_PORT, "on-again"))[0] == "a-vm1"
