#!/usr/bin/env bash
# The main demo (`make demo`): brings the topology up in the lab, sends TCP, UDP and
# ping from the service endpoint to each subscribed VM, and prints every hop of the
# patent's FIG. 2A/2B (210 ... 262) from real tcpdump captures, then the flows that
# carried them; tears the lab down at the end unless --keep.
#   scripts/demo.sh [TOPOLOGY] [--keep] [--endpoint NAME] [--vm NAME]...
# The program is vnet64_lab/demo.py (python -m vnet64_lab.demo --help).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${VENV:-.venv}/bin/python" -m vnet64_lab.demo "$@"
