"""The lab plan and its settings, as pure data (no root needed)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from vnet64 import topology
from vnet64_lab import plan as P
from vnet64_lab import settings

from .conftest import ROOT, TOPOLOGIES


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.stem)
def test_shipped_topologies_are_valid_lab_topologies(path):
    topo, s = settings.load(path)
    plan = P.build(topo, s, "v64-", "/run/vnet64-lab")
    assert len(plan.nodes) == len(topo.nodes)
    assert len(plan.vifs) == len(topo.vms) + len(topo.endpoints)
    assert len(plan.translators) == len(topo.hosts)
    assert len(set(plan.namespaces)) == len(plan.namespaces)
    assert all(ns.startswith("v64-") for ns in plan.namespaces)


def test_default_mtus_make_translated_and_encapsulated_packets_fit():
    _, s = settings.load(ROOT / "topologies" / "two-tenants.yaml")
    assert (s.underlay_mtu, s.geneve_option_bytes) == (1500, 8)
    assert s.overlay_mtu == 1500 - 50 - 8 == 1442
    assert s.vm_mtu == s.overlay_mtu - 20 == 1422
    # A full-size VM packet, translated (+20) and encapsulated (+50 + options), fits the fabric.
    assert s.vm_mtu + 20 + 50 + s.geneve_option_bytes == s.underlay_mtu


def test_addresses_and_ports_are_deterministic():
    topo, s = settings.load(ROOT / "topologies" / "two-tenants.yaml")
    plan = P.build(topo, s, "v64-", "/run/x")
    assert str(s.underlay_cidr) == "192.168.64.0/24"  # derived from the first node
    assert plan.controller_ip.ip == IPv4Address("172.31.255.1")
    assert [str(n.management_ip) for n in plan.nodes] == [
        "172.31.255.10/24", "172.31.255.11/24", "172.31.255.12/24"]
    a, b = (v for v in plan.vifs if v.kind == "vm")
    assert (a.host, a.ofport, b.ofport) == ("host1", P.OFPORT_FIRST_VIF, P.OFPORT_FIRST_VIF + 1)
    assert a.ipv4_gateway == IPv4Address("10.0.0.1")
    assert plan.controller_target == "tcp:172.31.255.1:6653"
    assert plan.nb_listen_remote == "ptcp:6641:172.31.255.1"


def test_long_names_get_short_unique_interface_names():
    names = {P.ifname("v-", f"a-very-long-vm-name-{i}") for i in range(50)}
    assert len(names) == 50 and all(len(n) <= P.IFNAMSIZ for n in names)
    assert P.ifname("v-", "a-vm1") == "v-a-vm1"


def test_settings_error_without_a_file_still_names_the_field():
    topo = topology.load(ROOT / "topologies" / "two-tenants.yaml")
    bad = topology.Topology(**{**topo.__dict__, "lab": {"underlay_mtu": 100}})
    with pytest.raises(topology.TopologyError, match=r"lab\.underlay_mtu: must be between"):
        settings.from_topology(bad)
