"""The packet demo (``make demo``): the patent's FIG. 2A/2B, captured for real in the lab.

    python -m vnet64_lab.demo [TOPOLOGY] [--keep] [--endpoint NAME] [--vm NAME]...
                              [--control node|central]

1. brings TOPOLOGY (default ``topologies/two-tenants.yaml``) up with ``Lab``: every
   node in its own namespaces, the NB and the controllers started by the lab (one
   per node next to its agent, or with ``--control central`` one for every node),
   and an echo server in every customer VM (``traffic.ECHO_SERVER``);
2. starts tcpdump inside the lab's namespaces - on the fabric namespace's leg of
   every node involved (outer Geneve headers), on the service endpoint's br-int
   port, on each customer VM's br-int port, and on br-int's own port of each VM
   host, which an OVS mirror feeds with what ``geneve0`` delivers (the packet
   right after decapsulation);
3. from the service endpoint (default: the topology's first one): a TCP
   request/response, a UDP exchange and a ping to every VM its service is
   subscribed to, through the VM's platform IPv6 address;
4. reads the captures back and prints, per exchange, what the service sent and
   got back, what the VM saw, and the header at every hop labelled with the
   patent's numbers 210, 216, 234, 248, 253, 258, 262 - checking each hop
   (outer destinations, Platform_IP, the VM's platform IPv6 as reply source,
   the return path skipping the appliance) - and how many of the service's packets
   went through the appliance and how many direct: with the direct path (the
   platform's default) a pair's first packet takes the patent's path, and once its
   answer has reached the service host the rest go straight to the VM's host (216
   then goes there, 234 is skipped);
5. prints the flows that carried the exchanges (``ovs-ofctl dump-flows --names
   br-int`` of every node, only flows whose packet count grew);
6. takes the lab down - also on failure or Ctrl-C - unless ``--keep``.

Exit status: 0 when every exchange and every hop checked out, 1 when one did not
(or the lab failed), 2 for bad input, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vnet64.controller.pipeline import TOKEN_OPTION
from vnet64 import helptext
from vnet64.nb import api as nb_api
from vnet64.topology import TopologyError

from . import plan as P
from . import sh
from . import traffic as T
from .lab import (CONTROL_MODES, DEFAULT_PREFIX, DEFAULT_RUN_DIR, DEFAULT_TOPOLOGY, Lab,
                  find_topology)
from .ovs import OvsNode
from .sh import LabError

GENEVE_UDP_PORT = 6081
MIRROR = "vnet64-demo"     # OVS mirror on a VM host's br-int: geneve0 input -> br-int's port
KINDS = ("tcp", "udp", "ping")
PING_COUNT = 2
# Flow dump fields left out of the printout (n_packets stays).
_FLOW_NOISE = re.compile(r"\b(cookie|duration|n_bytes|idle_age|hard_age)=[^,\s]+,?\s*")
_FLOW_KEY_NOISE = re.compile(r"\bn_packets=\d+,?\s*")


def norm(addr: str) -> str:
    return str(ipaddress.ip_address(addr))


# -- what the demo talks about -------------------------------------------------------

@dataclass(frozen=True)
class Node:
    name: str
    ip: str          # underlay
    ns: str
    leg: str         # its veth end in the fabric namespace


@dataclass(frozen=True)
class Vif:
    name: str
    host: str
    port: str        # br-int port on its host
    ipv6: str        # endpoint: its address; VM: its platform IPv6 (from the NB)
    ipv4: str = ""   # VM only
    vnet: str = ""


@dataclass
class Setup:
    plan: P.Plan
    platform_ip: str
    translator_prefix: str
    service: str
    endpoint: Vif
    vms: list[Vif]
    nodes: dict[str, Node]
    appliance: str
    tunnel_token: int | None = None   # the Geneve option every hop must carry (NB)

    def node_of(self, vif: Vif) -> Node:
        return self.nodes[vif.host]


def read_setup(plan: P.Plan, endpoint: str | None, only_vms: list[str]) -> Setup:
    """Everything from the NB the lab loaded (not from the topology file): platform
    settings, the endpoint's service and the platform IPv6 of each subscribed VM."""
    api = nb_api.connect(f"unix:{plan.nb_run_dir}/nb.sock")
    try:
        platform = api.platform_info() or {}
        nodes = {n["name"]: n for n in api.list("node")}
        ep_name = endpoint or plan.topology.endpoints[0].name
        try:
            ep = api.show(ep_name)
        except nb_api.NotFound as exc:
            raise LabError(str(exc)) from None
        if ep.get("kind") != "endpoint":
            raise LabError(f"{ep_name} is a {ep.get('kind')}, not a service endpoint")
        subs = [s for s in api.list("subscription")
                if s["service"] == ep["service"] and s["state"] == "active"
                and (not only_vms or s["vm"] in only_vms)]
        vms = {v["name"]: v for v in api.list("vm")}
    finally:
        api.close()
    missing = sorted(set(only_vms) - {s["vm"] for s in subs})
    if missing:
        raise LabError(f"not subscribed to {ep['service']}: {', '.join(missing)}")
    if not subs:
        raise LabError(f"service {ep['service']} of {ep_name} has no active subscription")
    ports = {v.name: v.port for v in plan.vifs}
    node_plans = {n.name: n for n in plan.nodes}
    return Setup(
        plan=plan, platform_ip=norm(platform["platform_ip"]),
        translator_prefix=platform["translator_prefix"], service=ep["service"],
        endpoint=Vif(ep_name, ep["host"], ports[ep_name], norm(ep["ipv6"])),
        vms=[Vif(s["vm"], vms[s["vm"]]["host"], ports[s["vm"]], norm(s["ipv6"]),
                 norm(s["ipv4"]), s["vnet"]) for s in subs],
        nodes={name: Node(name, norm(n["underlay_ip"]), node_plans[name].ns,
                          node_plans[name].fabric_if) for name, n in nodes.items()},
        appliance=platform["appliance"],
        tunnel_token=int(platform["tunnel_token"], 16) if platform.get("tunnel_token") else None)


