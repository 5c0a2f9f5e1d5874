"""Why a node did not forward packets: its counters under named reasons (issue 20, item 3).

Every flow the controller installs that does not forward a packet - each stage's miss,
the spoofing and forgery checks, the gateways' punts, a refused pair's hold - carries a
cookie naming its reason (``controller.pipeline.DROP_REASONS``: feature ``drop``, or
``deny`` for a refused pair). Open vSwitch counts each flow's packets, so a node's drops
per reason are two filtered flow dumps away (``ovs-ofctl dump-flows br-int
cookie=<feature>/<mask>``, not the whole table). The packet-in meters' drop bands add
what a flood of punts lost (``METER_REASONS``, ``ovs-ofctl meter-stats``).

Pure text in, values out (:func:`parse_flows`, :func:`parse_meters`, :func:`totals`,
:func:`render`); :func:`read` runs ``ovs-ofctl`` through a callable.
``vnet64-node stats`` prints them, the agent's metrics export them
(``vnet64_dropped_packets_total``), ``vnet64-lab stats`` adds up the lab's nodes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..controller.pipeline import (DROP_REASONS, FEATURE_MASK, FEATURES, METER_REASONS, Cookie,
                                   tables_for)

# Reasons whose flow counters do not count them: Open vSwitch credits every flow behind a
# check_pkt_larger (both outcomes) with every packet checked (pipeline.TOO_BIG_REG)
NOT_COUNTED_HERE = {
    "packet_too_big": "counted by the controller, not here: vnet64_controller_events_total"
                      "{event=\"icmp6_packet_too_big_sent\"} (Open vSwitch credits the punt flow "
                      "behind check_pkt_larger with every packet the check looked at)",
}

METER = "meter"        # a Count's kind for a meter's drop band (the others: pipeline.DROP / PUNT)
METER_NAMES = {name: (meter, text) for meter, (name, text) in METER_REASONS.items()}

_FLOW = re.compile(r"cookie=(0x[0-9a-f]+),.*?\btable=\"?(\w+)\"?,.*?\bn_packets=(\d+), n_bytes=(\d+)")
_METER = re.compile(r"^meter:(\d+)\b")
_BAND = re.compile(r"^\s*0: packet_count:(\d+) byte_count:(\d+)")
_TABLE = re.compile(r"^\s*tables? (\d+)(?:\.\.\.(\d+))?\b[^:]*:( ditto)?")
_ACTIVE = re.compile(r"^\s*active=(\d+)")


@dataclass(frozen=True)
class Count:
    """One flow's (or meter band's) packets not forwarded."""
    reason: str
    kind: str        # pipeline.DROP ("drop"), pipeline.PUNT ("answered") or METER
    where: str       # the stage (table name), or "meter N"
    packets: int
    bytes: int


def explanation(reason: str) -> str:
    if reason in DROP_REASONS:
        return DROP_REASONS[reason][2]
    if reason in METER_NAMES:
        return METER_NAMES[reason][1]
    return "a reason this version does not know (a newer controller's flows)"


def flow_filters() -> list[str]:
    """``dump-flows`` arguments selecting the flows that name a reason, one dump each."""
    return [f"cookie={FEATURES[f] << 48:#x}/{FEATURE_MASK:#x}" for f in ("drop", "deny")]


def parse_flows(text: str) -> list[Count]:
    """``ovs-ofctl dump-flows`` lines (``--no-names``; with names too) -> one Count per
    flow that names a reason; other flows are skipped."""
    out = []
    for line in text.splitlines():
        m = _FLOW.search(line)
        if m is None:
            continue
        try:
            c = Cookie.decode(int(m.group(1), 16))
        except ValueError:
            continue
        if c.reason is None or c.reason in NOT_COUNTED_HERE:
            continue
        table = m.group(2)
        if table.isdigit():
            try:
                table = tables_for(c.role).name(int(table))
            except ValueError:
                pass
        kind = DROP_REASONS[c.reason][1] if c.reason in DROP_REASONS else "drop"
        out.append(Count(c.reason, kind, table, int(m.group(3)), int(m.group(4))))
    return out


def parse_meters(text: str) -> list[Count]:
    """``ovs-ofctl meter-stats`` -> one Count per packet-in meter of ours (its band 0
    counts what it dropped)."""
    out, meter = [], None
    for line in text.splitlines():
        if (m := _METER.match(line)) is not None:
            meter = int(m.group(1))
        elif (b := _BAND.match(line)) is not None and meter in METER_REASONS:
            out.append(Count(METER_REASONS[meter][0], METER, f"meter {meter}",
                             int(b.group(1)), int(b.group(2))))
            meter = None
    return out


def parse_tables(text: str, role: str) -> dict[str, int]:
    """``ovs-ofctl dump-tables`` -> flows per stage of ``role``'s pipeline (OVS writes
    "table N: ditto" or "tables N...M: ditto" for tables like the one before)."""
    tables, active, last = tables_for(role), {}, 0
    table = None
    for line in text.splitlines():
        if (m := _TABLE.match(line)) is not None:
            first, final = int(m.group(1)), int(m.group(2) or m.group(1))
            table = None if m.group(3) else first
            if m.group(3):
                active.update(dict.fromkeys(range(first, final + 1), last))
        elif (a := _ACTIVE.match(line)) is not None and table is not None:
            active[table] = last = int(a.group(1))
            table = None
    return {name: active[tid] for name, tid in tables.stages if tid in active}


def read(ofctl: Callable[..., str], bridge: str) -> list[Count]:
    """A node's counts: ``ofctl(*args)`` runs ``ovs-ofctl`` and returns its output."""
    out = []
    for f in flow_filters():
        out += parse_flows(ofctl("-O", "OpenFlow15", "--no-names", "dump-flows", bridge, f))
    return out + parse_meters(ofctl("-O", "OpenFlow15", "meter-stats", bridge))


def totals(counts: Iterable[Count]) -> list[dict]:
    """Per reason: packets, bytes, kind, the stages it is counted in; most packets first
    (then by name), zero rows kept (the reasons this node's flows can count)."""
    by: dict[str, dict] = {}
    for c in counts:
        row = by.setdefault(c.reason, {"reason": c.reason, "kind": c.kind, "packets": 0,
                                       "bytes": 0, "where": []})
        row["packets"] += c.packets
        row["bytes"] += c.bytes
        if c.where not in row["where"]:
            row["where"].append(c.where)
    return sorted(by.values(), key=lambda r: (-r["packets"], r["reason"]))


def render(rows: list[dict], explain: bool = False) -> str:
    """The table ``vnet64-node stats`` prints; ``explain`` adds what each reason means."""
    if not rows:
        return "no flow here names a drop reason (is this a vnet64 node with its controller?)\n"
    width = max(len(r["reason"]) for r in rows)
    lines = [f"{'PACKETS':>12} {'BYTES':>14}  {'REASON':<{width}}  {'KIND':<8}  WHERE"]
    for r in rows:
        lines.append(f"{r['packets']:>12} {r['bytes']:>14}  {r['reason']:<{width}}  {r['kind']:<8}  "
                     f"{','.join(r['where'])}")
        if explain:
            lines.append(f"{'':>12} {'':>14}  {explanation(r['reason'])}")
    if explain and any("from_endpoint" in r["where"] for r in rows):    # a host with endpoints' stages
        lines += [f"{reason}: {why}" for reason, why in NOT_COUNTED_HERE.items()]
    return "\n".join(lines) + "\n"
