"""Security and bad input (issue 5): each case a test, each with "nothing leaks, nothing
crashes" - the packets are looked for where they must not arrive (captures on the VM
veths, the translator veth, the endpoints, the fabric), the place that dropped them is
read from OVS's counters (a table-miss drop, a drop flow, a deny flow, conntrack's
fragment counters, a kernel counter), and every test ends with the controller alive,
its log free of tracebacks and errors, and the other tenants' traffic still flowing
(including a TCP connection opened when the module started, on the same Platform_IP
port).

The topology has two services on host2 - ``analytics`` (svc1) and ``backup`` (bk1) -
and, on host1, VMs that make every crafted address land on something real:

=======  ==========  ===============  =====================================  ===========
VM       VNet (id)   IPv4             platform IPv6                          subscribed
=======  ==========  ===============  =====================================  ===========
a-vm1    a (0x1f)    10.0.0.4         fd41::3930:1f:6600:a00:4               analytics
b-vm1    b (0x20)    10.0.0.4         fd41::3930:20:6600:a00:4               analytics
a-vm2    a (0x1f)    10.0.0.5         fd41::3930:1f:6600:a00:5               backup
a-db1    a (0x1f)    10.0.1.4 (db)    fd41::3930:1f:6601:a00:104             backup
c-vm1    c (0x21)    10.0.0.4         fd41::3930:21:6600:a00:4               backup
d-vm1    d (0x22)    10.0.0.4         fd41:6464:9:3930:22:6600:a00:4 (VIP)   backup
a-vm3    a (0x1f)    10.0.0.6         (fd41::3930:1f:6600:a00:6)             nothing
=======  ==========  ===============  =====================================  ===========

Known gaps are written as strict ``xfail`` tests (or raise :class:`KnownGap`, which only
the case that documents it may raise): they fail the suite the day the platform
changes, so the documentation (docs/lab.md, "The security matrix") is kept true.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, TCPerror
from scapy.layers.inet6 import (
    ICMPv6PacketTooBig,
    IPerror6,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Jumbo,
    fragment6,
)
from scapy.layers.l2 import ARP, Ether
from vnet64 import gateway
from vnet64.controller.pipeline import ERROR_METER, HOST_TABLES, PACKET_IN_METER
from vnet64.nb import api as nbapi
from vnet64_lab import Lab, sh
from vnet64_lab.plan import XLAT_NFT_RH_COUNTER, XLAT_NFT_TABLE

from tests.lab.conftest import KnownGap, need_lab
from tests.lab.traffic import (
    meter_drops,
    LINE_PORT,
    PLATFORM_IP,
    TCP_PORT,
    UDP_PORT,
    LineSession,
    Pcap,
    Rogue,
    answer,
    assert_controller_healthy,
    carrying,
    client,
    controller_log_marks,
    controller_log_text,
    coverage,
    drop_counts,
    flow_packets,
    flows,
    ipf_counters,
    meter_inputs,
    misses,
    nft_counter,
    norm,
    nstat,
    ovs_node,
    pair_flows,
    ping,
    running_platform,
    send_frames,
    table_counts,
    tunnel_token,
    udp_many,
    vif,
    wait_for,
)

TOPOLOGY = """\
name: security-matrix
platform: {platform_ip: 100.100.0.1, translator_prefix: "fd64:64::/96", region: westeurope,
           appliance: appliance}
regions: [{name: westeurope, id: 0x3930}]
nodes:
  - {name: appliance, role: appliance, underlay_ip: 192.168.64.10}
  - {name: host1, role: host, underlay_ip: 192.168.64.11}
  - {name: host2, role: host, underlay_ip: 192.168.64.12}
vnets:
  - {name: customer-a, id: 0x1f, cidrs: [10.0.0.0/16],
     subnets: [{name: default, id: 0x6600, cidr: 10.0.0.0/24}, {name: db, id: 0x6601, cidr: 10.0.1.0/24}]}
  - {name: customer-b, id: 0x20, cidrs: [10.0.0.0/16],
     subnets: [{name: default, id: 0x6600, cidr: 10.0.0.0/24}]}
  - {name: customer-c, id: 0x21, cidrs: [10.0.0.0/16],
     subnets: [{name: default, id: 0x6600, cidr: 10.0.0.0/24}]}
  - {name: customer-d, id: 0x22, cidrs: [10.0.0.0/16], snat_vip: 100.100.0.9,
     subnets: [{name: default, id: 0x6600, cidr: 10.0.0.0/24}]}
vms:
  - {name: a-vm1, vnet: customer-a, ipv4: 10.0.0.4, host: host1}
  - {name: b-vm1, vnet: customer-b, ipv4: 10.0.0.4, host: host1}
  - {name: a-vm2, vnet: customer-a, ipv4: 10.0.0.5, host: host1}
  - {name: a-db1, vnet: customer-a, subnet: db, ipv4: 10.0.1.4, host: host1}
  - {name: c-vm1, vnet: customer-c, ipv4: 10.0.0.4, host: host1}
  - {name: d-vm1, vnet: customer-d, ipv4: 10.0.0.4, host: host1}
  - {name: a-vm3, vnet: customer-a, ipv4: 10.0.0.6, host: host1}
services:
  - {name: analytics, endpoints: [{name: svc1, ipv6: "fd00:5e:1::10", host: host2}]}
  - {name: backup, endpoints: [{name: bk1, ipv6: "fd00:5e:2::10", host: host2}]}
subscriptions:
  - {vm: a-vm1, service: analytics}
  - {vm: b-vm1, service: analytics}
  - {vm: a-vm2, service: backup}
  - {vm: a-db1, service: backup}
  - {vm: c-vm1, service: backup}
  - {vm: d-vm1, service: backup}
"""
SVC1, BK1 = "fd00:5e:1::10", "fd00:5e:2::10"
ADDR = {
    "a-vm1": "fd41::3930:1f:6600:a00:4", "b-vm1": "fd41::3930:20:6600:a00:4",
    "a-vm2": "fd41::3930:1f:6600:a00:5", "a-db1": "fd41::3930:1f:6601:a00:104",
    "c-vm1": "fd41::3930:21:6600:a00:4", "d-vm1": "fd41:6464:9:3930:22:6600:a00:4",
    "a-vm3": "fd41::3930:1f:6600:a00:6",
}
A6 = ADDR["a-vm1"]
VIP = "100.100.0.9"
ANALYTICS_VMS, BACKUP_VMS = ("a-vm1", "b-vm1"), ("a-vm2", "a-db1", "c-vm1", "d-vm1")
VMS = (*ANALYTICS_VMS, *BACKUP_VMS, "a-vm3")
GW = gateway.GATEWAY_MAC
# host pipeline tables, from the controller's one table map (the appliance's classify and
# from_tunnel have the same ids)
CLASSIFY, FROM_TUNNEL, TO_ENDPOINT, FROM_VM, VM_RETURN = (
    HOST_TABLES.id(n) for n in ("classify", "from_tunnel", "to_endpoint", "from_vm", "vm_return"))


class Env:
    """The module's platform, a long-lived connection of another tenant, and captures on
    every VM's veth for the whole module (tests look for their own markers in them)."""

    def __init__(self, lab: Lab, plan, pcaps):
        self.lab, self.plan, self.pcaps = lab, plan, pcaps
        self.nb = nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock")
        self.vm_caps: dict[str, Pcap] = {}
        self.session: LineSession | None = None
        self.session_port: str | None = None
        self.zones = {v["name"]: v["ct_zone"] for v in self.nb.list("vnet")}

    def ns(self, node: str) -> str:
        return self.plan.node(node).ns

    def underlay(self, node: str) -> str:
        return str(self.plan.node(node).underlay_ip.ip)

    def capture(self, where: str, iface: str, bpf: str = "") -> Pcap:
        ns = self.plan.fabric_ns if where == "fabric" else self.ns(where)
        return Pcap(ns, iface, self.pcaps, bpf=bpf)

    def arrived(self, marker: str, vms=VMS, exclude: tuple = ()) -> dict[str, int]:
        """VM -> packets carrying ``marker`` seen on its veth (only where there are some)."""
        out = {}
        for vm in vms:
            if vm not in exclude and (n := len(carrying(self.vm_caps[vm].packets(), marker))):
                out[vm] = n
        return out

    def log_offset(self) -> dict:
        """Where every controller's log ends now (each node's, or the central one)."""
        return controller_log_marks(self.lab)

    def log_since(self, offset: dict) -> str:
        return controller_log_text(self.lab, offset)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    need_lab()
    topo = tmp_path_factory.mktemp("security") / "security.yaml"
    topo.write_text(TOPOLOGY)
    pcaps = tmp_path_factory.mktemp("pcaps")
    with running_platform(Lab("v64y-", "/run/vnet64-lab-y"), topo) as (lab, plan):
        e = Env(lab, plan, pcaps)
        try:
            with ThreadPoolExecutor(len(VMS)) as pool:   # tcpdump takes a moment to listen
                started = {vm: pool.submit(Pcap, e.ns("host1"), vif(plan, vm).port, pcaps) for vm in VMS}
            failed = [f.exception() for f in started.values() if f.exception()]
            e.vm_caps = {vm: f.result() for vm, f in started.items() if not f.exception()}
            if failed:
                raise failed[0]
            e.session = LineSession(plan, ADDR["b-vm1"], LINE_PORT)
            name, seen, e.session_port, _ = answer(e.session.send("hello"))
            assert (name, seen) == ("b-vm1", PLATFORM_IP)
            yield e
        finally:
            if e.session is not None:
                e.session.close()
            for cap in e.vm_caps.values():
                cap.stop()
            e.nb.close()


