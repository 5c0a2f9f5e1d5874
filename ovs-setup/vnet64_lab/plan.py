"""The lab as data: every namespace, link, address and port a topology needs.

Pure (no I/O): ``build(topo, settings, prefix)`` returns a :class:`Plan`, and the
builder (``lab.py``) only executes it. Tests and ``status`` read the same plan,
so a name or an address is decided in exactly one place.

Namespaces (``P`` is the lab prefix, ``v64-`` by default)::

    P fabric        the underlay segment: Linux bridge br0, one port per node
    P ctl           the management segment (bridge br-mgmt holding the controller's
                    address), the NB ovsdb-server and the controller
    P n-<node>      a node: ovsdb-server + ovs-vswitchd, br-int, br-phy, geneve0
    P xl-<host>     a host's translator: TAYGA and its tun (made by the host's agent)
    P vm-<vm>       a customer VM (IPv4 only)
    P ep-<endpoint> a service endpoint (IPv6 only)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface

from vnet64 import gateway
from vnet64.ports import GENEVE_PORT, IFNAMSIZ, XLAT_PORT, ifname, translator_mac, vif_port  # noqa: F401
from vnet64.node import translator as xlat
from vnet64.node.config import OFPORT_GENEVE, OFPORT_XLAT  # noqa: F401
from vnet64.topology import Topology, default_mac

from .settings import LabSettings

OF_PORT = 6653
NB_PORT = 6641
METRICS_PORT = 9964      # each node agent's Prometheus metrics, on its management address
CONTROLLER_METRICS_PORT = 9965   # each controller's, on its node's (or the central one's) address
# ovsdb-server's inactivity probe on the NB's TCP remote (``vnet64 connection set``): the
# default 5 s dropped a controller that needs longer to parse a large NB (10k+
# subscriptions: pure-Python JSON), which then downloaded everything again, in a loop.
NB_INACTIVITY_PROBE_MS = 180_000
UNDERLAY_IF = "ul0"  # node side of the fabric veth (a port of br-phy)
MGMT_IF = "mgmt0"
VM_IF = "eth0"
MGMT_BRIDGE = "br-mgmt"
FABRIC_BRIDGE = "br0"
OFPORT_FIRST_VIF = 10
# The translator's layout is the node agent's (vnet64.node.translator); the lab's tests
# and captures name its pieces through these.
XLAT_NS_IF, XLAT_TUN = xlat.NS_IF, xlat.TUN
XLAT_NFT_TABLE, XLAT_NFT_RH_COUNTER = xlat.NFT_TABLE, xlat.NFT_RH_COUNTER


@dataclass(frozen=True)
class NodePlan:
    name: str
    role: str
    ns: str
    underlay_ip: IPv4Interface
    underlay_mac: str
    management_ip: IPv4Interface
    datapath_id: int
    fabric_if: str  # the node's veth end in the fabric namespace
    mgmt_peer_if: str  # the node's veth end in the controller namespace
    run_dir: str


@dataclass(frozen=True)
class VifPlan:
    """A VM or service endpoint: its namespace and its port on a host's br-int."""

    kind: str  # "vm" | "endpoint"
    name: str
    ns: str
    host: str
    port: str  # veth end in the host namespace, a br-int port
    ofport: int
    mac: str
    mtu: int
    ipv4: IPv4Interface | None = None
    ipv4_gateway: IPv4Address | None = None
    ipv6: IPv6Interface | None = None
    vnet: str | None = None


@dataclass(frozen=True)
class TranslatorPlan:
    host: str
    ns: str
    mac: str  # of ovs0, the translator's face towards br-int
    mtu: int
    ipv4: IPv4Address  # TAYGA's own address
    run_dir: str


@dataclass(frozen=True)
class Plan:
    prefix: str
    run_dir: str
    settings: LabSettings
    topology: Topology
    fabric_ns: str
    ctl_ns: str
    controller_ip: IPv4Interface
    nodes: tuple[NodePlan, ...]
    vifs: tuple[VifPlan, ...]
    translators: tuple[TranslatorPlan, ...]
    extra: dict = field(default_factory=dict)

    @property
    def controller_target(self) -> str:
        return f"tcp:{self.controller_ip.ip}:{OF_PORT}"

    @property
    def nb_tcp_remote(self) -> str:
        return f"tcp:{self.controller_ip.ip}:{NB_PORT}"

    @property
    def nb_listen_remote(self) -> str:
        """ovsdb-server's passive remote on the management network (``ptcp:PORT:IP``)."""
        return f"ptcp:{NB_PORT}:{self.controller_ip.ip}"

    @property
    def controller_ssl_target(self) -> str:
        """The central controller's OpenFlow target over TLS (a lab with ``tls``)."""
        return f"ssl:{self.controller_ip.ip}:{OF_PORT}"

    @property
    def nb_ssl_remote(self) -> str:
        """The NB over TLS on the management network (a lab with ``tls``)."""
        return f"ssl:{self.controller_ip.ip}:{NB_PORT}"

    @property
    def nb_ssl_listen_remote(self) -> str:
        """ovsdb-server's TLS remote on the management network (``pssl:PORT:IP``)."""
        return f"pssl:{NB_PORT}:{self.controller_ip.ip}"

    @property
    def nb_run_dir(self) -> str:
        return f"{self.run_dir}/nb"

    @property
    def namespaces(self) -> list[str]:
        return [self.fabric_ns, self.ctl_ns, *(n.ns for n in self.nodes),
                *(t.ns for t in self.translators), *(v.ns for v in self.vifs)]

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.name == name)

    def vifs_on(self, host: str) -> list[VifPlan]:
        return [v for v in self.vifs if v.host == host]

    def translator(self, host: str) -> TranslatorPlan:
        return next(t for t in self.translators if t.host == host)

    def targets(self) -> dict[str, str]:
        """Every name ``exec``/``capture`` accept, ``kind:name`` form -> namespace."""
        out = {"fabric": self.fabric_ns, "ctl": self.ctl_ns}
        out.update({f"node:{n.name}": n.ns for n in self.nodes})
        out.update({f"xlat:{t.host}": t.ns for t in self.translators})
        out.update({f"{v.kind}:{v.name}": v.ns for v in self.vifs})
        return out


