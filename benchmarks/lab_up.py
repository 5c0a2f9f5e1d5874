#!/usr/bin/env python3
"""Lab bring-up and tear-down time, per shipped topology.

For every topology in ``topologies/`` (or those given), ``--runs`` times: a
clean ``up`` (timed from the call to a lab whose every OVS has learned its
underlay route), then ``down`` (timed until no namespace, process or run dir is
left). Uses its own namespace prefix (``v64k-``) and run directory, so a lab
that is up under the default prefix is not touched. Needs root.

    .venv/bin/python benchmarks/lab_up.py                 # 5 runs per topology
    .venv/bin/python benchmarks/lab_up.py --runs 2 topologies/four-hosts.yaml

Prints a table (median, min, max; plus the median of each step of ``up``) and
saves it to benchmarks/results/lab_up.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))
sys.path.insert(0, str(ROOT / "ovs-setup"))

from vnet64 import helptext  # noqa: E402
from vnet64_lab import Lab
from vnet64_lab import settings as lab_settings

PREFIX = "v64k-"
RUN_DIR = "/run/vnet64-lab-bench"


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def measure(path: Path, runs: int) -> dict:
    lab = Lab(PREFIX, RUN_DIR)
    lab.down()
    ups, downs, steps = [], [], {}
    for _ in range(runs):
        t0 = time.monotonic()
        result = lab.up(path)
        ups.append(time.monotonic() - t0)
        for step, seconds in result["steps"].items():
            steps.setdefault(step, []).append(seconds)
        t0 = time.monotonic()
        lab.down()
        downs.append(time.monotonic() - t0)
        assert not lab.namespaces() and not lab.run_dir.exists()
    topo, _ = lab_settings.load(path)
    return {"topology": path.stem, "nodes": len(topo.nodes), "vms": len(topo.vms),
            "endpoints": len(topo.endpoints), "up": ups, "down": downs,
            "steps": steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=helptext.paragraphs(__doc__, 0, 1))
    parser.add_argument("topologies", nargs="*", type=Path,
                        default=sorted((ROOT / "topologies").glob("*.yaml")))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lab_up.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("lab_up.py needs root (network namespaces, OVS)", file=sys.stderr)
        return 2

    rows = [measure(p, args.runs) for p in args.topologies]
    step_names = list(rows[0]["steps"]) if rows else []
    lines = [
        "# Lab bring-up / tear-down",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs, kernel {platform.release()}, {args.runs} runs per topology, "
        f"{Lab(PREFIX, RUN_DIR).wanted_control} control (`VNET64_LAB_CONTROL`: a controller "
        "per node, or one central). "
        "Seconds: median (min-max). `up` is from the call until every node's OVS has "
        "learned its underlay route; `down` until no namespace, process or run dir is left.",
        "",
        "| topology | nodes | VMs | endpoints | up (s) | down (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['topology']} | {r['nodes']} | {r['vms']} | {r['endpoints']} | "
                     f"{_fmt(r['up'])} | {_fmt(r['down'])} |")
    lines += ["", "Median seconds per step of `up`:", "",
              "| topology | " + " | ".join(step_names) + " |",
              "|---|" + "---|" * len(step_names)]
    for r in rows:
        lines.append(f"| {r['topology']} | " + " | ".join(
            f"{statistics.median(r['steps'][s]):.2f}" for s in step_names) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(f"saved to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