def assert_nothing_crashed_and_tenants_work(e: Env, tag: str) -> None:
    """The controller is fine, and every tenant still reaches its VMs: the long-lived
    connection (same Platform_IP port), and one datagram per subscribed VM."""
    assert_controller_healthy(e.lab)
    name, seen, port, _ = answer(e.session.send(f"still-{tag}"))
    assert (name, seen, port) == ("b-vm1", PLATFORM_IP, e.session_port), "b-vm1's connection was disturbed"
    for source, vms in (("svc1", ANALYTICS_VMS), ("bk1", BACKUP_VMS)):
        out = udp_many(e.plan, source, [ADDR[vm] for vm in vms], f"health-{tag}")
        missing = [vm for vm in vms if norm(ADDR[vm]) not in out["replies"]]
        if missing:
            # UDP is lossy on a loaded 2-core machine: ask once more before calling a
            # tenant broken (a broken path stays silent on the second try too).
            again = udp_many(e.plan, source, [ADDR[vm] for vm in missing], f"health-{tag}")
            out["replies"].update(again["replies"])
        for vm in vms:
            reply = out["replies"].get(norm(ADDR[vm]))
            assert reply, f"{source} -> {vm} stopped working after {tag}: {out}"
            name, seen, _ = reply.split(" ", 2)
            want = VIP if vm == "d-vm1" else PLATFORM_IP
            assert (name, seen.rsplit(":", 1)[0]) == (vm, want), reply


def deny_flow(e: Env, src: str, dst: str) -> bool:
    return any(f"ipv6_src={src},ipv6_dst={dst} " in line and "priority=200" in line
               for line in flows(e.plan, "host1", "table=20").splitlines())


def appliance_dropped(e: Env) -> int:
    """Packets the appliance's ``route`` stage dropped (its counted miss flow)."""
    return flow_packets(e.plan, "appliance", "priority=0", "table=2")


def eth(e: Env, who: str):
    return Ether(src=vif(e.plan, who).mac, dst=GW)


# ---------------------------------------------------------------------------
# The service side: subscriptions


def test_a_service_without_a_subscription_cannot_reach_a_subscribed_vm(env):
    """bk1 (service backup) -> a-vm1 and b-vm1 (subscribed to analytics only): the
    appliance forwards by destination, host1's pair stage punts the first packet and
    the controller refuses it - a 5 s deny flow then drops the rest without punting."""
    e = env
    offset = e.log_offset()
    out = udp_many(e.plan, "bk1", [A6, ADDR["b-vm1"]], "bk1-probe", timeout=0.5)
    assert not out["replies"], f"an unsubscribed service got answers: {out}"
    assert client(e.plan, "tcp", A6, TCP_PORT, "bk1-tcp", timeout=1.0, source="bk1").get("error")
    assert ping(e.plan, A6, count=2, source="bk1")[1] == 0
    for vm in ANALYTICS_VMS:
        assert wait_for(lambda vm=vm: deny_flow(e, BK1, ADDR[vm]), 5), flows(e.plan, "host1", "table=20")
        assert f"refused pair {BK1} -> {ADDR[vm]}" in e.log_since(offset)
    # the TCP retries and pings after the first packet hit the deny flow, not the controller
    assert wait_for(lambda: flow_packets(e.plan, "host1", f"ipv6_src={BK1},ipv6_dst={A6} ", "table=20") >= 2, 5)
    assert e.log_since(offset).count(f"refused pair {BK1} -> {A6}") <= 2
    assert not e.arrived("bk1-"), "a packet of the unsubscribed service reached a VM"
    assert (BK1, A6) not in pair_flows(e.plan, "host1")
    assert_nothing_crashed_and_tenants_work(e, "unsubscribed-service")


# (case, crafted address from svc1, what the address hits, who refuses it)
CRAFTED = [
    ("other-vnet-id", "fd41::3930:21:6600:a00:4", "c-vm1 (VNet 0x21, backup only)", "controller"),
    ("unknown-vnet-id", "fd41::3930:99:6600:a00:4", "no VNet 0x99", "appliance"),
    ("other-subnet-same-ipv4", "fd41::3930:1f:6601:a00:4", "no VM", "appliance"),
    ("other-subnet-vm", "fd41::3930:1f:6601:a00:104", "a-db1 (backup only)", "controller"),
    ("other-ipv4", "fd41::3930:1f:6600:a00:5", "a-vm2 (backup only)", "controller"),
    ("other-ipv4-unsubscribed-vm", "fd41::3930:1f:6600:a00:6", "a-vm3 (no subscription)", "appliance"),
    ("other-ipv4-no-vm", "fd41::3930:1f:6600:a00:63", "no VM at 10.0.0.99", "appliance"),
    ("snat-vip-set", "fd41:6464:9:3930:1f:6600:a00:4", "a-vm1 with d's VIP: not a mapping", "appliance"),
    ("snat-vip-platform-ip", "fd41:6464:1:3930:1f:6600:a00:4", "a-vm1 with VIP=Platform_IP", "appliance"),
    ("snat-vip-removed", "fd41::3930:22:6600:a00:4", "d-vm1 without its VIP", "appliance"),
    ("snat-vip-vm", ADDR["d-vm1"], "d-vm1 (VIP 100.100.0.9, backup only)", "controller"),
    ("other-region", "fd41::3931:1f:6600:a00:4", "region 0x3931", "appliance"),
]


