"""Bring a topology up in network namespaces, take it down, report its state.

``Lab(prefix, run_dir)`` is one lab instance: every namespace it creates starts
with ``prefix`` and every file (pidfiles, databases, logs, TAYGA configs, a copy
of the topology) lives under ``run_dir``. That is all ``down`` needs, so it
works after a crash or a half-finished ``up``: it stops what the pidfiles name,
then anything still running inside the lab's namespaces, deletes every
namespace with the prefix, and removes the run directory.

Order of ``up`` (each step idempotent):

1. validate the topology and its ``lab:`` settings - nothing exists yet;
2. namespaces; the fabric (bridge ``br0`` in ``P fabric``) and the management
   network (bridge ``br-mgmt`` in ``P ctl``, holding the controller's address);
3. the NB ovsdb-server in ``P ctl`` (unix socket + ``ptcp:6641``), loaded from
   the topology; TAYGA's settings are read back from it;
4. per node: ovsdb-server + ovs-vswitchd, then in one transaction br-phy and
   br-int (netdev, secure, datapath id, controller target) and the Geneve port;
   the underlay address on br-phy's tap; tunnel neighbours seeded;
5. per VM / endpoint: namespace, veth into br-int, addresses, MTU, gateway;
6. per host: translator namespace, veth into br-int, TAYGA, policy routing;
7. the controller, if ``vnet64.controller`` is installed.
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
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vnet64 import gateway
from vnet64.nb import api as nb_api
from vnet64.nb.server import NbServer
from vnet64.topology import TopologyError

from . import plan as P
from . import settings as lab_settings
from . import sh
from vnet64.controller.pipeline import (CT_TIMEOUTS, TABLE_PREFIXES, ZONE_V6_DNAT, ZONE_V6_SNAT,
                                       tables_for)

from .ovs import EnsureBridge, EnsureCtTimeouts, EnsurePort, OvsNode, SetSystem, terminate
from .sh import LabError

LOG = logging.getLogger(__name__)
DEFAULT_PREFIX = "v64-"
DEFAULT_RUN_DIR = "/run/vnet64-lab"
DEFAULT_TOPOLOGY = "topologies/two-tenants.yaml"
LOCK_DIR = Path("/run/lock")  # a 0-byte lock file per prefix stays there, as usual
NODE_RMEM_DEFAULT = 4 << 20   # bytes: a node namespace's default socket receive buffer (see _namespaces)
STATE_FILE = "state.json"
TOPOLOGY_COPY = "topology.yaml"
CONTROLLER_MODULE = "vnet64.controller"
# OpenFlow10 too, so a plain `ovs-ofctl dump-flows br-int` (no -O) works in the lab.
OF_PROTOCOLS = ["OpenFlow10", "OpenFlow13", "OpenFlow14", "OpenFlow15"]
PIDFILE_COMMS = {"ovsdb-server.pid": "ovsdb-server", "ovs-vswitchd.pid": "ovs-vswitchd",
                 "nb.pid": "ovsdb-server", "tayga.pid": "tayga"}


def check_prefix(prefix: str) -> str:
    import re
    if not re.fullmatch(r"[a-z][a-z0-9]{0,7}-", prefix):
        raise LabError(f"lab prefix must be 1-8 lowercase letters/digits and a '-', got {prefix!r}")
    return prefix


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


class Lab:
    def __init__(self, prefix: str | None = None, run_dir: str | Path | None = None):
        self.prefix = check_prefix(prefix or os.environ.get("VNET64_LAB_PREFIX", DEFAULT_PREFIX))
        self.run_dir = Path(run_dir or os.environ.get("VNET64_LAB_RUN_DIR", DEFAULT_RUN_DIR))

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
                          vswitchd=vswitchd, prefix=self.prefix, started=time.time())
        self._namespaces(plan)
        self._fabric(plan)
        timings.mark("namespaces+networks")
        with ThreadPoolExecutor(max_workers=len(plan.nodes) + 1) as pool:
            nb_future = pool.submit(self._nb, plan)
            node_futures = [pool.submit(self._node, plan, n) for n in plan.nodes]
            platform = nb_future.result()
            # The controller listens before the bridges first try to connect: OVS backs
            # its reconnects off (up to 8 s), so a late controller waits for them.
            controller = self._controller(plan)
            for f in node_futures:
                f.result()
        self._conntrack(plan, platform.get("vnet_zones", {}))
        timings.mark("nb+nodes")
        self._vifs(plan)
        timings.mark("vms+endpoints")
        self._translators(plan, platform)
        timings.mark("translators")
        self._wait_ready(plan)
        timings.mark("ready")
        self._write_state(phase="up", timings=timings.steps, up_seconds=timings.total,
                          controller=controller)
        return {"already_up": False, "topology": str(topology_path), "seconds": timings.total,
                "steps": timings.steps, "controller": controller}

    def _namespaces(self, plan: P.Plan) -> None:
        existing = set(sh.netns_list())
        for ns in plan.namespaces:
            if ns not in existing:
                sh.run([sh.tool("ip"), "netns", "add", ns])
            sh.ip(ns, "link", "set", "lo", "up")
        for n in plan.nodes:
            # The underlay is IPv4; no kernel IPv6 (router solicitations, MLD) on the veths
            # that are OVS ports - they would enter br-int as if a VM had sent them.
            # The kernel also sees what arrives on ul0 (the userspace datapath reads it
            # with a packet socket): with arp_ignore=1 only br-phy, which holds the
            # underlay IP, answers ARP for it, never ul0 with its own MAC - frames to
            # ul0's MAC would miss OVS's tunnel termination and vanish.
            # The userspace datapath reads every port through a packet socket with the
            # namespace's default receive buffer (OVS sets none): 208 KiB dropped a burst
            # whenever ovs-vswitchd waited for a core (host1's sockets, 1,000 new TCP
            # connections/s with two busy-looping processes on the 2 cores: 66 drops and
            # 8 SYNs sent again in 40 s). Set before ovs-vswitchd opens them.
            sh.sysctl(n.ns, {"net.ipv6.conf.all.disable_ipv6": 1,
                             "net.ipv6.conf.default.disable_ipv6": 1,
                             "net.ipv4.conf.all.arp_ignore": 1,
                             "net.ipv4.conf.default.arp_ignore": 1,
                             "net.core.rmem_default": NODE_RMEM_DEFAULT})

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
                f"link add {P.UNDERLAY_IF} mtu {mtu} type veth peer name {n.fabric_if} "
                f"mtu {mtu} netns {plan.fabric_ns}",
                f"link add {P.MGMT_IF} type veth peer name {n.mgmt_peer_if} netns {plan.ctl_ns}",
                f"link set {P.UNDERLAY_IF} up",
                f"addr add {n.management_ip} dev {P.MGMT_IF}",
                f"link set {P.MGMT_IF} up"])
            fabric_lines += [f"link set {n.fabric_if} master {P.FABRIC_BRIDGE} up"]
            ctl_lines += [f"link set {n.mgmt_peer_if} master {P.MGMT_BRIDGE} up"]
            sh.in_ns(n.ns, [sh.tool("ethtool"), "-K", P.UNDERLAY_IF, "tx", "off"])
        sh.ip_batch(plan.fabric_ns, fabric_lines)
        sh.ip_batch(plan.ctl_ns, ctl_lines)

    def _nb(self, plan: P.Plan) -> dict:
        """Start the NB in the controller namespace and load the topology into it."""
        server = NbServer(Path(plan.nb_run_dir), netns=plan.ctl_ns)
        server.start()
        api = nb_api.connect(server.remote)
        try:
            api.load_topology(plan.topology)
            # the TCP remote the controller uses, kept in the NB with its probe (plan.py)
            api.set_connections([plan.nb_listen_remote], inactivity_probe=P.NB_INACTIVITY_PROBE_MS)
            info = api.platform_info() or {}
            info["vnet_zones"] = {v["name"]: v["ct_zone"] for v in api.list("vnet")}
            return info
        finally:
            api.close()

    def _conntrack(self, plan: P.Plan, vnet_zones: dict[str, int]) -> None:
        """Timeout policies for the conntrack zones each host uses (DESIGN §4b "Ports")."""
        for n in plan.nodes:
            if n.role != "host":
                continue
            zones = {vnet_zones[vm.vnet] for vm in plan.topology.vms if vm.host == n.name}
            zones |= {ZONE_V6_SNAT, ZONE_V6_DNAT}
            api = OvsNode(n.name, n.ns, n.run_dir).connect()
            try:
                api.run(EnsureCtTimeouts(api, sorted(zones), CT_TIMEOUTS))
            finally:
                api.close()

    def _node(self, plan: P.Plan, n: P.NodePlan) -> None:
        node = OvsNode(n.name, n.ns, n.run_dir)
        node.start()
        # Veths for everything this node's br-int carries, before the ports are added.
        vifs = plan.vifs_on(n.name)
        for v in vifs:
            sh.ip_batch(n.ns, [
                f"link add {v.port} mtu {v.mtu} type veth peer name {P.VM_IF} mtu {v.mtu} "
                f"netns {v.ns}",
                f"link set {v.port} up"])
        if n.role == "host":
            t = plan.translator(n.name)
            sh.ip_batch(n.ns, [
                f"link add {P.XLAT_PORT} mtu {t.mtu} type veth peer name {P.XLAT_NS_IF} "
                f"mtu {t.mtu} address {t.mac} netns {t.ns}",
                f"link set {P.XLAT_PORT} up"])
        for dev in [v.port for v in vifs] + ([P.XLAT_PORT] if n.role == "host" else []):
            sh.in_ns(n.ns, [sh.tool("ethtool"), "-K", dev, "tx", "off"])

        s = plan.settings
        api = node.connect()
        try:
            commands = [
                SetSystem(api, {"system-id": n.name, "hostname": n.name,
                                "vnet64-role": n.role}),
                EnsureBridge(api, "br-phy", other_config={"hwaddr": n.underlay_mac},
                             internal_mtu=s.underlay_mtu,
                             external_ids={"vnet64-node": n.name}),
                EnsurePort(api, "br-phy", P.UNDERLAY_IF),
                # The controller target is part of the transaction that creates br-int:
                # nothing can install a flow before it is set.
                EnsureBridge(api, "br-int", fail_mode="secure",
                             other_config={"datapath-id": f"{n.datapath_id:016x}",
                                           "disable-in-band": "true"},
                             protocols=OF_PROTOCOLS, controllers=[plan.controller_target],
                             internal_mtu=s.overlay_mtu,
                             external_ids={"vnet64-node": n.name, "vnet64-role": n.role},
                             flow_tables={tid: name for name, tid in tables_for(n.role).stages},
                             table_prefixes=TABLE_PREFIXES[n.role]),
                EnsurePort(api, "br-int", P.GENEVE_PORT, type="geneve",
                           options={"remote_ip": "flow", "key": "flow"},
                           ofport_request=P.OFPORT_GENEVE,
                           external_ids={"vnet64-kind": "tunnel"}),
            ]
            ports = [P.UNDERLAY_IF, P.GENEVE_PORT]
            if n.role == "host":
                t = plan.translator(n.name)
                commands.append(EnsurePort(
                    api, "br-int", P.XLAT_PORT, ofport_request=P.OFPORT_XLAT,
                    external_ids={"vnet64-kind": "translator", "iface-id": f"xlat:{n.name}",
                                  "attached-mac": t.mac}))
                ports.append(P.XLAT_PORT)
            for v in vifs:
                ext = {"vnet64-kind": v.kind, "iface-id": v.name, "attached-mac": v.mac}
                if v.vnet:
                    ext["vnet64-vnet"] = v.vnet
                commands.append(EnsurePort(api, "br-int", v.port, ofport_request=v.ofport,
                                           external_ids=ext))
                ports.append(v.port)
            api.run(*commands)
            node.wait_ports(api, ports)
        finally:
            api.close()

        # The underlay address lives on br-phy's tap (created by vswitchd).
        for dev in ("br-phy", "br-int"):
            sh.wait_for(lambda d=dev: sh.ip(n.ns, "link", "show", d, check=False).returncode == 0,
                        10, f"the {dev} device in {n.ns}")
        # br-int's own tap carries no address; it is up so tests and users can capture on it.
        sh.ip_batch(n.ns, [f"addr replace {n.underlay_ip} dev br-phy", "link set br-phy up",
                           "link set br-int up"])
        # OVS drops the packet that triggers a tunnel-neighbour lookup: seed them all.
        for other in plan.nodes:
            if other.name != n.name:
                node.appctl("tnl/neigh/set", "br-phy", str(other.underlay_ip.ip),
                            other.underlay_mac)

    def _vifs(self, plan: P.Plan) -> None:
        for v in plan.vifs:
            lines = [f"link set {P.VM_IF} address {v.mac}"]
            if v.kind == "vm":
                sh.sysctl(v.ns, {"net.ipv6.conf.all.disable_ipv6": 1,
                                 "net.ipv6.conf.default.disable_ipv6": 1})
                lines += [f"addr add {v.ipv4} dev {P.VM_IF}", f"link set {P.VM_IF} up",
                          f"route add default via {v.ipv4_gateway} dev {P.VM_IF}"]
            else:
                sh.sysctl(v.ns, {"net.ipv6.conf.all.accept_dad": 0,
                                 "net.ipv6.conf.default.accept_dad": 0})
                lines += [f"link set {P.VM_IF} up",
                          f"addr add {v.ipv6} dev {P.VM_IF} nodad",
                          f"route add default via {gateway.SERVICE_GATEWAY_IPV6} "
                          f"dev {P.VM_IF}"]
            sh.ip_batch(v.ns, lines)
            sh.in_ns(v.ns, [sh.tool("ethtool"), "-K", P.VM_IF, "tx", "off"])

    def _translators(self, plan: P.Plan, platform: dict) -> None:
        prefix = platform.get("translator_prefix") or str(plan.topology.platform.translator_prefix)
        for t in plan.translators:
            run_dir = Path(t.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            conf = run_dir / "tayga.conf"
            conf.write_text(tayga_conf(t, prefix))
            sh.sysctl(t.ns, {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1,
                             "net.ipv4.conf.all.rp_filter": 0,
                             "net.ipv4.conf.default.rp_filter": 0,
                             "net.ipv6.conf.all.accept_dad": 0,
                             "net.ipv6.conf.default.accept_dad": 0})
            sh.in_ns(t.ns, [sh.tool("ethtool"), "-K", P.XLAT_NS_IF, "tx", "off"])
            sh.in_ns(t.ns, [sh.tool("tayga"), "--mktun", "-c", str(conf)])
            sh.run([sh.tool("ip"), "netns", "exec", t.ns, sh.tool("nft"), "-f", "-"],
                   input=translator_nft(P.XLAT_NS_IF))
            gw = gateway.GATEWAY_MAC
            to_tun, to_ovs = P.XLAT_TABLE_TO_TUN, P.XLAT_TABLE_TO_OVS
            # From br-int into TAYGA, from TAYGA back to br-int: by incoming interface,
            # so a translated packet can never loop into the tun again.
            rules = [f"rule add iif {P.XLAT_NS_IF} lookup {to_tun} pref 1000",
                     f"rule add iif {P.XLAT_TUN} lookup {to_ovs} pref 1001",
                     f"route add default dev {P.XLAT_TUN} table {to_tun}"]
            frags = P.XLAT_TABLE_FRAGMENTS
            sh.ip_batch(t.ns, [
                f"link set {P.XLAT_NS_IF} up",
                f"link set {P.XLAT_TUN} mtu {t.mtu} up",
                *rules,
                f"rule add iif {P.XLAT_NS_IF} fwmark {P.XLAT_FRAGMENT_MARK} lookup {frags} pref 999",
                f"route add default dev {P.XLAT_TUN} mtu lock {P.XLAT_FRAGMENT_MTU} table {frags}",
                f"route add default via {P.XLAT_NEXTHOP_V4} dev {P.XLAT_NS_IF} onlink "
                f"table {to_ovs}",
                f"neigh replace {P.XLAT_NEXTHOP_V4} lladdr {gw} dev {P.XLAT_NS_IF} nud permanent"])
            sh.ip_batch(t.ns, [
                *rules,
                f"route add default via {gateway.SERVICE_GATEWAY_IPV6} dev {P.XLAT_NS_IF} "
                f"table {to_ovs}",
                f"neigh replace {gateway.SERVICE_GATEWAY_IPV6} lladdr {gw} "
                f"dev {P.XLAT_NS_IF} nud permanent"], family="-6")
            pidfile = run_dir / "tayga.pid"
            sh.in_ns(t.ns, [sh.tool("tayga"), "-c", str(conf), "-p", str(pidfile)])
            sh.wait_for(lambda f=pidfile: (pid := sh.read_pid(f)) and sh.proc_alive(pid, "tayga"),
                        10, f"TAYGA of {t.host}")

    def _controller(self, plan: P.Plan) -> str:
        """Start ``vnet64.controller`` in the controller namespace when it is installed."""
        if not controller_installed():
            return "not installed"
        ctl_dir = self.run_dir / "ctl"
        ctl_dir.mkdir(parents=True, exist_ok=True)
        with open(ctl_dir / "controller.log", "ab") as log:
            proc = subprocess.Popen(
                [sh.tool("ip"), "netns", "exec", plan.ctl_ns, sys.executable, "-m",
                 CONTROLLER_MODULE, "--ofp-listen-host", str(plan.controller_ip.ip),
                 "--ofp-tcp-listen-port", str(P.OF_PORT),
                 "--vnet64-nb-remote", plan.nb_tcp_remote,
                 # the endpoints' (and the translator's) MTU: above it, Packet Too Big
                 "--vnet64-path-mtu", str(plan.settings.overlay_mtu)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        (ctl_dir / "controller.pid").write_text(f"{proc.pid}\n")
        return f"started (pid {proc.pid})"

    def restart_controller(self) -> str:
        """Start the lab's controller again exactly as ``up`` does (same command, log and
        pidfile); one still running is stopped first, by its pidfile."""
        with self._locked():
            plan = self.plan()
            pid = sh.read_pid(self.run_dir / "ctl" / "controller.pid")
            if pid and sh.proc_alive(pid) and _proc_ns_inode(pid) == _ns_inode(plan.ctl_ns):
                terminate(pid, _comm(pid))
            return self._controller(plan)

    def _wait_ready(self, plan: P.Plan) -> None:
        """Each node's OVS has learned the underlay route (Geneve can leave at once)."""
        net = str(plan.settings.underlay_cidr)
        for n in plan.nodes:
            node = OvsNode(n.name, n.ns, n.run_dir)
            sh.wait_for(lambda node=node: net in node.appctl("ovs/route/show", check=False), 10,
                        f"the underlay route {net} in {n.name}'s OVS")

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
            for pidfile in sorted(self.run_dir.rglob("*.pid")):
                pid = sh.read_pid(pidfile)
                if not pid or not sh.proc_alive(pid):
                    continue
                comm = PIDFILE_COMMS.get(pidfile.name)
                ours_ = (comm and sh.proc_alive(pid, comm)) or _proc_ns_inode(pid) in inodes
                if ours_ and terminate(pid, _comm(pid)):
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
        for t in plan.translators:
            pid = sh.read_pid(Path(t.run_dir) / "tayga.pid")
            if not (pid and sh.proc_alive(pid, "tayga")):
                problems.append(f"{t.host}: TAYGA not running")
        if not NbServer(Path(plan.nb_run_dir)).pid():
            problems.append("NB ovsdb-server not running")
        return problems

    def status(self) -> dict:
        state = self.state()
        if not state:
            return {"up": False, "namespaces": self.namespaces()}
        plan = self.plan()
        have = set(sh.netns_list())
        nodes = []
        for n in plan.nodes:
            node = OvsNode(n.name, n.ns, n.run_dir)
            info: dict[str, Any] = {
                "name": n.name, "role": n.role, "namespace": n.ns, "ns_exists": n.ns in have,
                "underlay_ip": str(n.underlay_ip.ip), "management_ip": str(n.management_ip.ip),
                "ovsdb_server": node.pid("ovsdb-server"),
                "ovs_vswitchd": node.pid("ovs-vswitchd")}
            if info["ovsdb_server"] and info["ovs_vswitchd"]:
                info.update(_bridges(node))
            nodes.append(info)
        vifs = []
        for v in plan.vifs:
            vifs.append({"name": v.name, "kind": v.kind, "host": v.host, "namespace": v.ns,
                         "port": v.port, "expected": [str(v.ipv4 or v.ipv6)],
                         "addresses": vif_addresses(v.ns) if v.ns in have else None})
        translators = []
        for t in plan.translators:
            pid = sh.read_pid(Path(t.run_dir) / "tayga.pid")
            translators.append({"host": t.host, "namespace": t.ns,
                                "tayga": pid if pid and sh.proc_alive(pid, "tayga") else None})
        ctl_pid = sh.read_pid(self.run_dir / "ctl" / "controller.pid")
        if not controller_installed():
            controller = "not installed"
        elif ctl_pid and sh.proc_alive(ctl_pid):
            controller = f"running (pid {ctl_pid})"
        else:
            controller = "not running"
        return {"up": state.get("phase") == "up", "phase": state.get("phase"),
                "topology": state.get("topology"), "prefix": self.prefix,
                "run_dir": str(self.run_dir), "up_seconds": state.get("up_seconds"),
                "vswitchd": state.get("vswitchd"),
                "nb": {"pid": NbServer(Path(plan.nb_run_dir)).pid(),
                       "remotes": [NbServer(Path(plan.nb_run_dir)).remote, plan.nb_tcp_remote]},
                "controller": {"state": controller, "target": plan.controller_target},
                "nodes": nodes, "vifs": vifs, "translators": translators,
                "problems": self.health() if state.get("phase") == "up" else []}


