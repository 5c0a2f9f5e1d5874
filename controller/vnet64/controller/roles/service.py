"""Encapsulator: a host's service endpoints (IPv6 only) reaching platform addresses.

Stages owned: ``from_endpoint``, ``to_appliance``, ``direct``, ``nd_reply``, ``nd_tll``,
``to_endpoint``, and in ``from_tunnel`` the flows that accept return traffic from known
hosts.

- The direct path (``Model.direct_path``, on by default): ``to_appliance`` resubmits to
  ``direct`` before it sends, and a flow there - learnt by ``to_endpoint`` from a reply
  (:func:`direct_learn`) - sends a pair's packets straight to the VM's host instead of
  the appliance.

- From an endpoint's port, IPv6 from that endpoint's own address to the
  steering prefix fd41::/16 is encapsulated (Geneve, VNI, tunnel token) towards
  the appliance.
- Neighbour solicitations for the virtual gateway fe80::1 are answered in the
  datapath: ``nd_reply`` turns the NS into an NA (addresses swapped, type 136,
  R/S/O flags, option type TLL) and ``nd_tll`` fills in the gateway MAC (OVS
  refuses to set nd_tll in a flow that matches an NS).
- From the tunnel, only packets whose outer source is a known host and that
  carry the platform's tunnel token (``pipeline.TOKEN_OPTION``) are accepted;
  ``to_endpoint`` delivers IPv6 from a platform address to the local endpoint
  it is addressed to - only replies to, or errors related to,
  what the endpoint sent: its packets to the platform are committed in the
  endpoint zone (``ZONE_ENDPOINTS``, no NAT) on the way out, and what comes
  back is looked up there first. A node that spoofs a host's underlay address
  therefore cannot inject "replies" into an endpoint (unless it knows the token
  and the addresses and ports of a live connection).
- The service host is the endpoint's first-hop router (the virtual gateway
  fe80::1), so it answers what a router must (RFC 8200, RFC 4443): a packet
  to fd41::/16 with hop limit 0 or 1 is not forwarded but punted (metered)
  and answered with an ICMPv6 Time Exceeded; one larger than the path MTU
  (``from_endpoint``'s steering flow runs ``check_pkt_larger``, ``to_appliance``
  matches the bit) is punted and answered with a Packet Too Big carrying that MTU.
  The hop limit is checked first, as a router does before it picks a link. A
  packet whose headers OVS could not parse (no upper layer found, so no hop
  limit either) is dropped before both.
Everything else an endpoint sends is dropped by the stage's miss flow (``not_to_platform``),
or by the endpoint's own ``spoofed_source`` flow when it is to the platform from another
address: every flow that does not forward names why in its cookie (``pipeline.DROP_REASONS``).
"""

from __future__ import annotations

import struct

from ... import address, gateway
from ..flows import (CT, ETH_IPV6, OFPP_IN_PORT, PROTO_ICMPV6, CheckPktLarger, Controller, Flow,
                     Learn, Match, Move, Output, Resubmit, SetField, ct_state, flow)
from ..inet import ethernet, icmp6_packet
from ..model import Endpoint, Model, Node
from ..pipeline import (DIRECT_IDLE_TIMEOUT, ERROR_METER, NA_FLAGS_RSO, PRIO_DEFAULT, PRIO_HOP_LIMIT,
                        PRIO_LEARN, PRIO_MATCH, PRIO_MISS, PRIO_NOT_DIRECT, PRIO_SPECIFIC, PRIO_TOO_BIG,
                        PRIO_UNPARSED, TOO_BIG_BIT, TOO_BIG_REG, VNI, ZONE_ENDPOINTS, DIRECT_REG, cookie,
                        drop_cookie, token_actions, token_match)
from . import Ports

STEERING = address.STEERING_PREFIX
ND_NS, ND_NA = 135, 136
ND_OPT_TLL = 2
ETH_HEADER = 14            # check_pkt_larger counts the Ethernet header
CT_REPLY = ct_state("+trk", "+rpl", "-inv")
CT_RELATED = ct_state("+trk", "+rel", "-inv")


