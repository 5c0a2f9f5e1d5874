"""Acceptance (issue 5): the mechanism of DESIGN §1, one test per step, each proved on
packets captured in the lab - not only on a connection succeeding.

The topology is the default one plus a third host: svc1 (service ``analytics``, on
host2) reaches a-vm1 and b-vm1 (both 10.0.0.4, in VNets 0x1f and 0x20, on host1)
and a-vm2 (10.0.0.5 in VNet 0x1f, on host3). One module fixture sends a UDP
datagram with a unique payload from svc1 to each of the three, and a datagram to
an address outside the steering prefix, while tcpdump records every hop:

====================  =========================================  =======================
capture               where                                      the patent's packets
====================  =========================================  =======================
``svc1``              ``s-svc1`` on host2 (the endpoint's veth)  210 sent, 258 delivered
``fabric:<node>``     ``u-<node>`` legs of the fabric bridge     216, 234, 262 (Geneve)
``decap:<host>``      br-int's own port, fed by an OVS mirror    210 after the
                      of what ``geneve0`` delivers               decapsulator
``xlat0``             the translator veth on host1               both sides of TAYGA
``vm:<vm>``           ``v-<vm>`` on the VM's host                248 and 253
====================  =========================================  =======================

Where a step lives inside OVS (the stored rule, the return rule), the test reads the
flow table and conntrack too, and checks them against the packets.
"""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv6Address

import pytest
from vnet64 import address, gateway
from vnet64.controller.pipeline import HOST_TABLES
from vnet64.nb import api as nbapi
from vnet64_lab import Lab

from tests.lab.conftest import need_lab
from tests.lab.traffic import (
    PLATFORM_IP,
    SVC1,
    UDP_PORT,
    LineSession,
    Pcap,
    answer,
    carrying,
    client,
    conntrack,
    decap,
    flow_packets,
    flows,
    mirrored_decap,
    misses,
    norm,
    pair_flows,
    running_platform,
    send_frames,
    table_counts,
    vif,
    wait_for,
)

TOPOLOGY = """\
name: acceptance
platform: {platform_ip: 100.100.0.1, translator_prefix: "fd64:64::/96", region: westeurope,
           appliance: appliance}
regions: [{name: westeurope, id: 0x3930}]
nodes:
  - {name: appliance, role: appliance, underlay_ip: 192.168.64.10}
  - {name: host1, role: host, underlay_ip: 192.168.64.11}
  - {name: host2, role: host, underlay_ip: 192.168.64.12}
  - {name: host3, role: host, underlay_ip: 192.168.64.13}
vnets:
  - {name: customer-a, id: 0x1f, cidrs: [10.0.0.0/16],
     subnets: [{name: default, id: 0x6600, cidr: 10.0.0.0/24}]}
  - {name: customer-b, id: 0x20, cidrs: [10.0.0.0/16],
     subnets: [{name: default, id: 0x6600, cidr: 10.0.0.0/24}]}
vms:
  - {name: a-vm1, vnet: customer-a, ipv4: 10.0.0.4, host: host1}
  - {name: b-vm1, vnet: customer-b, ipv4: 10.0.0.4, host: host1}
  - {name: a-vm2, vnet: customer-a, ipv4: 10.0.0.5, host: host3}
services:
  - {name: analytics, endpoints: [{name: svc1, ipv6: "fd00:5e:1::10", host: host2}]}
subscriptions:
  - {vm: a-vm1, service: analytics}
  - {vm: b-vm1, service: analytics}
  - {vm: a-vm2, service: analytics}
"""
VMS = ("a-vm1", "b-vm1", "a-vm2")
VNET_IDS = {"customer-a": 0x1F, "customer-b": 0x20}
UNSTEERED = "fd42::3930:1f:6600:a00:4"    # a-vm1's address with another prefix
GENEVE_VNI = 0x6464
VM_RETURN = 42     # host pipeline table ``vm_return``


