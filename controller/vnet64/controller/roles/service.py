"""Encapsulator: a host's service endpoints (IPv6 only) reaching platform addresses.

Stages owned: ``from_endpoint``, ``nd_reply``, ``nd_tll``, ``to_endpoint``, and
in ``from_tunnel`` the flows that accept return traffic from known hosts.

- From an endpoint's port, IPv6 from that endpoint's own address to the
  steering prefix fd41::/16 is encapsulated (Geneve, VNI) towards the appliance.
- Neighbour solicitations for the virtual gateway fe80::1 are answered in the
  datapath: ``nd_reply`` turns the NS into an NA (addresses swapped, type 136,
  R/S/O flags, option type TLL) and ``nd_tll`` fills in the gateway MAC (OVS
  refuses to set nd_tll in a flow that matches an NS).
- From the tunnel, only packets whose outer source is a known host are
  accepted; ``to_endpoint`` delivers IPv6 from a platform address to the
  local endpoint it is addressed to.
Everything else an endpoint sends is dropped by the stage's miss flow.
"""

from __future__ import annotations

from ... import address, gateway
from ..flows import (ETH_IPV6, OFPP_IN_PORT, PROTO_ICMPV6, Flow, Match, Move, Output, SetField,
                     flow)
from ..model import Model, Node
from ..pipeline import (NA_FLAGS_RSO, PRIO_MATCH, PRIO_SPECIFIC, VNI, cookie)
from . import Ports

STEERING = address.STEERING_PREFIX
ND_NS, ND_NA = 135, 136
ND_OPT_TLL = 2


def endpoint_flows(model: Model, node: Node, ports: Ports) -> list[Flow]:
    """Encapsulation, ND and delivery for every endpoint whose port is on this node."""
    appliance = model.appliance_node()
    out: list[Flow] = []
    for ep in model.endpoints_on(node.name):
        port = ports.vif("endpoint", ep.name)
        if port is None:
            continue
        c = cookie("host", "endpoint", ep.name)
        out.append(flow("classify", PRIO_MATCH, {"in_port": port}, goto="from_endpoint", cookie=c))
        out.append(flow("from_endpoint", PRIO_SPECIFIC,
                        {"in_port": port, "eth_type": ETH_IPV6, "ip_proto": PROTO_ICMPV6,
                         "icmpv6_type": ND_NS, "ipv6_nd_target": gateway.SERVICE_GATEWAY_IPV6},
                        goto="nd_reply", cookie=c))
        if appliance is not None and ports.geneve is not None:
            out.append(flow("from_endpoint", PRIO_MATCH,
                            {"in_port": port, "eth_type": ETH_IPV6, "ipv6_src": ep.ipv6,
                             "ipv6_dst": STEERING},
                            [SetField("tunnel_id", VNI),
                             SetField("tun_ipv4_dst", appliance.underlay_ip),
                             Output(ports.geneve)], cookie=c))
        out.append(flow("to_endpoint", PRIO_MATCH,
                        {"eth_type": ETH_IPV6, "ipv6_dst": ep.ipv6, "ipv6_src": STEERING},
                        [SetField("eth_src", gateway.GATEWAY_MAC), SetField("eth_dst", ep.mac),
                         Output(port)], cookie=c))
    return out


def nd_responder_flows() -> list[Flow]:
    """The two stages that answer NS for the virtual gateway (shared by all endpoints)."""
    c = cookie("host", "base", "nd")
    return [
        flow("nd_reply", PRIO_MATCH,
             {"eth_type": ETH_IPV6, "ip_proto": PROTO_ICMPV6, "icmpv6_type": ND_NS},
             [Move("eth_src", "eth_dst", 48),
              SetField("eth_src", gateway.GATEWAY_MAC),
              Move("ipv6_src", "ipv6_dst", 128),
              SetField("ipv6_src", gateway.SERVICE_GATEWAY_IPV6),
              SetField("icmpv6_type", ND_NA),
              SetField("nd_reserved", NA_FLAGS_RSO),
              SetField("nd_options_type", ND_OPT_TLL)],
             goto="nd_tll", cookie=c),
        flow("nd_tll", PRIO_MATCH,
             {"eth_type": ETH_IPV6, "ip_proto": PROTO_ICMPV6, "icmpv6_type": ND_NA},
             [SetField("ipv6_nd_tll", gateway.GATEWAY_MAC), Output(OFPP_IN_PORT)], cookie=c),
    ]


def peer_flows(model: Model, node: Node) -> list[Flow]:
    """Accept return traffic from every other known host (outer source check)."""
    out = []
    for peer in model.hosts():
        if peer.name == node.name:
            continue
        out.append(flow("from_tunnel", PRIO_MATCH,
                        Match.of(tun_ipv4_src=peer.underlay_ip, tunnel_id=VNI),
                        goto="to_endpoint", cookie=cookie("host", "peer", peer.name)))
    return out
