"""OpenFlow over TLS: the central controller's listener with a fake switch (Python ssl).

Certificates come from ``ovs-pki`` in a temporary directory, as an operator makes them:
the controller's signed by the controller CA, the switches' by the switch CA; the
controller trusts the switch CA (``--ca-certs``), the switch the controller CA. Another
PKI ("another CA") signs a switch certificate the controller must refuse.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import threading
import time

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp

from tests.support.ofswitch import record_datapaths
from tests.support.pki import Pki
from vnet64.controller import launcher


class Pkis:
    def __init__(self, base):
        self.ours = Pki.make(base / "ours")
        self.other = Pki.make(base / "other")
        key, cert = self.ours.issue("ctl", "controller")
        self.controller = launcher.OfpTls(str(key), str(cert), str(self.ours.ca("switch")))
        self.switch = self.ours.issue("sw", "switch")
        self.rogue = self.other.issue("rogue", "switch")


@pytest.fixture(scope="module")
def pkis(tmp_path_factory) -> Pkis:
    return Pkis(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(monkeypatch, pkis):
    made = record_datapaths(monkeypatch)
    before = set(threading.enumerate())
    srv = launcher.OpenFlowServer("127.0.0.1", 0, tls=pkis.controller)
    srv.start()
    srv.made = made
    yield srv
    srv.stop()
    assert set(threading.enumerate()) <= before, "threads left behind"


def switch_context(pkis, cert=None, trust=None) -> ssl.SSLContext:
    """What ovs-vswitchd does for an ssl: controller target: present its certificate,
    verify the controller's against the CA it was given (no host name check)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(trust or pkis.ours.ca("controller")))
    if cert is not False:
        key, crt = cert or pkis.switch
        ctx.load_cert_chain(str(crt), str(key))
    return ctx


def tls_switch(srv, ctx) -> ssl.SSLSocket:
    raw = socket.create_connection(srv.address, timeout=5)
    return ctx.wrap_socket(raw)


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_switch_with_a_certificate_of_our_ca_gets_the_hello(server, pkis, caplog):
    caplog.set_level(logging.INFO, "vnet64.controller.launcher")
    s = tls_switch(server, switch_context(pkis))
    head = s.recv(8)
    assert head[1] == ofp.OFPT_HELLO   # the controller speaks first, inside TLS
    wait_until(lambda: server.made)
    assert isinstance(server.made[0].socket, launcher.TlsConnection)
    assert any("TLS connection from the switch at 127.0.0.1" in r.getMessage() and "certificate sw id:" in
               r.getMessage() for r in caplog.records)
    # stop ends the TLS connection as it ends a TCP one: the switch sees the end
    server.stop(timeout=5)
    s.settimeout(5)
    assert s.recv(100) == b""
    s.close()


def test_another_ca_no_certificate_and_plain_tcp_are_refused_and_logged(server, pkis, caplog):
    caplog.set_level(logging.INFO, "vnet64.controller.launcher")
    refused = []
    # a switch certificate signed by another CA
    s = tls_switch(server, switch_context(pkis, cert=pkis.rogue))
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        assert s.recv(8) == b""    # TLS 1.3: the refusal arrives as an alert on the first read
        raise ConnectionResetError("closed")
    refused.append(s.getsockname()[1])
    s.close()
    # no certificate at all
    s = tls_switch(server, switch_context(pkis, cert=False))
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        assert s.recv(8) == b""
        raise ConnectionResetError("closed")
    refused.append(s.getsockname()[1])
    s.close()
    # a plain TCP switch (tcp: target against an ssl listener)
    raw = socket.create_connection(server.address, timeout=5)
    raw.sendall(struct.pack("!BBHI", ofp.OFP_VERSION, ofp.OFPT_HELLO, 8, 1))
    try:
        assert raw.recv(100)[:1] != bytes([ofp.OFP_VERSION])   # no OpenFlow: an alert, or nothing
    except ConnectionResetError:
        pass
    refused.append(raw.getsockname()[1])
    raw.close()
    wait_until(lambda: sum("TLS handshake with the switch" in r.getMessage()
                           for r in caplog.records) == 3)
    # one line per refused connection, found by its port (the server may log them in any
    # order when the machine is busy)
    logged = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    lines = [next(line for line in logged if f"127.0.0.1 port {port} failed" in line) for port in refused]
    assert all(line.endswith("connection closed") for line in lines), lines
    assert "certificate verify failed: its certificate is not signed by the CA of --ca-certs" \
        in lines[0]
    assert "peer did not return a certificate: it presented no certificate" in lines[1]
    assert "wrong version number: it does not speak TLS" in lines[2]
    assert all(r.levelno == logging.WARNING for r in caplog.records if "TLS handshake" in r.getMessage())
    assert not server.made          # no datapath: nothing reached os-ken
    # and the listener still serves the right switch
    s = tls_switch(server, switch_context(pkis))
    assert s.recv(8)[1] == ofp.OFPT_HELLO
    s.close()


