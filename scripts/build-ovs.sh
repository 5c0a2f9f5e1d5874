#!/usr/bin/env bash
# Build the ovs-vswitchd the lab runs: Debian 12's Open vSwitch (the source of the
# installed openvswitch-switch, from the openvswitch-source package) with vnet64's
# patches, ovs-setup/patches/*.patch (each explains itself in its header):
# - conntrack-nat: OVS 3.1's userspace conntrack gives a re-opened TCP connection
#   another NAT port, which stalls sustained connection load, and translates no ICMP
#   echo identifier (docs/lab.md "Sustained load");
# - conntrack-related-icmpv6: OVS 3.1's userspace conntrack corrupts the ICMPv6 errors
#   it NATs (a Packet Too Big's MTU, the quoted source address), which broke PMTUD
#   across the IPv6 zones (docs/lab.md "ICMPv6 errors and PMTUD");
# - conntrack-tcp-simultaneous-open: OVS 3.1's userspace conntrack takes a SYN in the
#   reply direction as new and leaves that peer untracked, so the SYN-ACK after it is
#   invalid: a VM could not open a connection simultaneously with a service
#   (docs/lab.md "TCP simultaneous open");
# - netdev-linux-rx-buffers: the main thread allocated and freed 32 receive buffers
#   per idle port on every wakeup (docs/lab.md "Idle ports and the main thread").
# Only ovs-vswitchd is built (~2 min on 2 cores); every other OVS tool stays the system's.
#
# Installs $VNET64_OVS_DIR/ovs-vswitchd (default /usr/local/libexec/vnet64), where
# the lab looks for it. Idempotent: rebuilds only when the patches or the installed
# openvswitch-switch version change. Run as root (apt, /usr/local).
#   scripts/build-ovs.sh           build if needed
#   scripts/build-ovs.sh --check   exit 0 if the installed build is current, else 1
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${VNET64_OVS_DIR:-/usr/local/libexec/vnet64}
shopt -s nullglob
PATCHES=("$PWD"/ovs-setup/patches/*.patch)
if ! version=$(dpkg-query -W -f='${Version}' openvswitch-switch 2>/dev/null) || [ -z "$version" ]; then
    echo "build-ovs: openvswitch-switch is not installed (scripts/setup.sh installs it)" >&2
    exit 1
fi
want="openvswitch-switch $version; patches $(cat "${PATCHES[@]}" | sha256sum | cut -d' ' -f1)"
if [ -x "$DEST/ovs-vswitchd" ] && [ "$(cat "$DEST/ovs-vswitchd.built" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
if [ "${1:-}" = --check ]; then
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "build-ovs: need root to build and install $DEST/ovs-vswitchd" >&2
    exit 1
fi
echo "build-ovs: building ovs-vswitchd ($version + ${#PATCHES[@]} vnet64 patch(es)) into $DEST"

BUILD_PACKAGES=(build-essential autoconf automake libtool pkg-config libssl-dev libcap-ng-dev)
missing=()
for pkg in "${BUILD_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# the source of exactly the installed version (Debian's own patches are applied in it)
if [ "$(dpkg-query -W -f='${Version}' openvswitch-source 2>/dev/null)" != "$version" ]; then
    missing+=("openvswitch-source=$version")
fi
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # setup.sh refreshes the package lists only when it installs something itself
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null || apt-get update
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    }
fi

work=$(mktemp -d /tmp/vnet64-ovs-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
tarball=(/usr/src/openvswitch/openvswitch.tar.*)
tar xf "${tarball[0]}" -C "$work"
cd "$work/openvswitch"
log="$work/build.log"
fail() { echo "build-ovs: $1 failed; the end of its log:" >&2; tail -40 "$log" >&2; exit 1; }
for p in "${PATCHES[@]}"; do
    patch -p1 --forward --quiet < "$p" >> "$log" 2>&1 || fail "patch $(basename "$p")"
done
./configure --prefix=/usr --localstatedir=/var --sysconfdir=/etc --enable-ssl >> "$log" 2>&1 \
    || fail configure
# Generated headers first (the full build's BUILT_SOURCES), then vswitchd alone.
make -j"$(nproc)" ofproto/ipfix-entities.def include/odp-netlink.h include/odp-netlink-macros.h \
    lib/vswitch-idl.c lib/vswitch-idl.h lib/ovsdb-server-idl.c lib/ovsdb-server-idl.h >> "$log" 2>&1 \
    || fail "make (generated headers)"
make -j"$(nproc)" vswitchd/ovs-vswitchd >> "$log" 2>&1 || fail "make vswitchd/ovs-vswitchd"

install -d "$DEST"
install -m 755 vswitchd/ovs-vswitchd "$DEST/ovs-vswitchd.new"
mv "$DEST/ovs-vswitchd.new" "$DEST/ovs-vswitchd"
echo "$want" > "$DEST/ovs-vswitchd.built"
echo "build-ovs: installed $DEST/ovs-vswitchd"