def find_topology(path: str | Path) -> Path:
    """``path`` as given (relative to the current directory), else relative to the repo."""
    path = Path(path)
    repo_relative = Path(__file__).resolve().parents[2] / path
    if not path.exists() and not path.is_absolute() and repo_relative.exists():
        return repo_relative
    return path.resolve()


def translator_nft(from_ovs: str) -> str:
    """The translator namespace's nftables tables (replaced whole: idempotent), for what
    TAYGA 0.9.2 gets wrong.

    IPv6 with a routing header whose Segments Left is not 0: TAYGA skips routing headers
    and would translate it to the IPv6 destination; RFC 7915 5.1 says it MUST NOT be
    translated, and an ICMPv6 Parameter Problem SHOULD go back. At the ingress of the
    veth from br-int it is counted (named counter ``P.XLAT_NFT_RH_COUNTER``) and sent
    straight back out of it, unchanged: br-int punts it (its source is a pair's alias,
    never TAYGA's) and the controller answers the service (controller customer module,
    "Routing headers").

    A VM's fragmented IPv4 datagrams: a VM fragments a datagram larger than its MTU into
    pieces of up to that MTU; TAYGA (0.9.2) translates each into an IPv6 fragment 28
    bytes larger and, that being over 1280 bytes (the only IPv6 MTU it assumes
    off-link), cuts it again into a 1232-byte piece and a small one - which the IPv6 zones' reassembly on br-int refuses as too
    small ("v6 frags too small"), so the datagram never reached the service. So here:
    fragments from br-int are marked before the kernel's defragmentation (priority -450,
    before -400), reassembled, and the mark routes the datagram into the tun by a route
    whose MTU is XLAT_FRAGMENT_MTU, so it is fragmented again into pieces TAYGA
    translates into IPv6 fragments of at most 1280 bytes without cutting them. Whole
    packets are not marked: their path and MTU stay.

    Defragmentation without connection tracking (br-int's conntrack is the stateful one):
    a ``tproxy`` rule turns the kernel's IPv4 defragmentation on for the namespace when
    it is added, and sits in a chain nothing jumps to, so it never runs. (A ``ct`` rule
    would bring conntrack's hooks too: measured 0.96x VM -> service TCP throughput, against
    0.98x, within noise, this way.)"""
    return (f"table ip {P.XLAT_NFT_TABLE}\n"
            f"delete table ip {P.XLAT_NFT_TABLE}\n"
            f"table ip {P.XLAT_NFT_TABLE} {{\n"
            f"  chain mark_fragments {{\n"
            f"    type filter hook prerouting priority -450; policy accept;\n"
            f"    iifname \"{from_ovs}\" ip frag-off & 0x3fff != 0 meta mark set {P.XLAT_FRAGMENT_MARK}\n"
            f"  }}\n"
            f"  chain defragment_on {{\n"
            f"    meta l4proto tcp tproxy to :1\n"
            f"  }}\n"
            f"}}\n"
            f"table netdev {P.XLAT_NFT_TABLE}\n"
            f"delete table netdev {P.XLAT_NFT_TABLE}\n"
            f"table netdev {P.XLAT_NFT_TABLE} {{\n"
            f"  counter {P.XLAT_NFT_RH_COUNTER} {{ }}\n"
            f"  chain routing_header {{\n"
            f"    type filter hook ingress device \"{from_ovs}\" priority 0; policy accept;\n"
            f"    meta protocol ip6 rt seg-left != 0 counter name {P.XLAT_NFT_RH_COUNTER} "
            f"fwd to \"{from_ovs}\"\n"
            f"  }}\n"
            f"}}\n")


def tayga_conf(t: P.TranslatorPlan, prefix: str) -> str:
    return (f"# generated by vnet64-lab for host {t.host} from the NB platform settings\n"
            f"tun-device {P.XLAT_TUN}\n"
            f"ipv4-addr {t.ipv4}\n"
            f"prefix {prefix}\n"
            f"data-dir {t.run_dir}\n")


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