def endpoint_flows(model: Model, node: Node, ports: Ports, path_mtu: int | None = None) -> list[Flow]:
    """Encapsulation, ND and delivery for every endpoint whose port is on this node.

    ``path_mtu``: the largest IPv6 packet the platform carries to a VM (None: no
    Packet Too Big check)."""
    out: list[Flow] = []
    for ep in model.endpoints_on(node.name):
        out += one_endpoint_flows(model, ports, ep, path_mtu)
    return out


def one_endpoint_flows(model: Model, ports: Ports, ep: Endpoint, path_mtu: int | None = None) -> list[Flow]:
    """``endpoint_flows`` of one endpoint (none while its port is not wired here)."""
    appliance = model.appliance_node()
    out: list[Flow] = []
    port = ports.vif("endpoint", ep.name)
    if port is None:
        return out
    c = cookie("host", "endpoint", ep.name)
    out.append(flow("classify", PRIO_MATCH, {"in_port": port}, goto="from_endpoint", cookie=c))
    out.append(flow("from_endpoint", PRIO_SPECIFIC,
                    {"in_port": port, "eth_type": ETH_IPV6, "ip_proto": PROTO_ICMPV6,
                     "icmpv6_type": ND_NS, "ipv6_nd_target": gateway.SERVICE_GATEWAY_IPV6},
                    goto="nd_reply", cookie=c))
    if appliance is not None and ports.geneve is not None:
        steered = {"in_port": port, "eth_type": ETH_IPV6, "ipv6_src": ep.ipv6, "ipv6_dst": STEERING}
        # OVS stops parsing at an extension header it cannot read (e.g. a jumbo payload,
        # payload length 0): such a flow has no upper layer (ip_proto 0) and no hop
        # limit (nw_ttl 0). Dropped here, so it is not taken for hop limit 0 and punted.
        out.append(flow("from_endpoint", PRIO_UNPARSED, {**steered, "ip_proto": 0}, [],
                        cookie=drop_cookie("host", "unparsed_headers", ep.name)))
        for hop_limit in (0, 1):    # nw_ttl is the hop limit for IPv6; it cannot be masked
            out.append(flow("from_endpoint", PRIO_HOP_LIMIT, {**steered, "nw_ttl": hop_limit},
                            [Controller()], meter=ERROR_METER,
                            cookie=drop_cookie("host", "hop_limit_exceeded", ep.name)))
        # to the platform, but not from the endpoint's own address
        out.append(flow("from_endpoint", PRIO_DEFAULT,
                        {"in_port": port, "eth_type": ETH_IPV6, "ipv6_dst": STEERING}, [],
                        cookie=drop_cookie("host", "spoofed_source", ep.name)))
        # the size check comes last (pipeline.TOO_BIG_REG)
        size_check = [CheckPktLarger(path_mtu + ETH_HEADER, TOO_BIG_REG, TOO_BIG_BIT)] if path_mtu else []
        out.append(flow("from_endpoint", PRIO_MATCH,
                        {"in_port": port, "eth_type": ETH_IPV6, "ipv6_src": ep.ipv6,
                         "ipv6_dst": STEERING},
                        size_check, goto="to_appliance", cookie=c))
        to_appliance = {"in_port": port, "eth_type": ETH_IPV6}
        if path_mtu:
            bit = 1 << TOO_BIG_BIT
            out.append(flow("to_appliance", PRIO_TOO_BIG, {**to_appliance, TOO_BIG_REG: (bit, bit)},
                            [Controller()], meter=ERROR_METER,
                            cookie=drop_cookie("host", "packet_too_big", ep.name)))
        out.append(flow("to_appliance", PRIO_MATCH, to_appliance,
                        [CT(zone=ZONE_ENDPOINTS, commit=True),
                         SetField("tunnel_id", VNI),
                         SetField("tun_ipv4_dst", appliance.underlay_ip),
                         *token_actions(model.tunnel_token),
                         # direct path: a learned entry for (endpoint, VM) overrides tun_dst
                         *([Resubmit("direct")] if model.direct_path else []),
                         Output(ports.geneve)], cookie=c))
    deliver = [SetField("eth_src", gateway.GATEWAY_MAC), SetField("eth_dst", ep.mac), Output(port)]
    reply = {"eth_type": ETH_IPV6, "ipv6_dst": ep.ipv6, "ipv6_src": STEERING, "ct_state": CT_REPLY}
    direct = model.direct_path and appliance is not None and ports.geneve is not None
    # a reply from a VM on this host (it came through the translator, not the tunnel):
    # (endpoint, VM) goes through the appliance, whatever a stale entry said (direct_learn)
    local = [SetField(DIRECT_REG, int(appliance.underlay_ip)), direct_learn(ep.name, DIRECT_REG)] \
        if direct else []
    out.append(flow("to_endpoint", PRIO_SPECIFIC, reply, [*local, *deliver], cookie=c))
    # +rel may come with any other flag, so it cannot share a priority with +rpl
    out.append(flow("to_endpoint", PRIO_MATCH, {**reply, "ct_state": CT_RELATED}, deliver, cookie=c))
    if direct:
        # a reply through the tunnel comes straight from the VM's host, which holds the
        # pair: from now on (endpoint, VM) goes there directly
        out.append(flow("to_endpoint", PRIO_LEARN, {**reply, "in_port": ports.geneve},
                        [direct_learn(ep.name, "tun_ipv4_src"), *deliver], cookie=c))
    return out


