"""``vnet64-node sessions`` on a customer host (issue 20, item 2): a connection svc1 opens
to a-vm1 appears as one session with the Platform_IP port a-vm1 itself saw, names from the
NB, and the port-use count follows connections held open.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from vnet64.nb.server import NbServer
from vnet64_lab.ovs import OvsNode
from vnet64_lab.traffic import A6, B6, LINE_PORT, PLATFORM_IP, SVC1, LineSession, running_platform

from tests.lab.conftest import ROOT, need_lab, new_lab

NODE_CLI = str(Path(sys.executable).with_name("vnet64-node"))


@pytest.fixture(scope="module")
def platform():
    need_lab()
    with running_platform(new_lab("s"), ROOT / "topologies" / "two-tenants.yaml") as (lab, plan):
        yield lab, plan


def sessions(plan, *args: str) -> subprocess.CompletedProcess:
    """vnet64-node sessions for host1, as an operator runs it there: the NB, the local OVS."""
    host1 = next(n for n in plan.nodes if n.name == "host1")
    ovs = OvsNode(host1.name, host1.ns, host1.run_dir)
    return subprocess.run([NODE_CLI, "sessions", "--nb", NbServer(Path(plan.nb_run_dir)).remote,
                           "--ovs", ovs.remote, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def seen_by_vm(answer: dict) -> tuple[str, int]:
    """The address and port a-vm1's line server saw the connection come from (its answer
    starts with them: 'a-vm1 100.100.0.1:1024 ...')."""
    peer = answer["reply"].split()[1]
    ip, port = peer.rsplit(":", 1)
    return ip, int(port)


def test_a_services_connection_is_one_session_with_the_port_the_vm_saw(platform):
    _, plan = platform
    to_a, to_b = LineSession(plan, A6, LINE_PORT), LineSession(plan, B6, LINE_PORT)
    try:
        ip_a, port_a = seen_by_vm(to_a.send("who-am-i"))
        ip_b, port_b = seen_by_vm(to_b.send("who-am-i"))
        proc = sessions(plan, "--json")
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        mine = [s for s in data["sessions"] if s["proto"] == "tcp" and s["vm_port"] == LINE_PORT
                and s["service_port"] in (to_a.hello["local_port"], to_b.hello["local_port"])]
        by_vm = {s["vm"]: s for s in mine}
        assert sorted(by_vm) == ["a-vm1", "b-vm1"], data["sessions"]
        a = by_vm["a-vm1"]
        assert (a["service"], a["service_ip"], a["service_port"]) == ("svc1", SVC1, to_a.hello["local_port"])
        assert (a["platform_ip"], a["platform_port"]) == (ip_a, port_a) == (PLATFORM_IP, port_a)
        assert (a["vm_ip"], a["state"]) == ("10.0.0.4", "ESTABLISHED") and a["timeout"] > 0, a
        b = by_vm["b-vm1"]                 # the same address in another VNet: told apart
        assert (b["vm_ip"], b["platform_port"]) == ("10.0.0.4", port_b), b
        use = {(u["vm"], u["vm_port"]): u for u in data["port_use"] if u["proto"] == "tcp"}
        assert use[("a-vm1", LINE_PORT)]["in_use"] >= 1 and use[("a-vm1", LINE_PORT)]["of"] == 64512

        # one more connection held open to a-vm1: one more port in use
        before = use[("a-vm1", LINE_PORT)]["in_use"]
        extra = LineSession(plan, A6, LINE_PORT)
        try:
            extra.send("again")
            data = json.loads(sessions(plan, "--json", "--vm", "a-vm1").stdout)
            assert {s["vm"] for s in data["sessions"]} == {"a-vm1"}
            now = next(u for u in data["port_use"] if u["proto"] == "tcp" and u["vm_port"] == LINE_PORT)
            assert now["in_use"] == before + 1, now
        finally:
            extra.close()

        # the table for people and CSV for scripts say the same
        table = sessions(plan, "--vm", "a-vm1")
        assert table.returncode == 0, table.stderr
        assert f"[{SVC1}]:{to_a.hello['local_port']}" in table.stdout and \
            f"{PLATFORM_IP}:{port_a}" in table.stdout, table.stdout
        assert "Platform_IP ports in use" in table.stdout
        for who in ("analytics", "svc1"):       # the service, or its one endpoint
            proc = sessions(plan, "--csv", "--service", who)
            assert proc.returncode == 0, proc.stderr
            rows = list(csv.DictReader(io.StringIO(proc.stdout)))
            assert any(r["vm"] == "a-vm1" and r["platform_port"] == str(port_a) for r in rows), rows
            assert {r["service"] for r in rows} == {"svc1"}, rows
    finally:
        to_a.close()
        to_b.close()


def test_bad_input_is_refused_before_anything_is_read(platform):
    _, plan = platform
    proc = sessions(plan, "--vm", "no-such-vm")
    assert proc.returncode == 2 and "no VM called 'no-such-vm'" in proc.stderr, proc.stderr
    proc = sessions(plan, "--service", "a-vm1")
    assert proc.returncode == 2 and "no service or endpoint called 'a-vm1'" in proc.stderr, proc.stderr
    proc = sessions(plan, "--snat-ports", "5000-10")
    assert proc.returncode == 2 and "--snat-ports" in proc.stderr, proc.stderr
    proc = sessions(plan, "--rate", "0")
    assert proc.returncode == 2 and "--rate" in proc.stderr, proc.stderr


def test_the_rate_counts_the_connections_opened_between_its_two_readings(platform):
    """``--rate 4``: two connections to a-vm1 opened after its first reading (it says when,
    on stderr) are two new ones there, and only there; one held from before is none."""
    _, plan = platform
    host1 = next(n for n in plan.nodes if n.name == "host1")
    before = LineSession(plan, A6, LINE_PORT)
    opened = []
    try:
        before.send("before")
        proc = subprocess.Popen([NODE_CLI, "sessions", "--nb", NbServer(Path(plan.nb_run_dir)).remote,
                                 "--ovs", OvsNode(host1.name, host1.ns, host1.run_dir).remote,
                                 "--rate", "4", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        first = proc.stderr.readline()          # says so once the first reading is done
        assert "reading conntrack again in 4 s" in first, first
        for i in range(2):
            opened.append(LineSession(plan, A6, LINE_PORT))
            assert opened[-1].send(f"new-{i}")["reply"].endswith(f"new-{i}")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, first + err
        rates = json.loads(out)["new_connections"]
        mine = [r for r in rates if (r["vm"], r["proto"], r["vm_port"]) == ("a-vm1", "tcp", LINE_PORT)]
        assert len(mine) == 1 and mine[0]["new"] == 2 and mine[0]["per_second"] == 0.5, rates
        assert not [r for r in rates if r["vm"] != "a-vm1"], rates
    finally:
        for s in [before, *opened]:
            s.close()
