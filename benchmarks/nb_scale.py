#!/usr/bin/env python3
"""NB scale: subscribe throughput into the NB and ovsdb-server memory, 1k/10k/100k.

For each size N, a fresh embedded NB gets the default topology's platform,
nodes and service, one VNet (10.0.0.0/8) and N VMs (bulk-loaded, 1,000 per
transaction; timed separately). Then N subscriptions are made the way the CLI
makes them: one ``subscribe`` transaction each, validated and assigned an
address by the codec. The baseline, measured in the same run against the same
server, is the cheapest possible write: one ``db_create`` of a bare row per
transaction (N of them, capped at 10,000). The ratio subscribe/baseline is what
to compare between machines and commits; absolute rates move with load. A
second pass, on another fresh NB, makes the same N subscriptions 100 per
transaction (``subscribe_many``), the path for bulk imports.

    .venv/bin/python benchmarks/nb_scale.py                  # 1k, 10k, 100k
    .venv/bin/python benchmarks/nb_scale.py --sizes 1000     # quick

Prints a table and saves it to benchmarks/results/nb_scale.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))

from vnet64 import helptext  # noqa: E402
from vnet64 import topology  # noqa: E402
from vnet64.nb import api as nbapi  # noqa: E402
from vnet64.nb.server import NbServer  # noqa: E402

BULK = 1000
BATCH = 100
BASELINE_CAP = 10_000


def _setup(api: nbapi.NbApi, n: int) -> float:
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
    start = time.perf_counter()
    first = int(ipaddress.IPv4Address("10.1.0.10"))
    for chunk in range(0, n, BULK):
        api.add_vms(topology.VM(f"vm{i}", "bench", "all", ipaddress.IPv4Address(first + i),
                                topology.default_mac(f"vm{i}"), "host1")
                    for i in range(chunk, min(n, chunk + BULK)))
    return time.perf_counter() - start


def _fresh_nb(n: int, body) -> dict:
    """Run ``body(api, server)`` against a fresh NB holding the base topology and N VMs."""
    with tempfile.TemporaryDirectory(prefix="vnet64-bench-") as tmp:
        server = NbServer(Path(tmp))
        server.start()
        try:
            rss_empty = server.memory_kib()
            api = nbapi.connect(server.remote, timeout=120)
            try:
                vm_load_s = _setup(api, n)
                result = {"vm_load_s": vm_load_s, "rss_empty": rss_empty, "rss_vms": server.memory_kib()}
                result.update(body(api, server))
                return result
            finally:
                api.close()
        finally:
            server.stop()


def measure(n: int) -> dict:
    def single(api, server) -> dict:
        start = time.perf_counter()
        for i in range(n):
            api.subscribe(f"vm{i}", "analytics")
        sub_s = time.perf_counter() - start
        rss_subs = server.memory_kib()
        assert api.count("Subscription") == n and api.count("Host_Mapping") == n
        m = min(n, BASELINE_CAP)
        start = time.perf_counter()
        for i in range(m):
            api.db_create("Service", name=f"baseline{i}").execute(check_error=True)
        return {"sub_s": sub_s, "sub_rate": n / sub_s, "rss_subs": rss_subs,
                "base_rate": m / (time.perf_counter() - start)}

    def batched(api, server) -> dict:
        start = time.perf_counter()
        for chunk in range(0, n, BATCH):
            api.subscribe_many((f"vm{i}", "analytics") for i in range(chunk, min(n, chunk + BATCH)))
        elapsed = time.perf_counter() - start
        assert api.count("Subscription") == n
        return {"batch_rate": n / elapsed}

    row = {"n": n, **_fresh_nb(n, single)}
    row["batch_rate"] = _fresh_nb(n, batched)["batch_rate"]
    row["ratio"] = row["sub_rate"] / row["base_rate"]
    return row


def table(rows: list[dict]) -> str:
    head = ("| subscriptions | VM bulk load (s) | subscribe total (s) | subscribes/s | "
            f"batched subscribes/s ({BATCH}/txn) | baseline inserts/s | ratio | "
            "ovsdb-server RSS empty / +VMs / +subs (MiB) |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['vm_load_s']:.1f} | {r['sub_s']:.1f} | {r['sub_rate']:,.0f} | "
            f"{r['batch_rate']:,.0f} | "
            f"{r['base_rate']:,.0f} | {r['ratio']:.2f} | "
            f"{r['rss_empty'] / 1024:.1f} / {r['rss_vms'] / 1024:.1f} / {r['rss_subs'] / 1024:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=helptext.paragraphs(__doc__, 0, 1))
    parser.add_argument("--sizes", default="1000,10000,100000",
                        help="comma-separated subscription counts (default 1000,10000,100000)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nb_scale.md"))
    args = parser.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"measuring {n:,} subscriptions ...", file=sys.stderr, flush=True)
        rows.append(measure(n))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    header = (f"# NB scale: subscribe throughput and ovsdb-server memory\n\n"
              f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
              f"({platform.machine()}, Python {platform.python_version()}) with "
              f"`{' '.join(sys.argv)}`.\n\n"
              "One subscribe = one OVSDB transaction (validation, address from the codec, host "
              "mapping). Batched = the same N subscriptions, "
              f"{BATCH} per transaction. Baseline = one bare-row insert per transaction on the same server "
              f"(capped at {BASELINE_CAP:,}). Ratio = subscribes/s ÷ baseline inserts/s.\n\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + text + "\n")
    print(f"saved {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
