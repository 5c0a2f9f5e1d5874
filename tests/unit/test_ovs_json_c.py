"""scripts/ovs-json-c.py: Debian's C JSON parser goes into the venv only when it is safe."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sysconfig
from pathlib import Path

import ovs.json
import pytest

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


@pytest.fixture
def script():
    spec = importlib.util.spec_from_file_location("ovs_json_c", ROOT / "scripts" / "ovs-json-c.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def venv_ovs(tmp_path):
    """A copy of the venv's ovs package without any C parser, importable from tmp_path/site."""
    dest = tmp_path / "site" / "ovs"
    shutil.copytree(Path(ovs.json.__file__).parent, dest,
                    ignore=shutil.ignore_patterns("_json*", "__pycache__"))
    return dest


def debian_like(tmp_path, json_py: bytes, so: bytes | None) -> Path:
    d = tmp_path / "debian" / "ovs"
    d.mkdir(parents=True)
    (d / "json.py").write_bytes(json_py)
    if so is not None:
        (d / f"_json{SUFFIX}").write_bytes(so)
    return d


def env_for(venv_ovs: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(venv_ovs.parent)}


def test_without_debians_parser_nothing_is_copied(script, tmp_path, venv_ovs):
    debian = debian_like(tmp_path, (venv_ovs / "json.py").read_bytes(), None)
    assert "keeps its pure-Python JSON parser" in script.install(debian, venv_ovs, env_for(venv_ovs))
    assert not list(venv_ovs.glob("_json*"))


def test_a_different_python_side_is_not_mixed_with_it(script, tmp_path, venv_ovs):
    debian = debian_like(tmp_path, b"# another json.py\n", b"\x7fELF")
    assert "differs" in script.install(debian, venv_ovs, env_for(venv_ovs))
    assert not list(venv_ovs.glob("_json*"))


def test_a_parser_that_fails_its_self_test_is_taken_out_again(script, tmp_path, venv_ovs):
    debian = debian_like(tmp_path, (venv_ovs / "json.py").read_bytes(), b"not a shared object")
    message = script.install(debian, venv_ovs, env_for(venv_ovs))
    assert "failed the self-test" in message and "not loaded" in message
    assert not list(venv_ovs.glob("_json*"))


DEBIAN_SO = Path("/usr/lib/python3/dist-packages/ovs") / f"_json{SUFFIX}"


@pytest.mark.skipif(not DEBIAN_SO.exists(), reason="python3-openvswitch for this Python is not installed")
def test_debians_parser_passes_and_stays(script, venv_ovs):
    if (DEBIAN_SO.parent / "json.py").read_bytes() != (venv_ovs / "json.py").read_bytes():
        pytest.skip("this venv's ovs/json.py is not Debian's: setup keeps the pure-Python parser")
    message = script.install(DEBIAN_SO.parent, venv_ovs, env_for(venv_ovs))
    assert "uses the C JSON parser" in message, message
    assert (venv_ovs / DEBIAN_SO.name).exists()