# -- captured headers ----------------------------------------------------------------

@dataclass(frozen=True)
class Head:
    """One captured packet: its (inner) IP header and transport, and for Geneve the
    outer header."""

    time: float
    family: str            # IPv6 / IPv4
    src: str
    dst: str
    proto: str             # TCP / UDP / ICMPv6 / ICMP / other
    sport: int | None = None
    dport: int | None = None
    detail: str = ""       # TCP flags and length, UDP length, ICMP echo id/seq
    echo: str = ""         # "request" / "reply" for ICMP(v6) echo
    outer: tuple[str, str, int] | None = None   # (src, dst, VNI)
    token: int | None = None                    # the tunnel-token option's value, if any

    def text(self) -> str:
        ports = f" {self.sport} > {self.dport}" if self.sport is not None else ""
        return f"{self.family} {self.src} > {self.dst}  {self.proto}{ports} {self.detail}".rstrip()

    def outer_text(self) -> str:
        src, dst, vni = self.outer or ("?", "?", 0)
        token = "" if self.token is None else f" token {self.token:#010x}"
        return f"IPv4 {src} > {dst}  Geneve VNI {vni:#x}{token}"

    def endpoint(self, which: str) -> str:
        addr, port = (self.src, self.sport) if which == "src" else (self.dst, self.dport)
        if port is None:
            return addr
        return f"[{addr}]:{port}" if self.family == "IPv6" else f"{addr}:{port}"


def _tcp_flags(flags: Any) -> str:
    s = str(flags)
    return "".join(c for c in "SFRPU" if c in s) + ("." if "A" in s else "")


