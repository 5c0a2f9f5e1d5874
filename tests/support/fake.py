"""The unit tests' strict fake switch: ``vnet64.controller.sim`` under the names the
tests know (the simulation moved into the product for ``vnet64-lab trace``)."""

from vnet64.controller.sim import *  # noqa: F401,F403
from vnet64.controller.sim import SimError as FakeTableError  # noqa: F401
from vnet64.controller.sim import SimSwitch as FakeSwitch  # noqa: F401