class Trace:
    """What the module fixture recorded: the platform, the NB's view, and the captures."""

    def __init__(self, lab: Lab, plan):
        self.lab, self.plan = lab, plan
        self.subs: dict[str, dict] = {}       # VM -> its subscription (platform IPv6, host)
        self.vnet_of: dict[str, str] = {}
        self.ex: dict[str, dict] = {}         # VM -> {"local": svc1's port, "seen": (addr, port)}
        self.caps: dict[str, list] = {}
        self.mappings: dict[str, dict] = {}   # platform IPv6 -> host mapping row
        self.zones: dict[str, int] = {}       # VNet -> conntrack zone

    def underlay(self, node: str) -> str:
        return str(self.plan.node(node).underlay_ip.ip)

    def marker(self, vm: str) -> str:
        return f"fig2-{vm}"

    def zone(self, vm: str) -> int:
        return self.zones[self.vnet_of[vm]]


def _reverse(t: Trace, vm: str, pkts: list) -> list:
    """Packets of the exchange with ``vm`` travelling VM -> service (the reply)."""
    from scapy.layers.inet import UDP
    return [p for p in carrying(pkts, t.marker(vm))
            if decap(p)[2].haslayer(UDP) and decap(p)[2][UDP].sport == UDP_PORT]


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    need_lab()
    topo = tmp_path_factory.mktemp("acceptance") / "acceptance.yaml"
    topo.write_text(TOPOLOGY)
    pcaps = tmp_path_factory.mktemp("pcaps")
    with running_platform(Lab("v64a-", "/run/vnet64-lab-a"), topo) as (lab, plan):
        t = Trace(lab, plan)
        api = nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock")
        try:
            t.subs = {s["vm"]: s for s in api.list("subscription")}
            t.mappings = {m["ipv6"]: m for m in api.list("host-mapping")}
            t.vnet_of = {v["name"]: v["vnet"] for v in api.list("vm")}
            t.zones = {v["name"]: v["ct_zone"] for v in api.list("vnet")}
        finally:
            api.close()
        ns = {n.name: n.ns for n in plan.nodes}
        points = {
            "svc1": (ns["host2"], "s-svc1", ""),
            **{f"fabric:{n.name}": (plan.fabric_ns, n.fabric_if, "udp port 6081") for n in plan.nodes},
            "decap:host1": (ns["host1"], "br-int", ""),
            "decap:host3": (ns["host3"], "br-int", ""),
            "xlat0": (ns["host1"], "xlat0", ""),
            **{f"vm:{vm}": (ns[vif(plan, vm).host], vif(plan, vm).port, "") for vm in VMS},
        }
        # how many packets of the markers each point must have seen (then the captures stop)
        want = {"svc1": 7, "fabric:host2": 6, "fabric:appliance": 6, "fabric:host1": 4,
                "fabric:host3": 2, "decap:host1": 2, "decap:host3": 1, "xlat0": 8,
                "vm:a-vm1": 2, "vm:b-vm1": 2, "vm:a-vm2": 2}
        with contextlib.ExitStack() as stack:
            stack.enter_context(mirrored_decap(plan, "host1"))
            stack.enter_context(mirrored_decap(plan, "host3"))
            caps = {k: stack.enter_context(Pcap(*v[:2], pcaps, bpf=v[2])) for k, v in points.items()}
            out = client(plan, "udp", UNSTEERED, UDP_PORT, "fig2-unsteered", timeout=0.3)
            assert "error" in out, f"a destination outside fd41::/16 answered: {out}"
            for vm in VMS:
                out = client(plan, "udp", t.subs[vm]["ipv6"], UDP_PORT, t.marker(vm))
                name, seen, port, payload = answer(out)
                assert (name, payload) == (vm, t.marker(vm)), out
                t.ex[vm] = {"local": out["local"], "seen": (seen, int(port))}
            for key, cap in caps.items():
                cap.wait(lambda pkts, key=key: len(carrying(pkts, "fig2-")) >= want[key], 5)
        t.caps = {key: carrying(cap.stop(), "fig2-") for key, cap in caps.items()}
        yield t


def _ipv6(p):
    from scapy.layers.inet6 import IPv6
    return decap(p)[2][IPv6]


# ---------------------------------------------------------------------------
# 1. address extraction


