"""The Internet checksum (RFC 1071) and ICMPv6 packets, for the packets the controller
builds itself: the refusal of a connection NAT found no port for and the translator's
Parameter Problem (roles/customer.py), the gateway's ICMPv6 errors (roles/service.py)."""

from __future__ import annotations

import struct


def ethernet(dst: str | bytes, src: str | bytes, ethertype: int) -> bytes:
    """An Ethernet header; MACs as ``02:00:...`` text or as 6 bytes."""
    def mac(m: str | bytes) -> bytes:
        return bytes.fromhex(m.replace(":", "")) if isinstance(m, str) else bytes(m)
    return mac(dst) + mac(src) + struct.pack("!H", ethertype)


def checksum(data: bytes) -> int:
    """One's complement of the one's complement sum of ``data``'s 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


PROTO_ICMPV6 = 58


def icmp6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """The checksum of an ICMPv6 ``message`` (its own checksum field zero) from ``src``
    to ``dst`` (16 bytes each): over the IPv6 pseudo-header too (RFC 4443 2.3)."""
    return checksum(src + dst + struct.pack("!IxxxB", len(message), PROTO_ICMPV6) + message)


def icmp6_packet(src: bytes, dst: bytes, message: bytes, hop_limit: int) -> bytes:
    """An IPv6 packet carrying ``message`` (an ICMPv6 message whose checksum field is
    ignored and set here)."""
    message = message[:2] + b"\0\0" + message[4:]
    message = message[:2] + struct.pack("!H", icmp6_checksum(src, dst, message)) + message[4:]
    return struct.pack("!IHBB", 6 << 28, len(message), PROTO_ICMPV6, hop_limit) + src + dst + message
