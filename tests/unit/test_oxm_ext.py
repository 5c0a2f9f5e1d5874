"""The ND fields os-ken lacks are registered with the exact OVS (ERICOXM) encoding."""

from os_ken.ofproto import ofproto_v1_3_parser as parser

import vnet64.controller.oxm_ext  # noqa: F401  (registers the fields)


def test_nd_reserved_and_options_type_serialise_as_ericoxm_and_parse_back():
    for field, value, header in (("nd_reserved", 0xE0000000, "10000204"),
                                 ("nd_options_type", 2, "10000401")):
        buf = bytearray()
        parser.OFPActionSetField(**{field: value}).serialize(buf, 0)
        assert buf[4:8].hex() == header            # class 0x1000, field, no mask, length
        back = parser.OFPActionSetField.parser(bytes(buf), 0)
        assert (back.key, back.value) == (field, value)
