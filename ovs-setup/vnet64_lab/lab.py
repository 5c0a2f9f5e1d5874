"""Bring a topology up in network namespaces, take it down, report its state.

``Lab(prefix, run_dir)`` is one lab instance: every namespace it creates starts
with ``prefix`` and every file (pidfiles, databases, logs, TAYGA configs, a copy
of the topology) lives under ``run_dir``. That is all ``down`` needs, so it
works after a crash or a half-finished ``up``: it stops what the pidfiles name,
then anything still running inside the lab's namespaces, deletes every
namespace with the prefix, and removes the run directory.

The lab stands in only for hosts, VMs and the fabric: every node is brought up by its
node agent, ``vnet64-node``, started in the node's namespace exactly as a host runs it.

Control mode (``Lab(control=...)``, else ``$VNET64_LAB_CONTROL``, else ``node``; kept
in ``state.json`` for as long as the lab is up):

- ``node`` (the default, what a deployment runs): a controller per node,
  ``vnet64-controller --vnet64-node NODE --vnet64-switch unix:<node's OVS run
  dir>/br-int.mgmt`` in the node's network namespace next to its agent (``nsenter
  --net``, as the agent), reaching the NB as the agent does and connecting to its br-int's
  management socket as ovn-controller does; ``<run>/controllers/<node>/controller.{log,pid}``;
  no ``Node.controllers`` (no port to listen on, nothing to reconnect to);
- ``central``: one controller for every node in ``P ctl``, listening on the
  management network; ``<run>/ctl/controller.{log,pid}``; every ``Node.controllers``
  is ``tcp:<ctl ip>:6653``.

Translator engine (``Lab(translator_engine=...)``, else ``$VNET64_TRANSLATOR_ENGINE``, else
``tayga``; kept in ``state.json`` too): what every host's agent is started with
(``--translator-engine``): ``tayga`` alone, or ``bpf``, the tc-BPF fast path in front of it.

TLS (``Lab(tls=True)``, else ``$VNET64_LAB_TLS``; off by default; kept in ``state.json``
too): ``up`` makes a PKI with ``ovs-pki`` in ``<run>/pki`` (:class:`LabPki`), the NB
listens with ``pssl:`` only, every agent and controller reaches it over ``ssl:`` with a
certificate of its own, and in ``central`` control the controller listens with TLS and
every br-int's target is ``ssl:<ctl ip>:6653`` (the agents write Open vSwitch's SSL
row). A node's own controller reaches its br-int over the management socket: no TLS.

:meth:`Lab.controller` names the controller serving a node in either mode (its pid and
log), :meth:`Lab.controllers` all of them, :meth:`Lab.restart_controller` starts one
or all again.

Order of ``up`` (each step idempotent):

1. validate the topology and its ``lab:`` settings - nothing exists yet;
2. namespaces; the fabric (bridge ``br0`` in ``P fabric``) with every node's NIC
   (``ul0``, holding its underlay address as a host's NIC would) and the management
   network (bridge ``br-mgmt`` in ``P ctl``, holding the controller's address);
3. with TLS, the PKI; the NB ovsdb-server in ``P ctl`` (unix socket + ``ptcp:6641``,
   with TLS ``pssl:6641``), loaded from the
   topology, each node's OpenFlow controller target set in it; per node, ovsdb-server
   + ovs-vswitchd (what a host's openvswitch-switch service runs); the controllers
   (one per node, or the central one);
4. per node, ``vnet64-node --nb tcp:...:6641 --datapath netdev --uplink ul0 ...``
   (via ``nsenter --net``, so the translator namespace it makes is visible to all, as
   on a host): br-phy with ul0 and the underlay address, br-int, geneve0, on hosts the
   translator namespace with TAYGA and the conntrack policies; the lab waits for each
   agent's ``status.json``;
5. per VM / endpoint, what a hypervisor does: a veth into br-int with ``iface-id`` and
   ``attached-mac`` (libvirt's way), the VM's addresses, MTU, gateway inside its
   namespace; the agents bind the ports in the NB;
6. ready: every node's OVS has the underlay route and its tunnel neighbours, and every
   VM and endpoint is bound to its host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vnet64 import gateway
from vnet64.nb import api as nb_api
from vnet64.nb.server import LAB_RUN_DIR, NbServer
from vnet64.topology import TopologyError

from vnet64.node.agent import STATUS_FILE as AGENT_STATUS_FILE
from vnet64.node.translator import DEFAULT_ENGINE, ENGINE_ENV, ENGINES, bpf_attached

from . import plan as P
from . import settings as lab_settings
from . import sh
from .ovs import EnsurePort, OvsNode, terminate
from .pki import Pki
from .sh import LabError

LOG = logging.getLogger(__name__)
DEFAULT_PREFIX = "v64-"
DEFAULT_RUN_DIR = LAB_RUN_DIR     # the vnet64 CLI looks for a lab there (nb.server)
DEFAULT_TOPOLOGY = "topologies/two-tenants.yaml"
LOCK_DIR = Path("/run/lock")  # a 0-byte lock file per prefix stays there, as usual
STATE_FILE = "state.json"
TOPOLOGY_COPY = "topology.yaml"
CONTROLLER_MODULE = "vnet64.controller"
AGENT = "vnet64-node"         # the node agent's console script, next to this Python
CONTROL_MODES = ("node", "central")
DEFAULT_CONTROL = "node"      # a controller per node, as a deployment runs it
CONTROL_ENV = "VNET64_LAB_CONTROL"
TLS_ENV = "VNET64_LAB_TLS"    # 1/yes/true: the next `up` runs the platform over TLS
PKI_DIR = "pki"
CONTROLLER_PIDFILE = "controller.pid"
PIDFILE_COMMS = {"ovsdb-server.pid": "ovsdb-server", "ovs-vswitchd.pid": "ovs-vswitchd",
                 "nb.pid": "ovsdb-server", "tayga.pid": "tayga", "agent.pid": AGENT}


def check_prefix(prefix: str) -> str:
    import re
    if not re.fullmatch(r"[a-z][a-z0-9]{0,7}-", prefix):
        raise LabError(f"lab prefix must be 1-8 lowercase letters/digits and a '-', got {prefix!r}")
    return prefix


def check_control(mode: str) -> str:
    if mode not in CONTROL_MODES:
        raise LabError(f"control mode must be one of {', '.join(CONTROL_MODES)}, got {mode!r}")
    return mode


def env_tls() -> bool:
    return os.environ.get(TLS_ENV, "").strip().lower() in ("1", "yes", "true", "on")


@dataclass(frozen=True)
class LabPki:
    """The certificates of a lab over TLS, made by ``ovs-pki`` in ``<run>/pki``
    (Open vSwitch's usual two CAs, ``ca/controllerca`` and ``ca/switchca``):

    - the NB (``nb``), every agent's NB client (``agent-<node>``) and every controller
      (``controller-<node>``, or ``controller`` in central control) are signed by the
      controller CA; the NB and its clients trust only it; the agents and controllers
      serve their metrics over HTTPS with the same certificates, to scrapers with one of
      that CA (``scraper``, for the tests);
    - in central control each node's Open vSwitch (``switch-<node>``) is signed by the
      switch CA, which the controller's listener trusts (``--ca-certs``); the switches
      trust the controller CA.

    Every ``NAME`` is ``<run>/pki/NAME-privkey.pem`` and ``NAME-cert.pem``."""

    pki: Pki

    def key(self, name: str) -> str:
        return str(self.pki.key(name))

    def cert(self, name: str) -> str:
        return str(self.pki.cert(name))

    @property
    def controller_ca(self) -> str:
        return str(self.pki.ca("controller"))

    @property
    def switch_ca(self) -> str:
        return str(self.pki.ca("switch"))


def controller_installed() -> bool:
    try:
        return importlib.util.find_spec(CONTROLLER_MODULE) is not None
    except ModuleNotFoundError:
        return False


@dataclass
class Timings:
    steps: dict[str, float] = field(default_factory=dict)
    _t0: float = field(default_factory=time.monotonic)

    def mark(self, step: str) -> None:
        now = time.monotonic()
        self.steps[step] = round(now - self._t0 - sum(self.steps.values()), 3)

    @property
    def total(self) -> float:
        return round(sum(self.steps.values()), 3)


@dataclass(frozen=True)
class Controller:
    """One controller process of the lab: a node's own, or the central one (``node`` None)."""

    node: str | None   # the node it serves; None: every node
    ns: str            # the network namespace it runs in
    dir: Path          # its pidfile and log

    @property
    def name(self) -> str:
        return self.node or "central"

    @property
    def pidfile(self) -> Path:
        return self.dir / CONTROLLER_PIDFILE

    @property
    def log(self) -> Path:
        return self.dir / "controller.log"

    def pid(self) -> int | None:
        """The pid in its pidfile while that process is this controller (alive, a
        ``vnet64.controller``, in its namespace), else None."""
        pid = sh.read_pid(self.pidfile)
        if not pid or not sh.proc_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if CONTROLLER_MODULE.encode() not in cmdline or _proc_ns_inode(pid) != _ns_inode(self.ns):
            return None
        return pid


class Lab:
    def __init__(self, prefix: str | None = None, run_dir: str | Path | None = None,
                 control: str | None = None, tls: bool | None = None,
                 translator_engine: str | None = None):
        """``control``: how the next ``up`` runs the controllers, ``node`` or
        ``central`` (default ``$VNET64_LAB_CONTROL``, else ``node``). ``tls``: whether
        the next ``up`` runs the platform over TLS (default ``$VNET64_LAB_TLS``, else
        no). A lab that is up keeps the mode it was built with (:attr:`control`,
        :attr:`tls`)."""
        self.prefix = check_prefix(prefix or os.environ.get("VNET64_LAB_PREFIX", DEFAULT_PREFIX))
        self.run_dir = Path(run_dir or os.environ.get("VNET64_LAB_RUN_DIR", DEFAULT_RUN_DIR))
        self.wanted_control = check_control(control or os.environ.get(CONTROL_ENV)
                                            or DEFAULT_CONTROL)
        self.wanted_tls = env_tls() if tls is None else bool(tls)
        engine = translator_engine or os.environ.get(ENGINE_ENV) or DEFAULT_ENGINE
        if engine not in ENGINES:
            raise LabError(f"translator engine {engine!r}: not one of {', '.join(ENGINES)}")
        self.wanted_engine = engine

    @property
    def control(self) -> str:
        """``node`` or ``central``: the lab's that is up (or being built), else what
        ``up`` will build. A lab brought up before the modes existed ran ``central``."""
        state = self.state()
        if state:
            return state.get("control", "central")
        return self.wanted_control

    @property
    def tls(self) -> bool:
        """Whether the lab that is up (or being built) runs over TLS, else whether ``up``
        will build it so."""
        state = self.state()
        if state:
            return bool(state.get("tls", False))
        return self.wanted_tls

    @property
    def translator_engine(self) -> str:
        """The hosts' translator engine in the lab that is up, else what ``up`` will use."""
        state = self.state()
        if state:
            return state.get("translator_engine", DEFAULT_ENGINE)
        return self.wanted_engine

    @property
    def pki(self) -> LabPki:
        """The certificates of a lab over TLS (``<run>/pki``)."""
        return LabPki(Pki(self.run_dir / PKI_DIR))

    def nb_remote(self, plan: P.Plan | None = None) -> str:
        """The NB's remote on the management network, as agents and controllers reach
        it: ``ssl:<ctl ip>:6641`` over TLS, else ``tcp:``."""
        plan = plan or self.plan()
        return plan.nb_ssl_remote if self.tls else plan.nb_tcp_remote

    def nb_listen_remote(self, plan: P.Plan | None = None) -> str:
        """The NB's only remote on the management network (its Connection row):
        ``pssl:6641:<ctl ip>`` over TLS, else ``ptcp:``."""
        plan = plan or self.plan()
        return plan.nb_ssl_listen_remote if self.tls else plan.nb_listen_remote

    # -- state --------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def _write_state(self, **changes: Any) -> None:
        state = {**(self.state() or {}), **changes}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.state_path)

    def plan(self, topology_path: str | Path | None = None) -> P.Plan:
        """The plan of ``topology_path``, or of the lab that is up (its saved copy)."""
        path = Path(topology_path) if topology_path else self.run_dir / TOPOLOGY_COPY
        if not topology_path and not path.exists():
            raise LabError(f"no lab is up (no {path}); run `vnet64-lab up` first")
        topo, settings = lab_settings.load(path)
        return P.build(topo, settings, self.prefix, str(self.run_dir))

    def namespaces(self) -> list[str]:
        return [ns for ns in sh.netns_list() if ns.startswith(self.prefix)]

    # -- up -----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        """One up/down at a time per lab (a second caller waits)."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        with open(LOCK_DIR / f"vnet64-lab-{self.prefix.rstrip('-')}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def up(self, topology_path: str | Path = DEFAULT_TOPOLOGY) -> dict:
        """Build the lab; a no-op when the same topology is already up and healthy."""
        topology_path = find_topology(topology_path)
        self.plan(topology_path)  # validation first: raises before anything exists
        with self._locked():
            return self._up(topology_path)

    def _up(self, topology_path: Path) -> dict:
        plan = self.plan(topology_path)  # validation: raises before anything exists
        sh.check_tools()
        vswitchd, patched = sh.vswitchd()
        if not patched:
            LOG.warning("the nodes run %s, not vnet64's patched build (scripts/build-ovs.sh): "
                        "sustained connection load to one VM will stall (docs/lab.md, "
                        "\"Sustained load\")", vswitchd)
        digest = hashlib.sha256(topology_path.read_bytes()).hexdigest()
        state = self.state()
        if state and state.get("phase") == "up":
            if state.get("control", "central") != self.wanted_control:
                raise LabError(f"a lab with {state.get('control', 'central')} control is up under "
                               f"{self.run_dir}; run `vnet64-lab down` first (or ask for "
                               f"--control {state.get('control', 'central')})")
            if bool(state.get("tls", False)) != self.wanted_tls:
                have = "over TLS" if state.get("tls") else "without TLS"
                raise LabError(f"a lab {have} is up under {self.run_dir}; run `vnet64-lab down` "
                               f"first (or ask for it {have})")
            if state.get("translator_engine", DEFAULT_ENGINE) != self.wanted_engine:
                have = state.get("translator_engine", DEFAULT_ENGINE)
                raise LabError(f"a lab whose hosts translate with {have} is up under "
                               f"{self.run_dir}; run `vnet64-lab down` first (or ask for "
                               f"--translator-engine {have})")
            if state.get("sha256") == digest:
                problems = self.health()
                if not problems:
                    return {"already_up": True, "topology": str(topology_path)}
                LOG.warning("lab is up but unhealthy (%s); rebuilding", "; ".join(problems))
            else:
                raise LabError(f"a lab from {state.get('topology')} is up under {self.run_dir}; "
                               f"run `vnet64-lab down` first")
        if state or self.namespaces() or self.run_dir.exists():
            self._down()  # leftovers of a crash or a half-finished up

        timings = Timings()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(topology_path, self.run_dir / TOPOLOGY_COPY)
        self._write_state(phase="building", topology=str(topology_path), sha256=digest,
                          vswitchd=vswitchd, prefix=self.prefix, started=time.time(),
                          control=self.wanted_control, tls=self.wanted_tls,
                          translator_engine=self.wanted_engine)
        with ThreadPoolExecutor(max_workers=1) as pki_pool:
            # ovs-pki (CA keys, a key per daemon) while the networks are made
            pki_future = pki_pool.submit(self._make_pki, plan) if self.tls else None
            self._namespaces(plan)
            self._fabric(plan)
            if pki_future is not None:
                pki_future.result()
        timings.mark("namespaces+networks" + ("+pki" if self.tls else ""))
        with ThreadPoolExecutor(max_workers=len(plan.nodes) + 1) as pool:
            nb_future = pool.submit(self._nb, plan)
            node_futures = [pool.submit(self._node_ovs, plan, n) for n in plan.nodes]
            nb_future.result()
            # The controllers listen before the bridges first try to connect: OVS backs
            # its reconnects off (up to 8 s), so a late controller waits for them.
            controller = self._start_controllers(plan, self.controllers(plan))
            for f in node_futures:
                f.result()
            # every node's agent, as a host runs it, brings its node up from the NB
            for f in [pool.submit(self._agent, plan, n) for n in plan.nodes]:
                f.result()
        timings.mark("nb+nodes")
        with ThreadPoolExecutor(max_workers=len(plan.nodes)) as pool:
            for f in [pool.submit(self._attach, plan, n) for n in plan.nodes]:
                f.result()
        self._vifs(plan)
        timings.mark("vms+endpoints")
        self._wait_ready(plan)
        timings.mark("ready")
        self._write_state(phase="up", timings=timings.steps, up_seconds=timings.total,
                          controller=controller)
        return {"already_up": False, "topology": str(topology_path), "seconds": timings.total,
                "steps": timings.steps, "controller": controller, "control": self.control,
                "tls": self.tls, "translator_engine": self.translator_engine}

    def _namespaces(self, plan: P.Plan) -> None:
        existing = set(sh.netns_list())
        agents_make = {t.ns for t in plan.translators}    # each host's agent makes its own
        for ns in plan.namespaces:
            if ns in agents_make:
                continue
            if ns not in existing:
                sh.run([sh.tool("ip"), "netns", "add", ns])
            sh.ip(ns, "link", "set", "lo", "up")
        for n in plan.nodes:
            # The underlay is IPv4; no kernel IPv6 (router solicitations, MLD) on the veths
            # that are OVS ports - they would enter br-int as if a VM had sent them. (What
            # the userspace datapath needs of the kernel - arp_ignore on the uplink, the
            # packet sockets' buffers - is the node agent's: vnet64.node.datapath.)
            # lab only: a lab node is a namespace of nothing but the platform's ports, so IPv6
            # there serves nothing. A real host keeps its IPv6 (its own business): br-int
            # drops what comes from a port it was not told about (classify has no flow for
            # it), and the agent needs no IPv6 on the underlay.
            sh.sysctl(n.ns, {"net.ipv6.conf.all.disable_ipv6": 1,
                             "net.ipv6.conf.default.disable_ipv6": 1})

    def _fabric(self, plan: P.Plan) -> None:
        """The underlay segment and the management segment, with every node's legs."""
        s = plan.settings
        mtu = str(s.underlay_mtu)
        sh.ip_batch(plan.fabric_ns, [f"link add {P.FABRIC_BRIDGE} mtu {mtu} type bridge",
                                     f"link set {P.FABRIC_BRIDGE} up"])
        sh.ip_batch(plan.ctl_ns, [f"link add {P.MGMT_BRIDGE} type bridge",
                                  f"addr add {plan.controller_ip} dev {P.MGMT_BRIDGE}",
                                  f"link set {P.MGMT_BRIDGE} up"])
        fabric_lines, ctl_lines = [], []
        for n in plan.nodes:
            # Created inside the node's namespace, peer inside the fabric/ctl namespace:
            # nothing ever exists in the root namespace.
            sh.ip_batch(n.ns, [
                f"link add {P.UNDERLAY_IF} mtu {mtu} address {n.underlay_mac} type veth peer "
                f"name {n.fabric_if} mtu {mtu} netns {plan.fabric_ns}",
                f"link add {P.MGMT_IF} type veth peer name {n.mgmt_peer_if} netns {plan.ctl_ns}",
                # the host's NIC with its underlay address: the agent moves the address to
                # br-phy (userspace tunnelling) and the NIC into br-phy
                f"addr add {n.underlay_ip} dev {P.UNDERLAY_IF}",
                f"link set {P.UNDERLAY_IF} up",
                f"addr add {n.management_ip} dev {P.MGMT_IF}",
                f"link set {P.MGMT_IF} up"])
            fabric_lines += [f"link set {n.fabric_if} master {P.FABRIC_BRIDGE} up"]
            ctl_lines += [f"link set {n.mgmt_peer_if} master {P.MGMT_BRIDGE} up"]
            # lab only: ul0 is a veth standing for the node's NIC, and a veth hands what the
            # kernel sends through it to its peer with the checksum still to be filled in
            # (CHECKSUM_PARTIAL), which ovs-vswitchd reading a packet socket takes as wrong.
            # A physical NIC fills checksums in before the wire: a real uplink keeps its
            # offload (docs/deploy.md, "What the lab does that a host does not").
            sh.in_ns(n.ns, [sh.tool("ethtool"), "-K", P.UNDERLAY_IF, "tx", "off"])
        sh.ip_batch(plan.fabric_ns, fabric_lines)
        sh.ip_batch(plan.ctl_ns, ctl_lines)

    def _make_pki(self, plan: P.Plan) -> None:
        """The certificates of a lab over TLS (:class:`LabPki`)."""
        pki = Pki.make(self.run_dir / PKI_DIR)
        wanted = [("nb", "controller")]
        wanted += [(f"agent-{n.name}", "controller") for n in plan.nodes]
        wanted += [(self.controller_cert_name(c), "controller") for c in self.controllers(plan)]
        wanted += [("scraper", "controller")]     # what scrapes the metrics (as Prometheus would)
        if self.control == "central":
            wanted += [(f"switch-{n.name}", "switch") for n in plan.nodes]
        pki.issue_many(wanted)

    def nb_server(self, plan: P.Plan | None = None) -> NbServer:
        """The lab's NB server (in ``P ctl``; over TLS, with its certificate)."""
        plan = plan or self.plan()
        tls = {}
        if self.tls:
            pki = self.pki
            tls = {"private_key": pki.key("nb"), "certificate": pki.cert("nb"),
                   "ca_cert": pki.controller_ca}
        return NbServer(Path(plan.nb_run_dir), netns=plan.ctl_ns, **tls)

    def _nb(self, plan: P.Plan) -> dict:
        """Start the NB in the controller namespace and load the topology into it."""
        server = self.nb_server(plan)
        server.start()
        api = nb_api.connect(server.remote)
        try:
            api.load_topology(plan.topology)
            # the remote agents and controllers use (TCP, or TLS only), kept in the NB with
            # its probe (plan.py)
            api.set_connections([self.nb_listen_remote(plan)],
                                inactivity_probe=P.NB_INACTIVITY_PROBE_MS)
            targets = self.bridge_controllers(plan)
            for n in plan.nodes:   # the central controller, or none (its own connects to it)
                api.set_node_controllers(n.name, targets)
            info = api.platform_info() or {}
            info["vnet_zones"] = {v["name"]: v["ct_zone"] for v in api.list("vnet")}
            return info
        finally:
            api.close()

    def _node_ovs(self, plan: P.Plan, n: P.NodePlan) -> None:
        """The node's Open vSwitch (what a host's openvswitch-switch service runs)."""
        OvsNode(n.name, n.ns, n.run_dir).start()

    def agent_dir(self, node: str) -> Path:
        return self.run_dir / "agents" / node

    def agent_pid(self, node: str) -> int | None:
        pid = sh.read_pid(self.agent_dir(node) / "agent.pid")
        return pid if pid and sh.proc_alive(pid, AGENT) else None

    def agent_command(self, plan: P.Plan, n: P.NodePlan,
                      translator_engine: str | None = None) -> list[str]:
        """``vnet64-node`` as a host runs it, in the node's network namespace only
        (nsenter: the namespaces it creates are everyone's, as on a host).
        ``translator_engine``: a host's engine other than the lab's."""
        d = self.agent_dir(n.name)
        cmd = [str(Path(sys.executable).with_name(AGENT)), "--nb", self.nb_remote(plan),
               "--name", n.name, "--datapath", "netdev", "--uplink", P.UNDERLAY_IF,
               "--ovs", OvsNode(n.name, n.ns, n.run_dir).remote, "--run-dir", str(d),
               "--log-file", str(d / "agent.log"),
               # Prometheus metrics on the management network, as a host serves them
               "--metrics", f"{n.management_ip.ip}:{P.METRICS_PORT}"]
        if self.tls:
            pki, me = self.pki, f"agent-{n.name}"
            cmd += ["--nb-private-key", pki.key(me), "--nb-certificate", pki.cert(me),
                    "--nb-ca-cert", pki.controller_ca,
                    "--metrics-private-key", pki.key(me), "--metrics-certificate", pki.cert(me),
                    "--metrics-ca-cert", pki.controller_ca]
            if self.control == "central":   # the switch's own certificate, for ssl: targets
                sw = f"switch-{n.name}"
                cmd += ["--ovs-private-key", pki.key(sw), "--ovs-certificate", pki.cert(sw),
                        "--ovs-ca-cert", pki.controller_ca]
        if n.role == "host":
            t = plan.translator(n.name)
            cmd += ["--translator-netns", t.ns, "--translator-ipv4", str(t.ipv4),
                    "--translator-engine", translator_engine or self.translator_engine]
        return [sh.tool("nsenter"), f"--net=/run/netns/{n.ns}", "--", *cmd]

    def _agent(self, plan: P.Plan, n: P.NodePlan, wait: bool = True,
               translator_engine: str | None = None) -> int:
        """Start the node's agent (its pidfile in its run directory); wait until it says
        the node is up."""
        d = self.agent_dir(n.name)
        d.mkdir(parents=True, exist_ok=True)
        (d / AGENT_STATUS_FILE).unlink(missing_ok=True)
        with open(d / "agent.log", "ab") as log:
            proc = subprocess.Popen(self.agent_command(plan, n, translator_engine), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (d / "agent.pid").write_text(f"{proc.pid}\n")
        if wait:
            def tail() -> str:
                return " | ".join((d / "agent.log").read_text().strip().splitlines()[-8:])

            def up() -> bool:
                if proc.poll() is not None:
                    raise LabError(f"{n.name}: {AGENT} exited ({proc.returncode}): {tail()}")
                return (d / AGENT_STATUS_FILE).exists()
            try:
                sh.wait_for(up, 60, f"{n.name}'s {AGENT} to bring the node up")
            except LabError as exc:
                raise LabError(f"{exc}; its log ends: {tail()}") from None
        return proc.pid

    def restart_agent(self, node: str, wait: bool = True,
                      translator_engine: str | None = None) -> int:
        """Start a node's agent again exactly as ``up`` does (one still running is stopped
        first, by its pidfile); ``translator_engine``: this host's, instead of the lab's
        (as an operator switches one host; the next restart without it switches back)."""
        if translator_engine is not None and translator_engine not in ENGINES:
            raise LabError(f"translator engine {translator_engine!r}: not one of "
                           f"{', '.join(ENGINES)}")
        plan = self.plan()
        pid = self.agent_pid(node)
        if pid:
            terminate(pid, AGENT)
        return self._agent(plan, plan.node(node), wait=wait, translator_engine=translator_engine)

    def _attach(self, plan: P.Plan, n: P.NodePlan) -> None:
        """What a hypervisor does for each VM (and service endpoint) of the node: a veth
        into br-int under a name of its own choosing, with ``iface-id`` (the VM's NB name)
        and ``attached-mac``, as libvirt writes them. The agent binds them."""
        vifs = plan.vifs_on(n.name)
        if not vifs:
            return
        for v in vifs:
            sh.ip_batch(n.ns, [
                f"link add {v.port} mtu {v.mtu} type veth peer name {P.VM_IF} mtu {v.mtu} "
                f"netns {v.ns}",
                f"link set {v.port} up"])
        node = OvsNode(n.name, n.ns, n.run_dir)
        api = node.connect()
        try:
            api.run(*[EnsurePort(api, "br-int", v.port, ofport_request=v.ofport,
                                 external_ids={"iface-id": v.name, "attached-mac": v.mac})
                      for v in vifs])
            node.wait_ports(api, [v.port for v in vifs])
        finally:
            api.close()

    def _vifs(self, plan: P.Plan) -> None:
        for v in plan.vifs:
            lines = [f"link set {P.VM_IF} address {v.mac}"]
            if v.kind == "vm":
                # lab only: keeps the stand-in for an IPv4 customer VM quiet. A real guest is
                # the customer's and may speak IPv6: from_vm takes ARP for the gateway and
                # IPv4 to Platform_IP, and drops the rest.
                sh.sysctl(v.ns, {"net.ipv6.conf.all.disable_ipv6": 1,
                                 "net.ipv6.conf.default.disable_ipv6": 1})
                lines += [f"addr add {v.ipv4} dev {P.VM_IF}", f"link set {P.VM_IF} up",
                          f"route add default via {v.ipv4_gateway} dev {P.VM_IF}"]
            else:
                # lab only: no duplicate address detection, so the stand-in endpoint is
                # ready when `up` returns (its address is added nodad too). A real endpoint
                # does DAD as its OS likes: its NS for its own address gets no answer (the
                # platform answers only fe80::1's), so DAD succeeds after its wait.
                sh.sysctl(v.ns, {"net.ipv6.conf.all.accept_dad": 0,
                                 "net.ipv6.conf.default.accept_dad": 0})
                lines += [f"link set {P.VM_IF} up",
                          f"addr add {v.ipv6} dev {P.VM_IF} nodad",
                          f"route add default via {gateway.SERVICE_GATEWAY_IPV6} "
                          f"dev {P.VM_IF}"]
            sh.ip_batch(v.ns, lines)
            # lab only: this is the guest's own NIC (its end of the veth), which would hand
            # ovs-vswitchd partial checksums as ul0 would (see _fabric). A host cannot set a
            # customer guest's NIC, and a virtio NIC is not a veth (docs/deploy.md); the
            # host's end, the OVS port, is the agent's (Datapath.veth_tx_offload_off).
            sh.in_ns(v.ns, [sh.tool("ethtool"), "-K", P.VM_IF, "tx", "off"])

    # -- controllers --------------------------------------------------------

    def bridge_controllers(self, plan: P.Plan | None = None) -> list[str]:
        """The OpenFlow targets every br-int is given (``Node.controllers``): the central
        controller's, or none (a node's own controller connects to its br-int)."""
        if self.control == "node":
            return []
        plan = plan or self.plan()
        return [plan.controller_ssl_target if self.tls else plan.controller_target]

    def quicken_reconnects(self, plan: P.Plan | None = None) -> None:
        """Central control: every br-int retries its controller each second instead of
        backing off up to 8 s (``max_backoff``; OVS 3.1 takes it only while connected).
        A controller per node connects to its switch itself: nothing to set."""
        if self.control != "central":
            return
        for n in (plan or self.plan()).nodes:
            sh.run([sh.tool("ovs-vsctl"), "set", "Controller", "br-int", "max_backoff=1000"],
                   env=OvsNode(n.name, n.ns, n.run_dir).env())

    @staticmethod
    def switch_target(n: P.NodePlan) -> str:
        """What a node's own controller connects to: its br-int's management socket."""
        return f"unix:{n.run_dir}/br-int.mgmt"

    def controller_target(self, plan: P.Plan | None = None) -> str:
        """How switches and controllers meet, in words (``status``)."""
        plan = plan or self.plan()
        if self.control == "node":
            return f"unix:{plan.run_dir}/nodes/<node>/br-int.mgmt (each node's controller connects)"
        return self.bridge_controllers(plan)[0]

    def controllers(self, plan: P.Plan | None = None) -> list[Controller]:
        """Every controller of the lab: one per node (``node`` control) or the central one."""
        plan = plan or self.plan()
        if self.control == "node":
            return [Controller(n.name, n.ns, self.run_dir / "controllers" / n.name)
                    for n in plan.nodes]
        return [Controller(None, plan.ctl_ns, self.run_dir / "ctl")]

    def controller(self, node: str | None = None) -> Controller:
        """The controller serving ``node``: its own, or the central one. Without a node,
        the central one; a lab with a controller per node needs the node."""
        plan = self.plan()
        if node is not None and node not in {n.name for n in plan.nodes}:
            raise LabError(f"no node {node!r} in the lab; one of: "
                           f"{', '.join(n.name for n in plan.nodes)}")
        ctls = self.controllers(plan)
        if self.control == "central":
            return ctls[0]
        if node is None:
            raise LabError("the lab runs a controller per node: name the node")
        return next(c for c in ctls if c.node == node)

    def controller_pid(self, node: str | None = None) -> int | None:
        """The pid of the controller serving ``node`` (see :meth:`controller`) while it runs."""
        return self.controller(node).pid()

    def controller_log(self, node: str | None = None) -> Path:
        """The log of the controller serving ``node`` (see :meth:`controller`)."""
        return self.controller(node).log

    def controller_command(self, plan: P.Plan, ctl: Controller) -> list[str]:
        """``vnet64-controller`` (as ``python -m vnet64.controller``) as the lab runs it:
        a node's own in the node's network namespace only (nsenter, as its agent),
        connecting to its br-int's management socket; the central one in ``P ctl``
        listening on the management address."""
        args = [sys.executable, "-m", CONTROLLER_MODULE, "--vnet64-nb-remote", self.nb_remote(plan),
                # the endpoints' (and the translator's) MTU: above it, Packet Too Big
                "--vnet64-path-mtu", str(plan.settings.overlay_mtu)]
        if self.tls:
            pki, me = self.pki, self.controller_cert_name(ctl)
            args += ["--vnet64-nb-private-key", pki.key(me), "--vnet64-nb-certificate",
                     pki.cert(me), "--vnet64-nb-ca-cert", pki.controller_ca,
                     "--vnet64-metrics-private-key", pki.key(me), "--vnet64-metrics-certificate",
                     pki.cert(me), "--vnet64-metrics-ca-cert", pki.controller_ca]
        if ctl.node is None:
            if self.tls:   # switches connect with certificates of the switch CA
                args += ["--ctl-privkey", pki.key(me), "--ctl-cert", pki.cert(me),
                         "--ca-certs", pki.switch_ca]
            return [sh.tool("ip"), "netns", "exec", ctl.ns, *args, "--ofp-tcp-listen-port",
                    str(P.OF_PORT), "--ofp-listen-host", str(plan.controller_ip.ip),
                    "--vnet64-metrics", f"{plan.controller_ip.ip}:{P.CONTROLLER_METRICS_PORT}"]
        n = next(n for n in plan.nodes if n.name == ctl.node)
        return [sh.tool("nsenter"), f"--net=/run/netns/{ctl.ns}", "--", *args,
                "--vnet64-node", ctl.node, "--vnet64-switch", self.switch_target(n),
                "--vnet64-metrics", f"{n.management_ip.ip}:{P.CONTROLLER_METRICS_PORT}"]

    @staticmethod
    def controller_cert_name(ctl: Controller) -> str:
        """The name of a controller's certificate in the lab's PKI (:class:`LabPki`)."""
        return "controller" if ctl.node is None else f"controller-{ctl.node}"

    def _start_controllers(self, plan: P.Plan, ctls: list[Controller]) -> str:
        """Start these controllers (``vnet64.controller``, when it is installed); what
        happened, as ``started (pid N)`` or ``started (pids NODE N, ...)``."""
        if not controller_installed():
            return "not installed"
        pids = []
        for ctl in ctls:
            ctl.dir.mkdir(parents=True, exist_ok=True)
            with open(ctl.log, "ab") as log:
                proc = subprocess.Popen(self.controller_command(plan, ctl),
                                        stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            ctl.pidfile.write_text(f"{proc.pid}\n")
            pids.append((ctl, proc.pid))
        if len(pids) == 1 and pids[0][0].node is None:
            return f"started (pid {pids[0][1]})"
        return "started (pids " + ", ".join(f"{c.name} {pid}" for c, pid in pids) + ")"

    def restart_controller(self, node: str | None = None) -> str:
        """Start a controller again exactly as ``up`` does (same command, log and pidfile);
        one still running is stopped first, by its pidfile. ``node``: the controller
        serving that node (the central one in ``central`` control); None: every one."""
        with self._locked():
            plan = self.plan()
            ctls = [self.controller(node)] if node is not None else self.controllers(plan)
            for ctl in ctls:
                pid = ctl.pid()
                if pid:
                    terminate(pid, _comm(pid))
            return self._start_controllers(plan, ctls)

    def _wait_ready(self, plan: P.Plan) -> None:
        """Each node's OVS has learned the underlay route (Geneve can leave at once), and
        every VM and endpoint is bound to its host in the NB."""
        net = str(plan.settings.underlay_cidr)
        for n in plan.nodes:
            node = OvsNode(n.name, n.ns, n.run_dir)
            sh.wait_for(lambda node=node: net in node.appctl("ovs/route/show", check=False), 10,
                        f"the underlay route {net} in {n.name}'s OVS")
            peers = [str(o.underlay_ip.ip) for o in plan.nodes if o.name != n.name]
            sh.wait_for(lambda node=node, peers=peers: all(
                p in node.appctl("tnl/neigh/show", check=False) for p in peers), 10,
                f"{n.name}'s agent to seed the tunnel neighbours {', '.join(peers)}")
        want = {v.name: v.host for v in plan.vifs}
        api = nb_api.connect(NbServer(Path(plan.nb_run_dir)).remote)
        try:
            def bound() -> bool:
                have = {b["logical_port"]: b["node"] for b in api.list_bindings()}
                return all(have.get(name) == host for name, host in want.items())
            sh.wait_for(bound, 15, "every VM and endpoint bound to its host by the agents")
        finally:
            api.close()

    # -- down ---------------------------------------------------------------

    def down(self) -> dict:
        """Remove everything of this lab; safe to run any time, any number of times."""
        with self._locked():
            return self._down()

    def _down(self) -> dict:
        t0 = time.monotonic()
        stopped: list[str] = []
        ours = self.namespaces()
        inodes = {_ns_inode(ns) for ns in ours} - {None}
        if self.run_dir.exists():
            nb = NbServer(self.run_dir / "nb")
            if nb.stop():
                stopped.append("nb")
            pidfiles = []
            for pidfile in sorted(self.run_dir.rglob("*.pid")):
                pid = sh.read_pid(pidfile)
                if not pid or not sh.proc_alive(pid):
                    continue
                comm = PIDFILE_COMMS.get(pidfile.name)
                if (comm and sh.proc_alive(pid, comm)) or _proc_ns_inode(pid) in inodes:
                    pidfiles.append((pidfile, pid))
            # The controllers (one per node) each take ~0.5 s to stop cleanly, and nothing
            # depends on them: told all at once, they stop together.
            told = set()
            for pidfile, pid in pidfiles:
                if pidfile.name == CONTROLLER_PIDFILE:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                        told.add(pid)
            for pidfile, pid in pidfiles:
                if terminate(pid, _comm(pid)) or pid in told:   # (SIGKILL if it lingers)
                    stopped.append(f"{pidfile.name.removesuffix('.pid')}[{pid}]")
        # Anything else still running inside the lab's namespaces was started in them
        # (by the lab, or through `vnet64-lab exec`): stop it so the namespaces can go.
        for ns in ours:
            for pid in sh.netns_pids(ns):
                if terminate(pid, _comm(pid)):
                    stopped.append(f"{_comm(pid) or 'process'}[{pid}] in {ns}")
        for ns in ours:
            sh.run([sh.tool("ip"), "netns", "del", ns], check=False)
        left = self.namespaces()
        if left:
            raise LabError(f"could not delete namespaces: {', '.join(left)}")
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        return {"namespaces": len(ours), "stopped": stopped,
                "seconds": round(time.monotonic() - t0, 3)}

    # -- status -------------------------------------------------------------

    def health(self) -> list[str]:
        """Problems of a lab that should be up (empty when healthy)."""
        problems = []
        try:
            plan = self.plan()
        except (LabError, TopologyError) as exc:
            return [str(exc)]
        have = set(sh.netns_list())
        problems += [f"namespace {ns} missing" for ns in plan.namespaces if ns not in have]
        for n in plan.nodes:
            node = OvsNode(n.name, n.ns, n.run_dir)
            problems += [f"{n.name}: {d} not running" for d in ("ovsdb-server", "ovs-vswitchd")
                         if not node.pid(d)]
            if not self.agent_pid(n.name):
                problems.append(f"{n.name}: {AGENT} not running")
        for t in plan.translators:
            pid = sh.read_pid(Path(t.run_dir) / "tayga.pid")
            if not (pid and sh.proc_alive(pid, "tayga")):
                problems.append(f"{t.host}: TAYGA not running")
            if self.translator_engine == "bpf" and not bpf_attached(t.ns):
                problems.append(f"{t.host}: no BPF translator on {t.ns}'s ovs0")
        if not NbServer(Path(plan.nb_run_dir)).pid():
            problems.append("NB ovsdb-server not running")
        return problems

    def status(self) -> dict:
        state = self.state()
        if not state:
            return {"up": False, "namespaces": self.namespaces()}
        plan = self.plan()
        control = self.control
        ctls = self.controllers(plan)
        by_node = {c.node: c for c in ctls}
        have = set(sh.netns_list())
        nodes = []
        for n in plan.nodes:
            node = OvsNode(n.name, n.ns, n.run_dir)
            info: dict[str, Any] = {
                "name": n.name, "role": n.role, "namespace": n.ns, "ns_exists": n.ns in have,
                "underlay_ip": str(n.underlay_ip.ip), "management_ip": str(n.management_ip.ip),
                "ovsdb_server": node.pid("ovsdb-server"),
                "ovs_vswitchd": node.pid("ovs-vswitchd"), "agent": self.agent_pid(n.name)}
            if control == "node":
                info["controller"] = by_node[n.name].pid()
            if info["ovsdb_server"] and info["ovs_vswitchd"]:
                info.update(_bridges(node))
            nodes.append(info)
        vifs = []
        for v in plan.vifs:
            vifs.append({"name": v.name, "kind": v.kind, "host": v.host, "namespace": v.ns,
                         "port": v.port, "expected": [str(v.ipv4 or v.ipv6)],
                         "addresses": vif_addresses(v.ns) if v.ns in have else None})
            if v.kind == "vm":    # what a service uses to reach it (issue 20, item 5)
                vifs[-1]["platform_ipv6"] = str(plan.topology.platform_address(v.name).ipv6)
        translators = []
        for t in plan.translators:
            pid = sh.read_pid(Path(t.run_dir) / "tayga.pid")
            translators.append({"host": t.host, "namespace": t.ns,
                                "tayga": pid if pid and sh.proc_alive(pid, "tayga") else None,
                                "bpf": bpf_attached(t.ns) if t.ns in have else None})
        running = {c.name: c.pid() for c in ctls}
        if not controller_installed():
            controller = "not installed"
        elif control == "central":
            pid = running["central"]
            controller = f"running (pid {pid})" if pid else "not running"
        else:
            up = [name for name, pid in running.items() if pid]
            down = [name for name, pid in running.items() if not pid]
            controller = (f"one per node, {len(up)} of {len(ctls)} running"
                          + (f" (not running: {', '.join(down)})" if down else ""))
        return {"up": state.get("phase") == "up", "phase": state.get("phase"),
                "topology": state.get("topology"), "prefix": self.prefix,
                "run_dir": str(self.run_dir), "up_seconds": state.get("up_seconds"),
                "vswitchd": state.get("vswitchd"),
                "nb": {"pid": NbServer(Path(plan.nb_run_dir)).pid(),
                       "remotes": [NbServer(Path(plan.nb_run_dir)).remote, self.nb_remote(plan)]},
                "control": control,
                "tls": {"pki": str(self.pki.pki.dir)} if self.tls else None,
                "translator_engine": self.translator_engine,
                "controller": {"state": controller, "target": self.controller_target(plan),
                               "pids": running,
                               "logs": {c.name: str(c.log) for c in ctls}},
                "nodes": nodes, "vifs": vifs, "translators": translators,
                "problems": self.health() if state.get("phase") == "up" else []}


def find_topology(path: str | Path) -> Path:
    """``path`` as given (relative to the current directory), else relative to the repo."""
    path = Path(path)
    repo_relative = Path(__file__).resolve().parents[2] / path
    if not path.exists() and not path.is_absolute() and repo_relative.exists():
        return repo_relative
    return path.resolve()


def vif_addresses(ns: str) -> list[str]:
    """Global addresses on a VM's/endpoint's eth0 (``addr/len``)."""
    proc = sh.ip(ns, "-j", "addr", "show", "dev", P.VM_IF, check=False)
    if proc.returncode:
        return []
    out = []
    for link in json.loads(proc.stdout or "[]"):
        for a in link.get("addr_info", []):
            if a.get("scope") == "global":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return out


def _bridges(node: OvsNode) -> dict:
    try:
        api = node.connect(timeout=5)
    except Exception as exc:  # status must report, not crash
        return {"ovsdb_error": str(exc)}
    try:
        out: dict[str, Any] = {"bridges": {}}
        for br in api.tables["Bridge"].rows.values():
            ctls = [{"target": c.target, "connected": bool(c.is_connected)} for c in br.controller]
            out["bridges"][br.name] = {
                "datapath_type": br.datapath_type,
                "datapath_id": (br.datapath_id or [None])[0],
                "fail_mode": (br.fail_mode or [None])[0],
                "ports": sorted(p.name for p in br.ports),
                "controllers": ctls}
        return out
    finally:
        api.close()


def _ns_inode(ns: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return None


def _proc_ns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
