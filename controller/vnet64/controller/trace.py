"""Trace a packet through the platform node by node, from the flows the switches hold
(issue 20, item 1): service host, appliance, customer host, translator, VM, and back.

Each node's flows are read back from its switch (``ovs-ofctl dump-flows``, parsed by
:mod:`flowtext`) and run in the strict simulated flow table (:mod:`sim`); nothing is
taken from the controller's logic. Between nodes the walk does what the fabric and the
translator do: a packet the flows send out of the Geneve port arrives at the node whose
underlay address is its ``tun_dst`` (with ``tun_src`` the sender's), and a packet sent to
TAYGA comes back translated, statelessly (RFC 7915 addresses through the NB's translator
/96, ports kept, echo types swapped). Conntrack is simulated per node and remembers
what the walk committed, so a ``reply`` finds the forward's connections; ``ct`` forces
the state every ct lookup reports (as ``ovn-trace --ct``): ``new``, ``est`` or ``rel``.

Each hop lists the stages its packet went through: the flow (as the controller prints it,
``Flow.ofctl()``), the owner its cookie names (NB objects by name), conntrack's zone and
answer, and where the packet went - with the patent's packet number for the packets of
FIG. 2A/2B (210 ... 262). A packet that is not forwarded ends on the flow that names why
(``pipeline.DROP_REASONS``).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Any

from .. import gateway
from ..ports import GENEVE_PORT, XLAT_PORT
from .flows import ETH_IPV4, ETH_IPV6, MeterMod, ct_state_str
from .model import Model
from .pipeline import (DROP_REASONS, ERROR_METER, PACKET_IN_METER, TOKEN_OPTION, Cookie,
                       name_id, tables_for)
from .sim import SimError, SimpleConntrack, SimSwitch, Trace, parse_ct_state

CT_MODES = ("new", "est", "rel")
MAX_HOPS = 16
ECHO_4TO6 = {8: 128, 0: 129}
ECHO_6TO4 = {v: k for k, v in ECHO_4TO6.items()}


@dataclass
class NodeFlows:
    """What the walk knows of one node: its role, underlay address, br-int's ports
    (OpenFlow number -> interface name) and the flows read back from it."""

    name: str
    role: str
    underlay: str
    ports: dict[int, str]
    flows: list                      # flowtext.Installed
    refused: list[str] = field(default_factory=list)   # flows the simulation could not load


@dataclass
class Step:
    stage: str
    priority: int | None
    flow: str                        # as dump-flows printed it (counters left out)
    owner: str                       # who installed it and why (its cookie, with NB names)
    ct: str | None = None            # conntrack's answer to its ct action ("zone 1: +trk+new")


@dataclass
class Hop:
    """One node's (or the translator's) part of the walk."""

    node: str
    entered: str                     # how the packet came in ("port s-svc1", "Geneve from host2")
    packet: dict
    received: str | None = None      # the patent's number of the packet as it came in
    steps: list[Step] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)     # the simulation's own account
    cts: list[str] = field(default_factory=list)       # "zone 65534: +new+trk"
    outcome: str = ""                # tunnel | translator | delivered | dropped | punted | lost
    detail: str = ""
    reason: str | None = None        # a drop's or punt's reason (DROP_REASONS)
    patent: str | None = None        # the patent's number of the packet this hop sends on
    sent: dict | None = None
    ovs: dict | None = None          # with an ofproto/trace runner: what OVS's own trace says

    def as_dict(self) -> dict:
        return {"node": self.node, "entered": self.entered, "packet": self.packet,
                "received": self.received, "steps": [s.__dict__ for s in self.steps],
                "conntrack": self.cts,
                "outcome": self.outcome, "detail": self.detail, "reason": self.reason,
                "patent": self.patent, "sent": self.sent, "ovs": self.ovs}


class AssumedCt:
    """Conntrack that NATs as the simulation does but reports ``mode`` for a new or an
    established connection (``ovn-trace --ct``)."""

    def __init__(self, real: SimpleConntrack, mode: str):
        self.real, self.mode = real, mode

    def ct(self, packet: dict, zone: int, commit: bool, nat: Any) -> Any:
        res = self.real.ct(packet, zone, commit, nat)
        # a new connection has no reply direction; NAT stays as the simulation did it
        keep = res.state & parse_ct_state("+trk+snat+dnat" if self.mode == "new" else "+trk+rpl+snat+dnat")
        forced = parse_ct_state({"new": "+trk+new", "est": "+trk+est", "rel": "+trk+rel"}[self.mode])
        return type(res)(keep | forced, res.packet)


class Tracer:
    """Walks packets through the nodes' flows (``nodes``), with the NB's ``model`` for
    names, addresses and the translator prefix."""

    def __init__(self, model: Model, nodes: dict[str, NodeFlows], ct: str | None = None,
                 ofproto_trace: Any = None):
        """``ofproto_trace(node, flow, ct_states)``, if given, runs ``ovs-appctl
        ofproto/trace br-int FLOW --ct-next S ...`` on that node and returns its text: each
        hop then says where OVS's own trace and the simulation part ways (``--ovs``)."""
        if ct is not None and ct not in CT_MODES:
            raise ValueError(f"--ct {ct!r}: one of {', '.join(CT_MODES)}")
        self.model, self.nodes, self.ct_mode = model, nodes, ct
        self.ofproto_trace = ofproto_trace
        self.switches: dict[str, SimSwitch] = {}
        self.texts: dict[str, dict[str, str]] = {}   # node -> Flow.ofctl() -> the dump's line
        self.by_underlay = {str(n.underlay_ip): n.name for n in model.nodes}
        self.owners = self._owner_names()
        for n in nodes.values():
            self.switches[n.name] = self._load(n)

    # -- setup -----------------------------------------------------------------

    def _load(self, n: NodeFlows) -> SimSwitch:
        sw = SimSwitch(tables_for(n.role))
        sw.apply([TOKEN_OPTION, MeterMod(PACKET_IN_METER, 1), MeterMod(ERROR_METER, 1)])
        texts = self.texts.setdefault(n.name, {})
        for inst in n.flows:
            if inst.flow is None:
                n.refused.append(f"{inst.text}: {inst.error}")
                continue
            texts[inst.flow.ofctl()] = inst.text.strip()
            try:
                sw.apply(inst.flow)
            except SimError as exc:
                n.refused.append(str(exc))
        return sw

    def _owner_names(self) -> dict[int, str]:
        m = self.model
        names: dict[int, str] = {name_id(x): x for x in ("translator", "nd")}
        names.update({name_id(v.name): v.name for v in m.vms})
        names.update({name_id(e.name): e.name for e in m.endpoints})
        names.update({name_id(n.name): n.name for n in m.nodes})
        for r in m.iter_routes():
            names[name_id(str(IPv6Address(r.ipv6)))] = f"{r.ipv6} -> {r.host}"
        return names

    def owner(self, node: str, cookie: int | None) -> str:
        """Who installed a flow and why, from its cookie (``pipeline.Cookie``)."""
        if cookie is None:
            return "-"
        try:
            c = Cookie.decode(cookie)
        except ValueError:
            return f"not vnet64's ({cookie:#x})"
        if c.feature == "pair":
            return f"pair {c.obj}: {self._pair(node, c.obj)}"
        if c.feature == "drop":
            who = self.owners.get(c.obj & 0xFFFFFFFF, "")
            return f"drop: {c.reason}" + (f" ({who})" if who else "")
        if c.feature == "deny":
            return "refused pair (held for a while)"
        who = self.owners.get(c.obj, f"{c.obj:#x}") if c.obj else ""
        return f"{c.feature} {who}".strip()

    def _pair(self, node: str, index: int) -> str:
        for inst in self.nodes[node].flows:
            if inst.flow is not None and inst.flow.table == "pair" and inst.cookie == Cookie("host", "pair", index).value:
                src, dst = inst.flow.match.get("ipv6_src"), inst.flow.match.get("ipv6_dst")
                ep = next((e.name for e in self.model.endpoints if str(e.ipv6) == str(src)), src)
                vm = next((v.name for v in self.model.vms if v.ipv6 and str(v.ipv6) == str(dst)), dst)
                return f"{ep} -> {vm}"
        return "?"

    # -- the walk ----------------------------------------------------------------

    def port_of(self, node: str, name: str) -> int:
        for no, ifname in self.nodes[node].ports.items():
            if ifname == name:
                return no
        raise ValueError(f"{node} has no port {name!r} on br-int")

    def walk(self, node: str, in_port: int, packet: dict, entered: str, reply: bool = False,
             patent: str | None = None) -> list[Hop]:
        """Hops of one packet from ``in_port`` of ``node`` until it is delivered, dropped,
        punted or leaves the platform. ``patent``: the number of the packet as it enters."""
        hops: list[Hop] = []
        pkt = dict(packet, in_port=in_port)
        for _ in range(MAX_HOPS):
            hop = Hop(node, entered, {k: v for k, v in pkt.items() if k != "in_port"}, patent)
            hops.append(hop)
            sw = self.switches[node]
            ct = AssumedCt(sw.conntrack, self.ct_mode) if self.ct_mode else None  # type: ignore[arg-type]
            try:
                t = sw.trace(pkt, in_port, ct=ct)
            except SimError as exc:
                hop.outcome, hop.detail = "lost", f"the simulation stopped: {exc}"
                return hops
            self._describe(hop, node, t)
            if self.ofproto_trace is not None:
                hop.ovs = self._compare(node, in_port, pkt, t)
            nxt = self._next(hop, node, t, reply)
            if nxt is None:
                return hops
            node, in_port, pkt, entered = nxt
            # decapsulated on the VM's host: what the appliance, or the direct path, brought
            patent = "(210)" if hop.patent == "234" or self._direct(hops[-1].node, node, reply) else None
        hops[-1].detail += f" (stopped after {MAX_HOPS} hops)"
        return hops

    def _describe(self, hop: Hop, node: str, t: Trace) -> None:
        hop.cts = [f"zone {zone}: {ct_state_str(state, state)}" for zone, state, _ in t.cts]
        answers = iter(hop.cts)
        for s in t.steps:
            step = Step(s.stage, s.priority, self.texts[node].get(s.flow, s.flow),
                        self.owner(node, s.cookie))
            if "ct(" in s.flow:
                step.ct = next(answers, None)
            hop.steps.append(step)
        hop.lines = list(t.lines)

    def _compare(self, node: str, in_port: int, pkt: dict, t: Trace) -> dict:
        """OVS's ofproto/trace of the same packet, with the states the simulation's
        conntrack gave, against the simulation's stages (table and priority each)."""
        flow = ovs_flow(pkt, in_port)
        states = [ct_state_str(state, state).lstrip("+").replace("+", ",").replace("-", "")
                  for _, state, _ in t.cts]
        try:
            text = self.ofproto_trace(node, flow, states)
        except Exception as exc:    # noqa: BLE001 - reported, the walk goes on
            return {"flow": flow, "error": str(exc)}
        tables = tables_for(self.nodes[node].role)
        theirs = [(_stage_name(tables, tid), prio) for tid, prio in ovs_steps(text)]
        mine = [(s.stage, s.priority) for s in t.steps]
        actions = re.findall(r"^Datapath actions: (.*)$", text, re.M)
        return {"flow": flow, "ct_next": states, "steps": theirs, "agrees": theirs == mine,
                "datapath_actions": actions,
                "differs_at": next((i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b),
                                   None if len(theirs) == len(mine) else min(len(theirs), len(mine)))}

    def _next(self, hop: Hop, node: str, t: Trace, reply: bool) -> tuple | None:
        n = self.nodes[node]
        last = t.steps[-1] if t.steps else None
        why = Cookie.decode(last.cookie).reason if last and last.cookie else None
        if t.punts:
            hop.outcome, hop.reason = "punted", why
            if why:
                hop.detail = f"punted to the controller ({why}): {DROP_REASONS[why][2]}"
            elif last and last.stage == "pair":
                hop.detail = ("punted to the controller: the first packet of a pair it has not set "
                              "up; it checks the subscription, installs the pair's flows and "
                              "re-injects the packet (send traffic first to trace further)")
            else:
                hop.detail = "punted to the controller"
            return None
        if not t.outputs:
            hop.outcome, hop.reason = "dropped", why
            stage = t.dropped_at
            hop.detail = (f"in {stage}: {why} - {DROP_REASONS[why][2]}" if why in DROP_REASONS
                          else f"in {stage} ({'a refused pair' if why else 'by a flow that names no reason'})")
            return None
        port, out = t.outputs[0]
        ifname = n.ports.get(port, str(port))
        hop.sent = {k: v for k, v in out.items() if k != "in_port"}
        if ifname == GENEVE_PORT and "tun_ipv4_dst" in out:
            hop.sent["tun_ipv4_src"] = n.underlay        # the sender's tunnel address
            dst = self.by_underlay.get(str(out["tun_ipv4_dst"]))
            hop.outcome = "tunnel"
            hop.detail = f"Geneve {n.underlay} -> {out['tun_ipv4_dst']} ({dst or 'no node of the platform'})"
            hop.patent = self._patent_tunnel(node, dst, reply)
            if self._direct(node, dst, reply):
                hop.detail += f" - the direct path (an entry {node} learnt): no appliance"
            if dst is None:
                return None
            if dst not in self.nodes:
                hop.detail += f"; no flows of {dst} were given: the walk ends here"
                return None
            inner = {k: v for k, v in out.items()
                     if k != "in_port" and not k.startswith(("ct_", "reg", "tun_", "tunnel_id"))}
            inner.update({k: v for k, v in out.items() if k.startswith("tun_metadata")})
            inner.update(tun_ipv4_src=n.underlay, tun_ipv4_dst=str(out["tun_ipv4_dst"]),
                         tunnel_id=out.get("tunnel_id", 0))
            return dst, self.port_of(dst, GENEVE_PORT), inner, f"Geneve from {node}"
        if ifname == XLAT_PORT:
            hop.outcome, hop.detail = "translator", f"to TAYGA in {node}'s translator namespace"
            back = self.translate(out)
            if back is None:
                hop.detail += ": nothing it translates (not in the translator prefix)"
                return None
            return node, self.port_of(node, XLAT_PORT), back, "from TAYGA (translated)"
        hop.sent = {k: v for k, v in hop.sent.items() if not k.startswith(("tun_", "tunnel_id", "ct_", "reg"))}
        who = self._vif(node, ifname)
        hop.outcome, hop.detail = "delivered", f"out of {ifname}" + (f": {who}" if who else "")
        hop.patent = ("(258)" if reply else "248") if who else None
        return None

    def _direct(self, node: str, dst: str | None, reply: bool) -> bool:
        """A service's packet from its host straight to a VM's host (the direct path)."""
        return (not reply and dst is not None and dst in self.nodes and node != dst
                and self.nodes[node].role == "host" and self.nodes[dst].role == "host")

    def _patent_tunnel(self, node: str, dst: str | None, reply: bool) -> str | None:
        role = self.nodes[node].role
        if role == "appliance":
            return "234"
        if dst is not None and dst in self.nodes and self.nodes[dst].role == "appliance":
            return "216"
        return "262" if reply else None   # (its inner packet: 258, the return translation's)

    def _vif(self, node: str, ifname: str) -> str:
        for b in self.model.bindings_on(node):
            if b.port == ifname:
                return f"{b.kind} {b.logical_port}"
        return ""

    def translate(self, pkt: dict) -> dict | None:
        """TAYGA's stateless translation of what br-int sent it (RFC 7915, RFC 6052
        addresses through the NB's /96), as it comes back into br-int."""
        prefix = IPv6Network(self.model.translator_prefix)
        l4 = {k: v for k, v in pkt.items() if k.startswith(("tcp_", "udp_", "icmp_id"))}
        # from TAYGA's side of the veth: where br-int sent the packet (v6_dnat, to_translator)
        base = {"eth_src": str(pkt.get("eth_dst", "00:00:00:00:00:00")), "eth_dst": gateway.GATEWAY_MAC,
                "ip_proto": pkt.get("ip_proto"), "nw_ttl": 64, "pkt_len": pkt.get("pkt_len", 100), **l4}
        if pkt.get("eth_type") == ETH_IPV6:
            src, dst = IPv6Address(pkt["ipv6_src"]), IPv6Address(pkt["ipv6_dst"])
            if src not in prefix or dst not in prefix:
                return None
            out = {**base, "eth_type": ETH_IPV4, "ipv4_src": str(IPv4Address(int(src) & 0xFFFFFFFF)),
                   "ipv4_dst": str(IPv4Address(int(dst) & 0xFFFFFFFF))}
            if pkt.get("ip_proto") == 58:
                out.update(ip_proto=1, icmpv4_type=ECHO_6TO4.get(pkt.get("icmpv6_type"), 3), icmpv4_code=0)
            return out
        if pkt.get("eth_type") == ETH_IPV4:
            out = {**base, "eth_type": ETH_IPV6,
                   "ipv6_src": str(self.model.translated(IPv4Address(pkt["ipv4_src"]))),
                   "ipv6_dst": str(self.model.translated(IPv4Address(pkt["ipv4_dst"])))}
            if pkt.get("ip_proto") == 1:
                out.update(ip_proto=58, icmpv6_type=ECHO_4TO6.get(pkt.get("icmpv4_type"), 1), icmpv6_code=0)
            return out
        return None