def read_pcap(path: Path) -> list[Head]:
    """The packets of a pcap file, summarised (scapy dissects Geneve, UDP port 6081)."""
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    from scapy.contrib.geneve import GENEVE
    from scapy.error import Scapy_Exception
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    from scapy.utils import PcapReader

    heads: list[Head] = []
    try:
        reader = PcapReader(str(path))
    except (OSError, Scapy_Exception):
        return heads
    with reader:
        for pkt in reader:
            outer, token = None, None
            layer = pkt
            if pkt.haslayer(GENEVE) and pkt.haslayer(IP):
                g = pkt[GENEVE]
                outer = (pkt[IP].src, pkt[IP].dst, int(g.vni))
                token = next((int.from_bytes(o.data, "big") for o in g.options
                              if (o.classid, o.type) == (TOKEN_OPTION.option_class,
                                                         TOKEN_OPTION.option_type)), None)
                layer = g.payload
            if layer.haslayer(IPv6):
                ip, family = layer[IPv6], "IPv6"
                room = ip.plen
            elif layer.haslayer(IP):
                ip, family = layer[IP], "IPv4"
                room = ip.len - ip.ihl * 4
            else:
                continue
            t = ip.payload
            kw: dict[str, Any] = {}
            if isinstance(t, TCP):
                data = room - t.dataofs * 4
                kw = dict(proto="TCP", sport=t.sport, dport=t.dport,
                          detail=f"[{_tcp_flags(t.flags)}]" + (f" len {data}" if data else ""))
            elif isinstance(t, UDP):
                kw = dict(proto="UDP", sport=t.sport, dport=t.dport, detail=f"len {t.len - 8}")
            elif isinstance(t, (ICMPv6EchoRequest, ICMPv6EchoReply)):
                # (scapy's ICMPv6EchoReply is a subclass of ICMPv6EchoRequest)
                echo = "reply" if isinstance(t, ICMPv6EchoReply) else "request"
                kw = dict(proto="ICMPv6", echo=echo, detail=f"echo {echo} id {t.id} seq {t.seq}")
            elif isinstance(t, ICMP) and t.type in (0, 8):
                echo = "request" if t.type == 8 else "reply"
                kw = dict(proto="ICMP", echo=echo, detail=f"echo {echo} id {t.id} seq {t.seq}")
            else:
                kw = dict(proto=t.name if t else "?")
            heads.append(Head(time=float(pkt.time), family=family, src=norm(ip.src),
                              dst=norm(ip.dst), outer=outer, token=token, **kw))
    return heads


