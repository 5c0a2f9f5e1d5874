"""Which TAYGA a translator runs (``translator.tayga_binary()``), and what it says
without vnet64's build: pure, no root needed."""

from __future__ import annotations

import logging

import pytest
from vnet64.node import sh, translator


def executable(path):
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def no_build(tmp_path, monkeypatch):
    monkeypatch.delenv("VNET64_TAYGA", raising=False)
    monkeypatch.setattr(translator, "PATCHED_TAYGA", str(tmp_path / "absent" / "tayga"))
    monkeypatch.setattr(sh, "tool", lambda name: f"/usr/sbin/{name}")


def test_the_patched_build_when_installed(tmp_path, monkeypatch, no_build):
    monkeypatch.setattr(translator, "PATCHED_TAYGA", executable(tmp_path / "tayga"))
    assert translator.tayga_binary() == (str(tmp_path / "tayga"), True)


def test_the_system_tayga_otherwise_with_one_warning(tmp_path, no_build, caplog):
    assert translator.tayga_binary() == ("/usr/sbin/tayga", False)
    t = translator.Translator("host1", "ns", tmp_path, "02:00:00:00:00:01", 1442, True)
    with caplog.at_level(logging.WARNING, logger="vnet64.node.translator"):
        assert t.binary() == t.binary() == "/usr/sbin/tayga"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "is not installed" in warnings[0] and "scripts/build-tayga.sh" in warnings[0]
    assert "sets DF on every IPv6->IPv4 packet" in warnings[0]


def test_the_environment_names_another_binary(tmp_path, monkeypatch, no_build):
    monkeypatch.setenv("VNET64_TAYGA", executable(tmp_path / "mine"))
    assert translator.tayga_binary() == (str(tmp_path / "mine"), False)


def test_a_wrong_environment_path_is_an_error_not_a_fallback(tmp_path, monkeypatch, no_build):
    monkeypatch.setenv("VNET64_TAYGA", str(tmp_path / "nothing"))
    with pytest.raises(sh.CommandError, match="VNET64_TAYGA=.*nothing: not an executable"):
        translator.tayga_binary()
