"""The platform IPv6 address codec: the one place that knows the address plan.

A subscribed VM gets a platform-unique IPv6 address that embeds where it lives::

    bytes  0-1   reserved prefix 0xfd41        (steering prefix fd41::/16)
    bytes  2-5   SNAT VIP (IPv4; 0.0.0.0 = the platform default Platform_IP)
    bytes  6-7   region id
    bytes  8-9   VNet id, unique within the region
    bytes 10-11  subnet id
    bytes 12-15  the VM's private IPv4

``fd41:0:0:3930:1f:6600:a00:4`` is VM 10.0.0.4 in VNet 0x1f of region 0x3930,
subnet 0x6600, using the platform's default SNAT address.

The RFC 6052 u-octet (bits 64-71)
---------------------------------
RFC 6052 requires bits 64-71 of an IPv4-embedded IPv6 address to be zero. In
this plan those bits are the high byte of the VNet id, and the codec allows any
value there: a platform address is *not* an RFC 6052 address. It is never
handed to a translator that interprets it as one. The stateful translator
rewrites it (conntrack DNAT) to ``<translator /96>::<IPv4>`` before the
stateless translator sees the packet, and that /96 prefix is checked by
:func:`check_translator_prefix` to keep bits 64-71 zero, so everything the
RFC 6052 translator sees is conformant. Restricting VNet ids to 0-255 instead
would have cut the tenant space of a region by 256x for no benefit.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Iterable

RESERVED_PREFIX = 0xFD41
STEERING_PREFIX = IPv6Network("fd41::/16")
MAX_ID = 0xFFFF
DEFAULT_SNAT_VIP = IPv4Address("0.0.0.0")


class AddressError(ValueError):
    """An address or address field that does not fit the address plan."""


def parse_id(value: int | str, what: str) -> int:
    """Parse a 16-bit id given as an int, decimal text or 0x-prefixed hex text."""
    if isinstance(value, bool):
        raise AddressError(f"{what} must be an integer 0..0xffff, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text, 0)
        except ValueError:
            raise AddressError(
                f"{what} must be an integer 0..0xffff (decimal or 0x hex), got {text!r}"
            ) from None
    if not isinstance(value, int):
        raise AddressError(f"{what} must be an integer 0..0xffff, got {value!r}")
    if not 0 <= value <= MAX_ID:
        raise AddressError(f"{what} {value:#x} is out of range 0..0xffff" if value >= 0
                           else f"{what} {value} is out of range 0..0xffff")
    return value


def parse_ipv4(value: str | int | IPv4Address, what: str) -> IPv4Address:
    if isinstance(value, IPv4Address):
        return value
    try:
        return IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError):
        raise AddressError(f"{what} must be an IPv4 address, got {value!r}") from None


def parse_ipv6(value: str | int | IPv6Address, what: str) -> IPv6Address:
    if isinstance(value, IPv6Address):
        return value
    if isinstance(value, str) and "/" in value:
        raise AddressError(f"{what} must be a single IPv6 address, not a prefix: {value!r}")
    try:
        return IPv6Address(value)
    except (ipaddress.AddressValueError, ValueError):
        raise AddressError(f"{what} must be an IPv6 address, got {value!r}") from None


def check_snat_vip(vip: IPv4Address) -> IPv4Address:
    """0.0.0.0 selects Platform_IP; anything else must be a usable unicast address."""
    if vip == DEFAULT_SNAT_VIP:
        return vip
    if vip.is_multicast or vip.is_loopback or vip.is_reserved or vip.is_link_local \
            or vip == IPv4Address("255.255.255.255"):
        raise AddressError(f"SNAT VIP {vip} is not a unicast address usable as a source")
    return vip


def check_in_ranges(ipv4: IPv4Address, ranges: Iterable[IPv4Network], where: str) -> None:
    ranges = list(ranges)
    if not any(ipv4 in net for net in ranges):
        shown = ", ".join(str(n) for n in ranges) or "no ranges"
        raise AddressError(f"IPv4 {ipv4} is outside the ranges of {where} ({shown})")


@dataclass(frozen=True)
class PlatformAddress:
    """The fields of one platform IPv6 address (validated on construction)."""

    region: int
    vnet: int
    subnet: int
    ipv4: IPv4Address
    snat_vip: IPv4Address = DEFAULT_SNAT_VIP

    def __post_init__(self) -> None:
        object.__setattr__(self, "region", parse_id(self.region, "region id"))
        object.__setattr__(self, "vnet", parse_id(self.vnet, "VNet id"))
        object.__setattr__(self, "subnet", parse_id(self.subnet, "subnet id"))
        object.__setattr__(self, "ipv4", parse_ipv4(self.ipv4, "VM IPv4"))
        vip = check_snat_vip(parse_ipv4(self.snat_vip, "SNAT VIP"))
        object.__setattr__(self, "snat_vip", vip)
        if self.ipv4 in (IPv4Address("0.0.0.0"), IPv4Address("255.255.255.255")) \
                or self.ipv4.is_multicast or self.ipv4.is_loopback:
            raise AddressError(f"VM IPv4 {self.ipv4} is not a unicast host address")

    @property
    def ipv6(self) -> IPv6Address:
        value = (RESERVED_PREFIX << 112) | (int(self.snat_vip) << 80) \
            | (self.region << 64) | (self.vnet << 48) | (self.subnet << 32) | int(self.ipv4)
        return IPv6Address(value)

    def __str__(self) -> str:
        return str(self.ipv6)

    def check_ranges(self, ranges: Iterable[IPv4Network], where: str = "the VNet") -> None:
        """Raise AddressError unless the embedded IPv4 lies inside one of ``ranges``."""
        check_in_ranges(self.ipv4, ranges, where)

    def as_dict(self) -> dict:
        return {
            "ipv6": str(self.ipv6),
            "region": f"{self.region:#06x}",
            "vnet": f"{self.vnet:#06x}",
            "subnet": f"{self.subnet:#06x}",
            "ipv4": str(self.ipv4),
            "snat_vip": str(self.snat_vip),
        }


def encode(region: int | str, vnet: int | str, subnet: int | str,
           ipv4: str | IPv4Address, snat_vip: str | IPv4Address = DEFAULT_SNAT_VIP,
           ranges: Iterable[IPv4Network] | None = None) -> IPv6Address:
    """Build the platform IPv6 address; with ``ranges``, also check the IPv4 is in them."""
    addr = PlatformAddress(region, vnet, subnet, ipv4, snat_vip)
    if ranges is not None:
        addr.check_ranges(ranges)
    return addr.ipv6


def decode(value: str | IPv6Address | int,
           ranges: Iterable[IPv4Network] | None = None) -> PlatformAddress:
    """Split a platform IPv6 address into its fields, validating every one."""
    addr = parse_ipv6(value, "platform address")
    if addr not in STEERING_PREFIX:
        raise AddressError(
            f"{addr} is not a platform address: it is outside the reserved prefix {STEERING_PREFIX}")
    n = int(addr)
    fields = PlatformAddress(
        region=(n >> 64) & MAX_ID,
        vnet=(n >> 48) & MAX_ID,
        subnet=(n >> 32) & MAX_ID,
        ipv4=IPv4Address(n & 0xFFFFFFFF),
        snat_vip=IPv4Address((n >> 80) & 0xFFFFFFFF),
    )
    if ranges is not None:
        fields.check_ranges(ranges)
    return fields


def check_translator_prefix(value: str | IPv6Network) -> IPv6Network:
    """The stateless translator's network-specific prefix: a /96 usable with RFC 6052.

    It must be a /96 (the IPv4 sits in the last 32 bits), bits 64-71 (the u-octet)
    must be zero, it must not overlap the steering prefix, and it must not be the
    well-known prefix 64:ff9b::/96 (which refuses private IPv4 per RFC 6052).
    """
    try:
        net = IPv6Network(value, strict=True)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as exc:
        raise AddressError(f"translator prefix must be an IPv6 /96 network, got {value!r}: {exc}") \
            from None
    if net.prefixlen != 96:
        raise AddressError(f"translator prefix {net} must be a /96, not /{net.prefixlen}")
    if (int(net.network_address) >> 56) & 0xFF:
        raise AddressError(f"translator prefix {net}: bits 64-71 (RFC 6052 u-octet) must be zero")
    if net.overlaps(STEERING_PREFIX):
        raise AddressError(f"translator prefix {net} overlaps the steering prefix {STEERING_PREFIX}")
    if net == IPv6Network("64:ff9b::/96"):
        raise AddressError("translator prefix must be network-specific: the well-known "
                           "64:ff9b::/96 refuses private IPv4 (RFC 6052)")
    return net
