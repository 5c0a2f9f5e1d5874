"""Topology files: the default topology's content and bad input named by line and field."""

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from vnet64 import topology
from vnet64.topology import TopologyError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "topologies" / "two-tenants.yaml"


@pytest.fixture(scope="module")
def default_text() -> str:
    return DEFAULT.read_text()


def test_default_topology_has_the_names_other_work_relies_on():
    topo = topology.load(DEFAULT)
    assert {v.name: (v.vnet, str(v.ipv4), v.host) for v in topo.vms} == {
        "a-vm1": ("customer-a", "10.0.0.4", "host1"),
        "b-vm1": ("customer-b", "10.0.0.4", "host1"),
    }
    assert [str(c) for c in topo.vnet("customer-a").cidrs] == ["10.0.0.0/16"]
    assert [str(c) for c in topo.vnet("customer-b").cidrs] == ["10.0.0.0/16"]
    (svc,) = topo.services
    assert svc.name == "analytics" and [(e.name, e.host) for e in svc.endpoints] == [("svc1", "host2")]
    assert topo.platform.appliance == "appliance" and topo.node("appliance").role == "appliance"
    assert {(s.vm, s.service) for s in topo.subscriptions} == {("a-vm1", "analytics"), ("b-vm1", "analytics")}


def test_same_ipv4_in_two_vnets_gets_two_platform_addresses():
    topo = topology.load(DEFAULT)
    a, b = topo.platform_address("a-vm1"), topo.platform_address("b-vm1")
    assert a.ipv4 == b.ipv4 == IPv4Address("10.0.0.4")
    assert a.ipv6 != b.ipv6
    assert a.ipv6 == IPv6Address("fd41:0:0:3930:1f:6600:a00:4")


def test_every_shipped_topology_is_valid():
    files = sorted((ROOT / "topologies").glob("*.yaml"))
    assert DEFAULT in files
    for path in files:
        topology.load(path)


def _bad(text: str, old: str, new: str) -> str:
    assert old in text, f"fixture text not found: {old!r}"
    return text.replace(old, new, 1)


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("old, new, needle, message", [
    ("{name: a-vm1, vnet: customer-a,", "{name: a-vm1, vnet: customer-z,", "customer-z",
     r"vms\[0\]\.vnet: unknown VNet 'customer-z'"),
    ("ipv4: 10.0.0.4, host: host1}", "ipv4: 10.9.0.4, host: host1}", "10.9.0.4",
     r"vms\[0\]\.ipv4: IPv4 10.9.0.4 is outside the ranges of VNet customer-a"),
    ("{name: b-vm1,", "{name: a-vm1,", "{name: a-vm1, vnet: customer-b",
     r"vms\[1\]\.name: duplicate VM a-vm1 \(first used at x.yaml:\d+: vms\[0\]\.name\)"),
    ("underlay_ip: 192.168.64.12}", "underlay_ip: 192.168.64.11}", "name: host2",
     r"nodes\[2\]\.underlay_ip: duplicate underlay IP 192.168.64.11"),
    ('{name: svc1, ipv6: "fd00:5e:1::10", host: host2}', "{name: svc1, host: host2}", "name: svc1",
     r"services\[0\]\.endpoints\[0\]: endpoint svc1 has no ipv6"),
    ('{name: svc1, ipv6: "fd00:5e:1::10", host: host2}', '{name: svc1, ipv6: "fd00:5e:1::10", host: host7}',
     "host7", r"services\[0\]\.endpoints\[0\]\.host: unknown host 'host7'"),
    ("ipv4: 10.0.0.4, host: host1}", "ipv4: 10.0.0.4, host: appliance}", "host: appliance",
     r"vms\[0\]\.host: 'appliance' is the appliance, not a host"),
    ("{vm: a-vm1, service: analytics}", "{vm: a-vm9, service: analytics}", "a-vm9",
     r"subscriptions\[0\]\.vm: unknown VM 'a-vm9'"),
    ("id: 0x1f", "id: 0x1ffff", "0x1ffff", r"vnets\[0\]\.id: VNet id 0x1ffff is out of range"),
    ("id: 0x20", "id: 0x001f", "0x001f", r"vnets\[1\]\.id: duplicate VNet id in region westeurope: 0x1f"),
    ('ipv6: "fd00:5e:1::10"', 'ipv6: "fd41::10"', "fd41::10", r"inside the steering prefix"),
    ("platform_ip: 100.100.0.1", "platform_ip: 10.0.0.1", "cidrs: [10.0.0.0/16]", r"contains platform_ip 10.0.0.1"),
    ('translator_prefix: "fd64:64::/96"', 'translator_prefix: "64:ff9b::/96"', "translator_prefix",
     r"platform\.translator_prefix: .*well-known"),
    ("cidr: 10.0.0.0/24}", "cidr: 10.1.0.0/24}", "10.1.0.0/24", r"subnet 10.1.0.0/24 is not inside"),
    ("{name: a-vm1, vnet: customer-a,", "{name: a-vm1, colour: red, vnet: customer-a,", "colour",
     r"vms\[0\]\.colour: unknown field 'colour'"),
    ("role: host, underlay_ip: 192.168.64.11", "role: hots, underlay_ip: 192.168.64.11", "hots",
     r"nodes\[1\]\.role: role must be one of host, appliance"),
    ("ipv4: 10.0.0.4, host: host1}", "ipv4: 10.0.0.1, host: host1}", "10.0.0.1, host",
     r"virtual gateway address"),
])
def test_bad_topology_is_rejected_naming_line_and_field(default_text, old, new, needle, message):
    text = _bad(default_text, old, new)
    with pytest.raises(TopologyError, match=message) as info:
        topology.loads(text, "x.yaml")
    assert info.value.where.startswith(f"x.yaml:{_line_of(text, needle)}:"), info.value.where


def test_not_yaml_names_the_line():
    with pytest.raises(TopologyError, match=r"x.yaml:3: not valid YAML: expected ',' or '}'"):
        topology.loads("nodes: [\n  {name: a\n", "x.yaml")


def test_duplicate_yaml_keys_are_rejected():
    with pytest.raises(TopologyError, match=r"x.yaml:2: duplicate key 'nodes'"):
        topology.loads("nodes: []\nnodes: []\n", "x.yaml")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TopologyError, match="cannot read topology file"):
        topology.load(tmp_path / "nope.yaml")


def test_defaults_are_stable_and_distinct():
    assert topology.default_mac("a-vm1") == topology.default_mac("a-vm1")
    assert topology.default_mac("a-vm1") != topology.default_mac("b-vm1")
    assert int(topology.default_mac("x")[:2], 16) & 0b11 == 0b10  # local, unicast
    assert topology.default_dpid(IPv4Address("192.168.64.11")) == 0x564E0000C0A8400B
