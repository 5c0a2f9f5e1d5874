"""Controller logic without a switch: cookies, the allocator, and Logic's reactions."""

from __future__ import annotations

import dataclasses
import struct
from ipaddress import IPv4Network, IPv6Address

import pytest

from tests.conftest import DEFAULT_TOPOLOGY
from vnet64 import topology
from vnet64.controller import model as M
from vnet64.controller.flows import DeleteFlows, DeleteStrict, Flow, Match, MeterMod, PacketOut, Resubmit
from vnet64.controller.logic import Logic, desired_flows
from vnet64.controller.pipeline import (ERROR_METER, HOST_TABLES, PACKET_IN_METER, TOKEN_OPTION, Cookie,
                                       cookie)
from vnet64.controller.roles import Ports
from vnet64.controller.roles import customer
from vnet64.controller.roles.customer import Allocator, Pair, PoolExhausted
from vnet64.ports import GENEVE_PORT, XLAT_PORT, vif_port

SVC1 = IPv6Address("fd00:5e:1::10")
A_VM1 = IPv6Address("fd41::3930:1f:6600:a00:4")
B_VM1 = IPv6Address("fd41::3930:20:6600:a00:4")
HOST1_PORTS = {GENEVE_PORT: 1, XLAT_PORT: 2, vif_port("vm", "a-vm1"): 10, vif_port("vm", "b-vm1"): 11}
HOST2_PORTS = {GENEVE_PORT: 1, XLAT_PORT: 2, vif_port("endpoint", "svc1"): 10}


@pytest.fixture
def topo():
    return topology.load(DEFAULT_TOPOLOGY)


@pytest.fixture
def model(topo):
    """Every VM and endpoint bound on its topology host, under the lab's port names."""
    return M.from_topology(topo, bindings=M.topology_bindings(topo, vif_port))


def frame(src: IPv6Address, dst: IPv6Address, payload: bytes = b"\x00" * 20) -> bytes:
    eth = bytes.fromhex("020000000001") + bytes.fromhex("020000000002") + struct.pack("!H", 0x86DD)
    ip6 = struct.pack("!IHBB", 6 << 28, len(payload), 6, 64) + src.packed + dst.packed
    return eth + ip6 + payload


def dpid(model, name):
    return model.node(name).datapath_id


def test_cookie_round_trip_and_owner():
    c = cookie("host", "pair", 42)
    assert Cookie.decode(c) == Cookie("host", "pair", 42)
    assert str(Cookie.decode(c)) == "host/pair/0x2a"
    with pytest.raises(ValueError, match="not installed by vnet64"):
        Cookie.decode(0x1234)


def test_allocator_reuses_a_returning_pair_and_rotates_new_ones():
    alloc = Allocator(IPv4Network("198.18.0.0/29"))   # 6 usable indexes
    p1, p2, p3 = (Pair(SVC1, IPv6Address(f"fd41::{i}")) for i in (1, 2, 3))
    assert alloc.allocate(p1) == 1 and alloc.allocate(p1) == 1
    assert alloc.allocate(p2) == 2
    alloc.release(1)
    assert alloc.allocate(p3) == 3            # not the just-released 1
    assert alloc.allocate(p1) == 1            # p1 comes back to its old alias
    assert str(alloc.alias(1)) == "198.18.0.1"
    assert not alloc.adopt(Pair(SVC1, IPv6Address("fd41::9")), 2)   # 2 belongs to p2
    for i in range(4, 7):
        alloc.allocate(Pair(SVC1, IPv6Address(f"fd41::{i}")))
    with pytest.raises(PoolExhausted):
        alloc.allocate(Pair(SVC1, IPv6Address("fd41::99")))


def test_allocator_skips_aliases_equal_to_a_local_vm_address():
    alloc = Allocator(IPv4Network("198.18.0.0/29"))
    from ipaddress import IPv4Address
    assert alloc.allocate(Pair(SVC1, A_VM1), avoid=frozenset({IPv4Address("198.18.0.1")})) == 2


def test_flows_use_declared_stages_and_forward_gotos(model):
    for node in model.nodes:
        ports = Ports.of(model, node.name, HOST1_PORTS if node.name == "host1" else HOST2_PORTS)
        from vnet64.controller.pipeline import tables_for
        tables = tables_for(node.role)
        flows = desired_flows(model, node, ports)
        assert flows, node
        keys = [f.key for f in flows]
        assert len(keys) == len(set(keys)), f"duplicate flows on {node.name}"
        for f in flows:
            assert f.table in tables, f.ofctl()
            if f.goto:
                assert tables.id(f.goto) > tables.id(f.table), f.ofctl()
            Cookie.decode(f.cookie)


