"""The whole data path of the default topology, traced through strict fake switches.

svc1 (host2) -> a-vm1 / b-vm1 (host1, both 10.0.0.4) and back, step by step as
the patent's FIG. 2A/2B: encapsulator, appliance, decapsulator, pair setup by
the controller, the translator's conntrack stages (TAYGA is played by the test:
it is stateless), delivery from Platform_IP, return rule, reconstruction of the
IPv6 pair, and direct encapsulation to the service's host.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from tests.conftest import DEFAULT_TOPOLOGY
from tests.support.fake import FakeSwitch, FixedCt
from vnet64 import gateway, topology
from vnet64.controller import model as M
from vnet64.controller.flows import ETH_ARP, ETH_IPV4, ETH_IPV6, Flow, PacketOut, Resubmit
from vnet64.controller.logic import Logic
from vnet64.controller.pipeline import VNI, ZONE_V6_DNAT, ZONE_V6_SNAT, Cookie, tables_for
from vnet64.ports import GENEVE_PORT, XLAT_PORT, translator_mac, vif_port

GENEVE, XLAT = 1, 2
PORTS = {
    "appliance": {GENEVE_PORT: GENEVE},
    "host1": {GENEVE_PORT: GENEVE, XLAT_PORT: XLAT, vif_port("vm", "a-vm1"): 10,
              vif_port("vm", "b-vm1"): 11},
    "host2": {GENEVE_PORT: GENEVE, XLAT_PORT: XLAT, vif_port("endpoint", "svc1"): 10},
}
SVC1 = "fd00:5e:1::10"
A6, B6 = "fd41::3930:1f:6600:a00:4", "fd41::3930:20:6600:a00:4"
PREFIX = "fd64:64::"
TOKEN = 0x5EC0E7A1        # the NB's tunnel token in these tests


class Platform:
    """Three fake switches programmed by one Logic, like the lab's nodes by the controller."""

    def __init__(self):
        self.topo = topology.load(DEFAULT_TOPOLOGY)
        self.model = M.from_topology(self.topo, tunnel_token=TOKEN,
                                     bindings=M.topology_bindings(self.topo, vif_port))
        self.logic = Logic(lambda: self.model)
        self.sw: dict[str, FakeSwitch] = {}
        for node in self.model.nodes:
            tables, msgs = self.logic.switch_connected(node.datapath_id, PORTS[node.name])
            self.sw[node.name] = FakeSwitch(tables)
            self.sw[node.name].apply(msgs)

    def ip(self, name: str) -> str:
        return str(self.model.node(name).underlay_ip)

    def host1_in(self, packet: dict):
        """A packet arriving at host1 from the tunnel; punts go through the controller."""
        trace = self.sw["host1"].trace(packet, GENEVE)
        if trace.punts:
            dpid = self.model.node("host1").datapath_id
            msgs = self.logic.packet_in(dpid, tables_for("host").id("pair"), GENEVE, _frame(packet))
            self.sw["host1"].apply([m for m in msgs if isinstance(m, Flow)])
            assert any(isinstance(m, PacketOut) for m in msgs), msgs
            trace = self.sw["host1"].trace(packet, GENEVE, table="pair")   # the re-injection
        return trace


def arrive(pkt: dict, **outer) -> dict:
    """What the next node sees: the frame (metadata dropped) plus, through the tunnel
    (``outer`` given), the Geneve options the sender put on it and the outer header."""
    keep = {k: v for k, v in pkt.items()
            if k != "in_port" and not k.startswith(("ct_", "reg", "tun_", "tunnel_id"))}
    if outer:
        keep.update({k: v for k, v in pkt.items() if k.startswith("tun_metadata")})
    return {**keep, **outer}


def _frame(packet: dict) -> bytes:
    src, dst = IPv6Address(packet["ipv6_src"]), IPv6Address(packet["ipv6_dst"])
    return (b"\x02\x00\x00\x00\x00\x01" * 2 + b"\x86\xdd" + b"\x60\x00\x00\x00\x00\x14\x06\x40"
            + src.packed + dst.packed + b"\x00" * 20)


@pytest.fixture
def p():
    return Platform()


def reason(t) -> str | None:
    """Why the traced packet was not forwarded, as the cookie of the flow it ended on
    says (``pipeline.DROP_REASONS``); None if that flow names no reason."""
    return Cookie.decode(t.steps[-1].cookie).reason if t.steps and t.steps[-1].cookie else None