class Captures:
    """tcpdump to pcap files at named points inside the lab's namespaces."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, T.Capture] = {}
        self.heads: dict[str, list[Head]] = {}

    def path(self, key: str) -> Path:
        return self.out_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".pcap")

    def start(self, key: str, ns: str, iface: str, bpf: str) -> None:
        if key not in self.running:
            self.running[key] = T.Capture(ns, iface, bpf, count=None,
                                          extra=("-w", str(self.path(key)), "-U",
                                                 "--immediate-mode"))

    def stop(self) -> None:
        for key, cap in self.running.items():
            with contextlib.suppress(Exception):   # stop them all, whatever one says
                cap.stop()
            self.heads[key] = read_pcap(self.path(key))
        self.running.clear()

    def get(self, key: str) -> list[Head]:
        return self.heads.get(key, [])


# -- exchanges -----------------------------------------------------------------------

@dataclass
class Row:
    no: str             # 210, (210), ...
    hop: str
    where: str          # capture point
    head: Head | None
    show_outer: bool = False
    skipped: str = ""   # why nothing is expected here (the direct path skips the appliance)


@dataclass
class Exchange:
    kind: str
    vm: Vif
    t0: float = 0.0
    t1: float = float("inf")
    result: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    via_appliance: int = 0          # reply packets seen at the appliance (none expected)
    forward: dict = field(default_factory=dict)   # forward packets: "appliance" / "direct" -> n

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def title(self) -> str:
        return f"{self.kind} {self.vm.name}"


def run_exchange(setup: Setup, ex: Exchange) -> None:
    plan, ep, vm = setup.plan, setup.endpoint, ex.vm
    try:
        if ex.kind == "ping":
            tx, rx = T.ping(plan, vm.ipv6, count=PING_COUNT, source=ep.name)
            ex.result = {"tx": tx, "rx": rx}
        else:
            port = T.TCP_PORT if ex.kind == "tcp" else T.UDP_PORT
            payload = f"hello {vm.name}"
            ex.result = {"payload": payload, "port": port,
                         **T.client(plan, ex.kind, vm.ipv6, port, payload, source=ep.name)}
    except (T.TrafficError, OSError, ValueError) as exc:
        ex.result = {"error": f"{type(exc).__name__}: {exc}"}


def _match(ex: Exchange, h: Head, forward: bool, ipv6: bool) -> bool:
    """Is ``h`` a packet of this exchange, in this direction, on this side?"""
    if ex.kind == "ping":
        return (h.proto == ("ICMPv6" if ipv6 else "ICMP")
                and h.echo == ("request" if forward else "reply"))
    if h.proto != ex.kind.upper():
        return False
    port, local = ex.result.get("port"), ex.result.get("local")
    if forward:
        return h.dport == port and (not ipv6 or local is None or h.sport == local)
    return h.sport == port and (not ipv6 or local is None or h.dport == local)


def analyse(setup: Setup, ex: Exchange, caps: Captures) -> None:
    """Pick this exchange's packet at every hop, check each, fill ``rows``/``problems``."""
    ep, vm = setup.endpoint, ex.vm
    svc_host, vm_host = setup.node_of(ep), setup.node_of(vm)
    appliance = setup.nodes[setup.appliance]

    def window(key: str) -> list[Head]:
        return [h for h in caps.get(key) if ex.t0 <= h.time < ex.t1]

    def first(key: str, pred: Callable[[Head], bool]) -> Head | None:
        return next((h for h in window(key) if pred(h)), None)

    def fwd6(h: Head) -> bool:
        return h.src == ep.ipv6 and h.dst == vm.ipv6 and _match(ex, h, True, True)

    def rev6(h: Head) -> bool:
        return h.src == vm.ipv6 and h.dst == ep.ipv6 and _match(ex, h, False, True)

    k_ep, k_vm = f"{svc_host.name}:{ep.port}", f"{vm_host.name}:{vm.port}"
    k_decap = f"{vm_host.name}:br-int"
    leg = {n: f"fabric:{setup.nodes[n].leg}" for n in (svc_host.name, appliance.name,
                                                       vm_host.name)}
    p210 = first(k_ep, lambda h: h.outer is None and fwd6(h))
    # what the service host encapsulated: to the appliance, or (direct path: it learnt from
    # an earlier answer where the VM is) straight to the VM's host
    sent = [h for h in window(leg[svc_host.name])
            if h.outer is not None and h.outer[0] == svc_host.ip and fwd6(h)]
    ex.forward = {"appliance": sum(1 for h in sent if h.outer[1] == appliance.ip),
                  "direct": sum(1 for h in sent if h.outer[1] == vm_host.ip)}
    p216 = sent[0] if sent else None
    direct = p216 is not None and p216.outer[1] == vm_host.ip
    p234 = None if direct else first(leg[appliance.name], lambda h: h.outer is not None
                                     and h.outer[0] == appliance.ip and fwd6(h))
    p210d = first(k_decap, lambda h: h.outer is None and fwd6(h))
    p248 = first(k_vm, lambda h: h.family == "IPv4" and h.dst == vm.ipv4
                 and _match(ex, h, True, False))
    p253 = first(k_vm, lambda h: h.family == "IPv4" and h.src == vm.ipv4
                 and _match(ex, h, False, False)
                 and (p248 is None or (h.dst == p248.src and h.dport == p248.sport)))
    p262 = first(leg[vm_host.name], lambda h: h.outer is not None
                 and h.outer[0] == vm_host.ip and rev6(h))
    p258r = first(k_ep, lambda h: h.outer is None and rev6(h))
    ex.via_appliance = sum(1 for h in window(leg[appliance.name])
                           if h.outer is not None and rev6(h))

    at = {k_ep: f"{svc_host.name} {ep.port}", k_vm: f"{vm_host.name} {vm.port}",
          k_decap: f"{vm_host.name} br-int*"}
    at.update({v: f"fabric {setup.nodes[n].leg}" for n, v in leg.items()})
    ex.rows = [
        Row("210", f"{ep.name} sends", at[k_ep], p210),
        Row("216", f"{svc_host.name} encap -> {vm_host.name} (direct path)" if direct
            else f"{svc_host.name} encap -> appliance", at[leg[svc_host.name]], p216, True),
        Row("234", f"appliance: outer dst -> {vm_host.name}", at[leg[appliance.name]], p234, True,
            skipped="skipped: the direct path" if direct else ""),
        Row("(210)", f"{vm_host.name} after decap", at[k_decap], p210d),
        Row("248", f"{vm.name} receives", at[k_vm], p248),
        Row("253", f"{vm.name} replies", at[k_vm], p253),
        Row("258", f"{vm_host.name} after return xlat", at[leg[vm_host.name]] + " inner", p262),
        Row("262", f"{vm_host.name} encap -> {svc_host.name}", at[leg[vm_host.name]], p262, True),
        Row("(258)", f"{ep.name} receives", at[k_ep], p258r),
    ]

    problems = ex.problems
    r = ex.result
    if "error" in r:
        problems.append(f"{ep.name} got no answer: {r['error']}")
    elif ex.kind == "ping":
        if not r["tx"] or r["rx"] != r["tx"]:
            problems.append(f"ping: {r['rx']} of {r['tx']} answered")
    else:
        try:
            name, seen, _ = r["reply"].split(" ", 2)
            seen_addr, seen_port = seen.rsplit(":", 1)
        except (KeyError, ValueError):
            problems.append(f"unexpected answer {r.get('reply')!r}")
        else:
            r["vm_saw"] = (name, seen_addr, int(seen_port))
            if name != vm.name:
                problems.append(f"answered by {name}, not {vm.name}")
            if seen_addr != setup.platform_ip:
                problems.append(f"{vm.name} saw {seen_addr}, not Platform_IP {setup.platform_ip}")
            if p248 is not None and p248.sport != int(seen_port):
                problems.append(f"captured port {p248.sport} at 248, the VM reports {seen_port}")
        if norm(r.get("peer", "::")) != vm.ipv6:
            problems.append(f"the answer came from {r.get('peer')}, not {vm.ipv6}")

    for row in ex.rows:
        if row.head is None and not row.skipped:
            problems.append(f"{row.no}: nothing captured on {row.where}")
    if p216 and p216.outer[1] not in (appliance.ip, vm_host.ip):
        problems.append(f"216: outer dst {p216.outer[1]}, neither the appliance {appliance.ip} "
                        f"nor {vm_host.name} {vm_host.ip}")
    if p234 and p234.outer[1] != vm_host.ip:
        problems.append(f"234: outer dst {p234.outer[1]}, not {vm_host.name} {vm_host.ip}")
    if p248 and p248.src != setup.platform_ip:
        problems.append(f"248: source {p248.src}, not Platform_IP {setup.platform_ip}")
    if p253 and p253.dst != setup.platform_ip:
        problems.append(f"253: destination {p253.dst}, not Platform_IP {setup.platform_ip}")
    if p262 and p262.outer[1] != svc_host.ip:
        problems.append(f"262: outer dst {p262.outer[1]}, not {svc_host.name} {svc_host.ip}")
    if setup.tunnel_token is not None:
        for no, h in (("216", p216), ("234", p234), ("262", p262)):
            if h and h.token != setup.tunnel_token:
                problems.append(f"{no}: tunnel token {h.token if h.token is None else hex(h.token)}, "
                                f"not the NB's {setup.tunnel_token:#010x}")
    if ex.via_appliance:
        problems.append(f"{ex.via_appliance} reply packet(s) went through the appliance")