@pytest.mark.parametrize("case, addr, hits, refused_by", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_a_subscribed_service_cannot_reach_other_vms_by_crafting_addresses(env, case, addr, hits, refused_by):
    """svc1 holds analytics' subscriptions (a-vm1, b-vm1) and writes other addresses by
    hand. An address that is no subscribed VM's dies at the appliance (counted by its
    ``route`` miss flow, never punted); one that is another service's VM passes the
    appliance and is refused by the controller at host1 (deny flow + log)."""
    e = env
    marker = f"craft-{case}"
    dropped, offset = appliance_dropped(e), e.log_offset()
    out = udp_many(e.plan, "svc1", [addr], marker, timeout=0.5)
    assert not out["replies"], f"{addr} ({hits}) answered svc1: {out}"
    if refused_by == "appliance":
        assert wait_for(lambda: appliance_dropped(e) > dropped, 5), "the appliance did not count the drop"
        want = ("appliance", "unknown_destination")
    else:
        assert wait_for(lambda: deny_flow(e, SVC1, addr), 5), flows(e.plan, "host1", "table=20")
        want = ("host1", "refused_pair")
    # the trace of the same packet, from the flows the nodes hold, ends on the named drop:
    # the appliance's route miss, or host1's hold (5 s) of the pair the controller refused
    last = traced(e, "svc1", addr, "udp", str(UDP_PORT))[-1]
    assert (last["node"], last["outcome"], last["reason"]) == (want[0], "dropped", want[1]), last
    if refused_by == "appliance":
        assert addr not in flows(e.plan, "host1") + e.log_since(offset)
    else:
        assert f"refused pair {SVC1} -> {addr}" in e.log_since(offset)
        assert (SVC1, addr) not in pair_flows(e.plan, "host1")
    assert not e.arrived(marker), f"the crafted packet reached a VM: {e.arrived(marker)}"
    assert_nothing_crashed_and_tenants_work(e, case)


def traced(e: Env, *args: str) -> list[dict]:
    """``vnet64-lab trace ARGS --json`` on the module's lab: its hops."""
    env = dict(os.environ, VNET64_LAB_PREFIX=e.lab.prefix, VNET64_LAB_RUN_DIR=str(e.lab.run_dir))
    proc = subprocess.run([sys.executable, "-m", "vnet64_lab.cli", "trace", *args, "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["hops"]


# ---------------------------------------------------------------------------
# The customer side


def test_a_customer_vm_cannot_reach_another_vnet_a_twin_or_a_service(env, tmp_path):
    """a-vm1 sends, by hand, everything a VM could try through the platform: its twin
    b-vm1 (same IPv4, other VNet) by MAC, another subnet, the pairs' aliases, TAYGA, a
    SNAT VIP, IPv6 to a service and to a platform address, a spoofed source, ARP for
    other addresses. ``from_vm`` only knows ARP for the VM's gateway and IPv4 from the
    VM's own address to Platform_IP: each of them is a table-miss there."""
    e = env
    a, b = vif(e.plan, "a-vm1"), vif(e.plan, "b-vm1")
    aliases = sorted({str(s) for s in re.findall(r"nw_dst=(198\.1[89]\.\d+\.\d+)", flows(e.plan, "host1"))})
    assert aliases, "no pair alias found on host1"

    def udp4(dst: str, tag: str, src: str = "10.0.0.4"):
        return eth(e, "a-vm1") / IP(src=src, dst=dst) / UDP(sport=8081, dport=40000) / f"vmtry-{tag}".encode()

    frames = [
        Ether(src=a.mac, dst=b.mac) / IP(src="10.0.0.4", dst="10.0.0.4") / UDP(sport=1, dport=UDP_PORT)
        / b"vmtry-twin-l2",
        udp4("10.0.1.4", "other-subnet"), udp4("10.0.0.5", "same-vnet"),
        *[udp4(alias, f"alias-{alias}") for alias in aliases],
        udp4(str(e.plan.settings.translator_ipv4), "tayga"), udp4(VIP, "snat-vip"),
        udp4(PLATFORM_IP, "spoofed-source", src="10.0.0.5"),
        eth(e, "a-vm1") / IPv6(src=A6, dst=SVC1) / UDP(sport=UDP_PORT, dport=40000) / b"vmtry-v6-service",
        eth(e, "a-vm1") / IPv6(src=A6, dst=ADDR["b-vm1"]) / UDP(sport=1, dport=UDP_PORT) / b"vmtry-v6-twin",
        *[Ether(src=a.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=a.mac, psrc="10.0.0.4", pdst=t)
          for t in ("10.0.0.5", PLATFORM_IP, "10.0.0.4", "192.0.0.1")],
    ]
    before = table_counts(e.plan, "host1")
    with Pcap(e.ns("host1"), "xlat0", tmp_path) as xlat, \
            e.capture("host2", "s-svc1") as svc, e.capture("host2", "s-bk1") as bk, \
            e.capture("fabric", e.plan.node("host1").fabric_if, f"src host {e.underlay('host1')}") as fab:
        assert send_frames(a.ns, "eth0", frames) == len(frames)
        dropped = wait_for(lambda: misses(before, table_counts(e.plan, "host1"), FROM_VM) >= len(frames), 5)
        got = {"xlat0": xlat.packets(), "s-svc1": svc.packets(), "s-bk1": bk.packets(), "fabric": fab.packets()}
    assert dropped, f"only {misses(before, table_counts(e.plan, 'host1'), FROM_VM)} of {len(frames)} " \
                    "frames were table-misses in from_vm"
    for where, pkts in got.items():
        assert not carrying(pkts, "vmtry-"), f"a-vm1's frame reached {where}"
    assert not e.arrived("vmtry-", exclude=("a-vm1",)), e.arrived("vmtry-", exclude=("a-vm1",))
    arp_replies = [p for p in e.vm_caps["a-vm1"].packets() if p.haslayer(ARP) and p[ARP].op == 2
                   and p[ARP].psrc != "10.0.0.1" and p[ARP].pdst == "10.0.0.4"]
    assert not arp_replies, "the platform answered ARP for something else than the gateway"
    assert_nothing_crashed_and_tenants_work(e, "vm-tries")


VM_CONNECT = r"""
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
        out[target] = "connected"
    except OSError as exc:
        out[target] = type(exc).__name__
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(0.5)
u.sendto(b"vm-start-udp", (sys.argv[1].rsplit(":", 1)[0], 5353))
try:
    u.recvfrom(100)
    out["udp"] = "answered"
except OSError as exc:
    out["udp"] = type(exc).__name__
print(json.dumps(out))
"""


def test_a_customer_vm_cannot_start_connections_to_platform_ip(env, tmp_path):
    """Platform_IP (and a VNet's SNAT VIP) only ever answers: a VM's SYN, datagram or
    ping to it is ``+new`` in the VNet zone and ``vm_return`` passes replies only - even
    to the very port an open connection of its twin uses. Nothing is committed to
    conntrack, nothing reaches the translator."""
    e = env
    before = table_counts(e.plan, "host1")
    with Pcap(e.ns("host1"), "xlat0", tmp_path) as xlat:
        results = {}
        for vm, addr in (("a-vm1", PLATFORM_IP), ("d-vm1", VIP)):
            proc = subprocess.run([sh.tool("ip"), "netns", "exec", vif(e.plan, vm).ns, sys.executable, "-c",
                                   VM_CONNECT, f"{addr}:22", f"{addr}:{e.session_port}"],
                                  capture_output=True, text=True, timeout=30, check=False)
            results[vm] = json.loads(proc.stdout)
            pinged = subprocess.run([sh.tool("ip"), "netns", "exec", vif(e.plan, vm).ns, "ping", "-c", "2",
                                     "-i", "0.2", "-W", "1", addr], capture_output=True, text=True,
                                    check=False)
            results[vm]["ping"] = re.search(r"(\d+) received", pinged.stdout).group(1)
        assert wait_for(lambda: misses(before, table_counts(e.plan, "host1"), VM_RETURN) >= 8, 5), \
            misses(before, table_counts(e.plan, "host1"), VM_RETURN)
        tried = xlat.packets()
    print(f"\n{results}")
    for vm, r in results.items():
        assert all(v in ("TimeoutError", "timeout") for k, v in r.items() if k != "ping"), (vm, r)
        assert r["ping"] == "0", (vm, r)
    from_vms = [p.summary() for p in tried if p.haslayer(IP) and p[IP].src == "10.0.0.4"]
    assert not from_vms, f"a VM's attempt reached the translator: {from_vms}"
    for vm, zone_of in (("a-vm1", "customer-a"), ("d-vm1", "customer-d")):
        started = [c for c in conntrack_zone(e, zone_of) if "orig=(src=10.0.0.4," in c]
        assert not started, f"{vm}'s attempts were committed to conntrack: {started}"
    assert_nothing_crashed_and_tenants_work(e, "vm-starts")


def conntrack_zone(e: Env, vnet: str) -> list[str]:
    return ovs_node(e.plan, "host1").appctl("dpctl/dump-conntrack", f"zone={e.zones[vnet]}").splitlines()


def test_spoofed_returns_to_platform_ip_without_a_connection_are_dropped(env, tmp_path):
    """Reply-shaped packets to Platform_IP - UDP, TCP ACK/SYN-ACK/RST, ICMP echo reply,
    an ICMP error quoting a flow - from a-vm1 aimed at b-vm1's open connection (its
    Platform_IP port; same IPv4, other VNet zone) and from b-vm1 at ports it has no
    connection on. None is a reply in its VNet's zone: all die in ``vm_return``."""
    e = env
    live = int(e.session_port)
    ct = [c for c in conntrack_zone(e, "customer-b") if f"dport={live})" in c]
    assert ct and "ESTABLISHED" in ct[0], ct

    def spoofs(who: str, port: int) -> list:
        def ip():
            return eth(e, who) / IP(src="10.0.0.4", dst=PLATFORM_IP)
        tag = f"spoof-{who}-{port}"
        return [
            ip() / UDP(sport=UDP_PORT, dport=port) / f"{tag}-udp".encode(),
            ip() / TCP(sport=LINE_PORT, dport=port, flags="PA", seq=1, ack=1) / f"{tag}-ack".encode(),
            ip() / TCP(sport=LINE_PORT, dport=port, flags="SA", seq=1, ack=1) / f"{tag}-synack".encode(),
            ip() / TCP(sport=LINE_PORT, dport=port, flags="R", seq=1) / f"{tag}-rst".encode(),
            ip() / ICMP(type=0, id=port, seq=1) / f"{tag}-echo".encode(),
            ip() / ICMP(type=3, code=3) / IP(src=PLATFORM_IP, dst="10.0.0.4", proto=6)
            / TCPerror(sport=port, dport=LINE_PORT) / f"{tag}-icmperr".encode(),
        ]
    frames = {"a-vm1": spoofs("a-vm1", live), "b-vm1": spoofs("b-vm1", live + 1 if live < 65535 else live - 1)}
    before = table_counts(e.plan, "host1")
    with Pcap(e.ns("host1"), "xlat0", tmp_path) as xlat, e.capture("host2", "s-svc1") as svc:
        for who, fs in frames.items():
            assert send_frames(vif(e.plan, who).ns, "eth0", fs) == len(fs)
        n = sum(len(fs) for fs in frames.values())
        dropped = wait_for(lambda: misses(before, table_counts(e.plan, "host1"), VM_RETURN) >= n, 5)
        got = xlat.packets() + svc.packets()
    assert dropped, f"{misses(before, table_counts(e.plan, 'host1'), VM_RETURN)} of {n} dropped in vm_return"
    assert not carrying(got, "spoof-"), [p.summary() for p in carrying(got, "spoof-")]
    assert_nothing_crashed_and_tenants_work(e, "spoofed-returns")


# ---------------------------------------------------------------------------
# The underlay


@pytest.fixture
def rogue(env):
    r = Rogue(env.plan)
    try:
        yield r
    finally:
        r.remove()


def _fwd_inner(tag: str):
    return Ether(src="02:00:00:00:00:01", dst=GW) / IPv6(src=SVC1, dst=A6) / UDP(sport=45001, dport=UDP_PORT) \
        / tag.encode()


def _ret_inner(tag: str):
    return Ether(src=GW, dst="02:00:00:00:00:02") / IPv6(src=A6, dst=SVC1) / UDP(sport=UDP_PORT, dport=45001) \
        / tag.encode()


def test_forged_geneve_from_a_node_that_is_not_the_appliance_or_a_host_is_dropped(env, rogue, tmp_path):
    """A rogue node on the fabric sends well-formed Geneve (VNI 0x6464) that would reach
    a-vm1 (svc1's pair exists) or svc1 if accepted - even with the right tunnel token
    (as if it had learnt it), so that what drops them is the outer source check: to
    host1 (table-miss in ``from_tunnel``), to the appliance (its counted ``from_tunnel``
    drop flow), a forged return to host2 (table-miss in ``from_tunnel``), and - claiming
    host2's address - a known host trying to bypass the appliance for an address that is
    none of its endpoints (host1 takes a host's packets to a platform address only on the
    direct path of a pair of that host's own endpoint: counted as ``not_direct``); a wrong
    VNI is a table-miss in ``classify``. (What claims host2's address *and* carries the
    token and one of host2's endpoints as source is host2's for the platform, as what
    claims the appliance's with the token is the appliance's: the token is the secret.)"""
    e = env
    assert answer(client(e.plan, "udp", A6, UDP_PORT, "pair-exists"))[0] == "a-vm1"
    before = {n: table_counts(e.plan, n) for n in ("host1", "host2")}
    appliance_drop = flow_packets(e.plan, "appliance", "priority=0", "table=1")
    not_direct = drop_counts(e.plan, "host1").get("not_direct", 0)
    token = int(tunnel_token(e.plan), 16)
    not_an_endpoint = Ether(src="02:00:00:00:00:01", dst=GW) / IPv6(src="fd00:5e:1::99", dst=A6) \
        / UDP(sport=45001, dport=UDP_PORT) / b"rogue-bypass"
    forged = [
        rogue.geneve("host1", _fwd_inner("rogue-to-host1"), token=token),
        rogue.geneve("appliance", _fwd_inner("rogue-via-appliance"), token=token),
        rogue.geneve("host2", _ret_inner("rogue-return"), token=token),
        rogue.geneve("host1", not_an_endpoint, src=e.underlay("host2"), token=token),
        rogue.geneve("host1", _fwd_inner("rogue-vni"), src=e.underlay("appliance"), vni=0x1234,
                      token=token),
    ]
    with e.capture("host2", "s-svc1") as svc, Pcap(e.ns("host1"), "xlat0", tmp_path) as xlat:
        assert rogue.send(forged) == len(forged)

        def all_dropped() -> bool:
            h1, h2 = table_counts(e.plan, "host1"), table_counts(e.plan, "host2")
            return (misses(before["host1"], h1, FROM_TUNNEL) >= 1
                    and drop_counts(e.plan, "host1").get("not_direct", 0) > not_direct
                    and misses(before["host1"], h1, CLASSIFY) >= 1 and misses(before["host2"], h2, FROM_TUNNEL) >= 1
                    and flow_packets(e.plan, "appliance", "priority=0", "table=1") > appliance_drop)
        dropped = wait_for(all_dropped, 5)
        got = svc.packets() + xlat.packets()
    assert dropped, ({n: {t: misses(before[n], table_counts(e.plan, n), t)
                          for t in (CLASSIFY, FROM_TUNNEL, TO_ENDPOINT)} for n in before},
                     drop_counts(e.plan, "host1"))
    assert not carrying(got, "rogue-"), "a forged Geneve packet got through"
    assert not e.arrived("rogue-"), e.arrived("rogue-")
    assert_nothing_crashed_and_tenants_work(e, "rogue")


def test_geneve_spoofing_the_appliance_address_is_dropped_without_the_token(env, rogue):
    """A node that can spoof the appliance's underlay address sends host1 Geneve for
    a-vm1 (svc1's pair exists): without the tunnel token, with a wrong one, and with
    the token's option under another type. host1 drops each in ``from_tunnel`` (its
    miss, counted); a-vm1 sees none. Only the right token (which a node that cannot
    read the fabric's traffic does not know) would get through."""
    e = env
    assert answer(client(e.plan, "udp", A6, UDP_PORT, "pair-exists"))[0] == "a-vm1"
    token = int(tunnel_token(e.plan), 16)
    appliance = e.underlay("appliance")
    forged = [rogue.geneve("host1", _fwd_inner("spoofed-appliance-none"), src=appliance),
              rogue.geneve("host1", _fwd_inner("spoofed-appliance-wrong"), src=appliance,
                            token=token ^ 0x0101_0101)]
    other_type = rogue.geneve("host1", _fwd_inner("spoofed-appliance-type"), src=appliance, token=token)
    other_type["GENEVE"].options[0].type = 0x65
    forged.append(other_type)
    before = table_counts(e.plan, "host1")
    assert rogue.send(forged) == len(forged)
    dropped = wait_for(lambda: misses(before, table_counts(e.plan, "host1"), FROM_TUNNEL) >= len(forged), 5)
    reached = e.arrived("spoofed-appliance")
    assert not reached, f"a Geneve packet with the appliance's spoofed address reached {reached}"
    assert dropped, misses(before, table_counts(e.plan, "host1"), FROM_TUNNEL)
    assert_nothing_crashed_and_tenants_work(e, "spoofed-appliance")


def test_geneve_spoofing_a_host_cannot_inject_replies_into_an_endpoint(env, rogue):
    """A node spoofing host1's underlay address sends svc1 a "reply" from a-vm1's platform
    address for a connection svc1 never made. Without the tunnel token host2 drops it in
    ``from_tunnel``; with it (a node that learnt the token) host2's state for its
    endpoints (endpoint zone, service module doc) stops it in ``to_endpoint``. Both are
    counted as those tables' misses. Only the token *and* a live connection's exact
    addresses and ports would get through."""
    e = env
    token = int(tunnel_token(e.plan), 16)
    before = table_counts(e.plan, "host2")
    with e.capture("host2", "s-svc1") as svc:
        rogue.send([rogue.geneve("host2", _ret_inner("spoofed-host-reply"), src=e.underlay("host1")),
                    rogue.geneve("host2", _ret_inner("spoofed-host-reply-token"), src=e.underlay("host1"),
                                 token=token)])

        def dropped() -> bool:
            after = table_counts(e.plan, "host2")
            return misses(before, after, FROM_TUNNEL) >= 1 and misses(before, after, TO_ENDPOINT) >= 1
        was_dropped = wait_for(dropped, 3)
        got = svc.wait(lambda p: carrying(p, "spoofed-host-reply"), 1)
    assert not carrying(got, "spoofed-host-reply"), "a forged reply from a spoofed host address reached svc1"
    assert was_dropped, "host2 did not count the forged replies as misses of from_tunnel and to_endpoint"
    assert_nothing_crashed_and_tenants_work(e, "spoofed-host")


# ---------------------------------------------------------------------------
# Malformed traffic from the service side


@dataclass
class Bad:
    """One malformed-input case: how svc1 sends it, what the platform does with it, and
    the counter that proves where."""

    send: Callable[[Env, str], dict | None]     # sends the case, given its marker
    dropped_at: str | None                      # None: translated and delivered to a-vm1
    where: str                                  # what happens (docs/lab.md says the same)
    counted: Callable[[dict, dict], bool] | None = None   # (before, after) snapshots
    log: tuple[str, str] | None = None          # (node, text) ovs-vswitchd logs for it
    mtu: int | None = None                      # svc1's link MTU for the case
    check_vm: Callable[[list], str | None] | None = None  # what a-vm1 got, else a problem
    gap: str | None = None                      # a known gap (strict xfail) ...
    rfc_done: Callable[[list, dict | None], bool] | None = None   # ... unless this holds


def frames(build: Callable[[Env, str], list]) -> Callable[[Env, str], None]:
    """A ``send`` that puts hand-made frames on svc1's eth0."""
    def send(e: Env, marker: str) -> None:
        n = send_frames(vif(e.plan, "svc1").ns, "eth0", build(e, marker))
        assert n >= 1, "svc1's kernel refused the frames"
    return send


def udp6(e: Env, marker: str, dst: str = A6, src: str = SVC1, size: int | None = None, ext=None, **ip6):
    """svc1 -> ``dst`` UDP to the echo port carrying ``marker`` (an IPv6 packet of ``size``
    bytes when given), with an extension header ``ext`` before UDP."""
    head = IPv6(src=src, dst=dst, **ip6) / ext if ext is not None else IPv6(src=src, dst=dst, **ip6)
    payload = marker.encode()
    if size is not None:
        payload = payload.ljust(size - len(head / UDP()), b"p")
    return eth(e, "svc1") / head / UDP(sport=41000, dport=UDP_PORT) / payload


def rh_segments_left_1(e: Env, marker: str) -> list:
    """A type 0 routing header with Segments Left 1 (final hop: b-vm1's address) and a
    UDP checksum valid for the header's destination, as a middlebox that ignores routing
    headers computes it."""
    def build(segleft: int, chksum=None):
        return eth(e, "svc1") / IPv6(src=SVC1, dst=A6) / IPv6ExtHdrRouting(
            type=0, addresses=[ADDR["b-vm1"]], segleft=segleft) \
            / UDP(sport=41000, dport=UDP_PORT, chksum=chksum) / marker.encode()
    spent = Ether(bytes(build(0)))
    return [build(1, chksum=spent[UDP].chksum)]


def parameter_problem_at_segments_left(pkts: list, _) -> bool:
    """svc1 got RFC 7915 5.1's answer to ``rh_segments_left_1``: a Parameter Problem, code
    0, pointing at Segments Left (byte 43: the routing header follows the IPv6 header),
    from a-vm1's platform address, quoting svc1's own packet."""
    return any(p.haslayer(ICMPv6ParamProblem) and p[IPv6].src == A6
               and (p[ICMPv6ParamProblem].code, p[ICMPv6ParamProblem].ptr) == (0, 43)
               and (p[IPerror6].src, p[IPerror6].dst) == (SVC1, A6) for p in pkts)


def tiny_fragments(e: Env, marker: str) -> list:
    p = IPv6(src=SVC1, dst=A6) / IPv6ExtHdrFragment(id=random.randint(1, 2**31)) \
        / UDP(sport=41000, dport=UDP_PORT) / marker.encode().ljust(600, b"f")
    return [eth(e, "svc1") / f for f in fragment6(p, 300)]     # under 400: too small even now


def snapshot(e: Env) -> dict:
    return {
        "tables": {n: table_counts(e.plan, n) for n in ("host2", "appliance", "host1")},
        "ipf": ipf_counters(e.plan, "host1"),
        "xlat": nstat(e.plan.translator("host1").ns),
        "rh_dropped": nft_counter(e.plan.translator("host1").ns, "netdev", XLAT_NFT_TABLE,
                                  XLAT_NFT_RH_COUNTER),
        "cov": {c: coverage(e.plan, "host2", c) for c in ("miniflow_extract_ipv6_pkt_too_short",
                                                             "miniflow_extract_ipv6_pkt_len_error")},
        "logs": {n: vswitchd_log(e, n).stat().st_size for n in ("host1", "host2")},
        "drops": {n: drop_counts(e.plan, n) for n in ("host2", "appliance", "host1")},
        "punted": {n: meter_inputs(e.plan, n) for n in ("host2", "host1")},
    }


def vswitchd_log(e: Env, node: str):
    return e.lab.run_dir / "nodes" / node / "ovs-vswitchd.log"


def grew(path: tuple[str, ...]) -> Callable[[dict, dict], bool]:
    """A counter of the snapshot (e.g. ("ipf", "v6 frags too small")) went up."""
    def get(snap: dict) -> int:
        for key in path:
            snap = snap.get(key, 0) if isinstance(snap, dict) else 0
        return int(snap)
    return lambda b, a: get(a) > get(b)


def counted_as(node: str, reason: str) -> Callable[[dict, dict], bool]:
    """``node`` counted (more) packets it did not forward under ``reason``
    (``pipeline.DROP_REASONS``, what ``vnet64-node stats`` reads)."""
    return lambda b, a: a["drops"][node].get(reason, 0) > b["drops"][node].get(reason, 0)


def punted(node: str) -> Callable[[dict, dict], bool]:
    """``node`` punted (more) packets through its errors' meter (``ERROR_METER``: the
    gateways' answers). For a Packet Too Big this is the count to read: Open vSwitch
    credits the punt flow behind check_pkt_larger with every packet checked."""
    return lambda b, a: a["punted"][node].get(ERROR_METER, 0) > b["punted"][node].get(ERROR_METER, 0)


def gateway_error_to_svc1(kind, marker: str) -> Callable[[list, dict | None], bool]:
    """Whether svc1 got, from the gateway (fe80::1, its MAC), an ICMPv6 error of class
    ``kind`` quoting the case's packet (its marker), with the path MTU ``send`` returned
    (``result["mtu"]``) for a Packet Too Big."""
    def done(pkts: list, result: dict | None) -> bool:
        return any(p.haslayer(kind) and norm(p[IPv6].dst) == SVC1
                   and norm(p[IPv6].src) == str(gateway.SERVICE_GATEWAY_IPV6) and p[Ether].src == GW
                   and marker.encode() in bytes(p[kind].payload)
                   and (kind is not ICMPv6PacketTooBig or p[kind].mtu == result["mtu"])
                   for p in pkts)
    return done


def with_path_mtu(send: Callable[[Env, str], None]) -> Callable[[Env, str], dict]:
    """``send``, returning the path MTU a Packet Too Big must carry (svc1's planned MTU:
    the lab gives the controller the same number, ``--vnet64-path-mtu``)."""
    def run(e: Env, marker: str) -> dict:
        send(e, marker)
        return {"mtu": vif(e.plan, "svc1").mtu}
    return run


def plain_ipv4_from_platform_ip(pkts: list) -> str | None:
    bad = [p for p in pkts if not p.haslayer(IP) or p[IP].ihl != 5 or p[IP].src != PLATFORM_IP]
    return f"not a plain IPv4 packet from Platform_IP: {bad[0].summary()}" if bad else None


def ipv4_fragments(pkts: list) -> str | None:
    if not all(p.haslayer(IP) and p[IP].src == PLATFORM_IP for p in pkts):
        return "a fragment did not come from Platform_IP"
    return None if any(p[IP].flags.MF for p in pkts) else "a-vm1 got no IPv4 fragments"


BAD: dict[str, Bad] = {
    "truncated-ipv6-header": Bad(
        frames(lambda e, m: [bytes(udp6(e, m))[:14 + 30]]), "host2",
        "host2: too short for an IPv6 header (coverage miniflow_extract_ipv6_pkt_too_short), "
        "so no IPv6 fields: table-miss in from_endpoint",
        grew(("cov", "miniflow_extract_ipv6_pkt_too_short"))),
    "truncated-ipv6-payload": Bad(
        frames(lambda e, m: [udp6(e, m, plen=200)]), "host2",
        "host2: payload length beyond the frame (coverage miniflow_extract_ipv6_pkt_len_error): "
        "table-miss in from_endpoint",
        grew(("cov", "miniflow_extract_ipv6_pkt_len_error"))),
    "hop-by-hop-options": Bad(
        frames(lambda e, m: [udp6(e, m, ext=IPv6ExtHdrHopByHop())]), None,
        "translated; TAYGA leaves the header out (RFC 7915 5.1)", check_vm=plain_ipv4_from_platform_ip),
    "destination-options": Bad(
        frames(lambda e, m: [udp6(e, m, ext=IPv6ExtHdrDestOpt())]), None,
        "translated; TAYGA leaves the header out (RFC 7915 5.1)", check_vm=plain_ipv4_from_platform_ip),
    "routing-header-segments-left-0": Bad(
        frames(lambda e, m: [udp6(e, m, ext=IPv6ExtHdrRouting(type=0, addresses=[ADDR["b-vm1"]], segleft=0))]),
        None, "translated; the spent routing header is left out (RFC 7915 5.1)",
        check_vm=plain_ipv4_from_platform_ip),
    "routing-header-segments-left-1": Bad(
        frames(rh_segments_left_1), "host1",
        "not translated (RFC 7915 5.1): host1's translator namespace sends it back before TAYGA "
        "(which would skip the header; nftables counter routing_header_segments_left), "
        "from_translator punts it and the controller answers svc1 with an ICMPv6 Parameter "
        "Problem pointing at Segments Left, from a-vm1's platform address",
        lambda b, a: a["rh_dropped"] > b["rh_dropped"],
        rfc_done=parameter_problem_at_segments_left),
    "fragments": Bad(
        lambda e, m: udp_many(e.plan, "svc1", [A6], m.ljust(3000, "f"), timeout=2), None,
        "translated both ways: svc1's kernel fragments 3000 bytes at its 1442-byte MTU, host1's "
        "conntrack reassembles them to NAT and sends the fragments on, TAYGA turns them into "
        "IPv4 fragments (RFC 7915 5.1.1), a-vm1 reassembles; a-vm1's 3 kB answer, IPv4-"
        "fragmented at its MTU, is reassembled in the translator namespace and cut into pieces "
        "TAYGA translates into IPv6 fragments of at most 1280 bytes (kernel IpReasmOKs there), "
        "which host1's conntrack reassembles again (ipf 'v6 frags completed'): svc1 gets it whole",
        lambda b, a: grew(("xlat", "IpReasmOKs"))(b, a) and grew(("ipf", "v6 frags completed"))(b, a),
        check_vm=ipv4_fragments, rfc_done=lambda pkts, res: bool(res and res["replies"])),
    "tiny-fragments": Bad(
        frames(tiny_fragments), "host1",
        "host1: conntrack's fragment reassembly refuses non-final IPv6 fragments under 400 "
        "bytes, the lowest OVS allows (dpctl/ipf-get-status 'v6 frags too small')",
        grew(("ipf", "v6 frags too small"))),
    "atomic-fragment": Bad(
        frames(lambda e, m: [udp6(e, m, ext=IPv6ExtHdrFragment(id=0x1234, m=0, offset=0))]), None,
        "translated to an unfragmented IPv4 packet (RFC 7915 5.1.1)"),
    "wrong-prefix": Bad(
        frames(lambda e, m: [udp6(e, m, dst=d) for d in ("fd42::3930:1f:6600:a00:4", "2001:db8::a00:4",
                                                          "fe80::a00:4", "ff02::1")]),
        "host2", "host2: from_endpoint steers fd41::/16 only: its miss (not_to_platform)",
        counted_as("host2", "not_to_platform")),
    "spoofed-service-source": Bad(
        frames(lambda e, m: [udp6(e, m, src="fd00:5e:1::99"), udp6(e, m, src=BK1), udp6(e, m, src="::")]),
        "host2", "host2: from_endpoint takes the endpoint's own address only (spoofed_source)",
        counted_as("host2", "spoofed_source")),
    "hop-limit-1": Bad(
        frames(lambda e, m: [udp6(e, m, hlim=1)]), "host2",
        "host2: not forwarded (its gateway is the first hop): from_endpoint punts it (metered) and "
        "the controller sends svc1 an ICMPv6 Time Exceeded from fe80::1 quoting it (RFC 8200, 4443)",
        counted_as("host2", "hop_limit_exceeded"),
        rfc_done=gateway_error_to_svc1(ICMPv6TimeExceeded, "mal-hop-limit-1")),
    "hop-limit-0": Bad(
        frames(lambda e, m: [udp6(e, m, hlim=0)]), "host2", "as hop limit 1",
        counted_as("host2", "hop_limit_exceeded"), rfc_done=gateway_error_to_svc1(ICMPv6TimeExceeded, "mal-hop-limit-0")),
    "jumbo-payload-option": Bad(
        frames(lambda e, m: [eth(e, "svc1") / IPv6(src=SVC1, dst=A6, plen=0)
                             / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=70000)])
                             / UDP(sport=41000, dport=UDP_PORT) / m.encode()]), "host2",
        "host2: OVS parses no further than the hop-by-hop header (payload length 0), so the flow "
        "has no upper layer and no hop limit: dropped by from_endpoint's nw_proto=0 flow (not "
        "taken for hop limit 0; unparsed_headers)",
        counted_as("host2", "unparsed_headers")),
    "largest-that-fits": Bad(
        frames(lambda e, m: [udp6(e, m, size=vif(e.plan, "svc1").mtu)]), None,
        "translated: 1442 bytes of IPv6 reach a-vm1 as 1422 bytes of IPv4"),
    "one-byte-over-the-mtu": Bad(
        with_path_mtu(frames(lambda e, m: [udp6(e, m, size=vif(e.plan, "svc1").mtu + 1)])), "host2",
        "host2: larger than the path MTU (1442: what TAYGA's link and the Geneve underlay carry): "
        "from_endpoint's check_pkt_larger marks it, to_appliance punts it (metered) and the controller "
        "sends svc1 an ICMPv6 Packet Too Big with MTU 1442 from fe80::1 quoting it (RFC 8200, 4443)",
        punted("host2"), mtu=1500,
        rfc_done=gateway_error_to_svc1(ICMPv6PacketTooBig, "mal-one-byte-over-the-mtu")),
    "1500-bytes": Bad(
        with_path_mtu(frames(lambda e, m: [udp6(e, m, size=1500)])), "host2", "as 1443 bytes",
        punted("host2"), mtu=9000,
        rfc_done=gateway_error_to_svc1(ICMPv6PacketTooBig, "mal-1500-bytes")),
    "9000-bytes": Bad(
        with_path_mtu(frames(lambda e, m: [udp6(e, m, size=9000)])), "host2", "as 1443 bytes",
        punted("host2"), mtu=9000,
        rfc_done=gateway_error_to_svc1(ICMPv6PacketTooBig, "mal-9000-bytes")),
}