# ---------------------------------------------------------------------------
# OVS's own trace (--ovs)

_OVS_FIELDS = {"eth_src": "dl_src", "eth_dst": "dl_dst", "ipv6_src": "ipv6_src", "ipv6_dst": "ipv6_dst",
               "ipv4_src": "nw_src", "ipv4_dst": "nw_dst", "tcp_src": "tcp_src", "tcp_dst": "tcp_dst",
               "udp_src": "udp_src", "udp_dst": "udp_dst", "icmpv4_type": "icmp_type",
               "icmpv4_code": "icmp_code", "icmpv6_type": "icmp_type", "icmpv6_code": "icmp_code",
               "nw_ttl": "nw_ttl", "tun_ipv4_src": "tun_src", "tun_ipv4_dst": "tun_dst",
               "tunnel_id": "tun_id", "tun_metadata0": "tun_metadata0"}
_HEX = ("tunnel_id", "tun_metadata0")
_RESUBMIT = re.compile(r"^ {4}resubmit\(,(\d+)\)$")
_STEP = re.compile(r"^(\s*)(\d+)\. (?:.*?, )?priority (\d+), cookie 0x[0-9a-f]+$|^(\s*)(\d+)\. No match\.$")


def ovs_flow(pkt: dict, in_port: int) -> str:
    """The packet as ``ofproto/trace`` takes it (OVS's field names, protocol shorthand)."""
    proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}.get(pkt.get("ip_proto"))
    if pkt.get("eth_type") == ETH_IPV6:
        head = {"tcp": "tcp6", "udp": "udp6", "icmp6": "icmp6"}.get(proto or "", "ipv6")
    elif pkt.get("eth_type") == ETH_IPV4:
        head = proto if proto in ("tcp", "udp", "icmp") else "ip"
    else:
        head = f"dl_type={pkt.get('eth_type', 0):#06x}"
    parts = [f"in_port={in_port}", head]
    for key, name in _OVS_FIELDS.items():
        if key in pkt and pkt[key] is not None:
            parts.append(f"{name}={pkt[key]:#x}" if key in _HEX else f"{name}={pkt[key]}")
    return ",".join(parts)


