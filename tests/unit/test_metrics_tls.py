"""Metrics over TLS (vnet64.prom.serve with TLS files, as ``vnet64-node --metrics-*`` and
``vnet64-controller --vnet64-metrics-*`` give them): HTTPS with certificates from
``ovs-pki``, a scraper's client certificate required and checked against the CA, on
loopback; and the options' checks in both programs."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tests.support.pki import Pki
from vnet64 import prom
from vnet64.controller import launcher
from vnet64.node import cli as node_cli
from vnet64.ovsdb import TlsFiles


class One(Collector):
    def collect(self):
        g = GaugeMetricFamily("vnet64_test_value", "a test value")
        g.add_metric([], 42)
        yield g


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = Pki.make(tmp_path_factory.mktemp("pki"))
    p.issue_many([("server", "controller"), ("scraper", "controller")])
    return p


def fetch(url: str, ctx: ssl.SSLContext) -> str:
    with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
        return r.read().decode()


def client(pki, cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca("controller")))
    ctx.check_hostname = False          # ovs-pki certificates name no host
    if cert:
        ctx.load_cert_chain(str(pki.cert("scraper")), str(pki.key("scraper")))
    return ctx


def test_https_with_a_client_certificate_and_only_with_one(pki, tmp_path):
    tls = TlsFiles(str(pki.key("server")), str(pki.cert("server")), str(pki.ca("controller")))
    server = prom.serve(One(), "127.0.0.1", 0, tls)
    port = server.server_address[1]
    try:
        url = prom.url("127.0.0.1", port, tls=True)
        assert url.startswith("https://")
        assert "vnet64_test_value 42.0" in fetch(url, client(pki, cert=True))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            fetch(url, client(pki, cert=False))              # no client certificate: refused
        other = Pki.make(tmp_path / "other")                  # a certificate of another CA
        other.issue("stranger", "controller")
        ctx = client(pki, cert=False)
        ctx.load_cert_chain(str(other.cert("stranger")), str(other.key("stranger")))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            fetch(url, ctx)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            fetch(f"http://127.0.0.1:{port}/metrics", ssl.create_default_context())   # not plain HTTP
    finally:
        server.shutdown()


def test_the_options_want_all_three_files_and_a_metrics_address(pki, capsys, monkeypatch):
    monkeypatch.setattr(node_cli, "setup_logging", lambda level, log_file: None)   # none on capsys's stream
    key, cert, ca = str(pki.key("server")), str(pki.cert("server")), str(pki.ca("controller"))
    with pytest.raises(SystemExit):
        node_cli.main(["--nb", "tcp:127.0.0.1:1", "--metrics", "127.0.0.1:9", "--metrics-certificate", cert])
    assert "--metrics-private-key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        node_cli.main(["--nb", "tcp:127.0.0.1:1", "--metrics-private-key", key, "--metrics-certificate", cert,
                       "--metrics-ca-cert", ca])
    assert "need --metrics IP:PORT" in capsys.readouterr().err
    assert launcher.main(["--vnet64-nb-remote", "tcp:127.0.0.1:1", "--vnet64-metrics-private-key", key,
                          "--vnet64-metrics-certificate", cert, "--vnet64-metrics-ca-cert", ca]) == 2
    assert "need --vnet64-metrics IP:PORT" in capsys.readouterr().err
    assert launcher.main(["--vnet64-nb-remote", "tcp:127.0.0.1:1", "--vnet64-metrics", "127.0.0.1:9",
                          "--vnet64-metrics-ca-cert", ca]) == 2
    assert "--vnet64-metrics-private-key" in capsys.readouterr().err