@contextlib.contextmanager
def endpoint_mtu(e: Env, mtu: int | None):
    """svc1's link MTU (both veth ends) raised for a case, put back afterwards."""
    if mtu is None:
        yield
        return
    v = vif(e.plan, "svc1")
    try:
        sh.ip(v.ns, "link", "set", "eth0", "mtu", str(mtu))
        sh.ip(e.ns(v.host), "link", "set", v.port, "mtu", str(mtu))
        yield
    finally:
        sh.ip(e.ns(v.host), "link", "set", v.port, "mtu", str(v.mtu))
        sh.ip(v.ns, "link", "set", "eth0", "mtu", str(v.mtu))


def _bad_param(name: str):
    gap = BAD[name].gap
    return pytest.param(name, id=name,
                        marks=[pytest.mark.xfail(strict=True, raises=KnownGap, reason=gap)] if gap else [])


@pytest.mark.parametrize("name", [_bad_param(n) for n in BAD])
def test_malformed_traffic_from_the_service(env, name):
    """svc1 sends the case. Translated per RFC 7915, it reaches a-vm1 and no other VM;
    dropped, it is counted where the case says and goes no further (not on the fabric
    when host2 drops it). A good datagram behind it still gets its answer. A case with a
    known gap is a strict xfail: everything else of it is asserted all the same, and
    only the missing RFC behaviour raises KnownGap; a case without a gap whose RFC answer
    is known (``rfc_done``) must get it."""
    e = env
    bad = BAD[name]
    marker = f"mal-{name}"
    before = snapshot(e)
    with endpoint_mtu(e, bad.mtu), e.capture("host2", "s-svc1") as svc, \
            e.capture("fabric", e.plan.node("host2").fabric_if, f"src host {e.underlay('host2')}") as fab:
        result = bad.send(e, marker)
        if bad.dropped_at is None:
            got = [p for p in carrying(e.vm_caps["a-vm1"].wait(lambda p: carrying(p, marker), 5), marker)
                   if p.haslayer(IP) and p[IP].dst == "10.0.0.4"]    # (not a-vm1's answer)
            assert got, f"{name}: not delivered to a-vm1 ({bad.where})"
            problem = bad.check_vm(got) if bad.check_vm else None
            assert problem is None, problem
        if bad.log:
            node, text = bad.log
            assert wait_for(lambda: text in vswitchd_log(e, node).read_bytes()[before["logs"][node]:].decode(), 5), \
                f"{name}: no '{text}' in {node}'s ovs-vswitchd log"
        if bad.counted:
            assert wait_for(lambda: bad.counted(before, snapshot(e)), 5), f"{name}: not counted ({bad.where})"
        # a good datagram behind it: answered, so the path works and the bad one had its chance
        assert udp_many(e.plan, "svc1", [A6], f"behind-{name}")["replies"], f"svc1 -> a-vm1 broke after {name}"
        if bad.rfc_done:
            svc.wait(lambda p: bad.rfc_done(p, result), 1)
        to_svc1, on_fabric = svc.packets(), fab.packets()
    leaks = e.arrived(marker, exclude=("a-vm1",) if bad.dropped_at is None else ())
    assert not leaks, f"{name} reached {leaks}"
    if bad.dropped_at == "host2":
        assert not carrying(on_fabric, marker), f"{name} left svc1's host"
    print(f"\n{name}: {bad.where}")
    assert_nothing_crashed_and_tenants_work(e, name)
    if bad.gap and not bad.rfc_done(to_svc1, result):
        raise KnownGap(bad.gap)
    if bad.rfc_done and not bad.gap:      # a closed gap: the RFC answer must have come
        assert bad.rfc_done(to_svc1, result), f"{name}: svc1 got no RFC answer ({bad.where})"