def ovs_steps(text: str) -> list[tuple[int, int | None]]:
    """The (table, priority) of each flow ``ofproto/trace`` went through on br-int, in
    order (priority None: no match), the resumed parts after recirculation and a
    resubmit's table included, the other branch of a check_pkt_larger (printed nested)
    left out."""
    out, on_int, resubmit = [], False, None
    for line in text.splitlines():
        if line.startswith("bridge("):
            on_int = line.startswith('bridge("br-int")')
            continue
        r = _RESUBMIT.match(line)
        if r is not None:
            resubmit = int(r.group(1))
            continue
        m = _STEP.match(line)
        if not on_int or m is None:
            continue
        indent, table, prio = (m.group(1), m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5), None)
        # a resubmit's table is printed nested too, right after its resubmit(,N)
        if len(indent) <= 2 or int(table) == resubmit:
            out.append((int(table), int(prio) if prio is not None else None))
        resubmit = None
    return out


def _stage_name(tables: Any, tid: int) -> str:
    try:
        return tables.name(tid)
    except ValueError:
        return str(tid)


def report(hops: list[Hop], nodes: dict[str, NodeFlows], as_json: bool = False,
           verbose: bool = False) -> str:
    """What both trace commands print: the walk (``render``, or JSON with the flows the
    simulation could not load); those flows are also named on stderr in text mode."""
    refused = {name: n.refused for name, n in nodes.items() if n.refused}
    if as_json:
        return json.dumps({"hops": [h.as_dict() for h in hops], "not_simulated": refused},
                          indent=2, default=str) + "\n"
    for name, what in refused.items():
        print(f"(not simulated on {name}: {len(what)} flow(s), e.g. {what[0]})", file=sys.stderr)
    return render(hops, verbose)


