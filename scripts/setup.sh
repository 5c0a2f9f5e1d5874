#!/usr/bin/env bash
# Install what vnet64 needs on Debian 12, then the project in a venv (.venv).
# Idempotent: installs only what is missing. Run as root (apt).
#
# The system-wide Open vSwitch service is not started by the install: the lab
# runs its own ovsdb-server/ovs-vswitchd per node inside network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(openvswitch-switch openvswitch-common tayga tcpdump iproute2 ethtool iputils-ping iperf3 nftables
              python3 python3-venv python3-pip)
VENV=${VENV:-.venv}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    # Keep package scripts from starting the system OVS daemons (policy-rc.d 101 = deny).
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    trap '[ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || apt-get update
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# The lab's ovs-vswitchd: the system's OVS with vnet64's conntrack patch (see the script).
# Building needs root; unit tests do not need it, so without root setup goes on.
if [ "$(id -u)" = 0 ]; then
    ./scripts/build-ovs.sh
elif ! ./scripts/build-ovs.sh --check; then
    echo "setup: not root: the lab's patched ovs-vswitchd is not built (scripts/build-ovs.sh as root)" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    python3 -m venv "$VENV"
fi
stamp="$VENV/.vnet64-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing vnet64 into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e '.[test]'
    touch "$stamp"
fi
# The OVSDB IDL's C JSON parser from Debian's python3-openvswitch (the wheel from PyPI
# has none), when it is safe: see the script.
"$VENV/bin/python" scripts/ovs-json-c.py
