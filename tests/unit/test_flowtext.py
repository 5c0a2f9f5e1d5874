"""vnet64.controller.flowtext on Open vSwitch's own text: ``ovs-ofctl -O OpenFlow15
--no-names dump-flows br-int`` of the three nodes of a running two-tenants lab (OVS 3.1,
captured into ``tests/unit/data/flowtext/``: host1 with a pair, host2 with svc1, the
appliance) reads back into exactly the ``Flow`` values the controller sends.

The expected flows come from a ``Logic`` driven as the lab's controller was: the same
topology, the lab's tunnel token (read off the dump), its switches' port numbers (from
``ovs-ofctl show``), its path MTU, and the pairs the dump holds set up by packet-ins.
Then every parsed flow must be one the controller built, and every built flow must be
in the dump: a wrong mask, NAT range, ct flag or move direction fails the comparison
(the mutation tests below check that it does).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from ipaddress import IPv6Address
from pathlib import Path

import pytest

from tests.unit.test_pipeline_trace import _frame
from vnet64 import topology
from vnet64.controller import model as M
from vnet64.controller.flowtext import Installed, parse_dump, parse_line
from vnet64.controller.flows import (CT, Controller, DeleteFlows, Flow, Learn, Match, Nat, Output,
                                     OFPP_IN_PORT, Resubmit, SetField, TableMap)
from vnet64.controller.logic import Logic
from vnet64.controller.pipeline import HOST_TABLES, PRIO_LEARN, Cookie, tables_for
from vnet64.controller.roles.customer import deny_flow
from vnet64.ports import vif_port

DATA = Path(__file__).parent / "data" / "flowtext"
ROOT = Path(__file__).resolve().parents[2]
NODES = ("host1", "host2", "appliance")
PORT_LINE = re.compile(r"^\s*(\d+)\(([^)]+)\):", re.M)


def dump(node: str, kind: str = "dump") -> str:
    return (DATA / f"{node}.{kind}").read_text()


def show_ports(node: str) -> dict[str, int]:
    """Interface name -> OpenFlow port, from the captured ``ovs-ofctl show``."""
    return {name: int(n) for n, name in PORT_LINE.findall(dump(node, "show"))}


def role(node: str) -> str:
    return "appliance" if node == "appliance" else "host"


def parsed(node: str, kind: str = "dump", **kw) -> list[Installed]:
    return parse_dump(dump(node, kind), tables_for(role(node)), **kw)


def flow_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "actions=" in line]


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((DATA / "meta.json").read_text())


@pytest.fixture(scope="module")
def expected(meta) -> dict[str, set[Flow]]:
    """node -> the flows the controller builds for the lab as captured."""
    tokens = {int(t, 16) for t in re.findall(r"tun_metadata0=(0x[0-9a-f]+)", dump("appliance"))}
    assert len(tokens) == 1, tokens
    topo = topology.load(ROOT / "topologies" / "two-tenants.yaml")
    model = M.from_topology(topo, tunnel_token=tokens.pop(),
                            bindings=M.topology_bindings(topo, vif_port))
    logic = Logic(lambda: model, path_mtu=meta["overlay_mtu"])
    out = {}
    for node in NODES:
        dpid = model.node(node).datapath_id
        _, msgs = logic.switch_connected(dpid, show_ports(node))
        flows = {m for m in msgs if isinstance(m, Flow)}
        if node == "host1":      # the pairs the dump holds, set up in the order of their aliases
            pairs = sorted((Cookie.decode(i.cookie).obj, i.flow.match.get("ipv6_src"),
                            i.flow.match.get("ipv6_dst"))
                           for i in parsed(node) if i.flow and Cookie.decode(i.cookie).feature == "pair"
                           and i.flow.table == "pair")
            assert pairs, "the captured host1 has no pair"
            geneve = show_ports(node)["geneve0"]
            for _, src, dst in pairs:
                msgs = logic.packet_in(dpid, HOST_TABLES.id("pair"), geneve,
                                       _frame({"ipv6_src": src, "ipv6_dst": dst}))
                flows |= {m for m in msgs if isinstance(m, Flow)}
        out[node] = flows
    return out


# ---------------------------------------------------------------------------
# Every line of the real dumps


@pytest.mark.parametrize("node", NODES)
def test_every_line_of_the_dump_parses(node):
    text = dump(node)
    got = parse_dump(text, tables_for(role(node)))
    assert len(got) == len(flow_lines(text)) >= 8
    bad = [(i.text, i.error) for i in got if i.error or i.flow is None]
    assert not bad, bad
    for i in got:
        assert tables_for(role(node)).id(i.flow.table) == i.table_id
        assert (i.flow.cookie, i.flow.priority) == (i.cookie, i.priority)
        assert "duration=" not in i.text and "n_packets=" not in i.text and "actions=" in i.text
    assert sum(i.n_packets for i in got) > 0          # the counters are read too


def learned(node: str) -> list[Flow]:
    """The flows a node's switch learnt itself (the direct path's entries)."""
    return [i.flow for i in parsed(node) if Cookie.decode(i.cookie).feature == "learned"]


@pytest.mark.parametrize("node", NODES)
def test_the_dump_is_exactly_what_the_controller_built(node, expected):
    got = [i.flow for i in parsed(node) if Cookie.decode(i.cookie).feature != "learned"]
    assert len(set(got)) == len(got)
    missing = sorted(f.ofctl() for f in expected[node] - set(got))
    extra = sorted(f.ofctl() for f in set(got) - expected[node])
    assert not missing and not extra, f"\nmissing:\n" + "\n".join(missing) + "\nextra:\n" + "\n".join(extra)


def test_what_host2_learnt_is_what_the_simulator_learns(expected):
    """The captured exchange's answer taught host2 a direct entry (svc1, a-vm1) -> host1:
    exactly the flow the controller's learn action makes when the simulator runs it on
    that answer (from host1 through the tunnel)."""
    from vnet64.controller.sim import SimSwitch
    (entry,) = learned("host2")
    (teach,) = [f for f in expected["host2"] if f.table == "to_endpoint" and f.priority == PRIO_LEARN]
    (learn,) = [a for a in teach.actions if isinstance(a, Learn)]
    host1 = str(M.from_topology(topology.load(ROOT / "topologies" / "two-tenants.yaml")).node("host1").underlay_ip)
    sw = SimSwitch(tables_for("host"))
    geneve = teach.match.get("in_port")
    sw.apply([Flow("classify", 100, Match.of(in_port=geneve, eth_type=0x86DD), (learn,))])
    answer = {"eth_type": 0x86DD, "ipv6_src": entry.match.get("ipv6_dst"),
              "ipv6_dst": entry.match.get("ipv6_src"), "tun_ipv4_src": host1}
    assert sw.trace(answer, geneve).learned == [entry]
    assert entry.actions == (SetField("tun_ipv4_dst", host1),) and entry.idle_timeout == 60


def test_the_captured_flows_cover_every_kind_of_action_and_match(expected):
    """The comparison above means something only if the captured dumps hold each shape."""
    flows = set().union(*expected.values())
    kinds = {type(a).__name__ for f in flows for a in f.actions}
    assert kinds >= {"Output", "SetField", "Move", "CT", "Controller", "CheckPktLarger"}
    nats = [a.nat for f in flows for a in f.actions if isinstance(a, CT) and a.nat]
    assert {n.kind for n in nats} == {None, "src", "dst"}
    assert any(n.port_min for n in nats)
    fields = {k for f in flows for k, _ in f.match.items}
    assert fields >= {"in_port", "eth_type", "ip_proto", "nw_ttl", "ipv4_src", "ipv4_dst", "ipv6_src",
                      "ipv6_dst", "icmpv6_type", "ipv6_nd_target", "arp_op", "arp_spa", "arp_tpa",
                      "tunnel_id", "tun_ipv4_src", "tun_metadata0", "ct_state", "ct_zone", "reg0"}
    assert any(f.idle_timeout and f.send_flow_rem for f in flows)
    assert any(f.meter for f in flows) and any(f.goto for f in flows)


def test_the_deny_flow_as_ovs_prints_it():
    """A refused pair's deny flow (added to the lab's host1 from ``deny_flow().ofctl()``:
    two-tenants subscribes every VM, so its controller refuses none)."""
    want = deny_flow(IPv6Address("fd00:5e:1::99"), IPv6Address("fd41::3930:1f:6600:a00:4"))
    got = [i for i in parse_dump(dump("host1-deny", "dump"), HOST_TABLES) if i.priority == 200]
    assert [i.flow for i in got] == [want], [i.text for i in got]
    assert "hard_timeout=5" in got[0].text


def test_a_dump_with_names_reads_the_same_with_the_port_map():
    with_names = parsed("host1", "names.dump", ports=show_ports("host1"))
    assert not [i.error for i in with_names if i.error]
    assert {i.flow for i in with_names} == {i.flow for i in parsed("host1")}
    without_map = parsed("host1", "names.dump")
    assert any(i.error and "name" in i.error for i in without_map)


# ---------------------------------------------------------------------------
# The comparison catches what a sloppy parser would get wrong


MUTATIONS = [
    ("a wrong register mask", r"reg0=0x1/0x1", "reg0=0x1/0x3"),
    ("a wrong prefix", r"ipv6_dst=fd41::/16", "ipv6_dst=fd41::/17"),
    ("a wrong NAT port range", r":1024-65535\)", ":1025-65535)"),
    ("a wrong NAT kind", r"nat\(src=fd64", "nat(dst=fd64"),
    ("a lost ct flag", r"ct_state=-inv\+trk\b", "ct_state=+trk"),
    ("a flipped ct flag", r"ct_state=\+rpl-inv", "ct_state=-rpl-inv"),
    ("a lost ct commit", r"ct\(commit,zone=65533", "ct(zone=65533"),
    ("a swapped move", r"move:NXM_OF_ARP_SPA\[\]->NXM_OF_ARP_TPA\[\]", "move:NXM_OF_ARP_TPA[]->NXM_OF_ARP_SPA[]"),
    ("a wrong check_pkt_larger bit", r"->NXM_NX_REG0\[0\]", "->NXM_NX_REG0[1]"),
    ("a wrong ct table", r"ct\(commit,table=21", "ct(commit,table=31"),
    ("a wrong ct zone", r"ct\(table=42,zone=1,", "ct(table=42,zone=2,"),
    ("a wrong NAT address", r"nat\(dst=fd64:64::a00:4\)", "nat(dst=fd64:64::a00:5)"),
    ("a wrong token", r"tun_metadata0=0x([0-9a-f]*)[0-9a-f]\b", r"tun_metadata0=0x\g<1>0"),
    ("a wrong port", r"output:10$", "output:11"),
    ("a wrong goto", r"goto_table:20$", "goto_table:21"),
    ("a wrong meter", r"meter:2,", "meter:1,"),
    ("a half move", r"move:NXM_NX_IPV6_SRC\[\]", "move:NXM_NX_IPV6_SRC[0..63]->NXM_NX_IPV6_SRC[64..127],move:NXM_NX_IPV6_SRC[]"),
    ("a lost send_flow_rem", r"send_flow_rem ", ""),
    ("a wrong learn source", r"load:NXM_NX_TUN_IPV4_SRC\[\]", "load:NXM_NX_TUN_IPV4_DST[]"),
    ("a wrong learn timeout", r"learn\(table=15,idle_timeout=60", "learn(table=15,idle_timeout=61"),
    ("a lost resubmit", r",resubmit\(,15\)", ""),
]


@pytest.mark.parametrize("what, pattern, replacement", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_a_changed_line_no_longer_compares_equal(expected, what, pattern, replacement):
    hits = 0
    for node in NODES:
        for line in flow_lines(dump(node)):
            changed = re.sub(pattern, replacement, line, count=1)
            if changed == line:
                continue
            hits += 1
            i = parse_line(changed, tables_for(role(node)))
            assert i.flow not in expected[node], (what, changed)
    assert hits, f"no captured line has {pattern!r}"


# ---------------------------------------------------------------------------
# Shapes and errors


def test_header_and_blank_lines_are_no_flows():
    assert parse_line("OFPST_FLOW reply (OF1.5) (xid=0x2):", HOST_TABLES) is None
    assert parse_line("   ", HOST_TABLES) is None


@pytest.mark.parametrize("actions, why", [
    ("learn(table=1,NXM_OF_VLAN_TCI[0..11])", "unknown action 'learn(table=1,NXM_OF_VLAN_TCI[0..11])'"),
    ("resubmit(5,21)", "resubmit"),
    ("ct(commit,zone=NXM_NX_REG1[0..15])", "zone"),
    ("ct(commit,zone=1,exec(set_field:1->ct_mark))", "exec"),
    ("set_field:0x1/0x1->reg3", "masked set_field"),
    ("load:0x1->NXM_NX_REG3[0..3]", "part of reg3"),
    ("goto_table:77", "table 77"),
])
def test_what_the_flow_language_cannot_hold_is_an_error(actions, why):
    i = parse_line(f" cookie=0x7, duration=1s, table=41, n_packets=3, n_bytes=180, priority=5,arp "
                   f"actions={actions}", HOST_TABLES)
    assert i.flow is None and why in i.error, i.error
    assert (i.cookie, i.table_id, i.priority, i.n_packets, i.n_bytes) == (7, 41, 5, 3, 180)


def test_an_unknown_table_is_an_error():
    i = parse_line(" cookie=0x1, table=99, n_packets=0, n_bytes=0, priority=0 actions=drop", HOST_TABLES)
    assert i.flow is None and "99" in i.error and i.table_id == 99


def test_ovs_shorthands_masks_and_special_ports():
    f = parse_line(" cookie=0x0, table=0, priority=7,tcp6,in_port=LOCAL,ipv6_src=fd00::/ffff:ffff::,"
                   "tp_dst=0x1000/0xf000,tp_src=80,dl_src=02:00:00:00:00:01/ff:ff:ff:ff:ff:ff,"
                   "reg3=0xffffffff/0xffffffff,nw_ttl=1 actions=output:IN_PORT,CONTROLLER:128,"
                   "set_field:1.2.3.4->tun_dst,set_field:0x10->tun_id", HOST_TABLES).flow
    assert f.match == Match.of(eth_type=0x86DD, ip_proto=6, in_port=0xFFFFFFFE,
                               ipv6_src=("fd00::", "ffff:ffff::"), tcp_dst=(0x1000, 0xF000),
                               tcp_src=80, eth_src="02:00:00:00:00:01", reg3=0xFFFFFFFF, nw_ttl=1)
    assert f.actions == (Output(OFPP_IN_PORT), Controller(128), SetField("tun_ipv4_dst", "1.2.3.4"),
                         SetField("tunnel_id", 0x10))
    g = parse_line(" cookie=0x0, table=0, priority=7,icmp,icmp_type=8,nw_dst=10.0.0.0/24,"
                   "ct_state=+est-new+trk,ct_zone=3 actions=ct(zone=3,nat),"
                   "ct(commit,zone=4,nat(dst=[fd64::1]-[fd64::9]:80-90,random))", HOST_TABLES).flow
    assert g.match.get("icmpv4_type") == 8 and g.match.get("ipv4_dst") == ("10.0.0.0", "255.255.255.0")
    assert g.match.get("ct_state") == (0x22, 0x23)
    assert g.actions[1] == CT(zone=4, commit=True, nat=Nat("dst", "fd64::1", "fd64::9", 80, 90, True))


def test_the_parsed_dumps_load_into_the_strict_fake_and_carry_svc1s_packet():
    """What the lab test does on a live lab, here on the captured text."""
    from tests.support.fake import FakeSwitch
    from vnet64 import gateway
    from vnet64.controller.flows import ETH_IPV6, MeterMod
    from vnet64.controller.pipeline import TOKEN_OPTION, VNI
    switches = {}
    for node in NODES:
        sw = FakeSwitch(tables_for(role(node)))
        sw.apply([TOKEN_OPTION, MeterMod(1, 100), MeterMod(2, 100)])
        sw.apply([i.flow for i in parsed(node)])
        switches[node] = sw
    p = show_ports("host2")
    token = int(re.search(r"tun_metadata0=(0x[0-9a-f]+)", dump("appliance")).group(1), 16)
    packet = {"eth_src": "02:00:00:00:00:99", "eth_dst": gateway.GATEWAY_MAC, "eth_type": ETH_IPV6,
              "ipv6_src": "fd00:5e:1::10", "ipv6_dst": "fd41::3930:1f:6600:a00:4", "ip_proto": 6,
              "nw_ttl": 64, "tcp_src": 40000, "tcp_dst": 7, "pkt_len": 100}
    # host2 learnt where a-vm1 is (the captured exchange's answer): straight to host1 ...
    t = switches["host2"].trace(packet, p[vif_port("endpoint", "svc1")])
    assert t.is_output(p["geneve0"], tun_ipv4_dst="192.168.64.11", tunnel_id=VNI,
                       tun_metadata0=token), str(t)
    # ... without that entry, through the appliance
    switches["host2"].apply(DeleteFlows(learned("host2")[0].cookie, 2**64 - 1, "direct"))
    t = switches["host2"].trace(packet, p[vif_port("endpoint", "svc1")])
    assert t.is_output(p["geneve0"], tun_ipv4_dst="192.168.64.10", tunnel_id=VNI,
                       tun_metadata0=token), str(t)
    big = switches["host2"].trace({**packet, "pkt_len": 1500}, p[vif_port("endpoint", "svc1")])
    assert big.punts and not big.outputs, str(big)      # Packet Too Big: the check_pkt_larger bit


# ---------------------------------------------------------------------------
# learn, and the flows it makes

# The actions as OVS 3.1 prints them: ``ovs-ofctl -O OpenFlow15 parse-flow 'table=11,ipv6,
# actions=learn(...),resubmit(,15)'`` (dump-flows prints actions with the same code). OVS
# leaves out priority=32768 and cookie=0, and prints ``F[]`` for ``F[]=F[]``.
OVS_LEARN = ("learn(table=15,idle_timeout=60,priority=100,cookie=0x1234,eth_type=0x86dd,"
             "NXM_NX_IPV6_SRC[]=NXM_NX_IPV6_DST[],NXM_NX_IPV6_DST[]=NXM_NX_IPV6_SRC[],"
             "load:NXM_NX_TUN_IPV4_SRC[]->NXM_NX_TUN_IPV4_DST[]),resubmit(,15)")
OVS_LEARN_DEFAULTS = ("learn(table=1,hard_timeout=9,eth_type=0x800,NXM_OF_IP_SRC[],"
                      "NXM_NX_REG0[]=NXM_NX_REG1[],load:NXM_NX_TUN_ID[]->NXM_NX_TUN_ID[],"
                      "load:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[])")
# A flow learn added, as ``ovs-ofctl parse-flow`` prints its flow-mod: OpenFlow 1.5 writes
# the load as a set_field, OpenFlow 1.3 (and 1.0) as a load of a hex number.
LEARNED_OF15 = "set_field:172.31.1.2->tun_dst"
LEARNED_OF13 = "load:0xac1f0102->NXM_NX_TUN_IPV4_DST[]"
# the host stages these lines name (its own map: independent of the pipeline's other stages)
LEARN_TABLES = TableMap("host", (("from_tunnel", 1), ("to_endpoint", 11), ("direct", 15)))
DIRECT_LEARN = Learn("direct", 100, 0x1234, idle_timeout=60, eth_type=0x86DD,
                     match_from=(("ipv6_src", "ipv6_dst"), ("ipv6_dst", "ipv6_src")),
                     load_from=(("tun_ipv4_src", "tun_ipv4_dst"),))


def test_learn_as_ovs_prints_it():
    i = parse_line(f" cookie=0x1, duration=2s, table=11, n_packets=1, n_bytes=90, priority=115,ipv6 "
                   f"actions={OVS_LEARN}", LEARN_TABLES)
    assert i.error is None, i.error
    assert i.flow.actions == (DIRECT_LEARN, Resubmit("direct"))
    assert i.flow.actions[0].ofctl(LEARN_TABLES) == OVS_LEARN.split(",resubmit")[0].replace(
        "table=15", "table=direct")
    named = parse_line(" cookie=0x1, table=to_endpoint, priority=115,ipv6 actions="
                       + OVS_LEARN.replace("table=15", "table=direct"), LEARN_TABLES)
    assert named.flow == i.flow


def test_learn_with_ovs_defaults_left_out():
    i = parse_line(f" cookie=0x1, table=11, priority=115,ip actions={OVS_LEARN_DEFAULTS}", LEARN_TABLES)
    assert i.flow.actions == (Learn("from_tunnel", 0x8000, 0, hard_timeout=9, eth_type=0x800,
                                    match_from=(("ipv4_src", "ipv4_src"), ("reg0", "reg1")),
                                    load_from=(("tunnel_id", "tunnel_id"), ("eth_src", "eth_dst"))),)
    assert i.flow.actions[0].ofctl(LEARN_TABLES) == OVS_LEARN_DEFAULTS.replace("table=1,", "table=from_tunnel,")


@pytest.mark.parametrize("actions", [LEARNED_OF15, LEARNED_OF13])
def test_a_learned_flow_reads_as_the_simulator_learns_it(actions):
    from vnet64.controller.sim import SimSwitch
    sw = SimSwitch(LEARN_TABLES)
    sw.apply(Flow("to_endpoint", 115, Match.of(eth_type=0x86DD), (DIRECT_LEARN,)))
    t = sw.trace({"eth_type": 0x86DD, "ipv6_src": "fd41::3930:1f:6600:a00:4",
                  "ipv6_dst": "fd00:5e:1::10", "tun_ipv4_src": "172.31.1.2"}, 1, table="to_endpoint")
    i = parse_line(" cookie=0x1234, duration=3.1s, table=15, n_packets=4, n_bytes=360, idle_timeout=60, "
                   "idle_age=1, priority=100,ipv6,ipv6_src=fd00:5e:1::10,ipv6_dst=fd41::3930:1f:6600:a00:4 "
                   f"actions={actions}", LEARN_TABLES)
    assert t.learned == [i.flow], (t.learned, i.error)


@pytest.mark.parametrize("actions, why", [
    ("learn(table=15,NXM_NX_IPV6_SRC[0..63])", "NXM_NX_IPV6_SRC[0..63]"),
    ("learn(table=15,ip_proto=6)", "ip_proto"),
    ("learn(table=15,fin_idle_timeout=5,NXM_NX_IPV6_SRC[])", "fin_idle_timeout"),
    ("learn(table=15,load:0x1->NXM_NX_REG0[])", "0x1"),
    ("learn(table=15,output:NXM_NX_REG0[0..15])", "output"),
    ("learn(NXM_NX_IPV6_SRC[])", "without a table"),
])
def test_a_learn_the_flow_language_cannot_hold_is_an_error(actions, why):
    i = parse_line(f" cookie=0x7, table=11, priority=5,ipv6 actions={actions}", LEARN_TABLES)
    assert i.flow is None and why in i.error, i.error


OVS_OFCTL = shutil.which("ovs-ofctl")


@pytest.mark.skipif(OVS_OFCTL is None, reason="ovs-ofctl is not installed")
@pytest.mark.parametrize("learn", [
    DIRECT_LEARN,
    Learn("direct", 0x8000, 0, hard_timeout=9, eth_type=0x800,
          match_from=(("ipv4_src", "ipv4_src"), ("reg0", "reg1")),
          load_from=(("tunnel_id", "tunnel_id"), ("eth_src", "eth_dst"))),
])
def test_ovs_ofctl_prints_learn_as_learn_ofctl_does(learn):
    """The live check of the inline text above: ovs-ofctl parse-flow needs no switch."""
    text = learn.ofctl(LEARN_TABLES).replace("table=direct", "table=15")
    prereq = {0x86DD: "ipv6", 0x800: "ip"}[learn.eth_type]
    out = subprocess.run([OVS_OFCTL, "-O", "OpenFlow15", "parse-flow",
                          f"table=11,{prereq},actions={text}"],
                         capture_output=True, text=True, check=True).stdout
    printed = out.strip().splitlines()[-1].split(" actions=", 1)[1]
    assert printed == text
    i = parse_line(f" cookie=0x0, table=11, priority=1,{prereq} actions={printed}", LEARN_TABLES)
    assert i.flow.actions == (learn,)