def render(hops: list[Hop], verbose: bool = False) -> str:
    """The walk as text: per hop, its node and how the packet came in, each stage (flow,
    owner), conntrack's answers, and where the packet went."""
    lines = []
    for h in hops:
        lines.append(f"== {h.node}: {h.entered}" + (f" [{h.received}]" if h.received else ""))
        lines.append(f"   packet {_packet_text(h.packet)}")
        for s in h.steps:
            lines.append(f"   {s.stage:<16} {s.owner}" + (f"; conntrack {s.ct}" if s.ct else ""))
            lines.append(f"   {'':<16} {s.flow}")
        if verbose:
            lines += [f"   | {x}" for x in h.lines]
        if h.ovs is not None:
            if "error" in h.ovs:
                lines.append(f"   ovs: ofproto/trace failed: {h.ovs['error']}")
            elif h.ovs["agrees"]:
                lines.append("   ovs: ofproto/trace takes the same stages")
            else:
                at = h.ovs["differs_at"]
                lines.append(f"   ovs: ofproto/trace DIFFERS from stage {at + 1}: OVS "
                             f"{_stages(h.ovs['steps'][at:])}, simulation "
                             f"{_stages([(s.stage, s.priority) for s in h.steps][at:])}")
                lines.append(f"        (OVS's trace NATs only with the datapath's real connections; "
                             f"ofproto/trace br-int '{h.ovs['flow']}'"
                             + "".join(f" --ct-next {c}" for c in h.ovs["ct_next"]) + ")")
        mark = f" [{h.patent}]" if h.patent else ""
        lines.append(f"   -> {h.outcome}: {h.detail}{mark}")
        if h.sent is not None and h.outcome in ("tunnel", "delivered"):
            lines.append(f"      sent {_packet_text(h.sent)}")
    return "\n".join(lines) + "\n"


