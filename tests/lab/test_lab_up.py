"""Each shipped topology, built for real: OVS per node, fabric, Geneve, VMs, translator, NB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from vnet64 import gateway
from vnet64.nb import api as nb_api
from vnet64.nb.server import NbServer
from vnet64_lab import plan as P
from vnet64_lab import sh
from vnet64_lab.ovs import OvsNode
from vnet64_lab.traffic import A6

from .conftest import TEST_PREFIX, TEST_RUN_DIR, Capture, node_ofctl, until_captured

pytestmark = pytest.mark.lab
TEST_COOKIE = "0x7e57"  # flows the tests install; deleted after each test
PROBE_PAYLOAD = b"vnet64-lab-probe"
LAB_CLI = [sys.executable, "-m", "vnet64_lab.cli"]


@pytest.fixture
def test_flows(lab):
    """Delete the tests' flows afterwards, on every node, even if the test failed."""
    _, plan = lab
    yield
    for n in plan.nodes:
        node_ofctl(plan, n.name, "del-flows", "br-int", f"cookie={TEST_COOKIE}/-1")


def test_every_node_runs_vswitchd_with_br_int_on_netdev(lab):
    the_lab, plan = lab
    status = the_lab.status()
    assert status["up"] and not status["problems"]
    by_name = {n["name"]: n for n in status["nodes"]}
    assert set(by_name) == {n.name for n in plan.topology.nodes}
    for node in plan.topology.nodes:
        st = by_name[node.name]
        assert sh.proc_alive(st["ovs_vswitchd"], "ovs-vswitchd"), f"{node.name}: no vswitchd"
        assert sh.proc_alive(st["ovsdb_server"], "ovsdb-server"), f"{node.name}: no ovsdb-server"
        assert sh.proc_alive(st["agent"], "vnet64-node"), f"{node.name}: no node agent"
        br_int, br_phy = st["bridges"]["br-int"], st["bridges"]["br-phy"]
        assert br_int["datapath_type"] == "netdev"
        assert br_phy["datapath_type"] == "netdev"
        assert br_int["fail_mode"] == "secure"
        assert br_int["datapath_id"] == f"{node.datapath_id:016x}", "datapath id not the topology's"
        assert [c["target"] for c in br_int["controllers"]] == the_lab.bridge_controllers(plan)
        assert "geneve0" in br_int["ports"]


def test_geneve_port_and_datapath(lab):
    _, plan = lab
    for n in plan.nodes:
        node = OvsNode(n.name, n.ns, n.run_dir)
        dpif = node.appctl("dpif/show")
        assert "netdev@ovs-netdev" in dpif
        assert "geneve0 1/" in dpif and \
            f"(geneve: key=flow, local_ip={n.underlay_ip.ip}, remote_ip=flow)" in dpif, dpif
        neigh = node.appctl("tnl/neigh/show")
        for other in plan.nodes:
            if other.name != n.name:
                assert str(other.underlay_ip.ip) in neigh and other.underlay_mac in neigh, \
                    f"{n.name}: tunnel neighbour {other.name} not seeded"


def _ping(ns: str, dst: str) -> tuple[str, str, bool]:
    ok = any(sh.in_ns(ns, ["ping", "-c", "1", "-W", "2", dst], check=False).returncode == 0
             for _ in range(3))
    return ns, dst, ok


def test_underlay_reachability_between_all_nodes(lab):
    _, plan = lab
    pairs = [(a.ns, str(b.underlay_ip.ip)) for a in plan.nodes for b in plan.nodes if a != b]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: _ping(*p), pairs))
    failed = [f"{ns} -> {dst}" for ns, dst, ok in results if not ok]
    assert not failed, f"no underlay reachability: {failed}"


def test_management_network_reaches_the_nb(lab):
    _, plan = lab
    for n in plan.nodes:
        out = sh.in_ns(n.ns, [sh.tool("ovsdb-client"), "--timeout=5", "list-dbs",
                              plan.nb_tcp_remote]).stdout
        assert "VNet64_Northbound" in out, f"{n.name} cannot reach the NB over management"


def test_nb_is_loaded_from_the_topology(lab):
    _, plan = lab
    api = nb_api.connect(NbServer(Path(plan.nb_run_dir)).remote)
    try:
        nodes = {n["name"]: n for n in api.list("node")}
        assert {n.name: f"{n.datapath_id:016x}" for n in plan.topology.nodes} == \
            {name: n["datapath_id"] for name, n in nodes.items()}
        assert {v["name"] for v in api.list("vm")} == {v.name for v in plan.topology.vms}
        assert len(api.list("subscription")) == len(plan.topology.subscriptions)
        # the management remote comes from the NB, with the lab's inactivity probe
        assert [(c["target"], c["inactivity_probe"]) for c in api.connections()] == \
            [(plan.nb_listen_remote, P.NB_INACTIVITY_PROBE_MS)]
    finally:
        api.close()


