"""vnet64-controller as a real process against a real OVS bridge and a real NB.

A throwaway ovsdb-server + ovs-vswitchd in namespace ``v64o-ctl`` (bridge
``br0``, fail-mode secure, controller ``tcp:127.0.0.1:6653`` inside that
namespace; a veth to ``v64o-h1`` where traffic starts), an NB server in a run
directory of ours, and the controller started exactly as the lab starts it
(``python -m vnet64.controller --ofp-listen-host ... --vnet64-nb-remote ...``)
with :class:`ProbeLogic` (this module, via ``--vnet64-logic``) so that what
the logic sees can be read in the log and what it sends in the switch.

Checked: the switch shows ``is_connected: true`` and holds the logic's
pipeline; a packet goes controller -> flow + packet-out -> the new flow counts
it -> idle timeout -> flow-removed reaches the logic; an NB write reaches the
logic; a port added reaches it; SIGTERM and SIGINT end the process with status
0 within seconds, no traceback, no thread left; kill -9 leaves the flows in
the switch and a restarted controller reconnects and reads them back.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vnet64.controller import flows as F
from vnet64_lab import sh

from .conftest import need_lab
from .test_ofmsg_ovs import OvsSandbox

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
NS, HOST_NS = "v64o-ctl", "v64o-h1"
RUN_DIR = Path("/run/v64o-ctl")
OF_PORT = 6653
LOGIC = "lab.test_controller_process:ProbeLogic"   # importable with tests/ on PYTHONPATH

# ---------------------------------------------------------------------------
# The logic the controller runs in these tests

PROBE = 0x0B0B_0000_0000_0000
LOG = logging.getLogger("vnet64.probe")


class ProbeLogic:
    """Table-miss to the controller (metered); each packet-in learns (in_port, eth_src)
    with a 2 s idle timeout and re-injects the packet. Logs every call as ``probe: ...``."""

    TABLES = F.TableMap("probe", (("classify", 0), ("learned", 1)))

    def __init__(self, load_model):
        self.load_model = load_model

    def switch_connected(self, dpid, ports):
        LOG.info("probe: connected %016x ports=%s", dpid, ",".join(sorted(ports)))
        return self.TABLES, [
            F.MeterMod(1, rate_pps=1000, burst=100),
            F.flow("classify", 0, {}, goto="learned", cookie=PROBE | 1),
            F.flow("learned", 0, {}, [F.Controller()], meter=1, cookie=PROBE | 2)]

    def resynced(self, dpid, flows):
        ours = sorted(c for c, *_ in flows if c & PROBE == PROBE)
        LOG.info("probe: resynced %d flows, probe cookies %s", len(flows),
                 ",".join(hex(c) for c in ours))
        return []

    def switch_disconnected(self, dpid):
        LOG.info("probe: disconnected %016x", dpid)

    def ports_changed(self, dpid, ports):
        LOG.info("probe: ports %s", ",".join(sorted(ports)))
        return []

    def packet_in(self, dpid, table_id, in_port, data):
        mac = ":".join(f"{b:02x}" for b in data[6:12])
        LOG.info("probe: packet-in table=%d in_port=%d src=%s len=%d", table_id, in_port, mac,
                 len(data))
        return [F.flow("learned", 100, {"in_port": in_port, "eth_src": mac}, [],
                       cookie=PROBE | 0x100 | in_port, idle_timeout=2, send_flow_rem=True),
                F.PacketOut(data, in_port)]

    def flow_removed(self, dpid, cookie, reason):
        LOG.info("probe: flow removed %#x", cookie)
        return []

    def nb_changed(self, delta=None):
        LOG.info("probe: nb changed, %d nodes", len(self.load_model().nodes))
        return {}


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def box():
    """OVS in v64o-ctl with br0 (controller on 127.0.0.1:6653 there), v64o-h1 wired to it, an NB."""
    need_lab()
    from vnet64.nb.server import NbServer
    sandbox = OvsSandbox(NS, RUN_DIR, extra_ns=(HOST_NS,))
    nb = NbServer(RUN_DIR / "nb")
    try:
        sandbox.up()
        sh.ip(NS, "link", "add", "p1", "type", "veth", "peer", "name", "h1", "netns", HOST_NS)
        sh.ip(NS, "link", "set", "p1", "up")
        sh.ip(HOST_NS, "addr", "add", "192.0.2.1/24", "dev", "h1")
        sh.ip(HOST_NS, "link", "set", "h1", "up")
        sandbox.bridge("br0", {"p1": (1, "", {})}, controllers=[f"tcp:127.0.0.1:{OF_PORT}"])
        nb.start()
        sandbox.nb = nb
        yield sandbox
    finally:
        nb.stop()
        sandbox.down()


class Controller:
    """One vnet64-controller process, started like the lab starts it (plus the probe logic)."""

    def __init__(self, box: OvsSandbox, name: str):
        self.box = box
        self.log_path = RUN_DIR / f"{name}.log"
        self.out_path = RUN_DIR / f"{name}.out"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Controller:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sh.tool("ip"), "netns", "exec", NS, sys.executable, "-m", "vnet64.controller",
                 "--ofp-listen-host", "127.0.0.1", "--ofp-tcp-listen-port", str(OF_PORT),
                 "--vnet64-nb-remote", self.box.nb.remote, "--vnet64-logic", LOGIC,
                 "--log-file", str(self.log_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        (RUN_DIR / "controller.pid").write_text(f"{self.proc.pid}\n")
        return self

    def signal(self, sig: int, timeout: float = 10.0) -> tuple[int, float]:
        """Send ``sig`` to our process; (exit status, seconds it took to exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - t0

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()   # our own child, by its pid
            self.proc.wait(10)

    def log(self) -> str:
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return text + (self.out_path.read_text() if self.out_path.exists() else "")

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        found: list[str] = []

        def seen():
            nonlocal found
            found = re.findall(pattern, self.log())
            return len(found) >= count
        try:
            sh.wait_for(seen, timeout, f"/{pattern}/ in the controller log")
        except sh.LabError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.log()}") from None
        return found


