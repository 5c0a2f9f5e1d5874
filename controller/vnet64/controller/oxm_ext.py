"""OVS match fields that os-ken does not know, registered with its OpenFlow 1.3 codec.

``nd_reserved`` (the R/S/O flags of a Neighbor Advertisement) and
``nd_options_type`` (SLL=1 / TLL=2) are OVS extensions in the ERICOXM class
0x1000 (ovs-fields(7): ERICOXM_OF_ICMPV6_ND_RESERVED = 1,
ERICOXM_OF_ICMPV6_ND_OPTIONS_TYPE = 2, since OVS 2.11). The datapath needs
both to turn a Neighbor Solicitation into a Neighbor Advertisement: without
them the reply keeps the NS's source-link-layer option and Linux ignores it.

os-ken also lacks ``tun_metadata0`` (NXM_NX_TUN_METADATA0: class 0x0001, field
40), a variable-length field whose width is the length its Geneve option has in
the switch's TLV map; vnet64 maps a 4-byte option to it (the tunnel token), so
it is declared here as 4 bytes - what OVS then writes in flow-stats replies too.

Importing this module adds them to ``os_ken.ofproto.ofproto_v1_3``'s field
table and regenerates its lookup functions (os-ken resolves them through the
module at call time, so existing parser classes pick them up).
"""

from __future__ import annotations

from os_ken.ofproto import ofproto_v1_3, oxm_fields
from os_ken.lib import type_desc

OFPXMC_ERICOXM = 0x1000


class EricssonExtended(oxm_fields._OxmClass):
    """OXM class 0x1000 (ERICOXM_OF): same 32-bit header format as NXM."""

    _class = OFPXMC_ERICOXM


FIELDS = (
    EricssonExtended("nd_reserved", 1, type_desc.Int4),
    EricssonExtended("nd_options_type", 2, type_desc.Int1),
    oxm_fields.NiciraExtended1("tun_metadata0", 40, type_desc.Int4),
)


def register() -> None:
    known = {f.name for f in ofproto_v1_3.oxm_types}
    missing = [f for f in FIELDS if f.name not in known]
    if missing:
        ofproto_v1_3.oxm_types.extend(missing)
        oxm_fields.generate(ofproto_v1_3.__name__)


register()
