"""Certificates for TLS tests, made with Open vSwitch's own ``ovs-pki`` in a directory.

The implementation is the lab's (``vnet64_lab.pki``, which the lab over TLS uses too):

    pki = Pki.make(tmp_path / "pki")          # ovs-pki init: a switch CA and a controller CA
    key, cert = pki.issue("nb", "controller")  # ovs-pki req+sign, signed by the controller CA
    pki.ca("controller")                       # that CA's certificate

A second ``Pki.make`` elsewhere is "another CA": its certificates are refused by peers
that trust only the first one's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vnet64_lab import pki as _pki


class Pki(_pki.Pki):
    @classmethod
    def make(cls, directory: Path) -> "Pki":
        if not shutil.which("ovs-pki"):
            pytest.fail("ovs-pki is not installed (apt-get install openvswitch-common)")
        return super().make(directory)
