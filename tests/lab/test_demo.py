"""`make demo` end to end: ``python -m vnet64_lab.demo`` on the default topology, under
its own prefix, with its printed output checked hop by hop.

The demo is run as a user runs it (a process; exit status and stdout), three times:
plain (everything up, checked, taken down), ``--keep`` (the lab stays up and can be
explored, the demo's OVS mirror is gone), and interrupted by Ctrl-C in the middle of
its exchanges (the lab is taken down anyway). The pcap reading is also checked
without root on packets built with scapy.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest
from vnet64_lab import Lab, sh
from vnet64_lab import demo as D
from vnet64_lab.ovs import OvsNode
from vnet64_lab.traffic import A6, B6, PLATFORM_IP, SVC1, TCP_PORT, UDP_PORT, answer, client

from tests.lab.conftest import ROOT, need_lab

PREFIX, RUN_DIR = "v64x-", "/run/vnet64-lab-x"
TOPOLOGY = ROOT / "topologies" / "two-tenants.yaml"
APPLIANCE, HOST1, HOST2 = "192.168.64.10", "192.168.64.11", "192.168.64.12"
VMS = {"a-vm1": A6, "b-vm1": B6}
HOPS = ["210", "216", "234", "(210)", "248", "253", "258", "262", "(258)"]
ROW = re.compile(r"^   (\(?\d{3}\)?)\s{2,}.*?\s{2,}((?:outer )?IPv[46] .*|\(nothing captured\)|"
                 r"\(skipped: the direct path\))$")
FORWARD = re.compile(r"^   svc1's packets to \S+: (\d+) through the appliance, (\d+) direct", re.M)
INNER = re.compile(r"^\s+inner (IPv[46] .*)$")
HEADER = re.compile(r"IPv[46] (\S+) > (\S+)  (\S+)(?: (\d+) > (\d+))?")


def run_demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vnet64_lab.demo", "--prefix", PREFIX,
                           "--run-dir", RUN_DIR, *args, str(TOPOLOGY)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def header(text: str) -> dict:
    m = HEADER.search(text)
    assert m, text
    return {"src": m.group(1), "dst": m.group(2), "proto": m.group(3),
            "sport": m.group(4) and int(m.group(4)), "dport": m.group(5) and int(m.group(5))}


def exchanges(out: str) -> dict[tuple[str, str], dict]:
    """(kind, VM) -> {"ok", "rows": {no: {"outer"?, "inner"}}, "text"} from the printout."""
    found = {}
    for block in re.split(r"^== ", out, flags=re.M):
        m = re.match(r"(tcp|udp|ping) svc1 -> (\S+) \(.*\) via (\S+): (OK|FAILED)\n", block)
        if not m:
            continue
        rows: dict[str, dict] = {}
        last = None
        for line in block.splitlines():
            if r := ROW.match(line):
                last = r.group(1)
                text = r.group(2)
                assert text != "(nothing captured)", f"{m.group(1)} {m.group(2)}: {line}"
                if text.startswith("(skipped"):
                    rows[last] = {"skipped": text}
                    continue
                rows[last] = ({"outer": header(text)} if text.startswith("outer")
                              else {"inner": header(text)})
            elif (i := INNER.match(line)) and last:
                rows[last]["inner"] = header(i.group(1))
        fwd = FORWARD.search(block)
        found[(m.group(1), m.group(2))] = {"ok": m.group(4) == "OK", "via": m.group(3),
                                           "rows": rows, "text": block,
                                           "forward": (int(fwd.group(1)), int(fwd.group(2))) if fwd else None}
    return found


@pytest.fixture(scope="module")
def demo_run():
    """The plain demo run (the lab is down before and after)."""
    need_lab()
    lab = Lab(PREFIX, RUN_DIR)
    lab.down()
    try:
        t0 = time.monotonic()
        proc = run_demo()
        yield proc, time.monotonic() - t0, lab
    finally:
        lab.down()


@pytest.mark.lab
def test_demo_succeeds_quickly_and_leaves_nothing(demo_run):
    proc, seconds, lab = demo_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    assert "demo OK: 6 exchanges" in proc.stdout
    assert seconds < 60, f"the demo took {seconds:.0f} s"
    assert not lab.namespaces(), "namespaces left behind"
    assert not lab.run_dir.exists()


@pytest.mark.lab
def test_every_exchange_is_ok_with_every_hop_captured(demo_run):
    proc, _, _ = demo_run
    found = exchanges(proc.stdout)
    assert sorted(found) == sorted((k, vm) for k in D.KINDS for vm in VMS), proc.stdout
    for (_, vm), ex in found.items():
        assert ex["ok"], ex["text"]
        assert ex["via"] == VMS[vm]
        assert list(ex["rows"]) == HOPS, ex["text"]
    # the direct path: each VM's first (TCP) exchange starts through the appliance (its
    # SYN: the pair's first packet; when the rest go direct depends on when host2's
    # datapath takes up what the SYN-ACK taught it); its later ones skip the appliance
    for vm in VMS:
        assert found[("tcp", vm)]["forward"][0] >= 1, found[("tcp", vm)]["text"]
        for kind in ("udp", "ping"):
            via, direct = found[(kind, vm)]["forward"]
            assert via == 0 and direct >= 1, found[(kind, vm)]["text"]
    summary = proc.stdout.split("== summary", 1)[1]
    assert summary.count(" OK\n") == 6 and "FAILED" not in summary


@pytest.mark.lab
@pytest.mark.parametrize("kind", D.KINDS)
@pytest.mark.parametrize("vm", sorted(VMS))
def test_each_hop_has_the_patents_addresses(demo_run, kind, vm):
    proc, _, _ = demo_run
    rows = exchanges(proc.stdout)[(kind, vm)]["rows"]
    vm6 = VMS[vm]
    forward, reverse = {"src": SVC1, "dst": vm6}, {"src": vm6, "dst": SVC1}

    def addrs(row: dict) -> dict:
        return {"src": row["src"], "dst": row["dst"]}

    ex = exchanges(proc.stdout)[(kind, vm)]
    via, direct = ex["forward"]
    if kind == "tcp":
        # each VM's first exchange: its pair's first packet (the SYN) through the appliance,
        # the patent's path; its answer teaches host2 the direct path for the rest
        assert via >= 1 and addrs(rows["216"]["outer"]) == {"src": HOST2, "dst": APPLIANCE}
        assert rows["234"]["outer"]["dst"] == HOST1        # rewritten from the host mapping
        hops_in = ("210", "216", "234", "(210)")
    else:
        # later exchanges of a pair (the demo waits for host2's datapath to take up what
        # it learnt): straight from host2 to host1, no appliance hop
        assert rows["234"] == {"skipped": "(skipped: the direct path)"}, rows["234"]
        assert via == 0 and direct >= 1 and addrs(rows["216"]["outer"]) == {"src": HOST2, "dst": HOST1}
        hops_in = ("210", "216", "(210)")
    for no in hops_in:                                # the service's IPv6 packet, untouched
        assert addrs(rows[no]["inner"]) == forward, (no, rows[no])
    assert addrs(rows["248"]["inner"]) == {"src": PLATFORM_IP, "dst": "10.0.0.4"}
    assert addrs(rows["253"]["inner"]) == {"src": "10.0.0.4", "dst": PLATFORM_IP}
    for no in ("258", "262", "(258)"):                 # both IPv6 addresses rebuilt
        assert addrs(rows[no]["inner"]) == reverse, (no, rows[no])
    assert addrs(rows["262"]["outer"]) == {"src": HOST1, "dst": HOST2}   # not the appliance
    if kind != "ping":
        port = TCP_PORT if kind == "tcp" else UDP_PORT
        nat_port = rows["248"]["inner"]["sport"]
        assert rows["248"]["inner"]["dport"] == port
        assert rows["253"]["inner"]["sport"] == port and rows["253"]["inner"]["dport"] == nat_port
        svc_port = rows["210"]["inner"]["sport"]
        assert rows["(258)"]["inner"]["dport"] == svc_port
        text = exchanges(proc.stdout)[(kind, vm)]["text"]
        assert f"{vm} saw  {PLATFORM_IP}:{nat_port} > 10.0.0.4:{port}" in text
        assert f"'{vm} {PLATFORM_IP}:{nat_port} hello {vm}'" in text   # the VM's own answer


@pytest.mark.lab
def test_flows_with_table_names_and_counts(demo_run):
    proc, _, _ = demo_run
    flows = proc.stdout.split("== the flows that carried them", 1)[1].split("== summary")[0]
    per_node = dict(re.findall(r"^   (\S+) \([\d.]+\):\n((?:     .*\n)+)", flows, re.M))
    assert sorted(per_node) == ["appliance", "host1", "host2"], flows
    for lines in per_node.values():
        for line in lines.splitlines():
            assert re.search(r"table=\"?[a-z_0-9]+\"?, n_packets=[1-9]\d*,", line), line
    assert all(f"ipv6_dst={vm6}" in per_node["appliance"] for vm6 in VMS.values())
    assert "table=pair" in per_node["host1"] and f"nat(src={PLATFORM_IP}:" in per_node["host1"]
    assert "table=\"to_service\"" in per_node["host1"]
    assert "table=\"from_endpoint\"" in per_node["host2"]


@pytest.mark.lab
def test_keep_leaves_the_lab_up_to_explore():
    need_lab()
    lab = Lab(PREFIX, RUN_DIR)
    lab.down()
    try:
        proc = run_demo("--keep", "--vm", "a-vm1")
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
        assert sorted(exchanges(proc.stdout)) == [(k, "a-vm1") for k in sorted(D.KINDS)]
        out = proc.stdout.split("The lab stays up (--keep)", 1)[1]
        assert f"export VNET64_LAB_PREFIX={PREFIX} VNET64_LAB_RUN_DIR={RUN_DIR}" in out
        for cmd in ("status", "exec svc1 --", "flows host1", "capture fabric u-host1",
                    "capture host1 xlat0", "down"):
            assert f"vnet64-lab {cmd}" in out, cmd
        status = lab.status()
        assert status["up"] and not status["problems"], status["problems"]
        plan = lab.plan()
        n = plan.node("host1")
        mirrors = sh.run([sh.tool("ovs-vsctl"), "--bare", "--columns=name", "list", "Mirror"],
                         env=OvsNode(n.name, n.ns, n.run_dir).env()).stdout
        assert mirrors.strip() == "", "the demo's mirror was left on br-int"
        name, seen, _, _ = answer(client(plan, "tcp", A6, TCP_PORT))   # echo servers still up
        assert (name, seen) == ("a-vm1", PLATFORM_IP)
        assert list((lab.run_dir / "demo").glob("*.pcap")), "the demo's captures are kept"
    finally:
        lab.down()
    assert not lab.namespaces()


@pytest.mark.lab
def test_ctrl_c_takes_the_lab_down():
    need_lab()
    lab = Lab(PREFIX, RUN_DIR)
    lab.down()
    # As a terminal's foreground job: SIGINT at its default, even when this suite runs as
    # a background job (its shell started it with SIGINT ignored, and an ignored signal
    # is inherited: the demo would never see the Ctrl-C). A handled signal is reset to
    # its default in the child, so the demo starts with SIGINT handled here for a moment.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "vnet64_lab.demo", "--prefix", PREFIX,
                                 "--run-dir", RUN_DIR, str(TOPOLOGY)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, ignored)
    try:
        seen = ""
        deadline = time.monotonic() + 60
        out = proc.stdout.fileno()
        while "from svc1:" not in seen and time.monotonic() < deadline:
            # raw reads: a buffered readline() can hold the line select() already reported,
            # and the Ctrl-C would then come only after the demo had ended
            ready, _, _ = select.select([out], [], [], 1)
            if ready:
                chunk = os.read(out, 65536).decode(errors="replace")
                if not chunk:
                    break
                seen += chunk
        assert "from svc1:" in seen, seen
        os.killpg(proc.pid, signal.SIGINT)      # what a terminal's Ctrl-C does (our own group)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "the lab was taken down" in err
        assert not lab.namespaces() and not lab.run_dir.exists()
    finally:
        if proc.poll() is None:
            proc.kill()                          # our own child, by its pid
            proc.wait()
        lab.down()


def test_pcap_reading_decodes_geneve_and_echo_replies(tmp_path):
    """No root: Geneve-encapsulated IPv6 and plain IPv4, as the demo summarises them."""
    from scapy.contrib.geneve import GENEVE, GeneveOptions
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    inner = Ether() / IPv6(src=SVC1, dst=A6) / TCP(sport=40000, dport=8080, flags="S")
    token = GeneveOptions(classid=0xFFFF, type=0x64, data=bytes.fromhex("5ec0e7a1"))
    other = GeneveOptions(classid=0xFFFF, type=0x65, data=bytes.fromhex("01020304"))
    pkts = [Ether() / IP(src=HOST2, dst=APPLIANCE) / UDP(sport=5000, dport=6081)
            / GENEVE(vni=0x6464, proto=0x6558, options=[other, token]) / inner,
            Ether() / IPv6(src=A6, dst=SVC1) / ICMPv6EchoReply(id=7, seq=1),
            Ether() / IPv6(src=SVC1, dst=A6) / ICMPv6EchoRequest(id=7, seq=1),
            Ether() / IP(src="10.0.0.4", dst=PLATFORM_IP) / UDP(sport=8081, dport=1234) / b"hi",
            Ether() / IP(src=PLATFORM_IP, dst="10.0.0.4") / ICMP(type=8, id=7, seq=1)]
    wrpcap(str(tmp_path / "x.pcap"), pkts)
    heads = D.read_pcap(tmp_path / "x.pcap")
    assert heads[0].outer == (HOST2, APPLIANCE, 0x6464)
    assert heads[0].text() == f"IPv6 {SVC1} > {A6}  TCP 40000 > 8080 [S]"
    assert heads[0].token == 0x5EC0E7A1      # the tunnel token's option, among others
    assert heads[0].outer_text() == f"IPv4 {HOST2} > {APPLIANCE}  Geneve VNI 0x6464 token 0x5ec0e7a1"
    assert heads[1].echo == "reply" and heads[2].echo == "request"
    assert heads[3].text() == f"IPv4 10.0.0.4 > {PLATFORM_IP}  UDP 8081 > 1234 len 2"
    assert heads[4].text() == f"IPv4 {PLATFORM_IP} > 10.0.0.4  ICMP echo request id 7 seq 1"
    assert D.read_pcap(tmp_path / "missing.pcap") == []
