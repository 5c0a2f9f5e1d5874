"""Topology files and the one validator every entry point shares.

A topology file (YAML, see ``topologies/two-tenants.yaml``) declares the platform
settings, regions, nodes (hosts and the SDN appliance), customer VNets with their
IPv4 ranges and subnets, VMs, multi-tenant services with their endpoints, and
subscriptions. ``vnet64 load`` writes it into the NB database; ``vnet64-lab``
builds the same nodes for real.

Validation is complete before anything is written: every problem is reported
with the file, line and field path (``two-tenants.yaml:31: vms[0].vnet: unknown
VNet 'customer-z'``). The same field parsers (``parse_*``) and semantic checks
(``VNet.check_vm_ipv4``, ``VNet.subnet_for``) back the CLI's ``add`` commands
and the NB commands, so a rule lives in one place.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from . import address, gateway
from .address import AddressError

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
ROLES = ("host", "appliance")
DEFAULT_PLATFORM_IP = "100.100.0.1"
# The direct path (NB Platform.direct_path) where the NB does not set it: on, because it wins
# (benchmarks/results/datapath.md: a / a-appliance)
DIRECT_PATH_DEFAULT = True
DEFAULT_TRANSLATOR_PREFIX = "fd64:64::/96"
DPID_BASE = 0x564E << 48  # "VN": datapath id = DPID_BASE | underlay IPv4, unless given


class TopologyError(ValueError):
    """Invalid topology or CLI input. ``where`` names file:line and the field path."""

    def __init__(self, message: str, where: str = ""):
        self.where = where
        self.reason = message
        super().__init__(f"{where}: {message}" if where else message)


# ---------------------------------------------------------------------------
# YAML with line numbers


class _Map(dict):
    """A mapping that remembers the line of each key (and its own)."""

    line: int = 0
    key_lines: dict


class _List(list):
    line: int = 0
    item_lines: list


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise TopologyError(f"keys must be strings, got {key!r}", str(key_node.start_mark.line + 1))
        if key in result:
            raise TopologyError(f"duplicate key {key!r}", str(key_node.start_mark.line + 1))
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> _List:
    result = _List(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


class _Ctx:
    """Where we are in the document: file name, field path, line."""

    def __init__(self, source: str, path: str = "", line: int = 0):
        self.source, self.path, self.line = source, path, line

    def where(self) -> str:
        loc = f"{self.source}:{self.line}" if self.line else self.source
        return f"{loc}: {self.path}" if self.path else loc

    def error(self, message: str) -> TopologyError:
        return TopologyError(message, self.where())

    def key(self, mapping: Any, key: str) -> "_Ctx":
        line = getattr(mapping, "key_lines", {}).get(key, getattr(mapping, "line", self.line))
        path = f"{self.path}.{key}" if self.path else key
        return _Ctx(self.source, path, line)

    def item(self, seq: Any, index: int) -> "_Ctx":
        lines = getattr(seq, "item_lines", [])
        line = lines[index] if index < len(lines) else self.line
        return _Ctx(self.source, f"{self.path}[{index}]", line)


def _mapping(value: Any, ctx: _Ctx, required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise ctx.error(f"expected a mapping with keys {', '.join(required + optional)}, "
                        f"got {type(value).__name__}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise ctx.key(value, unknown[0]).error(
            f"unknown field {unknown[0]!r} (expected one of: {', '.join(required + optional)})")
    for key in required:
        if key not in value or value[key] is None:
            raise ctx.error(f"missing required field {key!r}")
    return value


def _list(value: Any, ctx: _Ctx) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ctx.error(f"expected a list, got {type(value).__name__}")
    return value


def _wrap(ctx: _Ctx, parse: Callable[..., Any], *args: Any) -> Any:
    """Run a field parser and give its error the field's location."""
    try:
        return parse(*args)
    except (TopologyError, AddressError) as exc:
        raise ctx.error(getattr(exc, "reason", str(exc))) from None


# ---------------------------------------------------------------------------
# Field parsers (shared with the CLI)


