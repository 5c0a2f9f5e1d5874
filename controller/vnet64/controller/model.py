"""What the controller knows from the NB: a frozen snapshot the roles read.

``from_nb(api)`` copies the IDL replica into plain values once per change;
role logic never touches OVSDB rows, so it can be tested with hand-built
models.

Ports: the NB's port bindings (``Binding``, written by each node's agent when it
finds an OVS interface whose external_ids:iface-id names a VM or an endpoint) say
which interface on which node is whose port; the controller wires a VM or an
endpoint only through its binding (``roles.Ports``), never by an interface's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Callable, Iterable

from .. import address, gateway
from ..topology import DIRECT_PATH_DEFAULT


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    role: str                # "host" | "appliance"
    underlay_ip: IPv4Address
    datapath_id: int


@dataclass(frozen=True, slots=True)
class VM:
    name: str
    vnet: str
    host: str
    ipv4: IPv4Address
    mac: str
    ipv6: IPv6Address        # its platform address
    zone: int                # its VNet's conntrack zone
    gateway: IPv4Address     # its subnet's virtual gateway
    snat_ip: IPv4Address     # Platform_IP, or the SNAT VIP carried in its address
    services: frozenset[str] = frozenset()   # services with an active subscription

    @property
    def subscribed(self) -> bool:
        return bool(self.services)


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    service: str
    ipv6: IPv6Address
    mac: str
    host: str


@dataclass(frozen=True, slots=True)
class Binding:
    """A VM's or endpoint's port: the OVS interface ``port`` on ``node`` (NB Port_Binding)."""

    logical_port: str        # the VM's or endpoint's name (the interface's iface-id)
    kind: str                # "vm" | "endpoint"
    node: str
    port: str                # the interface's name on that node
    ofport: int | None = None   # as the node agent saw it; informational (the switch's own counts)


@dataclass(frozen=True, slots=True)
class Route:
    """A host mapping (NB Host_Mapping): a subscribed VM's platform IPv6 lives on ``host``.
    All the appliance needs (one ``route`` flow each); the NB keeps one per VM with an
    active subscription, moved with the VM."""

    ipv6: IPv6Address
    host: str


@dataclass
class Delta:
    """What changed in a :class:`Model` since the last ``take_delta()``: the names of the
    objects put or removed, each with its value before the first change (None: it did
    not exist). ``platform``: the Platform row changed (prefix, Platform_IP, appliance,
    tunnel token) - every node's flows may depend on it.

    The logic recomputes only the flows that depend on these objects
    (``Logic.nb_changed(delta)``); an empty delta changes nothing."""

    platform: bool = False
    nodes: dict = field(default_factory=dict)       # name -> Node before (or None)
    vms: dict = field(default_factory=dict)         # name -> VM before (or None)
    endpoints: dict = field(default_factory=dict)   # name -> Endpoint before (or None)
    bindings: dict = field(default_factory=dict)    # logical port -> Binding before (or None)
    routes: dict = field(default_factory=dict)      # IPv6 -> Route before (or None)

    def __bool__(self) -> bool:
        return bool(self.platform or self.nodes or self.vms or self.endpoints or self.bindings
                    or self.routes)

    def size(self) -> int:
        return (len(self.nodes) + len(self.vms) + len(self.endpoints) + len(self.bindings)
                + len(self.routes))


_PLATFORM = ("platform_ip", "translator_prefix", "appliance", "tunnel_token", "direct_path")
# The direct path (NB Platform.direct_path; unset: topology.DIRECT_PATH_DEFAULT): a
# service host sends a pair's packets straight to the VM's host once a reply from there
# taught it where it is


class Model:
    """The NB as the roles see it, indexed for their lookups.

    Built whole (``from_nb``, ``from_topology``, or the constructor) or kept up to date
    change by change (``put_*``/``remove_*``, as ``nbview`` does from the IDL's row
    events): each change updates the indexes in O(1) and is recorded in the pending
    :class:`Delta` (``take_delta()``). Values (``Node``, ``VM``...) are frozen; the model
    is not, so a logic holding it sees every change - and is told which by the delta.
    """

    def __init__(self, platform_ip: IPv4Address, translator_prefix: IPv6Network,
                 appliance: str | None, nodes: Iterable[Node] = (), vms: Iterable[VM] = (),
                 endpoints: Iterable[Endpoint] = (), tunnel_token: int | None = None,
                 bindings: Iterable[Binding] = (), routes: Iterable[Route] | None = None,
                 direct_path: bool = DIRECT_PATH_DEFAULT):
        """``routes``: the host mappings; None: one per subscribed VM of ``vms`` (what the
        NB keeps)."""
        self.platform_ip = platform_ip
        self.translator_prefix = translator_prefix
        self.appliance = appliance
        self.tunnel_token = tunnel_token   # the Geneve option every node sends and expects
        self.direct_path = direct_path
        self._nodes: dict[str, Node] = {}
        self._dpid: dict[int, Node] = {}
        self._vms: dict[str, VM] = {}
        self._vm6: dict[IPv6Address, VM] = {}
        self._vms_on: dict[str, dict[str, VM]] = {}
        self._ipv4s_on: dict[str, dict[IPv4Address, int]] = {}   # host -> address -> VMs using it
        self._eps: dict[str, Endpoint] = {}
        self._ep6: dict[IPv6Address, Endpoint] = {}
        self._eps_on: dict[str, dict[str, Endpoint]] = {}
        self._bindings: dict[str, Binding] = {}
        self._bound: dict[str, dict[str, Binding]] = {}
        self._routes: dict[IPv6Address, Route] = {}
        self._delta = Delta()
        for n in nodes:
            self.put_node(n)
        for vm in vms:
            self.put_vm(vm)
        for ep in endpoints:
            self.put_endpoint(ep)
        for b in bindings:
            self.put_binding(b)
        if routes is None:
            routes = [Route(vm.ipv6, vm.host) for vm in self._vms.values() if vm.subscribed]
        for r in routes:
            self.put_route(r)
        self._delta = Delta()

    # -- whole views (sorted by name) -----------------------------------------

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(sorted(self._nodes.values(), key=lambda n: n.name))

    @property
    def vms(self) -> tuple[VM, ...]:
        return tuple(self._vms[k] for k in sorted(self._vms))

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(self._eps[k] for k in sorted(self._eps))

    @property
    def bindings(self) -> tuple[Binding, ...]:
        return tuple(self._bindings[k] for k in sorted(self._bindings))

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(self._routes[k] for k in sorted(self._routes))

    def iter_routes(self) -> Iterable[Route]:
        """The host mappings, unsorted (``routes`` sorts: ~0.5 s at 100,000)."""
        return self._routes.values()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Model):
            return NotImplemented
        return (all(getattr(self, a) == getattr(other, a) for a in _PLATFORM)
                and self._nodes == other._nodes and self._vms == other._vms
                and self._eps == other._eps and self._bindings == other._bindings
                and self._routes == other._routes)

    __hash__ = None   # type: ignore[assignment]   mutable

    def __repr__(self) -> str:
        return (f"Model(platform_ip={self.platform_ip}, appliance={self.appliance}, "
                f"{len(self._nodes)} nodes, {len(self._vms)} VMs, {len(self._eps)} endpoints, "
                f"{len(self._bindings)} bindings, {len(self._routes)} routes)")

    # -- lookups --------------------------------------------------------------

    def node(self, name: str) -> Node | None:
        return self._nodes.get(name)

    def node_by_dpid(self, dpid: int) -> Node | None:
        return self._dpid.get(dpid)

    def vm(self, name: str) -> VM | None:
        return self._vms.get(name)

    def endpoint(self, name: str) -> Endpoint | None:
        return self._eps.get(name)

    def binding(self, logical_port: str) -> Binding | None:
        return self._bindings.get(logical_port)

    def route(self, ipv6: IPv6Address) -> Route | None:
        return self._routes.get(ipv6)

    def vm_by_ipv6(self, ipv6: IPv6Address) -> VM | None:
        return self._vm6.get(ipv6)

    def endpoint_by_ipv6(self, ipv6: IPv6Address) -> Endpoint | None:
        return self._ep6.get(ipv6)

    def vms_on(self, host: str) -> list[VM]:
        on = self._vms_on.get(host, {})
        return [on[k] for k in sorted(on)]

    def endpoints_on(self, host: str) -> list[Endpoint]:
        on = self._eps_on.get(host, {})
        return [on[k] for k in sorted(on)]

    def vm_ipv4s_on(self, host: str) -> Any:
        """The IPv4 addresses of the VMs on ``host`` (a set-like view, kept up to date)."""
        return self._ipv4s_on.get(host, {}).keys()

    def bindings_on(self, node: str) -> tuple[Binding, ...]:
        """The port bindings to ``node``: the VMs' and endpoints' interfaces its agent found."""
        return tuple(self._bound.get(node, {}).values())

    def hosts(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "host"]

    def appliance_node(self) -> Node | None:
        return self.node(self.appliance) if self.appliance else None

    def translated(self, ipv4: IPv4Address) -> IPv6Address:
        """``<translator /96>::<ipv4>``: how the stateless translator sees an IPv4 address."""
        return IPv6Address(int(self.translator_prefix.network_address) | int(ipv4))

    def allowed(self, service_ipv6: IPv6Address, vm_ipv6: IPv6Address) -> tuple[Endpoint, VM] | None:
        """The (endpoint, VM) of a pair when that endpoint's service holds an active
        subscription of that VM; None otherwise."""
        vm = self._vm6.get(vm_ipv6)
        ep = self._ep6.get(service_ipv6)
        if vm is None or ep is None or ep.service not in vm.services:
            return None
        return ep, vm

    def copy(self) -> "Model":
        """An independent model with the same contents and no pending changes."""
        return Model(self.platform_ip, self.translator_prefix, self.appliance, self._nodes.values(),
                     self._vms.values(), self._eps.values(), self.tunnel_token,
                     self._bindings.values(), self._routes.values(), self.direct_path)

    # -- changes --------------------------------------------------------------

    def take_delta(self) -> Delta:
        """The changes since the last call (and forget them)."""
        delta, self._delta = self._delta, Delta()
        return delta

    def set_platform(self, platform_ip: IPv4Address, translator_prefix: IPv6Network,
                     appliance: str | None, tunnel_token: int | None,
                     direct_path: bool = DIRECT_PATH_DEFAULT) -> None:
        new = (platform_ip, translator_prefix, appliance, tunnel_token, direct_path)
        if new != tuple(getattr(self, a) for a in _PLATFORM):
            (self.platform_ip, self.translator_prefix, self.appliance, self.tunnel_token,
             self.direct_path) = new
            self._delta.platform = True

    def put_node(self, node: Node) -> None:
        old = self._nodes.get(node.name)
        if old == node:
            return
        self._delta.nodes.setdefault(node.name, old)
        if old is not None and self._dpid.get(old.datapath_id) is old:
            del self._dpid[old.datapath_id]
        self._nodes[node.name] = node
        self._dpid[node.datapath_id] = node

    def remove_node(self, name: str) -> None:
        old = self._nodes.pop(name, None)
        if old is None:
            return
        self._delta.nodes.setdefault(name, old)
        if self._dpid.get(old.datapath_id) is old:
            del self._dpid[old.datapath_id]

    def put_vm(self, vm: VM) -> None:
        old = self._vms.get(vm.name)
        if old == vm:
            return
        if old is not None:
            self._unindex_vm(old)
        self._delta.vms.setdefault(vm.name, old)
        self._vms[vm.name] = vm
        self._vm6[vm.ipv6] = vm
        self._vms_on.setdefault(vm.host, {})[vm.name] = vm
        ipv4s = self._ipv4s_on.setdefault(vm.host, {})
        ipv4s[vm.ipv4] = ipv4s.get(vm.ipv4, 0) + 1

    def remove_vm(self, name: str) -> None:
        old = self._vms.pop(name, None)
        if old is None:
            return
        self._delta.vms.setdefault(name, old)
        self._unindex_vm(old)

    def _unindex_vm(self, old: VM) -> None:
        if self._vm6.get(old.ipv6) is old or self._vm6.get(old.ipv6) == old:
            del self._vm6[old.ipv6]
        on = self._vms_on.get(old.host, {})
        on.pop(old.name, None)
        if not on:
            self._vms_on.pop(old.host, None)
        ipv4s = self._ipv4s_on.get(old.host, {})
        if ipv4s.get(old.ipv4, 0) > 1:
            ipv4s[old.ipv4] -= 1
        else:
            ipv4s.pop(old.ipv4, None)
            if not ipv4s:
                self._ipv4s_on.pop(old.host, None)

    def put_endpoint(self, ep: Endpoint) -> None:
        old = self._eps.get(ep.name)
        if old == ep:
            return
        if old is not None:
            self._unindex_endpoint(old)
        self._delta.endpoints.setdefault(ep.name, old)
        self._eps[ep.name] = ep
        self._ep6[ep.ipv6] = ep
        self._eps_on.setdefault(ep.host, {})[ep.name] = ep

    def remove_endpoint(self, name: str) -> None:
        old = self._eps.pop(name, None)
        if old is None:
            return
        self._delta.endpoints.setdefault(name, old)
        self._unindex_endpoint(old)

    def _unindex_endpoint(self, old: Endpoint) -> None:
        if self._ep6.get(old.ipv6) == old:
            del self._ep6[old.ipv6]
        on = self._eps_on.get(old.host, {})
        on.pop(old.name, None)
        if not on:
            self._eps_on.pop(old.host, None)

    def put_binding(self, b: Binding) -> None:
        old = self._bindings.get(b.logical_port)
        if old == b:
            return
        if old is not None:
            self._unindex_binding(old)
        self._delta.bindings.setdefault(b.logical_port, old)
        self._bindings[b.logical_port] = b
        self._bound.setdefault(b.node, {})[b.logical_port] = b

    def put_route(self, r: Route) -> None:
        old = self._routes.get(r.ipv6)
        if old == r:
            return
        self._delta.routes.setdefault(r.ipv6, old)
        self._routes[r.ipv6] = r

    def remove_route(self, ipv6: IPv6Address) -> None:
        old = self._routes.pop(ipv6, None)
        if old is not None:
            self._delta.routes.setdefault(ipv6, old)

    def remove_binding(self, logical_port: str) -> None:
        old = self._bindings.pop(logical_port, None)
        if old is None:
            return
        self._delta.bindings.setdefault(logical_port, old)
        self._unindex_binding(old)

    def _unindex_binding(self, old: Binding) -> None:
        on = self._bound.get(old.node, {})
        on.pop(old.logical_port, None)
        if not on:
            self._bound.pop(old.node, None)


def from_nb(api: Any) -> Model:
    """Copy what the roles need out of an ``NbApi``'s replica."""
    tables = api.tables
    platform = next(iter(tables["Platform"].rows.values()), None)
    nodes = tuple(Node(r.name, r.role, IPv4Address(r.underlay_ip), r.datapath_id)
                  for r in tables["Node"].rows.values())
    services_of: dict[Any, set[str]] = {}
    for sub in tables["Subscription"].rows.values():
        if sub.state == "active":
            services_of.setdefault(sub.vm.uuid, set()).add(sub.service.name)
    platform_ip = IPv4Address(platform.platform_ip) if platform else IPv4Address("100.100.0.1")
    vms = []
    for r in tables["VM"].rows.values():
        vnet = r.vnet
        vip = IPv4Address(vnet.snat_vip[0]) if vnet.snat_vip else address.DEFAULT_SNAT_VIP
        addr = address.PlatformAddress(vnet.region.region_id, vnet.vnet_id, r.subnet.subnet_id,
                                       IPv4Address(r.ipv4), vip)
        vms.append(VM(
            name=r.name, vnet=vnet.name, host=r.host.name, ipv4=IPv4Address(r.ipv4), mac=r.mac,
            ipv6=addr.ipv6, zone=vnet.ct_zone,
            gateway=gateway.vm_gateway(IPv4Network(r.subnet.cidr)),
            snat_ip=platform_ip if vip == address.DEFAULT_SNAT_VIP else vip,
            services=frozenset(services_of.get(r.uuid, ()))))
    endpoints = tuple(Endpoint(r.name, r.service.name, IPv6Address(r.ipv6), r.mac, r.host.name)
                      for r in tables["Endpoint"].rows.values())
    bindings = tuple(Binding(r.logical_port, r.kind, r.node.name, r.port, r.ofport[0] if r.ofport else None)
                     for r in tables["Port_Binding"].rows.values())
    routes = tuple(Route(IPv6Address(r.ipv6), r.host.name) for r in tables["Host_Mapping"].rows.values())
    return Model(
        routes=routes,
        platform_ip=platform_ip,
        translator_prefix=IPv6Network(platform.translator_prefix) if platform else IPv6Network("fd64:64::/96"),
        appliance=platform.appliance[0].name if platform and platform.appliance else None,
        tunnel_token=(platform.tunnel_token[0] if platform and platform.tunnel_token else None),
        direct_path=direct_path_of(platform),
        nodes=tuple(sorted(nodes, key=lambda n: n.name)),
        vms=tuple(sorted(vms, key=lambda v: v.name)),
        endpoints=tuple(sorted(endpoints, key=lambda e: e.name)),
        bindings=tuple(sorted(bindings, key=lambda b: b.logical_port)))


