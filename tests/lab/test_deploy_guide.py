"""docs/deploy.md, followed step by step: three hosts and an appliance over TLS, in namespaces.

The machines are built with the lab's own functions (``Lab._namespaces``, ``_fabric``,
``_node_ovs``: a namespace per machine and guest, the underlay fabric and the management
network, each node's Open vSwitch standing for Debian's ``openvswitch-switch``), from the
platform file the guide itself writes. Then every ``sh`` block of the guide runs, in order,
in the namespace of each machine it names, with the substitutions of
``tests/support/guide.py`` (its docstring and the guide's last section list them); a
block marked ``[lab: TAG]`` is done by ``STAND_INS[TAG]`` instead. A failing command
fails the module with its output.

The tests then check what the guide promises: a Raft NB of three members, connected to
each other over ``ssl:``; every NB connection on the management network opening with a
TLS handshake and carrying no readable OVSDB; svc1's TCP payload reaching a-vm1 and b-vm1
(both 10.0.0.4) from Platform_IP and echoed back, captured at both ends.

``VNET64_GUIDE_TRANSCRIPT=FILE`` writes what every block printed to FILE.

Everything is removed at the end, also after a failure: the processes the test started,
by pid; then ``Lab.down`` (what the pidfiles under the run directory name, anything left
in the ``v64dg-`` namespaces, the namespaces, the run directory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.conftest import need_lab
from tests.lab.traffic import Pcap, answer, client, programmed, start_echo_server
from tests.support import guide as G
from vnet64.nb.cluster import cluster_status
from vnet64.nb.server import NbServer, NbServerError
from vnet64_lab import Lab
from vnet64_lab import plan as P
from vnet64_lab import settings as lab_settings
from vnet64_lab import sh
from vnet64_lab.ovs import OvsNode

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "v64dg-"
RUN_DIR = Path("/run/vnet64-guide-test")
MACHINES = RUN_DIR / "machines"
VENV = Path(sys.prefix)
CA = "ca"
PLATFORM_FILE = "/etc/vnet64/platform.yaml"
# what these machines cannot have: the lab stands in for the VMs (tap + guest stand-ins)
NOT_IN_THE_LAB = {"libvirt-daemon-system", "qemu-system-x86"}
NB_PORTS = (6641, 6643)
BLOCK_TIMEOUT = 120


class Deployment:
    """The machines of the guide, standing in namespaces; runs its blocks."""

    def __init__(self, lab: Lab, plan: P.Plan):
        self.lab, self.plan = lab, plan
        self.nodes = {n.name: n for n in plan.nodes}
        self.guests = {v.name: v for v in plan.vifs}
        self.procs: list[subprocess.Popen] = []
        self.outputs: list[tuple[G.Block, str, str]] = []     # (block, machine, output)
        self.stand_ins_used: list[str] = []

    # -- machines ------------------------------------------------------------

    def expand(self, targets: tuple[str, ...]) -> list[str]:
        out = []
        for t in targets:
            out += list(self.nodes) if t == G.EVERY_MACHINE else [t]
        for t in out:
            if t != CA and t not in self.nodes and t not in self.guests:
                raise AssertionError(f"the guide names an unknown machine {t!r}")
        return out

    def ns(self, machine: str) -> str:
        if machine == CA:
            return self.plan.ctl_ns        # the CA: a machine on the management network
        if machine in self.nodes:
            return self.nodes[machine].ns
        return self.guests[machine].ns

    def dir(self, machine: str) -> Path:
        d = MACHINES / machine
        d.mkdir(parents=True, exist_ok=True)
        return d

    def ovs_rundir(self, machine: str) -> Path | None:
        n = self.nodes.get(machine)
        return Path(n.run_dir) if n else None

    def mgmt_ip(self, machine: str) -> str:
        if machine == CA:
            return str(self.plan.controller_ip.ip)
        n = self.nodes.get(machine)
        return str(n.management_ip.ip) if n else ""

    def env(self, machine: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VNET64_", "OVS_"))}   # nothing of the caller's NB or lab
        env.update(NODE=machine, MGMT_IP=self.mgmt_ip(machine),
                   PATH=f"{VENV / 'bin'}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
                   VNET64_RUN_DIR=str(self.dir(machine) / "var/lib/vnet64"),
                   GUIDE_MACHINES=str(MACHINES), HOME=str(self.dir(machine)))
        rundir = self.ovs_rundir(machine)
        if rundir:
            env.update(OvsNode(machine, self.ns(machine), rundir).env())
        return env

    def substitute(self, text: str, machine: str) -> str:
        return G.substitute(text, self.dir(machine), VENV, ROOT, self.ovs_rundir(machine))

    # -- blocks ----------------------------------------------------------------

    def run(self, block: G.Block) -> None:
        for machine in self.expand(block.targets):
            if block.tag:
                STAND_INS[block.stand_in](self, block, machine)
                self.stand_ins_used.append(block.stand_in)
                continue
            script = G.SCP_FUNCTION + self.substitute(block.script, machine)
            proc = subprocess.run(
                [sh.tool("ip"), "netns", "exec", self.ns(machine), "bash", "-euo", "pipefail",
                 "-c", script], cwd=self.dir(machine), env=self.env(machine),
                capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
            output = proc.stdout + proc.stderr
            if proc.returncode:
                raise AssertionError(f"docs/deploy.md:{block.line} on {machine} exited "
                                     f"{proc.returncode}:\n{block.script}\n--- output:\n{output}")
            self.outputs.append((block, machine, output))

    def output(self, command: str, machine: str) -> str:
        """What the block holding ``command`` printed on ``machine``."""
        for block, m, out in self.outputs:
            if m == machine and command in block.script:
                return out
        raise AssertionError(f"no block with {command!r} ran on {machine}")

    # -- units -----------------------------------------------------------------

    def start_unit(self, machine: str, name: str) -> None:
        d = self.dir(machine)
        unit = G.read_unit(d / "etc/systemd/system", name)
        env: dict[str, str] = {}
        for f in unit.environment_files:
            optional = f.startswith("-")
            path = Path(self.substitute(f.lstrip("-"), machine))
            if path.exists() or not optional:
                env.update(G.read_environment_file(path))
        # the unit's own paths are the guide's; its environment file was written with the
        # lab's already
        unit = dataclasses.replace(unit, exec_start=self.substitute(unit.exec_start, machine))
        argv = G.exec_argv(unit, env)
        if name == "vnet64-node.service":    # four agents in one kernel (module docstring)
            argv += ["--run-dir", str(d / "run/vnet64-node")]
            if self.nodes[machine].role == "host":
                argv += ["--translator-netns", self.plan.translator(machine).ns]
        (d / "log").mkdir(exist_ok=True)
        (d / "run/units").mkdir(parents=True, exist_ok=True)
        with open(d / "log" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sh.tool("nsenter"), f"--net=/run/netns/{self.ns(machine)}", "--", *argv],
                cwd=d, env={**self.env(machine), **env}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        (d / "run/units" / f"{name}.pid").write_text(f"{proc.pid}\n")
        self.wait_unit(machine, name, proc)

    def unit_log(self, machine: str, name: str) -> str:
        path = self.dir(machine) / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def wait_unit(self, machine: str, name: str, proc: subprocess.Popen) -> None:
        d = self.dir(machine)

        def nb_member() -> bool:
            try:
                return cluster_status(NbServer(d / "var/lib/vnet64"))["status"] == "cluster member"
            except NbServerError:
                return False

        def agent_up() -> bool:
            return (d / "run/vnet64-node/status.json").exists()

        def programming() -> bool:
            node = OvsNode(machine, self.ns(machine), self.ovs_rundir(machine))
            return "actions=" in node.ofctl("-O", "OpenFlow13", "dump-flows", "br-int",
                                            check=False)
        ready = {"vnet64-nb.service": nb_member, "vnet64-node.service": agent_up}.get(
            name, programming)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{name} on {machine} exited {proc.returncode}:\n"
                                     f"{self.unit_log(machine, name)}")
            if ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} on {machine} not up within 60 s:\n"
                             f"{self.unit_log(machine, name)}")

    def stop(self) -> None:
        """Every process the test started, by pid (SIGTERM, then SIGKILL)."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


