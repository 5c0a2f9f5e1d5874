"""A VM's packet with TTL 0 or 1 towards Platform_IP: its gateway is a router, so
``from_vm`` punts it and the controller answers with an ICMPv4 Time Exceeded from the
gateway's address (customer module doc, "Hop limits"); the translator namespace's
nftables give back the two extra decrements it takes. Bytes read back with scapy."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import Ether

from tests.conftest import DEFAULT_TOPOLOGY
from tests.support.fake import FakeSwitch
from vnet64 import gateway, topology
from vnet64.controller import model as M
from vnet64.controller.flows import Output, PacketOut
from vnet64.controller.logic import Logic
from vnet64.controller.pipeline import tables_for
from vnet64.controller.roles.customer import time_exceeded
from vnet64.node import translator
from vnet64.ports import GENEVE_PORT, XLAT_PORT, vif_port

XLAT, GENEVE, A_VM1 = 2, 1, 10
VM_MAC = "02:00:00:0a:00:04"


@pytest.fixture
def host1():
    topo = topology.load(DEFAULT_TOPOLOGY)
    model = M.from_topology(topo, bindings=M.topology_bindings(topo, vif_port))
    logic = Logic(lambda: model)
    dpid = model.node("host1").datapath_id
    tables, msgs = logic.switch_connected(dpid, {GENEVE_PORT: GENEVE, XLAT_PORT: XLAT,
                                                 vif_port("vm", "a-vm1"): A_VM1})
    sw = FakeSwitch(tables)
    sw.apply(msgs)
    return model, logic, dpid, sw


def from_vm(vm, ttl: int, payload: bytes = b"ttl-marker", **ip) -> bytes:
    return bytes(Ether(src=VM_MAC, dst=gateway.GATEWAY_MAC)
                 / IP(src=str(vm.ipv4), dst=str(vm.snat_ip), ttl=ttl, **ip)
                 / UDP(sport=8081, dport=40000) / payload)


@pytest.mark.parametrize("ttl", [0, 1])
def test_the_gateway_answers_time_exceeded_quoting_the_packet(host1, ttl):
    vm = host1[0].vm("a-vm1")
    got = Ether(time_exceeded(from_vm(vm, ttl), vm))
    assert (got.src, got.dst) == (gateway.GATEWAY_MAC, VM_MAC)
    assert (got[IP].src, got[IP].dst, got[IP].proto) == (str(vm.gateway), str(vm.ipv4), 1)
    assert (got[ICMP].type, got[ICMP].code) == (11, 0)
    quoted = got[IPerror]
    assert (quoted.src, quoted.dst, quoted.ttl) == (str(vm.ipv4), str(vm.snat_ip), ttl)
    assert (quoted[UDPerror].sport, bytes(quoted[UDPerror].payload)) == (8081, b"ttl-marker")
    again = got.copy()
    del again[IP].chksum, again[ICMP].chksum
    fresh = Ether(bytes(again))
    assert (fresh[IP].chksum, fresh[ICMP].chksum) == (got[IP].chksum, got[ICMP].chksum)


def test_the_quote_is_cut_to_fit_576_bytes(host1):
    vm = host1[0].vm("a-vm1")
    got = Ether(time_exceeded(from_vm(vm, 1, b"x" * 1200), vm))
    assert len(got[IP]) == 576


@pytest.mark.parametrize("what", ["ttl 2", "an ICMP error", "a later fragment", "another source",
                                  "not IPv4"])
def test_anything_else_gets_no_answer(host1, what):
    vm = host1[0].vm("a-vm1")
    frame = {
        "ttl 2": from_vm(vm, 2),
        "an ICMP error": bytes(Ether(src=VM_MAC) / IP(src=str(vm.ipv4), dst=str(vm.snat_ip), ttl=1)
                               / ICMP(type=3, code=3) / IP(src=str(vm.snat_ip), dst=str(vm.ipv4)) / UDP()),
        "a later fragment": from_vm(vm, 1, frag=100),
        "another source": bytes(Ether(src=VM_MAC) / IP(src="10.0.0.99", dst=str(vm.snat_ip), ttl=1) / TCP()),
        "not IPv4": bytes(Ether(type=0x86DD) / (b"\0" * 60)),
    }[what]
    assert time_exceeded(frame, vm) is None


def test_from_vm_punts_ttl_0_and_1_and_forwards_2(host1):
    model, _, _, sw = host1
    vm = model.vm("a-vm1")
    pkt = {"eth_type": 0x0800, "ipv4_src": str(vm.ipv4), "ipv4_dst": str(vm.snat_ip), "ip_proto": 17,
           "udp_src": 8081, "udp_dst": 40000}
    for ttl in (0, 1):
        t = sw.trace({**pkt, "nw_ttl": ttl}, A_VM1)
        assert [stage for stage, _ in t.punts] == ["from_vm"], str(t)
    t = sw.trace({**pkt, "nw_ttl": 2}, A_VM1)
    assert not any(stage == "from_vm" for stage, _ in t.punts), str(t)


def test_logic_answers_out_of_the_vms_port_and_counts(host1):
    model, logic, dpid, _ = host1
    vm = model.vm("a-vm1")
    frame = from_vm(vm, 1)
    assert logic.packet_in(dpid, tables_for("host").id("from_vm"), A_VM1, frame) == \
        [PacketOut(time_exceeded(frame, vm), 0xFFFFFFFD, (Output(A_VM1),))]
    assert logic.stats["icmp_time_exceeded_sent"] == 1
    assert logic.packet_in(dpid, tables_for("host").id("from_vm"), 99, frame) == []   # no VM's port
    assert logic.stats["packet_ins_ignored"] == 1


def test_tayga_gives_back_the_namespaces_two_decrements(tmp_path):
    conf = translator.tayga_conf("host1", "192.0.0.1", "fd64:64::/96", tmp_path)
    assert "hop-limit-adjust 1\n" in conf                  # +1 by TAYGA, -2 by the routing
    assert "hop-limit" not in translator.tayga_conf("host1", "192.0.0.1", "fd64:64::/96", tmp_path, None)
    patched = tmp_path / "tayga-patched"
    patched.write_bytes(b"\x7fELF... hop-limit-adjust ...")
    debian = tmp_path / "tayga-debian"
    debian.write_bytes(b"\x7fELF... strict-frag-hdr ...")
    assert translator.knows_hop_limit_adjust(str(patched))
    assert not translator.knows_hop_limit_adjust(str(debian))
    assert not translator.knows_hop_limit_adjust(str(tmp_path / "missing"))
