"""Give the venv's OVSDB IDL the C JSON parser, when it safely can.

PyPI's ``ovs`` wheel is pure Python: on a large NB most of the controller's time goes
to ``ovs.json`` (benchmarks/growth.py: 10,000 subscriptions programmed in 23.3 s with
it, 12.3 s with the C parser, the controller's CPU 0.53x). Debian's python3-openvswitch
(the same Open vSwitch as the daemons; openvswitch-switch depends on it) carries the
C parser, ``ovs/_json``. It is copied into the venv's ``ovs`` package only if

- it is built for this Python (same extension suffix),
- its Python side is the very same: Debian's ``ovs/json.py`` equals the venv's,
- and, loaded, it parses a sample exactly as the pure-Python parser does.

Otherwise the venv keeps the pure-Python parser (slower, same results) and this says
why. Idempotent; run by scripts/setup.sh. Exit status 0 either way.
"""

from __future__ import annotations

import filecmp
import subprocess
import sys
import sysconfig
from pathlib import Path

DEBIAN = Path("/usr/lib/python3/dist-packages/ovs")

SELF_TEST = r'''
import ovs.json as j
assert j.PARSER == j.PARSER_C, "not loaded"
text = ('{"a": [1, -2.5e3, true, false, null, "x\\u00e9\\n", {"b": []}], '
        '"uuid": ["uuid", "2f1a8c3e-0000-4000-8000-000000000001"], "n": 18446744073709551615}')
c = j.from_string(text)
j.PARSER = j.PARSER_PY
p = j.from_string(text)
assert c == p, (c, p)
assert isinstance(j.from_string('{"a": '), str)     # an error is a message, in both
'''


def install(debian: Path, venv_ovs: Path, env: dict | None = None) -> str:
    """Copy ``debian``'s C parser into the ``ovs`` package at ``venv_ovs`` if safe
    (``env`` for the self-test's interpreter, which must import that package)."""
    so = debian / f"_json{sysconfig.get_config_var('EXT_SUFFIX')}"
    if not so.exists():
        return (f"setup: no {so} (python3-openvswitch for this Python): "
                "the OVSDB IDL keeps its pure-Python JSON parser")
    if not filecmp.cmp(debian / "json.py", venv_ovs / "json.py", shallow=False):
        return (f"setup: {debian}/json.py differs from the venv's ovs/json.py: "
                "the OVSDB IDL keeps its pure-Python JSON parser")
    target = venv_ovs / so.name
    target.write_bytes(so.read_bytes())
    test = subprocess.run([sys.executable, "-c", SELF_TEST], capture_output=True, text=True,
                          env=env)
    if test.returncode != 0:
        target.unlink()
        return ("setup: Debian's C JSON parser failed the self-test; the OVSDB IDL keeps "
                f"its pure-Python parser:\n{test.stderr.strip()}")
    return f"setup: the OVSDB IDL uses the C JSON parser ({so} -> {target})"


def main() -> int:
    import ovs.json
    if ovs.json.PARSER != ovs.json.PARSER_C:
        print(install(DEBIAN, Path(ovs.json.__file__).parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