def parse_name(value: Any, what: str = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise TopologyError(
            f"{what} must start with a letter and use only letters, digits, '_', '.', '-' "
            f"(at most 32 characters), got {value!r}")
    return value


def parse_cidr(value: Any, what: str = "IPv4 range") -> IPv4Network:
    try:
        net = IPv4Network(str(value), strict=True)
    except ValueError as exc:
        raise TopologyError(f"{what} must be an IPv4 network like 10.0.0.0/16, got {value!r} ({exc})") \
            from None
    if "/" not in str(value):
        raise TopologyError(f"{what} must have a prefix length, like 10.0.0.0/16, got {value!r}")
    return net


def parse_mac(value: Any) -> str:
    text = str(value).lower()
    if not MAC_RE.match(text):
        raise TopologyError(f"MAC must look like 02:00:00:00:00:01, got {value!r}")
    if int(text[:2], 16) & 1:
        raise TopologyError(f"MAC {text} is a multicast address")
    return text


def parse_role(value: Any) -> str:
    if value not in ROLES:
        raise TopologyError(f"role must be one of {', '.join(ROLES)}, got {value!r}")
    return value


def parse_dpid(value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            raise TopologyError(f"datapath id must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise TopologyError(f"datapath id must be an integer 1..2^63-1, got {value!r}")
    return value


def parse_service_ipv6(value: Any) -> IPv6Address:
    addr = address.parse_ipv6(value if isinstance(value, str) else str(value), "endpoint IPv6")
    if addr in address.STEERING_PREFIX:
        raise TopologyError(f"endpoint IPv6 {addr} lies inside the steering prefix "
                            f"{address.STEERING_PREFIX}, which is reserved for platform addresses")
    if addr.is_multicast or addr.is_loopback or addr.is_unspecified or addr.is_link_local:
        raise TopologyError(f"endpoint IPv6 {addr} is not a global or unique-local unicast address")
    return addr


def default_mac(name: str) -> str:
    """A stable locally administered MAC derived from an object's name."""
    digest = hashlib.sha1(name.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def default_dpid(underlay_ip: IPv4Address) -> int:
    return DPID_BASE | int(underlay_ip)


# ---------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class Region:
    name: str
    region_id: int


@dataclass(frozen=True)
class Subnet:
    name: str
    subnet_id: int
    cidr: IPv4Network


@dataclass(frozen=True)
class VNet:
    name: str
    region: str
    vnet_id: int
    cidrs: tuple[IPv4Network, ...]
    subnets: tuple[Subnet, ...] = ()
    snat_vip: IPv4Address | None = None

    def normalized(self) -> "VNet":
        """The same VNet with ranges and subnets in a canonical order (for comparison)."""
        return VNet(self.name, self.region, self.vnet_id, tuple(sorted(self.cidrs)),
                    tuple(sorted(self.subnets, key=lambda s: s.name)), self.snat_vip)

    def check_vm_ipv4(self, ipv4: IPv4Address) -> None:
        address.check_in_ranges(ipv4, self.cidrs, f"VNet {self.name}")
        net = next(n for n in self.cidrs if ipv4 in n)
        if net.prefixlen < 31 and ipv4 in (net.network_address, net.broadcast_address):
            raise TopologyError(f"IPv4 {ipv4} is the network or broadcast address of {net} "
                                f"in VNet {self.name}")

    def subnet_for(self, ipv4: IPv4Address, name: str | None = None) -> Subnet:
        """The subnet holding ``ipv4`` (or the named one, checked to hold it).

        The subnet's network, broadcast and gateway addresses are not VM addresses.
        """
        sub = self._subnet_for(ipv4, name)
        reserved = {sub.cidr.network_address: "network", sub.cidr.broadcast_address: "broadcast",
                    gateway.vm_gateway(sub.cidr): "virtual gateway"}
        if ipv4 in reserved:
            raise TopologyError(f"IPv4 {ipv4} is the {reserved[ipv4]} address of subnet {sub.name} "
                                f"({sub.cidr}) in VNet {self.name}")
        return sub

    def _subnet_for(self, ipv4: IPv4Address, name: str | None) -> Subnet:
        if name is not None:
            for sub in self.subnets:
                if sub.name == name:
                    if ipv4 not in sub.cidr:
                        raise TopologyError(f"IPv4 {ipv4} is outside subnet {name} ({sub.cidr}) "
                                            f"of VNet {self.name}")
                    return sub
            raise TopologyError(f"VNet {self.name} has no subnet {name!r} "
                                f"(has: {', '.join(s.name for s in self.subnets) or 'none'})")
        for sub in self.subnets:
            if ipv4 in sub.cidr:
                return sub
        raise TopologyError(f"IPv4 {ipv4} is in no subnet of VNet {self.name} "
                            f"(subnets: {', '.join(f'{s.name} {s.cidr}' for s in self.subnets)})")


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    underlay_ip: IPv4Address
    datapath_id: int


@dataclass(frozen=True)
class VM:
    name: str
    vnet: str
    subnet: str
    ipv4: IPv4Address
    mac: str
    host: str


@dataclass(frozen=True)
class Endpoint:
    name: str
    ipv6: IPv6Address
    host: str
    mac: str


@dataclass(frozen=True)
class Service:
    name: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class Subscription:
    vm: str
    service: str


@dataclass(frozen=True)
class Platform:
    platform_ip: IPv4Address
    translator_prefix: ipaddress.IPv6Network
    region: str
    appliance: str


@dataclass(frozen=True)
class Topology:
    name: str
    platform: Platform
    regions: tuple[Region, ...]
    nodes: tuple[Node, ...]
    vnets: tuple[VNet, ...]
    vms: tuple[VM, ...]
    services: tuple[Service, ...]
    subscriptions: tuple[Subscription, ...]
    lab: dict = field(default_factory=dict)  # lab-only settings, validated by vnet64-lab
    source: str = ""
    # Line of each key under ``lab:`` ("" = the ``lab:`` key itself), for error messages.
    lab_lines: dict = field(default_factory=dict)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def vnet(self, name: str) -> VNet:
        return next(v for v in self.vnets if v.name == name)

    def region(self, name: str) -> Region:
        return next(r for r in self.regions if r.name == name)

    def vm(self, name: str) -> VM:
        return next(v for v in self.vms if v.name == name)

    def platform_address(self, vm_name: str) -> address.PlatformAddress:
        """The platform IPv6 address a subscription of this VM gets."""
        vm = self.vm(vm_name)
        vnet = self.vnet(vm.vnet)
        subnet = next(s for s in vnet.subnets if s.name == vm.subnet)
        return address.PlatformAddress(
            region=self.region(vnet.region).region_id, vnet=vnet.vnet_id,
            subnet=subnet.subnet_id, ipv4=vm.ipv4,
            snat_vip=vnet.snat_vip or address.DEFAULT_SNAT_VIP)

    @property
    def hosts(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role == "host")

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(e for s in self.services for e in s.endpoints)


# ---------------------------------------------------------------------------
# The validator


class _Names:
    """Uniqueness of names and values across a document."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, Any], str] = {}

    def claim(self, kind: str, value: Any, ctx: _Ctx) -> None:
        key = (kind, value)
        if key in self.seen:
            raise ctx.error(f"duplicate {kind} {value} (first used at {self.seen[key]})")
        self.seen[key] = ctx.where()


def _parse_platform(doc: dict, ctx: _Ctx, regions: dict[str, Region]) -> dict:
    raw = doc.get("platform") or {}
    pctx = ctx.key(doc, "platform")
    raw = _mapping(raw, pctx, (), ("platform_ip", "translator_prefix", "region", "appliance"))
    platform_ip = _wrap(pctx.key(raw, "platform_ip"), address.parse_ipv4,
                        str(raw.get("platform_ip", DEFAULT_PLATFORM_IP)), "platform_ip")
    if platform_ip.is_multicast or platform_ip.is_loopback or platform_ip.is_unspecified:
        raise pctx.key(raw, "platform_ip").error(f"platform_ip {platform_ip} is not a unicast address")
    prefix = _wrap(pctx.key(raw, "translator_prefix"), address.check_translator_prefix,
                   str(raw.get("translator_prefix", DEFAULT_TRANSLATOR_PREFIX)))
    region = raw.get("region")
    if region is None:
        if len(regions) != 1:
            raise pctx.error("platform.region is required when the file declares several regions")
        region = next(iter(regions))
    elif region not in regions:
        raise pctx.key(raw, "region").error(f"unknown region {region!r}")
    return {"platform_ip": platform_ip, "translator_prefix": prefix, "region": region,
            "appliance": raw.get("appliance"), "ctx": pctx, "raw": raw}


def _parse_node(raw: Any, c: _Ctx, names: _Names) -> Node:
    raw = _mapping(raw, c, ("name", "role", "underlay_ip"), ("datapath_id",))
    name = _wrap(c.key(raw, "name"), parse_name, raw["name"], "node name")
    names.claim("node", name, c.key(raw, "name"))
    role = _wrap(c.key(raw, "role"), parse_role, raw["role"])
    uip = _wrap(c.key(raw, "underlay_ip"), address.parse_ipv4, str(raw["underlay_ip"]), "underlay_ip")
    if uip.is_multicast or uip.is_loopback or uip.is_unspecified:
        raise c.key(raw, "underlay_ip").error(f"underlay_ip {uip} is not a unicast address")
    names.claim("underlay IP", uip, c.key(raw, "underlay_ip"))
    dpid = _wrap(c.key(raw, "datapath_id"), parse_dpid, raw["datapath_id"]) \
        if "datapath_id" in raw else default_dpid(uip)
    names.claim("datapath id", f"{dpid:#018x}", c.key(raw, "datapath_id") if "datapath_id" in raw else c)
    return Node(name, role, uip, dpid)


def _parse_vnet(raw: Any, c: _Ctx, names: _Names, regions: dict[str, Region], default_region: str,
                platform_ip: IPv4Address) -> VNet:
    raw = _mapping(raw, c, ("name", "id", "cidrs", "subnets"), ("region", "snat_vip"))
    name = _wrap(c.key(raw, "name"), parse_name, raw["name"], "VNet name")
    names.claim("VNet", name, c.key(raw, "name"))
    region = raw.get("region", default_region)
    if region not in regions:
        raise c.key(raw, "region").error(f"unknown region {region!r} (regions: {', '.join(regions)})")
    vid = _wrap(c.key(raw, "id"), address.parse_id, raw["id"], "VNet id")
    names.claim(f"VNet id in region {region}:", f"{vid:#x}", c.key(raw, "id"))
    cc = c.key(raw, "cidrs")
    raw_cidrs = _list(raw["cidrs"], cc)
    if not raw_cidrs:
        raise cc.error("a VNet needs at least one IPv4 range")
    cidrs = tuple(_wrap(cc.item(raw_cidrs, j), parse_cidr, v) for j, v in enumerate(raw_cidrs))
    for j, a in enumerate(cidrs):
        for b in cidrs[:j]:
            if a.overlaps(b):
                raise cc.item(raw_cidrs, j).error(f"range {a} overlaps {b} of the same VNet")
        if platform_ip in a:
            raise cc.item(raw_cidrs, j).error(
                f"range {a} contains platform_ip {platform_ip}: VMs could not tell "
                f"the platform from a neighbour")
    snat_vip = None
    if raw.get("snat_vip") is not None:
        snat_vip = _wrap(c.key(raw, "snat_vip"), address.parse_ipv4, str(raw["snat_vip"]), "snat_vip")
        _wrap(c.key(raw, "snat_vip"), address.check_snat_vip, snat_vip)
    sc = c.key(raw, "subnets")
    raw_subs = _list(raw["subnets"], sc)
    if not raw_subs:
        raise sc.error("a VNet needs at least one subnet")
    subnets: list[Subnet] = []
    sub_names = _Names()
    for j, rs in enumerate(raw_subs):
        s = sc.item(raw_subs, j)
        rs = _mapping(rs, s, ("name", "id", "cidr"), ())
        sname = _wrap(s.key(rs, "name"), parse_name, rs["name"], "subnet name")
        sub_names.claim("subnet", sname, s.key(rs, "name"))
        sid = _wrap(s.key(rs, "id"), address.parse_id, rs["id"], "subnet id")
        sub_names.claim("subnet id", f"{sid:#x}", s.key(rs, "id"))
        scidr = _wrap(s.key(rs, "cidr"), parse_cidr, rs["cidr"], "subnet cidr")
        if scidr.prefixlen > 29:
            raise s.key(rs, "cidr").error(f"subnet {scidr} is too small: use /29 or larger")
        if not any(scidr.subnet_of(n) for n in cidrs):
            raise s.key(rs, "cidr").error(f"subnet {scidr} is not inside the VNet's ranges "
                                          f"({', '.join(map(str, cidrs))})")
        for other in subnets:
            if scidr.overlaps(other.cidr):
                raise s.key(rs, "cidr").error(f"subnet {scidr} overlaps subnet {other.name} ({other.cidr})")
        subnets.append(Subnet(sname, sid, scidr))
    return VNet(name, region, vid, cidrs, tuple(subnets), snat_vip)


def node_from_fields(item: dict, source: str = "command line") -> Node:
    """Validate one node given as a mapping (the CLI's ``node add``)."""
    return _parse_node(item, _Ctx(source), _Names())


def vnet_from_fields(item: dict, regions: Sequence[Region], platform_ip: IPv4Address,
                     source: str = "command line") -> VNet:
    """Validate one VNet given as a mapping (the CLI's ``vnet add``)."""
    by_name = {r.name: r for r in regions}
    return _parse_vnet(item, _Ctx(source), _Names(), by_name, item.get("region", ""), platform_ip)


def validate(doc: Any, source: str = "<topology>") -> Topology:
    """Check a parsed topology document completely; return the model or raise TopologyError."""
    top = _Ctx(source, "", getattr(doc, "line", 0))
    doc = _mapping(doc, top, ("nodes", "vnets"),
                   ("name", "platform", "regions", "vms", "services", "subscriptions", "lab"))
    names = _Names()

    regions: dict[str, Region] = {}
    rctx = top.key(doc, "regions")
    raw_regions = _list(doc.get("regions"), rctx) or [{"name": "default", "id": 0}]
    for i, raw in enumerate(raw_regions):
        c = rctx.item(raw_regions, i)
        raw = _mapping(raw, c, ("name", "id"), ())
        name = _wrap(c.key(raw, "name"), parse_name, raw["name"], "region name")
        names.claim("region", name, c.key(raw, "name"))
        rid = _wrap(c.key(raw, "id"), address.parse_id, raw["id"], "region id")
        names.claim("region id", f"{rid:#x}", c.key(raw, "id"))
        regions[name] = Region(name, rid)

    platform = _parse_platform(doc, top, regions)

    nodes: dict[str, Node] = {}
    nctx = top.key(doc, "nodes")
    raw_nodes = _list(doc["nodes"], nctx)
    for i, raw in enumerate(raw_nodes):
        node = _parse_node(raw, nctx.item(raw_nodes, i), names)
        nodes[node.name] = node
    appliances = [n for n in nodes.values() if n.role == "appliance"]
    appliance = platform["appliance"]
    if appliance is None:
        if len(appliances) != 1:
            raise nctx.error(f"exactly one node with role appliance is needed when platform.appliance "
                             f"is not given (found {len(appliances)})")
        appliance = appliances[0].name
    elif appliance not in nodes or nodes[appliance].role != "appliance":
        raise platform["ctx"].key(platform["raw"], "appliance").error(
            f"{appliance!r} is not a node with role appliance")

    def host_ref(value: Any, c: _Ctx) -> str:
        if value not in nodes:
            raise c.error(f"unknown host {value!r} (nodes: {', '.join(nodes)})")
        if nodes[value].role != "host":
            raise c.error(f"{value!r} is the {nodes[value].role}, not a host")
        return value

    vnets: dict[str, VNet] = {}
    vctx = top.key(doc, "vnets")
    raw_vnets = _list(doc["vnets"], vctx)
    for i, raw in enumerate(raw_vnets):
        vnet = _parse_vnet(raw, vctx.item(raw_vnets, i), names, regions, platform["region"],
                           platform["platform_ip"])
        vnets[vnet.name] = vnet

    vms: dict[str, VM] = {}
    mctx = top.key(doc, "vms")
    raw_vms = _list(doc.get("vms"), mctx)
    for i, raw in enumerate(raw_vms):
        c = mctx.item(raw_vms, i)
        raw = _mapping(raw, c, ("name", "vnet", "ipv4", "host"), ("subnet", "mac"))
        name = _wrap(c.key(raw, "name"), parse_name, raw["name"], "VM name")
        names.claim("VM", name, c.key(raw, "name"))
        if raw["vnet"] not in vnets:
            raise c.key(raw, "vnet").error(f"unknown VNet {raw['vnet']!r} (VNets: {', '.join(vnets)})")
        vnet = vnets[raw["vnet"]]
        ipv4 = _wrap(c.key(raw, "ipv4"), address.parse_ipv4, str(raw["ipv4"]), "VM ipv4")
        _wrap(c.key(raw, "ipv4"), vnet.check_vm_ipv4, ipv4)
        names.claim(f"IPv4 in VNet {vnet.name}:", ipv4, c.key(raw, "ipv4"))
        subnet = _wrap(c.key(raw, "subnet") if "subnet" in raw else c.key(raw, "ipv4"),
                       vnet.subnet_for, ipv4, raw.get("subnet"))
        host = host_ref(raw["host"], c.key(raw, "host"))
        mac = _wrap(c.key(raw, "mac"), parse_mac, raw["mac"]) if "mac" in raw else default_mac(name)
        names.claim("MAC", mac, c.key(raw, "mac") if "mac" in raw else c)
        vms[name] = VM(name, vnet.name, subnet.name, ipv4, mac, host)

    services: dict[str, Service] = {}
    sctx = top.key(doc, "services")
    raw_services = _list(doc.get("services"), sctx)
    for i, raw in enumerate(raw_services):
        c = sctx.item(raw_services, i)
        raw = _mapping(raw, c, ("name", "endpoints"), ())
        name = _wrap(c.key(raw, "name"), parse_name, raw["name"], "service name")
        names.claim("service", name, c.key(raw, "name"))
        ec = c.key(raw, "endpoints")
        raw_eps = _list(raw["endpoints"], ec)
        if not raw_eps:
            raise ec.error("a service needs at least one endpoint")
        endpoints = []
        for j, re_ in enumerate(raw_eps):
            e = ec.item(raw_eps, j)
            re_ = _mapping(re_, e, ("name", "host"), ("ipv6", "mac"))
            ename = _wrap(e.key(re_, "name"), parse_name, re_["name"], "endpoint name")
            names.claim("endpoint", ename, e.key(re_, "name"))
            if re_.get("ipv6") is None:
                raise e.error(f"endpoint {ename} has no ipv6: a service endpoint speaks IPv6 only")
            ipv6 = _wrap(e.key(re_, "ipv6"), parse_service_ipv6, re_["ipv6"])
            names.claim("endpoint IPv6", ipv6, e.key(re_, "ipv6"))
            host = host_ref(re_["host"], e.key(re_, "host"))
            mac = _wrap(e.key(re_, "mac"), parse_mac, re_["mac"]) if "mac" in re_ else default_mac(ename)
            names.claim("MAC", mac, e.key(re_, "mac") if "mac" in re_ else e)
            endpoints.append(Endpoint(ename, ipv6, host, mac))
        services[name] = Service(name, tuple(endpoints))

    subs: list[Subscription] = []
    bctx = top.key(doc, "subscriptions")
    raw_subs = _list(doc.get("subscriptions"), bctx)
    for i, raw in enumerate(raw_subs):
        c = bctx.item(raw_subs, i)
        raw = _mapping(raw, c, ("vm", "service"), ())
        if raw["vm"] not in vms:
            raise c.key(raw, "vm").error(f"unknown VM {raw['vm']!r}")
        if raw["service"] not in services:
            raise c.key(raw, "service").error(f"unknown service {raw['service']!r}")
        names.claim("subscription", f"{raw['vm']} -> {raw['service']}", c)
        subs.append(Subscription(raw["vm"], raw["service"]))

    lab = doc.get("lab") or {}
    if not isinstance(lab, dict):
        raise top.key(doc, "lab").error("expected a mapping of lab settings")

    topo_name = doc.get("name") or Path(source).stem
    return Topology(
        name=str(topo_name),
        platform=Platform(platform["platform_ip"], platform["translator_prefix"],
                          platform["region"], appliance),
        regions=tuple(regions.values()), nodes=tuple(nodes.values()),
        vnets=tuple(vnets.values()), vms=tuple(vms.values()),
        services=tuple(services.values()), subscriptions=tuple(subs),
        lab=dict(lab), source=source,
        lab_lines={"": getattr(doc, "key_lines", {}).get("lab", 0),
                   **dict(getattr(lab, "key_lines", {}))})


def loads(text: str, source: str = "<topology>") -> Topology:
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except TopologyError as exc:
        raise TopologyError(exc.reason, f"{source}:{exc.where}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise TopologyError(f"not valid YAML: {getattr(exc, 'problem', exc)}", where) from None
    return validate(doc, source)


def load(path: str | Path) -> Topology:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(f"cannot read topology file: {exc.strerror}", str(path)) from None
    return loads(text, path.name)