FLOOD = r"""
import os, signal, socket, struct, sys, time
seconds, src, mac = float(sys.argv[1]), socket.inet_pton(socket.AF_INET6, sys.argv[2]), sys.argv[3]
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
eth = bytes.fromhex("%s") + bytes.fromhex(mac.replace(":", "")) + b"\x86\xdd"
udp = struct.pack("!HHHH", 40000, 9, 8, 0)
head = struct.pack("!IHBB", 6 << 28, 8, 17, 64) + src
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end and not stop:
    for _ in range(64):
        try:
            s.send(eth + head + b"\xfd\x41" + os.urandom(14) + udp)
            sent += 1
        except OSError:
            pass
print(sent)
""" % GW.replace(":", "")  # noqa: UP031  (the code has braces)


def test_a_flood_of_random_destinations_under_the_prefix(env):
    """svc1 sends random fd41::/16 destinations as fast as it can while the test runs
    (at most 20 s), with a first second of flood before the checks. The appliance
    drops and counts them (``route`` miss flow); none is punted anywhere. Meanwhile the
    control plane works (a new subscription made during the flood is reachable at once)
    and the other tenants' traffic flows."""
    e = env
    v = vif(e.plan, "svc1")
    dropped, offset = appliance_dropped(e), e.log_offset()
    punts = flow_packets(e.plan, "host1", "priority=0", "table=20")
    upcalls0 = _upcalls(e)
    started = time.monotonic()
    flood = subprocess.Popen([sh.tool("ip"), "netns", "exec", v.ns, sys.executable, "-c", FLOOD, "20", SVC1, v.mac],
                             stdout=subprocess.PIPE, text=True)
    try:
        # under way: the appliance is dropping (no sleep: its counter says so)
        assert wait_for(lambda: appliance_dropped(e) - dropped >= 1000, 10), "the flood did not reach the appliance"
        t0 = time.monotonic()
        e.nb.subscribe("a-vm3", "analytics")
        reached = wait_for(lambda: udp_many(e.plan, "svc1", [ADDR["a-vm3"]], "during-flood", timeout=0.3)
                           ["replies"], 5, interval=0)
        new_pair = time.monotonic() - t0
        # the other tenants, on the flooding endpoint's own host: a datagram every 10 ms for 1 s
        during = {(src, vm): answered_ratio(e, src, ADDR[vm], 1.0)
                  for src, vm in (("svc1", "b-vm1"), ("bk1", "c-vm1"))}
        still_flooding = flood.poll() is None
        seconds = time.monotonic() - started
    finally:
        flood.terminate()   # our own child, by its pid: it stops and prints what it sent
        sent = int(flood.communicate(timeout=30)[0].strip() or 0)
        e.nb.unsubscribe("a-vm3", "analytics", if_exists=True)
    assert still_flooding, "the flood ended before the checks ran"
    assert reached, f"a-vm3, subscribed during the flood, was not reachable:\n{e.log_since(offset)[-3000:]}"
    assert all(answered for answered, _ in during.values()), during
    counted = wait_for(lambda: appliance_dropped(e) - dropped >= 1000, 5) and appliance_dropped(e) - dropped
    upcalls = _upcalls(e) - upcalls0
    print(f"\nflood: svc1 sent {sent} frames in {seconds:.1f} s; the appliance dropped and counted {counted} "
          f"({upcalls} of them upcalls: no prefix trie on ipv6_dst, so each random destination "
          f"is a new megaflow); a-vm3 subscribed mid-flood answered after {new_pair * 1000:.0f} ms; "
          + "; ".join(f"{src} -> {vm} during the flood: {a}/{n} answered" for (src, vm), (a, n) in during.items()))
    assert sent > 10000 and counted, (sent, counted)
    # only a-vm3's new pair went to the controller (1-2 packets), nothing of the flood
    assert flow_packets(e.plan, "host1", "priority=0", "table=20") - punts <= 3
    assert "refused pair" not in e.log_since(offset)
    assert_nothing_crashed_and_tenants_work(e, "flood")