def _probe_frame(dst_mac: str, vni_tag: int) -> str:
    frame = (Ether(src=gateway.GATEWAY_MAC, dst=dst_mac)
             / IP(src="100.100.0.1", dst="10.0.0.4") / UDP(sport=40000 + vni_tag, dport=9)
             / Raw(PROBE_PAYLOAD))
    return bytes(frame).hex()


def test_geneve_packets_cross_the_fabric(lab, test_flows):
    """Every node encapsulates towards the next one (a ring, so every node also decapsulates):
    the packet is Geneve on the receiver's fabric port and arrives decapsulated on its br-int."""
    _, plan = lab
    nodes = list(plan.nodes)
    for i, src in enumerate(nodes):
        dst = nodes[(i + 1) % len(nodes)]
        vni = 0x100 + i
        node_ofctl(plan, dst.name, "add-flow", "br-int",
                   f"cookie={TEST_COOKIE},priority=100,in_port=geneve0,tun_id={vni},"
                   f"actions=LOCAL")
        frame = _probe_frame("02:00:00:00:00:fe", i)
        underlay = Capture(plan.fabric_ns, dst.fabric_if, "udp dst port 6081")
        inner = Capture(dst.ns, "br-int", f"udp port {40000 + i}", extra=("-A",))

        def send(src=src, dst=dst, frame=frame, vni=vni) -> None:
            node_ofctl(plan, src.name, "packet-out", "br-int",
                       f"in_port=controller packet={frame} actions="
                       f"set_field:{dst.underlay_ip.ip}->tun_dst,set_field:{vni}->tun_id,"
                       f"output:geneve0")

        got_underlay, got_inner = until_captured([underlay, inner], send)
        assert f"{src.underlay_ip.ip}." in got_underlay and \
            f"> {dst.underlay_ip.ip}.6081: Geneve" in got_underlay and \
            f"vni {vni:#x}" in got_underlay, f"{src.name}->{dst.name}: no Geneve on the fabric:\n" \
                                             f"{got_underlay}"
        assert "100.100.0.1.4" in got_inner and "vnet64-lab-probe" in got_inner, \
            f"{src.name}->{dst.name}: not decapsulated onto br-int:\n{got_inner}"


def test_geneve_delivers_to_a_vm(lab, test_flows):
    """From a service endpoint's host to a customer VM's host, into the VM's namespace."""
    _, plan = lab
    ep = next(v for v in plan.vifs if v.kind == "endpoint")
    vm = next(v for v in plan.vifs if v.kind == "vm" and v.host != ep.host)
    dst = plan.node(vm.host)
    node_ofctl(plan, vm.host, "add-flow", "br-int",
               f"cookie={TEST_COOKIE},priority=100,in_port=geneve0,tun_id=0x64,"
               f"actions=output:{vm.port}")
    frame = _probe_frame(vm.mac, 99)
    with Capture(vm.ns, P.VM_IF, "udp port 40099") as cap:
        out, = until_captured([cap], lambda: node_ofctl(
            plan, ep.host, "packet-out", "br-int",
            f"in_port=controller packet={frame} actions=set_field:{dst.underlay_ip.ip}->tun_dst,"
            f"set_field:0x64->tun_id,output:geneve0"))
    assert "100.100.0.1.40099 > 10.0.0.4.9: UDP" in out, out


def test_vms_have_exactly_the_topology_addresses(lab):
    _, plan = lab
    s = plan.settings
    for v in plan.vifs:
        link = json.loads(sh.ip(v.ns, "-j", "addr", "show", "dev", P.VM_IF).stdout)[0]
        addrs = {(a["family"], f"{a['local']}/{a['prefixlen']}", a["scope"])
                 for a in link["addr_info"]}
        assert link["address"] == v.mac
        routes = sh.ip(v.ns, "-4" if v.kind == "vm" else "-6", "route", "show", "default").stdout
        if v.kind == "vm":
            assert addrs == {("inet", str(v.ipv4), "global")}, f"{v.name}: {addrs}"
            assert link["mtu"] == s.vm_mtu == s.underlay_mtu - 50 - s.geneve_option_bytes - 20
            assert f"default via {v.ipv4_gateway} dev eth0" in routes
        else:
            globals_ = {a for a in addrs if a[2] == "global"}
            assert globals_ == {("inet6", str(v.ipv6), "global")}, f"{v.name}: {addrs}"
            assert not any(a[0] == "inet" for a in addrs), f"{v.name} has IPv4"
            assert link["mtu"] == s.overlay_mtu
            assert f"default via {gateway.SERVICE_GATEWAY_IPV6} dev eth0" in routes
        features = sh.in_ns(v.ns, ["ethtool", "-k", P.VM_IF]).stdout
        assert "tx-checksumming: off" in features, f"{v.name}: TX checksum offload is on"