def test_address_extraction(trace):
    """The platform IPv6 the service sends to embeds (VNet, IPv4); it is what decides which
    VM gets the packet - two VMs share 10.0.0.4, the VNet id tells them apart."""
    from scapy.layers.inet import IP
    t = trace
    for vm in VMS:
        sub = t.subs[vm]
        fields = address.decode(sub["ipv6"])
        assert fields.vnet == VNET_IDS[t.vnet_of[vm]] and str(fields.ipv4) == sub["ipv4"], fields
        # what svc1 really sent (packet 210) carried that address ...
        sent = [p for p in t.caps["svc1"] if norm(_ipv6(p).src) == SVC1 and t.marker(vm).encode() in bytes(p)]
        assert len(sent) == 1 and norm(_ipv6(sent[0]).dst) == sub["ipv6"], sent
        captured = address.decode(_ipv6(sent[0]).dst)
        # ... and the VM that received the IPv4 packet (248) is the one whose VNet and IPv4
        # the captured destination embeds, at exactly that IPv4
        got = [p for p in t.caps[f"vm:{vm}"] if p.haslayer(IP) and p[IP].dst == str(captured.ipv4)]
        assert got, f"{vm} ({t.vnet_of[vm]}) did not receive its packet as {captured.ipv4}"
        assert VNET_IDS[t.vnet_of[vm]] == captured.vnet
        for other in VMS:
            if other != vm:
                assert not carrying(t.caps[f"vm:{other}"], t.marker(vm)), \
                    f"{other} received the packet addressed to {vm}"
        print(f"\n{sub['ipv6']}: VNet {captured.vnet:#x} subnet {captured.subnet:#x} "
              f"IPv4 {captured.ipv4} -> delivered to {vm} ({t.vnet_of[vm]})", end="")


# ---------------------------------------------------------------------------
# 2. prefix steering to the appliance


def test_prefix_steering_to_the_appliance(trace):
    """Packet 216: on svc1's host, everything to fd41::/16 leaves in Geneve (VNI
    0x6464) from host2 to the appliance, inner packet unchanged; a destination outside
    the prefix never leaves the host."""
    from scapy.layers.inet import UDP
    t = trace
    appliance, host2 = t.underlay("appliance"), t.underlay("host2")
    for vm in VMS:
        sent = [p for p in t.caps["svc1"] if norm(_ipv6(p).src) == SVC1 and t.marker(vm).encode() in bytes(p)]
        out = [p for p in t.caps["fabric:host2"] if t.marker(vm).encode() in bytes(p)
               and decap(p)[0].src == host2]
        assert len(sent) == 1 and len(out) == 1, (sent, out)
        outer, geneve, _ = decap(out[0])
        assert (outer.src, outer.dst, outer[UDP].dport, geneve.vni) == (host2, appliance, 6081, GENEVE_VNI)
        assert bytes(_ipv6(out[0])) == bytes(_ipv6(sent[0])), "the encapsulator changed the inner packet"
    assert carrying(t.caps["svc1"], "fig2-unsteered"), "svc1 did not send the unsteered datagram"
    for node in ("host2", "appliance", "host1", "host3"):
        assert not carrying(t.caps[f"fabric:{node}"], "fig2-unsteered"), \
            f"a packet outside fd41::/16 reached the fabric ({node})"
    steering = [line for line in flows(t.plan, "host2", "table=from_endpoint").splitlines()
                if "ipv6_dst=fd41::/16" in line and f"goto_table:{HOST_TABLES.id('to_appliance')}" in line]
    assert len(steering) == 1 and "ipv6_src=fd00:5e:1::10" in steering[0], steering
    encap = [line for line in flows(t.plan, "host2", f"table={HOST_TABLES.id('to_appliance')}").splitlines()
             if "output:" in line]   # (not the gateway's Packet Too Big punt)
    assert len(encap) == 1 and f"set_field:{appliance}->tun_dst" in encap[0], encap


# ---------------------------------------------------------------------------
# 3. outer-header rewrite from the host mapping