def test_host_connect_installs_meter_and_flows_for_its_vms(model):
    logic = Logic(lambda: model)
    tables, msgs = logic.switch_connected(dpid(model, "host1"), HOST1_PORTS)
    assert tables is HOST_TABLES
    meters = {m.meter_id: m for m in msgs if isinstance(m, MeterMod)}
    # the TLV map and the meters come before any flow that uses them
    assert msgs[0] == TOKEN_OPTION and all(isinstance(m, MeterMod) for m in msgs[1:3])
    assert sorted(meters) == [PACKET_IN_METER, ERROR_METER]
    assert meters[PACKET_IN_METER].rate_pps == 5000 and meters[ERROR_METER].rate_pps == 1000
    # new pairs alone use theirs; errors and refusals a tenant can provoke use the other
    punts = [m for m in msgs if isinstance(m, Flow) and m.meter is not None]
    assert {m.table for m in punts if m.meter == PACKET_IN_METER} == {"pair"}
    assert {m.table for m in punts if m.meter == ERROR_METER} == {"to_vm", "from_translator", "from_vm"}
    text = "\n".join(m.ofctl() for m in msgs if isinstance(m, Flow))
    assert "ipv6_dst=fd41::3930:1f:6600:a00:4" in text and "ipv6_dst=fd41::3930:20:6600:a00:4" in text
    assert "nat(dst=[fd64:64::a00:4])" in text
    assert logic.switch_connected(0xDEAD, {}) is None


def test_first_packet_of_a_subscribed_pair_installs_it_and_reinjects(model):
    logic = Logic(lambda: model)
    d = dpid(model, "host1")
    logic.switch_connected(d, HOST1_PORTS)
    data = frame(SVC1, A_VM1)
    msgs = logic.packet_in(d, HOST_TABLES.id("pair"), 1, data)
    flows = [m for m in msgs if isinstance(m, Flow)]
    # svc1 is on host2: its host's direct packets are accepted for this pair (direct path)
    assert [f.table for f in flows] == ["pair", "from_translator", "vm_return", "from_tunnel"]
    assert {Cookie.decode(f.cookie).feature for f in flows} == {"pair"}
    host2 = model.node("host2").underlay_ip
    assert flows[3].match.as_dict() == {
        "tun_ipv4_src": str(host2), "tunnel_id": 0x6464, "eth_type": 0x86DD, "ipv6_src": str(SVC1),
        "ipv6_dst": str(A_VM1), **({"tun_metadata0": model.tunnel_token} if model.tunnel_token else {})}
    assert flows[3].goto == "pair"
    assert flows[0].idle_timeout > 0 and flows[0].send_flow_rem
    assert "nat(src=[fd64:64::c612:1])" in flows[0].ofctl()          # 198.18.0.1 in the /96
    assert "nat(src=100.100.0.1:1024-65535)" in flows[1].ofctl()
    out = msgs[-1]
    assert isinstance(out, PacketOut) and out.data == data and out.actions == (Resubmit("pair"),)
    # b-vm1 (same 10.0.0.4, other VNet) gets its own alias and its own VNet zone
    flows_b = [m for m in logic.packet_in(d, HOST_TABLES.id("pair"), 1, frame(SVC1, B_VM1))
               if isinstance(m, Flow)]
    assert "fd64:64::c612:2" in flows_b[0].ofctl()
    assert "zone=1" in flows[1].ofctl() and "zone=2" in flows_b[1].ofctl()
    assert logic.stats["pairs_installed"] == 2


def test_unsubscribed_or_forged_pairs_are_refused_with_a_drop_flow(model):
    logic = Logic(lambda: model)
    d = dpid(model, "host1")
    logic.switch_connected(d, HOST1_PORTS)
    for src, dst in [(IPv6Address("fd00:5e:1::99"), A_VM1),                      # not an endpoint
                     (SVC1, IPv6Address("fd41::3930:1f:6600:a00:5")),            # other IPv4
                     (SVC1, IPv6Address("fd41::3930:21:6600:a00:4"))]:           # other VNet id
        msgs = logic.packet_in(d, HOST_TABLES.id("pair"), 1, frame(src, dst))
        assert len(msgs) == 1 and Cookie.decode(msgs[0].cookie).feature == "deny"
        assert msgs[0].hard_timeout > 0 and msgs[0].actions == ()
    assert logic.stats["pairs_denied"] == 3 and not logic.switches[d].pairs