def build(topo: Topology, settings: LabSettings, prefix: str, run_dir: str) -> Plan:
    mgmt_len = settings.management_cidr.prefixlen
    ul_len = settings.underlay_cidr.prefixlen
    nodes = tuple(
        NodePlan(
            name=n.name, role=n.role, ns=f"{prefix}n-{n.name}",
            underlay_ip=IPv4Interface(f"{n.underlay_ip}/{ul_len}"),
            underlay_mac=default_mac(f"{n.name}/br-phy"),
            management_ip=IPv4Interface(f"{settings.management_ip(i)}/{mgmt_len}"),
            datapath_id=n.datapath_id,
            fabric_if=ifname("u-", n.name), mgmt_peer_if=ifname("m-", n.name),
            run_dir=f"{run_dir}/nodes/{n.name}")
        for i, n in enumerate(topo.nodes))

    vifs: list[VifPlan] = []
    next_ofport: dict[str, int] = {}
    for vm in topo.vms:
        subnet = next(s for s in topo.vnet(vm.vnet).subnets if s.name == vm.subnet)
        ofport = next_ofport.get(vm.host, OFPORT_FIRST_VIF)
        next_ofport[vm.host] = ofport + 1
        vifs.append(VifPlan(
            kind="vm", name=vm.name, ns=f"{prefix}vm-{vm.name}", host=vm.host,
            port=vif_port("vm", vm.name), ofport=ofport, mac=vm.mac, mtu=settings.vm_mtu,
            ipv4=IPv4Interface(f"{vm.ipv4}/{subnet.cidr.prefixlen}"),
            ipv4_gateway=gateway.vm_gateway(subnet.cidr), vnet=vm.vnet))
    for ep in topo.endpoints:
        ofport = next_ofport.get(ep.host, OFPORT_FIRST_VIF)
        next_ofport[ep.host] = ofport + 1
        vifs.append(VifPlan(
            kind="endpoint", name=ep.name, ns=f"{prefix}ep-{ep.name}", host=ep.host,
            port=vif_port("endpoint", ep.name), ofport=ofport, mac=ep.mac, mtu=settings.overlay_mtu,
            ipv6=IPv6Interface(f"{ep.ipv6}/128")))

    translators = tuple(
        TranslatorPlan(host=h.name, ns=f"{prefix}xl-{h.name}",
                       mac=translator_mac(h.name), mtu=settings.overlay_mtu,
                       ipv4=settings.translator_ipv4,
                       run_dir=f"{run_dir}/agents/{h.name}/translator")
        for h in topo.hosts)

    plan = Plan(prefix=prefix, run_dir=run_dir, settings=settings, topology=topo,
                fabric_ns=f"{prefix}fabric", ctl_ns=f"{prefix}ctl",
                controller_ip=IPv4Interface(f"{settings.controller_ip}/{mgmt_len}"),
                nodes=nodes, vifs=tuple(vifs), translators=translators)
    _check_unique(plan)
    return plan


def _check_unique(plan: Plan) -> None:
    """Hashed interface names must not collide inside one namespace."""
    from vnet64.topology import TopologyError

    def claim(seen: dict, key: str, owner: str, where: str) -> None:
        if key in seen:
            raise TopologyError(f"interface name {key} would be used by both {seen[key]} and "
                                f"{owner} in {where}; rename one of them", plan.topology.source)
        seen[key] = owner

    fabric: dict = {}
    ctl: dict = {MGMT_BRIDGE: "the management bridge"}
    for n in plan.nodes:
        claim(fabric, n.fabric_if, f"node {n.name}", plan.fabric_ns)
        claim(ctl, n.mgmt_peer_if, f"node {n.name}", plan.ctl_ns)
    for host in plan.topology.hosts:
        seen: dict = {GENEVE_PORT: "the tunnel", XLAT_PORT: "the translator",
                      UNDERLAY_IF: "the underlay", MGMT_IF: "management",
                      "br-int": "br-int", "br-phy": "br-phy"}
        for v in plan.vifs_on(host.name):
            claim(seen, v.port, f"{v.kind} {v.name}", f"node {host.name}")
