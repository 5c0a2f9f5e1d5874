"""The pipelines: one table map per node role, priority bands, cookies, zones.

A *host* runs two roles on one br-int: the encapsulator for its service
endpoints and the decapsulator + stateful translator for its customer VMs.
The *appliance* runs the SDN appliance. Each stage has a name; the same names
go into OVS's Flow_Table rows, so ``ovs-ofctl dump-flows --names`` reads well.

Host pipeline (table ids in brackets)::

  classify [0] ── in_port=geneve0 ──► from_tunnel [1]   (every flow there also wants the token)
     │                                 ├ tun_src=appliance, dst=local VM's platform IPv6 ─► pair [20]
     │                                 └ tun_src=a known host ─► ct(endpoint zone) ─► to_endpoint [11]
     │                                   (delivered only as a reply or related to what it sent)
     ├ in_port=<endpoint> ─► from_endpoint [10]: NS for fe80::1 ─► nd_reply [12] ─► nd_tll [13]
     │                                        dst in fd41::/16 ─► ct(commit, endpoint zone),
     │                                                           Geneve to the appliance
     │                                        (hop limit <= 1, or > path MTU ─► meter ─► controller:
     │                                         the gateway's ICMPv6 Time Exceeded / Packet Too Big)
     ├ in_port=xlat0 ─► from_translator [30]: IPv4 from a pair alias ─► ct(VNet zone, SNAT) ─► to_vm [33]
     │                                       IPv6 back from TAYGA ─► ct(v6 DNAT zone) ─► v6_unsnat [31]
     │                                                    ─► ct(v6 SNAT zone) ─► to_service [32]
     └ in_port=<vm> ─► from_vm [40]: ARP for the gateway ─► arp_reply [41]
                                    IPv4 to Platform_IP ─► ct(VNet zone) ─► vm_return [42] ─► to_translator [50]
                                    (TTL 0 or 1 ─► meter ─► controller: the VM's gateway's Time Exceeded)
  pair [20]: (service IPv6, VM platform IPv6) ─► ct(v6 SNAT zone, src=<xlat /96>::<alias>) ─► v6_dnat [21]
             miss ─► meter ─► controller (first packet of a new pair)
  v6_dnat [21]: ─► ct(v6 DNAT zone, dst=<xlat /96>::<VM IPv4>) ─► to_translator [50] ─► xlat0

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
    ("pair", 20),
    ("v6_dnat", 21),
    ("from_translator", 30),
    ("v6_unsnat", 31),
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


def tables_for(role: str) -> TableMap:
    return {"host": HOST_TABLES, "appliance": APPLIANCE_TABLES}[role]


# Stages whose flows match IPv6 destinations by prefix or host address: node bring-up
# turns on OVS's prefix tracking for them (Flow_Table "prefixes"), so a flood of random
# destinations under fd41::/16 shares megaflows instead of one upcall per address
# (measured on the appliance: ~50k upcalls per 3 s flood without, a handful with).
TABLE_PREFIXES = {
    "host": {"from_tunnel": ["ipv6_dst"], "from_endpoint": ["ipv6_dst"]},
    "appliance": {"route": ["ipv6_dst"]},
}


# ---------------------------------------------------------------------------
# Priority bands (higher wins)

PRIO_MISS = 0          # table-miss: drop (counted) or punt
PRIO_DEFAULT = 10      # catch-all of a stage (e.g. "all other IPv6 from TAYGA")
PRIO_MATCH = 100       # the normal, specific flows
PRIO_SPECIFIC = 110    # exceptions inside a stage (ND before routing, +snat before +rel)
PRIO_TOO_BIG = 120     # from_endpoint: larger than the path MTU -> Packet Too Big (punt)
PRIO_HOP_LIMIT = 130   # from_endpoint / from_vm: hop limit or TTL 0/1 -> Time Exceeded (punt)
PRIO_UNPARSED = 140    # from_endpoint: headers OVS could not parse (no hop limit seen): drop
PRIO_DENY = 200        # short-lived drops of refused pairs

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

# The register bit check_pkt_larger sets in classify for an endpoint's packets that are
# larger than the path MTU (matched in from_endpoint)
TOO_BIG_REG, TOO_BIG_BIT = "reg0", 0

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

    def __str__(self) -> str:
        return f"{self.role}/{self.feature}/{self.obj:#x}"


def cookie(role: str, feature: str, obj: int | str = 0) -> int:
    """The cookie for ``feature`` flows of ``role``; ``obj`` a number or an NB name."""
    return Cookie(role, feature, obj if isinstance(obj, int) else name_id(obj)).value


def name_id(name: str) -> int:
    """A stable 32-bit id for an NB object's name (crc32), for cookies."""
    return zlib.crc32(name.encode())