def direct_learn(endpoint: str, host_from: str) -> Learn:
    """The direct path's learning, on a reply to ``endpoint``: a flow in ``direct`` for
    (the endpoint's address, the VM's platform address) that sets the tunnel destination
    to the value of ``host_from`` - the reply's tunnel source (the VM's host, which holds
    the pair), or the appliance's address for a VM on this host. Every reply refreshes it
    (a moved VM's new host takes over with its first answer); it ends
    ``DIRECT_IDLE_TIMEOUT`` after the last packet to the VM, before the pair on the VM's
    host idles out (``customer.PAIR_IDLE_TIMEOUT``)."""
    return Learn("direct", PRIO_MATCH, cookie("host", "learned", endpoint),
                 idle_timeout=DIRECT_IDLE_TIMEOUT, eth_type=ETH_IPV6,
                 match_from=(("ipv6_src", "ipv6_dst"), ("ipv6_dst", "ipv6_src")),
                 load_from=((host_from, "tun_ipv4_dst"),))


def to_endpoint() -> CT:
    """The way into ``to_endpoint``: the endpoint zone's verdict first (module doc)."""
    return CT(zone=ZONE_ENDPOINTS, table="to_endpoint")


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


def miss_flows() -> list[Flow]:
    """The misses of this module's stages, each counted under its reason."""
    return [
        flow("from_endpoint", PRIO_MISS, {}, [], cookie=drop_cookie("host", "not_to_platform")),
        flow("to_endpoint", PRIO_MISS, {}, [], cookie=drop_cookie("host", "not_a_reply")),
        flow("nd_reply", PRIO_MISS, {}, [], cookie=drop_cookie("host", "no_flow")),
        flow("nd_tll", PRIO_MISS, {}, [], cookie=drop_cookie("host", "no_flow")),
        flow("to_appliance", PRIO_MISS, {}, [], cookie=drop_cookie("host", "no_flow")),
        # no miss in ``direct`` (pipeline.RESUBMIT_STAGES): none learned, nothing changes
    ]


def peer_flows(model: Model, node: Node) -> list[Flow]:
    """Accept return traffic from every other known host (outer source check). With the
    direct path, what such a host sends to a platform address is dropped here
    (``not_direct``) unless a flow above takes it: a pair's (``customer.direct_flows``),
    or one of that host's endpoints' on to the appliance (``customer.bounce_flows``)."""
    out = []
    for peer in model.hosts():
        if peer.name == node.name:
            continue
        m = Match.of(tun_ipv4_src=peer.underlay_ip, tunnel_id=VNI, eth_type=ETH_IPV6,
                     **token_match(model.tunnel_token))
        out.append(flow("from_tunnel", PRIO_MATCH, m, [to_endpoint()],
                        cookie=cookie("host", "peer", peer.name)))
        if model.direct_path:
            out.append(flow("from_tunnel", PRIO_NOT_DIRECT, {**m.as_dict(), "ipv6_dst": STEERING}, [],
                            cookie=drop_cookie("host", "not_direct", peer.name)))
    return out


