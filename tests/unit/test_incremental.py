"""Incremental NB processing gives the same flows as a full recompute (issue 17).

``Logic.nb_changed(delta)`` recomputes only the flows and pairs that depend on the
objects a ``model.Delta`` names; ``nb_changed()`` (no delta) recomputes and diffs
everything. Hypothesis drives random sequences of NB changes (subscribe, unsubscribe,
VM and endpoint moves, bindings to missing or shared interfaces, deletions, a node's
underlay address, the tunnel token), switch port changes and new pairs' first packets
through two logics sharing one model: one told each change's delta, one recomputing in
full. After every step both must hold the same flows and pairs, the messages each sent
must leave a switch with the same table, and a logic built fresh on a copy of the
model must want exactly those proactive flows.
"""

from __future__ import annotations

import dataclasses
import struct
from ipaddress import IPv4Address, IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from vnet64 import topology
from vnet64.controller import model as M
from vnet64.controller.flows import DeleteFlows, DeleteStrict, Flow, Match
from vnet64.controller.logic import Logic, owned_flows
from vnet64.controller.pipeline import Cookie, tables_for
from vnet64.ports import GENEVE_PORT, XLAT_PORT, vif_port

TOPO = topology.load(ROOT / "topologies" / "four-hosts.yaml")
VMS = [vm.name for vm in TOPO.vms]
EPS = [e.name for s in TOPO.services for e in s.endpoints]
HOSTS = [n.name for n in TOPO.nodes if n.role == "host"]
SERVICES = [s.name for s in TOPO.services]


def fresh_model() -> M.Model:
    return M.from_topology(TOPO, tunnel_token=7, bindings=M.topology_bindings(TOPO, vif_port))


def initial_ports(model: M.Model) -> dict[str, dict[str, int]]:
    """Each node's switch: the tunnel and translator ports, and its bound interfaces."""
    out = {}
    for node in model.nodes:
        ports = {GENEVE_PORT: 1, XLAT_PORT: 2}
        for i, b in enumerate(model.bindings_on(node.name)):
            ports[b.port] = 10 + i
        out[node.name] = ports
    return out


def frame(src: IPv6Address, dst: IPv6Address) -> bytes:
    eth = bytes.fromhex("020000000001") + bytes.fromhex("020000000002") + struct.pack("!H", 0x86DD)
    return eth + struct.pack("!IHBB", 6 << 28, 20, 6, 64) + src.packed + dst.packed + bytes(20)


class Table:
    """What a switch holds after the messages it was sent (flows by key)."""

    def __init__(self) -> None:
        self.flows: dict = {}

    def apply(self, msgs) -> None:
        for m in msgs:
            if isinstance(m, Flow):
                self.flows[m.key] = m
            elif isinstance(m, DeleteStrict):
                self.flows.pop((m.table, m.priority, m.match), None)
            elif isinstance(m, DeleteFlows):
                for key in [k for k, f in self.flows.items()
                            if f.cookie & m.cookie_mask == m.cookie & m.cookie_mask
                            and m.table in (None, f.table)]:
                    del self.flows[key]


class Pair:
    """Two logics on one model: ``inc`` gets deltas, ``full`` recomputes everything."""

    def __init__(self) -> None:
        self.model = fresh_model()
        self.ports = initial_ports(self.model)
        self.inc = Logic(lambda: self.model)
        self.full = Logic(lambda: self.model)
        self.tables = {"inc": {}, "full": {}}
        for node in self.model.nodes:
            for name, logic in (("inc", self.inc), ("full", self.full)):
                table = self.tables[name][node.datapath_id] = Table()
                _, msgs = logic.switch_connected(node.datapath_id, self.ports[node.name])
                table.apply(msgs)
                logic.resynced(node.datapath_id, [])

    def send(self, inc_msgs: dict, full_msgs: dict) -> None:
        for name, msgs in (("inc", inc_msgs), ("full", full_msgs)):
            for dpid, ms in msgs.items():
                self.tables[name][dpid].apply(ms)

    def nb_changed(self) -> None:
        delta = self.model.take_delta()
        self.send(self.inc.nb_changed(delta), self.full.nb_changed())

    def ports_changed(self, node: str) -> None:
        d = self.model.node(node).datapath_id
        self.send({d: self.inc.ports_changed(d, dict(self.ports[node]))},
                  {d: self.full.ports_changed(d, dict(self.ports[node]))})

    def first_packet(self, ep: str, vm: str) -> None:
        e, v = self.model.endpoint(ep), self.model.vm(vm)
        if e is None or v is None or self.model.node(v.host) is None:
            return
        d = self.model.node(v.host).datapath_id
        table = tables_for("host").id("pair")
        self.send({d: self.inc.packet_in(d, table, 1, frame(e.ipv6, v.ipv6))},
                  {d: self.full.packet_in(d, table, 1, frame(e.ipv6, v.ipv6))})

    def check(self) -> None:
        fresh = Logic(lambda: self.model.copy())
        for node in self.model.nodes:
            d = node.datapath_id
            inc, full = self.inc.switches[d], self.full.switches[d]
            assert inc.proactive == full.proactive, node.name
            assert inc.pairs == full.pairs and inc.pair_ports == full.pair_ports, node.name
            assert self.tables["inc"][d].flows == self.tables["full"][d].flows, node.name
            assert fresh.switch_connected(d, self.ports[node.name]) is not None
            assert fresh.switches[d].proactive == inc.proactive, node.name
            # what the switch holds, pairs aside, is what the logic thinks it holds
            held = {k: f for k, f in self.tables["inc"][d].flows.items()
                    if Cookie.decode(f.cookie).feature not in ("pair", "deny")}
            assert held == inc.proactive, node.name
            # the pair index follows the pairs
            indexed = {i for held_ in inc.pairs_of.values() for i in held_}
            assert indexed == set(inc.pairs), node.name


