"""Decapsulator, stateful translator and return path: a host's customer VMs.

Stages owned: ``from_tunnel`` (forward traffic), ``pair``, ``v6_dnat``,
``to_translator``, ``from_translator``, ``to_service``, ``to_vm``, ``from_vm``,
``arp_reply``, ``vm_return``.

With the direct path, step 1 also takes, per pair, what the pair's endpoint's host sends
straight here (:func:`direct_flows`), and passes on to the appliance what such a host
sends for no pair here (:func:`bounce_flows`).

Forward (service -> VM), per DESIGN §4b:
 1. from the tunnel, outer source = the appliance with the tunnel token, inner
    destination = the platform IPv6 of a local subscribed VM -> ``pair``;
 2. ``pair``: (service IPv6, VM IPv6) identifies a pair. Its flow (installed
    by the controller on the pair's first packet) SNATs the source to
    ``<xlat /96>::<alias>`` in the v6 SNAT zone; a miss is metered and punted;
 3. ``v6_dnat``: DNAT the destination to ``<xlat /96>::<VM IPv4>`` and out to TAYGA in
    the same pass (the ``ct`` has no ``table``: the datapath NATs the packet in place and
    goes on; the SNAT zone's answer, recirculated into this stage, already said the
    packet is valid - one recirculation fewer, issue 21's lever 2);
 4. TAYGA returns IPv4 alias -> VM IPv4; ``from_translator`` (per pair) SNATs to
    Platform_IP (or the SNAT VIP) in the VM's VNet zone, ports chosen by
    conntrack from the pair's port range;
 5. ``to_vm`` outputs to the VM only if the SNAT really happened (+snat) or the
    packet is related (ICMP error): OVS NAT fails open when ports run out.
Return (VM -> service):
 6. ``from_vm``: IPv4 from the VM's own address to Platform_IP -> conntrack in
    the VNet zone (un-SNAT: destination becomes the alias);
 7. ``vm_return`` (per pair): only replies (+est/+rel, never +new) from this
    VM's port to one of this VM's pairs' aliases go on to TAYGA;
 8. TAYGA returns IPv6; un-DNAT then un-SNAT rebuild (VM platform IPv6 ->
    service IPv6), both in one pass (``from_translator``: the DNAT zone's ``ct`` without
    ``table``, then the SNAT zone's, recirculated); ``to_service`` encapsulates it
    straight to the endpoint's host (not via the appliance), with the tunnel token, if
    the SNAT zone says it is a reply (or related).

Pairs and aliases: every pair on a host owns one alias from ``ALIAS_POOL``; the
alias is what tells TAYGA's IPv4 output apart per pair (hence per VNet and VM,
although two VMs share 10.0.0.4). Port policy: each pair may use the whole
``PORT_RANGE`` of Platform_IP towards its VM (the controller's
``--vnet64-snat-ports`` narrows it); conntrack keeps reply tuples unique within
the VNet zone, so pairs to one VM share its port space safely.

Port exhaustion: when no Platform_IP port is left towards a VM's address and
port, conntrack commits the new connection without NAT (OVS fails open); the
packet reaches ``to_vm`` without ``+snat``, is never delivered, and is punted
(metered) so the controller refuses the connection cleanly: it sends TAYGA,
as the VM's address, what a closed port would answer - a TCP reset, or for
UDP and echo an ICMPv4 "administratively prohibited" quoting the datagram -
which comes back to the service through the IPv6 zones' NAT like any reply:
connect() fails at once (ECONNREFUSED; EACCES for UDP) instead of timing out.
Existing connections keep their ports.

Routing headers: TAYGA skips routing headers, so an IPv6 packet whose routing header
has Segments Left != 0 - which RFC 7915 5.1 says must not be translated - would reach
the VM. The translator namespace sends such packets straight back out towards br-int
(nftables, at the ingress of its veth: node bring-up); ``from_translator`` tells them
apart by their source, a pair's alias (TAYGA's IPv6 output always comes from a VM's
translated address), and punts them (errors' meter). The controller answers as RFC 7915
says the translator should: an ICMPv6 Parameter Problem pointing at Segments Left,
from the VM's platform address to the service, sent straight to the service's host
like any reply; the packet goes no further.

Hop limits: the platform is one router hop between a service and a VM, whatever it does
inside (RFC 7915 4.1/5.1 decrement once, as a NAT64 box presents itself): a service's
hop limit h arrives as TTL h - 1, a VM's TTL t as hop limit t - 1. Each side's gateway
expires 0 and 1 and answers as a router: the service's (fe80::1, service module) with
an ICMPv6 Time Exceeded, the VM's (its subnet's gateway address) with an ICMPv4 Time
Exceeded - ``from_vm`` punts such a VM packet (errors' meter) and the controller sends
the answer back to the VM (:func:`time_exceeded`). Inside, the translator namespace's
routing into TAYGA's tun and out of it takes two, and TAYGA adds one instead of taking
one (``hop-limit-adjust 1``: node/translator.py, ``tayga_conf``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from ... import gateway
from ...ports import translator_mac
from ..flows import (CT, ETH_ARP, ETH_IPV4, ETH_IPV6, OFPP_IN_PORT, Controller, Flow,
                     Match, Move, Nat, Output, SetField, ct_state, flow)
from ..inet import checksum, ethernet, icmp6_packet
from ..model import VM, Endpoint, Model, Node
from ..pipeline import (ERROR_METER, PACKET_IN_METER, PRIO_BOUNCE, PRIO_DEFAULT, PRIO_DENY,
                        PRIO_DIRECT, PRIO_HOP_LIMIT, PRIO_MATCH, PRIO_MISS, PRIO_SPECIFIC, VNI,
                        ZONE_V6_DNAT, ZONE_V6_SNAT, cookie, drop_cookie, token_actions, token_match)
from . import Ports, service

MULTICAST6 = IPv6Network("ff00::/8")
ALIAS_POOL = IPv4Network("198.18.0.0/15")   # RFC 2544 benchmarking space: never a customer's
PORT_RANGE = (1024, 65535)
PAIR_IDLE_TIMEOUT = 300                      # s; RFC 6146's UDP default; renewed by any packet
DENY_HOLD = 5                                # s a refused pair is dropped without punting

CT_REPLY_OR_RELATED = ct_state("+trk", "-new", "-inv")
CT_SNATTED = ct_state("+trk", "+snat", "-inv")
CT_RELATED = service.CT_RELATED
CT_NOT_SNATTED = ct_state("+trk", "+new", "-snat", "-rel", "-inv")   # NAT found no port
CT_TRACKED_OK = ct_state("+trk", "-inv")
CT_INVALID = ct_state("+trk", "+inv")


# ---------------------------------------------------------------------------
# Pair allocation (per host)


@dataclass(frozen=True)
class Pair:
    service: IPv6Address
    vm: IPv6Address


class PoolExhausted(RuntimeError):
    pass


@dataclass
class Allocator:
    """Alias indexes for pairs on one host.

    A pair that comes back (after its flows idled out) gets its old alias when
    that is still free, so conntrack entries that outlived the flows stay
    valid; new pairs take indexes round-robin, so a released alias is not
    handed to another pair soon after.
    """

    pool: IPv4Network = ALIAS_POOL
    by_pair: dict = field(default_factory=dict)      # Pair -> index (live)
    by_index: dict = field(default_factory=dict)     # index -> Pair (live)
    remembered: dict = field(default_factory=dict)   # Pair -> index (released)
    cursor: int = 1

    @property
    def size(self) -> int:
        return self.pool.num_addresses - 2   # no network / broadcast-looking addresses

    def alias(self, index: int) -> IPv4Address:
        return self.pool.network_address + index

    def index_of(self, alias: IPv4Address) -> int:
        return int(alias) - int(self.pool.network_address)

    def allocate(self, pair: Pair, avoid: frozenset = frozenset()) -> int:
        if pair in self.by_pair:
            return self.by_pair[pair]
        old = self.remembered.pop(pair, None)
        if old is not None and old not in self.by_index and self.alias(old) not in avoid:
            return self._take(pair, old)
        for _ in range(self.size):
            index = self.cursor
            self.cursor = self.cursor % self.size + 1
            if index not in self.by_index and self.alias(index) not in avoid:
                return self._take(pair, index)
        raise PoolExhausted(f"no alias left in {self.pool} for a new pair")

    def adopt(self, pair: Pair, index: int) -> bool:
        """Take over an allocation found on the switch (resync); False on a clash."""
        if self.by_index.get(index, pair) != pair or self.by_pair.get(pair, index) != index:
            return False
        self._take(pair, index)
        return True

    def release(self, index: int) -> Pair | None:
        pair = self.by_index.pop(index, None)
        if pair is not None:
            del self.by_pair[pair]
            self.remembered[pair] = index
            if len(self.remembered) > self.size:
                self.remembered.pop(next(iter(self.remembered)))
        return pair

    def _take(self, pair: Pair, index: int) -> int:
        self.by_pair[pair] = index
        self.by_index[index] = pair
        return index


# ---------------------------------------------------------------------------
# Proactive flows


def alias_sources(model: Model) -> IPv6Network:
    """Where the pairs' aliases are on the IPv6 side: ``<xlat /96>::<ALIAS_POOL>``."""
    return IPv6Network(f"{model.translated(ALIAS_POOL.network_address)}/{96 + ALIAS_POOL.prefixlen}")