def test_unsubscribe_removes_the_pair_and_the_vm_steering(model):
    current = {"model": model}
    logic = Logic(lambda: current["model"])
    d = dpid(model, "host1")
    logic.switch_connected(d, HOST1_PORTS)
    logic.packet_in(d, HOST_TABLES.id("pair"), 1, frame(SVC1, A_VM1))
    changed = model.copy()
    changed.put_vm(dataclasses.replace(model.vm("a-vm1"), services=frozenset()))
    current["model"] = changed
    msgs = logic.nb_changed()[d]
    assert DeleteFlows(cookie("host", "pair", 1), 0xFFFFFFFFFFFFFFFF) in msgs
    deleted = [m for m in msgs if isinstance(m, DeleteStrict)]
    assert any(m.table == "from_tunnel" and m.match.get("ipv6_dst") == str(A_VM1) for m in deleted)
    assert not logic.switches[d].pairs


def test_flow_removed_releases_the_alias(model):
    logic = Logic(lambda: model)
    d = dpid(model, "host1")
    logic.switch_connected(d, HOST1_PORTS)
    logic.packet_in(d, HOST_TABLES.id("pair"), 1, frame(SVC1, A_VM1))
    assert logic.flow_removed(d, cookie("host", "pair", 1), reason=2) == []   # our own delete
    assert logic.switches[d].pairs
    msgs = logic.flow_removed(d, cookie("host", "pair", 1), reason=0)         # idle timeout
    assert msgs == [DeleteFlows(cookie("host", "pair", 1), 0xFFFFFFFFFFFFFFFF)]
    assert not logic.switches[d].pairs and logic.stats["pairs_expired"] == 1


def pair_found(index: int, src, dst, vm_port: int) -> list[tuple[int, int, int, dict]]:
    """A pair's three flows as a switch's flow dump gives them to ``Logic.resynced``."""
    t, c, alias = HOST_TABLES.id, cookie("host", "pair", index), f"198.18.0.{index}"
    return [(c, t("pair"), 100, {"eth_type": 0x86DD, "ipv6_src": str(src), "ipv6_dst": str(dst)}),
            (c, t("from_translator"), 100, {"eth_type": 0x800, "ipv4_src": alias, "ipv4_dst": "10.0.0.4"}),
            (c, t("vm_return"), 100, {"eth_type": 0x800, "in_port": vm_port, "ipv4_dst": alias})]


def test_pair_tables_are_where_a_new_pair_gets_its_flows(model):
    logic = Logic(lambda: model)
    d = dpid(model, "host1")
    logic.switch_connected(d, HOST1_PORTS)
    msgs = logic.packet_in(d, HOST_TABLES.id("pair"), 1, frame(SVC1, A_VM1))
    flows = [m for m in msgs if isinstance(m, Flow)]
    assert {f.table for f in flows} == customer.PAIR_TABLES | customer.DIRECT_TABLES
    assert len(flows) == len(customer.PAIR_TABLES | customer.DIRECT_TABLES)
    model.set_platform(model.platform_ip, model.translator_prefix, model.appliance, model.tunnel_token,
                       direct_path=False)
    out = logic.nb_changed(model.take_delta())     # the pair's direct flow goes
    pair_cookie = flows[0].cookie
    assert DeleteFlows(pair_cookie, 0xFFFFFFFFFFFFFFFF, "from_tunnel") in out[d]
    assert not any(isinstance(m, Flow) and m.cookie == pair_cookie for m in out[d])
    msgs = logic.packet_in(d, HOST_TABLES.id("pair"), 1, frame(SVC1, B_VM1))
    flows = [m for m in msgs if isinstance(m, Flow)]
    assert len(flows) == len(customer.PAIR_TABLES) and {f.table for f in flows} == customer.PAIR_TABLES


