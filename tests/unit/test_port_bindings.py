"""VMs and endpoints are wired from the NB's port bindings, never from interface names.

Three strict fake switches programmed by one Logic, as in test_pipeline_trace, but the
interfaces have names of the hypervisor's choosing (libvirt's ``vnetN``, ``tap-...``)
and the model's bindings (what the node agents record in the NB) say whose they are.
A binding change reaches the switches the way the NB's does: ``Logic.nb_changed``.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, IPv6Address

import pytest

from tests.conftest import DEFAULT_TOPOLOGY
from tests.support.fake import FakeSwitch
from vnet64 import gateway, topology
from vnet64.controller import model as M
from vnet64.controller.flows import ETH_ARP, ETH_IPV6, DeleteFlows, Flow, PacketOut
from vnet64.controller.logic import EXACT, Logic
from vnet64.controller.pipeline import HOST_TABLES, VNI, Cookie, cookie
from vnet64.controller.roles import Ports, customer
from vnet64.ports import translator_mac

GENEVE, XLAT = 1, 2
SVC1 = "fd00:5e:1::10"
A6, B6 = "fd41::3930:1f:6600:a00:4", "fd41::3930:20:6600:a00:4"
PREFIX = "fd64:64::"
TOKEN = 0x5EC0E7A1
# interface names as a hypervisor picks them; "v-a-vm1" is the lab's name for a-vm1's
# port: here it is just some interface nobody bound
PORTS = {
    "appliance": {"geneve0": GENEVE},
    "host1": {"geneve0": GENEVE, "xlat0": XLAT, "vnet0": 10, "vnet1": 11, "v-a-vm1": 12},
    "host2": {"geneve0": GENEVE, "xlat0": XLAT, "tap-svc1": 10, "vnet5": 15, "vnet0": 16},
}
A_ON_1 = M.Binding("a-vm1", "vm", "host1", "vnet0", ofport=10)
B_ON_1 = M.Binding("b-vm1", "vm", "host1", "vnet1")
A_ON_2 = M.Binding("a-vm1", "vm", "host2", "vnet5", ofport=15)
SVC1_ON_2 = M.Binding("svc1", "endpoint", "host2", "tap-svc1")
SVC1_PORT = 10
EVERYONE = (A_ON_1, B_ON_1, SVC1_ON_2)


class Platform:
    """The default topology's three nodes; ``bind`` gives them the model an NB with these
    bindings would give (each VM and endpoint on its binding's node) and applies what
    ``nb_changed`` sends."""

    def __init__(self, bindings=EVERYONE, ports=PORTS):
        self.topo = topology.load(DEFAULT_TOPOLOGY)
        self.ports = {node: dict(p) for node, p in ports.items()}
        self.model = M.from_topology(self.topo, tunnel_token=TOKEN, bindings=bindings)
        self.logic = Logic(lambda: self.model)
        self.sw: dict[str, FakeSwitch] = {}
        for node in self.model.nodes:
            tables, msgs = self.logic.switch_connected(node.datapath_id, self.ports[node.name])
            self.sw[node.name] = FakeSwitch(tables)
            self.sw[node.name].apply(msgs)

    def dpid(self, node: str) -> int:
        return self.model.node(node).datapath_id

    def ip(self, node: str) -> str:
        return str(self.model.node(node).underlay_ip)

    def bind(self, *bindings: M.Binding) -> None:
        self.model = M.from_topology(self.topo, tunnel_token=TOKEN, bindings=bindings)
        for dpid, msgs in self.logic.nb_changed().items():
            self.sw[self.model.node_by_dpid(dpid).name].apply(msgs)

    def port_status(self, node: str, **changes: int | None) -> None:
        """Interfaces added (name=ofport) or deleted (name=None) on ``node``'s switch."""
        for name, ofport in changes.items():
            if ofport is None:
                del self.ports[node][name]
            else:
                self.ports[node][name] = ofport
        self.sw[node].apply(self.logic.ports_changed(self.dpid(node), dict(self.ports[node])))

    def vm_flows(self, node: str, vm: str) -> list[Flow]:
        return [f for f in self.sw[node].flows() if f.cookie == cookie("host", "vm", vm)]

    def in_ports(self, node: str) -> set[int]:
        return {f.match.get("in_port") for f in self.sw[node].flows() if "in_port" in f.match}

    def route(self, vm6: str) -> str | None:
        """The host the appliance sends a packet for ``vm6`` to (None: dropped)."""
        pkt = tcp6(SVC1, vm6, 40000, 80, tun_ipv4_src=self.ip("host2"), tunnel_id=VNI, tun_metadata0=TOKEN)
        t = self.sw["appliance"].trace(pkt, GENEVE)
        if not t.outputs:
            return None
        dst = t.output_packet(GENEVE)["tun_ipv4_dst"]
        return next(n.name for n in self.model.nodes if str(n.underlay_ip) == dst)

    def deliver(self, vm6: str, sport: int = 40000) -> tuple[str | None, int | None]:
        """svc1 -> ``vm6``: (the host it reached, the port it left that host by)."""
        ep_mac = self.model.endpoint_by_ipv6(IPv6Address(SVC1)).mac
        t = self.sw["host2"].trace(tcp6(SVC1, vm6, sport, 80, eth_src=ep_mac, eth_dst=gateway.GATEWAY_MAC),
                                   SVC1_PORT)
        assert t.is_output(GENEVE, tun_ipv4_dst=self.ip("appliance")), str(t)
        t = self.sw["appliance"].trace(arrive(t.output_packet(GENEVE), tun_ipv4_src=self.ip("host2")),
                                       GENEVE)
        host = self.route(vm6)
        if host is None:
            return None, None
        pkt = arrive(t.output_packet(GENEVE), tun_ipv4_src=self.ip("appliance"))
        t = self.sw[host].trace(pkt, GENEVE)
        if t.punts:   # the pair's first packet: the controller sets it up and re-injects it
            msgs = self.logic.packet_in(self.dpid(host), HOST_TABLES.id("pair"), GENEVE, frame(pkt))
            self.sw[host].apply([m for m in msgs if isinstance(m, Flow)])
            if not any(isinstance(m, PacketOut) for m in msgs):
                return host, None
            t = self.sw[host].trace(pkt, GENEVE, table="pair")
        if not t.is_output(XLAT):
            return host, None
        to_xlat = t.output_packet(XLAT)
        t = self.sw[host].trace(tayga_6to4(arrive(to_xlat), eth_src=translator_mac(host),
                                           eth_dst=gateway.GATEWAY_MAC), XLAT)
        assert len(t.outputs) <= 1, str(t)
        return host, (t.ports() or [None])[0]


def tcp6(src, dst, sport, dport, **extra) -> dict:
    return {"eth_type": ETH_IPV6, "ipv6_src": src, "ipv6_dst": dst, "ip_proto": 6,
            "tcp_src": sport, "tcp_dst": dport, **extra}


def arrive(pkt: dict, **outer) -> dict:
    keep = {k: v for k, v in pkt.items()
            if k != "in_port" and not k.startswith(("ct_", "reg", "tun_", "tunnel_id"))}
    if outer:
        keep.update({k: v for k, v in pkt.items() if k.startswith("tun_metadata")}, tunnel_id=VNI)
    return {**keep, **outer}


def frame(pkt: dict) -> bytes:
    src, dst = IPv6Address(pkt["ipv6_src"]), IPv6Address(pkt["ipv6_dst"])
    return (b"\x02\x00\x00\x00\x00\x01" * 2 + b"\x86\xdd" + b"\x60\x00\x00\x00\x00\x14\x06\x40"
            + src.packed + dst.packed + b"\x00" * 20)


def tayga_6to4(pkt: dict, **l2) -> dict:
    out = {k: v for k, v in pkt.items() if not k.startswith(("ipv6", "eth", "in_port", "ct_", "reg"))}
    out.update(eth_type=0x0800, ipv4_src=str(IPv4Address(int(IPv6Address(pkt["ipv6_src"])) & 0xFFFFFFFF)),
               ipv4_dst=str(IPv4Address(int(IPv6Address(pkt["ipv6_dst"])) & 0xFFFFFFFF)), **l2)
    return out


def pair_flows_on(p: Platform, node: str, vm6: str = A6) -> list[Flow]:
    """The flows of ``node``'s pairs towards ``vm6`` (found by their pair-table flow)."""
    pairs = [f for f in p.sw[node].flows() if Cookie.decode(f.cookie).feature == "pair"]
    tables: dict[int, set] = {}
    for f in pairs:
        tables.setdefault(Cookie.decode(f.cookie).obj, set()).add(f.table)
    assert all(customer.pair_complete(t) for t in tables.values()), f"a pair not whole: {tables}"
    indexes = {Cookie.decode(f.cookie).obj for f in pairs
               if f.table == "pair" and f.match.get("ipv6_dst") == vm6}
    return [f for f in pairs if Cookie.decode(f.cookie).obj in indexes]


@pytest.fixture
def p():
    return Platform()


def test_a_vm_bound_on_its_host_gets_its_flows_under_the_bound_interface(p):
    assert p.deliver(A6) == ("host1", 10) and p.deliver(B6) == ("host1", 11)
    assert {f.match.get("in_port") for f in p.vm_flows("host1", "a-vm1")} >= {10}
    assert p.route(A6) == "host1"
    # the ARP responder answers on the bound port
    vm = next(v for v in p.model.vms if v.name == "a-vm1")
    arp = {"eth_type": ETH_ARP, "eth_src": vm.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "arp_op": 1,
           "arp_spa": "10.0.0.4", "arp_tpa": "10.0.0.1", "arp_sha": vm.mac, "arp_tha": "00:00:00:00:00:00"}
    assert p.sw["host1"].trace(arp, 10).output_packet(10)["arp_op"] == 2
    # the interface named the lab's way for a-vm1 is nobody's port
    assert 12 not in p.in_ports("host1")
    assert p.sw["host1"].trace(arp, 12).dropped


def test_rebinding_a_vm_to_another_host_moves_its_flows_and_its_route(p):
    """Live migration: a-vm1's port appears on host2 and host2's agent binds it there
    (the NB moves the VM and its host mapping in the same transaction)."""
    assert p.deliver(A6) == ("host1", 10)
    assert pair_flows_on(p, "host1")
    p.bind(A_ON_2, B_ON_1, SVC1_ON_2)
    assert p.vm_flows("host1", "a-vm1") == [] and 10 not in p.in_ports("host1")
    assert len(pair_flows_on(p, "host1")) == 0 and p.logic.stats["pairs_revoked"] == 1
    assert {f.match.get("in_port") for f in p.vm_flows("host2", "a-vm1")} >= {15}
    assert p.route(A6) == "host2"
    assert p.deliver(A6) == ("host2", 15)
    assert p.deliver(B6) == ("host1", 11)          # b-vm1 untouched
    # and back
    p.bind(A_ON_1, B_ON_1, SVC1_ON_2)
    assert p.vm_flows("host2", "a-vm1") == [] and p.route(A6) == "host1"
    assert p.deliver(A6, sport=40001) == ("host1", 10)


def test_an_endpoint_rebound_to_another_host_moves_its_flows(p):
    def classify(node):
        return [f for f in p.sw[node].flows("classify") if f.cookie == cookie("host", "endpoint", "svc1")]
    assert [f.match.get("in_port") for f in classify("host2")] == [SVC1_PORT]
    p.bind(A_ON_1, B_ON_1, M.Binding("svc1", "endpoint", "host1", "v-a-vm1"))
    assert classify("host2") == [] and [f.match.get("in_port") for f in classify("host1")] == [12]
    # the return path on host1 now delivers to svc1 locally rather than tunnelling to host2
    to_service = [f for f in p.sw["host1"].flows("to_service") if f.cookie == cookie("host", "endpoint", "svc1")]
    assert to_service and all("tun_ipv4_dst" not in f.ofctl() for f in to_service)


def test_a_binding_to_another_node_is_not_wired(p):
    """host2 has an interface called vnet0 too; a-vm1's binding is host1's vnet0."""
    assert 16 not in p.in_ports("host2") and p.vm_flows("host2", "a-vm1") == []
    # nor does host1 wire what is bound on host2
    p.bind(A_ON_2, B_ON_1, SVC1_ON_2)
    assert 15 not in p.in_ports("host1") and 10 not in p.in_ports("host1")
    # a hand-made model whose VM says host1 while its binding says host2 wires it nowhere
    model = M.from_topology(p.topo, tunnel_token=TOKEN, bindings=EVERYONE)
    model = M.Model(model.platform_ip, model.translator_prefix, model.appliance, model.nodes, model.vms,
                    model.endpoints, TOKEN, (A_ON_2, B_ON_1, SVC1_ON_2))
    assert next(v for v in model.vms if v.name == "a-vm1").host == "host1"
    for node in ("host1", "host2"):
        ports = Ports.of(model, node, PORTS[node])
        assert (ports.vif("vm", "a-vm1") is None) == (node == "host1")
    logic = Logic(lambda: model)
    for node in ("host1", "host2"):
        _, msgs = logic.switch_connected(model.node(node).datapath_id, PORTS[node])
        assert not [m for m in msgs if isinstance(m, Flow) and m.cookie == cookie("host", "vm", "a-vm1")]


def test_a_bound_vm_whose_interface_is_absent_is_wired_when_it_appears(p):
    p.bind(M.Binding("a-vm1", "vm", "host1", "vnet9"), B_ON_1, SVC1_ON_2)
    assert p.vm_flows("host1", "a-vm1") == [] and 10 not in p.in_ports("host1")
    assert p.route(A6) == "host1"                  # the host mapping says host1 all the same
    p.port_status("host1", vnet9=19)
    assert {f.match.get("in_port") for f in p.vm_flows("host1", "a-vm1")} >= {19}
    assert p.deliver(A6) == ("host1", 19)
    p.port_status("host1", vnet9=None)             # gone again: unwired, its pair with it
    assert p.vm_flows("host1", "a-vm1") == [] and not pair_flows_on(p, "host1")


def test_an_unbound_vm_is_not_wired_and_its_first_packet_is_refused():
    p = Platform(bindings=(B_ON_1, SVC1_ON_2))
    assert p.vm_flows("host1", "a-vm1") == []
    assert not p.in_ports("host1") & {10, 12}       # neither vnet0 nor the lab-named v-a-vm1
    assert p.deliver(B6) == ("host1", 11)
    # the appliance still routes by the host mapping; host1 has no port for a-vm1: refused
    msgs = p.logic.packet_in(p.dpid("host1"), HOST_TABLES.id("pair"), GENEVE, frame(tcp6(SVC1, A6, 1, 80)))
    assert len(msgs) == 1 and p.logic.stats["pairs_denied"] == 1
    # bound, wired; unbound again, unwired with its pair
    p.sw["host1"].apply(msgs)
    p.bind(A_ON_1, B_ON_1, SVC1_ON_2)
    p.sw["host1"].apply(DeleteFlows(msgs[0].cookie, EXACT))   # the deny flow's hard timeout
    assert p.deliver(A6) == ("host1", 10)
    p.bind(B_ON_1, SVC1_ON_2)
    assert p.vm_flows("host1", "a-vm1") == [] and not pair_flows_on(p, "host1")


def test_a_renamed_interface_is_wired_by_its_new_name(p):
    """The VM's interface is re-created as vnet7 (same iface-id): the port status and the
    agent's new binding arrive in either order; wired by the new name once both agree."""
    assert p.deliver(A6) == ("host1", 10)
    p.port_status("host1", vnet0=None, vnet7=17)   # the switch first
    assert p.vm_flows("host1", "a-vm1") == [] and not pair_flows_on(p, "host1")
    p.bind(M.Binding("a-vm1", "vm", "host1", "vnet7", ofport=17), B_ON_1, SVC1_ON_2)
    assert {f.match.get("in_port") for f in p.vm_flows("host1", "a-vm1")} >= {17}
    assert p.deliver(A6, sport=40001) == ("host1", 17)
    # the other order: the binding first (the interface is not there yet), then the port
    p.bind(M.Binding("a-vm1", "vm", "host1", "vnet8"), B_ON_1, SVC1_ON_2)
    assert p.vm_flows("host1", "a-vm1") == []
    p.port_status("host1", vnet7=None, vnet8=18)
    assert p.deliver(A6, sport=40002) == ("host1", 18)


def test_a_pair_whose_vm_port_changed_is_deleted_and_set_up_again(p):
    """Its return rule matches the VM's old port: kept, replies from the new one would drop."""
    assert p.deliver(A6) == ("host1", 10)
    p.bind(M.Binding("a-vm1", "vm", "host1", "v-a-vm1"), B_ON_1, SVC1_ON_2)   # now interface 12
    assert not pair_flows_on(p, "host1") and p.logic.stats["pairs_revoked"] == 1
    assert p.deliver(A6, sport=40001) == ("host1", 12)
    returns = [f for f in pair_flows_on(p, "host1") if f.table == "vm_return"]
    assert [f.match.get("in_port") for f in returns] == [12]


def test_resync_does_not_adopt_a_pair_whose_return_rule_matches_another_port():
    p = Platform()
    sw = p.logic.switches[p.dpid("host1")]
    t, alias = HOST_TABLES.id, "198.18.0.4"
    found = [(cookie("host", "pair", i), t("pair"), 100,
              {"eth_type": 0x86DD, "ipv6_src": SVC1, "ipv6_dst": dst}) for i, dst in ((4, A6), (5, B6))]
    found += [(cookie("host", "pair", i), t("from_translator"), 100,
               {"eth_type": 0x800, "ipv4_src": f"198.18.0.{i}", "ipv4_dst": "10.0.0.4"}) for i in (4, 5)]
    found += [(cookie("host", "pair", 4), t("vm_return"), 100, {"eth_type": 0x800, "in_port": 10, "ipv4_dst": alias}),
              (cookie("host", "pair", 5), t("vm_return"), 100,   # b-vm1 is on 11 now
               {"eth_type": 0x800, "in_port": 12, "ipv4_dst": "198.18.0.5"})]
    p.logic.resynced(p.dpid("host1"), found)
    assert sw.pairs == {4: ("svc1", "a-vm1")} and sw.pair_ports == {4: 10}
    assert p.logic.stats["stale_pairs_swept"] == 1


def test_an_interface_two_bindings_claim_is_wired_for_neither(caplog):
    with caplog.at_level(logging.WARNING, logger="vnet64.controller.logic"):
        p = Platform(bindings=(A_ON_1, M.Binding("b-vm1", "vm", "host1", "vnet0"), SVC1_ON_2))
    assert p.vm_flows("host1", "a-vm1") == [] and p.vm_flows("host1", "b-vm1") == []
    assert "host1: vnet0 bound to more than one VM or endpoint in the NB: not wired" in caplog.text
    ports = Ports.of(p.model, "host1", PORTS["host1"])
    assert ports.contested == ("vnet0",) and ports.vifs == {}


def test_ports_come_from_bindings_and_the_switch_only():
    model = M.from_topology(topology.load(DEFAULT_TOPOLOGY), bindings=EVERYONE)
    ports = Ports.of(model, "host1", PORTS["host1"])
    assert (ports.geneve, ports.xlat) == (GENEVE, XLAT)
    assert ports.vifs == {("vm", "a-vm1"): 10, ("vm", "b-vm1"): 11}
    # the switch's number counts, not the NB's (the agent's view)
    model = M.from_topology(topology.load(DEFAULT_TOPOLOGY),
                            bindings=(M.Binding("a-vm1", "vm", "host1", "vnet0", ofport=99),))
    assert Ports.of(model, "host1", PORTS["host1"]).vif("vm", "a-vm1") == 10
    # a binding's kind must match: a-vm1 is no endpoint
    assert Ports.of(model, "host1", PORTS["host1"]).vif("endpoint", "a-vm1") is None
    # no bindings: no VM and no endpoint, whatever the interfaces are called
    bare = M.from_topology(topology.load(DEFAULT_TOPOLOGY))
    assert bare.bindings == () and Ports.of(bare, "host1", PORTS["host1"]).vifs == {}


def test_topology_bindings_bind_everyone_on_their_topology_host():
    topo = topology.load(DEFAULT_TOPOLOGY)
    bindings = M.topology_bindings(topo, lambda kind, name: f"{kind[0]}:{name}")
    assert sorted((b.logical_port, b.kind, b.node, b.port) for b in bindings) == [
        ("a-vm1", "vm", "host1", "v:a-vm1"), ("b-vm1", "vm", "host1", "v:b-vm1"),
        ("svc1", "endpoint", "host2", "e:svc1")]
    model = M.from_topology(topo, bindings=bindings)
    assert [b.logical_port for b in model.bindings_on("host1")] == ["a-vm1", "b-vm1"]
    assert model.bindings_on("appliance") == ()
    # a binding elsewhere moves the VM in the model as bind_port moves it in the NB
    moved = M.from_topology(topo, bindings=[M.Binding("a-vm1", "vm", "host2", "x")])
    assert {v.name: v.host for v in moved.vms} == {"a-vm1": "host2", "b-vm1": "host1"}
