"""A Raft NB made through the CLI (``vnet64 nb create-cluster/join-cluster/cluster ...``).

Three members on loopback, each with its own run dir and ports chosen free at run time,
every one made by the ``vnet64`` command in a fresh process. The leader's ovsdb-server
is killed (-9, by the pid in its pidfile) while a client adds VMs and (un)subscribes
them through every member's client remote: the writes go on against the new leader,
and every acknowledged one is in what each surviving member serves, then in what the
killed member serves once restarted. Every server a test starts is killed by its
pidfile at the end, also when the test fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from vnet64 import cli
from vnet64.nb import api as nbapi
from vnet64.nb.cluster import parse_cluster_status, status_text
from vnet64.nb.server import SCHEMA_NAME, NbServer

VNET64 = Path(sys.executable).with_name("vnet64")
ACK_DEADLINE = 60.0    # a bound against hanging forever, not a timing expectation


def vnet64(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    command = [str(VNET64)] if VNET64.exists() else [sys.executable, "-m", "vnet64.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Member:
    run_dir: Path
    raft_port: int
    client_port: int

    @property
    def address(self) -> str:         # the Raft address
        return f"tcp:127.0.0.1:{self.raft_port}"

    @property
    def client(self) -> str:          # what NB clients connect to
        return f"tcp:127.0.0.1:{self.client_port}"

    @property
    def listen(self) -> list[str]:
        return ["--remote", f"ptcp:{self.client_port}:127.0.0.1"]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return vnet64("--run-dir", str(self.run_dir), *args)

    def pid(self) -> int | None:
        return NbServer(self.run_dir).pid()

    def status(self) -> dict:
        proc = self.cli("nb", "cluster", "status", "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def server(self, sid: str) -> dict:
        return next(s for s in self.status()["servers"] if s["id"] == sid)

    def contents(self) -> tuple[set[str], set[str]]:
        """(VM names, names of subscribed VMs) as this member serves them (ovsdb-client on
        its own unix socket: its copy, not the leader's)."""
        txn = json.dumps([SCHEMA_NAME,
                          {"op": "select", "table": "VM", "where": [], "columns": ["_uuid", "name"]},
                          {"op": "select", "table": "Subscription", "where": [], "columns": ["vm"]}])
        proc = subprocess.run(["ovsdb-client", "query", f"unix:{self.run_dir / 'nb.sock'}", txn],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        vms, subs = json.loads(proc.stdout)
        names = {row["_uuid"][1]: row["name"] for row in vms["rows"]}
        return set(names.values()), {names[row["vm"][1]] for row in subs["rows"]}


def _kill_all(run_dirs: list[Path]) -> None:
    for run_dir in run_dirs:
        pid = NbServer(run_dir).pid()      # only a live ovsdb-server named by the pidfile
        if pid:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def members(tmp_path, request):
    """Three members' directories and ports (nothing started); every server started from
    them is killed at the end."""
    ports = _free_ports(6)
    result = [Member(tmp_path / f"m{i}", ports[i], ports[3 + i]) for i in range(3)]
    request.addfinalizer(lambda: _kill_all([m.run_dir for m in result]))
    return result


@pytest.fixture
def run_dirs(tmp_path, request):
    """Directories for single servers; every server started from them is killed at the end."""
    dirs = [tmp_path / name for name in ("a", "b", "c")]
    request.addfinalizer(lambda: _kill_all(dirs))
    return dirs


@dataclass
class Workload:
    """Adds VMs w0, w1, ... and subscribes each to the service; every third step also
    unsubscribes an earlier one. Each write is retried until acknowledged (may_exist /
    if_exists make a retry of a write that did commit harmless), so when it stops every
    write it made is acknowledged and the NB must hold exactly these."""

    remotes: str
    vms: set[str] = field(default_factory=set)
    subscribed: set[str] = field(default_factory=set)
    acks: list[tuple[float, float]] = field(default_factory=list)   # (sent, acknowledged)
    errors: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def acked_since(self, t: float) -> list[tuple[float, float]]:
        return [a for a in self.acks if a[0] > t]

    def _write(self, api: nbapi.NbApi, op) -> None:
        while True:
            sent = time.monotonic()
            try:
                op(api)
            except nbapi.NbError as exc:     # NbUnavailable while the leader changes
                self.errors.append((sent, f"{type(exc).__name__}: {exc}"))
                time.sleep(0.05)
                continue
            except Exception as exc:         # a bug: the test fails on it
                self.errors.append((sent, f"{type(exc).__name__}: {exc}"))
                raise
            self.acks.append((sent, time.monotonic()))
            return

    def run(self) -> None:
        with nbapi.connect(self.remotes, timeout=10) as api:
            i = 0
            while not self.stop.is_set():
                name = f"w{i}"
                ip = IPv4Address("10.1.0.10") + i
                self._write(api, lambda a: a.add_vm(name, "bulk", ip, "host1", may_exist=True))
                self.vms.add(name)
                self._write(api, lambda a: a.subscribe(name, "analytics", may_exist=True))
                self.subscribed.add(name)
                if i % 3 == 2:
                    gone = f"w{i - 1}"
                    self._write(api, lambda a: a.unsubscribe(gone, "analytics", if_exists=True))
                    self.subscribed.discard(gone)
                i += 1


def test_cli_cluster_loses_its_leader_under_writes_and_loses_nothing(members, default_topology):
    m0, m1, m2 = members
    made = m0.cli("nb", "create-cluster", m0.address, *m0.listen)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"created the cluster: first member at {m0.address}")
    for m, through in ((m1, [m0.address]), (m2, [m0.address, m1.address])):
        joined = m.cli("nb", "join-cluster", m.address, *through, *m.listen)
        assert joined.returncode == 0, joined.stderr
        assert joined.stdout.startswith(f"joined the cluster as the member at {m.address}")
    again = m1.cli("nb", "join-cluster", m1.address, m0.address, *m1.listen)
    assert again.returncode == 0 and "already running" in again.stdout and "nothing done" in again.stdout

    sids = {m.address: m.status()["server_id"] for m in members}
    assert nbapi.wait_for(lambda: all(s["connected"] for s in m0.status()["servers"]), timeout=20), \
        m0.cli("nb", "cluster", "status").stdout
    assert {s["address"] for s in m0.status()["servers"]} == {m.address for m in members}

    remotes = ",".join(m.client for m in members)
    with nbapi.connect(remotes, timeout=20) as api:
        api.load_topology(default_topology)
    added = vnet64("--nb", remotes, "vnet", "add", "bulk", "--id", "0x30", "--cidr", "10.1.0.0/16",
                   "--subnet", "default:0x1:10.1.0.0/16")
    assert added.returncode == 0, added.stderr

    work = Workload(remotes)
    thread = threading.Thread(target=work.run, daemon=True)
    thread.start()
    try:
        assert nbapi.wait_for(lambda: len(work.acks) >= 20 or not thread.is_alive(),
                              timeout=ACK_DEADLINE) and thread.is_alive(), work.errors[-5:]
        leader = next(m for m in members if m.status()["role"] == "leader")
        survivors = [m for m in members if m is not leader]
        lost = sids[leader.address]

        killed_at = time.monotonic()
        os.kill(leader.pid(), signal.SIGKILL)
        elected = None
        while time.monotonic() - killed_at < ACK_DEADLINE:
            if elected is None and any(m.status()["leader"] not in (None, lost) for m in survivors):
                elected = time.monotonic() - killed_at
            if elected is not None and len(work.acked_since(killed_at)) >= 30 or not thread.is_alive():
                break
            time.sleep(0.05)
        after = work.acked_since(killed_at)
        assert len(after) >= 30, f"the writes did not go on after the leader died: {work.errors[-5:]}"
        recovered = min(done for _, done in after) - killed_at
        print(f"\nkill -9 of the leader ({leader.address}): a new leader {elected:.2f} s later, "
              f"writes acknowledged again {recovered:.2f} s later "
              f"({len(work.errors)} attempts failed meanwhile and were retried)")

        # Both survivors see the same new leader, and the killed member as disconnected.
        views = {m.address: m.status() for m in survivors}
        new_leader = {v["leader"] for v in views.values()}
        assert len(new_leader) == 1 and new_leader <= {sids[m.address] for m in survivors}, views
        for m in survivors:
            assert nbapi.wait_for(lambda: not m.server(lost)["connected"], timeout=10), m.status()
        text = survivors[0].cli("nb", "cluster", "status").stdout
        new = next(m for m in survivors if sids[m.address] in new_leader)
        assert f"leader    {sids[new.address]} at {new.address}" in text, text
        assert any(line.split()[:4] == [lost, leader.address, "-", "no"] for line in text.splitlines()), text
    finally:
        work.stop.set()
        thread.join(timeout=ACK_DEADLINE)
    assert not thread.is_alive(), "the workload did not stop"

    # Every acknowledged write, in what each survivor serves; nothing more.
    want_vms = work.vms | {"a-vm1", "b-vm1"}
    want_subs = work.subscribed | {"a-vm1", "b-vm1"}
    for m in survivors:
        assert nbapi.wait_for(lambda: m.contents() == (want_vms, want_subs), timeout=20), \
            (m.address, [sorted(a ^ b) for a, b in zip(m.contents(), (want_vms, want_subs))])

    # The killed member comes back, rejoins as a follower of the new leader and catches up.
    restarted = leader.cli("nb", "start", *leader.listen)
    assert restarted.returncode == 0 and restarted.stdout.startswith("NB running"), restarted.stderr
    noop = leader.cli("nb", "start", *leader.listen)
    assert noop.returncode == 0 and "NB already running" in noop.stdout and "nothing done" in noop.stdout
    assert nbapi.wait_for(lambda: leader.status()["leader"] in new_leader and
                          leader.status()["role"] == "follower" and
                          all(s["connected"] for s in new.status()["servers"]), timeout=30), \
        leader.cli("nb", "cluster", "status").stdout
    assert nbapi.wait_for(lambda: leader.contents() == (want_vms, want_subs), timeout=30)
    with nbapi.connect(remotes, timeout=20) as api:
        api.add_vm("after", "bulk", IPv4Address("10.1.255.1"), "host2")
    assert nbapi.wait_for(lambda: "after" in leader.contents()[0], timeout=20)
    print(f"{len(work.vms)} VMs added and {len(work.acks)} writes acknowledged in all; "
          f"the killed member rejoined and serves every one")


def test_create_and_join_refuse_cleanly_and_leave_cleanly(members, run_dirs):
    m0, m1, m2 = members
    standalone = run_dirs[0]
    assert vnet64("--run-dir", str(standalone), "nb", "start").returncode == 0
    vnet64("--run-dir", str(standalone), "nb", "stop")
    before = (standalone / "nb.db").read_bytes()
    refused = vnet64("--run-dir", str(standalone), "nb", "create-cluster", m0.address)
    assert refused.returncode == 1
    assert "already holds a standalone NB database: left as it is" in refused.stderr
    assert (standalone / "nb.db").read_bytes() == before and not NbServer(standalone).pid()

    made = m0.cli("nb", "create-cluster", m0.address, *m0.listen)
    assert made.returncode == 0, made.stderr
    noop = m0.cli("nb", "create-cluster", m0.address)
    assert noop.returncode == 0 and "already running" in noop.stdout
    other = m0.cli("nb", "create-cluster", m1.address)
    assert other.returncode == 1 and f"already holds the Raft member at {m0.address}" in other.stderr

    status = m0.cli("nb", "cluster", "status")
    assert status.returncode == 0 and "leader" in status.stdout
    single = vnet64("--run-dir", str(standalone), "nb", "start")
    assert single.returncode == 0
    not_member = vnet64("--run-dir", str(standalone), "nb", "cluster", "status")
    assert not_member.returncode == 1 and "is not a Raft member" in not_member.stderr

    # A bad address, a member nobody answers at, a port taken: an error, nothing left behind.
    bad = m1.cli("nb", "join-cluster", m1.address, "tcp:127.0.0.1")
    assert bad.returncode == 1 and "'tcp:127.0.0.1' is not tcp:IP:PORT" in bad.stderr
    nobody = _free_ports(1)[0]
    lonely = vnet64("--run-dir", str(m1.run_dir), "--timeout", "3", "nb", "join-cluster", m1.address,
                    f"tcp:127.0.0.1:{nobody}")
    assert lonely.returncode == 1
    assert f"could not join the cluster through tcp:127.0.0.1:{nobody} within 3s" in lonely.stderr
    assert "Nothing was kept" in lonely.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", m2.raft_port))
        taken.listen()
        busy = m2.cli("nb", "join-cluster", m2.address, m0.address)
    assert busy.returncode == 1 and f"cannot listen on the cluster address {m2.address}" in busy.stderr
    for m in (m1, m2):
        assert not (m.run_dir / "nb.db").exists() and not m.pid()

    # A member joins, then leaves: the cluster forgets it, the directory can be used again.
    assert m1.cli("nb", "join-cluster", m1.address, m0.address).returncode == 0
    assert nbapi.wait_for(lambda: len(m0.status()["servers"]) == 2, timeout=10)
    left = m1.cli("nb", "cluster", "leave")
    assert left.returncode == 0, left.stderr
    assert f"the member at {m1.address}" in left.stdout and "left the cluster" in left.stdout
    assert not m1.pid() and not (m1.run_dir / "nb.db").exists() and (m1.run_dir / "nb.db.left").exists()
    assert nbapi.wait_for(lambda: [s["address"] for s in m0.status()["servers"]] == [m0.address],
                          timeout=10)
    gone = m1.cli("nb", "cluster", "status")
    assert gone.returncode == 1 and "no NB running" in gone.stderr
    assert m1.cli("nb", "join-cluster", m1.address, m0.address).returncode == 0


def test_nb_run_is_ovsdb_server_in_the_foreground(run_dirs):
    """What the systemd unit starts: this very process becomes ovsdb-server, logs to stderr,
    and stops on SIGTERM; a second one on the same run dir is refused."""
    run_dir = run_dirs[0]
    command = [str(VNET64)] if VNET64.exists() else [sys.executable, "-m", "vnet64.cli"]
    proc = subprocess.Popen([*command, "--run-dir", str(run_dir), "nb", "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert nbapi.wait_for(lambda: NbServer(run_dir).pid() == proc.pid and
                              (run_dir / "nb.sock").exists(), timeout=20)
        with nbapi.connect(NbServer(run_dir).remote) as api:
            assert api.list("vm") == []
        second = vnet64("--run-dir", str(run_dir), "nb", "run")
        assert second.returncode == 1 and f"already running from {run_dir} (pid {proc.pid})" in second.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "ovsdb_server|INFO|ovsdb-server (Open vSwitch)" in err
    assert not (run_dir / "nb.log").exists()      # the journal gets the log, not a file


def test_nb_run_under_systemd_logs_through_syslog(run_dirs):
    """With stderr the journal ($JOURNAL_STREAM = its device:inode, as systemd sets it), the
    server logs through syslog, which keeps each record's level, and not to stderr."""
    run_dir = run_dirs[0]
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    command = [str(VNET64)] if VNET64.exists() else [sys.executable, "-m", "vnet64.cli"]
    proc = subprocess.Popen([*command, "--run-dir", str(run_dir), "nb", "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=write_end)
    os.close(write_end)
    try:
        assert nbapi.wait_for(lambda: NbServer(run_dir).pid() == proc.pid, timeout=20)
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-vconsole:off" in argv and b"-vsyslog:info" in argv
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with os.fdopen(read_end) as stderr:
        assert "ovsdb_server|INFO" not in stderr.read()


FOLLOWER_AFTER_LOSS = """\
29ce
Name: VNet64_Northbound
Cluster ID: 9ddb (9ddba797-3dad-4c0f-a75b-2518612e9642)
Server ID: 29ce (29ce8bfc-1c84-4da6-ba3e-52a7508f24ab)
Address: tcp:127.0.0.1:46645
Status: cluster member
Role: follower
Term: 2
Leader: b2f8
Vote: b2f8

Election timer: 1000
Log: [2, 6]
Entries not yet committed: 0
Entries not yet applied: 1
Connections: (->0000) ->b2f8 <-b2f8
Disconnections: 1
Servers:
    29ce (29ce at tcp:127.0.0.1:46645) (self)
    26ff (26ff at tcp:127.0.0.1:46643) last msg 3016 ms ago
    b2f8 (b2f8 at tcp:127.0.0.1:46644) last msg 72 ms ago
"""


def test_cluster_status_is_parsed_from_what_ovs_prints():
    status = parse_cluster_status(FOLLOWER_AFTER_LOSS)
    assert {k: status[k] for k in ("server_id", "cluster_id", "role", "term", "leader",
                                   "leader_address", "log_start", "log_end", "commit_index",
                                   "applied_index")} == {
        "server_id": "29ce", "cluster_id": "9ddba797-3dad-4c0f-a75b-2518612e9642",
        "role": "follower", "term": 2, "leader": "b2f8", "leader_address": "tcp:127.0.0.1:46644",
        "log_start": 2, "log_end": 6, "commit_index": 5, "applied_index": 4}
    assert [(s["id"], s["connected"], s["role"], s["last_msg_ms"]) for s in status["servers"]] == [
        ("29ce", True, "follower", None), ("26ff", False, None, 3016), ("b2f8", True, "leader", 72)]
    text = status_text(status)
    assert "leader    b2f8 at tcp:127.0.0.1:46644" in text
    assert [line.split()[:4] for line in text.splitlines()[-3:]] == [
        ["29ce", "tcp:127.0.0.1:46645", "follower", "this"],
        ["26ff", "tcp:127.0.0.1:46643", "-", "no"],
        ["b2f8", "tcp:127.0.0.1:46644", "leader", "yes"]]


def test_the_units_command_and_the_example_settings_are_what_nb_run_takes():
    """deploy/systemd/vnet64-nb.service runs `vnet64 nb run $VNET64_NB_OPTS`; every example
    of deploy/config/nb.env parses into the member it says (a single NB, the first member,
    one joining)."""
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    unit = (deploy / "systemd" / "vnet64-nb.service").read_text()
    assert re.search(r"^ExecStart=/opt/vnet64/venv/bin/vnet64 nb run \$VNET64_NB_OPTS$", unit, re.M)
    assert re.search(r"^EnvironmentFile=/etc/vnet64/nb.env$", unit, re.M)
    env = (deploy / "config" / "nb.env").read_text()
    assert re.search(r"^VNET64_NB_OPTS=$", env, re.M)     # the shipped file sets nothing
    examples = re.findall(r'^#VNET64_NB_OPTS="(.*)"$', env, re.M)
    parsed = [cli.build_parser().parse_args(["nb", "run", *shlex.split(e)]) for e in examples]
    assert [(a.remote, a.local_addr, a.remote_addr) for a in parsed] == [
        (["ptcp:6641:192.0.2.1"], None, None),
        (["ptcp:6641:192.0.2.1"], "tcp:192.0.2.1:6643", None),
        (["ptcp:6641:192.0.2.2"], "tcp:192.0.2.2:6643", ["tcp:192.0.2.1:6643"])]
    assert all(a.func is cli.cmd_nb_run for a in parsed)