def test_outer_header_rewrite_from_the_host_mapping(trace):
    """Packet 234: the appliance sends each packet on to the host the NB's host mapping
    names for its inner destination (host1 for a-vm1 and b-vm1, host3 for a-vm2), inner
    packet untouched. (Deviation from FIG. 2A, on purpose: the outer source becomes the
    appliance, so a customer host accepts forward traffic from the appliance only.)"""
    t = trace
    appliance = t.underlay("appliance")
    for vm in VMS:
        mapped = t.mappings[t.subs[vm]["ipv6"]]["host"]
        assert mapped == vif(t.plan, vm).host
        legs = [p for p in t.caps["fabric:appliance"] if t.marker(vm).encode() in bytes(p)]
        came = [p for p in legs if decap(p)[0].dst == appliance]
        went = [p for p in legs if decap(p)[0].src == appliance]
        assert len(came) == 1 and len(went) == 1, legs
        (o_in, g_in, i_in), (o_out, g_out, i_out) = decap(came[0]), decap(went[0])
        assert o_in.src == t.underlay("host2")
        assert o_out.dst == t.underlay(mapped), f"{vm}: sent to {o_out.dst}, mapping says {mapped}"
        assert g_out.vni == g_in.vni == GENEVE_VNI
        assert bytes(i_out) == bytes(i_in), "the appliance changed the inner packet"
        for other in ("host1", "host3"):   # (the fabric's bridge floods until it learns MACs)
            sent_to = [p for p in carrying(t.caps[f"fabric:{other}"], t.marker(vm))
                       if decap(p)[0].dst == t.underlay(other)]
            assert bool(sent_to) == (other == mapped), f"{vm}'s packet sent to {other}: {sent_to}"
        route = [line for line in flows(t.plan, "appliance", "table=route").splitlines()
                 if f"ipv6_dst={t.subs[vm]['ipv6']} " in line]
        assert len(route) == 1 and f"set_field:{t.underlay(mapped)}->tun_dst" in route[0], route
        print(f"\n{t.subs[vm]['ipv6']} -> host mapping {mapped} -> outer {o_out.src} > {o_out.dst}", end="")


# ---------------------------------------------------------------------------
# 4. decapsulation


def test_decapsulation(trace):
    """Packet 210 again: what br-int on the VM's host gets from geneve0 is exactly the
    inner frame of the Geneve packet that arrived on the host's fabric leg - the outer
    IPv4/UDP/Geneve headers stripped, nothing else changed."""
    t = trace
    for vm in VMS:
        host = vif(t.plan, vm).host
        arrived = [p for p in t.caps[f"fabric:{host}"] if t.marker(vm).encode() in bytes(p)
                   and decap(p)[0].dst == t.underlay(host)]
        # (a new pair's first packet shows twice: as received, and as re-injected by the
        # controller's packet-out with in_port=geneve0)
        inside = carrying(t.caps[f"decap:{host}"], t.marker(vm))
        assert len(arrived) == 1 and inside, (arrived, inside)
        for p in inside:
            assert decap(p)[0] is None, "the decapsulated packet still has a Geneve header"
            assert bytes(p) == bytes(decap(arrived[0])[2]), "decapsulation changed the frame"
        ip6 = _ipv6(inside[0])
        assert (norm(ip6.src), norm(ip6.dst)) == (SVC1, t.subs[vm]["ipv6"])


# ---------------------------------------------------------------------------
# 5. port assignment and the stored rule


