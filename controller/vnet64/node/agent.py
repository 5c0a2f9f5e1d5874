"""``vnet64-node``'s work: bring one node up from the NB and keep it converged.

One agent runs on every host and on the appliance, as ovn-controller runs on every
chassis. It reads its node's row from the NB and writes the node's own Open vSwitch
database and kernel; it never programs flows (the controller does). Its loop:

1. connect to the NB (retrying with backoff while it does not answer) and to the local
   ovsdb-server;
2. check its input before writing anything: the node is in the NB; no other local
   bridge already uses its datapath id; its br-int is not another node's; its underlay
   IP is on this host (``system``: on any interface; ``netdev``: on the uplink, or
   already on br-phy);
3. bring the node up (:meth:`Agent.converge`): Open_vSwitch external_ids, br-phy with
   the uplink and the underlay address (netdev only), br-int (datapath id, fail-mode
   secure, OpenFlow versions, the NB's controller targets out of band, Flow_Table
   names and prefixes for the role), geneve0 with ``local_ip``, and on hosts the
   translator namespace with TAYGA and conntrack timeout policies for every VNet zone;
4. then every ``interval`` (0.2 s): when the NB or the local database changed, converge
   again (a VNet added or removed changes the timeout policies within a second), bind
   ports (``bind_ports``), seed tunnel neighbours still missing (netdev), and restart
   TAYGA if it died.

Ports are bound the libvirt/OVN way: an Interface on br-int whose
``external_ids:iface-id`` names a VM or service endpoint of the NB, and whose
``attached-mac`` is that object's MAC, is recorded in the NB as a Port_Binding (node,
interface, ofport); the VM's host follows the binding. A wrong MAC is logged and the
port is not bound. A port that disappears is unbound, unless its logical port is
already bound on another node (a live migration finished first there).

Every step compares before it writes: a restarted agent changes nothing on a node that
is already as wanted, and traffic keeps flowing. ``cleanup`` removes what the agent made
(rows marked ``external_ids:vnet64-node=<node>``, the translator namespace, the NB
bindings of the node, the sysctls and addresses it changed, from its state file) and
nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, ip_interface
from pathlib import Path
from typing import Any, Iterable

from .. import prom
from ..nb import api as nb_api
from ..nb import commands as nb_cmd
from ..nb.commands import vm_address
from ..ports import INTEGRATION_BRIDGE, translator_mac
from . import config, drops, sh
from .datapath import Datapath
from .ovsdb import (DeleteBridge, EnsureBridge, EnsurePort, NodeOvsdb, SetSsl, SetSystem,
                    SyncCtTimeouts, bridge_of_datapath_id, connect, default_remote, get,
                    interfaces_with_iface_id, port_errors, ssl_files)
from .metrics import NodeCollector
from .translator import DEFAULT_ENGINE, DEFAULT_IPV4, DEFAULT_NETNS, Translator

LOG = logging.getLogger("vnet64.node")
DEFAULT_RUN_DIR = "/run/vnet64-node"
STATE_FILE = "state.json"
STATUS_FILE = "status.json"
BACKOFF = (0.5, 1, 2, 4, 8)
NEIGH_PROBE_PORT = 9          # discard: a datagram to it makes the kernel resolve the peer


class AgentError(Exception):
    """Bad input or a node that cannot be brought up; the message says what and why.
    Raised before anything is written when it is about the input."""


@dataclass(frozen=True)
class Options:
    name: str
    nb: str
    datapath: Datapath
    ovs: str | None = None
    uplink: str | None = None
    translator_netns: str = DEFAULT_NETNS
    translator_ipv4: IPv4Address = DEFAULT_IPV4
    translator_engine: str = DEFAULT_ENGINE      # translator.ENGINES
    run_dir: Path = Path(DEFAULT_RUN_DIR)
    interval: float = 0.2
    nb_tls: Any = None          # vnet64.ovsdb.TlsFiles for an ssl: NB (--nb-private-key ...)
    # Open vSwitch's SSL settings (--ovs-private-key ...: private key, certificate, CA
    # certificate), for br-int's ssl: controller targets; None: left as they are
    ovs_ssl: tuple[str, str, str] | None = None
    # Prometheus metrics (node/metrics.py) served on this (IP, port); None: not served
    metrics: tuple[str, int] | None = None
    # ... over HTTPS with these files, scrapers' client certificates required; None: HTTP
    metrics_tls: Any = None


# ---------------------------------------------------------------------------
# Local facts (this host's kernel)


def addresses() -> dict[str, list[IPv4Interface]]:
    """IPv4 addresses of this namespace's interfaces: device -> [address/prefix]."""
    out: dict[str, list[IPv4Interface]] = {}
    for link in json.loads(sh.ip_ns(None, "-j", "-4", "addr", "show").stdout or "[]"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                out.setdefault(link["ifname"], []).append(
                    ip_interface(f"{a['local']}/{a['prefixlen']}"))
    return out


def uplink_facts(name: str, underlay_ip: IPv4Address) -> config.Uplink:
    proc = sh.ip_ns(None, "-j", "link", "show", "dev", name, check=False)
    if proc.returncode:
        raise AgentError(f"uplink {name}: no such interface on this host")
    link = json.loads(proc.stdout)[0]
    here = [a for a in addresses().get(name, []) if a.ip == underlay_ip]
    return config.Uplink(name=name, mac=link["address"], mtu=int(link["mtu"]),
                         address=here[0] if here else None)


def where_is(ip: IPv4Address) -> tuple[str, IPv4Interface] | None:
    for dev, addrs in addresses().items():
        for a in addrs:
            if a.ip == ip:
                return dev, a
    return None


# ---------------------------------------------------------------------------
# What the agent reads of the NB

# Small tables (a platform's nodes, VNets, ...): every row.
NB_EVERY_ROW = ("Platform", "Connection", "Region", "VNet", "Subnet", "Node", "Service")
# Tables that grow with the platform: only the rows of this node's ports.
NB_PER_PORT = ("VM", "Endpoint", "Port_Binding", "Host_Mapping", "Subscription")


def nb_conditions(node_uuid: Any, names: Iterable[str], mapped: Iterable[str]) -> dict[str, list]:
    """The NB rows a node agent replicates (OVSDB ``monitor_cond`` clauses, ORed), as
    ovn-controller follows its bindings: the small tables whole; the VMs and endpoints
    its br-int interfaces name (``names``: their iface-ids); the port bindings of those
    names (on any node: a migration's other end) and of this node (``node_uuid``: to
    unbind a port that is gone); the host mappings of those VMs (``mapped``: their
    platform IPv6, which a bind moves with the VM). No subscription. A node with no port
    reads a few hundred rows, not the platform's hundreds of thousands."""
    names, mapped = sorted(set(names)), sorted(set(mapped))
    out: dict[str, list] = {t: [True] for t in NB_EVERY_ROW}
    by_name = [["name", "==", n] for n in names] or [False]
    out["VM"] = by_name
    out["Endpoint"] = list(by_name)
    out["Port_Binding"] = ([["node", "==", ["uuid", str(node_uuid)]]] if node_uuid else []) + \
        [["logical_port", "==", n] for n in names] or [False]
    out["Host_Mapping"] = [["ipv6", "==", a] for a in mapped] or [False]
    out["Subscription"] = [False]
    return out


# ---------------------------------------------------------------------------
# The agent


class Agent:
    def __init__(self, opts: Options):
        self.o = opts
        self.nb: nb_api.NbApi | None = None
        self.ovs: NodeOvsdb | None = None
        self.facts: config.NodeFacts | None = None
        self.translator: Translator | None = None
        self.metrics_server: Any = None
        self.seeded: set[IPv4Address] = set()
        self.offload_done: set[str] = set()
        self.refused: dict[str, str] = {}      # interface -> why it is not bound (logged once)
        # Interfaces (by row uuid) already looked at: one that is new here may take its
        # logical port from another node (a live migration's destination); one seen before
        # whose logical port went elsewhere does not take it back. None until the first scan.
        self.seen_ifaces: set[str] | None = None
        self.switch_pid: int | None = None     # ovs-vswitchd's, to notice a restart
        self.translator_settings: tuple | None = None   # (prefix, ipv4) last applied
        self._seen = (None, None)
        self.cond_pending = False      # NB rows of new iface-ids asked for, not all in yet
        self.reported: dict | None = None
        self.nb_cfg: int | None = None          # the newest NB change applied (Platform.nb_cfg)
        self.nb_lag_seconds: float | None = None   # its commit to applied here (metrics)

    # -- connections --------------------------------------------------------

    def connect_nb(self, stop: threading.Event) -> nb_api.NbApi:
        """The NB, retried with backoff until it answers (or ``stop``)."""
        attempt, t0 = 0, time.monotonic()
        while not stop.is_set():
            try:
                api = nb_api.connect(self.o.nb, timeout=10, conditions=nb_conditions(None, (), ()),
                                     tls=self.o.nb_tls)
                LOG.info("connected to the NB at %s (%.1f s)", self.o.nb, time.monotonic() - t0)
                return api
            except nb_api.NbUnavailable as exc:
                wait = BACKOFF[min(attempt, len(BACKOFF) - 1)]
                LOG.warning("%s; retrying in %gs", exc, wait)
                attempt += 1
                stop.wait(wait)
        raise AgentError("stopped before the NB answered")

    def connect_ovs(self, stop: threading.Event) -> NodeOvsdb:
        attempt = 0
        while not stop.is_set():
            try:
                return connect(self.o.ovs, timeout=10)
            except Exception as exc:   # ovsdbapp wraps socket errors and timeouts
                wait = BACKOFF[min(attempt, len(BACKOFF) - 1)]
                LOG.warning("cannot reach the local Open vSwitch database at %s (%s); "
                            "retrying in %gs", self.o.ovs or "its default socket",
                            type(exc).__name__, wait)
                attempt += 1
                stop.wait(wait)
        raise AgentError("stopped before Open vSwitch answered")

    # -- facts and checks ------------------------------------------------------

    def read_facts(self) -> config.NodeFacts:
        rows = {r.name: r for r in self.nb.tables["Node"].rows.values()}
        row = rows.get(self.o.name)
        if row is None:
            raise AgentError(f"node {self.o.name!r} is not in the NB at {self.o.nb} "
                             f"(nodes: {', '.join(sorted(rows)) or 'none'}); "
                             f"add it with 'vnet64 node add' or pass --name")
        return config.NodeFacts(
            name=row.name, role=row.role, underlay_ip=IPv4Address(row.underlay_ip),
            datapath_id=row.datapath_id,
            controllers=tuple(sorted(get(row, "controllers", []) or [])),
            peers=tuple(sorted(IPv4Address(r.underlay_ip) for n, r in rows.items()
                               if n != row.name)))

    def check(self, facts: config.NodeFacts) -> config.Uplink | None:
        """Bad input is refused before anything is written."""
        dpid = config.datapath_id_text(facts.datapath_id)
        other = bridge_of_datapath_id(self.ovs, dpid, INTEGRATION_BRIDGE)
        if other:
            raise AgentError(f"node {facts.name}: datapath id {dpid} is already used by bridge "
                             f"{other} on this host")
        br = next((b for b in self.ovs.rows("Bridge") if b.name == INTEGRATION_BRIDGE), None)
        owner = dict(br.external_ids).get("vnet64-node") if br is not None else None
        if owner and owner != facts.name:
            raise AgentError(f"this host's {INTEGRATION_BRIDGE} belongs to node {owner}, not "
                             f"{facts.name} (run 'vnet64-node cleanup --name {owner}' first)")
        uplink = None
        if self.o.datapath.needs_br_phy:
            if not self.o.uplink:
                raise AgentError("the netdev datapath needs --uplink IFACE (the NIC of the "
                                 "underlay, which joins br-phy)")
            uplink = uplink_facts(self.o.uplink, facts.underlay_ip)
            found = where_is(facts.underlay_ip)
            if found is None or found[0] not in (self.o.uplink, config.PHYSICAL_BRIDGE):
                raise AgentError(f"node {facts.name}: underlay IP {facts.underlay_ip} is not on "
                                 f"this host's uplink {self.o.uplink} (nor on "
                                 f"{config.PHYSICAL_BRIDGE})"
                                 + (f"; it is on {found[0]}" if found else ""))
            if uplink.address is None:
                uplink = config.Uplink(uplink.name, uplink.mac, uplink.mtu, found[1])
        elif where_is(facts.underlay_ip) is None:
            raise AgentError(f"node {facts.name}: underlay IP {facts.underlay_ip} is not on "
                             f"this host")
        if any(t.startswith("ssl:") for t in facts.controllers) and self.o.ovs_ssl is None \
                and ssl_files(self.ovs) is None:
            LOG.warning("node %s: br-int's controller targets %s need Open vSwitch's SSL "
                        "settings, and there are none: give --ovs-private-key, "
                        "--ovs-certificate and --ovs-ca-cert (or 'ovs-vsctl set-ssl')",
                        facts.name, ", ".join(facts.controllers))
        if not facts.controllers:
            LOG.info("node %s has no OpenFlow controller target in the NB: br-int waits for a "
                     "controller to connect to its management socket (%s/%s.mgmt; "
                     "vnet64-controller --vnet64-node %s --vnet64-switch unix:...), as with a "
                     "controller per node; a central one needs 'vnet64 node set %s --controller "
                     "tcp:IP:6653'", facts.name, self.ovs_rundir(), INTEGRATION_BRIDGE,
                     facts.name, facts.name)
        return uplink

    # -- state file: what cleanup must undo -----------------------------------------

    def state(self) -> dict:
        try:
            return json.loads((self.o.run_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def save_state(self, **changes: Any) -> None:
        self.o.run_dir.mkdir(parents=True, exist_ok=True)
        state = {**self.state(), "node": self.o.name, **changes}
        tmp = self.o.run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.o.run_dir / STATE_FILE)

    def write_status(self, **status: Any) -> None:
        self.o.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.o.run_dir / (STATUS_FILE + ".tmp")
        tmp.write_text(json.dumps({"node": self.o.name, "time": time.time(), **status}))
        tmp.replace(self.o.run_dir / STATUS_FILE)

    # -- bring-up ------------------------------------------------------------

    def set_sysctls(self, wanted: dict[str, int]) -> None:
        before = self.state().get("sysctl_before", {})
        new_before = dict(before)
        changes = {}
        for key, value in wanted.items():
            path = Path("/proc/sys") / key.replace(".", "/")
            try:
                current = path.read_text().strip()
            except OSError:
                continue
            if current != str(value):
                new_before.setdefault(key, current)
                changes[key] = value
        if new_before != before:
            self.save_state(sysctl_before=new_before)
        sh.sysctl(changes)

    def converge(self, uplink: config.Uplink | None, full: bool = False) -> None:
        """Bring the node to what the NB says (idempotent). ``full`` (at start, after
        ovs-vswitchd restarted) also redoes the kernel side - sysctls, the translator
        namespace, the underlay address; otherwise the translator is redone only when
        the NB's settings for it changed (re-applying it on every NB change would, for
        one, reset its nftables counters)."""
        facts = self.facts
        dp = self.o.datapath
        if full:
            self.set_sysctls(config.sysctls(dp, uplink))
        # system-id and hostname only where nobody set them (an OVN chassis has its own);
        # what the agent adds is recorded for cleanup
        root = self.ovs._ovs
        have_ids, have_other = dict(root.external_ids), dict(root.other_config)
        ids = {k: v for k, v in config.system_external_ids(facts).items()
               if k not in have_ids or k == "vnet64-role"}
        other = {k: v for k, v in dp.other_config.items() if k not in have_other}
        state = self.state()
        set_ids = sorted(set(state.get("system_ids_set", [])) | {k for k in ids if k not in have_ids})
        set_other = sorted(set(state.get("other_config_set", [])) | set(other))
        if (set_ids, set_other) != (state.get("system_ids_set", []), state.get("other_config_set", [])):
            self.save_state(system_ids_set=set_ids, other_config_set=set_other)
        mtu = (config.overlay_mtu(uplink.mtu) if uplink else
               config.overlay_mtu(self.underlay_mtu(facts.underlay_ip)))
        commands: list[Any] = [SetSystem(self.ovs, external_ids=ids, other_config=other)]
        if self.o.ovs_ssl is not None:
            # before br-int and its ssl: targets, in the same transaction
            commands.append(SetSsl(self.ovs, self.o.ovs_ssl))
            if state.get("ovs_ssl_set") != list(self.o.ovs_ssl):
                self.save_state(ovs_ssl_set=list(self.o.ovs_ssl))
        commands += [EnsureBridge(self.ovs, **b) for b in config.bridges(facts, dp, mtu, uplink)]
        ports = config.ports(facts, dp, uplink)
        if facts.role == "host":
            # the translator's veth must exist before it becomes a port
            self.translator = self.translator or Translator(
                facts.name, self.o.translator_netns, self.o.run_dir / "translator",
                translator_mac(facts.name), mtu, dp.veth_tx_offload_off,
                self.o.translator_engine)
            settings = (self.platform_prefix(), self.o.translator_ipv4)
            if full or settings != self.translator_settings:
                changed = self.translator.ensure(*settings)
                if changed:
                    LOG.info("translator: %s", ", ".join(changed))
                self.translator_settings = settings
        commands += [EnsurePort(self.ovs, **p) for p in ports]
        if facts.role == "host":
            zones = config.ct_zones(facts.role, [v.ct_zone for v in self.nb.tables["VNet"].rows.values()])
            commands.append(SyncCtTimeouts(self.ovs, dp.ct_datapath_key, zones,
                                           config.ct_timeouts(), facts.name))
        results = self.ovs.run(*commands)
        if facts.role == "host":
            added, removed = results[-1]
            if added or removed:
                LOG.info("conntrack timeout policies: zones %s set, %s removed",
                         added or "none", removed or "none")
        names = [p["name"] for p in ports]
        sh.wait_for(lambda: not port_errors(self.ovs, names)[0] or port_errors(self.ovs, names)[1],
                    10, f"OpenFlow ports for {', '.join(names)}")
        errors = port_errors(self.ovs, names)[1]
        if errors:
            raise AgentError("; ".join(f"interface {n}: {e}" for n, e in errors.items()))
        if uplink is not None and full:
            self.move_underlay(uplink)

    def underlay_mtu(self, ip: IPv4Address) -> int:
        found = where_is(ip)
        if not found:
            return 1500
        link = json.loads(sh.ip_ns(None, "-j", "link", "show", "dev", found[0]).stdout)[0]
        return int(link["mtu"])

    def platform_prefix(self) -> str:
        row = next(iter(self.nb.tables["Platform"].rows.values()), None)
        if row is None:
            raise AgentError("the NB has no platform settings (translator prefix): load a "
                             "topology first")
        return row.translator_prefix

    def replica_nb_cfg(self) -> tuple[int, int]:
        """The newest NB change number the replica holds, and its timestamp (ms)."""
        with self.nb.ovsdb_connection.lock:
            row = next(iter(self.nb.tables["Platform"].rows.values()), None)
            return (getattr(row, "nb_cfg", 0), getattr(row, "nb_cfg_timestamp", 0)) if row else (0, 0)

    def applied(self, current: tuple[int, int]) -> None:
        """The NB up to change ``current`` (``replica_nb_cfg()`` as it was when the
        replica was read for this round) is applied on this node - converged, ports
        bound: note the number and its lag (metrics)."""
        self.nb_cfg, lag = nb_cmd.applied_nb_cfg(self.nb_cfg, current, time.time())
        if lag is not None:
            self.nb_lag_seconds = lag

    def move_underlay(self, uplink: config.Uplink) -> None:
        """netdev: the underlay address moves from the uplink to br-phy's tap, where
        ovs-vswitchd's own routing and ARP find it (userspace tunnelling)."""
        sh.wait_for(lambda: sh.link_exists(config.PHYSICAL_BRIDGE), 10,
                    f"the {config.PHYSICAL_BRIDGE} device")
        addr = uplink.address
        on_uplink = [a for a in addresses().get(uplink.name, []) if a.ip == addr.ip]
        if on_uplink:
            self.save_state(underlay_moved={"address": str(addr), "from": uplink.name})
            sh.ip_ns(None, "addr", "del", str(on_uplink[0]), "dev", uplink.name)
            LOG.info("underlay address %s moved from %s to %s", addr, uplink.name,
                     config.PHYSICAL_BRIDGE)
        sh.ip_batch(None, [f"addr replace {addr} dev {config.PHYSICAL_BRIDGE}",
                           f"link set {config.PHYSICAL_BRIDGE} up",
                           f"link set {INTEGRATION_BRIDGE} up"])

    def set_min_fragments(self) -> None:
        """netdev: the smallest non-final fragment ovs-vswitchd's reassembly takes, IPv4
        and IPv6 (:attr:`Datapath.min_fragment`); runtime state, so done at start and
        whenever ovs-vswitchd restarted."""
        size = self.o.datapath.min_fragment
        if size is None:
            return
        status = self.appctl("dpctl/ipf-get-status")
        for family in ("v4", "v6"):
            if f"min {family} frag size: {size}\n" in status:
                continue                # already so: nothing to do, nothing to log
            self.appctl("dpctl/ipf-set-min-frag", family, str(size))
            LOG.info("conntrack reassembly takes non-final %s fragments from %d bytes", family, size)

    def seed_neighbours(self) -> None:
        """netdev: OVS's tunnel neighbour cache drops the packet that triggers a lookup,
        so each peer's MAC is seeded from the kernel's neighbour table on br-phy (a
        datagram to the discard port makes the kernel resolve a peer it does not know)."""
        if not self.o.datapath.seed_tunnel_neighbours:
            return
        missing = [p for p in self.facts.peers if p not in self.seeded]
        if not missing:
            return
        shown = json.loads(sh.ip_ns(None, "-j", "neigh", "show", "dev", config.PHYSICAL_BRIDGE,
                                    check=False).stdout or "[]")
        known = {IPv4Address(n["dst"]): n.get("lladdr") for n in shown
                 if "." in n.get("dst", "") and n.get("lladdr")
                 and not {"FAILED", "INCOMPLETE"} & set(n.get("state", []))}
        for peer in missing:
            mac = known.get(peer)
            if mac:
                self.appctl("tnl/neigh/set", config.PHYSICAL_BRIDGE, str(peer), mac)
                self.seeded.add(peer)
                LOG.info("tunnel neighbour %s is %s", peer, mac)
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
                        contextlib.suppress(OSError):
                    s.sendto(b"", (str(peer), NEIGH_PROBE_PORT))

    def ovs_rundir(self) -> Path:
        remote = self.o.ovs or default_remote()
        return Path(remote[5:]).parent if remote.startswith("unix:") else Path("/var/run/openvswitch")

    def vswitchd_pid(self) -> int | None:
        pid = sh.read_pid(self.ovs_rundir() / "ovs-vswitchd.pid")
        return pid if pid and sh.proc_alive(pid) else None

    def ofctl(self, *args: str) -> str:
        """``ovs-ofctl`` against the local ovs-vswitchd (its sockets beside the database's)."""
        env = dict(os.environ, OVS_RUNDIR=str(self.ovs_rundir()))
        return sh.run([sh.tool("ovs-ofctl"), *args], env=env).stdout

    def appctl(self, *args: str) -> str:
        pid = self.vswitchd_pid()
        target = ["-t", str(self.ovs_rundir() / f"ovs-vswitchd.{pid}.ctl")] if pid else []
        return sh.run([sh.tool("ovs-appctl"), *target, *args]).stdout

    # -- ports ---------------------------------------------------------------

    def logical_ports(self) -> dict[str, tuple[str, str]]:
        """NB name -> (kind, MAC) of every VM and service endpoint."""
        out = {r.name: ("vm", r.mac) for r in self.nb.tables["VM"].rows.values()}
        out.update({r.name: ("endpoint", r.mac) for r in self.nb.tables["Endpoint"].rows.values()})
        return out

    def follow_conditions(self, names: set[str], wait: float) -> bool:
        """Replicate the NB rows of ``names`` (iface-ids), and the host mappings of the
        VMs among them once those are in (:func:`nb_conditions`); wait up to ``wait``
        seconds for the server's rows. True once the replica holds them all."""
        deadline = time.monotonic() + wait
        while True:
            with self.nb.ovsdb_connection.lock:
                me = next((r.uuid for r in self.nb.tables["Node"].rows.values()
                           if r.name == self.o.name), None)
                mapped = [str(vm_address(r).ipv6) for r in self.nb.tables["VM"].rows.values()
                          if r.name in names]
                changed = self.nb.set_conditions(nb_conditions(me, names, mapped))
                if changed:
                    LOG.debug("NB conditions: %d logical ports, %d host mappings",
                              len(names), len(mapped))
                elif self.nb.conditions_acked():
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def bind_ports(self) -> None:
        """Record in the NB which logical port each br-int interface is (iface-id), and
        forget bindings whose interface is gone."""
        local = {n: i for n, i in interfaces_with_iface_id(self.ovs, INTEGRATION_BRIDGE).items()
                 if not i["iface_id"].startswith("xlat:")}
        first_scan = self.seen_ifaces is None
        self.cond_pending = not self.follow_conditions({i["iface_id"] for i in local.values()},
                                                       10.0 if first_scan else 2.0)
        if self.cond_pending:
            LOG.info("NB rows of this node's ports not all in yet: binding later")
            return
        # One consistent snapshot of the replica: the IDL's thread applies updates under
        # this lock (a large NB transaction is applied row by row; read without it, a
        # dict changed size under the reader, seen at 100,000 subscriptions)
        with self.nb.ovsdb_connection.lock:
            known = self.logical_ports()
            everywhere = {b["logical_port"]: b for b in self.nb.list_bindings()}
        bound = {k: b for k, b in everywhere.items() if b["node"] == self.o.name}
        seen = set() if first_scan else self.seen_ifaces
        wanted: dict[str, dict] = {}
        keep: set[str] = set()           # bound here, not wanted now, but not to be unbound
        for ifname, i in sorted(local.items()):
            lport = i["iface_id"]
            elsewhere = everywhere.get(lport, {}).get("node")
            new_here = not first_scan and i["uuid"] not in seen
            if i["ofport"] and i["ofport"] > 0:
                seen.add(i["uuid"])
            why, level = None, logging.ERROR
            if elsewhere and elsewhere != self.o.name and not new_here:
                why, level = (f"{lport} is bound to {elsewhere}"
                              + (" (it was there before this agent started)" if first_scan else
                                 " (it moved there after this port appeared here)")), logging.INFO
            elif lport not in known:     # not yet, maybe: a port may come before its VM
                why, level = f"iface-id {lport!r} names no VM or service endpoint in the NB", logging.INFO
                # A binding it has is kept: the replica may lack the row only for now (an NB
                # reconnect re-reads it; a busy NB answers late). Unbinding then cut a
                # service endpoint off until a later round bound it again (growth
                # benchmark, 100k subscriptions).
                keep.add(lport)
            elif (i["attached_mac"] or "").lower() != known[lport][1].lower():
                why = (f"attached-mac {i['attached_mac'] or '(none)'} is not {lport}'s MAC in "
                       f"the NB ({known[lport][1]})")
            elif not i["ofport"] or i["ofport"] <= 0:
                if not i["error"]:
                    continue      # not ready yet: next round (and still new then)
                why = f"Open vSwitch could not add it: {i['error']}"
            if why:
                if self.refused.get(ifname) != why:
                    LOG.log(level, "port %s not wired: %s", ifname, why)
                    self.refused[ifname] = why
                continue
            self.refused.pop(ifname, None)
            wanted[lport] = {"port": ifname, "mac": i["attached_mac"].lower(), "ofport": i["ofport"]}
        todo = []
        for lport, w in sorted(wanted.items()):
            have = bound.get(lport)
            if have and (have.get("port"), have.get("ofport")) == (w["port"], w["ofport"]):
                continue
            if self.o.datapath.veth_tx_offload_off and w["port"] not in self.offload_done:
                sh.run([sh.tool("ethtool"), "-K", w["port"], "tx", "off"], check=False)
                self.offload_done.add(w["port"])
            todo.append((lport, w["port"], w["mac"], w["ofport"]))
        if todo:
            try:    # one transaction for all of them (a host's ports at start)
                results = self.nb.bind_ports(self.o.name, todo)
            except nb_api.NbError:   # one of them went wrong meanwhile: each on its own
                results = []
                for t in todo:
                    try:
                        results.append(self.nb.bind_port(self.o.name, *t))
                    except nb_api.NbError as exc:
                        LOG.error("port %s not bound: %s", t[1], exc)
            for r in results:
                moved = r.get("moved_from")
                LOG.info("bound %s %s to port %s (ofport %s)%s", r["kind"], r["logical_port"],
                         r["port"], r["ofport"], f", moved from {moved}" if moved else "")
        for lport in sorted(set(bound) - set(wanted) - keep):
            if self.nb.unbind_port(self.o.name, lport):
                LOG.info("unbound %s (its port is gone from this node)", lport)
        self.offload_done &= {w["port"] for w in wanted.values()}
        self.seen_ifaces = seen & {i["uuid"] for i in local.values()}

    # -- main loop -----------------------------------------------------------

    def run(self, stop: threading.Event, once: bool = False) -> int:
        self.nb = self.connect_nb(stop)
        self.facts = self.read_facts()
        self.ovs = self.connect_ovs(stop)
        uplink = self.check(self.facts)
        self.start_metrics()
        self.save_state(datapath=self.o.datapath.name, translator_netns=self.o.translator_netns,
                        uplink=self.o.uplink, ovs=self.o.ovs)
        LOG.info("node %s (%s, %s datapath, underlay %s): bringing it up", self.facts.name,
                 self.facts.role, self.o.datapath.name, self.facts.underlay_ip)
        self.switch_pid = self.vswitchd_pid()
        t0 = time.monotonic()
        self.converge(uplink, full=True)
        self.set_min_fragments()
        LOG.debug("converged in %.2f s", time.monotonic() - t0)
        self.bind_ports()
        self.seed_neighbours()
        self.report()
        LOG.info("node %s is up", self.facts.name)
        if once:
            return 0
        self._seen = self._seqnos()
        self.applied(self.replica_nb_cfg())
        while not stop.wait(self.o.interval):
            try:
                self.step(uplink)
            except (AgentError, sh.CommandError, nb_api.NbError) as exc:
                LOG.error("%s", exc)
                self._seen = (None, None)        # try the whole step again next round
            except Exception:                    # noqa: BLE001 - the agent must outlive a bad round
                LOG.exception("unexpected error while converging; trying again")
                self._seen = (None, None)
        return 0

    def report(self) -> None:
        """status.json: up, and how many rows of each per-port NB table the replica
        holds (what the conditions brought: this node's ports, not the platform)."""
        with self.nb.ovsdb_connection.lock:
            rows = {t: len(self.nb.tables[t].rows) for t in NB_PER_PORT}
        if rows != self.reported:
            self.write_status(phase="up", nb_rows=rows, nb_rows_pending=self.cond_pending)
            self.reported = rows

    def _seqnos(self) -> tuple[int, int]:
        return (self.nb.idl.change_seqno, self.ovs.idl.change_seqno)

    def step(self, uplink: config.Uplink | None) -> None:
        pid = self.vswitchd_pid()
        restarted = pid is not None and pid != self.switch_pid
        if restarted:
            # a new ovs-vswitchd made br-phy's tap afresh (no address) and knows no tunnel
            # neighbour: the kernel side is the agent's to redo
            LOG.warning("ovs-vswitchd restarted (pid %s, was %s): bringing the node up again",
                        pid, self.switch_pid)
            self.switch_pid = pid
            self.seeded.clear()
        seen = self._seqnos()
        if seen != self._seen or restarted:
            nb_changed = seen[0] != self._seen[0]
            self._seen = seen
            if nb_changed:
                facts = self.read_facts()
                if facts != self.facts:
                    LOG.info("node %s changed in the NB", facts.name)
                    self.seeded &= set(facts.peers)
                    self.facts = facts
            self.converge(uplink, full=restarted)
            if restarted:
                self.set_min_fragments()
            self.bind_ports()
            self._seen = self._seqnos()     # our own writes are not news
            self.applied(self.replica_nb_cfg())
            self.report()
        elif self.cond_pending:
            self.bind_ports()
            self.report()
        self.seed_neighbours()
        if self.translator is not None:
            self.translator.check()

    def start_metrics(self) -> None:
        """Serve :mod:`vnet64.node.metrics` on ``--metrics`` (an address already in use is
        an error before anything is changed)."""
        if self.o.metrics is None or self.metrics_server is not None:
            return
        host, port = self.o.metrics
        collector = NodeCollector(
            self.facts.name, self.facts.role, self.o.datapath.name,
            lambda: self.appctl("dpctl/dump-conntrack", "-s"), self.vm_zones,
            drops=lambda: drops.read(self.ofctl, INTEGRATION_BRIDGE),
            tables=lambda: drops.parse_tables(
                self.ofctl("-O", "OpenFlow15", "dump-tables", INTEGRATION_BRIDGE), self.facts.role),
            nb=lambda: (self.nb_cfg, self.nb_lag_seconds),
            translator=lambda: (self.translator.bpf_stats() if self.translator is not None
                                and self.translator.engine == "bpf" else None))
        try:
            self.metrics_server = prom.serve(collector, host, port, self.o.metrics_tls)
        except OSError as exc:
            raise AgentError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
        LOG.info("Prometheus metrics on %s%s", prom.url(host, port, self.o.metrics_tls is not None),
                 " (client certificates required)" if self.o.metrics_tls is not None else "")

    def vm_zones(self) -> list[tuple[int, str, str]]:
        """(VNet zone, IPv4, name) of the VMs this node's NB replica holds (its own)."""
        with self.nb.ovsdb_connection.lock:
            return [(r.vnet.ct_zone, r.ipv4, r.name) for r in self.nb.tables["VM"].rows.values()]

    def close(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server = None
        for api in (self.nb, self.ovs):
            if api is not None:
                api.close()


# ---------------------------------------------------------------------------
# cleanup


def cleanup(opts: Options, stop: threading.Event | None = None, use_nb: bool = True) -> list[str]:
    """Remove what the agent of node ``opts.name`` made on this host, and only that."""
    agent = Agent(opts)
    state = agent.state()
    done: list[str] = []
    stop = stop or threading.Event()
    ovs = agent.connect_ovs(stop)
    try:
        moved = state.get("underlay_moved")
        if moved and sh.link_exists(moved["from"]):
            sh.ip_batch(None, [f"addr replace {moved['address']} dev {moved['from']}"])
            done.append(f"underlay address {moved['address']} back on {moved['from']}")
        ovs.run(SyncCtTimeouts(ovs, opts.datapath.ct_datapath_key, [], {}, opts.name))
        for br in (INTEGRATION_BRIDGE, config.PHYSICAL_BRIDGE):
            if ovs.run(DeleteBridge(ovs, br, opts.name))[0]:
                done.append(f"bridge {br}")
        if state.get("ovs_ssl_set") and ovs.run(SetSsl(ovs, None, tuple(state["ovs_ssl_set"])))[0]:
            done.append("Open vSwitch's SSL settings")
        keys = state.get("system_ids_set", []) + ["vnet64-role"]
        ovs.run(SetSystem(ovs, external_ids={k: None for k in keys},
                          other_config={k: None for k in state.get("other_config_set", [])}))
    finally:
        ovs.close()
    done += Translator(opts.name, state.get("translator_netns") or opts.translator_netns,
                       opts.run_dir / "translator", translator_mac(opts.name), 0, False).remove()
    before = state.get("sysctl_before", {})
    if before:
        sh.sysctl(before)
        done.append(f"{len(before)} sysctl(s) restored")
    if use_nb:
        try:
            api = nb_api.connect(opts.nb, timeout=5, tls=opts.nb_tls)
        except nb_api.NbUnavailable as exc:
            LOG.warning("%s: this node's port bindings stay in the NB", exc)
        else:
            try:
                for b in api.list_bindings(opts.name):
                    api.unbind_port(opts.name, b["logical_port"])
                    done.append(f"binding of {b['logical_port']}")
            finally:
                api.close()
    for f in (STATE_FILE, STATUS_FILE):
        (opts.run_dir / f).unlink(missing_ok=True)
    return done
