#!/usr/bin/env python3
"""Where the data path's time goes: ``perf`` on the whole machine while iperf3 runs
svc1 -> a-vm1 through vnet64 (issue 21: "the bottleneck that is left, profile, not guess").

Brings up ``topologies/two-tenants.yaml`` in a lab of its own (prefix ``v64y-``) with the
hosts' translator engine given (``--engine``, default both in turn: ``tayga`` and ``bpf``),
warms the pair and the direct path up, runs ``iperf3 -P 4`` for ``--seconds`` and records
``perf record -a -g`` for the middle of it. The summary (``--out``, default
``benchmarks/results/datapath_profile.txt``) gives, per engine: the throughput, the share
of samples per command (ovs-vswitchd of each node, TAYGA, iperf3, the kernel's softirq
threads), and for host1's ovs-vswitchd - the customer host, the busiest process - the
symbols with the most samples (self time, kernel and user), so what is left to gain is
named, not guessed. Needs ``perf`` (Debian: linux-perf) and root.

    flock /run/vnet64-bench.lock .venv/bin/python benchmarks/datapath_profile.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))
sys.path.insert(0, str(ROOT / "ovs-setup"))

from vnet64_lab.lab import Lab  # noqa: E402
from vnet64_lab.traffic import A6, TCP_PORT, client, ns_of, ovs_node, running_platform  # noqa: E402

PREFIX, RUN_DIR = "v64y-", "/run/vnet64-lab-y"
IPERF_PORT = 5201


def perf_lines(data: Path, *args: str, limit: str = "0.5") -> list[str]:
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                          "--percent-limit", limit, *args], capture_output=True, text=True,
                         timeout=300).stdout
    return [line for line in out.splitlines() if line.strip() and not line.startswith("#")]


def profile(engine: str, seconds: float, workdir: Path) -> dict:
    lab = Lab(PREFIX, RUN_DIR, translator_engine=engine)
    with running_platform(lab, ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        svc, vm = ns_of(plan, "svc1"), ns_of(plan, "a-vm1")
        for _ in range(3):       # the pair, then host2 learns the direct path
            client(plan, "tcp", A6, TCP_PORT, "warm")
        host1 = ovs_node(plan, "host1")
        server = subprocess.Popen(["ip", "netns", "exec", vm, "iperf3", "-s", "-1", "-p",
                                   str(IPERF_PORT)], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        cli = subprocess.Popen(["ip", "netns", "exec", svc, "iperf3", "-c", A6, "-p",
                                str(IPERF_PORT), "-t", str(seconds), "-P", "4", "-J"],
                               stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        data = workdir / f"perf-{engine}.data"
        subprocess.run(["perf", "record", "-a", "-g", "-o", str(data), "--", "sleep",
                        str(max(1.0, seconds - 4))], capture_output=True, timeout=seconds + 60)
        out, _ = cli.communicate(timeout=seconds + 60)
        server.wait(10)
        mbit = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
        pid = host1.pid("ovs-vswitchd")
        by_comm = perf_lines(data, "--sort", "comm,pid")
        # (perf report --pid leaves the process's kernel samples out: sort by pid instead)
        mine = f"{pid}:"

        def of_host1(*sort: str, limit: str = "0.5") -> list[str]:
            rows = perf_lines(data, "--comm", "ovs-vswitchd", "--sort", ",".join(("pid", *sort)),
                              "-g", "none", limit=limit)
            return [" ".join(line.split()[:1] + line.split()[2:]) for line in rows
                    if len(line.split()) > 2 and line.split()[1].startswith(mine)]
        host1_syms = of_host1("dso", "sym")
        host1_dsos = of_host1("dso", limit="0")
    return {"engine": engine, "mbit": mbit, "by_comm": by_comm, "host1": host1_syms,
            "host1_dsos": host1_dsos, "host1_pid": pid}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("tayga", "bpf"), action="append",
                        help="the hosts' translator engine (repeat; default: tayga, then bpf)")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--top", type=int, default=25, help="host1's symbols shown")
    parser.add_argument("--keep", metavar="DIR", help="keep perf's data files in DIR")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "datapath_profile.txt")
    args = parser.parse_args()
    if not shutil.which("perf"):
        parser.error("perf is not installed (Debian: apt-get install linux-perf)")
    Lab(PREFIX, RUN_DIR).down()
    started = datetime.now(UTC)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    lines = [f"perf record -a -g while iperf3 -P 4 runs svc1 -> a-vm1 (two-tenants lab, "
             f"direct path on), {started:%Y-%m-%d %H:%M} UTC, commit {commit}; "
             f"`benchmarks/datapath_profile.py`. Shared 2-core machine: shares, not times.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp
        for engine in args.engine or ["tayga", "bpf"]:
            r = profile(engine, args.seconds, Path(tmp))
            comms = Counter()
            for line in r["by_comm"]:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith("%"):
                    comms[" ".join(parts[1:])] += float(parts[0].rstrip("%"))
            lines += [f"== engine {engine}: {r['mbit']:.0f} Mbit/s", "",
                      "samples per command (% of all, 2 CPUs):"]
            lines += [f"  {pct:5.1f}%  {comm}" for comm, pct in comms.most_common(12)]
            lines += ["", f"host1's ovs-vswitchd (pid {r['host1_pid']}), self time by binary "
                          "(% of all samples; [kernel.kallsyms]: its system calls, "
                          "AF_PACKET, the veths, and the softirq work - the BPF program's too - "
                          "that ran while it was on the CPU):"]
            lines += ["  " + " ".join(line.split()) for line in r["host1_dsos"][:8]]
            lines += ["", "... and by symbol (% of all samples):"]
            lines += ["  " + " ".join(line.split()) for line in r["host1"][:args.top]]
            lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
