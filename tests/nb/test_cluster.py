"""The NB as a 3-member OVSDB Raft cluster on loopback: clients follow the leader."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from vnet64.nb import api as nbapi
from vnet64.nb.server import NbServer, SCHEMA_NAME


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _role(member: NbServer) -> str:
    out = subprocess.run(["ovs-appctl", "-t", str(member.ctl_path), "cluster/status", SCHEMA_NAME],
                         capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("Role:")), "unknown")


@pytest.fixture
def cluster(tmp_path):
    raft = _free_ports(3)
    client = _free_ports(3)
    members = []
    try:
        for i in range(3):
            member = NbServer(tmp_path / f"m{i}", extra_remotes=[f"ptcp:{client[i]}:127.0.0.1"],
                              cluster_local=f"tcp:127.0.0.1:{raft[i]}",
                              cluster_remotes=[] if i == 0 else [f"tcp:127.0.0.1:{raft[0]}"])
            member.start()
            members.append(member)
        yield members, ",".join(f"tcp:127.0.0.1:{p}" for p in client)
    finally:
        for member in members:
            member.stop()


def test_cluster_serves_the_workflow_and_survives_losing_its_leader(cluster, default_topology):
    members, remotes = cluster
    assert nbapi.wait_for(lambda: sorted(_role(m) for m in members) == ["follower", "follower", "leader"],
                          timeout=15), [_role(m) for m in members]
    with nbapi.connect(remotes, timeout=20) as api:
        api.load_topology(default_topology)
        assert api.subscription_info("a-vm1", "analytics")["ipv6"] == "fd41::3930:1f:6600:a00:4"
        api.unsubscribe("a-vm1", "analytics")

        leader = next(m for m in members if _role(m) == "leader")
        os.kill(leader.pid(), signal.SIGKILL)
        survivors = [m for m in members if m is not leader]
        assert nbapi.wait_for(lambda: "leader" in [_role(m) for m in survivors], timeout=15)

        info = api.subscribe("a-vm1", "analytics")   # the IDL reconnects to the new leader
        assert info["ipv6"] == "fd41::3930:1f:6600:a00:4"
        assert {s["vm"] for s in api.list("subscription")} == {"a-vm1", "b-vm1"}

    # A client that only knows the surviving members sees the same data.
    client_remotes = remotes.split(",")
    alive = ",".join(client_remotes[members.index(m)] for m in survivors)
    with nbapi.connect(alive, timeout=20) as api2:
        assert {s["vm"] for s in api2.list("subscription")} == {"a-vm1", "b-vm1"}