ERROR_FLOOD = r"""
import signal, socket, struct, sys, time
platform, vm, sport, dport, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
# the datagram being "refused": as the VM got it, Platform_IP:sport -> the VM's dport
quoted = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 36, 0, 0, 64, 17, 0,
                     socket.inet_aton(platform), socket.inet_aton(vm))
udp = struct.pack("!HHHH", sport, dport, 16, 0) + b"x" * 8
pseudo = socket.inet_aton(platform) + socket.inet_aton(vm) + struct.pack("!BBH", 0, 17, 16)
udp = udp[:6] + struct.pack("!H", csum(pseudo + udp) or 0xFFFF) + udp[8:]   # a real checksum, as a VM's stack sends
quoted = quoted[:10] + struct.pack("!H", csum(quoted)) + quoted[12:] + udp
icmp = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sent, start = 0, time.monotonic()
while time.monotonic() < start + seconds and not stop:
    for _ in range(50):          # ~10,000 a second: 10x the errors' meter, and few enough
        try:                     # that the VM ports' captures stay quick to read back
            s.sendto(icmp, (platform, 0))
            sent += 1
        except OSError:
            pass
    time.sleep(max(0.0, start + sent / 10000 - time.monotonic()))
print(sent)
"""


def test_a_vms_flood_of_icmp_errors_cannot_starve_new_pairs(env):
    """a-vm1 floods Platform_IP with ICMP port-unreachable errors, each about a live
    datagram of svc1's (so each is related: it goes back through TAYGA and the IPv6 zones
    to svc1's host, by the data path alone). None reaches the controller (neither meter
    drops anything), and a new pair set up meanwhile on the same host (bk1 -> a-vm3,
    subscribed during the flood) is answered."""
    e = env
    name, seen, port, _ = answer(client(e.plan, "udp", A6, UDP_PORT, "live"))
    assert (name, seen) == ("a-vm1", PLATFORM_IP)
    before = meter_drops(e.plan, "host1")
    assert set(before) >= {PACKET_IN_METER, ERROR_METER}, before
    relayed = flow_packets(e.plan, "host1", "", "table=to_service")
    v = vif(e.plan, "a-vm1")
    flood = subprocess.Popen([sh.tool("ip"), "netns", "exec", v.ns, sys.executable, "-c", ERROR_FLOOD,
                              PLATFORM_IP, "10.0.0.4", port, str(UDP_PORT), "20"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: flow_packets(e.plan, "host1", "", "table=to_service") - relayed >= 1000, 10), \
            "fewer than 1,000 errors went on towards svc1: the flood did not get through"
        e.nb.subscribe("a-vm3", "backup")
        t0 = time.monotonic()
        reached = wait_for(lambda: udp_many(e.plan, "bk1", [ADDR["a-vm3"]], "beside-errors", timeout=0.3)
                           ["replies"], 5, interval=0)
        new_pair = time.monotonic() - t0
        still_flooding = flood.poll() is None
    finally:
        flood.terminate()   # our own child, by its pid
        sent = int(flood.communicate(timeout=30)[0].strip() or 0)
        e.nb.unsubscribe("a-vm3", "backup", if_exists=True)
    after = meter_drops(e.plan, "host1")
    print(f"\nICMP error flood: a-vm1 sent {sent}, host1 sent "
          f"{flow_packets(e.plan, 'host1', '', 'table=to_service') - relayed} on to svc1's host; "
          f"meters dropped {after[ERROR_METER] - before[ERROR_METER]} (errors) and "
          f"{after[PACKET_IN_METER] - before[PACKET_IN_METER]} (new pairs); bk1 -> a-vm3 (new pair) "
          f"answered after {new_pair * 1000:.0f} ms")
    assert still_flooding, "the flood ended before the new pair was tried"
    assert reached, "bk1 could not reach a-vm3, subscribed during the flood"
    assert after == before, "a meter dropped packets: the flood reached the controller's path"
    assert_nothing_crashed_and_tenants_work(e, "icmp-error-flood")


def answered_ratio(e: Env, source: str, addr: str, seconds: float) -> tuple[int, int]:
    """(answered, sent) of datagrams from ``source`` to ``addr``, one every 10 ms."""
    proc = subprocess.run([sh.tool("ip"), "netns", "exec", vif(e.plan, source).ns, sys.executable, "-c", PROBE,
                           addr, str(UDP_PORT), str(seconds)], capture_output=True, text=True, timeout=30,
                          check=False)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return sum("seq" in m for m in lines), next(m["end"] for m in lines if "end" in m)


def _upcalls(e: Env) -> int:
    out = ovs_node(e.plan, "appliance").appctl("dpif-netdev/pmd-stats-show")
    m = re.search(r"miss with success upcall:\s*(\d+)", out)
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------------------
# Unsubscribe while traffic flows

PROBE = r"""
import json, select, socket, sys, time
addr, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 0))
sent, end, seq = {}, time.time() + seconds, 0
print(json.dumps({"ready": True}), flush=True)
while time.time() < end:
    seq += 1
    sent[seq] = time.time()
    s.sendto(str(seq).encode(), (addr, port))
    deadline = time.time() + 0.01
    while (left := deadline - time.time()) > 0 and select.select([s], [], [], left)[0]:
        data = s.recv(4096).decode().split(" ")[-1]
        if data.isdigit():
            print(json.dumps({"seq": int(data), "sent": sent[int(data)], "got": time.time()}), flush=True)
print(json.dumps({"end": seq}), flush=True)
"""


def test_unsubscribe_while_traffic_flows_stops_it_and_resubscribing_restores_it(env):
    """svc1 sends a datagram to a-vm1 every 10 ms. Unsubscribing (an NB write) removes
    the appliance's route and the pair on host1: the answers stop. Subscribing again
    brings them back. The times are printed (measured from the NB write to the send
    time of the last / first answered datagram), not asserted."""
    e = env
    session = LineSession(e.plan, A6, LINE_PORT)
    probe = subprocess.Popen([sh.tool("ip"), "netns", "exec", vif(e.plan, "svc1").ns, sys.executable, "-c",
                              PROBE, A6, str(UDP_PORT), "20"], stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(probe.stdout.readline()).get("ready")
        first = _next_answer(probe, 5)
        assert first, "the probe never got an answer"
        assert answer(session.send("before"))[0] == "a-vm1"

        t_unsub = time.time()
        e.nb.unsubscribe("a-vm1", "analytics")
        last = first
        while (a := _next_answer(probe, 1.0)) is not None:   # answers stop: none for 1 s
            last = a
            assert a["sent"] - t_unsub < 5, "answers kept coming 5 s after the unsubscribe"
        stopped = max(0.0, last["sent"] - t_unsub)
        gone = wait_for(lambda: A6 not in flows(e.plan, "appliance") and (SVC1, A6) not in pair_flows(e.plan, "host1"), 5)
        assert gone, "the appliance route or the pair survived the unsubscribe"
        cut = session.send("during", timeout=1.0)
        assert "error" in cut, f"the open TCP connection still got answers: {cut}"

        t_resub = time.time()
        e.nb.subscribe("a-vm1", "analytics")
        back = _next_answer(probe, 5)
        assert back, "the answers did not come back after re-subscribing"
        restored = back["sent"] - t_resub
        resumed = session.send("after", timeout=5)
        print(f"\nunsubscribe -> last answered datagram sent {stopped * 1000:.0f} ms after the NB write; "
              f"re-subscribe -> first answered datagram sent {restored * 1000:.0f} ms after it; "
              f"the TCP connection opened before it: {resumed}")
    finally:
        e.nb.subscribe("a-vm1", "analytics", may_exist=True)
        if probe.poll() is None:
            probe.kill()   # our own child, by its pid
        probe.wait(5)
        probe.stdout.close()
        session.close()
    assert_nothing_crashed_and_tenants_work(e, "unsubscribe")


def _next_answer(probe: subprocess.Popen, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([probe.stdout], [], [], left)[0]:
            return None
        line = probe.stdout.readline()
        if not line:
            return None
        msg = json.loads(line)
        if "seq" in msg:
            return msg
    return None
