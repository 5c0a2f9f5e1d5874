"""Keep the dependencies' warnings off the user's terminal.

A warning raised by a third-party package (a deprecation inside dnspython, eventlet, ...)
is not something a vnet64 user can act on, and it breaks output that scripts read. Every
vnet64 program imports this package before any dependency, so :func:`divert` runs first
and sends such warnings to the ``vnet64.dependency-warnings`` logger at DEBUG (shown with
``-v`` / ``--verbose`` where a program has it) instead of stderr. Warnings raised by
vnet64's own code keep Python's usual path, and a ``-W`` option or ``PYTHONWARNINGS``
given by the user turns the diversion off, so nothing is hidden from someone who asks.

Diverted warnings are also kept (:func:`diverted`): ``tests/test_console_scripts.py``
imports every program and fails when a dependency warns, so a lock refresh that lets in
a noisy release is caught in CI rather than silently hidden.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

LOG = logging.getLogger("vnet64.dependency-warnings")

# vnet64's own packages: controller/vnet64 and ovs-setup/vnet64_lab (both installed)
_OURS = (Path(__file__).resolve().parent,
         Path(__file__).resolve().parents[2] / "ovs-setup" / "vnet64_lab")
_diverted: list[str] = []
_original = warnings.showwarning


def _is_ours(filename: str) -> bool:
    try:
        path = Path(filename).resolve()
    except (OSError, ValueError):
        return False
    return any(path.is_relative_to(root) for root in _OURS)


def _showwarning(message, category, filename, lineno, file=None, line=None):
    if _is_ours(filename) or filename == "<string>" or filename.startswith("<stdin>"):
        _original(message, category, filename, lineno, file, line)
        return
    text = f"{filename}:{lineno}: {category.__name__}: {message}"
    _diverted.append(text)
    LOG.debug("%s", text)


# Dependency warnings known and accepted, each with its reason; ignored outright.
ACCEPTED = (
    # python-ovs imports eventlet's patcher only to detect monkey-patching, and eventlet
    # warns about its own deprecation on import. vnet64 does not use eventlet.
    r"\s*Eventlet is deprecated",
)


def divert() -> None:
    """Send warnings raised outside vnet64 to the debug log (idempotent); a no-op
    when the user chose warning filters (``-W``, ``PYTHONWARNINGS``)."""
    if sys.warnoptions or warnings.showwarning is _showwarning:
        return
    for message in ACCEPTED:
        warnings.filterwarnings("ignore", message=message)
    warnings.showwarning = _showwarning


def diverted() -> list[str]:
    """The warnings kept off stderr so far, as ``file:line: Category: message``."""
    return list(_diverted)
