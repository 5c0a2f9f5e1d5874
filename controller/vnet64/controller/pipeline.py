"""The pipelines: one table map per node role, priority bands, cookies, zones.

A *host* runs two roles on one br-int: the encapsulator for its service
endpoints and the decapsulator + stateful translator for its customer VMs.
The *appliance* runs the SDN appliance. Each stage has a name; the same names
go into OVS's Flow_Table rows, so ``ovs-ofctl dump-flows --names`` reads well.

Host pipeline (table ids in brackets)::

  classify [0] ── in_port=geneve0 ──► from_tunnel [1]   (every flow there also wants the token)
     │                                 ├ tun_src=appliance, dst=local VM's platform IPv6 ─► pair [20]
     │                                 ├ tun_src=a known host ─► ct(endpoint zone) ─► to_endpoint [11]
     │                                 │ (delivered only as a reply or related to what it sent;
     │                                 │  a reply through the tunnel learns the direct path)
     │                                 └ direct path: tun_src=an endpoint's host, from it, to a VM
     │                                   of a pair here ─► pair [20]; no pair: on to the appliance;
     │                                   from another address to fd41::/16: dropped (not_direct)
     ├ in_port=<endpoint> ─► from_endpoint [10]: NS for fe80::1 ─► nd_reply [12] ─► nd_tll [13]
     │                                        dst in fd41::/16 ─► to_appliance [14]: ct(commit,
     │                                          endpoint zone), Geneve to the appliance - or, once
     │                                          learnt (resubmit to direct [15]), to the VM's host
     │                                        (hop limit <= 1 here, > path MTU in to_appliance ─►
     │                                         meter ─► controller: the gateway's ICMPv6 Time
     │                                         Exceeded / Packet Too Big)
     ├ in_port=xlat0 ─► from_translator [30]: IPv4 from a pair alias ─► ct(VNet zone, SNAT) ─► to_vm [33]
     │                                       IPv6 back from TAYGA ─► ct(v6 DNAT zone), then in the
     │                                         same pass ct(v6 SNAT zone) ─► to_service [32]
     └ in_port=<vm> ─► from_vm [40]: ARP for the gateway ─► arp_reply [41]
                                    IPv4 to Platform_IP ─► ct(VNet zone) ─► vm_return [42] ─► to_translator [50]
                                    (TTL 0 or 1 ─► meter ─► controller: the VM's gateway's Time Exceeded)
  pair [20]: (service IPv6, VM platform IPv6) ─► ct(v6 SNAT zone, src=<xlat /96>::<alias>) ─► v6_dnat [21]
             miss ─► meter ─► controller (first packet of a new pair)
  v6_dnat [21]: valid in the SNAT zone ─► ct(v6 DNAT zone, dst=<xlat /96>::<VM IPv4>), then in
                the same pass ─► xlat0

  <endpoint>, <vm>: the interface bound to it on this node in the NB (Port_Binding, found by
  the node agent through external_ids:iface-id; ``roles.Ports``), whatever it is called.

Appliance pipeline::

  classify [0] ── in_port=geneve0 ──► from_tunnel [1]: tun_src = a known host + token ─► route [2]
  route [2]: ipv6_dst = a subscribed VM's platform IPv6 ─► tun_dst = its host, token, out IN_PORT
             anything else: dropped and counted (never punted)

Tunnel token: every node puts the platform's tunnel token (NB ``Platform.tunnel_token``)
in a Geneve option on what it sends into the fabric, and every ``from_tunnel`` flow
matches it besides the outer source (see ``TOKEN_OPTION``).

Cookies (64 bits): ``role (8) | feature (8) | object (48)``. ``object`` is the
pair's alias index for per-pair flows (so a restarted controller can rebuild
its allocations from the switch) and a hash of the NB object otherwise.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from .flows import SetField, TableMap, TlvMap

# ---------------------------------------------------------------------------
# Table maps

HOST_TABLES = TableMap("host", (
    ("classify", 0),
    ("from_tunnel", 1),
    ("from_endpoint", 10),
    ("to_endpoint", 11),
    ("nd_reply", 12),
    ("nd_tll", 13),
    ("to_appliance", 14),
    ("direct", 15),
    ("pair", 20),
    ("v6_dnat", 21),
    ("from_translator", 30),
    ("to_service", 32),
    ("to_vm", 33),
    ("from_vm", 40),
    ("arp_reply", 41),
    ("vm_return", 42),
    ("to_translator", 50),
))

APPLIANCE_TABLES = TableMap("appliance", (
    ("classify", 0),
    ("from_tunnel", 1),
    ("route", 2),
))


# Stages reached only by ``resubmit`` (and back): a miss there does nothing - the packet
# goes on where it came from - so they have no miss flow. ``direct`` holds only what the
# switch learned (service module, ``direct_learn``).
RESUBMIT_STAGES = frozenset({"direct"})


def tables_for(role: str) -> TableMap:
    return {"host": HOST_TABLES, "appliance": APPLIANCE_TABLES}[role]


# Stages whose flows match IPv6 destinations by prefix or host address: node bring-up
# turns on OVS's prefix tracking for them (Flow_Table "prefixes"), so a flood of random
# destinations under fd41::/16 shares megaflows instead of one upcall per address
# (measured on the appliance: ~50k upcalls per 3 s flood without, a handful with).
# ``direct``: its learnt entries match exact addresses; without the trie each destination of
# such a flood would un-wildcard the whole ipv6_dst on the service host.
TABLE_PREFIXES = {
    "host": {"from_tunnel": ["ipv6_dst"], "from_endpoint": ["ipv6_dst"], "direct": ["ipv6_dst"]},
    "appliance": {"route": ["ipv6_dst"]},
}


# ---------------------------------------------------------------------------
# Priority bands (higher wins)

PRIO_MISS = 0          # table-miss: drop (counted) or punt
PRIO_DEFAULT = 10      # catch-all of a stage (e.g. "all other IPv6 from TAYGA")
PRIO_MATCH = 100       # the normal, specific flows
PRIO_SPECIFIC = 110    # exceptions inside a stage (ND before routing, +snat before +rel)
PRIO_TOO_BIG = 120     # to_appliance: larger than the path MTU -> Packet Too Big (punt)
PRIO_HOP_LIMIT = 130   # from_endpoint / from_vm: hop limit or TTL 0/1 -> Time Exceeded (punt)
PRIO_UNPARSED = 140    # from_endpoint: headers OVS could not parse (no hop limit seen): drop
PRIO_DENY = 200        # short-lived drops of refused pairs
# The direct path (``direct_path``): in a customer host's from_tunnel, above the peers'
# reply flows (PRIO_MATCH, tun_src only)
PRIO_NOT_DIRECT = 101  # from a host to a platform address, not allowed: drop
PRIO_BOUNCE = 105      # ... from an endpoint of that host, no pair here: on to the appliance
PRIO_DIRECT = 110      # ... from the endpoint's host, a pair here: accepted (per pair)
PRIO_LEARN = 115       # to_endpoint: a reply that came through the tunnel teaches ``direct``
DIRECT_IDLE_TIMEOUT = 60   # s a learned direct entry lives without traffic (< a pair's 300)

# ---------------------------------------------------------------------------
# Conntrack zones of the controller (VNet zones 1..65279 come from the NB)

ZONE_V6_SNAT = 65534   # service IPv6 -> <xlat /96>::<alias>
ZONE_V6_DNAT = 65533   # VM platform IPv6 -> <xlat /96>::<VM IPv4>
ZONE_ENDPOINTS = 65532  # a service host's endpoints' connections (no NAT): only replies come in

# Conntrack timeouts a host must configure for the controller's zones and for the
# zones of the VNets it hosts (CT_Timeout_Policy): a closed TCP connection keeps
# its Platform_IP port longer than the VM keeps TIME_WAIT (60 s on Linux), so a
# port is not reused while the VM would still refuse its SYN. The userspace
# datapath files a connection closed by both sides under "tcp_close" (measured:
# tcp_time_wait alone leaves such entries at the default 30 s), so set both.
# Not much longer than 60 s either: a VM's port space towards one Platform_IP is
# 64,512 ports (1024-65535), so holding each closed connection H seconds caps new
# connections to one VM service port at 64,512 / H per second (62 s -> ~1,040/s) from
# distinct service addresses and ports. A service port used again within H re-opens its
# closed connection and keeps its Platform_IP port (the VM's TIME_WAIT socket for it
# accepts the SYN): Linux's conntrack does, OVS 3.1's userspace conntrack only with the
# lab's patch (ovs-setup/patches/), which the sustained-load test depends on.
CT_TIMEOUTS = {"tcp_time_wait": 62, "tcp_close": 62}

# Geneve VNI carried by every platform packet (key=flow)
VNI = 0x6464

# The tunnel token: a 4-byte Geneve option (class 0xffff, from IANA's "Experimental Use"
# range 0xfff0-0xffff; type 0x64, not critical) that every node sets on what it sends into
# the fabric and every ``from_tunnel`` flow matches, besides the outer source address. A
# node on the fabric that can spoof the appliance's or a host's underlay address, but
# cannot read the fabric's traffic, no longer gets packets in (it would have to guess 32
# bits). With its 4-byte header the option takes the 8 bytes ``geneve_option_bytes`` keeps
# in the MTU plan. The switch learns the option's field from a TLV map the controller
# sends on every connect (OVS does not keep it in OVSDB).
TOKEN_FIELD = "tun_metadata0"
TOKEN_OPTION = TlvMap(index=0, option_class=0xFFFF, option_type=0x64, length=4)


def tlv_map_problem(maps: list[TlvMap]) -> str | None:
    """What is wrong with a switch's TLV map (its NXT_TLV_TABLE_REPLY) for the token, or
    None. Adding ``TOKEN_OPTION`` where ``tun_metadata0`` is mapped to another option fails
    with the same "already mapped" as re-adding ours (ignored): this tells them apart."""
    if TOKEN_OPTION in maps:
        return None
    theirs = [m for m in maps if m.index == TOKEN_OPTION.index]
    if theirs:
        return (f"tun_metadata{TOKEN_OPTION.index} is mapped to {theirs[0].ofctl()}, not to the tunnel "
                f"token's {TOKEN_OPTION.ofctl()}: every flow that matches or sets the token reads "
                f"the wrong option (remove that mapping - ovs-ofctl del-tlv-map, once no flow "
                f"uses it - and reconnect the switch)")
    return f"the tunnel token's option is not mapped ({TOKEN_OPTION.ofctl()} is missing)"


def token_match(token: int | None) -> dict:
    """What a ``from_tunnel`` flow adds to its match (nothing when the NB has no token)."""
    return {TOKEN_FIELD: token} if token else {}


def token_actions(token: int | None) -> list[SetField]:
    """What a flow that sends into the fabric does before its output."""
    return [SetField(TOKEN_FIELD, token)] if token else []


# NA flags in nd_reserved: Router, Solicited, Override
NA_FLAGS_RSO = 0xE0000000

# Meters on the packet-in path of a host: new pairs have their own, so that what else is
# punted - the gateways' Time Exceeded / Packet Too Big, bounced routing headers and
# port-exhaustion refusals, which a tenant can provoke at will - cannot take the new
# pairs' share of it.
PACKET_IN_METER = 1     # first packets of new pairs
ERROR_METER = 2         # the gateways' ICMP errors, bounced routing headers, refusals

# The register bit check_pkt_larger sets in from_endpoint for an endpoint's packets to the
# platform that are larger than the path MTU (matched in to_appliance). The check comes
# after every drop decision of from_endpoint: Open vSwitch translates both outcomes of a
# check_pkt_larger into one datapath flow and credits every OpenFlow flow of either branch
# with all its packets, so a drop flow behind it would count each packet twice, and the
# Packet Too Big punt counts every packet checked (drops.NOT_COUNTED_HERE).
TOO_BIG_REG, TOO_BIG_BIT = "reg0", 0
# to_endpoint: the appliance's underlay address, for a local reply's direct_learn
DIRECT_REG = "reg6"

# ---------------------------------------------------------------------------
# Cookies

ROLE_IDS = {"host": 0x01, "appliance": 0x02}
ROLE_NAMES = {v: k for k, v in ROLE_IDS.items()}

FEATURES = {
    "base": 0x01,        # classify, catch-alls, miss flows
    "endpoint": 0x02,    # a local service endpoint: encapsulation, delivery, ND
    "peer": 0x03,        # a known host (tunnel source check), return-path encapsulation
    "vm": 0x04,          # a local subscribed VM: decap steering, DNAT, delivery, ARP
    "pair": 0x05,        # a (service endpoint, VM) pair: alias, SNAT, return rule
    "deny": 0x06,        # a refused pair, dropped for a while without punting
    "route": 0x07,       # appliance: a subscribed VM's host mapping
    "drop": 0x08,        # a packet not forwarded, for a named reason (DROP_REASONS)
    "direct": 0x09,      # the direct path: a host passing direct traffic on to the appliance
    "learned": 0x0A,     # a flow the switch learned itself (a service host's direct entry)
}
FEATURE_NAMES = {v: k for k, v in FEATURES.items()}

OBJECT_BITS = 48
OBJECT_MASK = (1 << OBJECT_BITS) - 1
ROLE_MASK = 0xFF << 56
FEATURE_MASK = 0xFF << 48


@dataclass(frozen=True)
class Cookie:
    role: str
    feature: str
    obj: int = 0

    @property
    def value(self) -> int:
        return (ROLE_IDS[self.role] << 56) | (FEATURES[self.feature] << 48) | (self.obj & OBJECT_MASK)

    @classmethod
    def decode(cls, value: int) -> "Cookie":
        role = ROLE_NAMES.get((value >> 56) & 0xFF)
        feature = FEATURE_NAMES.get((value >> 48) & 0xFF)
        if role is None or feature is None:
            raise ValueError(f"cookie {value:#018x} was not installed by vnet64")
        return cls(role, feature, value & OBJECT_MASK)

    @property
    def reason(self) -> str | None:
        """Why a ``drop`` flow's packets are not forwarded (a ``DROP_REASONS`` name); a
        ``deny`` flow's is ``refused_pair``; None for any other flow."""
        if self.feature == "deny":
            return "refused_pair"
        if self.feature != "drop":
            return None
        return REASON_NAMES.get(self.obj >> REASON_SHIFT, f"reason-{self.obj >> REASON_SHIFT}")

    def __str__(self) -> str:
        if self.feature == "drop":
            return f"{self.role}/drop/{self.reason}/{self.obj & NAME_MASK:#x}"
        return f"{self.role}/{self.feature}/{self.obj:#x}"