def tcp6(src, dst, sport, dport, **extra):
    return {"eth_type": ETH_IPV6, "ipv6_src": src, "ipv6_dst": dst, "ip_proto": 6,
            "tcp_src": sport, "tcp_dst": dport, **extra}


def tcp4(src, dst, sport, dport, **extra):
    return {"eth_type": ETH_IPV4, "ipv4_src": src, "ipv4_dst": dst, "ip_proto": 6,
            "tcp_src": sport, "tcp_dst": dport, **extra}


def tayga_6to4(pkt: dict, **l2) -> dict:
    """The stateless translator: <prefix>::a.b.c.d -> a.b.c.d, ports kept."""
    out = {k: v for k, v in pkt.items() if not k.startswith(("ipv6", "eth", "in_port", "ct_", "reg"))}
    out.update(eth_type=ETH_IPV4, ipv4_src=str(IPv4Address(int(IPv6Address(pkt["ipv6_src"])) & 0xFFFFFFFF)),
               ipv4_dst=str(IPv4Address(int(IPv6Address(pkt["ipv6_dst"])) & 0xFFFFFFFF)), **l2)
    return out


def tayga_4to6(pkt: dict, **l2) -> dict:
    out = {k: v for k, v in pkt.items() if not k.startswith(("ipv4", "eth", "in_port", "ct_", "reg"))}
    out.update(eth_type=ETH_IPV6, ipv6_src=PREFIX + _hex(pkt["ipv4_src"]),
               ipv6_dst=PREFIX + _hex(pkt["ipv4_dst"]), **l2)
    return out


def _hex(v4: str) -> str:
    n = int(IPv4Address(v4))
    return f"{n >> 16:x}:{n & 0xFFFF:x}"


def round_trip(p: Platform, vm_ipv6: str, vm_port: int, sport: int, direct: bool = False):
    """One TCP exchange svc1 -> a VM and back, hop by hop; ``direct``: host2 already
    learnt where the VM is (an earlier answer), so the packet skips the appliance."""
    ep_mac = p.model.endpoint_by_ipv6(IPv6Address(SVC1)).mac
    # 210 -> 216: the encapsulator on host2
    t = p.sw["host2"].trace(tcp6(SVC1, vm_ipv6, sport, 80, eth_src=ep_mac,
                                 eth_dst=gateway.GATEWAY_MAC), 10)
    if direct:
        assert t.is_output(GENEVE, tun_ipv4_dst=p.ip("host1"), tunnel_id=VNI), str(t)
        pkt = arrive(t.output_packet(GENEVE), tun_ipv4_src=p.ip("host2"), tunnel_id=VNI)
    else:
        assert t.is_output(GENEVE, tun_ipv4_dst=p.ip("appliance"), tunnel_id=VNI), str(t)
        # 216 -> 234: the appliance rewrites the outer destination and hairpins
        pkt = arrive(t.output_packet(GENEVE), tun_ipv4_src=p.ip("host2"), tunnel_id=VNI)
        t = p.sw["appliance"].trace(pkt, GENEVE)
        assert t.is_output(GENEVE, tun_ipv4_dst=p.ip("host1")), str(t)
        # 234 -> decapsulated on host1 -> pair -> two IPv6 NATs -> the translator
        pkt = arrive(t.output_packet(GENEVE), tun_ipv4_src=p.ip("appliance"), tunnel_id=VNI)
    t = p.host1_in(pkt)
    # both IPv6 NATs, then out to the translator: one recirculation between them, none
    # after the second (issue 21, lever 2: the DNAT's ct has no table)
    assert t.stages()[-2:] == ["pair", "v6_dnat"] and "to_translator" not in t.stages(), str(t)
    to_xlat = t.output_packet(XLAT)
    assert to_xlat["eth_dst"] == translator_mac("host1")
    assert to_xlat["ipv6_dst"] == PREFIX + "a00:4"
    alias6 = to_xlat["ipv6_src"]
    assert alias6.startswith(PREFIX + "c612:")      # 198.18.x.y
    # TAYGA -> 248: SNAT to Platform_IP in the VNet's zone, out to the VM
    t = p.sw["host1"].trace(tayga_6to4(arrive(to_xlat), eth_src=translator_mac("host1"),
                                       eth_dst=gateway.GATEWAY_MAC), XLAT)
    at_vm = t.output_packet(vm_port)
    assert at_vm["ipv4_src"] == "100.100.0.1" and at_vm["ipv4_dst"] == "10.0.0.4"
    assert at_vm["eth_src"] == gateway.GATEWAY_MAC and at_vm["tcp_dst"] == 80
    # 253: the VM answers Platform_IP:port -> un-SNAT -> return rule -> the translator
    reply = tcp4("10.0.0.4", "100.100.0.1", 80, at_vm["tcp_src"], eth_dst=gateway.GATEWAY_MAC)
    t = p.sw["host1"].trace(reply, vm_port)
    back = t.output_packet(XLAT)
    assert back["ipv4_dst"] == str(IPv4Address(int(IPv6Address(alias6)) & 0xFFFFFFFF))
    assert back["tcp_dst"] == sport
    # TAYGA -> 258: undo both IPv6 NATs -> 262: straight to host2, not to the appliance
    t = p.sw["host1"].trace(tayga_4to6(arrive(back), eth_src=translator_mac("host1")), XLAT)
    assert t.stages() == ["classify", "from_translator", "to_service"], str(t)   # one pass fewer
    assert [zone for zone, _, _ in t.cts] == [ZONE_V6_DNAT, ZONE_V6_SNAT], str(t)
    assert t.is_output(GENEVE, tun_ipv4_dst=p.ip("host2"), ipv6_src=vm_ipv6, ipv6_dst=SVC1,
                       tcp_src=80, tcp_dst=sport), str(t)
    # decapsulated on host2 and delivered to svc1
    pkt = arrive(t.output_packet(GENEVE), tun_ipv4_src=p.ip("host1"), tunnel_id=VNI)
    t = p.sw["host2"].trace(pkt, GENEVE)
    assert t.is_output(10, eth_dst=ep_mac, ipv6_src=vm_ipv6, ipv6_dst=SVC1), str(t)
    return alias6, at_vm


