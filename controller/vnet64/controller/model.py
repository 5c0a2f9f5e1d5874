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


@dataclass(frozen=True)
class Node:
    name: str
    role: str                # "host" | "appliance"
    underlay_ip: IPv4Address
    datapath_id: int


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Endpoint:
    name: str
    service: str
    ipv6: IPv6Address
    mac: str
    host: str


@dataclass(frozen=True)
class Binding:
    """A VM's or endpoint's port: the OVS interface ``port`` on ``node`` (NB Port_Binding)."""

    logical_port: str        # the VM's or endpoint's name (the interface's iface-id)
    kind: str                # "vm" | "endpoint"
    node: str
    port: str                # the interface's name on that node
    ofport: int | None = None   # as the node agent saw it; informational (the switch's own counts)


@dataclass(frozen=True)
class Model:
    platform_ip: IPv4Address
    translator_prefix: IPv6Network
    appliance: str | None
    nodes: tuple[Node, ...] = ()
    vms: tuple[VM, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    tunnel_token: int | None = None   # the Geneve option every node sends and expects (None: none)
    bindings: tuple[Binding, ...] = ()
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        idx = self._index
        idx["node"] = {n.name: n for n in self.nodes}
        idx["dpid"] = {n.datapath_id: n for n in self.nodes}
        idx["vm6"] = {vm.ipv6: vm for vm in self.vms}
        idx["ep6"] = {ep.ipv6: ep for ep in self.endpoints}
        ipv4s: dict[str, set] = {}
        for vm in self.vms:
            ipv4s.setdefault(vm.host, set()).add(vm.ipv4)
        idx["ipv4s"] = {host: frozenset(addrs) for host, addrs in ipv4s.items()}
        bound: dict[str, list] = {}
        for b in self.bindings:
            bound.setdefault(b.node, []).append(b)
        idx["bound"] = {node: tuple(bs) for node, bs in bound.items()}

    def node(self, name: str) -> Node | None:
        return self._index["node"].get(name)

    def node_by_dpid(self, dpid: int) -> Node | None:
        return self._index["dpid"].get(dpid)

    def vm_by_ipv6(self, ipv6: IPv6Address) -> VM | None:
        return self._index["vm6"].get(ipv6)

    def endpoint_by_ipv6(self, ipv6: IPv6Address) -> Endpoint | None:
        return self._index["ep6"].get(ipv6)

    def vms_on(self, host: str) -> list[VM]:
        return [vm for vm in self.vms if vm.host == host]

    def endpoints_on(self, host: str) -> list[Endpoint]:
        return [ep for ep in self.endpoints if ep.host == host]

    def vm_ipv4s_on(self, host: str) -> frozenset:
        """The IPv4 addresses of the VMs on ``host`` (computed once per model)."""
        return self._index["ipv4s"].get(host, frozenset())

    def bindings_on(self, node: str) -> tuple[Binding, ...]:
        """The port bindings to ``node``: the VMs' and endpoints' interfaces its agent found."""
        return self._index["bound"].get(node, ())

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
        vm = self.vm_by_ipv6(vm_ipv6)
        ep = self.endpoint_by_ipv6(service_ipv6)
        if vm is None or ep is None or ep.service not in vm.services:
            return None
        return ep, vm


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
    return Model(
        platform_ip=platform_ip,
        translator_prefix=IPv6Network(platform.translator_prefix) if platform else IPv6Network("fd64:64::/96"),
        appliance=platform.appliance[0].name if platform and platform.appliance else None,
        tunnel_token=(platform.tunnel_token[0] if platform and platform.tunnel_token else None),
        nodes=tuple(sorted(nodes, key=lambda n: n.name)),
        vms=tuple(sorted(vms, key=lambda v: v.name)),
        endpoints=tuple(sorted(endpoints, key=lambda e: e.name)),
        bindings=tuple(sorted(bindings, key=lambda b: b.logical_port)))


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
