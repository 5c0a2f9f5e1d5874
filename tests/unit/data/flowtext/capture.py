"""Re-capture this directory's dumps (tests/unit/test_flowtext.py) from a two-tenants lab:

    cd /work/main && PYTHONPATH=. flock /run/vnet64-bench.lock \
        .venv/bin/python tests/unit/data/flowtext/capture.py tests/unit/data/flowtext

(root; its own ``v64ft-`` lab, taken down when done). host1 gets a pair (svc1 -> a-vm1),
and a refused pair's deny flow is added by hand from ``deny_flow().ofctl()`` (two-tenants
subscribes every VM, so its controller refuses none)."""

import json
import sys
from ipaddress import IPv6Address
from pathlib import Path

from vnet64_lab.traffic import A6, LINE_PORT, LineSession, ovs_node, running_platform

from tests.lab.conftest import ROOT, new_lab
from vnet64.controller.pipeline import HOST_TABLES
from vnet64.controller.roles.customer import deny_flow

OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)
with running_platform(new_lab("ft"), ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
    s = LineSession(plan, A6, LINE_PORT)
    print(s.send("x"))
    meta = {"overlay_mtu": plan.settings.overlay_mtu, "control": lab.control,
            "nodes": {n.name: {"datapath": getattr(n, "datapath_id", None)} for n in plan.nodes}}
    for node in ("host1", "host2", "appliance"):
        o = ovs_node(plan, node)
        (OUT / f"{node}.dump").write_text(o.ofctl("-O", "OpenFlow15", "--no-names", "dump-flows", "br-int"))
        (OUT / f"{node}.show").write_text(o.ofctl("-O", "OpenFlow15", "show", "br-int"))
        (OUT / f"{node}.names.dump").write_text(o.ofctl("-O", "OpenFlow15", "--names", "dump-flows", "br-int"))
    d = deny_flow(IPv6Address("fd00:5e:1::99"), IPv6Address(A6))
    o = ovs_node(plan, "host1")
    o.ofctl("-O", "OpenFlow15", "add-flow", "br-int",
            d.ofctl().replace(f"table={d.table}", f"table={HOST_TABLES.id(d.table)}"))
    (OUT / "host1-deny.dump").write_text(
        o.ofctl("-O", "OpenFlow15", "--no-names", "dump-flows", "br-int", "table=20"))
    (OUT / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    s.close()