def base_flows(model: Model, ports: Ports, xlat_mac: str) -> list[Flow]:
    """Host-wide flows of the translator side (independent of VMs and pairs)."""
    c = cookie("host", "base", "translator")
    appliance = model.appliance_node()
    out = [
        # every stage's miss, counted under its reason (pipeline.DROP_REASONS)
        *(flow(table, PRIO_MISS, {}, [], cookie=drop_cookie("host", reason)) for table, reason in (
            ("classify", "unknown_port"), ("from_tunnel", "untrusted_tunnel"),
            ("v6_dnat", "no_flow"), ("from_translator", "no_flow"),
            ("to_service", "no_return_path"), ("to_vm", "conntrack_invalid"),
            ("from_vm", "vm_not_to_platform"), ("arp_reply", "no_flow"),
            ("vm_return", "vm_initiated"), ("to_translator", "conntrack_invalid"))),
        # pair miss: first packet of a new pair, metered, to the controller
        flow("pair", PRIO_MISS, {}, [Controller()], meter=PACKET_IN_METER, cookie=c),
        # the generic ARP responder (from_vm decides who may use it)
        flow("arp_reply", PRIO_MATCH, {"eth_type": ETH_ARP, "arp_op": 1},
             [Move("eth_src", "eth_dst", 48), SetField("eth_src", gateway.GATEWAY_MAC),
              SetField("arp_op", 2), Move("arp_sha", "arp_tha", 48),
              SetField("arp_sha", gateway.GATEWAY_MAC), Move("arp_tpa", "reg2", 32),
              Move("arp_spa", "arp_tpa", 32), Move("reg2", "arp_spa", 32),
              Output(OFPP_IN_PORT)], cookie=c),
        # what the v6 SNAT zone found invalid goes no further (module doc, step 3)
        flow("v6_dnat", PRIO_DEFAULT, {"eth_type": ETH_IPV6, "ct_state": CT_INVALID}, [],
             cookie=drop_cookie("host", "conntrack_invalid")),
    ]
    if ports.geneve is not None:
        out.append(flow("classify", PRIO_MATCH, {"in_port": ports.geneve, "tunnel_id": VNI},
                        goto="from_tunnel", cookie=c))
    if appliance is not None:
        # from the appliance, with the token, to no subscribed VM of this host
        out.append(flow("from_tunnel", PRIO_DEFAULT,
                        {"tun_ipv4_src": appliance.underlay_ip, "tunnel_id": VNI,
                         **token_match(model.tunnel_token)},
                        [], cookie=drop_cookie("host", "unknown_destination")))
    if ports.xlat is not None:
        out += [
            flow("classify", PRIO_MATCH, {"in_port": ports.xlat}, goto="from_translator", cookie=c),
            # IPv6 back from TAYGA: undo the DNAT, then the SNAT (zones in reverse order),
            # in one pass: the first ct has no table (the packet is NATed in place)
            flow("from_translator", PRIO_DEFAULT, {"eth_type": ETH_IPV6},
                 [CT(zone=ZONE_V6_DNAT, nat=Nat()),
                  CT(zone=ZONE_V6_SNAT, table="to_service", nat=Nat())], cookie=c),
            # IPv6 *from* a pair's alias is no translation (TAYGA's sources are VMs'
            # addresses): it is what the translator namespace bounced, a routing header
            # with Segments Left != 0; the controller answers it (module doc)
            flow("from_translator", PRIO_SPECIFIC, {"eth_type": ETH_IPV6, "ipv6_src": alias_sources(model)},
                 [Controller()], meter=ERROR_METER, cookie=drop_cookie("host", "routing_header")),
            # the translator namespace's own multicast (RS, MLD): not counted as a lost reply
            flow("from_translator", PRIO_MATCH, {"eth_type": ETH_IPV6, "ipv6_dst": MULTICAST6}, [],
                 cookie=drop_cookie("host", "translator_multicast")),
            # IPv4 from TAYGA that no pair's flow takes: the pair is gone
            flow("from_translator", PRIO_DEFAULT, {"eth_type": ETH_IPV4}, [],
                 cookie=drop_cookie("host", "no_pair")),
            flow("to_translator", PRIO_MATCH, {"ct_state": CT_TRACKED_OK},
                 to_translator(ports, xlat_mac), cookie=c),
        ]
    return out


