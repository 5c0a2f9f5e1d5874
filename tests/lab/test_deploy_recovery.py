"""docs/deploy.md, "When a process dies": kill -9 each long-running process of the guide's
deployment while traffic runs (issue 18, the second "done when").

The deployment is the one ``tests/lab/test_deploy_guide.py`` builds by following the guide
block by block (its ``deployed`` fixture, imported here: three Raft NB members over TLS,
three hosts and the appliance, each unit's ``ExecStart=`` a child process with a pidfile).
Two long-lived TCP connections, svc1 -> a-vm1 and svc1 -> b-vm1, exchange lines all the
time (each echoed line checked byte for byte as it arrives). Then, one after the other:

- the Raft NB's leader (``vnet64-nb.service``: ovsdb-server itself, the unit execs it),
  then a follower,
- host1's node agent (``vnet64-node.service``),
- host1's controller (``vnet64-controller@host1.service``),
- the appliance's controller (``vnet64-controller@appliance.service``)

is killed with SIGKILL by the pid in its pidfile. **What systemd does per the unit, done by
the test since systemd is not PID 1 here**: the unit's ``Restart=`` (read from the unit
file the guide installed) says whether a SIGKILL restarts it; after its ``RestartSec=``
the test runs the unit's ``ExecStart=`` again, exactly as the guide's test starts it
(``EnvironmentFile=`` and ``%i`` expanded); with ``KillMode=control-group`` the dead
process's children are stopped first, as systemd stops the rest of its control group,
with ``KillMode=process`` (the agent) they stay (TAYGA). No systemd runs: the start
limits (``StartLimitBurst=``) and the journal are not exercised.

What each phase checks:

- the established connections keep flowing while the process is dead: lines are echoed
  between the kill and the restart, and no connection is reset, closed or answered with
  other bytes, at any time;
- a new connection in an existing pair (svc1 -> a-vm1) is answered while it is dead
  (before the restart);
- a **new pair** works again: a VM added to the NB just before the kill (a-vm2 ... a-vm6
  on host1, 10.0.0.5 ...) is subscribed and its port attached right after it, and svc1's
  first connection to it is answered - through the dead process's successor where the
  new pair needs it (its binding, its routes, its flows, the NB write itself);
- the process's own recovery: the NB member back in the cluster (its ``cluster/status``,
  what ``vnet64 nb cluster status --json`` prints: a member, a leader known, connected to
  both others) holding what was written while it was down; the agent's status file
  written again; a controller's "resynced" of its switch;
- nothing acknowledged by the NB is lost: every VM and subscription the CLI got an answer
  for, the one acknowledged just before the leader's kill included, is in every
  member's own copy at the end.

Times are measured from the kill: the restart (= ``RestartSec=``), the process's own
recovery, the subscription's acknowledgement by the NB, the new pair's first answer; with the established connections' echoes during
the outage and their longest silence. They are reported, never asserted: a table written
to ``recovery.md`` in the test's temporary directory and printed at the end of the
module (also without ``-s``), and ``record_property`` for a JUnit report.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lab.test_deploy_guide import PREFIX, VENV, Deployment
from tests.lab.test_deploy_guide import deployed  # noqa: F401  (the deployment: a fixture)
from tests.lab.traffic import (A6, B6, LINE_PORT, PLATFORM_IP, TCP_PORT, answer, client,
                               programmed, start_echo_server)
from tests.support import guide as G
from vnet64.nb.cluster import cluster_status
from vnet64.nb.server import SCHEMA_NAME, NbServer, NbServerError
from vnet64_lab import plan as P
from vnet64_lab import sh
from vnet64_lab.traffic import ECHO_SERVER, end_child

pytestmark = pytest.mark.lab

NB_MEMBERS = ("host1", "host2", "host3")
CLI_MACHINE = "host2"          # where the test runs `vnet64` (any machine with node.env)
SERVICE = "analytics"
VM_MTU = 1422                  # the guide's customer VM MTU
NEW_PAIR_DEADLINE = 45         # s after the kill
RECOVERY_DEADLINE = 45

# Two long-lived connections from svc1, each sending a numbered line every 10 ms and
# checking each echo ("<vm> <seen ip>:<port> <line>") byte for byte as it arrives. A line
# "report" on stdin prints, per connection, the lines echoed so far, the longest silence
# since the last report and the first error (a reset, a close, other bytes); EOF ends it.
STREAMS = r"""
import json, socket, sys, threading, time
port, addrs = int(sys.argv[1]), sys.argv[2:]
lock = threading.Lock()
conns = {}
for addr in addrs:
    s = socket.create_connection((addr, port), timeout=10)
    s.settimeout(120)            # an outage shows as silence, a reset or close as an error
    conns[addr] = {"sock": s, "local_port": s.getsockname()[1], "echoed": 0, "bytes": 0,
                   "vm": None, "seen": None, "error": None, "last": time.monotonic(),
                   "max_gap": 0.0}