def _stages(steps: list) -> str:
    return " > ".join(f"{stage}" + (f"/{prio}" if prio is not None else "/miss") for stage, prio in steps) or "-"


def _packet_text(p: dict) -> str:
    if p.get("eth_type") == ETH_IPV6:
        head = f"IPv6 {p.get('ipv6_src')} > {p.get('ipv6_dst')}"
    elif p.get("eth_type") == ETH_IPV4:
        head = f"IPv4 {p.get('ipv4_src')} > {p.get('ipv4_dst')}"
    else:
        head = f"eth_type {p.get('eth_type', 0):#06x}"
    proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}.get(p.get("ip_proto"), "")
    ports = ""
    for pre in ("tcp", "udp"):
        if f"{pre}_src" in p:
            ports = f" {p[f'{pre}_src']} > {p[f'{pre}_dst']}"
    outer = f" (outer {p['tun_ipv4_src']} > {p['tun_ipv4_dst']})" if "tun_ipv4_dst" in p and "tun_ipv4_src" in p else ""
    return f"{head} {proto}{ports}{outer}".rstrip()


PROTOS = ("tcp", "udp", "icmp")


def add_arguments(p: Any) -> None:
    """The packet a trace walks and how, as both ``vnet64 trace`` and ``vnet64-lab trace``
    take them (an ``argparse`` parser)."""
    p.add_argument("src", help="a service endpoint or a VM")
    p.add_argument("dst", help="from an endpoint: a VM (its platform IPv6) or an IPv6 address; "
                               "from a VM: 'platform' (its Platform_IP) or an IPv4 address")
    p.add_argument("proto", nargs="?", default="tcp", choices=PROTOS, help="default %(default)s")
    p.add_argument("port", nargs="?", type=int, default=80, help="destination port (default 80)")
    p.add_argument("--sport", type=int, default=40000, help="source port / echo id (default 40000)")
    p.add_argument("--src-addr", metavar="ADDR", help="a forged source address")
    p.add_argument("--reply", action="store_true", help="then trace the answer of whoever got it")
    p.add_argument("--ct", choices=CT_MODES,
                   help="the state every conntrack lookup reports (default: simulated, so a "
                        "reply finds the connection the walk committed)")