def to_translator(ports: Ports, xlat_mac: str) -> list:
    """Out to the translator (TAYGA, or the BPF engine in front of it); [] without its
    port."""
    if ports.xlat is None:
        return []
    return [SetField("eth_src", gateway.GATEWAY_MAC), SetField("eth_dst", xlat_mac),
            Output(ports.xlat)]


def vm_flows(model: Model, node: Node, ports: Ports, vm: VM) -> list[Flow]:
    """Steering, DNAT, delivery and the return entry for one local VM."""
    port = ports.vif("vm", vm.name)
    appliance = model.appliance_node()
    if port is None:
        return []
    c = cookie("host", "vm", vm.name)
    out = [
        flow("classify", PRIO_MATCH, {"in_port": port}, goto="from_vm", cookie=c),
        flow("from_vm", PRIO_MATCH,
             {"in_port": port, "eth_type": ETH_ARP, "arp_op": 1, "arp_spa": vm.ipv4,
              "arp_tpa": vm.gateway}, goto="arp_reply", cookie=c),
    ]
    if not vm.subscribed:
        return out
    to_platform = {"in_port": port, "eth_type": ETH_IPV4, "ipv4_src": vm.ipv4, "ipv4_dst": vm.snat_ip}
    out += [
        flow("from_vm", PRIO_MATCH, to_platform,
             [CT(zone=vm.zone, table="vm_return", nat=Nat())], cookie=c),
        # the VM's gateway is a router: TTL 0 or 1 is not forwarded but answered (module
        # doc, "Hop limits"); nw_ttl cannot be masked, so one flow per value
        *(flow("from_vm", PRIO_HOP_LIMIT, {**to_platform, "nw_ttl": ttl}, [Controller()],
               meter=ERROR_METER, cookie=drop_cookie("host", "ttl_exceeded", vm.name)) for ttl in (0, 1)),
        flow("v6_dnat", PRIO_MATCH, {"eth_type": ETH_IPV6, "ipv6_dst": vm.ipv6,
                                     "ct_state": CT_TRACKED_OK},
             [CT(zone=ZONE_V6_DNAT, commit=True, nat=Nat("dst", str(model.translated(vm.ipv4)))),
              *to_translator(ports, translator_mac(node.name))], cookie=c),
        flow("to_vm", PRIO_SPECIFIC,
             {"eth_type": ETH_IPV4, "ct_zone": vm.zone, "ipv4_dst": vm.ipv4, "ct_state": CT_SNATTED},
             [SetField("eth_src", gateway.GATEWAY_MAC), SetField("eth_dst", vm.mac), Output(port)],
             cookie=c),
        flow("to_vm", PRIO_MATCH,
             {"eth_type": ETH_IPV4, "ct_zone": vm.zone, "ipv4_dst": vm.ipv4, "ct_state": CT_RELATED},
             [SetField("eth_src", gateway.GATEWAY_MAC), SetField("eth_dst", vm.mac), Output(port)],
             cookie=c),
        # no Platform_IP port left: never delivered; the controller refuses it (module doc)
        flow("to_vm", PRIO_DEFAULT,
             {"eth_type": ETH_IPV4, "ct_zone": vm.zone, "ipv4_dst": vm.ipv4, "ct_state": CT_NOT_SNATTED},
             [Controller()], meter=ERROR_METER, cookie=drop_cookie("host", "nat_ports_exhausted", vm.name)),
    ]
    if appliance is not None:
        out.append(flow("from_tunnel", PRIO_MATCH,
                        {"tun_ipv4_src": appliance.underlay_ip, "tunnel_id": VNI,
                         "eth_type": ETH_IPV6, "ipv6_dst": vm.ipv6,
                         **token_match(model.tunnel_token)},
                        goto="pair", cookie=c))
    return out