@pytest.fixture
def controllers(box):
    """Start controllers with ``controllers(name)``; any still running is killed afterwards."""
    made: list[Controller] = []

    def start(name: str, kick: bool = True) -> Controller:
        c = Controller(box, name)
        made.append(c)
        c.start()
        if kick:   # do not wait out OVS's reconnect backoff (up to 8 s): reconnect now
            c.wait_log(r"listening for switches")
            box.node.appctl("bridge/reconnect", "br0")
        return c
    yield start
    for c in made:
        c.cleanup()


def connected(box: OvsSandbox) -> bool:
    return box.vsctl("--bare", "--columns=is_connected", "list", "Controller").strip() == "true"


def wait_connected(box: OvsSandbox, want: bool = True, timeout: float = 20.0) -> None:
    sh.wait_for(lambda: connected(box) == want, timeout,
                f"br0's controller is_connected to become {str(want).lower()}")


def probe_flows(box: OvsSandbox) -> str:
    return box.ofctl("dump-flows", "br0", f"cookie={PROBE:#x}/{PROBE:#x}")


def assert_clean_exit(c: Controller, code: int, seconds: float) -> None:
    log = c.log()
    assert code == 0, f"exit status {code}\n{log}"
    assert seconds < 5, f"took {seconds:.1f}s to stop"
    assert "Traceback" not in log, log
    assert "threads still running" not in log, log
    assert log.rstrip().endswith("vnet64.controller.launcher: stopped"), log[-2000:]


# ---------------------------------------------------------------------------
# tests


def test_connects_programs_and_sigterm_stops_cleanly(box, controllers):
    c = controllers("term")
    wait_connected(box)
    # OVS 3.1 takes max_backoff only when changed while connected: reconnect fast from now on
    box.vsctl("set", "Controller", "br0", "max_backoff=1000")
    c.wait_log(r"probe: resynced \d+ flows")
    flows = probe_flows(box)
    assert f"cookie={PROBE | 1:#x}" in flows and f"cookie={PROBE | 2:#x}" in flows, flows
    assert "meter:1,CONTROLLER:65535" in flows
    assert "pktps burst" in box.ofctl("dump-meters", "br0")
    assert "probe: connected" in c.log() and "ports=br0,p1" in c.log()
    code, seconds = c.signal(signal.SIGTERM)
    assert_clean_exit(c, code, seconds)
    assert "probe: disconnected" in c.log()   # DEAD_DISPATCHER reached the logic
    wait_connected(box, False, timeout=10)
    assert f"cookie={PROBE | 2:#x}" in probe_flows(box)   # fail-mode secure: flows stay