def cookie(role: str, feature: str, obj: int | str = 0) -> int:
    """The cookie for ``feature`` flows of ``role``; ``obj`` a number or an NB name."""
    return Cookie(role, feature, obj if isinstance(obj, int) else name_id(obj)).value


def name_id(name: str) -> int:
    """A stable 32-bit id for an NB object's name (crc32), for cookies."""
    return zlib.crc32(name.encode())


# ---------------------------------------------------------------------------
# Drop reasons: every packet a pipeline does not forward goes through a flow whose cookie
# names why (feature ``drop``, object ``reason << 32 | name_id(owner)``), so that its
# counters read as "how many packets were not forwarded, and why" (``vnet64-node stats
# --explain``, the agent's ``vnet64_dropped_packets_total``). Each reason: (id, what
# happened, and whether the packet is dropped silently or punted to the controller, which
# answers it as a router would, or refuses the connection). Stages whose miss cannot happen
# in a consistent pipeline carry ``no_flow`` (a race with a change, or a bug).

DROP, PUNT = "drop", "answered"

DROP_REASONS: dict[str, tuple[int, str, str]] = {
    "no_flow": (1, DROP, "no flow of this stage matched: a packet the stage was not built for "
                         "(a race with a change of the NB, or a bug)"),
    "unknown_port": (2, DROP, "from a port that is no bound VM or service endpoint of this node, "
                              "or Geneve without the platform's VNI"),
    "untrusted_tunnel": (3, DROP, "Geneve whose outer source is no node of the platform, or "
                                  "without the platform's tunnel token"),
    "unknown_destination": (4, DROP, "to a platform IPv6 address that is no subscribed VM (the "
                                     "appliance), or no subscribed VM of this host (a customer "
                                     "host: moved, unsubscribed, forged)"),
    "not_to_platform": (5, DROP, "from a service endpoint, but not IPv6 to the platform prefix "
                                 "(fd41::/16) nor ND for its gateway"),
    "spoofed_source": (6, DROP, "from a service endpoint to the platform with a source that is "
                                "not the endpoint's own address"),
    "unparsed_headers": (7, DROP, "from a service endpoint, with IPv6 extension headers Open "
                                  "vSwitch could not parse (no upper layer found)"),
    "not_a_reply": (8, DROP, "from another host to a service endpoint, but no reply to (or error "
                             "about) a connection the endpoint opened"),
    "no_pair": (9, DROP, "IPv4 from the translator for a pair whose flows are gone (idled out, "
                         "revoked)"),
    "no_return_path": (10, DROP, "rebuilt IPv6 towards a service that is no reply to its "
                                 "connection, or to an endpoint the NB does not know"),
    "conntrack_invalid": (11, DROP, "conntrack found the packet invalid (+inv: e.g. a TCP segment "
                                    "outside the window, a malformed header)"),
    "vm_not_to_platform": (12, DROP, "from a VM's port, but neither IPv4 from the VM's own "
                                     "address to its Platform_IP nor ARP for its gateway"),
    "vm_initiated": (13, DROP, "from a VM to Platform_IP, but no reply to a connection a service "
                               "opened to it (VMs cannot open connections through the platform)"),
    "hop_limit_exceeded": (14, PUNT, "from a service endpoint with hop limit 0 or 1: its gateway "
                                     "answers ICMPv6 Time Exceeded"),
    "packet_too_big": (15, PUNT, "from a service endpoint, larger than the path MTU: its gateway "
                                 "answers ICMPv6 Packet Too Big"),
    "ttl_exceeded": (16, PUNT, "from a VM with TTL 0 or 1: its gateway answers ICMPv4 Time "
                               "Exceeded"),
    "routing_header": (17, PUNT, "IPv6 with a routing header whose Segments Left is not 0 (RFC "
                                 "7915 5.1): answered with ICMPv6 Parameter Problem"),
    "nat_ports_exhausted": (18, PUNT, "a new connection to a VM address and port with no "
                                      "Platform_IP port left: refused (TCP reset, ICMPv4 "
                                      "administratively prohibited)"),
    "translator_multicast": (20, DROP, "IPv6 multicast from the translator namespace itself "
                                       "(router solicitations, MLD reports when its link comes "
                                       "up): nothing to translate"),
    "not_direct": (21, DROP, "Geneve from a host straight to a platform address that is not "
                             "from one of that host's service endpoints (forged, or the "
                             "endpoint moved): only the appliance may send those"),
    "refused_pair": (19, DROP, "a service's first packet to a VM it may not reach (no "
                               "subscription): the controller refused the pair, which is then "
                               "dropped on the host for a while"),
}
REASON_NAMES = {rid: name for name, (rid, _, _) in DROP_REASONS.items()}
REASON_SHIFT = 32
NAME_MASK = (1 << REASON_SHIFT) - 1

# Meters on the packet-in path: what their drop bands count
METER_REASONS = {
    PACKET_IN_METER: ("new_pair_rate", "first packets of new pairs beyond the controller's "
                                       "packet-in rate (a flood of new pairs)"),
    ERROR_METER: ("error_rate", "packets the gateways would answer (Time Exceeded, Packet Too "
                                "Big, refusals) beyond their rate (a flood of them)"),
}


def drop_cookie(role: str, reason: str, owner: str = "") -> int:
    """The cookie of a ``role`` flow that does not forward, for ``reason`` (a
    ``DROP_REASONS`` name); ``owner`` names the NB object it belongs to, if any."""
    if reason not in DROP_REASONS or reason == "refused_pair":
        raise ValueError(f"not a drop flow's reason: {reason!r}")
    rid = DROP_REASONS[reason][0]
    return Cookie(role, "drop", (rid << REASON_SHIFT) | (name_id(owner) if owner else 0)).value
