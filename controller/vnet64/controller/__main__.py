"""``python -m vnet64.controller``: the same as the ``vnet64-controller`` command."""

import sys

from .launcher import main

sys.exit(main())