# -- stand-ins for what the lab cannot run as written -------------------------------


def _packages(dep: Deployment, block: G.Block, machine: str) -> None:
    """apt-get install: the packages named are installed here (not libvirt and QEMU)."""
    text = block.script.replace("\\\n", " ")
    wanted = [w for line in text.splitlines() if "apt-get install" in line
              for w in line.split("install", 1)[1].split() if not w.startswith("-")]
    assert wanted or "apt-get update" in text, f"docs/deploy.md:{block.line}: no packages"
    missing = []
    for pkg in wanted:
        if pkg in NOT_IN_THE_LAB:
            continue
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                              capture_output=True, text=True)
        if "install ok installed" not in proc.stdout:
            missing.append(pkg)
    assert not missing, f"docs/deploy.md:{block.line}: not installed here: {missing}"


def _venv(dep: Deployment, block: G.Block, machine: str) -> None:
    """The venv from the lock: the test's venv holds exactly the lock's versions."""
    assert "--require-hashes" in block.script and "requirements/lock.txt" in block.script
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)",
                           (ROOT / "requirements/lock.txt").read_text(), re.M))
    wrong = {}
    for name, version in pins.items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != version:
            wrong[name] = (version, have)
    assert not wrong, f"the test's venv is not the lock's (lock, venv): {wrong}"
    for script in ("vnet64", "vnet64-node", "vnet64-controller"):
        assert (VENV / "bin" / script).exists(), script