# -- the changes -------------------------------------------------------------


def subscribe(p: Pair, vm: str, service: str, on: bool) -> None:
    v = p.model.vm(vm)
    if v is None:
        return
    services = v.services | {service} if on else v.services - {service}
    p.model.put_vm(dataclasses.replace(v, services=frozenset(services)))
    if services:
        p.model.put_route(M.Route(v.ipv6, v.host))
    else:
        p.model.remove_route(v.ipv6)


def free_ofport(p: Pair, host: str) -> int:
    """A number no interface on ``host``'s switch has (OVS never gives two the same; after
    an unplug, 100 + the count of ports could)."""
    return max([99, *p.ports[host].values()]) + 1


def move_vm(p: Pair, vm: str, host: str, port_too: bool) -> None:
    """Live migration as the NB records it: the binding, the VM's host and its route."""
    v = p.model.vm(vm)
    if v is None:
        return
    p.model.put_vm(dataclasses.replace(v, host=host))
    p.model.put_binding(M.Binding(vm, "vm", host, vif_port("vm", vm)))
    if v.subscribed:
        p.model.put_route(M.Route(v.ipv6, host))
    if port_too:
        p.ports[host].setdefault(vif_port("vm", vm), free_ofport(p, host))


def move_endpoint(p: Pair, ep: str, host: str, port_too: bool) -> None:
    e = p.model.endpoint(ep)
    if e is None:
        return
    p.model.put_endpoint(dataclasses.replace(e, host=host))
    p.model.put_binding(M.Binding(ep, "endpoint", host, vif_port("endpoint", ep)))
    if port_too:
        p.ports[host].setdefault(vif_port("endpoint", ep), free_ofport(p, host))


def bind_to(p: Pair, name: str, port_of: str) -> None:
    """Bind ``name`` to the interface another object uses on its node (a shared port)."""
    b, other = p.model.binding(name), p.model.binding(port_of)
    if b is not None and other is not None and b.node == other.node:
        p.model.put_binding(dataclasses.replace(b, port=other.port))


def unbind(p: Pair, name: str) -> None:
    p.model.remove_binding(name)


def delete_vm(p: Pair, vm: str) -> None:
    v = p.model.vm(vm)
    if v is not None:
        p.model.remove_vm(vm)
        p.model.remove_route(v.ipv6)


def restore_vm(p: Pair, vm: str) -> None:
    if p.model.vm(vm) is None:
        v = fresh_model().vm(vm)
        p.model.put_vm(v)
        if v.subscribed:
            p.model.put_route(M.Route(v.ipv6, v.host))


def delete_endpoint(p: Pair, ep: str) -> None:
    p.model.remove_endpoint(ep)


def restore_endpoint(p: Pair, ep: str) -> None:
    if p.model.endpoint(ep) is None:
        p.model.put_endpoint(fresh_model().endpoint(ep))


def renumber_underlay(p: Pair, host: str, last: int) -> None:
    """A host's new underlay address (unique, as the NB's index on it keeps them)."""
    n = p.model.node(host)
    new = IPv4Address(int(n.underlay_ip) & ~0xFF | last)
    if all(other.underlay_ip != new for other in p.model.nodes):
        p.model.put_node(dataclasses.replace(n, underlay_ip=new))


def rotate_token(p: Pair, token: int) -> None:
    m = p.model
    m.set_platform(m.platform_ip, m.translator_prefix, m.appliance, token)