def test_service_reaches_both_vms_with_the_same_ipv4_and_gets_answers(p):
    alias_a, at_a = round_trip(p, A6, 10, 40000)
    alias_b, at_b = round_trip(p, B6, 11, 40000)
    assert alias_a != alias_b
    # same 10.0.0.4, same service port: different VNet zones keep them apart
    assert p.sw["host1"].conntrack.connections(1) and p.sw["host1"].conntrack.connections(2)


def test_second_connection_of_a_pair_needs_no_controller(p):
    round_trip(p, A6, 10, 40000)
    installed = p.logic.stats["pairs_installed"]
    # the first one's answer taught host2 the direct path: host2 -> host1, no appliance
    round_trip(p, A6, 10, 40001, direct=True)
    assert p.logic.stats["pairs_installed"] == installed


def test_vm_cannot_open_connections_to_platform_ip(p):
    round_trip(p, A6, 10, 40000)
    t = p.sw["host1"].trace(tcp4("10.0.0.4", "100.100.0.1", 5555, 22), 10)
    assert t.dropped and reason(t) == "vm_initiated", str(t)


def test_a_vm_cannot_use_another_vms_connection(p):
    _, at_a = round_trip(p, A6, 10, 40000)
    # b-vm1 (also 10.0.0.4) forges a reply to a-vm1's connection
    t = p.sw["host1"].trace(tcp4("10.0.0.4", "100.100.0.1", 80, at_a["tcp_src"]), 11)
    assert t.dropped and reason(t) == "vm_initiated", str(t)


def test_geneve_from_a_host_is_a_reply_its_endpoints_direct_path_or_dropped(p):
    """What host2 (a known host, not the appliance) sends host1: from svc1 (host2's own
    endpoint) to a-vm1 with no pair on host1 yet, it is passed on to the appliance (a stale
    direct entry, module customer ``bounce_flows``); from any other address to a platform
    address, dropped as ``not_direct``; to anything else, it must be a reply to one of
    host1's endpoints (``not_a_reply``)."""
    pkt = tcp6(SVC1, A6, 1, 80, tun_ipv4_src=p.ip("host2"), tunnel_id=VNI, tun_metadata0=TOKEN)
    t = p.sw["host1"].trace(pkt, GENEVE)
    assert t.is_output(GENEVE, tun_ipv4_dst=p.ip("appliance"), tun_metadata0=TOKEN), str(t)
    assert t.stages() == ["classify", "from_tunnel"], str(t)
    t = p.sw["host1"].trace({**pkt, "ipv6_src": "fd00:5e:1::99"}, GENEVE)
    assert t.dropped and not t.punts and reason(t) == "not_direct", str(t)
    t = p.sw["host1"].trace({**pkt, "ipv6_dst": "fd00:5e:1::98"}, GENEVE)
    assert t.dropped and not t.punts and reason(t) == "not_a_reply", str(t)


