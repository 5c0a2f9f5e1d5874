"""Smoke run of benchmarks/controller_cost.py (no root): it sets up real pairs through
the role logic, encodes them both ways, and reports; no timing is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_controller_cost_quick_run_reports_every_row(tmp_path):
    out = tmp_path / "controller_cost.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "controller_cost.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    rows = re.findall(r"^\| (role logic[^|]*) \| ([0-9.]+) \(", text, re.M)
    assert [r[0].split(" (")[0].split(",")[0] for r in rows] == [
        "role logic + encoding", "role logic + encoding", "role logic + plain os-ken encoding",
        "role logic alone"]
    assert all(float(ms) > 0 for _, ms in rows)
    # the same three flow-mods and packet-out per pair, whichever encoder wrote them
    assert re.search(r"writes (\d+) bytes per pair", text)
