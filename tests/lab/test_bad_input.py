"""Bad topologies are rejected with a message naming file:line:field - before anything exists.

These need neither root nor OVS: validation runs before the first namespace.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from vnet64.topology import TopologyError
from vnet64_lab import Lab, sh

from .conftest import ROOT

BASE = (ROOT / "topologies" / "two-tenants.yaml").read_text()
PREFIX = "v64b-"


def _variant(tmp_path: Path, old: str = "", new: str = "", lab: str = "") -> Path:
    if old:
        assert old in BASE, f"test setup: {old!r} not in two-tenants.yaml"
    text = BASE.replace(old, new, 1) if old else BASE
    if lab:
        text += "\nlab:\n" + "".join(f"  {line}\n" for line in lab.splitlines())
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


MAIN_VALIDATOR_CASES = {
    "unknown-vnet": ("{name: b-vm1, vnet: customer-b", "{name: b-vm1, vnet: customer-z",
                     r"bad\.yaml:\d+: vms\[1\]\.vnet: unknown VNet 'customer-z'"),
    "vm-outside-vnet": ("{name: a-vm1, vnet: customer-a, ipv4: 10.0.0.4",
                        "{name: a-vm1, vnet: customer-a, ipv4: 10.9.0.4",
                        r"bad\.yaml:\d+: vms\[0\]\.ipv4: .*10\.9\.0\.4"),
    "duplicate-name": ("{name: b-vm1,", "{name: a-vm1,",
                       r"bad\.yaml:\d+: vms\[1\]\.name: duplicate VM a-vm1"),
    "duplicate-underlay-ip": ("underlay_ip: 192.168.64.12", "underlay_ip: 192.168.64.11",
                              r"bad\.yaml:\d+: nodes\[2\]\.underlay_ip: duplicate underlay IP"),
    "endpoint-without-ipv6": ('{name: svc1, ipv6: "fd00:5e:1::10", host: host2}',
                              "{name: svc1, host: host2}",
                              r"bad\.yaml:\d+: services\[0\]\.endpoints\[0\]: .*no ipv6"),
    "unknown-host": ("ipv4: 10.0.0.4, host: host1}", "ipv4: 10.0.0.4, host: host9}",
                     r"bad\.yaml:\d+: vms\[0\]\.host: unknown host 'host9'"),
}

LAB_CASES = {
    "unknown-key": ("underlay_mtuu: 1500", r"bad\.yaml:\d+: lab\.underlay_mtuu: unknown lab setting"),
    "node-outside-underlay": ("underlay_cidr: 192.168.99.0/24",
                              r"bad\.yaml:\d+: lab\.underlay_cidr: node appliance's underlay_ip "
                              r"192\.168\.64\.10 is outside the underlay 192\.168\.99\.0/24"),
    "not-a-network": ("underlay_cidr: 192.168.64.1/24",
                      r"lab\.underlay_cidr: must be an IPv4 network"),
    "management-overlaps-underlay": ("management_cidr: 192.168.64.0/25",
                                     r"lab\.management_cidr: .* overlaps the underlay"),
    "management-too-small": ("management_cidr: 172.31.255.0/29",
                             r"lab\.management_cidr: .* too small for 3 nodes"),
    "geneve-options-not-words": ("geneve_option_bytes: 10",
                                 r"lab\.geneve_option_bytes: must be a multiple of 4"),
    "geneve-options-no-room-for-the-token": ("geneve_option_bytes: 4",
                                             r"lab\.geneve_option_bytes: must be between 8 and 252"),
    "mtu-too-small-for-ipv6": ("underlay_mtu: 1300",
                               r"lab\.underlay_mtu: must be between 1338 and 9000, got 1300"),
    "mtu-not-a-number": ("underlay_mtu: big", r"lab\.underlay_mtu: must be an integer"),
    "translator-inside-a-vnet": ("translator_ipv4: 10.0.0.9",
                                 r"lab\.translator_ipv4: 10\.0\.0\.9 lies in VNet customer-a"),
}


def _assert_nothing_created(run_dir: Path) -> None:
    assert not run_dir.exists(), "the run directory was created for a bad topology"
    assert not [ns for ns in sh.netns_list() if ns.startswith(PREFIX)], "namespaces were created"


@pytest.mark.parametrize("case", sorted(MAIN_VALIDATOR_CASES))
def test_topology_errors_name_line_and_field(tmp_path, case):
    old, new, message = MAIN_VALIDATOR_CASES[case]
    run_dir = tmp_path / "run"
    with pytest.raises(TopologyError, match=message):
        Lab(PREFIX, run_dir).up(_variant(tmp_path, old, new))
    _assert_nothing_created(run_dir)


@pytest.mark.parametrize("case", sorted(LAB_CASES))
def test_bad_lab_settings_are_rejected_before_anything_exists(tmp_path, case):
    setting, message = LAB_CASES[case]
    run_dir = tmp_path / "run"
    with pytest.raises(TopologyError, match=message):
        Lab(PREFIX, run_dir).up(_variant(tmp_path, lab=setting))
    _assert_nothing_created(run_dir)


def test_lab_setting_error_points_at_its_line(tmp_path):
    path = _variant(tmp_path, lab="underlay_mtu: 1500\ngeneve_option_bytes: 6")
    line = path.read_text().splitlines().index("  geneve_option_bytes: 6") + 1
    with pytest.raises(TopologyError, match=rf"bad\.yaml:{line}: lab\.geneve_option_bytes"):
        Lab(PREFIX, tmp_path / "run").up(path)


def test_cli_reports_bad_input_with_exit_status_2(tmp_path):
    path = _variant(tmp_path, "underlay_ip: 192.168.64.12", "underlay_ip: 192.168.64.11")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "vnet64_lab.cli", "--prefix", PREFIX,
                           "--run-dir", str(run_dir), "up", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "invalid topology: bad.yaml:" in proc.stderr and "duplicate underlay IP" in proc.stderr
    _assert_nothing_created(run_dir)


def test_missing_file_is_bad_input(tmp_path):
    with pytest.raises(TopologyError, match="cannot read topology file"):
        Lab(PREFIX, tmp_path / "run").up(tmp_path / "nope.yaml")
    _assert_nothing_created(tmp_path / "run")
