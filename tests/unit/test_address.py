"""The platform address codec: the documented example, round trips, every malformed input."""

from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest
from hypothesis import given, strategies as st

from vnet64 import address
from vnet64.address import AddressError, PlatformAddress

ids = st.integers(min_value=0, max_value=0xFFFF)
unicast_v4 = st.integers(min_value=0x01000000, max_value=0xDFFFFFFF).map(IPv4Address).filter(
    lambda a: not a.is_loopback and not a.is_multicast)
vips = st.one_of(st.just(IPv4Address("0.0.0.0")), st.sampled_from(
    [IPv4Address("100.100.0.1"), IPv4Address("203.0.113.7"), IPv4Address("52.1.2.3")]))


def test_design_example_decodes_to_its_fields():
    fields = address.decode("fd41:0:0:3930:1f:6600:a00:4")
    assert fields == PlatformAddress(region=0x3930, vnet=0x1F, subnet=0x6600,
                                     ipv4=IPv4Address("10.0.0.4"), snat_vip=IPv4Address("0.0.0.0"))


def test_design_example_encodes_back():
    assert address.encode(0x3930, 0x1F, 0x6600, "10.0.0.4") == IPv6Address("fd41:0:0:3930:1f:6600:a00:4")


def test_snat_vip_sits_in_bytes_2_to_5():
    addr = address.encode(1, 2, 3, "10.0.0.4", snat_vip="100.100.0.1")
    assert addr.packed[2:6] == IPv4Address("100.100.0.1").packed
    assert address.decode(addr).snat_vip == IPv4Address("100.100.0.1")


@given(ids, ids, ids, unicast_v4, vips)
def test_round_trip_fields_to_address_to_fields(region, vnet, subnet, ipv4, vip):
    fields = PlatformAddress(region, vnet, subnet, ipv4, vip)
    assert address.decode(fields.ipv6) == fields
    assert address.decode(str(fields.ipv6)) == fields
    assert fields.ipv6 in address.STEERING_PREFIX


@given(st.integers(min_value=0, max_value=2**112 - 1))
def test_round_trip_address_to_fields_to_address(low_bits):
    addr = IPv6Address((0xFD41 << 112) | low_bits)
    try:
        fields = address.decode(addr)
    except AddressError as exc:  # only unusable IPv4 or SNAT VIP values may be refused
        assert "IPv4" in str(exc) or "SNAT VIP" in str(exc)
        return
    assert fields.ipv6 == addr


@given(ids, ids, ids, unicast_v4)
def test_u_octet_is_the_high_byte_of_the_vnet_id(region, vnet, subnet, ipv4):
    # Documented decision: bits 64-71 carry the VNet id's high byte (not RFC 6052).
    addr = address.encode(region, vnet, subnet, ipv4)
    assert addr.packed[8] == vnet >> 8


@pytest.mark.parametrize("text, message", [
    ("fd42:0:0:3930:1f:6600:a00:4", "outside the reserved prefix fd41::/16"),
    ("2001:db8::1", "outside the reserved prefix"),
    ("10.0.0.4", "must be an IPv6 address"),
    ("fd41::zz", "must be an IPv6 address"),
    ("", "must be an IPv6 address"),
    ("fd41::/16", "not a prefix"),
    ("fd41:0:0:3930:1f:6600:e000:1", "not a unicast host address"),   # 224.0.0.1
    ("fd41:0:0:3930:1f:6600:7f00:1", "not a unicast host address"),   # 127.0.0.1
    ("fd41:0:0:3930:1f:6600::", "not a unicast host address"),        # 0.0.0.0
    ("fd41:e000:1:3930:1f:6600:a00:4", "SNAT VIP 224.0.0.1"),
])
def test_decode_rejects_malformed_input(text, message):
    with pytest.raises(AddressError, match=message):
        address.decode(text)


@pytest.mark.parametrize("kwargs, message", [
    ({"region": 0x10000}, r"region id 0x10000 is out of range"),
    ({"region": -1}, r"region id -1 is out of range"),
    ({"vnet": 70000}, r"VNet id 0x11170 is out of range"),
    ({"subnet": "0xfffff"}, r"subnet id 0xfffff is out of range"),
    ({"vnet": "twelve"}, r"VNet id must be an integer"),
    ({"vnet": True}, r"VNet id must be an integer"),
    ({"ipv4": "10.0.0.256"}, r"VM IPv4 must be an IPv4 address"),
    ({"ipv4": "fd00::1"}, r"VM IPv4 must be an IPv4 address"),
    ({"snat_vip": "127.0.0.1"}, r"SNAT VIP 127.0.0.1 is not a unicast address"),
])
def test_encode_rejects_out_of_range_fields(kwargs, message):
    fields = {"region": 0x3930, "vnet": 0x1F, "subnet": 0x6600, "ipv4": "10.0.0.4", **kwargs}
    with pytest.raises(AddressError, match=message):
        address.encode(**fields)


def test_ids_accept_hex_and_decimal_text():
    assert address.encode("0x3930", "31", "0x6600", "10.0.0.4") == address.encode(0x3930, 0x1F, 0x6600, "10.0.0.4")


def test_ipv4_outside_the_vnet_ranges_is_refused_on_encode_and_decode():
    ranges = [IPv4Network("10.0.0.0/16")]
    assert address.encode(0x3930, 0x1F, 0x6600, "10.0.200.4", ranges=ranges)
    with pytest.raises(AddressError, match=r"IPv4 10.1.0.4 is outside the ranges of the VNet \(10.0.0.0/16\)"):
        address.encode(0x3930, 0x1F, 0x6600, "10.1.0.4", ranges=ranges)
    with pytest.raises(AddressError, match="outside the ranges"):
        address.decode("fd41:0:0:3930:1f:6600:c0a8:1", ranges=ranges)  # 192.168.0.1


@pytest.mark.parametrize("prefix, message", [
    ("fd64:64::/64", "must be a /96"),
    ("fd64:64::1/96", "must be an IPv6 /96 network"),
    ("64:ff9b::/96", "well-known"),
    ("fd41:1::/96", "overlaps the steering prefix"),
    ("fd64:0:0:0:ff00::/96", "u-octet"),
    ("10.0.0.0/8", "must be an IPv6 /96 network"),
])
def test_translator_prefix_rules(prefix, message):
    with pytest.raises(AddressError, match=message):
        address.check_translator_prefix(prefix)
    assert str(address.check_translator_prefix("fd64:64::/96")) == "fd64:64::/96"
