"""Certificates for TLS tests, made with Open vSwitch's own ``ovs-pki`` in a directory.

    pki = Pki.make(tmp_path / "pki")          # ovs-pki init: a switch CA and a controller CA
    key, cert = pki.issue("nb", "controller")  # ovs-pki req+sign, signed by the controller CA
    pki.ca("controller")                       # that CA's certificate

A second ``Pki.make`` elsewhere is "another CA": its certificates are refused by peers
that trust only the first one's.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Pki:
    dir: Path

    @classmethod
    def make(cls, directory: Path) -> "Pki":
        if not shutil.which("ovs-pki"):
            pytest.fail("ovs-pki is not installed (apt-get install openvswitch-common)")
        directory.mkdir(parents=True, exist_ok=True)
        pki = cls(directory)
        pki._run("init")
        return pki

    def _run(self, *args: str) -> None:
        proc = subprocess.run(["ovs-pki", f"--dir={self.dir / 'ca'}", "--force", *args],
                              cwd=self.dir, capture_output=True, text=True, timeout=60)
        if proc.returncode:
            raise RuntimeError(f"ovs-pki {' '.join(args)}: {proc.stderr.strip()}")

    def issue(self, name: str, kind: str = "controller") -> tuple[Path, Path]:
        """``NAME-privkey.pem`` and ``NAME-cert.pem``, signed by the ``kind`` CA
        (``switch`` or ``controller``)."""
        self._run("req+sign", name, kind)
        return self.dir / f"{name}-privkey.pem", self.dir / f"{name}-cert.pem"

    def ca(self, kind: str = "controller") -> Path:
        return self.dir / "ca" / f"{kind}ca" / "cacert.pem"
