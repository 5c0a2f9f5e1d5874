"""Which ovs-vswitchd the lab runs (``sh.vswitchd()``): pure, no root needed."""

from __future__ import annotations

import pytest
from vnet64_lab import sh


def executable(path):
    path.write_text("#!/bin/sh\necho 'ovs-vswitchd (Open vSwitch) 3.1.0'\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def no_build(tmp_path, monkeypatch):
    monkeypatch.delenv("VNET64_OVS_VSWITCHD", raising=False)
    monkeypatch.setattr(sh, "PATCHED_VSWITCHD", str(tmp_path / "absent" / "ovs-vswitchd"))


def test_the_patched_build_when_installed(tmp_path, monkeypatch, no_build):
    monkeypatch.setattr(sh, "PATCHED_VSWITCHD", executable(tmp_path / "ovs-vswitchd"))
    assert sh.vswitchd() == (str(tmp_path / "ovs-vswitchd"), True)
    assert sh.vswitchd_version() == \
        f"ovs-vswitchd (Open vSwitch) 3.1.0 + vnet64 patches ({tmp_path / 'ovs-vswitchd'})"


def test_the_system_build_otherwise(no_build):
    path, patched = sh.vswitchd()
    assert path == sh.tool("ovs-vswitchd") and not patched


def test_the_environment_names_another_binary(tmp_path, monkeypatch, no_build):
    monkeypatch.setenv("VNET64_OVS_VSWITCHD", executable(tmp_path / "mine"))
    assert sh.vswitchd() == (str(tmp_path / "mine"), False)


def test_a_wrong_environment_path_is_an_error_not_a_fallback(tmp_path, monkeypatch, no_build):
    monkeypatch.setenv("VNET64_OVS_VSWITCHD", str(tmp_path / "nothing"))
    with pytest.raises(sh.LabError, match="VNET64_OVS_VSWITCHD=.*nothing: not an executable"):
        sh.vswitchd()