@dataclass
class Start:
    """Where a traced packet enters: node, interface, the packet, and its description."""
    node: str
    port: str
    packet: dict
    entered: str
    patent: str | None


def start(model: Model, src: str, dst: str, proto: str = "tcp", port: int = 80,
          sport: int = 40000, src_addr: str | None = None) -> Start:
    """The packet ``src`` (a service endpoint or a VM, by name) sends to ``dst``: from an
    endpoint, a VM by name (its platform IPv6) or an IPv6 address; from a VM, ``platform``
    (its Platform_IP) or an IPv4 address;
    ``proto`` to ``port`` from ``sport``; ``src_addr`` replaces the source address (a
    forged one). ValueError for names the NB does not know."""
    if proto not in PROTOS:
        raise ValueError(f"protocol {proto!r}: one of {', '.join(PROTOS)}")
    ep, vm = model.endpoint(src), model.vm(src)
    if ep is None and vm is None:
        raise ValueError(f"no service endpoint or VM called {src!r} in the NB")
    b = model.binding(src)
    if b is None:
        raise ValueError(f"{src} is not bound to a port of any node (no Port_Binding)")
    target = model.vm(dst)
    if ep is not None:
        if target is not None:
            if not target.subscribed:
                raise ValueError(f"VM {dst} has no platform address (no subscription); give an address")
            addr = str(target.ipv6)
        else:
            addr = str(IPv6Address(dst))
        pkt: dict = {"eth_type": ETH_IPV6, "eth_src": ep.mac, "eth_dst": gateway.GATEWAY_MAC,
                     "ipv6_src": src_addr or str(ep.ipv6), "ipv6_dst": addr}
        patent = "210" if target is not None and src_addr is None else None
    else:
        assert vm is not None
        if dst.lower() in ("platform", "platform_ip") or target is vm:
            addr = str(vm.snat_ip)       # its Platform_IP (or its VNet's SNAT VIP)
        else:
            addr = str(IPv4Address(dst))
        pkt = {"eth_type": ETH_IPV4, "eth_src": vm.mac, "eth_dst": gateway.GATEWAY_MAC,
               "ipv4_src": src_addr or str(vm.ipv4), "ipv4_dst": addr}
        patent = None
    pkt.update(_l4(proto, pkt["eth_type"], sport, port), nw_ttl=64, pkt_len=100)
    return Start(b.node, b.port, pkt, f"from {src} (port {b.port})", patent)


