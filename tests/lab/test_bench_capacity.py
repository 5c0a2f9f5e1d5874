"""CI smoke of the capacity benchmark (issue 6, comparisons 3 and 2b): ``--quick``.

``benchmarks/capacity.py --quick`` runs as a subprocess in its own labs (prefix
``v64h-``, run dir ``/run/vnet64-lab-h``) with the controller's Platform_IP port
range narrowed to a few hundred ports (``--vnet64-snat-ports``), so exhaustion is
reached in seconds with real connections. The test checks behaviour from its
JSON, never a timing:

- each VM address and port held exactly as many connections as the narrowed
  range has ports, a second port of the same VM as many again, and a second VM;
- the connect after each fill was refused with ECONNREFUSED (the platform's
  reset), not a timeout, and no refused connection reached the VM;
- every held connection still answered after its refusal, and a sample of all
  of them at the end;
- the tear-down closed every connection on both paths (the platform and the
  conntrack-only OVS path), the server reading each FIN.

About 25 s.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.lab.conftest import ROOT, need_lab

PREFIX, RUN_DIR = "v64h-", "/run/vnet64-lab-h"


def test_capacity_quick_holds_the_port_range_and_refuses_cleanly(tmp_path):
    need_lab()
    out = tmp_path / "capacity.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "capacity.py"), "--quick", "--prefix", PREFIX,
         "--run-dir", RUN_DIR, "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"capacity --quick failed ({proc.returncode}):\n" \
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "| target | held (capacity) |" in proc.stdout, proc.stdout[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"]
    lo, hi = result["snat_ports"]
    n = result["port_range"]
    assert n == hi - lo + 1 and n < 1000, "the quick run narrows the port range"
    assert len(result["runs"]) == 1
    run = result["runs"][0]
    cap = run["capacity"]
    assert [f["target"] for f in cap["fills"]] == result["targets"]
    assert len({f["vm"] for f in cap["fills"]}) >= 2, "a second VM is filled too"
    assert len({f["port"] for f in cap["fills"] if f["vm"] == "cv1"}) >= 2, "a second port of cv1"
    for f in cap["fills"]:
        assert f["held"] == n, (f["target"], f["held"], n, f["errors"])
        assert f["stopped_by"] == "refused", f
        assert f["refused"] > 0 and f["timeouts"] == 0, f["errors"]
        assert set(f["errors"]) == {"ECONNREFUSED"}, f["errors"]
        assert f["next_connect"]["error"] == "ECONNREFUSED", f["next_connect"]
        assert f["server_accepted"] == f["held"], "a refused connection reached the VM"
        assert f["check"]["checked"] == f["held"] == f["check"]["answered"], f["check"]
    assert cap["held_total"] == n * len(cap["fills"])
    fc = cap["final_check"]
    assert fc["checked"] > 0 and fc["answered"] == fc["checked"], fc
    for path in ("platform", "baseline", "platform batched", "baseline batched"):
        td = run["teardown"][path]
        assert td["opened"] == result["teardown_n"], (path, td)
        assert td["eofs"] == td["opened"] and td["complete"], (path, td)
