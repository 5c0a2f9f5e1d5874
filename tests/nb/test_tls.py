"""The NB over TLS: a real ovsdb-server listening with pssl:, certificates from ovs-pki.

Two PKIs made with ``ovs-pki`` in a temporary directory: ours (the NB's certificate and
the clients', all signed by its controller CA, which the server and the clients trust)
and another one ("another CA"), whose certificates ours refuses. Clients: the NB API, the
controller's NbView and the ``vnet64`` CLI (options and environment). Raft members talk
TLS too (ssl: cluster addresses). Every server a test starts is killed by its pidfile at
the end, also when the test fails; python-ovs's process-wide TLS settings are put back
after each test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import ovs.stream
import pytest

from tests.support.pki import Pki
from vnet64 import topology
from vnet64.controller.nbview import NbView
from vnet64.nb import api as nbapi
from vnet64.nb.server import SCHEMA_NAME, NbServer
from vnet64.ovsdb import TlsFiles

VNET64 = Path(sys.executable).with_name("vnet64")
NODE = topology.Node("host9", "host", IPv4Address("192.168.64.99"), 0x99)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def vnet64(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [str(VNET64)] if VNET64.exists() else [sys.executable, "-m", "vnet64.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


class Pkis:
    def __init__(self, base: Path):
        self.ours = Pki.make(base / "ours")
        self.other = Pki.make(base / "other")
        self.nb_key, self.nb_cert = self.ours.issue("nb")
        self.ca = self.ours.ca("controller")
        key, cert = self.ours.issue("client")
        self.client = TlsFiles(str(key), str(cert), str(self.ca))
        key, cert = self.other.issue("intruder")
        # a certificate from another CA (it trusts our CA: only its own certificate is wrong)
        self.intruder = TlsFiles(str(key), str(cert), str(self.ca))
        # our certificate, but trusting only the other CA: the NB's certificate is refused
        self.distrustful = TlsFiles(str(self.client.private_key), str(self.client.certificate),
                                    str(self.other.ca("controller")))


@pytest.fixture(scope="module")
def pkis(tmp_path_factory) -> Pkis:
    return Pkis(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def _restore_python_ovs_tls():
    s = ovs.stream.Stream
    saved = (s._SSL_private_key_file, s._SSL_certificate_file, s._SSL_ca_cert_file)
    yield
    s._SSL_private_key_file, s._SSL_certificate_file, s._SSL_ca_cert_file = saved


def _kill(servers: list[NbServer]) -> None:
    for server in servers:
        pid = server.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def tls_nb(tmp_path, pkis, request):
    """An NB serving pssl: on loopback (and its unix socket); killed at the end."""
    port = _free_ports(1)[0]
    server = NbServer(tmp_path / "nb", extra_remotes=[f"pssl:{port}:127.0.0.1"],
                      private_key=pkis.nb_key, certificate=pkis.nb_cert, ca_cert=pkis.ca)
    request.addfinalizer(lambda: _kill([server]))
    server.start()
    server.ssl_remote = f"ssl:127.0.0.1:{port}"
    return server


def test_a_client_with_our_certificates_reads_and_writes(tls_nb, pkis, default_topology):
    with nbapi.connect(tls_nb.ssl_remote, timeout=5, tls=pkis.client) as api:
        api.load_topology(default_topology)
        assert {n["name"] for n in api.list("node")} == {n.name for n in default_topology.nodes}
        api.add_node(NODE)
    # the controller's replica, over the same TLS
    view = NbView(tls_nb.ssl_remote, tls=pkis.client).connect(timeout=5)
    try:
        view.update()
        assert "host9" in {n.name for n in view.model.nodes}
    finally:
        view.close()
    # the CLI: options, then the environment ($VNET64_NB's neighbours)
    proc = vnet64("--nb", tls_nb.ssl_remote, "--nb-private-key", pkis.client.private_key,
                  "--nb-certificate", pkis.client.certificate, "--nb-ca-cert", pkis.client.ca_cert,
                  "vm", "add", "tls-vm", "--vnet", "customer-a", "--ipv4", "10.0.0.77",
                  "--host", "host9")
    assert proc.returncode == 0, proc.stderr
    proc = vnet64("vm", "list", "--json", env={
        "VNET64_NB": tls_nb.ssl_remote, "VNET64_NB_PRIVATE_KEY": pkis.client.private_key,
        "VNET64_NB_CERTIFICATE": pkis.client.certificate, "VNET64_NB_CA_CERT": pkis.client.ca_cert})
    assert proc.returncode == 0, proc.stderr
    assert '"tls-vm"' in proc.stdout


def test_a_certificate_from_another_ca_is_refused_logged_and_writes_nothing(tls_nb, pkis):
    log_before = tls_nb.log_path.read_text()
    with pytest.raises(nbapi.NbUnavailable,
                       match=r"TLS handshake failed \(tlsv1 alert unknown ca: the server does not "
                             r"trust this client's certificate"):
        nbapi.connect(tls_nb.ssl_remote, timeout=2, tls=pkis.intruder)
    # the same through the CLI, trying to write
    proc = vnet64("--nb", tls_nb.ssl_remote, "--timeout", "2",
                  "--nb-private-key", pkis.intruder.private_key,
                  "--nb-certificate", pkis.intruder.certificate,
                  "--nb-ca-cert", pkis.intruder.ca_cert,
                  "node", "add", "host9", "--role", "host", "--underlay-ip", "192.168.64.99")
    assert proc.returncode == 1
    assert "cannot reach the NB" in proc.stderr and "unknown ca" in proc.stderr
    # the server says why, per connection
    refused = tls_nb.log_path.read_text()[len(log_before):]
    assert "SSL_accept" in refused and "certificate verify failed" in refused
    # nothing was written (read through the unix socket, no TLS involved)
    with nbapi.connect(tls_nb.remote, timeout=5) as api:
        assert api.list("node") == []


def test_a_server_certificate_from_another_ca_is_refused_by_the_client(tls_nb, pkis):
    with pytest.raises(nbapi.NbUnavailable, match="the server's certificate is not signed by "
                                                  "the CA certificate given"):
        nbapi.connect(tls_nb.ssl_remote, timeout=2, tls=pkis.distrustful)
    with pytest.raises(nbapi.NbUnavailable, match="certificate verify failed"):
        NbView(tls_nb.ssl_remote, tls=pkis.distrustful).connect(timeout=2)


def test_missing_or_unusable_files_are_clear_errors(tmp_path, pkis):
    s = ovs.stream.Stream
    s._SSL_private_key_file = s._SSL_certificate_file = s._SSL_ca_cert_file = None
    with pytest.raises(nbapi.NbTlsError, match="an ssl: remote needs a private key"):
        nbapi.connect("ssl:127.0.0.1:1", timeout=1)
    with pytest.raises(nbapi.NbTlsError, match="an ssl: remote needs"):
        NbView("tcp:127.0.0.1:1,ssl:127.0.0.1:1").connect(timeout=1)
    with pytest.raises(nbapi.NbTlsError, match="--nb-ca-cert missing"):
        nbapi.tls_files(pkis.client.private_key, pkis.client.certificate, None)
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(nbapi.NbTlsError, match=f"TLS private key {missing}: no such file"):
        nbapi.connect("ssl:127.0.0.1:1", timeout=1,
                      tls=TlsFiles(missing, pkis.client.certificate, pkis.client.ca_cert))
    unreadable = tmp_path / "dir.pem"
    unreadable.mkdir()
    with pytest.raises(nbapi.NbTlsError, match="a directory, not a PEM file"):
        nbapi.tls_files(pkis.client.private_key, pkis.client.certificate, unreadable)
    with pytest.raises(nbapi.NbTlsError, match="not a PEM certificate and its key"):
        nbapi.tls_files(pkis.intruder.private_key, pkis.client.certificate, pkis.ca)
    with pytest.raises(nbapi.NbTlsError, match=f"TLS CA certificate {pkis.client.private_key}"):
        nbapi.tls_files(pkis.client.private_key, pkis.client.certificate,
                        pkis.client.private_key)
    # the CLI says it and exits 1 before connecting
    proc = vnet64("--nb", "ssl:127.0.0.1:1", "node", "list")
    assert proc.returncode == 1 and "an ssl: remote needs a private key" in proc.stderr
    proc = vnet64("--nb", "ssl:127.0.0.1:1", "--nb-private-key", missing, "--nb-certificate",
                  pkis.client.certificate, "--nb-ca-cert", pkis.ca, "node", "list")
    assert proc.returncode == 1 and f"TLS private key {missing}: no such file" in proc.stderr
    # plain remotes need nothing
    nbapi.use_tls("tcp:127.0.0.1:1,unix:/nonexistent", None)


def test_a_raft_cluster_over_tls_from_the_cli(tmp_path, pkis, request):
    """create-cluster/join-cluster with ssl: cluster addresses and pssl: client remotes;
    clients reach it through the members' ssl: remotes, comma-separated."""
    ports = _free_ports(4)
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    request.addfinalizer(lambda: _kill([NbServer(d) for d in dirs]))
    tls = ["--private-key", str(pkis.nb_key), "--certificate", str(pkis.nb_cert),
           "--ca-cert", str(pkis.ca)]
    raft = [f"ssl:127.0.0.1:{ports[0]}", f"ssl:127.0.0.1:{ports[1]}"]
    proc = vnet64("--run-dir", str(dirs[0]), "nb", "create-cluster", raft[0],
                  "--remote", f"pssl:{ports[2]}:127.0.0.1", *tls)
    assert proc.returncode == 0, proc.stderr
    proc = vnet64("--run-dir", str(dirs[1]), "--timeout", "30", "nb", "join-cluster", raft[1],
                  raft[0], "--remote", f"pssl:{ports[3]}:127.0.0.1", *tls)
    assert proc.returncode == 0, proc.stderr
    remotes = f"ssl:127.0.0.1:{ports[2]},ssl:127.0.0.1:{ports[3]}"
    with nbapi.connect(remotes, timeout=10, tls=pkis.client) as api:
        api.add_node(NODE)
    # each member serves it (its own copy, on its unix socket: ovsdb-client, not the
    # leader-following IDL)
    query = json.dumps([SCHEMA_NAME, {"op": "select", "table": "Node", "where": [],
                                      "columns": ["name"]}])
    for d in dirs:
        def names() -> list:
            proc = subprocess.run(["ovsdb-client", "query", NbServer(d).remote, query],
                                  capture_output=True, text=True, timeout=30)
            return [r["name"] for r in json.loads(proc.stdout)[0]["rows"]] if not proc.returncode else []
        assert nbapi.wait_for(lambda: names() == ["host9"], 10, interval=0.1), names()
    # the members talk TLS: the Raft log says so (ssl: connections, no handshake errors)
    proc = vnet64("--run-dir", str(dirs[1]), "nb", "cluster", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    assert raft[0] in proc.stdout
    for d in dirs:
        log = (d / "nb.log").read_text()
        assert "SSL_accept" not in log and "SSL_connect" not in log, log