def test_packet_in_flow_and_packet_out_then_flow_removed(box, controllers):
    c = controllers("packets")
    wait_connected(box)
    c.wait_log(r"probe: resynced")
    h1_mac = sh.ip(HOST_NS, "-br", "link", "show", "h1").stdout.split()[2]
    # one ARP request from h1: table-miss -> controller -> learned flow + re-injection
    sh.in_ns(HOST_NS, ["ping", "-c", "1", "-W", "1", "192.0.2.2"], check=False)
    c.wait_log(rf"probe: packet-in table=1 in_port=1 src={h1_mac}")
    learned = f"cookie={PROBE | 0x101:#x}"

    def reinjected():
        line = [x for x in probe_flows(box).splitlines() if learned in x]
        return line and re.search(r"n_packets=[1-9]", line[0])
    sh.wait_for(reinjected, 5, "the learned flow counting the re-injected packet")
    assert "idle_timeout=2" in probe_flows(box) and "send_flow_rem" in probe_flows(box)
    # idle for 2 s: OVS removes it and tells the controller
    c.wait_log(rf"probe: flow removed {PROBE | 0x101:#x}", timeout=15)
    # (h1's kernel may still retry its ARP and get the flow learned once more: wait that out)
    sh.wait_for(lambda: learned not in probe_flows(box), 15, "the learned flow to idle out")
    # a new port reaches the logic with the whole port map
    box.vsctl("add-port", "br0", "p9", "--", "set", "Interface", "p9", "type=internal",
              "ofport_request=9")
    c.wait_log(r"probe: ports br0,p1,p9")
    box.vsctl("del-port", "br0", "p9")
    c.wait_log(r"probe: ports br0,p1\n")
    code, seconds = c.signal(signal.SIGINT)
    assert_clean_exit(c, code, seconds)


def test_nb_writes_reach_the_logic(box, controllers):
    from vnet64 import topology
    from vnet64.nb import api as nbapi
    c = controllers("nb")
    c.wait_log(r"role logic lab.test_controller_process.ProbeLogic ready")   # built from the replica
    nb = nbapi.connect(box.nb.remote)
    try:
        nb.load_topology(topology.load(ROOT / "topologies" / "two-tenants.yaml"))
    finally:
        nb.close()
    [nodes] = c.wait_log(r"probe: nb changed, ([1-9]\d*) nodes")
    assert int(nodes) >= 3
    code, seconds = c.signal(signal.SIGTERM)
    assert_clean_exit(c, code, seconds)


def test_kill_9_keeps_flows_and_a_restart_reconnects_and_reads_them(box, controllers):
    first = controllers("first")
    wait_connected(box)
    first.wait_log(r"probe: resynced")
    box.vsctl("set", "Controller", "br0", "max_backoff=1000")
    sh.in_ns(HOST_NS, ["ping", "-c", "1", "-W", "1", "192.0.2.2"], check=False)
    first.wait_log(r"probe: packet-in")
    first.proc.kill()
    first.proc.wait(10)
    wait_connected(box, False, timeout=10)
    before = probe_flows(box)
    assert f"cookie={PROBE | 2:#x}" in before
    t0 = time.monotonic()
    second = controllers("second", kick=False)   # OVS reconnects by itself
    wait_connected(box, timeout=20)
    [cookies] = second.wait_log(r"probe: resynced \d+ flows, probe cookies (\S+)")
    reconnect = time.monotonic() - t0
    assert {f"{PROBE | 1:#x}", f"{PROBE | 2:#x}"} <= set(cookies.split(",")), cookies
    print(f"\nreconnect after kill -9 and restart: {reconnect:.2f}s")
    code, seconds = second.signal(signal.SIGTERM)
    assert_clean_exit(second, code, seconds)