def test_resync_adopts_live_pairs_and_sweeps_stale_flows(model):
    logic = Logic(lambda: model)
    d = dpid(model, "host1")
    logic.switch_connected(d, HOST1_PORTS)
    pair_id = HOST_TABLES.id("pair")
    found = [
        *pair_found(7, SVC1, A_VM1, 10),
        *pair_found(8, "fd00:5e:1::99", A_VM1, 10),                     # no longer allowed
        (cookie("host", "vm", "gone-vm"), HOST_TABLES.id("v6_dnat"), 100,   # VM left the NB
         {"eth_type": 0x86DD, "ipv6_dst": "fd41::3930:1f:6600:a00:9"}),
        (0x1234, 0, 1, {}),                                             # not ours: left alone
    ]
    msgs = logic.resynced(d, found)
    sw = logic.switches[d]
    assert sw.pairs == {7: ("svc1", "a-vm1")}
    assert [m for m in msgs if isinstance(m, DeleteFlows)] == [
        DeleteFlows(cookie("host", "pair", 8), 0xFFFFFFFFFFFFFFFF)]
    assert [m.table for m in msgs if isinstance(m, DeleteStrict)] == ["v6_dnat"]
    assert logic.stats["stale_pairs_swept"] == 1 and logic.stats["pairs_adopted"] == 1
    # the adopted pair keeps its alias when its traffic comes back
    flows = [m for m in logic.packet_in(d, pair_id, 1, frame(SVC1, A_VM1)) if isinstance(m, Flow)]
    assert Cookie.decode(flows[0].cookie).obj == 7


def test_resync_deletes_a_pair_that_is_not_whole(model):
    """A pair's flows live and die together. Its pair-table flow idled out during the
    outage (the flow-removed that deletes the rest went nowhere), or its install was cut
    short: what is left is deleted and its index freed, never adopted or left for good."""
    logic = Logic(lambda: model)
    d = dpid(model, "host1")
    logic.switch_connected(d, HOST1_PORTS)
    idled_out = pair_found(4, SVC1, B_VM1, 11)[1:]          # SNAT and return rule only
    cut_short = pair_found(5, SVC1, B_VM1, 11)[:2]          # no return rule
    strange = [(cookie("host", "pair", 6), 200, 100, {})]    # a table the pipeline has not
    msgs = logic.resynced(d, pair_found(3, SVC1, A_VM1, 10) + idled_out + cut_short + strange)
    assert sorted((m for m in msgs if isinstance(m, DeleteFlows)), key=lambda m: m.cookie) == [
        DeleteFlows(cookie("host", "pair", i), 0xFFFFFFFFFFFFFFFF) for i in (4, 5, 6)]
    sw = logic.switches[d]
    assert sw.pairs == {3: ("svc1", "a-vm1")} and set(sw.allocator.by_index) == {3}
    assert logic.stats["incomplete_pairs_swept"] == 3 and logic.stats["stale_pairs_swept"] == 0


def test_resync_in_two_reads_adopts_from_the_pair_table_then_sweeps(model):
    """The app reads the pair table's pair flows first (one per pair: ready sooner), then
    the whole table: the same outcome as one whole read, and pairs set up in between
    (not in the dump) are left alone."""
    logic = Logic(lambda: model)
    d = dpid(model, "host1")
    logic.switch_connected(d, HOST1_PORTS)
    pair_id = HOST_TABLES.id("pair")
    live = pair_found(3, SVC1, A_VM1, 10)
    cut_short = pair_found(5, SVC1, B_VM1, 11)[:2]             # no return rule
    leftover = pair_found(4, SVC1, B_VM1, 11)[1:]              # its pair flow idled out
    stale = [(cookie("host", "vm", "ghost"), HOST_TABLES.id("v6_dnat"), 100,
              {"eth_type": 0x86DD, "ipv6_dst": "fd41::dead"})]
    dump = live + cut_short + leftover + stale
    first = [f for f in dump if f[1] == pair_id]
    msgs = logic.resynced(d, first, complete=False)
    sw = logic.switches[d]
    assert msgs == [] and set(sw.pairs) == {3, 5}             # adopted from what it saw
    assert logic.stats["pairs_adopted"] == 2
    # a new pair between the two reads: not in the dump
    logic.packet_in(d, pair_id, 1, frame(SVC1, IPv6Address("fd41::3930:20:6600:a00:4")))
    new = set(sw.pairs) - {3, 5}
    msgs = logic.swept(d, dump)
    assert sorted((m for m in msgs if isinstance(m, DeleteFlows)), key=lambda m: m.cookie) == [
        DeleteFlows(cookie("host", "pair", i), 0xFFFFFFFFFFFFFFFF) for i in (4, 5)]
    assert [m for m in msgs if isinstance(m, DeleteStrict)] == [
        DeleteStrict("v6_dnat", 100, Match.of(eth_type=0x86DD, ipv6_dst="fd41::dead"))]
    assert set(sw.pairs) == {3} | new and 5 not in sw.allocator.by_index
    assert logic.stats["incomplete_pairs_swept"] == 2 and logic.stats["stale_flows_swept"] == 1


