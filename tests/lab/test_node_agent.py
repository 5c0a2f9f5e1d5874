"""The node agent, vnet64-node, as hosts run it (issue 16), checked with packets at the VMs.

The lab already runs one agent per node; here (prefix ``v64g-``):

- a VM attached the libvirt way after ``up`` - a port named ``vnet7`` carrying only
  ``iface-id`` and ``attached-mac`` - gets the service's TCP, UDP and ping;
- a port with the wrong ``attached-mac`` is refused and logged, and nothing is wired;
- a VNet added to the NB after ``up`` has its conntrack zone's timeout policy on the
  hosts within a second (the time is printed);
- ``kill -9`` of host1's agent and a restart while a TCP connection runs: the
  connection goes on, and nothing was re-created (TAYGA, bridges, ports, bindings);
- TAYGA killed: the agent starts it again and the translated path answers;
- bad input: a node name not in the NB, a datapath id another bridge uses, an underlay
  IP not on the host - each an error with exit status 2 and nothing made; an NB that
  does not answer yet - the agent retries and brings the node up once it does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from vnet64 import gateway, topology
from vnet64.nb import api as nbapi
from vnet64.nb.server import NbServer
from vnet64_lab import sh
from vnet64_lab.ovs import OvsNode
from vnet64_lab.traffic import (A6, ECHO_SERVER, PLATFORM_IP, TCP_PORT, UDP_PORT, LineSession,
                                answer, client, ovs_node, ping, running_platform, wait_for)

from .conftest import ROOT, need_lab, new_lab

pytestmark = pytest.mark.lab

AGENT = str(Path(sys.executable).with_name("vnet64-node"))


@pytest.fixture(scope="module")
def platform():
    need_lab()
    with running_platform(new_lab("g"), ROOT / "topologies" / "two-tenants.yaml") as up:
        yield up


@pytest.fixture(scope="module")
def nb(platform):
    _, plan = platform
    api = nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock")
    yield api
    api.close()


def agent_status(lab, node: str) -> dict:
    try:
        return json.loads((lab.agent_dir(node) / "status.json").read_text())
    except (OSError, ValueError):     # being replaced
        return {}


def agent_log(lab, node: str) -> str:
    return (lab.agent_dir(node) / "agent.log").read_text()


def vsctl(plan, node: str, *args: str) -> str:
    n = ovs_node(plan, node)
    return sh.run([sh.tool("ovs-vsctl"), f"--db={n.remote}", *args]).stdout


def libvirt_attach(plan, host: str, ns: str, port: str, iface_id: str, mac: str, mtu: int) -> None:
    """What libvirt does for <interface type='bridge'><virtualport type='openvswitch'>
    <parameters interfaceid='IFACE_ID'/>: a tap (here a veth into the VM's namespace)
    named by the hypervisor, added to br-int with iface-id and attached-mac only."""
    host_ns = ovs_node(plan, host).ns
    sh.ip_batch(host_ns, [f"link add {port} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {ns}",
                          f"link set {port} up"])
    vsctl(plan, host, "add-port", "br-int", port, "--", "set", "Interface", port,
          f"external_ids:iface-id={iface_id}", f"external_ids:attached-mac={mac}")


# ---------------------------------------------------------------------------


def test_a_vm_attached_the_libvirt_way_gets_tcp_udp_and_ping(platform, nb):
    lab, plan = platform
    vm = nb.add_vm("c-vm1", "customer-a", IPv4Address("10.0.0.5"), "host1")
    address = nb.subscribe("c-vm1", "analytics")["ipv6"]
    subnet = next(s for s in plan.topology.vnet("customer-a").subnets if s.name == vm["subnet"])
    ns = f"{plan.prefix}vm-c-vm1"             # under the lab's prefix: `down` removes it
    sh.run([sh.tool("ip"), "netns", "add", ns])
    server = None
    try:
        libvirt_attach(plan, "host1", ns, "vnet7", "c-vm1", vm["mac"], plan.settings.vm_mtu)
        sh.ip_batch(ns, ["link set lo up", f"link set eth0 address {vm['mac']}",
                         f"addr add 10.0.0.5/{subnet.cidr.prefixlen} dev eth0", "link set eth0 up",
                         f"route add default via {gateway.vm_gateway(subnet.cidr)} dev eth0"])
        sh.in_ns(ns, [sh.tool("ethtool"), "-K", "eth0", "tx", "off"])
        server = subprocess.Popen([sh.tool("ip"), "netns", "exec", ns, sys.executable, "-c",
                                   ECHO_SERVER, "c-vm1"], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        bound = wait_for(lambda: next((b for b in nb.list_bindings("host1")
                                       if b["logical_port"] == "c-vm1"), None), 10)
        assert bound and bound["port"] == "vnet7", nb.list_bindings()
        assert "bound vm c-vm1 to port vnet7" in agent_log(lab, "host1")
        # the agent's NB replica holds the rows of host1's ports, not the platform's
        on_host1 = [v for v in nb.list("vm") if v["host"] == "host1"]    # each has its port
        status = wait_for(lambda: (s := agent_status(lab, "host1")).get("nb_rows", {}).get("VM")
                          == len(on_host1) and s, 10)
        assert status, agent_status(lab, "host1")
        assert nb.count("Subscription") > 0 and nb.count("Endpoint") > 0   # in the NB, not for it
        assert status["nb_rows"]["Subscription"] == 0
        assert status["nb_rows"]["Endpoint"] == 0

        assert wait_for(lambda: "error" not in client(plan, "tcp", address, TCP_PORT, "hi"), 10)
        name, seen, _, payload = answer(client(plan, "tcp", address, TCP_PORT, "to-c-vm1"))
        assert (name, seen, payload) == ("c-vm1", PLATFORM_IP, "to-c-vm1")
        name, seen, _, payload = answer(client(plan, "udp", address, UDP_PORT, "udp-c-vm1"))
        assert (name, seen, payload) == ("c-vm1", PLATFORM_IP, "udp-c-vm1")
        assert ping(plan, address) == (3, 3)
    finally:
        if server is not None:
            server.kill()      # our own child, by its pid
            server.wait(5)
        vsctl(plan, "host1", "--if-exists", "del-port", "br-int", "vnet7")
        sh.run([sh.tool("ip"), "netns", "del", ns], check=False)
        nb.unsubscribe("c-vm1", "analytics", if_exists=True)
    assert wait_for(lambda: all(b["logical_port"] != "c-vm1" for b in nb.list_bindings()), 10), \
        "the binding stayed after the port went"


def test_a_wrong_attached_mac_is_refused_and_logged(platform, nb):
    lab, plan = platform
    ns = f"{plan.prefix}vm-spoof"
    sh.run([sh.tool("ip"), "netns", "add", ns])
    before = {b["logical_port"]: b for b in nb.list_bindings()}
    try:
        libvirt_attach(plan, "host1", ns, "vnet8", "b-vm1", "02:00:de:ad:be:ef", 1400)
        assert wait_for(lambda: "port vnet8 not wired: attached-mac 02:00:de:ad:be:ef is not "
                                "b-vm1's MAC" in agent_log(lab, "host1"), 5), \
            agent_log(lab, "host1")[-2000:]
        assert {b["logical_port"]: b for b in nb.list_bindings()} == before
        name, seen, _, _ = answer(client(plan, "tcp", A6, TCP_PORT, "still-a"))
        assert (name, seen) == ("a-vm1", PLATFORM_IP)
    finally:
        vsctl(plan, "host1", "--if-exists", "del-port", "br-int", "vnet8")
        sh.run([sh.tool("ip"), "netns", "del", ns], check=False)


def ct_zones(plan, node: str) -> dict[int, dict]:
    """The node's conntrack zones with their timeout policy (netdev datapath)."""
    out = vsctl(plan, node, "--format=json", "--columns=datapaths", "list", "Open_vSwitch")
    if "netdev" not in out:
        return {}
    zones = json.loads(vsctl(plan, node, "--format=json", "list", "CT_Zone"))
    policies = json.loads(vsctl(plan, node, "--format=json", "list", "CT_Timeout_Policy"))
    dp = json.loads(vsctl(plan, node, "--format=json", "list", "Datapath"))
    heads = {h: i for i, h in enumerate(dp["headings"])}
    zmap = dp["data"][0][heads["ct_zones"]][1]                  # [[zone, ["uuid", u]], ...]
    zhead = {h: i for i, h in enumerate(zones["headings"])}
    phead = {h: i for i, h in enumerate(policies["headings"])}
    policy_of = {row[zhead["_uuid"]][1]: row[zhead["timeout_policy"]] for row in zones["data"]}
    timeouts = {row[phead["_uuid"]][1]: dict(row[phead["timeouts"]][1]) for row in policies["data"]}
    result = {}
    for zone, (_, uuid) in zmap:
        tp = policy_of.get(uuid)
        result[zone] = timeouts.get(tp[1]) if tp and tp[0] == "uuid" else None
    return result


def test_a_vnet_added_after_up_gets_its_timeout_policy_within_a_second(platform, nb):
    _, plan = platform
    vnet = topology.VNet(name="customer-z", region=plan.topology.platform.region, vnet_id=0x77,
                         cidrs=(IPv4Network("10.9.0.0/16"),),
                         subnets=(topology.Subnet("default", 0x1, IPv4Network("10.9.0.0/24")),))
    t0 = time.monotonic()
    nb.add_vnet(vnet)
    zone = nb.vnet_info("customer-z")["ct_zone"]
    seen = wait_for(lambda: ct_zones(plan, "host1").get(zone), 10, interval=0.02)
    elapsed = time.monotonic() - t0
    print(f"\nzone {zone} of a new VNet had its timeout policy on host1 {elapsed * 1000:.0f} ms "
          f"after the NB write")
    assert seen == {"tcp_time_wait": 62, "tcp_close": 62}, ct_zones(plan, "host1")
    assert wait_for(lambda: ct_zones(plan, "host2").get(zone), 10), \
        "every host serves every VNet's zone"
    row = next(r for r in nb.tables["VNet"].rows.values() if r.name == "customer-z")
    subnets = [r.uuid for r in nb.tables["Subnet"].rows.values() if r.vnet.uuid == row.uuid]
    nb.run(*[nb.db_destroy("Subnet", u) for u in subnets], nb.db_destroy("VNet", row.uuid))
    assert wait_for(lambda: zone not in ct_zones(plan, "host1"), 10), "the zone stayed"


def snapshot(plan, lab) -> dict:
    """What a restarted agent must not re-create: TAYGA's pid, bridge/port/interface
    rows, the translator veth's ifindex, the NB bindings of host1."""
    ovs = ovs_node(plan, "host1")
    rows = {t: sorted(json.loads(vsctl(plan, "host1", "--format=json", "--columns=_uuid,name",
                                       "list", t))["data"]) for t in ("Bridge", "Port", "Interface")}
    link = json.loads(sh.ip(ovs.ns, "-j", "link", "show", "dev", "xlat0").stdout)[0]
    return {"tayga": sh.read_pid(Path(plan.translator("host1").run_dir) / "tayga.pid"),
            "rows": rows, "xlat0": link["ifindex"],
            "bindings": nbapi_bindings(plan)}


def nbapi_bindings(plan) -> list:
    api = nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock")
    try:
        return sorted(json.dumps(b, sort_keys=True) for b in api.list_bindings("host1"))
    finally:
        api.close()


def test_kill_9_and_restart_of_the_agent_disturbs_nothing(platform):
    lab, plan = platform
    session = LineSession(plan, A6)
    try:
        first = answer(session.send("before"))
        before = snapshot(plan, lab)
        pid = lab.agent_pid("host1")
        os.kill(pid, 9)                      # the agent we started, by its pidfile
        assert wait_for(lambda: not sh.proc_alive(pid), 5)
        mid = answer(session.send("agent-dead"))
        new_pid = lab.restart_agent("host1")
        assert new_pid != pid
        after_restart = answer(session.send("agent-back"))
        assert [x[0] for x in (first, mid, after_restart)] == ["a-vm1"] * 3
        assert first[2] == mid[2] == after_restart[2], "the connection was re-NATed"
        assert snapshot(plan, lab) == before, "the restarted agent re-created something"
        log = agent_log(lab, "host1")
        restart = log[log.rindex("bringing it up"):]         # what the new agent did
        assert "node host1 is up" in restart, restart
        for changed in ("translator:", "TAYGA running", "bound ", "moved", "conntrack"):
            assert changed not in restart, f"the restarted agent changed something:\n{restart}"
        assert "Traceback" not in agent_log(lab, "host1")
    finally:
        session.close()


def test_a_dead_tayga_is_restarted_by_the_agent(platform):
    """TAYGA is supervised: killed, it is started again (an ERROR line says so) and the
    translated path answers again."""
    lab, plan = platform
    pidfile = Path(plan.translator("host1").run_dir) / "tayga.pid"
    old = sh.read_pid(pidfile)
    assert old and sh.proc_alive(old, "tayga")
    os.kill(old, 9)                          # the TAYGA the agent started, by its pidfile
    new = wait_for(lambda: (p := sh.read_pid(pidfile)) and p != old and sh.proc_alive(p, "tayga")
                   and p, 10)
    assert new, "TAYGA was not restarted"
    assert "TAYGA is not running" in agent_log(lab, "host1")
    assert wait_for(lambda: "error" not in client(plan, "tcp", A6, TCP_PORT, "again"), 10)
    name, seen, _, payload = answer(client(plan, "tcp", A6, TCP_PORT, "after-tayga"))
    assert (name, seen, payload) == ("a-vm1", PLATFORM_IP, "after-tayga")


# ---------------------------------------------------------------------------
# bad input, on an Open vSwitch of its own (prefix v64h-)


@pytest.fixture
def scratch(platform, tmp_path):
    """A bare host: a namespace with ovsdb-server + ovs-vswitchd and an uplink, no agent."""
    _, plan = platform
    ns = "v64h-host"
    sh.run([sh.tool("ip"), "netns", "del", ns], check=False)
    sh.run([sh.tool("ip"), "netns", "add", ns])
    node = OvsNode("scratch", ns, tmp_path / "ovs")
    try:
        sh.ip_batch(ns, ["link set lo up", "link add ul0 type veth peer name ul0-peer",
                         "addr add 192.168.99.11/24 dev ul0", "link set ul0 up",
                         "link set ul0-peer up"])
        node.start()
        yield ns, node, plan
    finally:
        node.stop()
        sh.run([sh.tool("ip"), "netns", "del", ns], check=False)


def run_agent(ns: str, node: OvsNode, nb: str, name: str, run_dir: Path, *extra: str,
              timeout: float = 30) -> subprocess.CompletedProcess:
    return sh.run([sh.tool("nsenter"), f"--net=/run/netns/{ns}", "--", AGENT, "--nb", nb,
                   "--name", name, "--datapath", "netdev", "--uplink", "ul0", "--ovs", node.remote,
                   "--run-dir", str(run_dir), "--translator-netns", "v64h-xl", "--once", *extra],
                  check=False, timeout=timeout)


def bridges(node: OvsNode) -> list[str]:
    return sorted(sh.run([sh.tool("ovs-vsctl"), f"--db={node.remote}", "list-br"]).stdout.split())


def test_bad_input_is_refused_and_nothing_is_made(scratch, nb, tmp_path):
    ns, node, plan = scratch
    remote = f"unix:{plan.nb_run_dir}/nb.sock"
    # a node name not in the NB
    proc = run_agent(ns, node, remote, "nosuch", tmp_path / "a")
    assert proc.returncode == 2 and "node 'nosuch' is not in the NB" in proc.stderr, proc.stderr
    assert bridges(node) == [] and "v64h-xl" not in sh.netns_list()
    # an underlay IP not on this host (host1's is 192.168.64.11; this one has .99.11)
    proc = run_agent(ns, node, remote, "host1", tmp_path / "b")
    assert proc.returncode == 2 and "underlay IP 192.168.64.11 is not on this host's uplink ul0" \
        in proc.stderr, proc.stderr
    assert bridges(node) == [] and "v64h-xl" not in sh.netns_list()
    # a datapath id another bridge here uses
    dpid = f"{plan.node('host1').datapath_id:016x}"
    sh.run([sh.tool("ovs-vsctl"), f"--db={node.remote}", "add-br", "br-other", "--", "set",
            "Bridge", "br-other", "datapath_type=netdev", f"other_config:datapath-id={dpid}"])
    sh.ip(ns, "addr", "add", "192.168.64.11/24", "dev", "ul0")
    proc = run_agent(ns, node, remote, "host1", tmp_path / "c")
    assert proc.returncode == 2 and f"datapath id {dpid} is already used by bridge br-other" \
        in proc.stderr, proc.stderr
    assert bridges(node) == ["br-other"] and "v64h-xl" not in sh.netns_list()


def test_an_nb_that_does_not_answer_yet_is_waited_for(scratch, tmp_path):
    """The agent starts before its NB: it logs, retries with backoff, and brings the node
    up once the NB answers (an NB of its own here, holding an appliance node)."""
    ns, node, _ = scratch
    nb_dir = tmp_path / "nb"
    server = NbServer(nb_dir)
    log = tmp_path / "agent.log"
    proc = subprocess.Popen(
        [sh.tool("nsenter"), f"--net=/run/netns/{ns}", "--", AGENT, "--nb", server.remote,
         "--name", "app1", "--datapath", "netdev", "--uplink", "ul0", "--ovs", node.remote,
         "--run-dir", str(tmp_path / "run"), "--log-file", str(log), "--once"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: log.exists() and "retrying in" in log.read_text(), 10), \
            "the agent did not say it is waiting for the NB"
        server.start()
        api = nbapi.connect(server.remote)
        try:
            api.add_node(topology.Node("app1", "appliance", IPv4Address("192.168.99.11"), 0x99))
        finally:
            api.close()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err, log.read_text())
        assert "node app1 is up" in log.read_text()
        assert bridges(node) == ["br-int", "br-phy"]
    finally:
        if proc.poll() is None:
            proc.kill()        # our own child, by its pid
            proc.wait(5)
        server.stop()
        shutil.rmtree(nb_dir, ignore_errors=True)


def test_cleanup_removes_what_the_agent_made_and_only_that(scratch, tmp_path):
    ns, node, plan = scratch
    nb_dir = tmp_path / "nb"
    server = NbServer(nb_dir)
    server.start()
    try:
        api = nbapi.connect(server.remote)
        try:
            api.add_node(topology.Node("app2", "appliance", IPv4Address("192.168.99.11"), 0x98))
        finally:
            api.close()
        sh.run([sh.tool("ovs-vsctl"), f"--db={node.remote}", "add-br", "br-mine", "--", "set",
                "Bridge", "br-mine", "datapath_type=netdev"])
        vsctl_root = [sh.tool("ovs-vsctl"), f"--db={node.remote}"]
        sh.run([*vsctl_root, "set", "Open_vSwitch", ".", "external_ids:system-id=chassis-7"])
        run_dir = tmp_path / "run"
        proc = run_agent(ns, node, server.remote, "app2", run_dir)
        assert proc.returncode == 0, proc.stderr
        assert bridges(node) == ["br-int", "br-mine", "br-phy"]
        assert "192.168.99.11/24" in sh.ip(ns, "-4", "addr", "show", "dev", "br-phy").stdout
        ids = sh.run([*vsctl_root, "get", "Open_vSwitch", ".", "external_ids"]).stdout
        assert "system-id=chassis-7" in ids and "vnet64-role=appliance" in ids, \
            "the agent overwrote an operator's system-id"
        proc = run_agent(ns, node, server.remote, "app2", run_dir)     # again: idempotent
        assert proc.returncode == 0, proc.stderr
        proc = sh.run([sh.tool("nsenter"), f"--net=/run/netns/{ns}", "--", AGENT, "cleanup",
                       "--name", "app2", "--nb", server.remote, "--ovs", node.remote,
                       "--datapath", "netdev", "--run-dir", str(run_dir)], check=False)
        assert proc.returncode == 0, proc.stderr
        assert "removed bridge br-int" in proc.stdout and "removed bridge br-phy" in proc.stdout
        assert bridges(node) == ["br-mine"], "cleanup removed a bridge it did not make"
        assert "192.168.99.11/24" in sh.ip(ns, "-4", "addr", "show", "dev", "ul0").stdout
        ids = sh.run([*vsctl_root, "get", "Open_vSwitch", ".", "external_ids"]).stdout
        assert "system-id=chassis-7" in ids and "vnet64-role" not in ids and "hostname" not in ids, ids
        other = sh.run([*vsctl_root, "get", "Open_vSwitch", ".", "other_config"]).stdout
        assert "userspace-tso-enable" not in other, other
    finally:
        server.stop()
