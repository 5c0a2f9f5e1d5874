"""Serving Prometheus metrics (prometheus_client), for the node agent (``vnet64-node
--metrics``) and the controller (``vnet64-controller --vnet64-metrics``): one listen
address syntax, one server per process, collectors that read their values when scraped.
With TLS files (PEM, e.g. from ``ovs-pki``: this process's key and certificate, and the
CA a scraper's certificate must be signed by), the server speaks HTTPS and wants a
client certificate - Prometheus's ``tls_config`` with ``cert_file``/``key_file``.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

from .ovsdb import TlsFiles

# the environment variables the metrics' TLS options default to (both programs)
METRICS_TLS_ENV = {"private_key": "VNET64_METRICS_PRIVATE_KEY",
                   "certificate": "VNET64_METRICS_CERTIFICATE",
                   "ca_cert": "VNET64_METRICS_CA_CERT"}


def listen_address(text: str) -> tuple[str, int]:
    """``IP:PORT`` or ``[IPv6]:PORT`` -> (IP, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        if ":" in host and not bracketed:      # "::1:80": which part is the port?
            raise ValueError
        ip_address(host)
        number = int(port)
        if not sep or not 1 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise ValueError(f"{text!r}: expected IP:PORT or [IPv6]:PORT") from None
    return host, number


def serve(collector: Collector, host: str, port: int, tls: TlsFiles | None = None) -> Any:
    """Serve ``collector`` on http://host:port/metrics (https with ``tls``, a client
    certificate signed by its CA required) from a daemon thread; the server
    (``.shutdown()`` stops it). An address in use, or unusable TLS files, is an OSError."""
    registry = CollectorRegistry()
    registry.register(collector)
    kw: dict = {}
    if tls is not None:
        kw = {"certfile": tls.certificate, "keyfile": tls.private_key,
              "client_cafile": tls.ca_cert, "client_auth_required": True}
    server, _ = start_http_server(port, addr=host, registry=registry, **kw)
    return server


def url(host: str, port: int, tls: bool = False) -> str:
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}/metrics" if ":" in host else f"{scheme}://{host}:{port}/metrics"
