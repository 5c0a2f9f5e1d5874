#!/usr/bin/env bash
# Install what vnet64 needs on Debian 12, then the project in a venv (.venv).
# Idempotent: installs only what is missing. Run as root (apt).
#
# The system-wide Open vSwitch service is not started by the install: the lab
# runs its own ovsdb-server/ovs-vswitchd per node inside network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd: its systemd-analyze checks deploy/systemd/'s units in the unit tests (a container
# image may lack it; installing it does not make it PID 1).
# clang, libbpf-dev and bpftool: the node agent's BPF translator engine (--translator-engine
# bpf: built per host with clang, its counters read with bpftool), which the suite runs too.
APT_PACKAGES=(openvswitch-switch openvswitch-common tayga tcpdump iproute2 ethtool iputils-ping iperf3 nftables
              python3 python3-venv python3-pip systemd clang libbpf-dev bpftool)
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
# The translators' TAYGA: Debian's 0.9.2 with vnet64's RFC 7915 DF / UDP checksum patch
# (seconds; the source by `apt-get source` through a deb-src list of its own: see the script).
if [ "$(id -u)" = 0 ]; then
    ./scripts/build-tayga.sh
elif ! ./scripts/build-tayga.sh --check; then
    echo "setup: not root: the translators' patched TAYGA is not built (scripts/build-tayga.sh as root)" >&2
fi

# The Debian packages the lab relies on, at the versions the suite was last run with. Another
# version may work; if something fails, this is the first thing to compare.
declare -A TESTED=([openvswitch-switch]=3.1.0-2+deb12u1 [openvswitch-common]=3.1.0-2+deb12u1
                   [tayga]=0.9.2-8)
for pkg in "${!TESTED[@]}"; do
    have=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
    if [ "$have" != "${TESTED[$pkg]}" ]; then
        echo "setup: warning: $pkg is ${have:-not installed}, vnet64 was tested with ${TESTED[$pkg]}" >&2
    fi
done

# The Python side comes from the lock (requirements/lock.txt: every package pinned with its
# hashes, pip and setuptools included; `make lock` refreshes it), so every install resolves
# to the same set. The project itself is installed without dependencies and without build
# isolation, so nothing outside the lock is downloaded.
LOCK=requirements/lock.txt
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    python3 -m venv "$VENV"
fi
stamp="$VENV/.vnet64-installed"
if [ ! -f "$stamp" ] || [ "$LOCK" -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing vnet64 and $LOCK into $VENV"
    "$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r "$LOCK"
    # (setuptools' build output, warnings included, is shown only if the install fails)
    if ! out=$("$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . 2>&1); then
        echo "$out" >&2
        exit 1
    fi
    "$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check >&2; exit 1; }
    touch "$stamp"
fi
# The OVSDB IDL's C JSON parser from Debian's python3-openvswitch (the wheel from PyPI
# has none), when it is safe: see the script.
"$VENV/bin/python" scripts/ovs-json-c.py
# Byte-compile the project (an editable install is not): a process started while
# PYTHONDONTWRITEBYTECODE is set - some CI and container images set it - would compile
# every module again at each start, 0.3 s of a restarted controller's resync (py-spy,
# benchmarks/resync.py). Stale files are harmless: Python recompiles a changed module.
"$VENV/bin/python" -m compileall -q -j 0 controller ovs-setup >/dev/null