def to_service_flows(model: Model, node: Node, ports: Ports) -> list[Flow]:
    """Return path: rebuilt IPv6 to an endpoint goes straight to that endpoint's host."""
    out: list[Flow] = []
    for ep in model.endpoints:
        out += to_service_flow(model, node, ports, ep)
    return out


def to_service_flow(model: Model, node: Node, ports: Ports, ep: Endpoint) -> list[Flow]:
    """``to_service_flows`` for one endpoint (none while its host or the tunnel is unknown)."""
    c = cookie("host", "endpoint", ep.name)
    m = {"eth_type": ETH_IPV6, "ipv6_dst": ep.ipv6, "ct_state": CT_REPLY_OR_RELATED}
    if ep.host == node.name:
        return [flow("to_service", PRIO_MATCH, m, [service.to_endpoint()], cookie=c)]
    actions = to_host(model, ports, ep.host)
    return [flow("to_service", PRIO_MATCH, m, actions, cookie=c), *bounce_flows(model, ports, ep)] \
        if actions else []


def _from_endpoint_host(model: Model, ep: Endpoint) -> dict | None:
    """The match of Geneve straight from endpoint ``ep``'s host, from its address to the
    platform (with the token); None if that host is unknown."""
    host = model.node(ep.host)
    if host is None:
        return None
    return {"tun_ipv4_src": host.underlay_ip, "tunnel_id": VNI, "eth_type": ETH_IPV6,
            "ipv6_src": ep.ipv6, **token_match(model.tunnel_token)}