def test_a_pairs_direct_packets_are_accepted_only_from_its_endpoints_host(p):
    round_trip(p, A6, 10, 40000)
    pkt = tcp6(SVC1, A6, 2, 80, tun_ipv4_src=p.ip("host2"), tunnel_id=VNI, tun_metadata0=TOKEN)
    t = p.host1_in(pkt)
    assert t.is_output(XLAT), str(t)               # the pair's direct flow: on to the translator
    assert "pair" in t.stages(), str(t)
    for forged in ({**pkt, "tun_metadata0": TOKEN ^ 1}, {**pkt, "tun_ipv4_src": p.ip("appliance"), "tun_metadata0": 0}):
        assert p.sw["host1"].trace(forged, GENEVE).dropped, forged


def test_every_hop_into_the_fabric_carries_the_token_and_every_node_wants_it(p):
    """The round trip (above) only works with the token on every hop; here each node,
    given a packet that would be accepted from the right outer source, drops it in
    ``from_tunnel`` when the token is missing or wrong - never punts it."""
    round_trip(p, A6, 10, 40000)
    t = p.sw["host2"].trace(tcp6(SVC1, A6, 40000, 80, eth_dst=gateway.GATEWAY_MAC), 10)
    assert t.output_packet(GENEVE)["tun_metadata0"] == TOKEN
    cases = {   # node: (packet, outer source that node accepts)
        "appliance": (tcp6(SVC1, A6, 40000, 80), "host2"),
        "host1": (tcp6(SVC1, A6, 40000, 80), "appliance"),
        "host2": (tcp6(A6, SVC1, 80, 40000, tcp_flags=0x12), "host1"),
    }
    for node, (pkt, source) in cases.items():
        ok = p.sw[node].trace({**pkt, "tun_ipv4_src": p.ip(source), "tunnel_id": VNI,
                               "tun_metadata0": TOKEN}, GENEVE)
        assert ok.outputs, (node, str(ok))
        for token in (None, TOKEN ^ 1):
            bad = {**pkt, "tun_ipv4_src": p.ip(source), "tunnel_id": VNI}
            if token is not None:
                bad["tun_metadata0"] = token
            t = p.sw[node].trace(bad, GENEVE)
            assert not t.outputs and not t.punts and t.dropped_at == "from_tunnel", (node, str(t))
            assert reason(t) == "untrusted_tunnel", (node, str(t))


def test_without_a_token_in_the_nb_nothing_matches_or_sets_one():
    topo = topology.load(DEFAULT_TOPOLOGY)
    model = M.from_topology(topo, bindings=M.topology_bindings(topo, vif_port))   # an NB from before tokens
    logic = Logic(lambda: model)
    for node in model.nodes:
        _, msgs = logic.switch_connected(node.datapath_id, PORTS[node.name])
        assert not [m for m in msgs if isinstance(m, Flow) and "tun_metadata0" in m.ofctl()]


def test_a_known_host_delivers_to_an_endpoint_only_replies_to_what_it_sent(p):
    """host2 keeps state for its endpoints: a "reply" from host1's address (e.g. a node
    spoofing it) for a connection svc1 never made stops in ``to_endpoint``."""
    forged = tcp6(A6, SVC1, 80, 40000, tun_ipv4_src=p.ip("host1"), tunnel_id=VNI, tcp_flags=0x12,
                  tun_metadata0=TOKEN)
    t = p.sw["host2"].trace(forged, GENEVE)
    assert not t.outputs and not t.punts and t.dropped_at == "to_endpoint", str(t)
    assert reason(t) == "not_a_reply", str(t)
    round_trip(p, A6, 10, 40000)              # svc1 -> a-vm1 from port 40000 and back
    t = p.sw["host2"].trace(forged, GENEVE)   # now the same tuple is a reply
    assert t.is_output(10, ipv6_src=A6, ipv6_dst=SVC1), str(t)
    other = tcp6(A6, SVC1, 80, 40001, tun_ipv4_src=p.ip("host1"), tunnel_id=VNI, tcp_flags=0x12,
                 tun_metadata0=TOKEN)
    assert p.sw["host2"].trace(other, GENEVE).dropped


