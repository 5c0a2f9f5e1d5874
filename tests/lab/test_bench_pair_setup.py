"""benchmarks/pair_setup.py --quick works (issue 6: CI runs each benchmark's quick mode).

Runs the script under its own prefix and checks what it measured, never how fast: in each
shape (one customer host, then the same VMs on two, each with its own controller) every
pair answered at saturation has its flows on the customer hosts and pairs reached the VMs
of every customer host, no first packet was lost at 100 new pairs/s per customer host, and
TCP connections went through the full data path (with TAYGA, and with host1 on the BPF
translator engine) and the conntrack-only OVS path.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.lab.conftest import ROOT, need_lab


def test_pair_setup_quick(tmp_path):
    need_lab()
    out = tmp_path / "pair_setup.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pair_setup.py"), "--quick",
                           "--prefix", "v64i-", "--run-dir", "/run/vnet64-lab-i", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"pair_setup --quick failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    r = json.loads(out.read_text())
    assert set(r["customer_hosts"]) == {"1", "2"}, r["customer_hosts"].keys()
    for shape, hosts in (("1", {"host1"}), ("2", {"host1", "host3"})):
        [run] = r["customer_hosts"][shape]["pairs"]
        sat = run["sat"]
        assert sat["answered"] > 0 and sat["lost"] == 0, (shape, sat)
        assert sat["installed"] == sat["answered"], \
            f"{shape} host(s): a pair answered without its flows, or flows without an answer"
        assert set(sat["by_host"]) == hosts, (shape, sat["by_host"])
        assert all(h["answered"] > 0 for h in sat["by_host"].values()), (shape, sat["by_host"])
        assert sat["ms_per_pair"]["platform"] > 0, (shape, sat["ms_per_pair"])
        [(rate, lat)] = run["lat"].items()
        assert lat["new"]["sent"] > 0 and lat["new"]["lost"] == 0, (shape, lat["new"])
        assert lat["est"]["lost"] == 0, (shape, lat["est"])
        assert all(h["answered"] > 0 for h in lat["new"]["by_host"].values()), (shape, lat["new"])
    [tcp] = r["tcp_large"]
    assert set(tcp) == {"conntrack-only OVS (IPv4 SNAT)", "one pair (full data path)",
                        "one pair, host1 on the BPF translator engine"}, tcp.keys()
    for path, levels in tcp.items():
        for conc, res in levels.items():
            assert res["ok"] > 0 and not res["errors"], (path, conc, res)
    assert not (ROOT / "benchmarks" / "results" / "pair_setup.json").exists()
