#!/usr/bin/env python3
"""NbView: the cost of one NB change to the controller's model, incremental vs full.

For each size N, a fresh embedded NB gets the default topology's platform, nodes
and service, one VNet (10.0.0.0/8) and N VMs, half on host1 and half on host2, each
subscribed (bulk: 1,000 per transaction). Then, for the whole-NB view (the central
controller), the appliance's view and host1's view (conditional monitoring):

- ``from_nb``: today's per-change cost before issue 17, ``model.from_nb`` over a full
  ovsdbapp replica (whole NB only);
- full: the view's first ``update()``, a build of the model from its replica;
- subscribe / unsubscribe / move: one ``update()`` after one such NB commit (a VM
  of host1 that had no subscription; a move goes to host2, the next round back), with
  the delta's size.

Times are the ``update()`` call alone (the IDL applies the rows on its own thread
before), medians of ``--repeat`` rounds. No timing in tests: this is the report.

    .venv/bin/python benchmarks/nbview_update.py                 # 1k, 10k
    .venv/bin/python benchmarks/nbview_update.py --sizes 100000

Prints a table and saves it to benchmarks/results/nbview_update.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))

from vnet64 import helptext, topology  # noqa: E402
from vnet64.controller import model as M  # noqa: E402
from vnet64.controller.nbview import NbView  # noqa: E402
from vnet64.nb import api as nbapi  # noqa: E402
from vnet64.nb.server import NbServer  # noqa: E402

BULK = 1000
SPARE = "spare"    # the VM the subscribe/unsubscribe/move rounds use


def _setup(api: nbapi.NbApi, n: int) -> None:
    base = topology.load(ROOT / "topologies" / "two-tenants.yaml")
    for region in base.regions:
        api.add_region(region)
    for node in base.nodes:
        api.add_node(node)
    api.set_platform(base.platform)
    for service in base.services:
        api.add_service(service)
    vnet = topology.VNet("bench", base.platform.region, 0x100, (ipaddress.IPv4Network("10.0.0.0/8"),),
                         (topology.Subnet("all", 1, ipaddress.IPv4Network("10.0.0.0/8")),))
    api.add_vnet(vnet)
    first = int(ipaddress.IPv4Address("10.1.0.10"))
    for chunk in range(0, n, BULK):
        names = [f"vm{i}" for i in range(chunk, min(n, chunk + BULK))]
        api.add_vms(topology.VM(name, "bench", "all", ipaddress.IPv4Address(first + i),
                                topology.default_mac(name), "host1" if i % 2 else "host2")
                    for i, name in zip(range(chunk, chunk + len(names)), names))
        api.subscribe_many((name, "analytics") for name in names)
    api.add_vm(SPARE, "bench", ipaddress.IPv4Address("10.255.0.10"), "host1")


def _timed_update(views: list[NbView], seqnos: list[int]) -> list[tuple[float, int | None]]:
    """Each view's update() once the change is in: the whole-NB view (first) gets every
    change; a node view may get nothing, or its rows within the same few milliseconds."""
    nbapi.wait_for(lambda: views[0].change_seqno() != seqnos[0], timeout=60)
    time.sleep(0.1)
    out = []
    for view in views:
        start = time.perf_counter()
        delta = view.update()
        out.append((time.perf_counter() - start, delta.size() if delta is not None else None))
    return out


def measure(n: int, repeat: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="vnet64-bench-") as tmp:
        server = NbServer(Path(tmp))
        server.start()
        try:
            api = nbapi.connect(server.remote, timeout=300)
            try:
                _setup(api, n)
                start = time.perf_counter()
                M.from_nb(api)
                from_nb = time.perf_counter() - start
                views = [NbView(server.remote).connect(300),
                         NbView(server.remote, node="appliance").connect(300),
                         NbView(server.remote, node="host1").connect(300)]
                rows = [{"n": n, "view": label, "from_nb": from_nb if i == 0 else None}
                        for i, label in enumerate(("whole NB", "appliance", "host1"))]
                for row, view in zip(rows, views):
                    start = time.perf_counter()
                    assert view.update() is None
                    row["full"] = time.perf_counter() - start
                    row["model"] = repr(view.model).split(", ", 2)[2].rstrip(")")
                results: dict[str, list] = {"subscribe": [], "unsubscribe": [], "move": []}
                for k in range(repeat):
                    there = "host2" if k % 2 == 0 else "host1"
                    for what, change in (("subscribe", lambda: api.subscribe(SPARE, "analytics")),
                                         ("unsubscribe", lambda: api.unsubscribe(SPARE, "analytics")),
                                         ("move", lambda: api.move_vm(SPARE, there))):
                        for v in views:          # nothing pending before the change
                            while not v.settled():
                                v.update()
                                time.sleep(0.01)
                        seqnos = [v.change_seqno() for v in views]
                        change()
                        results[what].append(_timed_update(views, seqnos))
                for i, row in enumerate(rows):
                    for what, rounds in results.items():
                        row[what] = statistics.median(r[i][0] for r in rounds)
                        row[what + "_size"] = rounds[-1][i][1]
                for v in views:
                    v.close()
                return rows
            finally:
                api.close()
        finally:
            server.stop()


def table(rows: list[dict]) -> str:
    def ms(s: float | None) -> str:
        return "-" if s is None else f"{s * 1000:,.2f}"

    def size(v: int | None) -> str:
        return "full" if v is None else str(v)

    lines = ["| subscriptions | view | model | model.from_nb (ms) | full build (ms) | "
             "subscribe (ms, objects) | unsubscribe (ms, objects) | move (ms, objects) |",
             "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['view']} | {r['model']} | {ms(r['from_nb'])} | {ms(r['full'])} | "
                     + " | ".join(f"{ms(r[w])} ({size(r[w + '_size'])})"
                                  for w in ("subscribe", "unsubscribe", "move")) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=helptext.paragraphs(__doc__, 0, 1))
    parser.add_argument("--sizes", default="1000,10000",
                        help="comma-separated subscription counts (default: 1000,10000)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per change (default 5)")
    args = parser.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows += measure(n, args.repeat)
        print(table(rows[-3:]), flush=True)
    out = table(rows)
    header = (f"NbView update cost, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{platform.node()}, Python {platform.python_version()}\n\n"
              "The time of one `NbView.update()` after one NB commit (median of "
              f"{args.repeat}), next to a full build of the same model; objects: the delta's size.\n\n")
    path = ROOT / "benchmarks" / "results" / "nbview_update.md"
    path.write_text(header + out + "\n")
    print(f"\nsaved to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