def test_appliance_drops_unknown_destinations_without_punting(p):
    pkt = tcp6(SVC1, "fd41::3930:99:6600:a00:4", 1, 80, tun_ipv4_src=p.ip("host2"), tunnel_id=VNI,
               tun_metadata0=TOKEN)
    t = p.sw["appliance"].trace(pkt, GENEVE)
    assert t.dropped and not t.punts and t.dropped_at == "route", str(t)
    assert reason(t) == "unknown_destination", str(t)
    pkt = tcp6(SVC1, A6, 1, 80, tun_ipv4_src="192.168.64.99", tunnel_id=VNI,   # not a known host
               tun_metadata0=TOKEN)
    t = p.sw["appliance"].trace(pkt, GENEVE)
    assert t.dropped and reason(t) == "untrusted_tunnel", str(t)


def test_a_host_drops_what_the_appliance_sends_for_a_vm_it_does_not_hold(p):
    """From the appliance, with the token, to a platform address that is no subscribed
    VM of host1 (an address no VM has): dropped, counted
    under its own reason, never punted."""
    pkt = tcp6(SVC1, "fd41::3930:1f:6600:a00:63", 1, 80, tun_ipv4_src=p.ip("appliance"),
               tunnel_id=VNI, tun_metadata0=TOKEN)
    t = p.sw["host1"].trace(pkt, GENEVE)
    assert t.dropped and not t.punts and reason(t) == "unknown_destination", str(t)
    t = p.sw["host1"].trace({k: v for k, v in pkt.items() if k != "tun_metadata0"}, GENEVE)
    assert t.dropped and reason(t) == "untrusted_tunnel", str(t)


def test_service_cannot_spoof_its_source_or_leave_the_prefix(p):
    t = p.sw["host2"].trace(tcp6("fd00:5e:1::11", A6, 1, 80), 10)
    assert t.dropped and reason(t) == "spoofed_source", str(t)
    t = p.sw["host2"].trace(tcp6(SVC1, "2001:db8::1", 1, 80), 10)
    assert t.dropped and reason(t) == "not_to_platform", str(t)


def test_gateway_answers_neighbour_solicitation(p):
    ep_mac = p.model.endpoint_by_ipv6(IPv6Address(SVC1)).mac
    ns = {"eth_type": ETH_IPV6, "eth_src": ep_mac, "eth_dst": "33:33:ff:00:00:01",
          "ipv6_src": "fe80::5e:1", "ipv6_dst": "ff02::1:ff00:1", "ip_proto": 58,
          "icmpv6_type": 135, "icmpv6_code": 0, "ipv6_nd_target": "fe80::1", "ipv6_nd_sll": ep_mac}
    t = p.sw["host2"].trace(ns, 10)
    na = t.output_packet(10)
    assert na["icmpv6_type"] == 136 and na["ipv6_nd_tll"] == gateway.GATEWAY_MAC
    assert na["eth_dst"] == ep_mac and na["eth_src"] == gateway.GATEWAY_MAC
    assert na["ipv6_src"] == "fe80::1" and na["ipv6_dst"] == "fe80::5e:1"
    assert na["nd_options_type"] == 2 and na["nd_reserved"] == 0xE0000000


def test_gateway_answers_arp_from_its_vm_only(p):
    vm = next(v for v in p.model.vms if v.name == "a-vm1")
    arp = {"eth_type": ETH_ARP, "eth_src": vm.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "arp_op": 1,
           "arp_spa": "10.0.0.4", "arp_tpa": "10.0.0.1", "arp_sha": vm.mac, "arp_tha": "00:00:00:00:00:00"}
    reply = p.sw["host1"].trace(arp, 10).output_packet(10)
    assert reply["arp_op"] == 2 and reply["arp_sha"] == gateway.GATEWAY_MAC
    assert reply["arp_spa"] == "10.0.0.1" and reply["arp_tpa"] == "10.0.0.4"
    assert reply["eth_dst"] == vm.mac
    t = p.sw["host1"].trace({**arp, "arp_tpa": "10.0.0.9"}, 10)
    assert t.dropped and reason(t) == "vm_not_to_platform", str(t)


