"""SDN appliance: route each subscribed VM's platform IPv6 to that VM's host.

What it reads of the NB: the platform, the nodes and the host mappings
(``model.Route``, NB Host_Mapping) - no VM, subscription or endpoint.

From the tunnel, only packets whose outer source is a known host and that carry
the platform's tunnel token (``pipeline.TOKEN_OPTION``) are looked at; ``route``
matches the inner IPv6 destination against the host mapping (one flow per
subscribed VM), rewrites the outer destination to the VM's host, sets the token
(the appliance's own hop) and sends the packet back into the fabric through the
port it came in on.
Everything else is dropped by explicit, counted miss flows — never punted; their cookies
name why (``pipeline.DROP_REASONS``).

The outer source of the rewritten packet is the appliance's own address (the
tunnel port's local IP), so a customer host can accept forward traffic from the
appliance only; the patent's FIG. 2A keeps Host2 as the outer source, which
would let any host forge the hop.
"""

from __future__ import annotations

import functools
from ipaddress import IPv4Address

from ..flows import ETH_IPV6, OFPP_IN_PORT, Flow, Output, SetField, canonical_ip, flow
from ..model import Model, Node, Route
from ..pipeline import PRIO_MATCH, PRIO_MISS, VNI, cookie, drop_cookie, token_actions, token_match
from . import Ports


def appliance_flows(model: Model, node: Node, ports: Ports) -> list[Flow]:
    """Every flow of the appliance: ``base_flows`` and each host mapping's ``route_flows``."""
    out = base_flows(model, ports)
    for r in model.iter_routes():
        out += route_flows(model, ports, r)
    return out


def base_flows(model: Model, ports: Ports) -> list[Flow]:
    """The stages' misses, the tunnel's entry and the known hosts (not the routes)."""
    base = cookie("appliance", "base")
    out = [
        flow("classify", PRIO_MISS, {}, [], cookie=drop_cookie("appliance", "unknown_port")),
        flow("from_tunnel", PRIO_MISS, {}, [], cookie=drop_cookie("appliance", "untrusted_tunnel")),
        flow("route", PRIO_MISS, {}, [], cookie=drop_cookie("appliance", "unknown_destination")),
    ]
    if ports.geneve is None:
        return out
    out.append(flow("classify", PRIO_MATCH, {"in_port": ports.geneve, "tunnel_id": VNI},
                    goto="from_tunnel", cookie=base))
    for host in model.hosts():
        out.append(flow("from_tunnel", PRIO_MATCH,
                        {"tun_ipv4_src": host.underlay_ip, **token_match(model.tunnel_token)},
                        goto="route", cookie=cookie("appliance", "peer", host.name)))
    return out


def route_flows(model: Model, ports: Ports, r: Route) -> list[Flow]:
    """One host mapping's ``route`` flow (none while its host or the tunnel port is
    unknown). Its cookie names the mapping by its IPv6 (``name_id`` of the address's text)."""
    host = model.node(r.host)
    if host is None or ports.geneve is None:
        return []
    return [flow("route", PRIO_MATCH, {"eth_type": ETH_IPV6, "ipv6_dst": r.ipv6},
                 _to_host(host.underlay_ip, model.tunnel_token),
                 cookie=cookie("appliance", "route", canonical_ip(r.ipv6)))]


@functools.lru_cache(maxsize=4096)
def _to_host(underlay_ip: IPv4Address, token: int | None) -> tuple:
    """The actions of every route to one host: one shared tuple (100,000 routes to a
    hundred hosts keep a hundred)."""
    return (SetField("tun_ipv4_dst", underlay_ip), *token_actions(token), Output(OFPP_IN_PORT))