def test_translator_namespace_translates(lab, test_flows):
    """An IPv6 packet in the translator /96 sent into xlat0 comes back as IPv4 (and vice versa)."""
    _, plan = lab
    prefix = str(plan.topology.platform.translator_prefix.network_address)
    for t in plan.translators:
        v6 = (Ether(src=gateway.GATEWAY_MAC, dst=t.mac)
              / IPv6(src=f"{prefix}6440:1", dst=f"{prefix}a00:4") / UDP(sport=41000, dport=9)
              / Raw(PROBE_PAYLOAD))
        v4 = (Ether(src=gateway.GATEWAY_MAC, dst=t.mac)
              / IP(src="10.0.0.4", dst="100.64.0.1") / UDP(sport=9, dport=41001)
              / Raw(PROBE_PAYLOAD))
        ns = plan.node(t.host).ns
        with Capture(ns, P.XLAT_PORT, "udp and (port 41000 or port 41001)", count=4) as cap:
            out, = until_captured([cap], lambda t=t, v6=v6, v4=v4: [node_ofctl(
                plan, t.host, "packet-out", "br-int",
                f"in_port=controller packet={bytes(p).hex()} actions=output:{P.XLAT_PORT}")
                for p in (v6, v4)])
        assert "100.64.0.1.41000 > 10.0.0.4.9: UDP" in out, f"{t.host}: 6->4 failed:\n{out}"
        assert f"{prefix}a00:4.9 > {prefix}6440:1.41001: UDP" in out, \
            f"{t.host}: 4->6 failed:\n{out}"
        assert f"{t.mac} > {gateway.GATEWAY_MAC}" in out, "translated packets not sent to br-int"


def test_up_twice_is_harmless(lab):
    the_lab, plan = lab
    pids = {n.name: OvsNode(n.name, n.ns, n.run_dir).pid("ovs-vswitchd") for n in plan.nodes}
    assert the_lab.up(the_lab.state()["topology"])["already_up"]
    assert pids == {n.name: OvsNode(n.name, n.ns, n.run_dir).pid("ovs-vswitchd")
                    for n in plan.nodes}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LAB_CLI, "--prefix", TEST_PREFIX, "--run-dir", TEST_RUN_DIR, *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_status_exec_flows(lab, test_flows):
    the_lab, plan = lab
    st = _cli("status")
    assert st.returncode == 0, st.stderr
    assert st.stdout.count("vnet64-node=pid ") == len(plan.nodes), st.stdout
    if the_lab.control == "node":
        assert f"control: node  controller: one per node, {len(plan.nodes)} of " \
               f"{len(plan.nodes)} running" in st.stdout, st.stdout
        assert st.stdout.count("vnet64-controller=pid ") == len(plan.nodes), st.stdout
    else:
        assert "control: central  controller: running" in st.stdout, st.stdout
    data = json.loads(_cli("status", "--json").stdout)
    assert {n["name"] for n in data["nodes"]} == {n.name for n in plan.nodes}
    # each VM's platform IPv6, what a service connects to
    for v in (v for v in plan.vifs if v.kind == "vm"):
        want = str(plan.topology.platform_address(v.name).ipv6)
        assert next(s for s in data["vifs"] if s["name"] == v.name)["platform_ipv6"] == want
        assert f"{v.name} on {v.host} port {v.port}: {v.ipv4}  platform IPv6 {want}" in st.stdout, st.stdout
    if plan.topology.name == "two-tenants":       # the address the demo and README use
        assert next(s for s in data["vifs"] if s["name"] == "a-vm1")["platform_ipv6"] == A6
    assert all("platform_ipv6" not in v for v in data["vifs"] if v["kind"] == "endpoint")
    vm = next(v for v in plan.vifs if v.kind == "vm")
    out = _cli("exec", vm.name, "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert str(vm.ipv4) in out.stdout, out.stderr
    host = plan.topology.hosts[0].name
    out = _cli("exec", host, "--", "ovs-vsctl", "get", "bridge", "br-int", "datapath_type")
    assert out.stdout.strip() == "netdev", out.stderr
    node_ofctl(plan, host, "add-flow", "br-int", f"cookie={TEST_COOKIE},priority=7,actions=drop")
    flows = _cli("flows", host)
    assert flows.returncode == 0 and "priority=7" in flows.stdout, flows.stdout + flows.stderr
    bad = _cli("exec", "no-such-thing", "--", "true")
    assert bad.returncode == 1 and "unknown target 'no-such-thing'" in bad.stderr


def test_cli_logs(lab):
    the_lab, plan = lab
    out = _cli("logs", "-n", "3")
    assert out.returncode == 0, out.stderr
    for ctl in the_lab.controllers(plan):
        assert f"== controller ({ctl.name}): {ctl.log}" in out.stdout, out.stdout
    assert out.stdout.count("== vnet64-node (") == len(plan.nodes), out.stdout
    host = plan.topology.hosts[0].name
    one = _cli("logs", host)
    assert one.returncode == 0, one.stderr
    assert f"== controller ({the_lab.controller(host).name}): " in one.stdout
    assert one.stdout.count("== ") == 2, one.stdout   # its controller and its agent
    bad = _cli("logs", "no-such-node")
    assert bad.returncode == 1 and "no node 'no-such-node'" in bad.stderr


def test_controllers_of_the_control_mode(lab):
    """node: every node runs its own controller in its namespace, serving only it,
    connected to br-int's management socket (no controller target, no port open);
    central: one in the ctl namespace."""
    the_lab, plan = lab
    ctls = the_lab.controllers(plan)
    status = the_lab.status()
    assert status["control"] == the_lab.control
    if the_lab.control == "central":
        [ctl] = ctls
        assert ctl.node is None and ctl.ns == plan.ctl_ns
        return
    assert [c.node for c in ctls] == [n.name for n in plan.nodes]
    for n in plan.nodes:
        ctl = the_lab.controller(n.name)
        pid = ctl.pid()
        assert pid and ctl.ns == n.ns and the_lab.controller_pid(n.name) == pid
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{n.ns}").st_ino
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"--vnet64-node") + 1] == n.name.encode()
        mgmt = f"{n.run_dir}/br-int.mgmt"
        assert cmdline[cmdline.index(b"--vnet64-switch") + 1] == f"unix:{mgmt}".encode()
        assert b"--ofp-listen-host" not in cmdline
        listening = sh.in_ns(n.ns, ["ss", "-Htln", "sport = :6653"]).stdout
        assert listening.strip() == "", listening       # nothing to reach it on
        info = next(i for i in status["nodes"] if i["name"] == n.name)
        assert info["controller"] == pid
        assert info["bridges"]["br-int"]["controllers"] == []
        # it connected to br-int's management socket, and br-int is its switch
        log = sh.wait_for(lambda ctl=ctl, mgmt=mgmt: (t := ctl.log.read_text()) and
                          f"] connected from unix:{mgmt} " in t and t, 15,
                          f"{n.name}'s controller connected to its br-int")
        assert f"connected to the switch at unix:{mgmt}" in log, log[-2000:]
        # the controller serves its own node only (its log names no other node's switch)
        sh.wait_for(lambda ctl=ctl, n=n: f" is {n.name} (" in ctl.log.read_text(), 15,
                    f"{n.name}'s controller to program its switch")
        log = ctl.log.read_text()
        others = [o.name for o in plan.nodes if o.name != n.name]
        assert not any(f" is {o} (" in log for o in others), log[-2000:]
    with pytest.raises(Exception, match="controller per node: name the node"):
        the_lab.controller()


def test_cli_capture(lab):
    _, plan = lab
    n = plan.nodes[0]
    other = plan.nodes[1]
    proc = subprocess.Popen([*LAB_CLI, "--prefix", TEST_PREFIX, "--run-dir", TEST_RUN_DIR,
                             "capture", n.name, "br-phy", "-c", "1", "icmp[icmptype] = icmp-echo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def captured() -> bool:
            sh.in_ns(other.ns, ["ping", "-c", "1", "-W", "1", str(n.underlay_ip.ip)], check=False)
            return proc.poll() is not None
        sh.wait_for(captured, 10, "vnet64-lab capture to see a ping")
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(5)
    assert f"{other.underlay_ip.ip} > {n.underlay_ip.ip}: ICMP echo request" in out, out