def bounce_flows(model: Model, ports: Ports, ep: Endpoint) -> list[Flow]:
    """Direct path: what endpoint ``ep``'s host sends straight here to a platform address
    that no pair here takes (its learned entry is stale: the pair idled out, the VM
    moved, this switch restarted) goes on to the appliance, which routes it to the VM's
    host now - the next reply from there corrects the service host's entry."""
    appliance = model.appliance_node()
    m = _from_endpoint_host(model, ep)
    if not model.direct_path or appliance is None or m is None or ports.geneve is None:
        return []
    return [flow("from_tunnel", PRIO_BOUNCE, {**m, "ipv6_dst": service.STEERING},
                 [SetField("tun_ipv4_dst", appliance.underlay_ip), *token_actions(model.tunnel_token),
                  Output(OFPP_IN_PORT)], cookie=cookie("host", "direct", ep.name))]


def direct_flows(model: Model, ep: Endpoint, vm: VM, index: int) -> list[Flow]:
    """Direct path: the pair's packets straight from its endpoint's host (not through the
    appliance) are accepted - only from that host, with the token, from that endpoint to
    that VM. None for an endpoint on the VM's own host (its packets go through the
    appliance) or with the direct path off."""
    m = _from_endpoint_host(model, ep)
    if not model.direct_path or ep.host == vm.host or m is None:
        return []
    return [flow("from_tunnel", PRIO_DIRECT, {**m, "ipv6_dst": vm.ipv6}, goto="pair",
                 cookie=cookie("host", "pair", index))]


def to_host(model: Model, ports: Ports, host: str) -> list:
    """Geneve (VNI, token) straight to another host; [] if it or the tunnel is unknown."""
    node = model.node(host)
    if node is None or ports.geneve is None:
        return []
    return [SetField("tunnel_id", VNI), SetField("tun_ipv4_dst", node.underlay_ip),
            *token_actions(model.tunnel_token), Output(ports.geneve)]


def host_flows(model: Model, node: Node, ports: Ports, xlat_mac: str) -> list[Flow]:
    out = base_flows(model, ports, xlat_mac)
    for vm in model.vms_on(node.name):
        out += vm_flows(model, node, ports, vm)
    out += to_service_flows(model, node, ports)
    return out


# ---------------------------------------------------------------------------
# Per-pair flows (installed on the pair's first packet)


PAIR_TABLES = frozenset({"pair", "from_translator", "vm_return"})   # where pair_flows() puts them
DIRECT_TABLES = frozenset({"from_tunnel"})      # ... and direct_flows(), if any


def pair_complete(tables: set | frozenset) -> bool:
    """Whether the tables holding a pair's flows are those of a whole pair."""
    return PAIR_TABLES <= tables <= PAIR_TABLES | DIRECT_TABLES