def direct_path_of(platform_row: Any) -> bool:
    """An NB Platform row's direct-path setting (unset, or an NB older than 1.5.0:
    ``DIRECT_PATH_DEFAULT``)."""
    value = getattr(platform_row, "direct_path", None) if platform_row is not None else None
    return value[0] if value else DIRECT_PATH_DEFAULT


def from_topology(topo: Any, tunnel_token: int | None = None,
                  bindings: Iterable[Binding] = ()) -> Model:
    """The model a freshly loaded NB would give for a topology file (zones in file order;
    the NB draws the tunnel token at random, so it is given here).

    A loaded NB has no port bindings (node agents write them), so neither has this model
    unless ``bindings`` are given: then it is the model after those ``bind_port`` calls,
    each VM or endpoint on its binding's node (the NB moves it there). Every VM and
    endpoint bound on its topology host: ``bindings=topology_bindings(topo, port_name)``.

    For tests and offline tools (e.g. printing the flows a topology implies).
    """
    bindings = tuple(sorted(bindings, key=lambda b: b.logical_port))
    node_of = {(b.kind, b.logical_port): b.node for b in bindings}
    zones = {v.name: i + 1 for i, v in enumerate(topo.vnets)}
    services_of: dict[str, set[str]] = {}
    for sub in topo.subscriptions:
        services_of.setdefault(sub.vm, set()).add(sub.service)
    vms = []
    for vm in topo.vms:
        vnet = topo.vnet(vm.vnet)
        addr = topo.platform_address(vm.name)
        subnet = next(s for s in vnet.subnets if s.name == vm.subnet)
        vms.append(VM(vm.name, vm.vnet, node_of.get(("vm", vm.name), vm.host), vm.ipv4, vm.mac,
                      addr.ipv6, zones[vm.vnet],
                      gateway.vm_gateway(subnet.cidr), vnet.snat_vip or topo.platform.platform_ip,
                      frozenset(services_of.get(vm.name, ()))))
    return Model(
        platform_ip=topo.platform.platform_ip, translator_prefix=topo.platform.translator_prefix,
        appliance=topo.platform.appliance,
        nodes=tuple(Node(n.name, n.role, n.underlay_ip, n.datapath_id) for n in topo.nodes),
        vms=tuple(vms),
        endpoints=tuple(Endpoint(e.name, s.name, e.ipv6, e.mac, node_of.get(("endpoint", e.name), e.host))
                        for s in topo.services for e in s.endpoints),
        tunnel_token=tunnel_token,
        bindings=bindings)


def topology_bindings(topo: Any, port_name: Callable[[str, str], str]) -> tuple[Binding, ...]:
    """A binding for every VM and endpoint of ``topo`` on its topology host, its interface
    called ``port_name(kind, name)`` (kind "vm" or "endpoint"): what node agents would
    record if every port were where the topology file puts it. For ``from_topology``."""
    out = [Binding(vm.name, "vm", vm.host, port_name("vm", vm.name)) for vm in topo.vms]
    out += [Binding(e.name, "endpoint", e.host, port_name("endpoint", e.name))
            for s in topo.services for e in s.endpoints]
    return tuple(out)
