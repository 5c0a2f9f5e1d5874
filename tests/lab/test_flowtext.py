"""vnet64.controller.flowtext on a running lab: every node's ``ovs-ofctl -O OpenFlow15
--no-names dump-flows br-int`` (a pair set up on host1) parses without an error, the
parsed flows load into the strict fake switch (which refuses what OVS would refuse), and
a packet from svc1 traced through host2's parsed flows leaves by the Geneve port towards
the appliance - with the lab's own port numbers, token and addresses."""

from __future__ import annotations

import re
from ipaddress import IPv6Address

import pytest
from vnet64_lab.traffic import A6, LINE_PORT, SVC1, LineSession, ovs_node, running_platform

from tests.lab.conftest import ROOT, need_lab, new_lab
from tests.support.fake import FakeSwitch
from vnet64 import gateway
from vnet64.controller.flowtext import parse_dump
from vnet64.controller.flows import ETH_IPV6, MeterMod
from vnet64.controller.pipeline import TOKEN_OPTION, VNI, tables_for
from vnet64.ports import GENEVE_PORT, vif_port

NODES = ("host1", "host2", "appliance")
PORT_LINE = re.compile(r"^\s*(\d+)\(([^)]+)\):", re.M)


@pytest.fixture(scope="module")
def platform():
    need_lab()
    with running_platform(new_lab("ft"), ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        session = LineSession(plan, A6, LINE_PORT)      # a pair on host1
        try:
            assert session.send("flowtext")["reply"].endswith("flowtext")
            yield lab, plan
        finally:
            session.close()


def ofctl(plan, node: str, *args: str) -> str:
    return ovs_node(plan, node).ofctl("-O", "OpenFlow15", *args)


def ports(plan, node: str) -> dict[str, int]:
    return {name: int(n) for n, name in PORT_LINE.findall(ofctl(plan, node, "show", "br-int"))}


def role(node: str) -> str:
    return "appliance" if node == "appliance" else "host"


@pytest.fixture(scope="module")
def switches(platform) -> dict[str, FakeSwitch]:
    """node -> a fake switch loaded with the node's parsed flows (its meters and the token's
    TLV mapping first, as the controller sends them)."""
    _, plan = platform
    out = {}
    for node in NODES:
        tables = tables_for(role(node))
        installed = parse_dump(ofctl(plan, node, "--no-names", "dump-flows", "br-int"), tables)
        assert len(installed) >= 8
        bad = [(i.text, i.error) for i in installed if i.error]
        assert not bad, bad
        sw = FakeSwitch(tables)
        meters = {int(m) for m in re.findall(r"meter=(\d+)", ofctl(plan, node, "dump-meters", "br-int"))}
        sw.apply([TOKEN_OPTION, *(MeterMod(m, 1000) for m in sorted(meters))])
        sw.apply([i.flow for i in installed])
        assert len(sw.flows()) == len(installed)
        out[node] = sw
    return out


def test_every_node_parses_and_loads_into_the_strict_fake(switches, platform):
    _, plan = platform
    assert any(f.table == "pair" and f.priority == 100 for f in switches["host1"].flows())
    assert any(f.table == "route" for f in switches["appliance"].flows())


def test_svc1s_packet_through_host2s_parsed_flows_reaches_the_geneve_port(switches, platform):
    _, plan = platform
    p = ports(plan, "host2")
    svc1, geneve = p[vif_port("endpoint", "svc1")], p[GENEVE_PORT]
    appliance = str(plan.node("appliance").underlay_ip.ip)
    token = next(v for f in switches["appliance"].flows() for k, v in f.match.items
                 if k == "tun_metadata0")
    packet = {"eth_src": "02:00:00:00:00:99", "eth_dst": gateway.GATEWAY_MAC, "eth_type": ETH_IPV6,
              "ipv6_src": SVC1, "ipv6_dst": A6, "ip_proto": 6, "nw_ttl": 64,
              "tcp_src": 40000, "tcp_dst": LINE_PORT, "pkt_len": 100}
    # the session's answer taught host2 the direct path (a learnt flow in the dump)
    host1 = str(plan.node("host1").underlay_ip.ip)
    t = switches["host2"].trace(packet, svc1)
    assert t.is_output(geneve, tun_ipv4_dst=host1, tunnel_id=VNI, tun_metadata0=token,
                       ipv6_dst=A6), str(t)
    # another VM's platform address, which host2 learnt nothing for: the appliance
    t = switches["host2"].trace({**packet, "ipv6_dst": str(IPv6Address(A6) + 0x100)}, svc1)
    assert t.is_output(geneve, tun_ipv4_dst=appliance, tunnel_id=VNI, tun_metadata0=token), str(t)
    # ... and its spoofed twin does not, nor one with hop limit 1 (punted to the gateway)
    spoofed = switches["host2"].trace({**packet, "ipv6_src": str(IPv6Address(SVC1) + 1)}, svc1)
    assert spoofed.dropped, str(spoofed)
    expiring = switches["host2"].trace({**packet, "nw_ttl": 1}, svc1)
    assert expiring.punts and not expiring.outputs, str(expiring)
