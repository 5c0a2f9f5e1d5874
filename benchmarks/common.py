"""What every benchmark script shares: the run log, process CPU and memory readings,
the wait for an idle controller, the report's statistics and trailer, the run header
and the SIGTERM handler.

Imported by the scripts in this directory (each puts ``benchmarks/``, ``controller/``
and ``ovs-setup/`` on ``sys.path`` first). One process runs one benchmark, so ``LOG``
holds that benchmark's run log, whichever module's code wrote the line.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vnet64_lab.ovs import OvsNode

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------
# Run log

LOG: list[str] = []


def note(msg: str) -> None:
    """Print a time-stamped line and keep it for the report's run log."""
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    LOG.append(line)


def start_run(args: argparse.Namespace, script: str) -> int | None:
    """Record what the report's header needs (command line, load, commit) in ``args``;
    2 (with a message) when not root, as every lab benchmark needs root."""
    args.argv = [".venv/bin/python", *sys.argv]
    args.load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    args.commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                 check=False, capture_output=True, text=True).stdout.strip() or "?"
    if os.geteuid() != 0:
        print(f"{script} needs root (network namespaces, OVS)", file=sys.stderr)
        return 2
    return None


def report_end(argv: list[str], notes: list[str] = (), heading: str = "Notes") -> list[str]:
    """The last sections of every benchmark's report: its notes (if any) under ``heading``,
    then its command line and this run's log."""
    out = ["", f"## {heading}", "", *notes] if notes else []
    return out + ["", "## How", "", "```", " ".join(argv), "```", "", "Run log:", "", "```", *LOG, "```"]


def interrupted(signum, frame) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so the benchmark's cleanup runs."""
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------------------
# Processes: CPU, memory, flows


def cpu_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])      # utime + stime (clock ticks)


class CpuMeter:
    """% of one core used by named processes between start() and stop()."""

    HZ = os.sysconf("SC_CLK_TCK")

    def __init__(self, procs: dict[str, list[int]]):
        self.procs = procs

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = {k: sum(cpu_ticks(p) for p in pids) for k, pids in self.procs.items()}
        self.self0 = time.process_time()

    def stop(self) -> dict[str, float]:
        self.dt = dt = time.monotonic() - self.t0
        out = {k: 100.0 * (sum(cpu_ticks(p) for p in pids) - self.c0[k]) / self.HZ / dt
               for k, pids in self.procs.items()}
        out["generator"] = 100.0 * (time.process_time() - self.self0) / dt
        self.last = out
        return out


def thread_ticks(pid: int) -> dict[str, int]:
    """CPU ticks per thread kind of a process (thread names without their digits)."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = re.sub(r"\d+$", "", stat[stat.index("(") + 1:stat.rindex(")")])
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def rss_kib(pid: int | None) -> int:
    """Resident memory of a process (VmRSS, KiB); 0 if it is gone."""
    if not pid:
        return 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def seconds_until_idle(pids: int | list[int], timeout: float) -> float | None:
    """Seconds until process ``pids`` (one, or several together) use < 10 % of a core for
    1 s, twice in a row (the two quiet seconds not counted); None if still busy after
    ``timeout``."""
    pids = [pids] if isinstance(pids, int) else list(pids)
    t0 = time.monotonic()
    quiet = 0
    while quiet < 2:
        c0 = sum(cpu_ticks(p) for p in pids)
        time.sleep(1.0)
        busy = 100.0 * (sum(cpu_ticks(p) for p in pids) - c0) / CpuMeter.HZ
        quiet = quiet + 1 if busy < 10 else 0
        if time.monotonic() - t0 > timeout:
            return None
    return time.monotonic() - t0 - 2.0


# ---------------------------------------------------------------------------
# The lab's controllers: one per node (the lab's default) or one central one


def controller_pids(lab) -> list[int]:
    """The pid of every controller of the lab that is up (each node's, or the central
    one): a benchmark's "controller" is all of them together."""
    pids = {c.name: c.pid() for c in lab.controllers()}
    missing = [name for name, pid in pids.items() if not pid]
    if missing:
        raise RuntimeError(f"the lab's controller is not running: {', '.join(missing)}")
    return list(pids.values())


def control_text(control: str) -> str:
    """A report's words for the lab's control mode (``Lab.control``)."""
    if control == "node":
        return ("a controller per node (`--vnet64-node`, next to each node's agent: the "
                "lab's default; \"controller\" figures are all of them together)")
    return "one central controller for every node (`VNET64_LAB_CONTROL=central`)"


