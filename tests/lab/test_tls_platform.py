"""The whole platform over TLS (issue 18, item 3), in both control modes.

The default topology is brought up with ``Lab(tls=True)``: ``ovs-pki`` makes the lab's
PKI in ``<run>/pki``, the NB listens with ``pssl:`` only, every agent and controller
reaches it over ``ssl:`` with a certificate of its own; with a controller per node each
controller reaches its br-int over the management socket, with ``central`` control every
br-int connects to the controller over ``ssl:`` with its switch's certificate. One lab per
mode (a module-scoped parameter: one is taken down before the other comes up).

What each lab must show, on the real thing:

- svc1 reaches a-vm1 and b-vm1: a TCP payload arrives in each VM (captured on its veth)
  and comes back echoed by that VM, which saw Platform_IP;
- every agent and controller holds an established connection to the NB's one listener,
  and that listener is TLS: plain TCP gets no answer (and the NB logs the failed accept);
- an NB client with a certificate from another CA is refused: the CLI says why and exits
  1, the NB logs the refused handshake, and the NB holds exactly what it held before;
- central control: a real Open vSwitch claiming host1's datapath id, with a switch
  certificate from another CA, pointed at the controller's ``ssl:`` target, is refused:
  the controller logs the failed handshake with its address, the switch never connects
  and gets none of host1's flows (a trusted certificate would get them all), and the
  platform's own switches stay connected and keep forwarding. (With a controller per
  node no controller listens on any port: there is nothing to refuse.)
- central control: a real Open vSwitch with a certificate from the TRUSTED switch CA, but
  host2's (``switch-host2``), claiming host1's datapath id, is refused after the handshake:
  the controller logs a warning with its address, the certificate's CN and the node it
  claims, and closes the connection before any flow (every time it comes back); it has no
  flow, and host1's own switch keeps its connection (never "reconnected" nor
  "disconnected") and forwards meanwhile.
- ``restart_agent`` / ``restart_controller`` bring them back over TLS.

Everything is taken down at the end of each lab, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from vnet64.nb import api as nbapi
from vnet64.nb.server import SCHEMA_NAME, listening_ports
from vnet64_lab import Lab, sh
from vnet64_lab import plan as P
from vnet64_lab.ovs import OvsNode
from vnet64_lab.pki import Pki

from tests.lab.conftest import ROOT, need_lab
from tests.lab.traffic import (PLATFORM_IP, TCP_PORT, Pcap, answer, carrying, client,
                               controller_log_marks, controller_log_text, running_platform,
                               vif, wait_for)

pytestmark = pytest.mark.lab

TOPOLOGY = ROOT / "topologies" / "two-tenants.yaml"
VMS = ("a-vm1", "b-vm1")
VNET64 = Path(sys.executable).with_name("vnet64")
MODES = {"node": ("v64sn-", "/run/vnet64-lab-sn"), "central": ("v64sc-", "/run/vnet64-lab-sc")}


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Pki:
    """Another CA (ovs-pki's pair), with an NB client's and a switch's certificates."""
    pki = Pki.make(tmp_path_factory.mktemp("other-ca"))
    pki.issue_many([("intruder", "controller"), ("intruder-switch", "switch")])
    return pki


@pytest.fixture(scope="module", params=list(MODES))
def platform(request, tmp_path_factory):
    """(lab, plan, pcap dir) of the default topology over TLS in one control mode, the
    controllers programmed and echo servers in the VMs; down at the end however it ends."""
    need_lab()
    prefix, run_dir = MODES[request.param]
    with running_platform(Lab(prefix, run_dir, control=request.param, tls=True),
                          TOPOLOGY) as (lab, plan):
        yield lab, plan, tmp_path_factory.mktemp(f"pcaps-{request.param}")


def _in_ns(ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sh.tool("ip"), "netns", "exec", ns, *cmd], capture_output=True,
                          text=True, timeout=timeout, check=False)


def _vnet64(ns: str, *args: str) -> subprocess.CompletedProcess:
    """The ``vnet64`` CLI run inside a lab namespace."""
    command = [str(VNET64)] if VNET64.exists() else [sys.executable, "-m", "vnet64.cli"]
    return _in_ns(ns, *command, *args, timeout=60)


