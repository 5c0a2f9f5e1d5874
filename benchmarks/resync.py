#!/usr/bin/env python3
"""Restart: controller resync time vs number of active pairs (100 / 1k / 10k).

Brings up its own lab (prefix ``v64r-``, run dir ``/run/vnet64-lab-r``) on the
topology ``benchmarks/pair_setup.py`` generates: appliance, host1 with
``--vms`` VMs (half in each of two VNets with the same addresses) + ``tv``,
host2 with ``--endpoints`` endpoints of ``pairbench`` + ``tc`` (service
``tcpbench``), so endpoints x VMs distinct pairs exist, each made of real
namespaces and ports. With a controller per node (the default) each controller
connects to its br-int's management socket itself; in central control every
br-int's controller ``max_backoff`` is set to 1 s (as ``tests/lab/test_survival.py``
does; OVS's default backs reconnects off up to 8 s, which would be measured instead
of the controller).

For each size N (a baseline with no ``pairbench`` pair first, then each of
``--sizes``), in each of ``--runs`` runs:

1. every ``pairbench`` pair is removed (subscriptions suspended and
   re-activated, megaflows flushed, as pair_setup.py does), then N new pairs are
   set up through the real controller: the first packet of each is an ICMPv6
   echo from a raw socket in the endpoint's namespace (closed loop, 128 in
   flight), answered by the VM; pairs that got no answer are tried again;
2. a long-lived TCP connection ``tc`` -> ``tv`` (one more pair, set up by its
   SYN through the controller) exchanges a line; the pair flows of host1 are
   recorded (cookie = alias index, per (service, VM) pair);
3. a stale vnet64 pair flow (a pair the NB does not allow) is planted, then the
   controller is killed with SIGKILL (every node's, when the lab runs a controller
   per node - its default; ``VNET64_LAB_CONTROL=central``: the one central
   controller); a line goes over the connection with no controller;
4. ``Lab.restart_controller()`` starts it again exactly as the lab does, and
   the clock runs from that call until every switch's ``resynced`` line is in
   the controllers' logs (``app.py``: written once the switch's whole flow dump
   has been read and ``logic.resynced`` has adopted the pairs and computed the
   sweep). That is the resync time. The log's own timestamps split it:
   process start -> NB model built -> switches connected -> resynced;
5. checks: the connection still answers on the same Platform_IP port; host1's
   pair flows are exactly those recorded (same cookie per pair, 4 flows per
   cookie with the direct path: adopted, not re-allocated, not duplicated); the stale flow is gone
   (swept); then ``--new-pairs`` new pairs are set up and must get aliases no
   existing pair has (no duplicate allocation); the controller log has no
   ERROR/Traceback.

The resync time of the baseline (no pair besides the TCP one) is measured in
the same run; ratios against it are given. Needs root.

    .venv/bin/python benchmarks/resync.py                      # 100, 1k, 10k; 3 runs
    .venv/bin/python benchmarks/resync.py --quick              # CI smoke: 20 and 100 pairs, 1 run
    .venv/bin/python benchmarks/resync.py --profile /tmp/r.txt # + py-spy of the restarted controller

Without ``--quick`` the results go to benchmarks/results/resync.md and
resync.json (``--out``, ``--json``); with ``--quick`` nothing is saved unless
``--out``/``--json`` are given. The aim (issue 6: 10k active pairs resynced in
<= 2 s with no connection lost) is reported as met or not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))
sys.path.insert(0, str(ROOT / "ovs-setup"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import (CpuMeter, report_end, interrupted, log_errors, med, note,  # noqa: E402
                    control_text, controller_log_sizes, controller_logs_text, controller_pids,
                    print_log_tail, rng_with, start_run, summarise_profile)
import pair_setup  # noqa: E402
from pair_setup import Bench, PairPool, Pinger, closed_loop, open_loop  # noqa: E402
from vnet64 import helptext  # noqa: E402
from vnet64.controller.pipeline import HOST_TABLES, cookie  # noqa: E402
from vnet64_lab import sh  # noqa: E402
from vnet64_lab.traffic import LINE_PORT, LineSession, start_echo_server  # noqa: E402

PREFIX, RUN_DIR = "v64r-", "/run/vnet64-lab-r"
KILLED = {"host1": "host1's, or the central one", "all": "every node's at once"}
AIM_PAIRS, AIM_SECONDS = 10_000, 2.0
PAIR_MASK = 0xFFFF000000000000
PAIR_COOKIE = cookie("host", "pair", 0)
STALE_INDEX = 0x1F000                       # far above what the allocator hands out here
# a pair's flows on host1: pair, SNAT, return rule, and the direct path's (its endpoint is
# on host2)
FLOWS_PER_PAIR = 4
STRANGER = "fd00:5e:1::99"                  # no endpoint has this address
_PAIR_FLOW = re.compile(r"cookie=(0x[0-9a-f]+).*ipv6_src=([0-9a-f:]+),ipv6_dst=([0-9a-f:]+)"
                        r".*nat\(src=([0-9a-f:.]+)\)")
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
rng = rng_with(".2f")


def log_time(line: str) -> float | None:
    m = _LOG_TIME.match(line)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


class Resync(Bench):
    """The pair_setup lab, with kill -9 / restart of its controller."""

    def __init__(self, args: argparse.Namespace):
        pair_setup.PREFIX, pair_setup.RUN_DIR = args.prefix, args.run_dir
        super().__init__(args, args.endpoints, args.vms)
        self.session: LineSession | None = None
        self.echo = None
        self.seen_port = None
        self.lines = 0

    # -- lab ----------------------------------------------------------------

    def up(self) -> None:
        super().up()
        self.lab.quicken_reconnects(self.plan)   # central: within ~1 s (see the module doc)
        self.echo = start_echo_server(self.plan, "tv")
        eps = [e for s in self.topo.services if s.name == pair_setup.PAIR_SERVICE
               for e in s.endpoints]
        self.pinger = Pinger([self.ns_of[("endpoint", e.name)] for e in eps])
        self.pinger.resolve_gateway()
        time.sleep(0.5)
        vm6 = [str(self.topo.platform_address(v.name).ipv6) for v in self.topo.vms if v.name != "tv"]
        self.pool = PairPool(len(eps), vm6)
        self.tv6 = str(self.topo.platform_address("tv").ipv6)
        self.tc6 = next(str(e.ipv6) for s in self.topo.services for e in s.endpoints
                        if e.name == "tc")
        self.ep6 = {i: str(e.ipv6) for i, e in enumerate(eps)}

    def down(self) -> None:
        self.close_session()
        if self.echo is not None and self.echo.poll() is None:
            self.echo.terminate()          # our own child, by its pid
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.echo.wait(5)
        super().down()

    def controller_log_tails(self) -> None:
        """Print the end of every controller's log (what a failed run was doing)."""
        try:
            ctls = self.lab.controllers()
        except Exception:   # no lab up
            return
        for ctl in ctls:
            print_log_tail(ctl.log)

    # -- pairs ----------------------------------------------------------------

    def pair_flows(self) -> dict[tuple[str, str], tuple[int, str]]:
        out = {}
        dump = self.nodes["host1"].ofctl("-O", "OpenFlow13", "dump-flows", "br-int",
                                         f"table={HOST_TABLES.id('pair')}")
        for line in dump.splitlines():
            m = _PAIR_FLOW.search(line)
            if m:
                out[(m.group(2), m.group(3))] = (int(m.group(1), 16), m.group(4))
        return out

    def pair_cookies(self) -> list[int]:
        """The cookie of every pair-feature flow of host1 (one entry per flow)."""
        dump = self.nodes["host1"].ofctl("-O", "OpenFlow13", "dump-flows", "br-int",
                                         f"cookie={PAIR_COOKIE:#x}/{PAIR_MASK:#x}")
        return [int(c, 16) for c in re.findall(r"cookie=(0x[0-9a-f]+)", dump)]

    def establish(self, pairs: list[tuple[int, str]]) -> dict:
        """Set ``pairs`` up through the controller; the ones not answered are tried again."""
        t0 = time.monotonic()
        todo = list(pairs)
        answered = 0
        for attempt in range(4):
            if not todo:
                break
            ids = self.pool.ids(len(todo))
            if attempt == 0:
                r = closed_loop(self.pinger, todo, ids, self.args.window, 3600, timeout=2.0)
                answered += r["answered"]
                # closed_loop gives no per-pair result: ask the switch which are in
                have = set(self.pair_flows())
                todo = [p for p in todo if (self.ep6[p[0]], p[1]) not in have]
            else:
                r = open_loop(self.pinger, todo, ids, 200, seq=1, timeout=2.0)
                answered += r["answered"]
                todo = [todo[i] for i in sorted(set(range(len(todo))) - set(r["ok"]))]
        if todo:
            raise RuntimeError(f"{len(todo)} of {len(pairs)} pairs never answered; see "
                               f"{self.lab.controller_log('host1')}")
        return {"seconds": time.monotonic() - t0, "rate": len(pairs) / (time.monotonic() - t0)}

    # -- the long-lived connection ---------------------------------------------

    def open_session(self) -> None:
        self.session = LineSession(self.plan, self.tv6, LINE_PORT, source="tc")
        first = self.exchange("hello", check_port=False)
        self.seen_port = first

    def exchange(self, tag: str, check_port: bool = True) -> str:
        self.lines += 1
        text = f"{tag}-{self.lines}"
        out = self.session.send(text)
        if "error" in out:
            raise RuntimeError(f"the long-lived connection failed: {out}")
        name, seen, payload = out["reply"].split(" ", 2)
        addr, port = seen.rsplit(":", 1)
        if (name, payload) != ("tv", text):
            raise RuntimeError(f"the long-lived connection got {out}")
        if check_port and port != self.seen_port:
            raise RuntimeError(f"the long-lived connection's Platform_IP port changed: {port} "
                               f"(was {self.seen_port})")
        return port

    def close_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    # -- kill -9 and restart ------------------------------------------------------

    def victims(self) -> list[str] | None:
        """The nodes whose controller is killed and restarted: host1's (where the pairs
        are; in central control that is the one controller), or None: every controller."""
        return ["host1"] if self.args.kill == "host1" else None

    def kill_9(self) -> None:
        """SIGKILL the controller(s) ``--kill`` names (by their pidfiles)."""
        victims = self.victims()
        pids = controller_pids(self.lab) if victims is None else \
            [self.lab.controller_pid(n) for n in victims]
        for pid in pids:
            if b"vnet64.controller" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                raise RuntimeError(f"pid {pid} is not the controller")
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):    # our child (lab.up/restart): reap it
                os.waitpid(pid, 0)
            sh.wait_for(lambda pid=pid: not sh.proc_alive(pid), 5, "the controller to die")

    def restart_and_time(self, profile: Path | None) -> dict:
        sizes = controller_log_sizes(self.lab)
        victims = self.victims()
        # the switches whose controller starts again: all of them if it is the central one
        nodes = list(self.nodes) if victims is None or self.lab.control == "central" else victims
        spy = None
        t_wall0 = time.time()
        t0 = time.monotonic()
        state = self.lab.restart_controller(None if victims is None else victims[0])
        self._find_controllers(state)
        if profile:
            spy = self._spy()

        def all_resynced() -> str | None:
            text = controller_logs_text(self.lab, sizes)
            ok = all(re.search(rf"\[{n} [0-9a-f]+\] resynced", text) for n in nodes)
            return text if ok else None
        text = sh.wait_for(all_resynced, 120, "every switch to resync", interval=0.005)
        t_resynced = time.monotonic() - t0
        cpu = CpuMeter({"controller": list(self.controller_pids)})
        cpu.start()
        idle_after = self.settle("after the restart")
        r = {"resync_s": t_resynced, "idle_after_s": idle_after}
        # the controllers' own timestamps: start -> NB model -> connected -> resynced (with a
        # controller per node: the first start, the last model, the first and the last
        # switch connected, the last resynced)
        marks: dict[str, float] = {}
        per_switch = {}
        for line in text.splitlines():
            t = log_time(line)
            if t is None:
                continue
            if "vnet64-controller starting" in line:
                marks["started"] = min(t, marks.get("started", t))
            elif "role logic" in line and "ready" in line:
                marks["logic_ready"] = max(t, marks.get("logic_ready", t))
            elif " connected from " in line:
                marks["last_connected"] = max(t, marks.get("last_connected", t))
                marks["first_connected"] = min(t, marks.get("first_connected", t))
            else:
                # "N flows read, ..." or, on a host, "N flows read (the pairs' own), ..."
                m = re.search(r"\[(\S+) [0-9a-f]+\] resynced in ([0-9.]+)s: (\d+) flows read"
                              r"(?: \(the pairs' own\))?, (\d+) messages", line)
                if m:
                    marks["last_resynced"] = max(t, marks.get("last_resynced", t))
                    per_switch[m.group(1)] = {"in_s": float(m.group(2)), "flows": int(m.group(3)),
                                              "messages": int(m.group(4))}
        r["marks"] = {k: v - t_wall0 for k, v in marks.items()}
        r["per_switch"] = per_switch
        if spy is not None:
            proc, raw = spy
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            samples = raw.read_text() if raw.exists() else ""
            profile.write_text(f"py-spy of vnet64-controller (the one serving host1, "
                               f"{self.lab.control} control) from its restart until resynced and "
                               f"idle ({r['resync_s']:.2f}s to resynced)\n\n"
                               + (summarise_profile(samples) if samples else "no samples\n"))
            note(f"controller profile saved to {profile}")
        return r

    def _spy(self):
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            note("py-spy not installed; no profile")
            return None
        raw = self.tmp / "controller.raw"
        proc = subprocess.Popen([spy, "record", "--pid", str(self.controller_pid), "--rate", "250",
                                 "--format", "raw", "--output", str(raw), "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc, raw

    # -- one measurement -------------------------------------------------------------

    def measure(self, n: int, offset: int, profile: Path | None = None) -> dict:
        """N pairs up, connection open, kill -9, restart, resync timed, everything checked."""
        a = self.args
        self.recycle()
        pairs = self.pool.pairs[offset:offset + n]
        extra = self.pool.pairs[offset + n:offset + n + a.new_pairs]
        est = self.establish(pairs) if pairs else {"seconds": 0.0, "rate": float("nan")}
        self.open_session()
        self.settle("after setting pairs up")
        before = self.pair_flows()
        if len(before) != n + 1:
            raise RuntimeError(f"{len(before)} pair flows on host1, expected {n} + the TCP pair")
        cookies_before = sorted(self.pair_cookies())
        # a stale pair flow the NB does not allow, planted while the controller is down
        stale = cookie("host", "pair", STALE_INDEX)
        self.kill_9()
        self.nodes["host1"].ofctl("-O", "OpenFlow13", "add-flow", "br-int",
                                  f"cookie={stale:#x},table={HOST_TABLES.id('pair')},priority=100,"
                                  f"ipv6,ipv6_src={STRANGER},ipv6_dst={self.tv6},actions=drop")
        self.exchange("while-dead")
        r = self.restart_and_time(profile)
        r["n"], r["establish"] = n, est
        # checks
        r["connection_ok"] = True
        try:
            for _ in range(3):
                self.exchange("after-restart")
        except RuntimeError as exc:
            r["connection_ok"] = False
            r["connection_error"] = str(exc)
        after = self.pair_flows()
        r["pairs_before"], r["pairs_after"] = len(before), len(after)
        r["pairs_kept"] = after == before
        cookies_after = sorted(self.pair_cookies())
        r["stale_swept"] = stale not in cookies_after
        r["flows_kept"] = cookies_after == cookies_before
        r["flows_per_pair"] = (len(cookies_after) / len(set(cookies_after))) if cookies_after else 0
        # new pairs after the resync: their aliases must be new
        if extra:
            self.establish(extra)
        final = self.pair_flows()
        aliases = [alias for _, alias in final.values()]
        cks = [c for c, _ in final.values()]
        all_cookies = self.pair_cookies()
        r["new_pairs"] = len(final) - len(after)
        r["no_duplicate"] = (len(set(aliases)) == len(aliases) == len(set(cks))
                             and sorted(all_cookies) == sorted(cks * FLOWS_PER_PAIR)
                             and all(final[k] == v for k, v in before.items()))
        text = controller_logs_text(self.lab)
        r["log_error_lines"] = log_errors(text)
        r["log_errors"] = len(r["log_error_lines"])
        r["ok"] = (r["connection_ok"] and r["pairs_kept"] and r["stale_swept"] and r["flows_kept"]
                   and r["no_duplicate"] and r["new_pairs"] == len(extra) and r["log_errors"] == 0)
        self.close_session()
        m = r["marks"]
        note(f"{n:,} pairs (+ the TCP pair): resynced {r['resync_s']:.2f}s after the restart "
             f"(logic ready at {m.get('logic_ready', float('nan')):.2f}s, switches connected "
             f"{m.get('first_connected', float('nan')):.2f}-{m.get('last_connected', float('nan')):.2f}s, "
             f"host1 read {r['per_switch'].get('host1', {}).get('flows', 0):,} flows in "
             f"{r['per_switch'].get('host1', {}).get('in_s', float('nan')):.2f}s); connection "
             f"{'kept' if r['connection_ok'] else 'LOST'}, pairs {'kept' if r['pairs_kept'] else 'CHANGED'}, "
             f"stale {'swept' if r['stale_swept'] else 'KEPT'}, {r['new_pairs']} new pairs "
             f"{'distinct' if r['no_duplicate'] else 'DUPLICATED'}; set up at {est['rate']:.0f} pairs/s")
        return r


# ---------------------------------------------------------------------------
# Report


def report(args, rows: dict[int, list[dict]], started: datetime) -> str:
    ovs_version = sh.vswitchd_version()
    sizes = sorted(rows)
    base = rows.get(0, [])
    lines = [
        "# Restart: controller resync time vs active pairs",
        "",
        (f"{started:%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, kernel "
         f"{platform.release()}, Python {platform.python_version()}, {ovs_version}, commit "
         f"{args.commit}. Shared, noisy machine (load average at start {args.load_start}, at the "
         f"end {args.load_end}; other labs ran at the same time). {args.runs} run(s); median "
         "(min-max)."),
        "",
        (f"Lab `{args.prefix}`: appliance + host1 ({args.vms} VMs + `tv`) + host2 "
         f"({args.endpoints} endpoints + `tc`), the real controller "
         f"({control_text(getattr(args, 'control', 'node'))}; "
         + ("each connects to its br-int's management socket" if getattr(args, 'control', 'node')
            == "node" else "every br-int's `max_backoff` 1 s")
         + "). N pairs set up through the controller by real first packets, plus "
         "one long-lived TCP connection `tc` -> `tv` (its own pair); then kill -9 of the "
         f"controller ({KILLED[args.kill]}: `--kill {args.kill}`), a stale pair flow planted, `restart_controller`. **Resync time** = from "
         "the restart call until every restarted switch's `resynced` line is in the controller "
         "log (a host: "
         "its pairs' own flows read and the pairs adopted, held first packets served; the whole "
         "table is swept right after; the appliance: its whole dump read). Baseline (same run): "
         "no pair but the TCP one."),
        "",
        "| active pairs | resync (s) | vs baseline | process start -> NB model ready (s) | "
        "-> last switch connected (s) | host1: flows read, read + adopt (s) | controller busy "
        "after (s) | connection kept | pairs adopted, none re-allocated | stale swept | new "
        "pairs, no duplicate alias |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    b = med(r["resync_s"] for r in base) if base else float("nan")
    for n in sizes:
        rs = rows[n]
        h1 = [r["per_switch"].get("host1", {}) for r in rs]
        lines.append(
            f"| {n:,} + 1 | {rng(r['resync_s'] for r in rs)} | "
            f"{med(r['resync_s'] for r in rs) / b:.2f}x | "
            f"{rng(r['marks'].get('logic_ready', float('nan')) - r['marks'].get('started', float('nan')) for r in rs)} | "
            f"{rng(r['marks'].get('last_connected', float('nan')) for r in rs)} | "
            f"{med(h.get('flows', 0) for h in h1):,.0f}, {rng(h.get('in_s', float('nan')) for h in h1)} | "
            f"{rng((r['idle_after_s'] for r in rs), '.0f')} | "
            f"{sum(r['connection_ok'] for r in rs)}/{len(rs)} | "
            f"{sum(r['pairs_kept'] and r['flows_kept'] for r in rs)}/{len(rs)} | "
            f"{sum(r['stale_swept'] for r in rs)}/{len(rs)} | "
            f"{sum(r['new_pairs'] for r in rs)} ({sum(r['no_duplicate'] for r in rs)}/{len(rs)} ok) |")
    lines += ["", "Pairs were set up at (pairs/s, closed loop, 128 first packets in flight): "
              + ", ".join(f"{n:,}: {rng((r['establish']['rate'] for r in rows[n]), '.0f')}"
                          for n in sizes if n) + "."]
    lines += ["", "## Aim", "", "| aim | measured | met |", "|---|---|---|"]
    if AIM_PAIRS in rows:
        rs = rows[AIM_PAIRS]
        t = med(r["resync_s"] for r in rs)
        ok = t <= AIM_SECONDS and all(r["ok"] for r in rs)
        lines.append(f"| {AIM_PAIRS:,} active pairs resynced in <= {AIM_SECONDS:g} s with no "
                     f"connection lost | {t:.2f} s, connection kept in "
                     f"{sum(r['connection_ok'] for r in rs)}/{len(rs)} runs, all checks "
                     f"{'passed' if all(r['ok'] for r in rs) else 'NOT passed'} | "
                     f"{'**yes**' if ok else '**no**'} |")
    else:
        lines.append(f"| {AIM_PAIRS:,} active pairs resynced in <= {AIM_SECONDS:g} s | not measured "
                     "(size not run) | - |")
    lines += report_end(args.argv, args.notes)
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=helptext.paragraphs(__doc__, 0, 1),
        epilog="Results: benchmarks/results/resync.md and resync.json, unless --quick (then "
               "only where --out/--json say; nothing by default).")
    parser.add_argument("--sizes", default="100,1000,10000",
                        help="active pairs, comma-separated (default 100,1000,10000); a baseline "
                             "with none is always measured first")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: sizes 20,100, one run, a small lab, nothing saved unless "
                             "--out/--json")
    parser.add_argument("--endpoints", type=int, help="pairbench endpoints (default 50; quick 6)")
    parser.add_argument("--vms", type=int, help="pairbench VMs, even (default 202; quick 20)")
    parser.add_argument("--window", type=int, default=128, help="first packets in flight")
    parser.add_argument("--new-pairs", type=int, default=20,
                        help="pairs set up after each resync (allocation check)")
    parser.add_argument("--prefix", default=PREFIX, help=f"lab namespace prefix (default {PREFIX})")
    parser.add_argument("--run-dir", default=RUN_DIR, help=f"lab run directory (default {RUN_DIR})")
    parser.add_argument("--kill", choices=("host1", "all"), default="host1",
                        help="whose controller is killed (-9) and restarted: host1's, where the "
                             "pairs are (default; in central control the one controller), or "
                             "every node's at once (with a controller per node: three Python "
                             "start-ups on the same CPUs)")
    parser.add_argument("--profile", type=Path,
                        help="py-spy the restarted controller at the largest size (first run)")
    parser.add_argument("--out", type=Path, help="Markdown results")
    parser.add_argument("--json", type=Path, help="JSON results")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.runs = "20,100", 1
        args.endpoints, args.vms = args.endpoints or 6, args.vms or 20
    else:
        args.endpoints, args.vms = args.endpoints or 50, args.vms or 202
        args.out = args.out or ROOT / "benchmarks" / "results" / "resync.md"
        args.json = args.json or ROOT / "benchmarks" / "results" / "resync.json"
    sizes = [0] + sorted(int(s) for s in args.sizes.split(","))
    if args.vms % 2:
        parser.error("--vms must be even")
    if args.endpoints * args.vms < max(sizes) + args.new_pairs:
        parser.error(f"{args.endpoints} endpoints x {args.vms} VMs = {args.endpoints * args.vms} "
                     f"pairs: not enough for {max(sizes)} + {args.new_pairs} new ones")
    args.notes = []
    if (code := start_run(args, "resync.py")) is not None:
        return code
    signal.signal(signal.SIGTERM, interrupted)
    started = datetime.now(UTC)
    rows: dict[int, list[dict]] = {n: [] for n in sizes}
    bench = Resync(args)
    note(f"resync: sizes {', '.join(f'{n:,}' for n in sizes)}, {args.runs} run(s), lab "
         f"{args.prefix} in {args.run_dir}, {args.endpoints} endpoints x {args.vms} VMs")
    try:
        bench.up()
        for run in range(args.runs):
            # a different slice of the pool each run: pairs and ICMP ids new to the switch
            offset = 0
            for n in sizes:
                profile = args.profile if (args.profile and run == 0 and n == max(sizes)) else None
                rows[n].append(bench.measure(n, offset % max(1, len(bench.pool.pairs) - n - args.new_pairs),
                                             profile))
                offset += n + args.new_pairs
    except BaseException:
        if getattr(bench, "lab", None) is not None:
            bench.controller_log_tails()
        raise
    finally:
        bench.down()
    args.load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = report(args, rows, started)
    print(text)
    result = {"started": started.isoformat(), "commit": args.commit, "machine": platform.node(),
              "cpus": os.cpu_count(), "argv": args.argv, "endpoints": args.endpoints,
              "vms": args.vms, "control": getattr(args, "control", None), "kill": args.kill,
              "sizes": {str(n): rows[n] for n in sizes}}
    for path, body in ((args.out, text), (args.json, json.dumps(result, indent=1, default=str))):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            print(f"saved {path}", file=sys.stderr)
    return 0 if all(r["ok"] for rs in rows.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