def test_a_switch_that_does_not_trust_the_controller_closes(server, pkis):
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_switch(server, switch_context(pkis, trust=pkis.other.ca("controller")))


def test_a_silent_peer_does_not_hold_up_others_or_stop(server, pkis):
    silent = socket.create_connection(server.address, timeout=5)   # never says hello
    s = tls_switch(server, switch_context(pkis))
    assert s.recv(8)[1] == ofp.OFPT_HELLO
    t0 = time.monotonic()
    server.stop(timeout=5)
    assert time.monotonic() - t0 < 3     # the pending handshake ended with the stop
    silent.close()
    s.close()


def test_both_directions_at_once_through_one_tls_connection(pkis):
    """os-ken reads and writes a connection from two threads; OpenSSL allows one call at a
    time: TlsConnection serialises them without blocking the writer behind a read."""
    server_ctx = pkis.controller.context()
    listener = socket.create_server(("127.0.0.1", 0))
    raw = socket.create_connection(listener.getsockname(), timeout=10)
    conn, _ = listener.accept()
    listener.close()
    box = {}

    def handshake():
        box["tls"] = server_ctx.wrap_socket(conn, server_side=True)
    t = threading.Thread(target=handshake)
    t.start()
    client = switch_context(pkis).wrap_socket(raw)
    t.join(5)
    tls = launcher.TlsConnection(box["tls"])
    size = 2 * 1024 * 1024
    out = os.urandom(size)
    got_by_controller, got_by_switch = bytearray(), bytearray()

    def controller_reads():
        while len(got_by_controller) < size:
            data = tls.recv(65536)
            if not data:
                return
            got_by_controller.extend(data)

    def switch_reads():
        client.settimeout(10)
        while len(got_by_switch) < size:
            got_by_switch.extend(client.recv(65536))

    threads = [threading.Thread(target=controller_reads), threading.Thread(target=switch_reads),
               threading.Thread(target=lambda: client.sendall(out))]
    for th in threads:
        th.start()
    tls.sendall(out)          # while the controller's reader waits on the same connection
    for th in threads:
        th.join(20)
    assert bytes(got_by_controller) == out and bytes(got_by_switch) == out
    tls.shutdown(socket.SHUT_RDWR)      # what stop() does: the reader sees the end, at once
    try:
        assert tls.recv(10) == b""
    except ConnectionResetError:
        pass
    tls.close()
    client.close()


@pytest.mark.parametrize("argv, message", [
    (["--ctl-privkey", "/x.pem"], "needs --ctl-privkey, --ctl-cert and --ca-certs"),
    (["--ctl-privkey", "/nonexistent.pem", "--ctl-cert", "/x", "--ca-certs", "/y"],
     "--ctl-privkey /nonexistent.pem: no such file"),
])
def test_bad_tls_options_exit_2_and_say_why(argv, message, capsys):
    assert launcher.main(argv) == 2
    assert message in capsys.readouterr().err


def test_tls_files_are_checked_and_tls_is_for_listening(pkis, capsys):
    tls = pkis.controller
    assert launcher.main(["--ctl-privkey", tls.private_key, "--ctl-cert", tls.ca_certs,
                          "--ca-certs", tls.ca_certs]) == 2
    assert "not a PEM certificate and its key" in capsys.readouterr().err
    assert launcher.main(["--ctl-privkey", tls.private_key, "--ctl-cert", tls.certificate,
                          "--ca-certs", tls.private_key]) == 2
    assert f"--ca-certs {tls.private_key}: not a PEM certificate" in capsys.readouterr().err
    assert launcher.main(["--ctl-privkey", tls.private_key, "--ctl-cert", tls.certificate,
                          "--ca-certs", tls.ca_certs, "--vnet64-switch", "unix:/run/x.mgmt"]) == 2
    assert "no TLS needed there" in capsys.readouterr().err
    assert launcher.ofp_tls(None, None, None) is None
