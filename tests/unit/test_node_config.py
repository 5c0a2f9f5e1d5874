"""What vnet64-node writes, for both datapath types (no root, no switch)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import pytest

from vnet64.controller.pipeline import HOST_TABLES, ZONE_V6_DNAT, ZONE_V6_SNAT
from vnet64.node import config, datapath, translator
from vnet64.node.datapath import NETDEV, SYSTEM
from vnet64.ports import translator_mac

HOST1 = config.NodeFacts(name="host1", role="host", underlay_ip=IPv4Address("192.168.64.11"),
                         datapath_id=0x6464c0a8400b, controllers=("tcp:172.31.255.1:6653",),
                         peers=(IPv4Address("192.168.64.10"), IPv4Address("192.168.64.12")))
APPLIANCE = config.NodeFacts(name="appliance", role="appliance",
                             underlay_ip=IPv4Address("192.168.64.10"), datapath_id=0x400a,
                             controllers=("tcp:172.31.255.1:6653",), peers=())
UPLINK = config.Uplink(name="ul0", mac="02:00:00:00:00:0b", mtu=1500,
                       address=IPv4Interface("192.168.64.11/24"))


def by_name(specs: list[dict]) -> dict[str, dict]:
    return {s["name"]: s for s in specs}


def test_netdev_host_bridges_phy_first_then_int():
    specs = config.bridges(HOST1, NETDEV, 1442, UPLINK)
    assert [s["name"] for s in specs] == ["br-phy", "br-int"]
    phy, br_int = specs
    assert phy["datapath_type"] == "netdev" and phy["other_config"] == {"hwaddr": UPLINK.mac}
    assert phy["internal_mtu"] == 1500 and phy["external_ids"] == {"vnet64-node": "host1"}
    assert br_int["datapath_type"] == "netdev" and br_int["fail_mode"] == "secure"
    assert br_int["other_config"] == {"datapath-id": "00006464c0a8400b", "disable-in-band": "true"}
    assert br_int["controllers"] == ["tcp:172.31.255.1:6653"]
    assert br_int["internal_mtu"] == 1442
    assert br_int["flow_tables"] == {tid: name for name, tid in HOST_TABLES.stages}
    assert br_int["table_prefixes"]["from_tunnel"] == ["ipv6_dst"]
    assert br_int["external_ids"] == {"vnet64-node": "host1", "vnet64-role": "host"}


def test_system_datapath_has_no_br_phy_and_needs_no_uplink():
    specs = config.bridges(HOST1, SYSTEM, 1442, None)
    assert [s["name"] for s in specs] == ["br-int"]
    assert specs[0]["datapath_type"] == "system"
    names = [p["name"] for p in config.ports(HOST1, SYSTEM, None)]
    assert names == ["geneve0", "xlat0"]


def test_netdev_needs_an_uplink():
    with pytest.raises(ValueError, match="uplink"):
        config.bridges(HOST1, NETDEV, 1442, None)


def test_ports_geneve_with_local_ip_and_the_translator_on_hosts_only():
    host = by_name(config.ports(HOST1, NETDEV, UPLINK))
    assert host["ul0"]["bridge"] == "br-phy"
    g = host["geneve0"]
    assert g["type"] == "geneve" and g["ofport_request"] == config.OFPORT_GENEVE
    assert g["options"] == {"remote_ip": "flow", "key": "flow", "local_ip": "192.168.64.11"}
    x = host["xlat0"]
    assert x["ofport_request"] == config.OFPORT_XLAT
    assert x["external_ids"]["iface-id"] == "xlat:host1"
    assert x["external_ids"]["attached-mac"] == translator_mac("host1")
    appliance = by_name(config.ports(APPLIANCE, SYSTEM, None))
    assert list(appliance) == ["geneve0"]


def test_sysctls_differ_by_datapath():
    assert config.sysctls(NETDEV, UPLINK) == {"net.ipv4.conf.ul0.arp_ignore": 1,
                                              "net.core.rmem_default": 4 << 20}
    assert config.sysctls(SYSTEM, None) == {}
    assert config.sysctls(SYSTEM, UPLINK) == {}     # the NIC keeps its address: ARP as usual


def test_every_difference_is_named_in_one_place():
    assert (NETDEV.ct_datapath_key, SYSTEM.ct_datapath_key) == ("netdev", "system")
    assert NETDEV.needs_br_phy and not SYSTEM.needs_br_phy
    assert NETDEV.seed_tunnel_neighbours and not SYSTEM.seed_tunnel_neighbours
    assert NETDEV.veth_tx_offload_off and not SYSTEM.veth_tx_offload_off
    assert NETDEV.other_config == {"userspace-tso-enable": "false"}
    assert NETDEV.uplink_arp_ignore and not SYSTEM.uplink_arp_ignore
    assert (NETDEV.rmem_default, SYSTEM.rmem_default) == (4 << 20, None)
    assert (NETDEV.min_fragment, SYSTEM.min_fragment) == (400, None)   # OVS's floor; nf_defrag has none
    assert NETDEV.verified and not SYSTEM.verified and SYSTEM.notes
    # what the kernel datapath relies on, unverified here, names its documents
    notes = " ".join(SYSTEM.notes)
    for doc in ("ovs-vswitchd.conf.db(5)", "ovs-actions(7)", "ovs-fields(7)", "userspace-tunneling"):
        assert doc in notes, doc


def test_datapath_choice():
    assert datapath.choose("netdev", module_loaded=True) is NETDEV
    assert datapath.choose(None, module_loaded=True) is SYSTEM
    assert datapath.choose(None, module_loaded=False) is NETDEV
    with pytest.raises(ValueError, match="choose system or netdev"):
        datapath.choose("dpdk")


def test_kernel_module_detection_reads_proc_modules(tmp_path):
    f = tmp_path / "modules"
    f.write_text("nf_conntrack 180224 1 openvswitch, Live 0x0\nopenvswitch 196608 0 - Live 0x0\n")
    assert datapath.kernel_module_loaded(str(f))
    f.write_text("nf_conntrack 180224 0 - Live 0x0\n")
    assert not datapath.kernel_module_loaded(str(f))


def test_ct_zones_every_vnet_and_the_ipv6_zones_on_hosts():
    assert config.ct_zones("host", [3, 1, 3]) == [1, 3, ZONE_V6_DNAT, ZONE_V6_SNAT]
    assert config.ct_zones("appliance", [1]) == []
    assert config.ct_timeouts() == {"tcp_time_wait": 62, "tcp_close": 62}


def test_mtus_follow_the_underlay():
    assert config.overlay_mtu(1500) == 1442 and config.vm_mtu(1500) == 1422
    assert config.overlay_mtu(9000) == 8942


def test_tayga_conf_and_nft_come_from_the_nb_settings(tmp_path):
    conf = translator.tayga_conf("host1", "192.0.0.1", "fd64:64::/96", tmp_path)
    assert "tun-device nat64\n" in conf and "ipv4-addr 192.0.0.1\n" in conf
    assert "prefix fd64:64::/96\n" in conf and f"data-dir {tmp_path}\n" in conf
    nft = translator.nft_ruleset()
    assert nft.count(f"delete table") == 2     # replaced whole: applying it twice is the same
    assert 'hook ingress device "ovs0"' in nft


def test_policy_rules_are_recognised_in_ip_json():
    rules = translator.rules()
    assert [r.pref for r in rules] == [1000, 1001, 1000, 1001, 999]
    shown = [{"priority": 1000, "src": "all", "iif": "ovs0", "table": "100"},
             {"priority": 999, "src": "all", "iif": "ovs0", "fwmark": "0x64", "table": "101"}]
    assert rules[0].matches(shown[0]) and not rules[1].matches(shown[0])
    assert rules[-1].matches(shown[1]) and not rules[0].matches(shown[1])
    assert rules[-1].add() == "rule add iif ovs0 fwmark 0x64 lookup 101 pref 999"
    assert any("mtu lock" in line for line in translator.routes()["-4"])