def test_resync_after_a_switch_restart_frees_the_pairs_whose_flows_are_gone(model):
    logic = Logic(lambda: model)
    d = dpid(model, "host1")
    pair_id = HOST_TABLES.id("pair")
    logic.switch_connected(d, HOST1_PORTS)
    logic.resynced(d, [])
    logic.packet_in(d, pair_id, 1, frame(SVC1, A_VM1))
    logic.packet_in(d, pair_id, 1, frame(SVC1, B_VM1))
    assert set(logic.switches[d].pairs) == {1, 2}
    # the switch restarted: it reconnects holding a-vm1's pair flows only (b-vm1's are gone)
    logic.switch_connected(d, HOST1_PORTS)
    logic.resynced(d, pair_found(1, SVC1, A_VM1, 10))
    sw = logic.switches[d]
    assert sw.pairs == {1: ("svc1", "a-vm1")} and set(sw.allocator.by_index) == {1}
    assert logic.stats["pairs_lost"] == 1
    # b-vm1's pair comes back with its old alias
    flows = [m for m in logic.packet_in(d, pair_id, 1, frame(SVC1, B_VM1)) if isinstance(m, Flow)]
    assert Cookie.decode(flows[0].cookie).obj == 2


def test_snat_port_range_is_configurable(model):
    logic = Logic(lambda: model, snat_ports=(20000, 20009))
    d = dpid(model, "host1")
    logic.switch_connected(d, HOST1_PORTS)
    flows = [m for m in logic.packet_in(d, HOST_TABLES.id("pair"), 1, frame(SVC1, A_VM1))
             if isinstance(m, Flow)]
    assert "nat(src=100.100.0.1:20000-20009)" in flows[1].ofctl()


def test_a_connection_with_no_port_left_is_refused_towards_the_service(model):
    """to_vm punts a new connection NAT found no port for; the controller answers, as the
    VM, what a closed port would: a TCP reset, else ICMPv4 admin-prohibited; out to TAYGA."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
    from scapy.layers.l2 import Ether
    from vnet64 import gateway
    from vnet64.ports import translator_mac
    logic = Logic(lambda: model)
    d = dpid(model, "host1")
    _, msgs = logic.switch_connected(d, HOST1_PORTS)
    punts = [m for m in msgs if isinstance(m, Flow) and m.table == "to_vm" and "CONTROLLER" in m.ofctl()]
    assert len(punts) == 2 and all("-snat" in f.ofctl() and "+new" in f.ofctl() and "meter:2" in f.ofctl()
                                   for f in punts)

    def refuse(pkt) -> Ether | None:
        out = logic.packet_in(d, HOST_TABLES.id("to_vm"), 2, bytes(Ether(src="02:00:00:00:00:01") / pkt))
        if not out:
            return None
        assert len(out) == 1 and isinstance(out[0], PacketOut)
        assert out[0].actions[0].port == HOST1_PORTS[XLAT_PORT]
        reply = Ether(out[0].data)
        assert reply.src == gateway.GATEWAY_MAC and reply.dst == translator_mac("host1")
        assert (reply[IP].src, reply[IP].dst) == ("10.0.0.4", "198.18.0.1")
        again = Ether(out[0].data)                 # checksums as a receiver computes them
        del again[IP].chksum
        for layer in (TCP, ICMP):
            if layer in again:
                del again[layer].chksum
        assert bytes(Ether(bytes(again))) == out[0].data
        return reply

    alias_to_vm = IP(src="198.18.0.1", dst="10.0.0.4")
    rst = refuse(alias_to_vm / TCP(sport=40000, dport=8080, flags="S", seq=1000))
    assert (rst[TCP].sport, rst[TCP].dport, rst[TCP].flags, rst[TCP].ack, rst[TCP].seq) == \
        (8080, 40000, "RA", 1001, 0)
    rst = refuse(alias_to_vm / TCP(sport=40000, dport=8080, flags="A", seq=5, ack=777))
    assert (rst[TCP].flags, rst[TCP].seq) == ("R", 777)
    icmp = refuse(alias_to_vm / UDP(sport=40000, dport=8081) / b"hello")
    assert (icmp[ICMP].type, icmp[ICMP].code) == (3, 13)
    assert (icmp[IPerror].src, icmp[IPerror].dst, icmp[UDPerror].sport) == ("198.18.0.1", "10.0.0.4", 40000)
    assert logic.stats["connections_refused_no_port"] == 3
    # never a reset for a reset, an error about an error, nor anything that is not IPv4
    assert refuse(alias_to_vm / TCP(flags="R")) is None
    assert refuse(alias_to_vm / ICMP(type=3, code=3) / IP(src="10.0.0.4", dst="198.18.0.1") / TCP()) is None
    assert logic.packet_in(d, HOST_TABLES.id("to_vm"), 2, frame(SVC1, A_VM1)) == []


def test_a_tlv_map_not_ours_is_named():
    from vnet64.controller.flows import TlvMap
    from vnet64.controller.pipeline import tlv_map_problem
    assert tlv_map_problem([TOKEN_OPTION, TlvMap(3, 0x0102, 1, 8)]) is None
    assert "tun_metadata0 is mapped to {class=0x102,type=0x1,len=8}" in tlv_map_problem([TlvMap(0, 0x0102, 1, 8)])
    assert "not mapped" in tlv_map_problem([])


def direct_msgs(msgs: list, index: int) -> list:
    """The messages of ``msgs`` that touch pair ``index``'s direct-path flow."""
    c = cookie("host", "pair", index)
    return [m for m in msgs if (isinstance(m, DeleteFlows) and m.cookie == c and m.table == "from_tunnel")
            or (isinstance(m, Flow) and m.cookie == c and m.table == "from_tunnel")]


