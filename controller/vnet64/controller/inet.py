"""The Internet checksum (RFC 1071), for the packets the controller builds itself: the
refusal of a connection NAT found no port for (roles/customer.py) and the gateway's
ICMPv6 errors (roles/service.py)."""

from __future__ import annotations

import struct


def checksum(data: bytes) -> int:
    """One's complement of the one's complement sum of ``data``'s 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