def run(addr):
    c, buf, seq = conns[addr], b"", 0
    s = c["sock"]
    try:
        while True:
            seq += 1
            line = f"{seq:09d} " + format(seq * 2654435761 % 2**32, "08x") * 8
            s.sendall(line.encode() + b"\n")
            while b"\n" not in buf:
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("closed by the peer")
                buf += data
            got, buf = buf.split(b"\n", 1)
            vm, seen, echoed = got.decode().split(" ", 2)
            if echoed != line:
                raise ValueError(f"line {seq} echoed as {echoed[:40]!r}")
            with lock:
                if c["vm"] is None:
                    c["vm"], c["seen"] = vm, seen
                elif (vm, seen) != (c["vm"], c["seen"]):
                    raise ValueError(f"line {seq} echoed by {vm} seeing {seen}, "
                                     f"not {c['vm']} seeing {c['seen']}")
                now = time.monotonic()
                c["max_gap"] = max(c["max_gap"], now - c["last"])
                c["last"], c["echoed"], c["bytes"] = now, seq, c["bytes"] + len(got) + 1
            time.sleep(0.01)
    except Exception as exc:
        with lock:
            c["error"] = f"{type(exc).__name__}: {exc}"
for addr in addrs:
    threading.Thread(target=run, args=(addr,), daemon=True).start()
print(json.dumps({a: {"local_port": c["local_port"]} for a, c in conns.items()}), flush=True)
for cmd in sys.stdin:
    with lock:
        now = time.monotonic()
        out = {a: {"echoed": c["echoed"], "bytes": c["bytes"], "vm": c["vm"], "seen": c["seen"],
                   "error": c["error"], "max_gap": round(max(c["max_gap"], now - c["last"]), 3)}
               for a, c in conns.items()}
        for c in conns.values():
            c["max_gap"] = 0.0
    print(json.dumps(out), flush=True)
"""

# A new pair's first connection: a new TCP connection every 0.25 s or so (each SYN with
# 0.5 s to be answered) until one is echoed; prints when (wall clock) and how many tries.
PROBE = r"""
import json, socket, sys, time
addr, port, payload, deadline = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), float(sys.argv[4])
tries, last = 0, None
while time.time() < deadline:
    tries += 1
    t = time.time()
    try:
        s = socket.create_connection((addr, port), timeout=0.5)
        s.settimeout(2)
        s.sendall(payload)
        reply = s.recv(4096).decode()
        s.close()
        if reply:
            print(json.dumps({"answered_at": time.time(), "tries": tries, "reply": reply}))
            sys.exit()
        last = "empty reply"
    except OSError as exc:
        last = type(exc).__name__
    time.sleep(max(0.0, 0.25 - (time.time() - t)))
