"""A host's NAT sessions, one row each: service ``[IPv6]:port`` <-> ``Platform_IP:port``
<-> VM ``IPv4:port`` (issue 20, item 2), built from the node's conntrack as Open vSwitch
shows it (``ovs-appctl dpctl/dump-conntrack -s``) and mapped back to names.

A connection a service opens to a VM leaves one entry in each of three zones of the
customer host (controller customer module doc):

- the IPv6 SNAT zone (``ZONE_V6_SNAT``): service ``[IPv6]:port`` -> VM platform
  ``[IPv6]:port``, its reply to ``<xlat /96>::<alias>``, the pair's alias - what TAYGA
  turns into the IPv4 source;
- the IPv6 DNAT zone (``ZONE_V6_DNAT``): the same towards the VM's translated address;
- the VNet's zone: ``alias:port`` -> VM ``IPv4:port``, its reply to
  ``Platform_IP:port``, the port conntrack chose - what the VM sees.

A session joins the VNet zone's entry to the SNAT zone's by the alias and both ports;
state and time left are the VNet zone's (the VM's side). The text generators here are
pure (:func:`parse`, :func:`join`, :func:`port_use`, :func:`render`); ``vnet64-node
sessions`` runs them.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

from ..controller.pipeline import ZONE_ENDPOINTS, ZONE_V6_DNAT, ZONE_V6_SNAT

ALIASES = IPv4Network("198.18.0.0/15")     # controller customer.ALIAS_POOL: pairs' aliases
PORT_RANGE = (1024, 65535)                 # controller customer.PORT_RANGE (the default)

_GROUP = re.compile(r"(orig|reply|protoinfo)=\(([^)]*)\)")
_FIELD = re.compile(r"(\w+)=([^,()]+)")


@dataclass(frozen=True)
class Tuple:
    src: str
    dst: str
    sport: int | None = None     # TCP/UDP ports; an ICMP echo's identifier
    dport: int | None = None


@dataclass(frozen=True)
class Entry:
    """One line of ``dpctl/dump-conntrack``."""
    proto: str
    orig: Tuple
    reply: Tuple
    zone: int
    timeout: int | None = None
    state: str | None = None


def _tuple(text: str) -> Tuple:
    f = dict(_FIELD.findall(text))
    if "id" in f:       # icmp: id=N,type=T,code=C
        return Tuple(f["src"], f["dst"], int(f["id"]), int(f["id"]))
    return Tuple(f["src"], f["dst"], int(f["sport"]) if "sport" in f else None,
                 int(f["dport"]) if "dport" in f else None)


def parse(text: str) -> list[Entry]:
    """The entries of ``ovs-appctl dpctl/dump-conntrack [-s]`` (lines it cannot read are
    skipped: the command prints a header on some datapaths)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        groups = dict(_GROUP.findall(line))
        if "orig" not in groups or "reply" not in groups:
            continue
        rest = _GROUP.sub("", line)
        fields = dict(_FIELD.findall(rest))
        state = dict(_FIELD.findall(groups.get("protoinfo", ""))).get("state")
        out.append(Entry(proto=line.split(",", 1)[0], orig=_tuple(groups["orig"]),
                         reply=_tuple(groups["reply"]), zone=int(fields.get("zone", 0)),
                         timeout=int(fields["timeout"]) if "timeout" in fields else None,
                         state=state))
    return out


@dataclass(frozen=True)
class Session:
    proto: str
    service: str            # the endpoint's name, or "" when the NB has none for the address
    service_ip: str
    service_port: int | None
    platform_ip: str        # what the VM sees: Platform_IP (or its VNet's SNAT VIP)
    platform_port: int | None
    vm: str
    vm_ip: str
    vm_port: int | None
    state: str | None
    timeout: int | None     # seconds left
    alias: str              # the pair's alias (controller customer module doc)


def _alias_of(addr: str) -> str | None:
    """The alias a ``<xlat /96>::<alias>`` address carries (its low 32 bits)."""
    ip = ip_address(addr)
    if not isinstance(ip, IPv6Address):
        return None
    alias = IPv4Address(int(ip) & 0xFFFFFFFF)
    return str(alias) if alias in ALIASES else None