def _units(dep: Deployment, block: G.Block, machine: str) -> None:
    """systemctl enable --now UNIT...: each unit's ExecStart, in the machine's namespace."""
    names = []
    for line in block.script.splitlines():
        m = re.match(r"\s*systemctl enable --now (.+)", line)
        if m:
            names += m.group(1).replace("$NODE", machine).split()
    assert names, f"docs/deploy.md:{block.line}: no systemctl enable --now"
    for name in names:
        dep.start_unit(machine, name)


def _tap(dep: Deployment, block: G.Block, machine: str) -> None:
    """ip tuntap add dev TAP: a veth TAP (the tap's name and MTU) whose other end is the
    guest's eth0, in the guest's namespace."""
    (guest,) = block.args
    tap = re.search(r"ip tuntap add dev (\S+) mode tap", block.script).group(1)
    mtu = re.search(rf"ip link set {re.escape(tap)} mtu (\d+) up", block.script).group(1)
    sh.ip_batch(dep.ns(machine), [
        f"link add {tap} mtu {mtu} type veth peer name {P.VM_IF} mtu {mtu} "
        f"netns {dep.ns(guest)}",
        f"link set {tap} up"])


def _guest(dep: Deployment, block: G.Block, machine: str) -> None:
    """virsh define/start: what QEMU does for the guest's NIC - the domain XML's MAC - and,
    lab-only, TX checksum offload off on the veth standing for it."""
    (guest,) = block.args
    vif = dep.guests[guest]
    sh.ip_batch(vif.ns, [f"link set {P.VM_IF} address {vif.mac}"])
    sh.in_ns(vif.ns, [sh.tool("ethtool"), "-K", P.VM_IF, "tx", "off"])


STAND_INS = {"packages": _packages, "venv": _venv, "units": _units, "tap": _tap,
             "guest": _guest}


# -- the deployment ------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed():
    need_lab()
    text = G.GUIDE.read_text()
    blocks = G.blocks(text)
    lab = Lab(PREFIX, RUN_DIR)
    lab.down()   # leftovers of an interrupted run
    dep = None
    captures: list[Pcap] = []
    try:
        RUN_DIR.mkdir(parents=True)
        platform = RUN_DIR / "platform.yaml"
        platform.write_text(G.heredoc(text, PLATFORM_FILE))
        topo, settings = lab_settings.load(platform)
        plan = P.build(topo, settings, PREFIX, str(RUN_DIR))
        dep = Deployment(lab, plan)
        lab._namespaces(plan)
        lab._fabric(plan)
        for n in plan.nodes:
            lab._node_ovs(plan, n)
        # the management network, every node's leg: the NB's and Raft's packets
        captures = [Pcap(plan.ctl_ns, n.mgmt_peer_if, RUN_DIR,
                         " or ".join(f"tcp port {p}" for p in NB_PORTS)) for n in plan.nodes]
        try:
            for block in blocks:
                dep.run(block)
        finally:
            transcript = os.environ.get("VNET64_GUIDE_TRANSCRIPT")
            if transcript:   # what every block printed, for reading the guide's outputs
                Path(transcript).write_text("".join(
                    f"== docs/deploy.md:{b.line} on {m}\n{out}" for b, m, out in dep.outputs))
        yield dep, captures
    finally:
        for cap in captures:
            with contextlib.suppress(Exception):
                cap.stop()
        if dep is not None:
            dep.stop()
        lab.down()


def test_every_block_ran_and_every_stand_in_was_used(deployed):
    dep, _ = deployed
    blocks = G.blocks(G.GUIDE.read_text())
    ran = {b.line for b, _, _ in dep.outputs}
    assert ran == {b.line for b in blocks if not b.tag}
    assert set(dep.stand_ins_used) == set(STAND_INS)


def test_the_nb_is_a_raft_cluster_of_three_over_tls(deployed):
    dep, _ = deployed
    views = {}
    for member in ("host1", "host2", "host3"):
        status = cluster_status(NbServer(dep.dir(member) / "var/lib/vnet64"))
        views[member] = status
        assert status["status"] == "cluster member", status
        assert len(status["servers"]) == 3, status
        assert all(s["address"].startswith("ssl:") for s in status["servers"]), status
        assert all(s["connected"] for s in status["servers"]), status
    leaders = {json_leader(v) for v in views.values()}
    assert len(leaders) == 1 and None not in leaders, views
    # the guide's own check printed each member's view
    for member in views:
        out = dep.output("vnet64 nb cluster status", member)
        assert out.count("ssl:172.31.255.") >= 3, out