def test_port_assignment_and_the_stored_rule(trace):
    """Packet 248: the VM sees Platform_IP and a port the translator allocated; the
    stored rule is a conntrack entry in the VM's VNet zone holding exactly that port,
    created by the pair's flow (SNAT to Platform_IP, port range 1024-65535)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    t = trace
    for vm in ("a-vm1", "b-vm1"):
        seen_addr, seen_port = t.ex[vm]["seen"]
        got = carrying(t.caps[f"vm:{vm}"], t.marker(vm))
        fwd = [p for p in got if p[UDP].dport == UDP_PORT]
        assert len(fwd) == 1
        assert (fwd[0][IP].src, fwd[0][UDP].sport, fwd[0][IP].dst) == (PLATFORM_IP, seen_port, "10.0.0.4")
        assert seen_addr == PLATFORM_IP
        # the IPv4 packet as TAYGA made it (before the VNet-zone SNAT): alias, svc1's port
        pre = [p for p in carrying(t.caps["xlat0"], t.marker(vm))
               if p.haslayer(IP) and not p.haslayer(IPv6) and p[UDP].dport == UDP_PORT]
        assert len(pre) == 1
        alias, sport = pre[0][IP].src, pre[0][UDP].sport
        assert sport == t.ex[vm]["local"]
        assert _alias(t, vm) == alias, "TAYGA's source is not the pair's alias"
        # the stored rule: conntrack in the VM's VNet zone, reply tuple = Platform_IP:port
        entry = [e for e in conntrack(t.plan, "host1", t.zone(vm))
                 if f"orig=(src={alias},dst=10.0.0.4,sport={sport},dport={UDP_PORT})" in e]
        assert len(entry) == 1, conntrack(t.plan, "host1", t.zone(vm))
        assert f"reply=(src=10.0.0.4,dst={PLATFORM_IP},sport={UDP_PORT},dport={seen_port})" in entry[0]
        rule = [line for line in flows(t.plan, "host1", "table=from_translator").splitlines()
                if f"nw_src={alias},nw_dst=10.0.0.4" in line]
        assert len(rule) == 1 and f"zone={t.zone(vm)}" in rule[0] \
            and f"nat(src={PLATFORM_IP}:1024-65535)" in rule[0], rule
        print(f"\n{vm}: sees {PLATFORM_IP}:{seen_port}; stored rule {entry[0].strip()}", end="")

    # every connection to one VM gets its own port; both are held in the VNet zone
    sessions = [LineSession(t.plan, t.subs["a-vm1"]["ipv6"]) for _ in range(2)]
    try:
        ports = []
        for i, s in enumerate(sessions):
            name, seen, port, _ = answer(s.send(f"conn-{i}"))
            assert (name, seen) == ("a-vm1", PLATFORM_IP)
            ports.append(int(port))
        assert ports[0] != ports[1], "two connections to a-vm1 share a Platform_IP port"
        ct = conntrack(t.plan, "host1", t.zone("a-vm1"))
        for port in ports:
            held = [e for e in ct if f"dst={PLATFORM_IP},sport=8082,dport={port})" in e]
            assert held and "ESTABLISHED" in held[0], ct
    finally:
        for s in sessions:
            s.close()


# ---------------------------------------------------------------------------
# 6. return-rule matching


def test_return_rule_matching(trace, tmp_path):
    """Packet 253: the VM answers Platform_IP:port; the rule (VM IPv4 + port, Platform_IP)
    matches and hands the reply, un-SNATed to the pair's alias and svc1's port, to the
    translator. The same header from b-vm1 (same IPv4, other VNet) does not match."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    t = trace
    _, seen_port = t.ex["a-vm1"]["seen"]
    reply = [p for p in carrying(t.caps["vm:a-vm1"], t.marker("a-vm1")) if p[UDP].sport == UDP_PORT]
    assert len(reply) == 1
    assert (reply[0][IP].src, reply[0][IP].dst, reply[0][UDP].dport) == ("10.0.0.4", PLATFORM_IP, seen_port)
    matched = [p for p in carrying(t.caps["xlat0"], t.marker("a-vm1"))
               if p.haslayer(IP) and not p.haslayer(IPv6) and p[UDP].sport == UDP_PORT]
    assert len(matched) == 1
    alias = _alias(t, "a-vm1")
    assert (matched[0][IP].src, matched[0][IP].dst, matched[0][UDP].dport) == \
        ("10.0.0.4", alias, t.ex["a-vm1"]["local"]), matched[0].summary()
    rule = f"in_port={vif(t.plan, 'a-vm1').ofport},nw_dst={alias}"
    assert wait_for(lambda: flow_packets(t.plan, "host1", rule, "table=vm_return") >= 1, 3), \
        flows(t.plan, "host1", "table=vm_return")

    # the IF-part holds as a whole: b-vm1 sending the very same header is not a-vm1
    b = vif(t.plan, "b-vm1")
    before = table_counts(t.plan, "host1")
    with Pcap(t.plan.node("host1").ns, "xlat0", tmp_path) as cap:
        frame = (Ether(src=b.mac, dst=gateway.GATEWAY_MAC) / IP(src="10.0.0.4", dst=PLATFORM_IP)
                 / UDP(sport=UDP_PORT, dport=seen_port) / b"spoof-from-b-vm1")
        assert send_frames(b.ns, "eth0", [frame]) == 1
        # a marker behind it on the same path: once its reply reached TAYGA, so had the spoof
        out = client(t.plan, "udp", t.subs["a-vm1"]["ipv6"], UDP_PORT, "return-marker")
        assert answer(out)[0] == "a-vm1"
        pkts = cap.wait(lambda p: len(carrying(p, "return-marker")) >= 2, 3)
        assert len(carrying(pkts, "return-marker")) >= 2, "the marker's reply never reached TAYGA"
        assert not carrying(pkts, "spoof-from-b-vm1"), "b-vm1's packet matched a-vm1's return rule"
    assert wait_for(lambda: misses(before, table_counts(t.plan, "host1"), VM_RETURN) >= 1, 3), \
        "b-vm1's packet was not dropped in vm_return"


