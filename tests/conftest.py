"""Shared fixtures: a real ovsdb-server with the NB schema, started in a temporary directory.

``--lab-control node|central`` (else ``$VNET64_LAB_CONTROL``, else ``node``): how every lab
the suite brings up runs its controllers - one per node, or one central controller. It is
put in the environment, so the labs that benchmarks and demos started by the tests bring
up follow it too.

``--translator-engine tayga|bpf`` (else ``$VNET64_TRANSLATOR_ENGINE``, else ``tayga``): the
engine every lab host's translator runs, put in the environment the same way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vnet64 import topology
from vnet64.nb import api as nbapi
from vnet64.nb.server import NbServer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOPOLOGY = ROOT / "topologies" / "two-tenants.yaml"
LAB_CONTROL_ENV = "VNET64_LAB_CONTROL"   # vnet64_lab.lab.CONTROL_ENV
ENGINE_ENV = "VNET64_TRANSLATOR_ENGINE"  # vnet64.node.translator.ENGINE_ENV


def pytest_addoption(parser):
    parser.addoption("--lab-control", choices=("node", "central"),
                     help="lab tests: a controller per node (default, also "
                          f"${LAB_CONTROL_ENV}) or one central controller")
    parser.addoption("--translator-engine", choices=("tayga", "bpf"),
                     help="lab tests: the hosts' translator engine (default tayga, also "
                          f"${ENGINE_ENV})")


def pytest_configure(config):
    mode = config.getoption("--lab-control")
    if mode:
        os.environ[LAB_CONTROL_ENV] = mode
    engine = config.getoption("--translator-engine")
    if engine:
        os.environ[ENGINE_ENV] = engine


def pytest_report_header(config):
    return (f"lab control: {os.environ.get(LAB_CONTROL_ENV) or 'node'}, translator engine: "
            f"{os.environ.get(ENGINE_ENV) or 'tayga'}")


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