def _nb_dump(plan) -> dict:
    """Every NB table but Connection (whose status column the server keeps current), read
    through the unix socket: no TLS involved."""
    remote = f"unix:{plan.nb_run_dir}/nb.sock"
    tables = json.loads(Path(nbapi.__file__).with_name("vnet64_nb.ovsschema").read_text())["tables"]
    out = {}
    for table in sorted(set(tables) - {"Connection"}):
        proc = subprocess.run([sh.tool("ovsdb-client"), "--format=json", "dump", remote,
                               SCHEMA_NAME, table], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        out[table] = sorted(json.dumps(row, sort_keys=True) for row in json.loads(proc.stdout)["data"])
    return out


def _nb_log_mark(plan) -> int:
    return (Path(plan.nb_run_dir) / "nb.log").stat().st_size


def _nb_log_since(plan, mark: int) -> str:
    return (Path(plan.nb_run_dir) / "nb.log").read_bytes()[mark:].decode(errors="replace")


def test_svc1_reaches_both_vms_over_the_tls_platform(platform):
    lab, plan, pcaps = platform
    status = lab.status()
    assert status["up"] and not status["problems"], status["problems"]
    assert status["tls"] and Path(status["tls"]["pki"]) == lab.run_dir / "pki"
    api = nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock")
    try:
        subs = {s["vm"]: s["ipv6"] for s in api.list("subscription")}
    finally:
        api.close()
    for vm in VMS:
        v = vif(plan, vm)
        marker = f"tls-{lab.control}-{vm}"
        with Pcap(plan.node(v.host).ns, v.port, pcaps, bpf=f"tcp port {TCP_PORT}") as cap:
            out = client(plan, "tcp", subs[vm], TCP_PORT, marker)
            name, seen, _, payload = answer(out)
            assert (name, payload, seen) == (vm, marker, PLATFORM_IP), out
            got = cap.wait(lambda pkts, m=marker: len(carrying(pkts, m)) >= 2)
        # the payload went into the VM and its echo came out of it, on the VM's own veth
        assert len(carrying(got, marker)) >= 2, f"{vm}: the payload is not on {v.port}: {got}"


def test_agents_and_controllers_reach_the_nb_over_its_only_listener_which_is_tls(platform):
    lab, plan, _ = platform
    ctl_ip = str(plan.controller_ip.ip)
    api = nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock")
    try:
        assert [c["target"] for c in api.connections()] == [f"pssl:{P.NB_PORT}:{ctl_ip}"]
    finally:
        api.close()
    nb_pid = lab.nb_server(plan).pid()
    assert listening_ports(nb_pid) == {P.NB_PORT}, "the NB listens on more than its pssl: port"
    # every node's agent and controller (or the central controller) is connected to it
    proc = _in_ns(plan.ctl_ns, "ss", "-Htn", "state", "established", f"( sport = :{P.NB_PORT} )")
    peers = [line.split()[-1].rsplit(":", 1)[0] for line in proc.stdout.splitlines()]
    want = {str(n.management_ip.ip): 2 if lab.control == "node" else 1 for n in plan.nodes}
    if lab.control == "central":
        want[ctl_ip] = 1
    assert {ip: peers.count(ip) for ip in set(peers)} == want, proc.stdout
    # plain TCP to that port is no OVSDB: the client gives up, the server logs the accept
    mark = _nb_log_mark(plan)
    proc = _vnet64(plan.node("host1").ns, "--nb", plan.nb_tcp_remote, "--timeout", "3",
                   "node", "list")
    assert proc.returncode == 1 and "cannot reach the NB" in proc.stderr, proc
    host1 = f"ssl:{plan.node('host1').management_ip.ip}:"
    assert wait_for(lambda: f"{host1}" in _nb_log_since(plan, mark), 10), _nb_log_since(plan, mark)
    said = _nb_log_since(plan, mark)
    assert "SSL_accept" in said and "received JSON-RPC data on SSL channel" in said, said


def test_an_nb_client_with_a_certificate_from_another_ca_is_refused(platform, other_ca):
    lab, plan, _ = platform
    before = _nb_dump(plan)
    mark = _nb_log_mark(plan)
    # it trusts our CA (the NB's certificate is fine for it): only its own is wrong
    proc = _vnet64(plan.node("host1").ns, "--nb", plan.nb_ssl_remote, "--timeout", "3",
                   "--nb-private-key", str(other_ca.key("intruder")),
                   "--nb-certificate", str(other_ca.cert("intruder")),
                   "--nb-ca-cert", lab.pki.controller_ca,
                   "node", "add", "intruder", "--role", "host", "--underlay-ip", "192.168.64.99")
    assert proc.returncode == 1, proc
    assert "cannot reach the NB" in proc.stderr and "unknown ca" in proc.stderr and \
        "the server does not trust this client's certificate" in proc.stderr, proc.stderr
    peer = f"ssl:{plan.node('host1').management_ip.ip}:"     # the NB names who knocked
    assert wait_for(lambda: peer in _nb_log_since(plan, mark), 10), _nb_log_since(plan, mark)
    refused = _nb_log_since(plan, mark)
    assert "SSL_accept" in refused and "certificate verify failed" in refused, refused
    assert _nb_dump(plan) == before, "the NB changed"
    # our own certificates still work from the same place (the refusal was the certificate's)
    proc = _vnet64(plan.node("host1").ns, "--nb", plan.nb_ssl_remote, "--timeout", "5",
                   "--nb-private-key", lab.pki.key("agent-host1"),
                   "--nb-certificate", lab.pki.cert("agent-host1"),
                   "--nb-ca-cert", lab.pki.controller_ca, "node", "list")
    assert proc.returncode == 0 and "host1" in proc.stdout, proc


@contextlib.contextmanager
def rogue_switch(lab: Lab, plan, pki: Pki, name: str, datapath_id: int, tag: str = "rogue"):
    """A real Open vSwitch the platform does not know, in namespace ``<prefix><tag>-sw``
    on the management network, with a br-int of datapath id ``datapath_id`` pointed at
    the central controller's ssl: target and its SSL settings from ``pki`` (its
    certificate ``name``; it trusts our controller CA). Stopped and removed at the end
    (``Lab.down`` would too). One at a time (they share an address)."""
    ns = f"{lab.prefix}{tag}-sw"
    ip = plan.settings.management_cidr.broadcast_address - 1
    node = OvsNode(f"{tag}-sw", ns, lab.run_dir / f"{tag}-sw")
    sh.run([sh.tool("ip"), "netns", "add", ns])
    try:
        sh.ip_batch(ns, ["link set lo up",
                         f"link add {P.MGMT_IF} type veth peer name m-{tag} netns {plan.ctl_ns}",
                         f"addr add {ip}/{plan.settings.management_cidr.prefixlen} dev {P.MGMT_IF}",
                         f"link set {P.MGMT_IF} up"])
        sh.ip_batch(plan.ctl_ns, [f"link set m-{tag} master {P.MGMT_BRIDGE} up"])
        node.start()
        vsctl = [sh.tool("ovs-vsctl"), "--timeout=10"]
        sh.run([*vsctl, "set-ssl", str(pki.key(name)), str(pki.cert(name)),
                lab.pki.controller_ca], env=node.env())
        sh.run([*vsctl, "add-br", "br-int", "--", "set", "Bridge", "br-int",
                "datapath_type=netdev", "fail_mode=secure",
                f"other-config:datapath-id={datapath_id:016x}", "--", "set-controller", "br-int",
                plan.controller_ssl_target], env=node.env())
        yield node, str(ip)
    finally:
        node.stop()
        sh.run([sh.tool("ip"), "netns", "del", ns], check=False)


def test_a_switch_with_a_certificate_from_another_ca_is_refused(platform, other_ca):
    lab, plan, _ = platform
    if lab.control == "node":
        # each node's controller connects to its br-int's management socket: no
        # controller listens for OpenFlow anywhere, so no switch can reach one (the one port
        # it does listen on is its Prometheus metrics', HTTP)
        for ctl in lab.controllers(plan):
            ports = listening_ports(ctl.pid())
            assert ports <= {P.CONTROLLER_METRICS_PORT}, f"{ctl.name}'s controller listens on {ports}"
        return
    marks = controller_log_marks(lab)
    # it claims to be host1 (its datapath id): with a trusted certificate it would get
    # host1's flows
    host1 = next(n for n in plan.topology.nodes if n.name == "host1")
    with rogue_switch(lab, plan, other_ca, "intruder-switch", host1.datapath_id) as (rogue, ip):
        refused = f"TLS handshake with the switch at {ip} port"
        assert wait_for(lambda: refused in controller_log_text(lab, marks), 20), \
            controller_log_text(lab, marks)
        text = controller_log_text(lab, marks)
        line = next(li for li in text.splitlines() if refused in li)
        assert "WARNING" in line and "certificate verify failed" in line and \
            "its certificate is not signed by the CA of --ca-certs" in line, line
        assert f"TLS connection from the switch at {ip}" not in text, text
        # the switch never got an OpenFlow session, so not one of host1's flows
        connected = sh.run([sh.tool("ovs-vsctl"), "get", "Controller", "br-int", "is_connected"],
                           env=rogue.env()).stdout.strip()
        assert connected == "false"
        flows = rogue.ofctl("-O", "OpenFlow13", "dump-flows", "br-int")
        assert "actions=" not in flows, flows
    # the platform's own switches stayed connected over TLS and still forward
    for n in lab.status()["nodes"]:
        assert [(c["target"], c["connected"]) for c in n["bridges"]["br-int"]["controllers"]] == \
            [(plan.controller_ssl_target, True)], n["name"]
    text = controller_log_text(lab)
    for n in plan.nodes:
        assert f"TLS connection from the switch at {n.management_ip.ip} port" in text, n.name
    api = nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock")
    try:
        addr = next(s["ipv6"] for s in api.list("subscription") if s["vm"] == "a-vm1")
    finally:
        api.close()
    name, seen, _, payload = answer(client(plan, "tcp", addr, TCP_PORT, "after-the-rogue"))
    assert (name, seen, payload) == ("a-vm1", PLATFORM_IP, "after-the-rogue")


def test_a_switch_with_another_nodes_trusted_certificate_claiming_host1_is_refused(platform):
    lab, plan, _ = platform
    if lab.control == "node":
        return      # no controller listens (see the test above): each serves its own br-int
    host1 = next(n for n in plan.topology.nodes if n.name == "host1")
    host1_lines = f"[host1 {host1.datapath_id:016x}]"
    marks = controller_log_marks(lab)
    api = nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock")
    try:
        addr = next(s["ipv6"] for s in api.list("subscription") if s["vm"] == "a-vm1")
    finally:
        api.close()
    # host2's certificate, signed by the switch CA the controller trusts: the handshake
    # passes, and only the binding of certificate to node can refuse it
    with rogue_switch(lab, plan, lab.pki.pki, "switch-host2", host1.datapath_id,
                      tag="impostor") as (rogue, ip):
        refused = f"refused the switch at {ip}:"

        def refusals():
            return [li for li in controller_log_text(lab, marks).splitlines() if refused in li]
        # refused, and refused again when it comes back (its reconnection backoff: 1 s)
        assert wait_for(lambda: len(refusals()) >= 2, 20), controller_log_text(lab, marks)
        text = controller_log_text(lab, marks)
        assert f"TLS connection from the switch at {ip} port" in text, text
        line = refusals()[0]
        assert "WARNING" in line and f"{host1_lines} refused the switch at {ip}:" in line and \
            f"it claims node host1 (datapath id {host1.datapath_id:016x})" in line and \
            "its certificate (CN 'switch-host2 id:" in line and \
            "is host2's, not host1's (switch-host1); connection closed" in line, line
        # host1's own switch is served meanwhile, forwarding, its connection untouched
        name, seen, _, payload = answer(client(plan, "tcp", addr, TCP_PORT, "beside-the-impostor"))
        assert (name, seen, payload) == ("a-vm1", PLATFORM_IP, "beside-the-impostor")
        flows = rogue.ofctl("-O", "OpenFlow13", "dump-flows", "br-int")
        assert "actions=" not in flows, flows
    text = controller_log_text(lab, marks)
    host1_said = [li for li in text.splitlines() if host1_lines in li and refused not in li]
    assert not [li for li in host1_said if "reconnected" in li or "disconnected" in li or
                "connected from" in li], host1_said
    for n in lab.status()["nodes"]:
        assert [(c["target"], c["connected"]) for c in n["bridges"]["br-int"]["controllers"]] == \
            [(plan.controller_ssl_target, True)], n["name"]


def test_restarted_agents_and_controllers_keep_tls(platform):
    """``restart_agent`` / ``restart_controller`` run them as ``up`` did: over TLS again
    (the lab's state keeps the setting), and the platform serves a new pair after."""
    lab, plan, _ = platform
    agent_log = lab.agent_dir("host1") / "agent.log"
    agent_mark = agent_log.stat().st_size
    marks = controller_log_marks(lab)
    lab.restart_controller("host1")
    lab.restart_agent("host1")
    said = agent_log.read_bytes()[agent_mark:].decode(errors="replace")
    assert f"connected to the NB at {plan.nb_ssl_remote}" in said, said
    assert wait_for(lambda: f"NB connected: {plan.nb_ssl_remote}" in
                    controller_log_text(lab, marks), 20), controller_log_text(lab, marks)
    if lab.control == "central":     # every switch comes back, over TLS
        for n in plan.nodes:
            back = f"TLS connection from the switch at {n.management_ip.ip} port"
            assert wait_for(lambda back=back: back in controller_log_text(lab, marks), 30), \
                (n.name, controller_log_text(lab, marks))
    assert lab.status()["tls"]
    api = nbapi.connect(f"unix:{plan.nb_run_dir}/nb.sock")
    try:
        addr = next(s["ipv6"] for s in api.list("subscription") if s["vm"] == "b-vm1")
    finally:
        api.close()

    def echoed():
        out = client(plan, "tcp", addr, TCP_PORT, "after-the-restarts")
        return "error" not in out and answer(out)
    got = wait_for(echoed, 30, interval=0.5)
    assert got and (got[0], got[1], got[3]) == ("b-vm1", PLATFORM_IP, "after-the-restarts"), got


def test_metrics_are_served_over_https_to_scrapers_with_a_certificate_only(platform):
    """Agents and controllers serve their Prometheus metrics with their own certificates
    (``--metrics-*``, ``--vnet64-metrics-*``) and want the scraper's, signed by the
    controller CA: the lab's ``scraper`` gets them, plain HTTP and a scraper without a
    certificate get nothing."""
    from tests.lab.test_metrics import SCRAPE, scrape, value
    lab, plan, _ = platform
    ctl = None if lab.control == "central" else "host1"
    samples = scrape(plan, "host1", pki=lab.pki)
    assert value(samples, "vnet64_node_info", node="host1", role="host") == 1
    samples = scrape(plan, ctl, P.CONTROLLER_METRICS_PORT, pki=lab.pki)
    assert value(samples, "vnet64_controller_nb_connected") == 1
    ip = next(n for n in plan.nodes if n.name == "host1").management_ip.ip
    plain = _in_ns(plan.ctl_ns, sys.executable, "-c", SCRAPE, f"http://{ip}:{P.METRICS_PORT}/metrics")
    assert plain.returncode != 0 and "vnet64_node_info" not in plain.stdout
    # a scraper that trusts the CA but shows no certificate of its own
    no_cert = ("import ssl, sys, urllib.request\nctx = ssl.create_default_context(cafile=sys.argv[2])\n"
               "ctx.check_hostname = False\nprint(urllib.request.urlopen(sys.argv[1], timeout=5, context=ctx).read())")
    proc = _in_ns(plan.ctl_ns, sys.executable, "-c", no_cert, f"https://{ip}:{P.METRICS_PORT}/metrics",
                  lab.pki.controller_ca)
    assert proc.returncode != 0 and "vnet64_node_info" not in proc.stdout, proc.stderr[-300:]