# -- flows ---------------------------------------------------------------------------

def flow_counts(node: OvsNode) -> dict[str, tuple[int, str]]:
    """``dump-flows --names br-int``: flow (without counters) -> (n_packets, printable line)."""
    out = node.ofctl("-O", "OpenFlow15", "dump-flows", "--names", "br-int", check=False)
    flows: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        m = re.search(r"\bn_packets=(\d+)", line)
        if not m:
            continue
        shown = _FLOW_NOISE.sub("", line).strip()
        flows[_FLOW_KEY_NOISE.sub("", shown)] = (int(m.group(1)), shown)
    return flows


# -- output --------------------------------------------------------------------------

def table(rows: list[list[str]], indent: str = "") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def say(*lines: str) -> None:
    for line in lines:
        print(line)
    sys.stdout.flush()


def print_setup(setup: Setup) -> None:
    ep, nodes = setup.endpoint, setup.nodes
    appliance = nodes[setup.appliance]
    say("", f"Platform_IP {setup.platform_ip}, translator prefix {setup.translator_prefix}, "
            f"SDN appliance: {appliance.name} ({appliance.ip})",
        f"service {setup.service}: endpoint {ep.name} {ep.ipv6} on {ep.host} "
        f"({nodes[ep.host].ip})", "")
    rows = [["VM", "VNET", "IPV4", "HOST", "PLATFORM IPV6 (what the service uses)"]]
    rows += [[v.name, v.vnet, v.ipv4, f"{v.host} ({nodes[v.host].ip})", v.ipv6]
             for v in setup.vms]
    say(*table(rows, "  "))


def vm_saw(setup: Setup, ex: Exchange) -> str:
    p248 = next((r.head for r in ex.rows if r.no == "248"), None)
    if p248 is None:
        return "-"
    return f"{p248.endpoint('src')} > {p248.endpoint('dst')}"


def service_pair(ex: Exchange) -> tuple[str, str]:
    p210 = next((r.head for r in ex.rows if r.no == "210"), None)
    back = next((r.head for r in ex.rows if r.no == "(258)"), None)
    return (f"{p210.endpoint('src')} > {p210.endpoint('dst')}" if p210 else "-",
            f"{back.endpoint('src')} > {back.endpoint('dst')}" if back else "-")


