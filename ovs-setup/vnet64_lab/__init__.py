"""vnet64-lab: every node of a topology brought up for real in network namespaces.

See docs/lab.md. ``Lab(prefix, run_dir).up(topology)`` / ``.down()`` / ``.status()``.
"""

from .lab import DEFAULT_PREFIX, DEFAULT_RUN_DIR, Lab  # noqa: F401
from .sh import LabError  # noqa: F401
