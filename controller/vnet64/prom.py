"""Serving Prometheus metrics (prometheus_client), for the node agent (``vnet64-node
--metrics``) and the controller (``vnet64-controller --vnet64-metrics``): one listen
address syntax, one server per process, collectors that read their values when scraped.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector


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


def serve(collector: Collector, host: str, port: int) -> Any:
    """Serve ``collector`` on http://host:port/metrics from a daemon thread; the server
    (``.shutdown()`` stops it). An address in use is an OSError."""
    registry = CollectorRegistry()
    registry.register(collector)
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