# ---------------------------------------------------------------------------
# The gateway's ICMPv6 errors (RFC 4443)

ICMP6_PACKET_TOO_BIG, ICMP6_TIME_EXCEEDED = 2, 3
ICMP6_HOP_LIMIT_EXCEEDED = 0          # Time Exceeded code 0: hop limit exceeded in transit
IPV6_MIN_MTU = 1280                   # an ICMPv6 error fits in it, quote included (RFC 4443 2.4(c))
ERROR_HOP_LIMIT = 64
EXT_HEADERS = (0, 43, 60)             # hop-by-hop, routing, destination options
FRAGMENT = 44


def _is_icmp6_error(ip: bytes) -> bool:
    """Whether the IPv6 packet ``ip`` carries an ICMPv6 error (types 0-127), walking the
    extension headers (a non-first fragment is not known to be one)."""
    nh, off = ip[6], 40
    while nh in EXT_HEADERS or nh == FRAGMENT:
        if len(ip) < off + 8:
            return False
        if nh == FRAGMENT:
            if struct.unpack_from("!H", ip, off + 2)[0] & 0xFFF8:
                return False
            nh, off = ip[off], off + 8
        else:
            nh, off = ip[off], off + (ip[off + 1] + 1) * 8
    return nh == PROTO_ICMPV6 and len(ip) > off and ip[off] < 128


def gateway_error(frame: bytes, path_mtu: int | None = None) -> bytes | None:
    """The virtual gateway's answer to a packet an endpoint sent that it must not forward
    (``from_endpoint`` or ``to_appliance`` punts them), as a frame back to the endpoint:

    - hop limit 0 or 1: ICMPv6 Time Exceeded, code 0 (RFC 8200 4, RFC 4443 3.3) - checked
      first, as a router does before it looks at the outgoing link;
    - longer than ``path_mtu``: ICMPv6 Packet Too Big with that MTU (RFC 4443 3.2).

    Either quotes the packet, as much as fits in 1280 bytes (RFC 4443 2.4(c)). Source
    fe80::1, the gateway's address: RFC 4443 2.2 wants a unicast address of the node that
    answers, chosen as for any packet it sends to that destination; fe80::1 is the only
    address the gateway owns, and it is on the endpoint's link (a platform address as
    source would say a VM answered, which would be false). Destination: the packet's
    source; Ethernet from the gateway MAC to the packet's source MAC.

    None for anything else, and never in answer to an ICMPv6 error or to a packet from
    an unspecified or multicast source or to a multicast destination (RFC 4443 2.4(e))."""
    if len(frame) < ETH_HEADER + 40 or struct.unpack_from("!H", frame, 12)[0] != ETH_IPV6:
        return None
    ip = frame[ETH_HEADER:]
    if ip[0] >> 4 != 6:
        return None
    plen = struct.unpack_from("!H", ip, 4)[0]
    if plen and 40 + plen < len(ip):     # Ethernet padding is not part of the packet
        ip = ip[:40 + plen]
    src, dst, hop_limit = ip[8:24], ip[24:40], ip[7]
    if src == bytes(16) or src[0] == 0xFF or dst[0] == 0xFF or _is_icmp6_error(ip):
        return None
    if hop_limit <= 1:
        head = struct.pack("!BBHI", ICMP6_TIME_EXCEEDED, ICMP6_HOP_LIMIT_EXCEEDED, 0, 0)
    elif path_mtu and len(ip) > path_mtu:
        head = struct.pack("!BBHI", ICMP6_PACKET_TOO_BIG, 0, 0, path_mtu)
    else:
        return None
    ipv6 = icmp6_packet(gateway.SERVICE_GATEWAY_IPV6.packed, src,
                        head + ip[:IPV6_MIN_MTU - 40 - len(head)], ERROR_HOP_LIMIT)
    return ethernet(frame[6:12], gateway.GATEWAY_MAC, ETH_IPV6) + ipv6