def test_a_vms_syn_on_a_flow_the_service_opened_goes_back_to_the_service(p):
    """TCP simultaneous open (issue 19, deviation 4): a-vm1 sends a SYN of its own on a
    flow svc1 opened. Conntrack takes it as a reply - ``+trk+est+rpl`` with vnet64's
    patched ovs-vswitchd, as with Linux's (SimpleConntrack: any reply-direction packet) -
    and no return stage looks at TCP flags, so it reaches svc1 as a SYN from a-vm1's
    platform address. Debian's ovs-vswitchd made it ``+trk+new+dnat`` in the VNet zone,
    which ``vm_return`` drops, like any packet a VM starts (docs/lab.md, "TCP
    simultaneous open"; tests/lab/test_simultaneous_open.py)."""
    alias6, at_vm = round_trip(p, A6, 10, 40000)
    syn = tcp4("10.0.0.4", "100.100.0.1", 80, at_vm["tcp_src"], eth_dst=gateway.GATEWAY_MAC,
               tcp_flags=0x002)
    t = p.sw["host1"].trace(syn, 10)
    back = t.output_packet(XLAT)
    assert back["tcp_flags"] == 0x002 and back["tcp_dst"] == 40000, str(t)
    t = p.sw["host1"].trace(tayga_4to6(arrive(back), eth_src=translator_mac("host1")), XLAT)
    assert t.is_output(GENEVE, tun_ipv4_dst=p.ip("host2"), ipv6_src=A6, ipv6_dst=SVC1,
                       tcp_src=80, tcp_dst=40000, tcp_flags=0x002), str(t)
    pkt = arrive(t.output_packet(GENEVE), tun_ipv4_src=p.ip("host1"), tunnel_id=VNI)
    t = p.sw["host2"].trace(pkt, GENEVE)
    assert t.is_output(10, ipv6_src=A6, ipv6_dst=SVC1, tcp_flags=0x002), str(t)
    # what Debian's userspace conntrack said of that SYN: dropped where a VM's own would be
    t = p.sw["host1"].trace(syn, 10, ct=FixedCt({1: "+trk+new+dnat"}))
    assert not t.outputs and not t.punts and t.dropped_at == "vm_return", str(t)


def test_icmp_error_from_the_vm_reaches_the_service_as_related(p):
    alias6, at_vm = round_trip(p, A6, 10, 40000)
    err = {"eth_type": ETH_IPV4, "ipv4_src": "10.0.0.4", "ipv4_dst": "100.100.0.1", "ip_proto": 1,
           "icmpv4_type": 3, "icmpv4_code": 3,
           "inner_ipv4_src": "100.100.0.1", "inner_ipv4_dst": "10.0.0.4", "inner_ip_proto": 6,
           "inner_tcp_src": at_vm["tcp_src"], "inner_tcp_dst": 80}
    t = p.sw["host1"].trace(err, 10)
    back = t.output_packet(XLAT)
    assert back["inner_ipv4_src"] == str(IPv4Address(int(IPv6Address(alias6)) & 0xFFFFFFFF))
    assert back["inner_tcp_src"] == 40000
    # TAYGA makes an ICMPv6 error of it; the v6 zones un-NAT it (outer and quoted packet)
    # and it goes straight to svc1's host, not through the controller
    err6 = {"eth_type": ETH_IPV6, "eth_src": translator_mac("host1"), "eth_dst": gateway.GATEWAY_MAC,
            "ipv6_src": PREFIX + "a00:4", "ipv6_dst": alias6, "ip_proto": 58,
            "icmpv6_type": 1, "icmpv6_code": 4,
            "inner_ipv6_src": alias6, "inner_ipv6_dst": PREFIX + "a00:4", "inner_ip_proto": 6,
            "inner_tcp_src": 40000, "inner_tcp_dst": 80}
    t = p.sw["host1"].trace(err6, XLAT)
    assert not t.punts, str(t)
    assert t.is_output(GENEVE, tun_ipv4_dst=p.ip("host2"), ipv6_src=A6, ipv6_dst=SVC1,
                       inner_ipv6_src=SVC1, inner_ipv6_dst=A6, inner_tcp_src=40000,
                       inner_tcp_dst=80), str(t)