def pair_flows(model: Model, ports: Ports, ep: Endpoint, vm: VM, index: int, alias: IPv4Address,
               idle_timeout: int = PAIR_IDLE_TIMEOUT,
               port_range: tuple[int, int] = PORT_RANGE) -> list[Flow]:
    """The pair's forward rule (alias SNAT), its SNAT to Platform_IP, and its return rule."""
    port = ports.vif("vm", vm.name)
    c = cookie("host", "pair", index)
    alias6 = model.translated(alias)
    return [
        flow("pair", PRIO_MATCH, {"eth_type": ETH_IPV6, "ipv6_src": ep.ipv6, "ipv6_dst": vm.ipv6},
             [CT(zone=ZONE_V6_SNAT, commit=True, table="v6_dnat", nat=Nat("src", str(alias6)))],
             cookie=c, idle_timeout=idle_timeout, send_flow_rem=True),
        flow("from_translator", PRIO_MATCH,
             {"eth_type": ETH_IPV4, "ipv4_src": alias, "ipv4_dst": vm.ipv4},
             [CT(zone=vm.zone, commit=True, table="to_vm",
                 nat=Nat("src", str(vm.snat_ip), port_min=port_range[0], port_max=port_range[1]))],
             cookie=c),
        flow("vm_return", PRIO_MATCH,
             {"in_port": port, "eth_type": ETH_IPV4, "ipv4_dst": alias, "ct_state": CT_REPLY_OR_RELATED},
             goto="to_translator", cookie=c),
        *direct_flows(model, ep, vm, index),
    ]


def deny_flow(service: IPv6Address, vm_ipv6: IPv6Address) -> Flow:
    """Drop a refused pair for a while so its packets are not punted again."""
    return flow("pair", PRIO_DENY, Match.of(eth_type=ETH_IPV6, ipv6_src=service, ipv6_dst=vm_ipv6),
                [], cookie=cookie("host", "deny", f"{service}>{vm_ipv6}"), hard_timeout=DENY_HOLD)


# ---------------------------------------------------------------------------
# Port exhaustion: a clean refusal

ICMP_UNREACH, ICMP_ADMIN_PROHIBITED = 3, 13
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
ICMP_QUOTE = 548        # bytes of the refused datagram quoted (RFC 1812 4.3.2.3: <= 576 in all)


def refusal(frame: bytes, xlat_mac: str) -> bytes | None:
    """The frame that refuses a connection NAT found no port for, as the VM's address,
    addressed to TAYGA (which takes it back to the service through the IPv6 zones):

    - TCP: a reset, as a closed port answers (RFC 9293 3.10.7.1: to a SYN, RST+ACK
      acknowledging it; otherwise RST with the segment's ACK as sequence number) - the
      service's connect() fails at once with ECONNREFUSED;
    - anything else (UDP, echo requests): ICMPv4 destination unreachable,
      administratively prohibited, quoting the datagram (EACCES at the service).

    None if ``frame`` is not Ethernet/IPv4, is a reset, or is an ICMP error (never
    answer an error with an error, RFC 1122 3.2.2)."""
    if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != 0x0800:
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ihl < 20 or len(ip) < ihl:
        return None
    total = min(struct.unpack_from("!H", ip, 2)[0], len(ip))
    src, dst, proto = ip[12:16], ip[16:20], ip[9]
    eth = ethernet(xlat_mac, gateway.GATEWAY_MAC, ETH_IPV4)
    if proto == 6:
        tcp = ip[ihl:total]
        if len(tcp) < 20 or tcp[13] & TCP_RST:
            return None
        sport, dport, seq, ack = struct.unpack_from("!HHII", tcp)
        flags = tcp[13]
        if flags & TCP_ACK:
            rst = struct.pack("!HHIIBBHHH", dport, sport, ack, 0, 5 << 4, TCP_RST, 0, 0, 0)
        else:
            seg_len = len(tcp) - (tcp[12] >> 4) * 4 + (1 if flags & TCP_SYN else 0) + \
                (1 if flags & TCP_FIN else 0)
            rst = struct.pack("!HHIIBBHHH", dport, sport, 0, (seq + seg_len) & 0xFFFFFFFF, 5 << 4,
                              TCP_RST | TCP_ACK, 0, 0, 0)
        pseudo = dst + src + struct.pack("!BBH", 0, 6, len(rst))
        rst = rst[:16] + struct.pack("!H", checksum(pseudo + rst)) + rst[18:]
        return eth + _ipv4(dst, src, 6, rst)
    if proto == 1 and len(ip) > ihl and ip[ihl] not in (0, 8):   # only echo may be refused
        return None
    icmp = struct.pack("!BBHI", ICMP_UNREACH, ICMP_ADMIN_PROHIBITED, 0, 0) + ip[:min(total, ICMP_QUOTE)]
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    return eth + _ipv4(dst, src, 1, icmp)