def join(entries: Iterable[Entry], vm_name: Callable[[int, str], str | None],
         endpoint_name: Callable[[str], str | None]) -> list[Session]:
    """Sessions from a host's conntrack entries. ``vm_name(zone, ipv4)`` names a VM by its
    VNet's zone and address (None: not a VNet zone of this platform); ``endpoint_name``
    names a service endpoint by its IPv6. A VNet-zone entry whose service side is gone
    (or not yet there) is still a session, with the service unknown."""
    entries = list(entries)
    services = {}
    for e in entries:
        if e.zone == ZONE_V6_SNAT:
            alias = _alias_of(e.reply.dst)
            if alias:
                services[(e.proto.replace("icmp6", "icmp"), alias, e.reply.dport, e.orig.dport)] = e
    out = []
    for e in entries:
        if e.zone in (ZONE_V6_SNAT, ZONE_V6_DNAT, ZONE_ENDPOINTS) or ip_address(e.orig.src) not in ALIASES:
            continue
        vm = vm_name(e.zone, e.orig.dst)
        if vm is None:
            continue
        svc = services.get((e.proto, e.orig.src, e.orig.sport, e.orig.dport))
        out.append(Session(
            proto=e.proto, service=(endpoint_name(svc.orig.src) or "") if svc else "",
            service_ip=svc.orig.src if svc else "", service_port=svc.orig.sport if svc else None,
            platform_ip=e.reply.dst, platform_port=e.reply.dport, vm=vm, vm_ip=e.orig.dst,
            vm_port=e.orig.dport, state=e.state, timeout=e.timeout, alias=e.orig.src))
    return sorted(out, key=lambda s: (s.vm, s.proto, s.vm_port or 0, s.platform_port or 0))


def port_use(sessions: Iterable[Session], port_range: tuple[int, int] = PORT_RANGE) -> list[dict]:
    """Per VM address, protocol and port: how many of the Platform_IP ports conntrack may
    choose towards it are in use (a new connection is refused when none is left)."""
    size = port_range[1] - port_range[0] + 1
    used = Counter((s.vm, s.proto, s.vm_ip, s.vm_port) for s in sessions if s.proto in ("tcp", "udp"))
    return [{"vm": vm, "proto": proto, "vm_ip": ip, "vm_port": port, "in_use": n, "of": size,
             "percent": round(100 * n / size, 2)}
            for (vm, proto, ip, port), n in sorted(used.items())]


def connection_key(s: Session) -> tuple:
    """What tells one connection apart: its VM address and port, and the pair's alias and
    Platform_IP port conntrack gave it (unique in the VNet's zone)."""
    return (s.vm, s.proto, s.vm_ip, s.vm_port, s.alias, s.platform_ip, s.platform_port)


def new_connections(before: Iterable[Session] | set, after: Iterable[Session]) -> Counter:
    """Per (VM, protocol, VM address, port): the connections in ``after`` that were not in
    ``before`` (sessions, or a set of their ``connection_key``). Every connection is seen
    if the two readings are closer than the shortest time an entry stays in conntrack
    (30 s for UDP; a closed TCP connection keeps its entry 62 s)."""
    known = before if isinstance(before, set) else {connection_key(s) for s in before}
    return Counter(k[:4] for k in {connection_key(s) for s in after} - known)


COLUMNS = ("proto", "service", "service_ip", "service_port", "platform_ip", "platform_port",
           "vm", "vm_ip", "vm_port", "state", "timeout", "alias")


def render(sessions: list[Session], fmt: str = "table") -> str:
    """``table`` (for people), ``csv`` or ``json``-ready rows (see the CLI)."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for s in sessions:
            w.writerow({k: "" if v is None else v for k, v in asdict(s).items()})
        return buf.getvalue()
    rows = [("PROTO", "SERVICE", "", "PLATFORM", "VM", "", "STATE", "LEFT")]
    for s in sessions:
        rows.append((s.proto, s.service or "?", f"[{s.service_ip}]:{s.service_port}" if s.service_ip else "-",
                     f"{s.platform_ip}:{s.platform_port}", s.vm, f"{s.vm_ip}:{s.vm_port}",
                     s.state or "-", f"{s.timeout}s" if s.timeout is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n"
                   for r in rows)
