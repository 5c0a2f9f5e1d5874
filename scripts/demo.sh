#!/usr/bin/env bash
# The main demo (control plane for now): a fresh embedded NB, the default
# topology loaded, both subscriptions shown with their platform IPv6 addresses
# (different, although both VMs are 10.0.0.4), each address decoded back.
set -euo pipefail
cd "$(dirname "$0")/.."
TOPOLOGY=${1:-topologies/two-tenants.yaml}
VNET64="${VENV:-.venv}/bin/vnet64"

export VNET64_RUN_DIR=$(mktemp -d /tmp/vnet64-demo.XXXXXX)
cleanup() { "$VNET64" nb stop >/dev/null 2>&1 || true; rm -rf "$VNET64_RUN_DIR"; }
trap cleanup EXIT

step() { printf '\n\033[1m$ vnet64 %s\033[0m\n' "$*"; "$VNET64" "$@"; }

echo "vnet64 demo: fresh NB in $VNET64_RUN_DIR, topology $TOPOLOGY"
step nb start
step load "$TOPOLOGY"
step vnet list
step vm list
step service list
step subscription list
step host-mapping list
for addr in $("$VNET64" subscription list --json | "${VENV:-.venv}/bin/python" -c \
        'import json,sys; print(" ".join(s["ipv6"] for s in json.load(sys.stdin)))'); do
    step address decode "$addr"
done
a=$("$VNET64" show a-vm1 --json | "${VENV:-.venv}/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["platform_ipv6"])')
b=$("$VNET64" show b-vm1 --json | "${VENV:-.venv}/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["platform_ipv6"])')
if [ "$a" = "$b" ]; then
    echo "demo FAILED: a-vm1 and b-vm1 got the same platform address $a" >&2
    exit 1
fi
echo
echo "a-vm1 and b-vm1 are both 10.0.0.4; the service reaches them as $a and $b."