def test_a_pairs_direct_flow_follows_the_token_and_its_endpoints_host(model):
    """The direct path's per-pair flow matches the endpoint's host and the tunnel token:
    a rotated token or a moved endpoint replaces it (and only it), and an endpoint on the
    VM's own host has none."""
    logic = Logic(lambda: model)
    d = dpid(model, "host1")
    logic.switch_connected(d, HOST1_PORTS)
    flows = [m for m in logic.packet_in(d, HOST_TABLES.id("pair"), 1, frame(SVC1, A_VM1)) if isinstance(m, Flow)]
    index = Cookie.decode(flows[0].cookie).obj
    assert len(direct_msgs(flows, index)) == 1
    model.set_platform(model.platform_ip, model.translator_prefix, model.appliance, 0x1234ABCD)
    out = logic.nb_changed(model.take_delta())[d]
    delete, add = direct_msgs(out, index)
    assert isinstance(delete, DeleteFlows) and add.match.get("tun_metadata0") == 0x1234ABCD
    assert add.goto == "pair" and add.match.get("tun_ipv4_src") == str(model.node("host2").underlay_ip)
    assert not direct_msgs(logic.nb_changed(model.take_delta()).get(d, []), index)   # nothing new
    ep = model.endpoint("svc1")
    model.put_endpoint(dataclasses.replace(ep, host="host1"))    # now on the VM's own host
    out = logic.nb_changed(model.take_delta())[d]
    assert [type(m) for m in direct_msgs(out, index)] == [DeleteFlows]     # gone, none instead
    assert index in logic.switches[d].pairs                                # the pair itself stays


def test_resync_takes_an_adopted_pairs_direct_flow_as_current(model):
    """A pair read back with its direct-path flow is adopted whole and nothing is resent;
    one read back without it (the switch had it from before the direct path) gets it."""
    logic = Logic(lambda: model)
    d = dpid(model, "host1")
    logic.switch_connected(d, HOST1_PORTS)
    direct = (cookie("host", "pair", 7), HOST_TABLES.id("from_tunnel"), 110,
              {"eth_type": 0x86DD, "ipv6_src": str(SVC1), "ipv6_dst": str(A_VM1)})
    msgs = logic.resynced(d, [*pair_found(7, SVC1, A_VM1, 10), direct, *pair_found(8, SVC1, B_VM1, 11)])
    assert not [m for m in msgs if isinstance(m, DeleteFlows)], msgs
    assert set(logic.switches[d].pairs) == {7, 8}
    model.set_platform(model.platform_ip, model.translator_prefix, model.appliance, model.tunnel_token)
    out = logic.nb_changed(None).get(d, [])          # a full reconcile
    assert not direct_msgs(out, 7)
    assert [type(m) for m in direct_msgs(out, 8)] == [DeleteFlows, Flow]