def _l4(proto: str, eth_type: int, sport: int, dport: int, reply: bool = False) -> dict:
    if proto == "tcp":
        return {"ip_proto": 6, "tcp_src": sport, "tcp_dst": dport, "tcp_flags": 0x12 if reply else 0x02}
    if proto == "udp":
        return {"ip_proto": 17, "udp_src": sport, "udp_dst": dport}
    if eth_type == ETH_IPV6:
        return {"ip_proto": 58, "icmpv6_type": 129 if reply else 128, "icmpv6_code": 0, "icmp_id": sport}
    return {"ip_proto": 1, "icmpv4_type": 0 if reply else 8, "icmpv4_code": 0, "icmp_id": sport}


def reply_to(model: Model, delivered: Hop) -> Start | None:
    """The answer of the VM or endpoint a walk delivered to: addresses and ports swapped,
    from its own port (None if the last hop delivered nothing)."""
    p = delivered.sent
    if delivered.outcome != "delivered" or p is None:
        return None
    ifname = delivered.detail.split(":", 1)[0].removeprefix("out of ")
    node = delivered.node
    b = next((b for b in model.bindings_on(node) if b.port == ifname), None)
    if b is None:
        return None
    pkt = {k: v for k, v in p.items() if not k.startswith(("ct_", "reg", "tun_", "tunnel_id"))}
    pkt["eth_src"], pkt["eth_dst"] = p.get("eth_dst"), p.get("eth_src")
    for a, z in (("ipv4_src", "ipv4_dst"), ("ipv6_src", "ipv6_dst"), ("tcp_src", "tcp_dst"),
                 ("udp_src", "udp_dst")):
        if a in p:
            pkt[a], pkt[z] = p[z], p[a]
    if "tcp_flags" in pkt:
        pkt["tcp_flags"] = 0x12
    if pkt.get("icmpv4_type") == 8:
        pkt["icmpv4_type"] = 0
    if pkt.get("icmpv6_type") == 128:
        pkt["icmpv6_type"] = 129
    return Start(node, ifname, pkt, f"the answer of {b.kind} {b.logical_port} (port {ifname})",
                 "253" if b.kind == "vm" else None)


