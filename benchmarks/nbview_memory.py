#!/usr/bin/env python3
"""The appliance controller's memory per subscription: its NB replica, model and flows.

Issue 17's aim: on the appliance <= 2 KiB per subscription (``benchmarks/growth.py``
measures it in the lab: the controller's RSS growth / N). This measures the same
objects without a lab, for two versions of the controller code in one run: ``--before``
(a git revision, its ``controller/vnet64`` unpacked with ``git archive`` into a temporary
directory) and the working tree.

One embedded NB: the default topology, a VNet 10.0.0.0/8 and 20 more hosts; N
Host_Mapping rows (no VM or subscription rows: the appliance replicates neither). Per
version, fresh Python processes do what the appliance's controller does with them, in
two scenarios:

- ``dump``: the N rows are in the NB when the controller connects (a controller
  starting on a loaded platform): after the imports (the baseline),
  ``NbView(remote, node="appliance").connect()`` (the IDL's replica, from the monitor
  reply), ``update()`` (the model), and the appliance switch's connect
  (``Logic.switch_connected``, its messages encoded as ``app.py`` sends them:
  ``ofmsg.to_messages`` + ``serialize``, the bytes then dropped; the flows the logic
  keeps and the encoders' caches);
- ``growth``: the controller runs on the NB without host mappings (the baseline:
  connected, model built, switch connected), then another process writes the N rows
  in one transaction (as growth.py loads the lab's NB): the replica once they are in
  (one update notification), ``update()`` (the delta), ``Logic.nb_changed(delta)``
  and its messages encoded.

Each is run twice per version, in separate processes: once reading the process's RSS
after each step (``/proc/self/status`` VmRSS, after ``gc.collect()``: what growth.py's
KiB/sub is made of, freed-but-kept heap included), once with ``tracemalloc`` (the
Python objects alive after each step). Per subscription = (value after the step -
value at the baseline) / N.

    .venv/bin/python benchmarks/nbview_memory.py --before 974eb3b            # N = 100,000
    .venv/bin/python benchmarks/nbview_memory.py --before 974eb3b --n 10000

Prints a table and saves it to benchmarks/results/nbview_memory.md. No lab, no root.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import platform
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "nbview_memory.md"
CHUNK = 10_000
FAR_HOSTS = 20
STEPS = ("replica", "model", "flows")
SCENARIOS = ("dump", "growth")
MODES = ("RSS", "tracemalloc")


# -- the NB ---------------------------------------------------------------------------

def transact(sock_path: str, ops: list, timeout: float = 600) -> list:
    """One ``transact`` of ``ops`` on the NB database; its results."""
    req = json.dumps({"method": "transact", "params": ["VNet64_Northbound", *ops], "id": 1})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(req.encode())
        buf, dec = b"", json.JSONDecoder()
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise RuntimeError("the NB closed the connection")
            buf += chunk
            try:
                reply, _ = dec.raw_decode(buf.decode().lstrip())
            except ValueError:
                continue
            if reply.get("id") != 1:
                buf = b""
                continue
            errors = [r for r in reply.get("result") or [] if isinstance(r, dict) and "error" in r]
            if reply.get("error") or errors:
                raise RuntimeError(f"NB transaction failed: {reply.get('error') or errors[:3]}")
            return reply["result"]


def select(sock_path: str, table: str, columns: list[str]) -> list[dict]:
    return transact(sock_path, [{"op": "select", "table": table, "where": [], "columns": columns}])[0]["rows"]


def setup(sock_path: str) -> None:
    """The default topology, FAR_HOSTS more hosts and the VNet the mappings are in."""
    sys.path.insert(0, str(ROOT / "controller"))
    from vnet64 import topology
    from vnet64.nb import api as nbapi
    api = nbapi.connect(f"unix:{sock_path}", timeout=60)
    try:
        api.load_topology(topology.load(ROOT / "topologies" / "two-tenants.yaml"))
        region = next(iter(api.tables["Region"].rows.values()))
        api.add_vnet(topology.VNet("bench", region.name, 0x100, (ipaddress.IPv4Network("10.0.0.0/8"),),
                                   (topology.Subnet("all", 1, ipaddress.IPv4Network("10.0.0.0/8")),)))
    finally:
        api.close()
    transact(sock_path, [{"op": "insert", "table": "Node",
                          "row": {"name": f"far{k}", "role": "host", "underlay_ip": f"192.168.68.{10 + k}",
                                  "datapath_id": 0x6600 + k}} for k in range(1, FAR_HOSTS + 1)])


def insert_mappings(sock_path: str, n: int, chunk: int) -> None:
    """N host mappings in the VNet ``bench``, spread over the hosts, ``chunk`` per transaction."""
    sys.path.insert(0, str(ROOT / "controller"))
    from vnet64 import address
    region_id = select(sock_path, "Region", ["region_id"])[0]["region_id"]
    vnet = next(r for r in select(sock_path, "VNet", ["_uuid", "name"]) if r["name"] == "bench")["_uuid"]
    hosts = [r["_uuid"] for r in select(sock_path, "Node", ["_uuid", "role"]) if r["role"] == "host"]
    first = int(ipaddress.IPv4Address("10.1.0.10"))
    for start in range(0, n, chunk):
        ops = []
        for i in range(start, min(n, start + chunk)):
            ipv4 = ipaddress.IPv4Address(first + i)
            ipv6 = address.PlatformAddress(region_id, 0x100, 1, ipv4).ipv6
            ops.append({"op": "insert", "table": "Host_Mapping",
                        "row": {"ipv6": str(ipv6), "vnet": vnet, "ipv4": str(ipv4),
                                "host": hosts[i % len(hosts)]}})
        transact(sock_path, ops)


def count_mappings(sock_path: str) -> int:
    return len(select(sock_path, "Host_Mapping", ["_uuid"]))


def delete_mappings(sock_path: str) -> None:
    transact(sock_path, [{"op": "delete", "table": "Host_Mapping", "where": []}])


# -- one version's measurement (child) --------------------------------------------------

def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def child(tree: str, remote: str, n: int, scenario: str, mode: str) -> dict:
    sys.path.insert(0, str(Path(tree) / "controller"))
    import tracemalloc

    from vnet64.controller import logic as L
    from vnet64.controller import ofmsg
    from vnet64.controller.nbview import NbView
    from vnet64.ports import GENEVE_PORT

    assert Path(L.__file__).is_relative_to(tree), L.__file__
    traced = mode == "tracemalloc"
    dp = ofmsg.protocol()

    def reading() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] // 1024 if traced else rss_kib()

    def mappings(view: NbView) -> int:
        with view.lock:
            return len(view.idl.tables["Host_Mapping"].rows) or len(getattr(view.idl, "host_mappings", ()))

    def send(tables, msgs) -> None:     # as app.py's _send, the bytes dropped
        for m in msgs:
            for _write in ofmsg.serialize(dp, ofmsg.to_messages(dp, tables, [m])):
                pass

    if traced:
        tracemalloc.start(1)
    out: dict = {}
    started = time.monotonic()
    if scenario == "dump":
        out["base"] = reading()
        view = NbView(remote, node="appliance").connect(600)
        out["replica"] = reading()
        assert view.update() is None
        out["model"] = reading()
        logic = L.Logic(lambda: view.model, node="appliance")
        node = view.model.node("appliance")
        tables, msgs = logic.switch_connected(node.datapath_id, {GENEVE_PORT: 1})
        send(tables, msgs)
        del msgs
        out["flows"] = reading()
    else:
        view = NbView(remote, node="appliance").connect(600)
        assert view.update() is None and mappings(view) == 0
        logic = L.Logic(lambda: view.model, node="appliance")
        node = view.model.node("appliance")
        tables, msgs = logic.switch_connected(node.datapath_id, {GENEVE_PORT: 1})
        send(tables, msgs)
        del msgs
        out["base"] = reading()
        started = time.monotonic()
        subprocess.run([sys.executable, __file__, "--load", remote[len("unix:"):], str(n)], check=True)
        deadline = time.monotonic() + 600
        while mappings(view) < n:
            assert time.monotonic() < deadline, "the mappings never arrived"
            time.sleep(0.05)
        out["replica"] = reading()
        delta = view.update()
        assert delta is not None and len(delta.routes) == n, delta
        out["model"] = reading()
        for msgs in logic.nb_changed(delta).values():
            send(tables, msgs)
        del msgs, delta
        out["flows"] = reading()
    out["seconds"] = time.monotonic() - started
    out["routes"] = sum(1 for _ in view.model.iter_routes())
    out["flow_count"] = len(logic.switches[node.datapath_id].proactive)
    if traced:
        def short(path: str) -> str:
            for mark in ("site-packages/", "controller/vnet64/"):
                if mark in path:
                    return path[path.index(mark) + (len(mark) if mark[0] == "s" else 0):]
            return path
        top = tracemalloc.take_snapshot().statistics("filename")[:8]
        out["top"] = [(short(s.traceback[0].filename), s.size // 1024) for s in top]
    view.close()
    return out


# -- the report --------------------------------------------------------------------------

def kib_per(out: dict, step: str, n: int) -> float:
    return (out[step] - out["base"]) / n


def table(results: dict, n: int) -> str:
    lines = ["| scenario | version | reading | replica (KiB/sub) | + model (KiB/sub) | + flows (KiB/sub) "
             "| total (MiB) | seconds |", "|---|---|---|---|---|---|---|---|"]
    for (scenario, label, mode), out in results.items():
        cells = [f"{kib_per(out, s, n):.2f}" for s in STEPS]
        lines.append(f"| {scenario} | {label} | {mode} | " + " | ".join(cells)
                     + f" | {(out['flows'] - out['base']) / 1024:,.0f} | {out['seconds']:.1f} |")
    return "\n".join(lines)


def unpack(rev: str, into: Path) -> Path:
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "controller/vnet64"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="host mappings (default 100,000)")
    parser.add_argument("--before", help="git revision to compare the working tree with")
    parser.add_argument("--child", nargs=4, metavar=("TREE", "REMOTE", "SCENARIO", "MODE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=2, metavar=("SOCK", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        insert_mappings(args.load[0], int(args.load[1]), chunk=int(args.load[1]))
        return 0
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.n, args.child[2], args.child[3])))
        return 0
    if not args.before:
        parser.error("--before REV is required")

    sys.path.insert(0, str(ROOT / "controller"))
    from vnet64.nb.server import NbServer

    rev, head = git("rev-parse", "--short", args.before), git("rev-parse", "--short", "HEAD")
    dirty = [line[3:] for line in git("status", "--porcelain", "controller/vnet64").splitlines()]
    versions = ((f"before ({rev})", None), (f"after ({head}{' + uncommitted' if dirty else ''})", ROOT))
    results: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory(prefix="vnet64-nbmem-") as tmp:
        trees = {label: tree or unpack(rev, Path(tmp) / "before") for label, tree in versions}
        server = NbServer(Path(tmp) / "nb")
        server.start()
        sock = server.remote[len("unix:"):]
        try:
            setup(sock)
            for scenario in SCENARIOS:
                for label, tree in trees.items():
                    for mode in MODES:
                        delete_mappings(sock)
                        if scenario == "dump":
                            t0 = time.monotonic()
                            insert_mappings(sock, args.n, CHUNK)
                            print(f"NB loaded with {args.n:,} host mappings in {time.monotonic() - t0:.1f}s",
                                  flush=True)
                        got = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--child",
                                              str(tree), server.remote, scenario, mode.lower()],
                                             check=True, capture_output=True, text=True)
                        out = results[scenario, label, mode] = json.loads(got.stdout.strip().splitlines()[-1])
                        assert out["routes"] == args.n == count_mappings(sock), out
                        print(f"{scenario}, {label}, {mode}: " + ", ".join(
                            f"{s} {kib_per(out, s, args.n):.2f}" for s in STEPS)
                              + f" KiB/sub ({out['flow_count']:,} flows, {out['seconds']:.1f}s)", flush=True)
        finally:
            server.stop()

    text = table(results, args.n)
    print(text)
    tops = [f"- {scenario}, {label}: " + ", ".join(f"{f} {kib / args.n:.2f}" for f, kib in out["top"])
            for (scenario, label, mode), out in results.items() if mode == "tracemalloc"]
    header = (f"# The appliance controller's memory per subscription\n\n"
              f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, Python "
              f"{platform.python_version()}, {os.cpu_count()} CPUs (shared). {args.n:,} Host_Mapping "
              "rows; per subscription = growth over the scenario's baseline / N, in KiB, after each "
              "step (cumulative): the IDL replica, + the model (`update()`), + the appliance "
              "switch's flows, encoded as the app sends them. *dump*: the rows are in the NB when "
              "the controller connects (baseline: imports done); *growth*: they arrive in one "
              "NB transaction while it runs (baseline: connected, no mappings), as in "
              "`benchmarks/growth.py`. RSS: the process's VmRSS (what growth.py's KiB/sub "
              "measures in the lab); tracemalloc: live Python allocations (a separate process). "
              "Seconds: from connect (dump) or the load (growth) to the last step, RSS runs without "
              "tracemalloc's slowdown."
              + (f" Uncommitted in the working tree (\"after\"): {', '.join(dirty)}." if dirty else "")
              + "\n\n")
    footer = ("\n\nLargest live allocations by file after the last step (tracemalloc, KiB/sub):\n\n"
              + "\n".join(tops)
              + f"\n\n## How\n\n```\n.venv/bin/python benchmarks/nbview_memory.py --before {args.before}"
              + (f" --n {args.n}" if args.n != 100_000 else "") + "\n```\n")
    OUT.write_text(header + text + footer)
    print(f"saved to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