def _alias(t: Trace, vm: str) -> str:
    """The pair (svc1, vm)'s alias, from its flow in the ``pair`` table."""
    _, snat = pair_flows(t.plan, "host1")[(SVC1, t.subs[vm]["ipv6"])]
    return str(IPv4Address(int(IPv6Address(snat)) & 0xFFFFFFFF))


# ---------------------------------------------------------------------------
# 7. reconstruction of both IPv6 addresses


def test_reconstruction_of_both_ipv6_addresses(trace):
    """Packet 258: the reply leaves host1 as IPv6 from the VM's platform address to
    svc1's address - both rebuilt from the translator's internal ones - and svc1 gets it
    on the port it sent from. b-vm1, the same 10.0.0.4, comes back as its own address."""
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    t = trace
    sources = set()
    for vm in VMS:
        host = vif(t.plan, vm).host
        if host == "host1":   # TAYGA's output still has the translator's addresses
            tayga = [p for p in _reverse(t, vm, t.caps["xlat0"]) if p.haslayer(IPv6)]
            assert len(tayga) == 1
            ip6 = tayga[0][IPv6]
            assert str(ip6.src) == "fd64:64::a00:4" and str(ip6.dst).startswith("fd64:64::"), ip6.summary()
        left = [p for p in _reverse(t, vm, t.caps[f"fabric:{host}"]) if decap(p)[0].src == t.underlay(host)]
        got = _reverse(t, vm, t.caps["svc1"])
        assert len(left) == 1 and len(got) == 1, (left, got)
        for p in (left[0], got[0]):
            ip6 = _ipv6(p)
            assert (norm(ip6.src), norm(ip6.dst)) == (t.subs[vm]["ipv6"], SVC1), ip6.summary()
            assert (ip6[UDP].sport, ip6[UDP].dport) == (UDP_PORT, t.ex[vm]["local"])
        sources.add(norm(_ipv6(got[0]).src))
    assert len(sources) == len(VMS), "two VMs' replies came back from the same address"


# ---------------------------------------------------------------------------
# 8. direct return to the service host


def test_direct_return_to_the_service_host(trace):
    """Packet 262: the VM's host encapsulates the reply straight to svc1's host (outer
    host -> host2); the appliance never sees it."""
    t = trace
    host2 = t.underlay("host2")
    for vm in VMS:
        host = vif(t.plan, vm).host
        left = [p for p in _reverse(t, vm, t.caps[f"fabric:{host}"]) if decap(p)[0].src == t.underlay(host)]
        came = [p for p in _reverse(t, vm, t.caps["fabric:host2"]) if decap(p)[0].dst == host2]
        assert len(left) == 1 and len(came) == 1, (left, came)
        for p in (left[0], came[0]):
            outer, geneve, _ = decap(p)
            assert (outer.src, outer.dst, geneve.vni) == (t.underlay(host), host2, GENEVE_VNI)
        to_appliance = [p for p in _reverse(t, vm, t.caps["fabric:appliance"])
                        if decap(p)[0].dst == t.underlay("appliance")
                        or p.dst == t.plan.node("appliance").underlay_mac]
        assert not to_appliance, f"{vm}'s reply was sent to the appliance"
        to_service = [line for line in flows(t.plan, host, "table=to_service").splitlines()
                      if f"ipv6_dst={SVC1}" in line]
        assert len(to_service) == 1 and f"set_field:{host2}->tun_dst" in to_service[0], to_service
    # and the appliance's OVS never processed a packet from a customer host
    from_tunnel = flows(t.plan, "appliance", "table=from_tunnel")
    for host in ("host1", "host3"):
        assert f"tun_src={t.underlay(host)}," in from_tunnel, from_tunnel
        assert flow_packets(t.plan, "appliance", f"tun_src={t.underlay(host)},") == 0, from_tunnel