def print_exchange(setup: Setup, ex: Exchange) -> None:
    ep, vm = setup.endpoint, ex.vm
    verdict = "OK" if ex.ok else "FAILED"
    say("", f"== {ex.kind} {ep.name} -> {vm.name} ({vm.vnet} {vm.ipv4}) "
            f"via {vm.ipv6}: {verdict}")
    sent, back = service_pair(ex)
    r = ex.result
    if ex.kind == "ping":
        got = f"{r.get('rx', 0)} of {r.get('tx', 0)} echo replies" if "error" not in r \
            else r["error"]
        say(f"   {ep.name} sent    {sent}  ICMPv6 echo request x{PING_COUNT}",
            f"   and got back {back}  {got}")
    else:
        got = repr(r["reply"]) if "reply" in r else r.get("error", "nothing")
        say(f"   {ep.name} sent    {sent}  {r.get('payload', '')!r}",
            f"   and got back {back}  {got}")
    say(f"   {vm.name} saw  {vm_saw(setup, ex)}", "")
    rows = [["NO.", "HOP", "CAPTURED ON", "HEADER"]]
    for row in ex.rows:
        h = row.head
        if h is None:
            rows.append([row.no, row.hop, row.where, f"({row.skipped or 'nothing captured'})"])
        elif row.show_outer:
            rows.append([row.no, row.hop, row.where, "outer " + h.outer_text()])
            rows.append(["", "", "", "inner " + h.text()])
        else:
            rows.append([row.no, row.hop, row.where, h.text()])
    say(*table(rows, "   "))
    say(f"   {ep.name}'s packets to {vm.name}: {forward_text(ex)}")
    for p in ex.problems:
        say(f"   !! {p}")


def forward_text(ex: Exchange) -> str:
    """How the exchange's forward packets left the service host."""
    via, direct = ex.forward.get("appliance", 0), ex.forward.get("direct", 0)
    return f"{via} through the appliance, {direct} direct (the direct path)"


def print_flows(setup: Setup, before: dict[str, dict], after: dict[str, dict]) -> None:
    say("", "== the flows that carried them: ovs-ofctl -O OpenFlow15 dump-flows --names br-int,",
        "   only flows whose n_packets grew during the exchanges "
        "(cookie, duration, n_bytes, idle_age left out)")
    for node in after:
        lines = [shown for key, (n, shown) in after[node].items()
                 if n > before.get(node, {}).get(key, (0, ""))[0]]
        say("", f"   {node} ({setup.nodes[node].ip}):")
        say(*(f"     {line}" for line in lines) if lines else ["     (none)"])


def print_summary(setup: Setup, exchanges: list[Exchange]) -> None:
    say("", "== summary")
    rows = [["EXCHANGE", "", f"{setup.endpoint.name} (IPv6)", "VM SAW (IPv4)", "FORWARD PACKETS",
             "RESULT"]]
    for ex in exchanges:
        sent, back = service_pair(ex)
        fwd = f"{ex.forward.get('appliance', 0)} via appliance, {ex.forward.get('direct', 0)} direct"
        rows.append([f"{ex.kind} {ex.vm.name}", "sent", sent, vm_saw(setup, ex), fwd,
                     "OK" if ex.ok else "FAILED"])
        rows.append(["", "got back", back, "", "", ""])
    say(*table(rows, "   "))


def lab_command() -> str:
    """How to call vnet64-lab from here: the name when it is on PATH, else its path."""
    exe = Path(sys.executable).parent / "vnet64-lab"
    if not exe.exists() or shutil.which("vnet64-lab") == str(exe):
        return "vnet64-lab"
    with contextlib.suppress(ValueError):
        return str(exe.relative_to(Path.cwd()))
    return str(exe)