_PORT = re.compile(r"^\s*(\d+)\(([^)]+)\):", re.M)


def node_flows(model: Model, name: str, dump: str, show: str) -> NodeFlows:
    """One node's part of the walk from its switch's own text: ``ovs-ofctl -O OpenFlow15
    dump-flows br-int`` (``--names`` or not) and ``ovs-ofctl show br-int`` (port numbers
    and names),
    with its role and underlay address from the NB."""
    from .flowtext import parse_dump
    node = model.node(name)
    if node is None:
        raise ValueError(f"no node called {name!r} in the NB")
    ports = {int(no): ifname for no, ifname in _PORT.findall(show)}
    return NodeFlows(name, node.role, str(node.underlay_ip), ports,
                     parse_dump(dump, tables_for(node.role), {v: k for k, v in ports.items()}))


def trace(tracer: Tracer, model: Model, src: str, dst: str, proto: str = "tcp", port: int = 80,
          sport: int = 40000, src_addr: str | None = None, reply: bool = False) -> list[Hop]:
    """The walk of ``start(...)``'s packet, and with ``reply`` then of the answer of
    whoever got it."""
    s = start(model, src, dst, proto, port, sport, src_addr)
    hops = tracer.walk(s.node, tracer.port_of(s.node, s.port), s.packet, s.entered, patent=s.patent)
    if reply and (r := reply_to(model, hops[-1])) is not None:
        hops += tracer.walk(r.node, tracer.port_of(r.node, r.port), r.packet, r.entered,
                            reply=True, patent=r.patent)
    return hops


def read_dumps(model: Model, directory: Any) -> dict[str, NodeFlows]:
    """The nodes' flows from ``directory``/<node>.txt, each the output of ``ovs-ofctl -O
    OpenFlow15 show br-int`` followed by ``ovs-ofctl -O OpenFlow15 --names dump-flows
    br-int`` (or ``--no-names``) on that node (nodes without a file are left out of the walk). ValueError if
    there is none, or a file names no port."""
    from pathlib import Path
    out = {}
    for n in model.nodes:
        path = Path(directory) / f"{n.name}.txt"
        if path.exists():
            text = path.read_text()
            out[n.name] = node_flows(model, n.name, text, text)
            if not out[n.name].ports:
                raise ValueError(f"{path}: no 'ovs-ofctl show br-int' port lines in it")
    if not out:
        raise ValueError(f"no <node>.txt of any NB node ({', '.join(n.name for n in model.nodes)}) "
                         f"in {directory}")
    return out