NB_CHANGES = st.one_of(
    st.tuples(st.just(subscribe), st.sampled_from(VMS), st.sampled_from(SERVICES), st.booleans()),
    st.tuples(st.just(move_vm), st.sampled_from(VMS), st.sampled_from(HOSTS), st.booleans()),
    st.tuples(st.just(move_endpoint), st.sampled_from(EPS), st.sampled_from(HOSTS), st.booleans()),
    st.tuples(st.just(bind_to), st.sampled_from(VMS + EPS), st.sampled_from(VMS + EPS)),
    st.tuples(st.just(unbind), st.sampled_from(VMS + EPS)),
    st.tuples(st.just(delete_vm), st.sampled_from(VMS)),
    st.tuples(st.just(restore_vm), st.sampled_from(VMS)),
    st.tuples(st.just(delete_endpoint), st.sampled_from(EPS)),
    st.tuples(st.just(restore_endpoint), st.sampled_from(EPS)),
    st.tuples(st.just(renumber_underlay), st.sampled_from(HOSTS), st.integers(100, 110)),
    st.tuples(st.just(rotate_token), st.integers(1, 3)),
)
STEPS = st.one_of(
    # one NB transaction: one to three changes, then the logics hear of it
    st.tuples(st.just("nb"), st.lists(NB_CHANGES, min_size=1, max_size=3)),
    # a new pair's first packet on its VM's host
    st.tuples(st.just("packet"), st.sampled_from(EPS), st.sampled_from(VMS)),
    # an interface leaves a switch (the VM's port unplugged), then the port-status
    st.tuples(st.just("unplug"), st.sampled_from(HOSTS), st.sampled_from(VMS + EPS)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEPS, min_size=1, max_size=12))
def test_incremental_equals_full(steps):
    p = Pair()
    for ep in EPS:                     # some pairs to revoke or keep
        for vm in VMS:
            p.first_packet(ep, vm)
    p.check()
    for step in steps:
        if step[0] == "nb":
            before = {host: dict(ports) for host, ports in p.ports.items()}
            for change, *args in step[1]:
                change(p, *args)
            for host in HOSTS:        # a migrated VM's port appears (port-status) ...
                if p.ports[host] != before[host]:
                    p.ports_changed(host)
            p.nb_changed()            # ... and the NB transaction that binds it
        elif step[0] == "packet":
            p.first_packet(step[1], step[2])
        else:
            _, host, name = step
            kind = "vm" if name in VMS else "endpoint"
            if p.ports[host].pop(vif_port(kind, name), None) is not None:
                p.ports_changed(host)
        p.check()


def test_an_empty_delta_changes_nothing():
    p = Pair()
    assert p.inc.nb_changed(p.model.take_delta()) == {}


def test_an_unsubscribe_touches_only_its_vm():
    """One unsubscribe recomputes that VM's flows and its route, nothing else (the point
    of the delta: the cost of a change does not grow with the platform)."""
    p = Pair()
    p.first_packet("ana1", "a-web1")
    calls = []
    import vnet64.controller.logic as logic_mod
    real = logic_mod.owner_flows

    def counting(model, node, ports, owner, path_mtu=None):
        calls.append((node.name, owner))
        return real(model, node, ports, owner, path_mtu)

    logic_mod.owner_flows = counting
    try:
        subscribe(p, "a-web1", "analytics", False)     # its only subscription
        msgs = p.inc.nb_changed(p.model.take_delta())
    finally:
        logic_mod.owner_flows = real
    web1 = p.model.vm("a-web1")
    assert {o for _, o in calls} == {("vm", "a-web1"), ("route", web1.ipv6)}
    appliance = p.model.node("appliance").datapath_id
    assert msgs[appliance] == [DeleteStrict("route", 100, Match.of(eth_type=0x86DD, ipv6_dst=web1.ipv6))]
    assert set(msgs) == {appliance, p.model.node("host1").datapath_id}
    # the pair ana1 -> a-web1 on host1 is cut with it
    assert any(isinstance(m, DeleteFlows) for m in msgs[p.model.node("host1").datapath_id])


def test_owners_never_share_a_flow():
    """Incremental deletion relies on each flow key having one owner."""
    model = fresh_model()
    ports = initial_ports(model)
    from vnet64.controller.roles import Ports
    for node in model.nodes:
        seen: dict = {}
        for owner, flows in owned_flows(model, node, Ports.of(model, node.name, ports[node.name])).items():
            for f in flows:
                assert seen.setdefault(f.key, owner) == owner, (node.name, f.key)