def print_keep(setup: Setup, lab: Lab, pcaps: Path) -> None:
    cmd = lab_command()
    vm, ep = setup.vms[0], setup.endpoint
    host = setup.nodes[vm.host]
    tcp = f"exec 3<>/dev/tcp/{vm.ipv6}/{T.TCP_PORT}; echo hi >&3; cat <&3"
    lines = ["", f"The lab stays up (--keep): prefix {lab.prefix}, run dir {lab.run_dir}. "
                 f"Explore it (as root):"]
    if lab.prefix != DEFAULT_PREFIX or str(lab.run_dir) != DEFAULT_RUN_DIR:
        lines.append(f"  export VNET64_LAB_PREFIX={lab.prefix} "
                     f"VNET64_LAB_RUN_DIR={shlex.quote(str(lab.run_dir))}")
    lines += [
        f"  {cmd} status",
        f"  {cmd} exec {ep.name} -- ping -6 -c1 {vm.ipv6}",
        f"  {cmd} exec {ep.name} -- bash -c {shlex.quote(tcp)}",
        f"      (echo servers in every VM: TCP {T.TCP_PORT} one answer, UDP {T.UDP_PORT}, "
        f"TCP {T.LINE_PORT} one answer per line)",
        f"  {cmd} flows {vm.host}",
        f"  {cmd} capture fabric {host.leg} udp port {GENEVE_UDP_PORT}"
        f"     # Geneve to and from {vm.host}",
        f"  {cmd} capture {vm.host} {P.XLAT_PORT}     # both sides of {vm.host}'s translator",
        f"  {cmd} capture {vm.name} {P.VM_IF}",
        f"  tcpdump -nn -e -r {pcaps}/fabric_{host.leg}.pcap     # the demo's own captures",
        f"  {cmd} down"]
    say(*lines)


# -- main ----------------------------------------------------------------------------

def demo(lab: Lab, topology: Path, keep: bool, endpoint: str | None, only_vms: list[str]) -> int:
    say(f"vnet64 demo: topology {topology}, lab prefix {lab.prefix}, run dir {lab.run_dir}")
    t0 = time.monotonic()
    exchanges: list[Exchange] = []
    sigint = signal.getsignal(signal.SIGINT)
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGINT, sigint)
        if lab.state() or lab.namespaces():
            say(f"taking down the lab that is up under prefix {lab.prefix} first")
        say("bringing the lab up (namespaces, NB, "
            + ("OVS, the node agent and a controller per node)..." if lab.wanted_control == "node"
               else "the central controller, OVS and the node agent per node)..."))
        lab_, plan = stack.enter_context(T.running_platform(lab, topology, keep=keep))
        # Last in, first out: no Ctrl-C while the lab is being taken down.
        stack.callback(signal.signal, signal.SIGINT, signal.SIG_IGN)
        setup = read_setup(plan, endpoint, only_vms)
        say(f"lab up, switches programmed, echo servers in "
            f"{', '.join(v.name for v in plan.vifs if v.kind == 'vm')} "
            f"({time.monotonic() - t0:.1f} s)")
        print_setup(setup)

        vm_hosts = sorted({v.host for v in setup.vms})
        mirrored = [setup.nodes[h] for h in vm_hosts]
        for n in mirrored:
            add_mirror(OvsNode(n.name, n.ns, plan.node(n.name).run_dir))
        if keep:
            for n in mirrored:
                stack.callback(remove_mirror, OvsNode(n.name, n.ns, plan.node(n.name).run_dir))
        caps = Captures(lab_.run_dir / "demo")
        stack.callback(caps.stop)
        svc = setup.nodes[setup.endpoint.host]
        for name in sorted({svc.name, setup.appliance, *vm_hosts}):
            n = setup.nodes[name]
            caps.start(f"fabric:{n.leg}", plan.fabric_ns, n.leg, f"udp port {GENEVE_UDP_PORT}")
        caps.start(f"{svc.name}:{setup.endpoint.port}", svc.ns, setup.endpoint.port, "ip6")
        for n in mirrored:
            caps.start(f"{n.name}:br-int", n.ns, "br-int", "ip6")
        for vm in setup.vms:
            n = setup.nodes[vm.host]
            caps.start(f"{n.name}:{vm.port}", n.ns, vm.port, "ip")

        nodes = {n.name: OvsNode(n.name, n.ns, n.run_dir) for n in plan.nodes}
        before = {name: flow_counts(node) for name, node in nodes.items()}
        say("", f"from {setup.endpoint.name}: {', '.join(KINDS)} to "
                f"{', '.join(v.name for v in setup.vms)} (tcpdump running on "
                f"{len(caps.running)} interfaces)...")
        for vm in setup.vms:
            for kind in KINDS:
                ex = Exchange(kind, vm, t0=time.time())
                if exchanges:
                    exchanges[-1].t1 = ex.t0
                run_exchange(setup, ex)
                exchanges.append(ex)
                # what the service host learnt from the answers (the direct path) is in its
                # datapath before the next exchange: it then goes straight to the VM's host
                nodes[svc.name].appctl("revalidator/wait")
        time.sleep(0.2)   # the last packets reach the pcap files
        after = {name: flow_counts(node) for name, node in nodes.items()}
        caps.stop()
        for ex in exchanges:
            analyse(setup, ex, caps)
            print_exchange(setup, ex)
        say("", "   Each row is the first packet of the exchange in that direction (TCP: SYN, "
                "SYN-ACK), read back from tcpdump.",
            "   * br-int's own port, fed by an OVS mirror of what geneve0 delivers "
                "(the packet right after decapsulation).",
            "   234: the appliance sends with its own underlay address as outer source "
                "(FIG. 2A keeps Host2's),",
            "   so a customer host accepts forward traffic from the appliance, and (the direct path)",
            "   a pair's later packets from its endpoint's host only. The direct path is vnet64's, not",
            "   the patent's: the service host learns from the pair's first answer where the VM is;",
            "   `vnet64 platform direct-path off` sends every packet through the appliance.")
        print_flows(setup, before, after)
        print_summary(setup, exchanges)
        failed = [ex.title for ex in exchanges if not ex.ok]
        if keep:
            print_keep(setup, lab_, caps.out_dir)
        else:
            say("", "taking the lab down...")
    elapsed = time.monotonic() - t0
    if failed:
        say("", f"demo FAILED ({len(failed)} of {len(exchanges)} exchanges: "
                f"{', '.join(failed)}) in {elapsed:.1f} s")
        return 1
    say("", f"demo OK: {len(exchanges)} exchanges, every hop captured and checked, "
            f"in {elapsed:.1f} s")
    return 0


def add_mirror(node: OvsNode) -> None:
    """Mirror what br-int receives from geneve0 (decapsulated) to br-int's own port."""
    remove_mirror(node)
    sh.run([sh.tool("ovs-vsctl"), "--", "--id=@g", "get", "Port", P.GENEVE_PORT,
            "--", "--id=@o", "get", "Port", "br-int",
            "--", "--id=@m", "create", "Mirror", f"name={MIRROR}", "select-src-port=@g",
            "output-port=@o", "--", "add", "Bridge", "br-int", "mirrors", "@m"],
           env=node.env())


def remove_mirror(node: OvsNode) -> None:
    vsctl = sh.tool("ovs-vsctl")
    found = sh.run([vsctl, "--bare", "--columns=_uuid", "find", "Mirror", f"name={MIRROR}"],
                   env=node.env())
    for uuid in found.stdout.split():
        sh.run([vsctl, "remove", "Bridge", "br-int", "mirrors", uuid], env=node.env())


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vnet64_lab.demo", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=helptext.paragraphs(__doc__, 0, 1), epilog=helptext.paragraphs(__doc__, 2))
    parser.add_argument("topology", nargs="?", default=DEFAULT_TOPOLOGY,
                        help=f"topology file (default {DEFAULT_TOPOLOGY})")
    parser.add_argument("--keep", action="store_true",
                        help="leave the lab up afterwards and print how to explore it")
    parser.add_argument("--endpoint", help="the service endpoint that starts the exchanges "
                                           "(default: the topology's first)")
    parser.add_argument("--vm", action="append", default=[],
                        help="only this subscribed VM (repeatable; default: all of the "
                             "endpoint's service)")
    parser.add_argument("--prefix", help="lab namespace prefix (default $VNET64_LAB_PREFIX "
                                         "or v64-)")
    parser.add_argument("--run-dir", help="lab run directory (default $VNET64_LAB_RUN_DIR "
                                          "or /run/vnet64-lab)")
    parser.add_argument("--control", choices=CONTROL_MODES,
                        help="node: a controller per node, next to its agent (default, also "
                             "$VNET64_LAB_CONTROL); central: one controller for every node")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("vnet64 demo: needs root (network namespaces, Open vSwitch)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        lab = Lab(args.prefix, args.run_dir, control=args.control)
    except LabError as exc:
        print(f"vnet64 demo: {exc}", file=sys.stderr)
        return 2
    try:
        topology = find_topology(args.topology)
        lab.plan(topology)   # a bad topology fails here, before anything exists
        return demo(lab, topology, args.keep, args.endpoint, args.vm)
    except TopologyError as exc:
        print(f"vnet64 demo: invalid topology: {exc}", file=sys.stderr)
        return 2
    except (LabError, T.TrafficError) as exc:
        print(f"vnet64 demo FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.keep:
            print("\nvnet64 demo: interrupted; the lab is left up (--keep)", file=sys.stderr)
            return 130
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if lab.namespaces() or lab.run_dir.exists():   # interrupted inside the first down
            lab.down()
        print("\nvnet64 demo: interrupted; the lab was taken down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
