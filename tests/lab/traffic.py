"""Moved to the lab package: ``from vnet64_lab.traffic import ...`` (the demo uses the
same helpers). This name stays so imports written against it keep working."""

from vnet64_lab.traffic import *  # noqa: F403
from vnet64_lab.traffic import _COUNTERS, _PAIR_FLOW  # noqa: F401