def controller_logs_text(lab, since: dict | None = None) -> str:
    """Every controller's log (what each wrote after ``since``: ``{path: size}``)."""
    out = []
    for c in lab.controllers():
        with contextlib.suppress(OSError):
            out.append(c.log.read_bytes()[(since or {}).get(c.log, 0):].decode(errors="replace"))
    return "\n".join(out)


def controller_log_sizes(lab) -> dict:
    return {c.log: c.log.stat().st_size if c.log.exists() else 0 for c in lab.controllers()}


def log_errors(text: str, keep: int = 20) -> list[str]:
    """The ERROR and Traceback lines of a controller log (the first ``keep``), so that a
    report - and a CI failure - says what went wrong, not only how often. A Traceback line
    carries, after " -> ", the exception it ended with and the frame that raised it."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if " ERROR " in line:
            out.append(line)
        elif "Traceback" in line:
            frames = []
            for j in range(i + 1, len(lines)):
                if lines[j].startswith("  File "):
                    frames.append(lines[j].strip())
                elif lines[j] and not lines[j].startswith(" "):
                    out.append(f"{line} -> {lines[j]} (at {frames[-1] if frames else '?'})")
                    break
            else:
                out.append(line)
    return out[:keep]


def print_log_tail(path: Path, lines: int = 40) -> None:
    """The ERROR lines and the last ``lines`` lines of a log, on stderr: what a run that
    failed leaves behind before its lab (and the log with it) is taken down."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        print(f"(no {path}: {exc})", file=sys.stderr)
        return
    errors = log_errors(text)
    print(f"--- {path}: {len(errors)} error line(s), then its last {lines} lines", file=sys.stderr)
    print("\n".join(errors + ["..."] + text.splitlines()[-lines:]), file=sys.stderr)


def switch_engine(lab, node: str, engine: str | None, timeout: float = 30) -> str | None:
    """Restart ``node``'s agent with translator ``engine`` (None: the lab's) and wait until
    the BPF translator is on its ``ovs0`` (engine ``bpf``) or off; the attached object's
    name (None: off)."""
    from vnet64.node.translator import bpf_attached
    want = (engine or lab.translator_engine) == "bpf"
    ns = lab.plan().translator(node).ns
    lab.restart_agent(node, wait=True, translator_engine=engine)
    deadline = time.monotonic() + timeout
    named = engine or lab.translator_engine
    while (bpf_attached(ns) is not None) != want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node}'s agent restarted with engine {named}: "
                               f"the BPF translator is {'not ' if want else 'still '}attached "
                               f"to ovs0 after {timeout:g} s")
        time.sleep(0.1)
    return bpf_attached(ns)


def flow_count(node: OvsNode, table: str | None = None, cookie: str | None = None) -> int:
    """Flows of br-int (in ``table``; with ``cookie`` "VALUE/MASK", only those)."""
    spec = ",".join(([f"table={table}"] if table else []) + ([f"cookie={cookie}"] if cookie else []))
    args = ["-O", "OpenFlow15", "dump-aggregate", "br-int"] + ([spec] if spec else [])
    out = node.ofctl(*args)
    m = re.search(r"flow_count=(\d+)", out)
    return int(m.group(1)) if m else -1


def summarise_profile(raw: str) -> str:
    """Inclusive and self share of the samples per function (py-spy's collapsed stacks)."""
    total = 0
    incl: dict[str, int] = {}
    self_: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        frames = [f for f in stack.split(";") if f]
        total += n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
        if frames:
            self_[frames[-1]] = self_.get(frames[-1], 0) + n
    if not total:
        return "no samples\n"
    lines = [f"samples: {total} (threads that were not idle)", "", "inclusive %  function"]
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:50]:
        lines.append(f"{100 * n / total:10.1f}  {f}")
    lines += ["", "self %  function"]
    for f, n in sorted(self_.items(), key=lambda kv: -kv[1])[:30]:
        lines.append(f"{100 * n / total:7.1f}  {f}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Statistics for the reports


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def med(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def rng(values, fmt: str = ".0f", collapse: bool = False) -> str:
    """``median (min-max)`` of the values that are numbers (just the median when they are
    all equal and ``collapse``); n/a if none."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if collapse and min(values) == max(values):
        return f"{values[0]:{fmt}}"
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def rng_with(default_fmt: str, collapse: bool = False):
    """``rng`` with another default format (a report's usual precision)."""
    def rng_(values, fmt: str = default_fmt) -> str:
        return rng(values, fmt, collapse)
    return rng_


def yes_no(ok: bool) -> str:
    return "**yes**" if ok else "**no**"