ICMP_TIME_EXCEEDED, ICMP_TTL_EXCEEDED = 11, 0


def time_exceeded(frame: bytes, vm: VM) -> bytes | None:
    """The VM's gateway's answer to a packet from the VM it must not forward, TTL 0 or 1
    (``from_vm`` punts them): ICMPv4 Time Exceeded, code 0 (RFC 1812 5.3.1, RFC 792),
    from the gateway's address to the VM, quoting the packet as far as 576 bytes allow
    (RFC 1812 4.3.2.3).

    None unless ``frame`` is Ethernet/IPv4 from ``vm`` with TTL <= 1, and never about an
    ICMP error or a non-initial fragment (RFC 1812 4.3.2.7). Ethernet to the frame's own
    source MAC, as the service gateway answers (service.gateway_error)."""
    if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != 0x0800:
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ihl < 20 or len(ip) < ihl or ip[8] > 1 or ip[12:16] != vm.ipv4.packed:
        return None
    if struct.unpack_from("!H", ip, 6)[0] & 0x1FFF:
        return None
    if ip[9] == 1 and len(ip) > ihl and ip[ihl] not in (0, 8, 13, 14, 15, 16, 17, 18):
        return None      # an ICMP error (only queries and echoes are answered)
    total = min(struct.unpack_from("!H", ip, 2)[0], len(ip))
    icmp = struct.pack("!BBHI", ICMP_TIME_EXCEEDED, ICMP_TTL_EXCEEDED, 0, 0) + ip[:min(total, ICMP_QUOTE)]
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    return ethernet(frame[6:12], gateway.GATEWAY_MAC, ETH_IPV4) + _ipv4(vm.gateway.packed, vm.ipv4.packed, 1, icmp)


ICMP6_PARAM_PROBLEM, ICMP6_ERRONEOUS_HEADER = 4, 0
ROUTING_HEADER = 43


def routing_header_error(frame: bytes, service6: IPv6Address, vm6: IPv6Address,
                         service_mac: str) -> bytes | None:
    """RFC 7915 5.1's answer to an IPv6 packet whose routing header has Segments Left
    != 0, which must not be translated: an ICMPv6 Parameter Problem, code 0 (erroneous
    header field), pointing at the Segments Left byte, from the VM's platform address
    (where the packet was going) to the service, quoting the packet as the service sent
    it, as much as fits in 1280 bytes (RFC 4443 2.4(c)); Ethernet from the gateway MAC
    to ``service_mac``.

    ``frame`` is that packet as the translator namespace bounced it (module doc,
    "Routing headers"): its addresses are the IPv6 zones' (pair alias, translated VM
    address), so the quote gets ``service6`` and ``vm6`` back. None unless ``frame`` is
    Ethernet/IPv6 with such a routing header (walking hop-by-hop and destination
    options before it)."""
    if len(frame) < 14 + 40 or struct.unpack_from("!H", frame, 12)[0] != ETH_IPV6:
        return None
    ip = frame[14:]
    plen = struct.unpack_from("!H", ip, 4)[0]
    if ip[0] >> 4 != 6 or not plen or 40 + plen > len(ip):
        return None
    ip = ip[:40 + plen]
    nh, off = ip[6], 40
    while nh in service.EXT_HEADERS and len(ip) >= off + 8:
        if nh == ROUTING_HEADER:
            if ip[off + 3] == 0:
                return None
            quoted = ip[:8] + service6.packed + vm6.packed + ip[40:]
            message = struct.pack("!BBHI", ICMP6_PARAM_PROBLEM, ICMP6_ERRONEOUS_HEADER, 0, off + 3) \
                + quoted[:service.IPV6_MIN_MTU - 40 - 8]
            return ethernet(service_mac, gateway.GATEWAY_MAC, ETH_IPV6) + \
                icmp6_packet(vm6.packed, service6.packed, message, service.ERROR_HOP_LIMIT)
        nh, off = ip[off], off + (ip[off + 1] + 1) * 8
    return None


def _ipv4(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0, src, dst)
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload
