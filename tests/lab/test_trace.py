"""``vnet64-lab trace`` (issue 20, item 1) on a running lab: the walk it simulates from the
flows read back from the switches matches, hop by hop, the packets a real exchange puts
on the fabric and on the VM's link; and forged packets end on the flow that names their
drop."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from vnet64_lab.traffic import A6, PLATFORM_IP, SVC1, UDP_PORT, running_platform

from tests.lab.conftest import ROOT, need_lab, new_lab
from tests.lab.traffic import Pcap, carrying, decap, norm, udp_many, vif


@pytest.fixture(scope="module")
def platform():
    need_lab()
    with running_platform(new_lab("t"), ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        yield lab, plan


def run_trace(lab, *args: str) -> dict:
    env = dict(os.environ, VNET64_LAB_PREFIX=lab.prefix, VNET64_LAB_RUN_DIR=str(lab.run_dir))
    proc = subprocess.run([sys.executable, "-m", "vnet64_lab.cli", "trace", *args, "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert not out["not_simulated"], out["not_simulated"]    # every installed flow was loaded
    return out


def underlay(plan, node: str) -> str:
    return str(plan.node(node).underlay_ip.ip)


def forget_direct(plan) -> None:
    """host2 forgets what answers taught it (the direct path's learnt entries), and its
    datapath with it: svc1's next packet to a VM goes through the appliance."""
    from vnet64.controller.pipeline import HOST_TABLES
    from vnet64_lab.ovs import OvsNode
    n = plan.node("host2")
    ovs = OvsNode(n.name, n.ns, n.run_dir)
    ovs.ofctl("-O", "OpenFlow15", "del-flows", "br-int", f"table={HOST_TABLES.id('direct')}")
    ovs.appctl("revalidator/wait")


def captured(plan, tmp_path, marker: str) -> tuple[int, set, set, set]:
    """One datagram svc1 -> a-vm1 carrying ``marker``, captured on the fabric legs of host2,
    the appliance and host1 and on a-vm1's link: (svc1's port, the Geneve packets as
    (outer src, outer dst, inner src, inner dst, sport, dport), the fabric legs that saw
    it, what a-vm1 got and sent)."""
    legs = ("host2", "appliance", "host1")
    fabric = [Pcap(plan.fabric_ns, plan.node(n).fabric_if, tmp_path) for n in legs]
    at_vm = Pcap(vif(plan, "a-vm1").ns, "eth0", tmp_path)
    try:
        sent = udp_many(plan, "svc1", [A6], marker, port=UDP_PORT)
        assert sent["replies"], "svc1 got no answer from a-vm1"
        for cap in (*fabric, at_vm):
            cap.wait(lambda p: len(carrying(p, marker)) >= 2, 3)
    finally:
        for cap in (*fabric, at_vm):
            cap.stop()
    geneve = [decap(p) for cap in fabric for p in carrying(cap.packets(), marker)]
    real = {(str(o.src), str(o.dst), norm(i[IPv6].src), norm(i[IPv6].dst), i[UDP].sport, i[UDP].dport)
            for o, _, i in geneve if o is not None}
    seen_on = {n for n, cap in zip(legs, fabric) if carrying(cap.packets(), marker)}
    vm = {(p[IP].src, p[IP].dst, p[UDP].dport if p[IP].dst == "10.0.0.4" else p[UDP].sport)
          for p in carrying(at_vm.packets(), marker) if p.haslayer(IP)}
    return sent["local"], real, seen_on, vm


def test_the_trace_matches_a_real_exchange_hop_by_hop(platform, tmp_path):
    """A pair's first packet, through the appliance (the patent's path): host2 has learnt
    nothing before it, and the trace walks the flows as they were then (its answer's
    lesson forgotten again)."""
    lab, plan = platform
    forget_direct(plan)
    sport, real, _, vm = captured(plan, tmp_path, "trace-me")
    forget_direct(plan)
    hops = run_trace(lab, "svc1", "a-vm1", "udp", str(UDP_PORT), "--sport", str(sport), "--reply")["hops"]
    by_no = {h["patent"]: h for h in hops if h["patent"]}
    assert list(by_no) == ["216", "234", "248", "262", "(258)"], [h["patent"] for h in hops]
    h2, ap, h1 = underlay(plan, "host2"), underlay(plan, "appliance"), underlay(plan, "host1")
    for no, outer, inner in (("216", (h2, ap), (SVC1, A6, sport, UDP_PORT)),
                             ("234", (ap, h1), (SVC1, A6, sport, UDP_PORT)),
                             ("262", (h1, h2), (A6, SVC1, UDP_PORT, sport))):
        s = by_no[no]["sent"]
        simulated = (s["tun_ipv4_src"], s["tun_ipv4_dst"], norm(s["ipv6_src"]), norm(s["ipv6_dst"]),
                     s["udp_src"], s["udp_dst"])
        assert simulated == (*outer, *inner), (no, simulated)
        assert simulated in real, (no, simulated, real)         # on the fabric, as simulated
    s = by_no["248"]["sent"]
    assert (s["ipv4_src"], s["ipv4_dst"], s["udp_dst"]) in vm, (s, vm)     # what a-vm1 got
    assert s["ipv4_src"] == PLATFORM_IP
    answer = next(h for h in hops if h["received"] == "253")["packet"]
    assert (answer["ipv4_src"], answer["ipv4_dst"], answer["udp_src"]) in vm, (answer, vm)
    delivered = by_no["(258)"]
    assert delivered["outcome"] == "delivered" and "endpoint svc1" in delivered["detail"]
    # each hop names the owners of its flows from their cookies
    owners = [s["owner"] for h in hops for s in h["steps"]]
    assert "pair 1: svc1 -> a-vm1" in owners or any(o.endswith(": svc1 -> a-vm1") for o in owners), owners
    assert f"route {A6} -> host1" in owners


def test_the_trace_of_a_later_packet_goes_direct_as_the_real_one_does(platform, tmp_path):
    """Once an answer has taught host2 the direct path, svc1's packet goes host2 -> host1:
    so on the fabric (the appliance's leg sees nothing of it), and so in the trace, whose
    first hop names the learnt entry."""
    lab, plan = platform
    assert udp_many(plan, "svc1", [A6], "teach", port=UDP_PORT)["replies"]
    from vnet64_lab.ovs import OvsNode
    n = plan.node("host2")
    OvsNode(n.name, n.ns, n.run_dir).appctl("revalidator/wait")
    sport, real, seen_on, _ = captured(plan, tmp_path, "direct-me")
    h2, h1 = underlay(plan, "host2"), underlay(plan, "host1")
    assert seen_on == {"host2", "host1"}, seen_on
    hops = run_trace(lab, "svc1", "a-vm1", "udp", str(UDP_PORT), "--sport", str(sport), "--reply")["hops"]
    assert [(h["node"], h["outcome"]) for h in hops] == [
        ("host2", "tunnel"), ("host1", "translator"), ("host1", "delivered"),
        ("host1", "translator"), ("host1", "tunnel"), ("host2", "delivered")], hops
    assert [h["patent"] for h in hops] == [None, None, "248", None, "262", "(258)"]
    for hop, outer, inner in ((hops[0], (h2, h1), (SVC1, A6, sport, UDP_PORT)),
                              (hops[4], (h1, h2), (A6, SVC1, UDP_PORT, sport))):
        s = hop["sent"]
        simulated = (s["tun_ipv4_src"], s["tun_ipv4_dst"], norm(s["ipv6_src"]), norm(s["ipv6_dst"]),
                     s["udp_src"], s["udp_dst"])
        assert simulated == (*outer, *inner) and simulated in real, (simulated, real)
    assert any(st["stage"] == "direct" and st["owner"].startswith("learned") for st in hops[0]["steps"])


@pytest.mark.parametrize("args, node, reason", [
    (("svc1", "fd41::3930:99:6600:a00:4", "udp", "7"), "appliance", "unknown_destination"),
    (("svc1", "a-vm1", "udp", "7", "--src-addr", "fd00:5e:1::99"), "host2", "spoofed_source"),
    (("a-vm1", "platform", "udp", "7"), "host1", "vm_initiated"),
    (("a-vm1", "10.0.0.5", "udp", "7"), "host1", "vm_not_to_platform"),
], ids=["unknown-vnet", "spoofed-source", "vm-initiated", "vm-to-its-subnet"])
def test_forged_packets_end_on_their_named_drop(platform, args, node, reason):
    lab, _ = platform
    last = run_trace(lab, *args)["hops"][-1]
    assert (last["node"], last["outcome"], last["reason"]) == (node, "dropped", reason), last
    assert last["steps"][-1]["owner"].startswith(f"drop: {reason}")
    assert "actions=drop" in last["steps"][-1]["flow"]          # the dump's own line


def test_bad_input_is_refused(platform):
    lab, _ = platform
    env = dict(os.environ, VNET64_LAB_PREFIX=lab.prefix, VNET64_LAB_RUN_DIR=str(lab.run_dir))
    proc = subprocess.run([sys.executable, "-m", "vnet64_lab.cli", "trace", "nobody", "a-vm1"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "no service endpoint or VM called 'nobody'" in proc.stderr


def test_vnet64_trace_from_node_dumps_says_the_same(platform, tmp_path):
    """The real-host way: each node's ``ovs-ofctl show`` + ``dump-flows`` in a file, the
    names from the NB (``vnet64 trace --dumps``): the same walk as the lab's own."""
    from vnet64_lab.ovs import OvsNode
    lab, plan = platform
    for n in plan.nodes:
        ovs = OvsNode(n.name, n.ns, n.run_dir)
        (tmp_path / f"{n.name}.txt").write_text(
            ovs.ofctl("-O", "OpenFlow15", "show", "br-int")
            + ovs.ofctl("-O", "OpenFlow15", "--no-names", "dump-flows", "br-int"))
    args = ("svc1", "a-vm1", "udp", str(UDP_PORT), "--sport", "45000", "--reply")
    proc = subprocess.run([sys.executable, "-m", "vnet64.cli", "--nb", f"unix:{plan.nb_run_dir}/nb.sock",
                           "trace", "--dumps", str(tmp_path), *args, "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    mine = json.loads(proc.stdout)["hops"]
    labs = run_trace(lab, *args)["hops"]
    assert [(h["node"], h["outcome"], h["patent"]) for h in mine] == \
        [(h["node"], h["outcome"], h["patent"]) for h in labs]
    assert mine[-1]["outcome"] == "delivered"
    (tmp_path / "host1.txt").unlink()       # without host1's flows the walk stops on its way there
    proc = subprocess.run([sys.executable, "-m", "vnet64.cli", "--nb", f"unix:{plan.nb_run_dir}/nb.sock",
                           "trace", "--dumps", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "no flows of host1 were given" in proc.stdout, proc.stdout + proc.stderr


def test_ovs_own_trace_takes_the_same_stages_where_no_nat_is_involved(platform):
    """``--ovs``: each node's ofproto/trace of the hop's packet, with the simulation's
    conntrack answers as --ct-next. Where conntrack NATs nothing - svc1's host, the
    appliance, a forged packet's drop - OVS and the simulation go through the same
    (table, priority) stages; the hop says so."""
    lab, _ = platform
    hops = run_trace(lab, "svc1", "fd41::3930:99:6600:a00:4", "udp", "7", "--ovs")["hops"]
    assert [h["node"] for h in hops] == ["host2", "appliance"]
    for h in hops:
        assert h["ovs"]["agrees"], h["ovs"]
        assert h["ovs"]["steps"] == [[s["stage"], s["priority"]] for s in h["steps"]]
    assert hops[-1]["ovs"]["datapath_actions"] == ["drop"]
    vm = run_trace(lab, "a-vm1", "10.0.0.5", "udp", "7", "--ovs")["hops"]
    assert vm[-1]["reason"] == "vm_not_to_platform" and vm[-1]["ovs"]["agrees"], vm[-1]["ovs"]


def test_vnet64_trace_refuses_bad_input(platform, tmp_path):
    from vnet64_lab.ovs import OvsNode
    _, plan = platform
    nb = f"unix:{plan.nb_run_dir}/nb.sock"
    empty, dumps = tmp_path / "empty", tmp_path / "dumps"
    empty.mkdir()
    dumps.mkdir()
    n = plan.node("host2")
    ovs = OvsNode(n.name, n.ns, n.run_dir)
    (dumps / "host2.txt").write_text(ovs.ofctl("-O", "OpenFlow15", "show", "br-int")
                                     + ovs.ofctl("-O", "OpenFlow15", "--names", "dump-flows", "br-int"))
    for args, error in ((("--dumps", str(empty), "svc1", "a-vm1"), "no <node>.txt of any NB node"),
                        (("--dumps", str(dumps), "nobody", "a-vm1"), "no service endpoint or VM called 'nobody'"),
                        (("--dumps", str(dumps), "svc1", "a-vm1", "sctp"), None)):
        proc = subprocess.run([sys.executable, "-m", "vnet64.cli", "--nb", nb, "trace", *args],
                              capture_output=True, text=True, timeout=60, check=False)
        if error is None:       # argparse: not a protocol it knows
            assert proc.returncode == 2 and "invalid choice: 'sctp'" in proc.stderr, proc.stderr
            continue
        assert proc.returncode == 1 and f"vnet64: error: trace: {error}" in proc.stderr, proc.stderr