print(json.dumps({"error": last, "tries": tries}))
"""


@dataclass(frozen=True)
class NewVm:
    """A VM added during the test, on host1 in customer-a: a new pair for one phase."""

    name: str
    ipv4: str
    mac: str
    host: str = "host1"
    vnet: str = "customer-a"

    @property
    def port(self) -> str:
        return f"vm-{self.name}"

    @property
    def ns(self) -> str:
        return f"{PREFIX}vm-{self.name}"


@dataclass(frozen=True)
class Phase:
    label: str
    unit: str
    machine: str              # or LEADER, FOLLOWER: an NB member with that role at the time
    vm: NewVm


LEADER, FOLLOWER = "the leader", "a follower"


PHASES = [
    Phase("NB leader", "vnet64-nb.service", LEADER,
          NewVm("a-vm2", "10.0.0.5", "52:54:00:1f:00:05")),
    Phase("NB follower", "vnet64-nb.service", FOLLOWER,
          NewVm("a-vm6", "10.0.0.9", "52:54:00:1f:00:09")),
    Phase("host1's node agent", "vnet64-node.service", "host1",
          NewVm("a-vm3", "10.0.0.6", "52:54:00:1f:00:06")),
    Phase("host1's controller", "vnet64-controller@host1.service", "host1",
          NewVm("a-vm4", "10.0.0.7", "52:54:00:1f:00:07")),
    Phase("the appliance's controller", "vnet64-controller@appliance.service", "appliance",
          NewVm("a-vm5", "10.0.0.8", "52:54:00:1f:00:08")),
]


@dataclass
class Result:
    phase: Phase
    machine: str = ""
    pid: int = 0
    restart: str = ""
    restart_sec: float = 0.0
    started: float | None = None       # s after the kill: the unit's ExecStart ran again
    recovered: float | None = None     # s after the kill: the process's own recovery
    recovered_what: str = ""
    new_pair: float | None = None      # s after the kill: the new pair's first answer
    new_pair_tries: int = 0
    nb_write: float | None = None      # s after the kill: the subscription, acknowledged
    new_leader: float | None = None    # s after the kill: the two others have a new leader
    in_pair: float | None = None       # s after the kill: a new connection in a pair, answered
    outage_echoes: dict[str, int] = field(default_factory=dict)   # between kill and restart
    silence: dict[str, float] = field(default_factory=dict)       # longest, kill .. end of phase


# -- the traffic -------------------------------------------------------------------------


class Streams:
    """:data:`STREAMS` in svc1's namespace."""

    def __init__(self, dep: Deployment, addrs: list[str]):
        self.proc = subprocess.Popen(
            [sh.tool("ip"), "netns", "exec", dep.guests["svc1"].ns, sys.executable, "-c", STREAMS,
             str(LINE_PORT), *addrs], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lock = threading.Lock()
        self.hello = self._read(20)

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise AssertionError(f"the streams' client said nothing within {timeout:g}s "
                                 f"(exit {self.proc.poll()}): {self._stderr()}")
        return json.loads(line)

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read()

    def report(self) -> dict:
        with self.lock:
            self.proc.stdin.write("report\n")
            self.proc.stdin.flush()
            return self._read(10)

    def close(self) -> None:
        end_child(self.proc)


def assert_flowing(report: dict, before: dict | None = None, when: str = "") -> None:
    """No connection failed, each echoed by its VM from Platform_IP, and (given
    ``before``) each echoed more lines since."""
    for addr, c in report.items():
        assert c["error"] is None, f"the established connection to {addr} failed {when}: {c}"
        assert c["seen"] and c["seen"].rsplit(":", 1)[0] == PLATFORM_IP, c
        if before is not None:
            assert c["echoed"] > before[addr]["echoed"], \
                f"the established connection to {addr} echoed nothing {when}: {before[addr]} -> {c}"


# -- machines and units ------------------------------------------------------------------


def cli(dep: Deployment, *args: str, machine: str = CLI_MACHINE) -> str:
    """``vnet64 ARGS`` on ``machine`` with its node.env, as the guide runs it."""
    env = {**dep.env(machine),
           **G.read_environment_file(dep.dir(machine) / "etc/vnet64/node.env")}
    proc = subprocess.run([sh.tool("ip"), "netns", "exec", dep.ns(machine),
                           str(VENV / "bin/vnet64"), *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"vnet64 {' '.join(args)} on {machine}: {proc.stderr}"
    return proc.stdout


def nb_status(dep: Deployment, member: str) -> dict | None:
    """What ``vnet64 nb cluster status --json`` prints on ``member`` (the same function),
    or None while its server does not answer."""
    try:
        return cluster_status(NbServer(dep.dir(member) / "var/lib/vnet64"))
    except NbServerError:
        return None


def nb_member(dep: Deployment, role: str) -> str:
    """The NB member that is the leader now, or the first one that is not."""
    for member in NB_MEMBERS:
        status = nb_status(dep, member)
        if status and status["leader_address"]:
            leader = next(m for m in NB_MEMBERS
                          if f":{dep.mgmt_ip(m)}:" in status["leader_address"])
            return leader if role == LEADER else next(m for m in NB_MEMBERS if m != leader)
    raise AssertionError("no NB member knows a leader")


def nb_contents(dep: Deployment, member: str) -> tuple[set[str], set[str]]:
    """(VM names, names of subscribed VMs) in ``member``'s own copy (ovsdb-client on its
    unix socket: a follower answers a read from what it holds)."""
    txn = json.dumps([SCHEMA_NAME,
                      {"op": "select", "table": "VM", "where": [], "columns": ["_uuid", "name"]},
                      {"op": "select", "table": "Subscription", "where": [], "columns": ["vm"]}])
    sock = dep.dir(member) / "var/lib/vnet64/nb.sock"
    proc = subprocess.run([sh.tool("ovsdb-client"), "query", f"unix:{sock}", txn],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    vms, subs = json.loads(proc.stdout)
    names = {row["_uuid"][1]: row["name"] for row in vms["rows"]}
    return set(names.values()), {names[row["vm"][1]] for row in subs["rows"]}


def nb_member_back(dep: Deployment, member: str, written: set[str]) -> bool:
    """``member`` is in the cluster again: a member, a leader known, connected to both
    others, and its own copy holds every subscription ``written`` while it was down."""
    status = nb_status(dep, member)
    if not (status and status["status"] == "cluster member" and status["leader"]
            and len(status["servers"]) == 3 and all(s["connected"] for s in status["servers"])):
        return False
    return written <= nb_contents(dep, member)[1]


def unit_pid(dep: Deployment, machine: str, unit: str) -> int:
    return int((dep.dir(machine) / "run/units" / f"{unit}.pid").read_text())


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def expected_program(unit: str) -> bytes:
    return {"vnet64-nb.service": b"ovsdb-server",
            "vnet64-node.service": b"vnet64-node"}.get(unit, b"vnet64-controller")


def attach_guest(dep: Deployment, vm: NewVm) -> subprocess.Popen:
    """What the guide's tap, guest and guest-settings blocks do for a VM (lab stand-ins:
    a veth for the tap, a namespace for the guest), but not yet the ``ovs-vsctl add-port``;
    and an echo server in the guest. The port is the guide's: :func:`plug`."""
    sh.run([sh.tool("ip"), "netns", "add", vm.ns])
    sh.ip(vm.ns, "link", "set", "lo", "up")
    sh.sysctl(vm.ns, {"net.ipv6.conf.all.disable_ipv6": 1,
                      "net.ipv6.conf.default.disable_ipv6": 1})
    sh.ip_batch(dep.ns(vm.host), [
        f"link add {vm.port} mtu {VM_MTU} type veth peer name {P.VM_IF} mtu {VM_MTU} "
        f"netns {vm.ns}",
        f"link set {vm.port} up"])
    sh.ip_batch(vm.ns, [f"link set {P.VM_IF} address {vm.mac}",
                        f"link set {P.VM_IF} mtu {VM_MTU} up",
                        f"addr add {vm.ipv4}/24 dev {P.VM_IF}",
                        f"route add default via 10.0.0.1"])
    sh.in_ns(vm.ns, [sh.tool("ethtool"), "-K", P.VM_IF, "tx", "off"])
    proc = subprocess.Popen([sh.tool("ip"), "netns", "exec", vm.ns, sys.executable, "-c",
                             ECHO_SERVER, vm.name], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", f"echo server in {vm.name}"
    return proc


def plug(dep: Deployment, vm: NewVm) -> None:
    """The guide's ``ovs-vsctl add-port`` of a VM's tap on its host."""
    sh.in_ns(dep.ns(vm.host), [
        sh.tool("ovs-vsctl"), "--timeout=5", "--", "--may-exist", "add-port", "br-int", vm.port,
        "--", "set", "Interface", vm.port, f"external-ids:iface-id={vm.name}",
        f"external-ids:attached-mac={vm.mac}", "external-ids:iface-status=active"],
        env=dep.env(vm.host))


def watch_election(dep: Deployment, killed: str, t_kill: float, result: Result) -> None:
    """Until the members other than ``killed`` both name another one as their leader."""
    others = [m for m in NB_MEMBERS if m != killed]
    while time.time() < t_kill + RECOVERY_DEADLINE:
        views = [nb_status(dep, m) for m in others]
        leaders = {v["leader_address"] if v else None for v in views}
        if len(leaders) == 1 and None not in leaders \
                and f":{dep.mgmt_ip(killed)}:" not in next(iter(leaders)):
            result.new_leader = time.time() - t_kill
            return
        time.sleep(0.05)


class Restarter(threading.Thread):
    """What systemd does per the unit when its main process dies, done by the test since
    systemd is not PID 1 here: wait for the process's exit; if ``Restart=`` restarts after
    that signal, stop what ``KillMode=`` says goes with it, wait ``RestartSec=``, then start
    the unit's ``ExecStart=`` again (``Deployment.start_unit``). ``before_start`` runs just
    before the start (the test looks at the traffic then)."""

    def __init__(self, dep: Deployment, machine: str, unit: G.Unit, proc: subprocess.Popen,
                 left: list[int], before_start):
        super().__init__(daemon=True)
        self.dep, self.machine, self.unit, self.proc = dep, machine, unit, proc
        self.left, self.before_start = left, before_start
        self.started_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            status = self.proc.wait(10)
            signum = -status
            assert signum == signal.SIGKILL, f"{self.unit.name} exited {status}, not by SIGKILL"
            assert self.unit.restarts_after_signal(signum), \
                f"{self.unit.name}: Restart={self.unit.restart} does not restart after SIGKILL"
            if self.unit.kill_mode in ("control-group", "mixed"):
                for pid in self.left:      # what the dead process left in its control group
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            time.sleep(self.unit.restart_sec)
            self.before_start()
            self.started_at = time.time()
            self.dep.start_unit(self.machine, self.unit.name)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            self.error = exc


# -- the module's state ---------------------------------------------------------------------


class Run:
    def __init__(self, dep: Deployment):
        self.dep = dep
        self.streams: Streams | None = None
        self.servers: list[subprocess.Popen] = []
        self.acknowledged: set[str] = {"a-vm1", "b-vm1"}   # subscriptions the NB acknowledged
        self.vms_acknowledged: set[str] = {"a-vm1", "b-vm1"}
        self.results: list[Result] = []


@pytest.fixture(scope="module")
def run(deployed, tmp_path_factory, request):  # noqa: F811  (the imported fixture)
    dep, _ = deployed
    sh.wait_for(lambda: programmed(dep.plan), 20, "every switch programmed for the subscriptions")
    r = Run(dep)
    try:
        r.servers = [start_echo_server(dep.plan, vm) for vm in ("a-vm1", "b-vm1")]
        r.streams = Streams(dep, [A6, B6])
        yield r
    finally:
        if r.streams is not None:
            r.streams.close()
        for proc in r.servers:
            proc.terminate()      # our own children, by pid
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        report(request, tmp_path_factory.mktemp("recovery") / "recovery.md", r.results)


def report(request, path: Path, results: list[Result]) -> None:
    """The table of times: to ``path`` and to the terminal (past pytest's capture; each
    phase's test also records its times with ``record_property``)."""
    if not results:
        return
    rows = ["| killed (kill -9) | Restart=, RestartSec= | started again | own recovery "
            "| NB write acknowledged | new pair answered "
            "| established: echoes while down, longest silence |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        def s(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f} s"
        elected = "" if r.new_leader is None else f" (a new leader: {r.new_leader:.2f} s)"
        est = ", ".join(f"{r.outage_echoes.get(a, 0)} / {r.silence.get(a, 0):.2f} s"
                        for a in (A6, B6))
        rows.append(f"| {r.phase.label} ({r.machine}, {r.phase.unit}) | {r.restart}, "
                    f"{r.restart_sec:g}s | {s(r.started)} | {s(r.recovered)} "
                    f"({r.recovered_what}) | {s(r.nb_write)}{elected} | {s(r.new_pair)} ({r.phase.vm.name}) "
                    f"| {est} |")
    text = ("Recovery after kill -9, times from the kill (tests/lab/test_deploy_recovery.py); "
            "established: svc1 -> a-vm1, svc1 -> b-vm1\n\n" + "\n".join(rows) + "\n")
    path.write_text(text)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            reporter.write_line("")
            for line in (text + f"(written to {path})").splitlines():
                reporter.write_line(line)


# -- the test ------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES,
                         ids=lambda p: p.label.replace("'s", "").replace(" ", "-").lower())
def test_kill_9_traffic_flows_the_unit_restarts_it_new_pairs_work(run, phase, record_property):
    dep = run.dep
    machine = nb_member(dep, phase.machine) if phase.machine in (LEADER, FOLLOWER) \
        else phase.machine
    unit = G.read_unit(dep.dir(machine) / "etc/systemd/system", phase.unit)
    result = Result(phase, machine=machine, restart=unit.restart, restart_sec=unit.restart_sec)
    run.results.append(result)
    vm = phase.vm

    # before: the new VM's guest is there and the NB has it (not subscribed, not plugged)
    run.servers.append(attach_guest(dep, vm))
    cli(dep, "vm", "add", vm.name, "--vnet", vm.vnet, "--ipv4", vm.ipv4, "--host", vm.host,
        "--mac", vm.mac)
    run.vms_acknowledged.add(vm.name)        # acknowledged; for the NB, just before its kill
    pid = unit_pid(dep, machine, phase.unit)
    proc = next(p for p in dep.procs if p.pid == pid)
    assert proc.poll() is None, f"{phase.unit} on {machine} is not running"
    assert expected_program(phase.unit) in Path(f"/proc/{pid}/cmdline").read_bytes()
    log = dep.dir(machine) / "log" / f"{phase.unit}.log"
    log_mark = log.stat().st_size
    status_file = dep.dir(machine) / "run/vnet64-node/status.json"
    left = children(pid)
    outage: dict[str, dict] = {}

    # kill -9, and systemd's part in the background
    before = run.streams.report()
    assert_flowing(before, when="before the kill")
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    restarter = Restarter(dep, machine, unit, proc, left,
                          lambda: outage.update(run.streams.report()))
    restarter.start()
    if phase.machine == LEADER:
        elected = threading.Thread(target=watch_election, args=(dep, machine, t_kill, result),
                                   daemon=True)
        elected.start()

    # while it is dead: a new connection in an existing pair; then the new pair's NB
    # writes and its port
    name, seen, _, payload = answer(client(dep.plan, "tcp", A6, TCP_PORT, "in-pair", timeout=5))
    assert (name, seen, payload) == ("a-vm1", PLATFORM_IP, "in-pair")
    result.in_pair = time.time() - t_kill
    out = cli(dep, "subscribe", vm.name, SERVICE)
    result.nb_write = time.time() - t_kill
    run.acknowledged.add(vm.name)
    addr = out.strip().splitlines()[-1]
    assert re.fullmatch(r"fd41:[0-9a-f:]+", addr), out
    plug(dep, vm)
    probe = subprocess.Popen(
        [sh.tool("ip"), "netns", "exec", dep.guests["svc1"].ns, sys.executable, "-c", PROBE,
         addr, str(TCP_PORT), f"new-pair-{vm.name}", str(t_kill + NEW_PAIR_DEADLINE)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # the process's own recovery
    restarter.join(RECOVERY_DEADLINE)
    assert not restarter.is_alive(), f"{phase.unit} on {machine} not started again"
    if restarter.error:
        raise restarter.error
    result.started = restarter.started_at - t_kill
    assert result.in_pair < result.started, \
        f"the new connection in a pair was answered {result.in_pair:.2f} s after the kill, " \
        f"not before the restart ({result.started:.2f} s): it did not test the outage"
    if phase.unit == "vnet64-nb.service":
        result.recovered_what = "back in the cluster, caught up"
        back = lambda: nb_member_back(dep, machine, {vm.name})   # noqa: E731
    elif phase.unit == "vnet64-node.service":
        result.recovered_what = "status file written again"

        def back() -> bool:
            with contextlib.suppress(OSError, ValueError):
                status = json.loads(status_file.read_text())
                return status.get("phase") == "up" and status["time"] > restarter.started_at
            return False
    else:
        result.recovered_what = "switch resynced"

        def back() -> bool:
            return re.search(rb"\[\S+ [0-9a-f]+\] resynced", log.read_bytes()[log_mark:]) \
                is not None
    deadline = time.time() + RECOVERY_DEADLINE
    while not back():
        assert time.time() < deadline, \
            f"{phase.unit} on {machine} did not recover:\n{dep.unit_log(machine, phase.unit)}"
        time.sleep(0.05)
    result.recovered = time.time() - t_kill

    # the new pair
    stdout, stderr = probe.communicate(timeout=NEW_PAIR_DEADLINE + 10)
    answered = json.loads(stdout) if stdout.strip() else {"error": stderr}
    assert "answered_at" in answered, \
        f"svc1 -> {vm.name} ({addr}), a new pair, not answered after {phase.label}'s kill: " \
        f"{answered}\n{dep.unit_log(machine, phase.unit)}"
    result.new_pair = answered["answered_at"] - t_kill
    result.new_pair_tries = answered["tries"]
    name, seen, _, payload = answer({"reply": answered["reply"]})
    assert (name, seen, payload) == (vm.name, PLATFORM_IP, f"new-pair-{vm.name}"), answered

    # the established connections flowed while it was dead, and still do
    after = run.streams.report()
    assert outage, "no look at the traffic at the restart"
    assert_flowing(outage, before, when=f"while {phase.label} was dead")
    assert_flowing(after, outage, when=f"after {phase.label} came back")
    result.outage_echoes = {a: outage[a]["echoed"] - before[a]["echoed"] for a in before}
    result.silence = {a: max(outage[a]["max_gap"], after[a]["max_gap"]) for a in before}

    # the new process is the unit's, from its pidfile
    new_pid = unit_pid(dep, machine, phase.unit)
    assert new_pid != pid and sh.proc_alive(new_pid)
    result.pid = pid
    for key in ("started", "recovered", "nb_write", "new_leader", "new_pair", "outage_echoes", "silence"):
        record_property(key, getattr(result, key))


def test_nothing_acknowledged_is_lost_and_every_member_has_it(run):
    """Every VM and subscription the CLI got an answer for, in every member's own copy;
    the cluster whole again."""
    dep = run.dep
    assert run.results and len(run.results) == len(PHASES), "runs after the kill tests"
    for member in NB_MEMBERS:
        sh.wait_for(lambda m=member: run.acknowledged <= nb_contents(dep, m)[1], 10,
                    f"{member}'s copy to hold every acknowledged subscription")
        vms, subscribed = nb_contents(dep, member)
        assert run.vms_acknowledged <= vms, (member, run.vms_acknowledged - vms)
        assert run.acknowledged <= subscribed, (member, run.acknowledged - subscribed)
        status = nb_status(dep, member)
        assert status and all(s["connected"] for s in status["servers"]), status
    final = run.streams.report()
    assert_flowing(final, when="at the end")