def json_leader(status: dict) -> str | None:
    return next((s["address"] for s in status["servers"] if s.get("role") == "leader"), None)


def test_every_nb_connection_is_tls(deployed):
    """On the management network: each direction of each NB (6641) and Raft (6643)
    connection opens with a TLS handshake record, and no payload is readable OVSDB."""
    dep, captures = deployed
    from scapy.layers.inet import TCP, IP
    firsts: dict[tuple, bytes] = {}
    ports_seen = set()
    for cap in captures:
        for pkt in cap.packets():
            if TCP not in pkt or IP not in pkt:
                continue
            data = bytes(pkt[TCP].payload)
            if not data:
                continue
            assert b'"method"' not in data and b"VNet64_Northbound" not in data, \
                f"plain OVSDB on {cap.name}: {data[:200]!r}"
            key = (pkt[IP].src, pkt[TCP].sport, pkt[IP].dst, pkt[TCP].dport)
            firsts.setdefault(key, data)
            ports_seen.add(pkt[TCP].dport if pkt[TCP].dport in NB_PORTS else pkt[TCP].sport)
    assert ports_seen == set(NB_PORTS), ports_seen
    not_tls = {k: v[:8] for k, v in firsts.items() if v[:2] != b"\x16\x03"}
    assert not not_tls, f"streams that did not open with a TLS handshake: {not_tls}"
    # every node's agent and controller, and the CLI on host1, are NB clients
    clients = {k[0] for k in firsts if k[3] == 6641}
    assert clients >= {str(n.management_ip.ip) for n in dep.plan.nodes}, clients


def test_svc1_reaches_a_vm1_and_b_vm1(deployed):
    """svc1's TCP payload arrives at each VM from Platform_IP and is echoed back, in the
    packets captured on the VMs' and svc1's interfaces."""
    dep, _ = deployed
    plan = dep.plan
    out = dep.output("vnet64 subscribe a-vm1 analytics", "host1")
    addrs = re.findall(r"^(fd41:[0-9a-f:]+)$", out, re.M)
    assert len(addrs) == 2, out
    sh.wait_for(lambda: programmed(plan), 20, "every switch programmed for the subscriptions")
    platform_ip = str(plan.topology.platform.platform_ip)
    servers = [start_echo_server(plan, vm) for vm in ("a-vm1", "b-vm1")]
    try:
        with Pcap(dep.guests["svc1"].ns, P.VM_IF, RUN_DIR, "tcp port 8080") as svc_cap, \
                Pcap(dep.guests["a-vm1"].ns, P.VM_IF, RUN_DIR, "tcp port 8080") as a_cap, \
                Pcap(dep.guests["b-vm1"].ns, P.VM_IF, RUN_DIR, "tcp port 8080") as b_cap:
            for vm, addr, cap in (("a-vm1", addrs[0], a_cap), ("b-vm1", addrs[1], b_cap)):
                marker = f"deploy-guide-{vm}"
                reply = client(plan, "tcp", addr, 8080, marker, timeout=10)
                name, seen, _, payload = answer(reply)
                assert (name, seen, payload) == (vm, platform_ip, marker), reply
                from scapy.layers.inet import IP, TCP
                from scapy.layers.inet6 import IPv6
                arrived = cap.wait(lambda pkts, m=marker: any(
                    IP in p and TCP in p and m.encode() in bytes(p[TCP].payload)
                    and p[IP].src == platform_ip and p[IP].dst == "10.0.0.4" for p in pkts))
                assert any(IP in p and TCP in p and marker.encode() in bytes(p[TCP].payload)
                           and p[IP].src == platform_ip and p[IP].dst == "10.0.0.4"
                           for p in arrived), f"{vm} did not see the payload from {platform_ip}"
                echoed = svc_cap.wait(lambda pkts, m=marker, a=addr: any(
                    IPv6 in p and TCP in p and p[IPv6].src == a
                    and f"{vm} {platform_ip}:".encode() in bytes(p[TCP].payload)
                    and m.encode() in bytes(p[TCP].payload) for p in pkts))
                assert any(IPv6 in p and TCP in p and p[IPv6].src == addr
                           and marker.encode() in bytes(p[TCP].payload) for p in echoed), \
                    f"svc1 did not capture {vm}'s echo from {addr}"
    finally:
        for proc in servers:
            proc.terminate()    # our own children, by pid
            proc.wait(5)
