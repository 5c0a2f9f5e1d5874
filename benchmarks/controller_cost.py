#!/usr/bin/env python3
"""The controller's own CPU per new pair, without a lab (no root, no OVS).

What the controller does for the first packet of a new pair, in one process:
``Logic.packet_in`` (subscription check, alias allocation, the pair's three flows and
the packet-out) and the encoding of those messages into the bytes sent to the switch
(``ofmsg.to_messages`` + ``ofmsg.serialize``). The model is ``benchmarks/pair_setup.py``'s
topology (40 endpoints x 160 VMs on host1). Each pass sets up ``--pairs`` distinct pairs
and then releases them; the first pass meets every address for the first time (cold
caches: what a burst of new pairs costs), later passes reuse the encodings (warm).

Baseline in the same run: the same messages encoded the plain os-ken way (``OFPFlowMod``
with ``OFPMatch(**fields)`` and fresh action objects; what ``ofmsg`` did before it
cached encodings), so the ratio shows what the encoder saves and survives a noisy
machine. CPU time is the process's (``time.process_time``), median over ``--runs``.

The in-lab cost adds os-ken's receive, event and send threads and the socket I/O
(``benchmarks/pair_setup.py`` measures the controller process's CPU per pair).

    .venv/bin/python benchmarks/controller_cost.py            # table in benchmarks/results/controller_cost.md
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))
sys.path.insert(0, str(ROOT / "ovs-setup"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))   # tests.support.reference: the plain os-ken encoder

from common import rng  # noqa: E402
from pair_setup import PAIR_SERVICE, topology_text  # noqa: E402
from tests.support.reference import os_ken_flow_mod  # noqa: E402
from vnet64 import helptext  # noqa: E402
from vnet64 import topology  # noqa: E402
from vnet64.controller import flows as F  # noqa: E402
from vnet64.controller import logic as L  # noqa: E402
from vnet64.controller import model as M  # noqa: E402
from vnet64.controller import ofmsg  # noqa: E402
from vnet64.ports import vif_port  # noqa: E402


OUT = ROOT / "benchmarks" / "results" / "controller_cost.md"


def plain_messages(dp, tables: F.TableMap, msgs: list) -> list:
    return [os_ken_flow_mod(dp, tables, m) if isinstance(m, F.Flow)
            else ofmsg.to_messages(dp, tables, [m])[0] for m in msgs]


class Bench:
    def __init__(self, n_ep: int, n_vm: int):
        topo = topology.loads(topology_text(n_ep, n_vm))
        # every VM bound on its host under the lab's port names, as the node agents would
        self.model = M.from_topology(topo, tunnel_token=0x5E1F,
                                     bindings=M.topology_bindings(topo, vif_port))
        host1 = self.model.node("host1")
        self.dpid = host1.datapath_id
        ports = {"geneve0": 1, "xlat0": 2}
        for i, vm in enumerate(v for v in topo.vms if v.host == "host1"):
            ports[vif_port("vm", vm.name)] = 10 + i
        self.logic = L.Logic(lambda: self.model)
        self.tables, _ = self.logic.switch_connected(self.dpid, ports)
        self.table_id = self.tables.id("pair")
        svc = next(s for s in topo.services if s.name == PAIR_SERVICE)
        eps = [self.model.endpoint_by_ipv6(e.ipv6) for e in svc.endpoints]
        vms = [v for v in self.model.vms if v.name.startswith("p")]
        self.frames = [frame(e.ipv6, v.ipv6) for e in eps for v in vms]
        self.dp = ofmsg.protocol()

    def release_all(self) -> None:
        sw = self.logic.switches[self.dpid]
        for index in list(sw.pairs):
            self.logic._release(sw, index)

    def one_pass(self, n: int, encode) -> tuple[float, int]:
        """CPU seconds for n new pairs (logic + encode), and the bytes written."""
        written = 0
        t = time.process_time()
        for data in self.frames[:n]:
            msgs = self.logic.packet_in(self.dpid, self.table_id, 1, data)
            written += sum(len(w) for w in ofmsg.serialize(self.dp, encode(msgs)))
        cpu = time.process_time() - t
        self.release_all()
        return cpu, written

    def logic_only(self, n: int) -> float:
        t = time.process_time()
        for data in self.frames[:n]:
            self.logic.packet_in(self.dpid, self.table_id, 1, data)
        cpu = time.process_time() - t
        self.release_all()
        return cpu


def frame(src, dst) -> bytes:
    """Ethernet + IPv6 + an ICMPv6 echo request header: what the pair table punts."""
    return (bytes(12) + b"\x86\xdd" + b"\x60\x00\x00\x00\x00\x08\x3a\x40" + src.packed + dst.packed
            + b"\x80\x00\x00\x00\x00\x01\x00\x01")


def main() -> int:
    parser = argparse.ArgumentParser(description=helptext.paragraphs(__doc__, 0, 1))
    parser.add_argument("--pairs", type=int, default=3000, help="new pairs per pass (at most 6400)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="300 pairs, 2 runs; saves nothing "
                        "unless --out is given")
    args = parser.parse_args()
    out = args.out
    if args.quick:
        args.pairs, args.runs = 300, 2
        out = args.out if "--out" in sys.argv else None
    b = Bench(40, 160)
    n = min(args.pairs, len(b.frames))
    ours = lambda msgs: ofmsg.to_messages(b.dp, b.tables, msgs)  # noqa: E731
    plain = lambda msgs: plain_messages(b.dp, b.tables, msgs)  # noqa: E731
    res: dict[str, list[float]] = {k: [] for k in ("cold", "warm", "plain", "logic")}
    sizes = set()
    for run in range(args.runs):
        # alternate: cold (fresh caches), warm (same addresses again), plain, logic alone
        ofmsg.clear_caches()
        cpu, size = b.one_pass(n, ours)
        res["cold"].append(cpu / n * 1e3)
        cpu, size2 = b.one_pass(n, ours)
        res["warm"].append(cpu / n * 1e3)
        cpu, size3 = b.one_pass(n, plain)
        res["plain"].append(cpu / n * 1e3)
        res["logic"].append(b.logic_only(n) / n * 1e3)
        sizes |= {size, size2, size3}
        print(f"run {run + 1}: cold {res['cold'][-1]:.3f}, warm {res['warm'][-1]:.3f}, "
              f"plain os-ken {res['plain'][-1]:.3f}, logic alone {res['logic'][-1]:.3f} ms/pair",
              flush=True)
    if len(sizes) != 1:
        print(f"the encodings differ in size: {sorted(sizes)} bytes", file=sys.stderr)
        return 1
    r = lambda k: rng(res[k], ".3f")  # noqa: E731
    ratio = lambda k: rng([a / p for a, p in zip(res[k], res["plain"])], ".2f")  # noqa: E731
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            check=False, capture_output=True, text=True).stdout.strip() or "?"
    lines = [
        "# The controller's CPU per new pair (no lab)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, Python {platform.python_version()}, "
        f"commit {commit}. {n} new pairs per pass (`pairbench`'s 40 endpoints x 160 VMs on host1), "
        f"{args.runs} runs; median (min-max) of CPU ms per pair. Every pass writes "
        f"{sizes.pop() / n:.0f} bytes per pair (three flow-mods and the packet-out).",
        "",
        "| what | ms per pair | / plain os-ken encoding (same run) |",
        "|---|---|---|",
        f"| role logic + encoding, cold caches (every address new) | {r('cold')} | {ratio('cold')} |",
        f"| role logic + encoding, warm (the same pairs again) | {r('warm')} | {ratio('warm')} |",
        f"| role logic + plain os-ken encoding (baseline) | {r('plain')} | 1 |",
        f"| role logic alone (`Logic.packet_in`) | {r('logic')} | {ratio('logic')} |",
        "",
        "In the lab the controller process also runs os-ken's receive, event and send "
        "threads: `benchmarks/results/pair_setup.md` has its CPU per pair at saturation.",
        "",
        "```",
        " ".join([".venv/bin/python", "benchmarks/controller_cost.py", *sys.argv[1:]]),
        "```",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text)
        print(f"saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
