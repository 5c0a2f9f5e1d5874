"""Shared fixtures: a real ovsdb-server with the NB schema, started in a temporary directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vnet64 import topology
from vnet64.nb import api as nbapi
from vnet64.nb.server import NbServer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOPOLOGY = ROOT / "topologies" / "two-tenants.yaml"


def _need_ovsdb() -> None:
    if not (shutil.which("ovsdb-server") or Path("/usr/sbin/ovsdb-server").exists()):
        pytest.fail("ovsdb-server is not installed (apt-get install openvswitch-switch); "
                    "NB tests run against a real server")


@pytest.fixture
def nb_server(tmp_path: Path):
    """A fresh embedded NB server; stopped (by its pidfile) even if the test fails."""
    _need_ovsdb()
    server = NbServer(tmp_path / "nb")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nb(nb_server: NbServer):
    api = nbapi.connect(nb_server.remote)
    yield api
    api.close()


@pytest.fixture
def default_topology() -> topology.Topology:
    return topology.load(DEFAULT_TOPOLOGY)


@pytest.fixture
def loaded_nb(nb, default_topology):
    nb.load_topology(default_topology)
    return nb
