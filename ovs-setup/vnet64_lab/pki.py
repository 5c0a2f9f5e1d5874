"""Certificates made with Open vSwitch's own ``ovs-pki``, in one directory.

    pki = Pki.make(run_dir / "pki")             # ovs-pki init: a switch CA and a controller CA
    key, cert = pki.issue("nb", "controller")   # ovs-pki req+sign, signed by the controller CA
    pki.issue_many([("agent-host1", "controller"), ("switch-host1", "switch")])
    pki.ca("controller")                        # that CA's certificate

The lab over TLS (``Lab(tls=True)``, :class:`LabPki`) and the TLS tests share it. A
second ``Pki.make`` elsewhere is "another CA": its certificates are refused by peers
that trust only the first one's.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .sh import LabError

KINDS = ("switch", "controller")


@dataclass(frozen=True)
class Pki:
    dir: Path

    @classmethod
    def make(cls, directory: str | Path) -> Pki:
        """``ovs-pki init`` in ``directory/ca`` (kept if it is there already)."""
        if not shutil.which("ovs-pki"):
            raise LabError("ovs-pki is not installed (apt-get install openvswitch-common)")
        pki = cls(Path(directory).absolute())
        pki.dir.mkdir(parents=True, exist_ok=True)
        if not all(pki.ca(kind).exists() for kind in KINDS):
            pki._run("init")
        return pki

    def _run(self, *args: str) -> None:
        proc = subprocess.run(["ovs-pki", f"--dir={self.dir / 'ca'}", "--force",
                               f"--log={self.dir / 'ovs-pki.log'}", *args],
                              cwd=self.dir, capture_output=True, text=True, timeout=60)
        if proc.returncode:
            raise LabError(f"ovs-pki {' '.join(args)}: {proc.stderr.strip()}")

    def key(self, name: str) -> Path:
        return self.dir / f"{name}-privkey.pem"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}-cert.pem"

    def issue(self, name: str, kind: str = "controller") -> tuple[Path, Path]:
        """``NAME-privkey.pem`` and ``NAME-cert.pem``, signed by the ``kind`` CA
        (``switch`` or ``controller``)."""
        return self.issue_many([(name, kind)])[0]

    def issue_many(self, wanted: list[tuple[str, str]]) -> list[tuple[Path, Path]]:
        """Several certificates: the keys and requests made at once (``ovs-pki req``, each
        in its own temporary directory), then signed one after the other (the CA's serial
        and index are one file each)."""
        for name, kind in wanted:
            if kind not in KINDS:
                raise LabError(f"certificate {name}: kind must be switch or controller, not {kind!r}")
        for name, _ in wanted:
            for f in (self.key(name), self.cert(name), self.dir / f"{name}-req.pem"):
                f.unlink(missing_ok=True)
        with ThreadPoolExecutor(max_workers=min(8, len(wanted) or 1)) as pool:
            list(pool.map(lambda nk: self._run("req", nk[0]), wanted))
        for name, kind in wanted:
            self._run("--batch", "sign", name, kind)
        return [(self.key(name), self.cert(name)) for name, _ in wanted]

    def ca(self, kind: str = "controller") -> Path:
        """The certificate of the ``kind`` CA (what a peer of that kind's certificates
        is given to verify them)."""
        return self.dir / "ca" / f"{kind}ca" / "cacert.pem"
