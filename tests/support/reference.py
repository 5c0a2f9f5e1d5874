"""Reference encoders: what ``vnet64.controller.ofmsg`` packs itself, built the plain
os-ken way. ``tests/unit/test_ofmsg.py`` compares bytes with them, and
``benchmarks/controller_cost.py`` uses them as its baseline. Never used to send."""

from __future__ import annotations

from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp

from vnet64.controller import ofmsg
from vnet64.controller.flows import Flow, TableMap


def os_ken_flow_mod(datapath: Any, tables: TableMap | None, f: Flow) -> Any:
    """The flow-mod of :func:`vnet64.controller.ofmsg.flow_mod` built from os-ken's own
    classes (``OFPMatch(**fields)``, fresh action objects from :func:`ofmsg.action`)."""
    parser = datapath.ofproto_parser
    inst = []
    if f.meter is not None:
        inst.append(parser.OFPInstructionMeter(f.meter))
    if f.actions:
        inst.append(parser.OFPInstructionActions(
            ofp.OFPIT_APPLY_ACTIONS, [ofmsg.action(datapath, tables, a) for a in f.actions]))
    if f.goto is not None:
        inst.append(parser.OFPInstructionGotoTable(ofmsg._table_id(tables, f.goto)))
    return parser.OFPFlowMod(
        datapath, cookie=f.cookie, table_id=ofmsg._table_id(tables, f.table), command=ofp.OFPFC_ADD,
        idle_timeout=f.idle_timeout, hard_timeout=f.hard_timeout, priority=f.priority,
        out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
        flags=ofp.OFPFF_SEND_FLOW_REM if f.send_flow_rem else 0,
        match=parser.OFPMatch(**f.match.as_dict()), instructions=inst)
