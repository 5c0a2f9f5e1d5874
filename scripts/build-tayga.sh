#!/usr/bin/env bash
# Build the TAYGA the translators run: Debian 12's TAYGA 0.9.2 (the source of the installed
# tayga package, Debian's patches applied) with vnet64's patches, ovs-setup/tayga-patches/
# (each explains itself in its header):
# - rfc7915-df-udp-checksum: RFC 7915 5.1's DF rule on IPv6 -> IPv4 (DF clear up to 1260
#   bytes, with generated Identifications; no per-address mode after a Fragmentation
#   Needed below 1280), and IPv4 UDP with checksum 0 given one (RFC 6146 3.4) instead of
#   dropped (docs/lab.md "The translator engine");
# - rfc7915-hop-limit-adjust: a "hop-limit-adjust" directive, so that the platform takes
#   one hop off a packet, not three (the agent writes "hop-limit-adjust 1");
# - rfc7915-icmp-extensions: ICMP extensions (RFC 4884) carried through translation
#   (TAYGA 0.9.2 dropped them and zeroed the length field);
# - rfc7915-parameter-problem: Parameter Problem translated both ways with RFC 7915's
#   pointer maps (TAYGA 0.9.2 dropped them).
# Builds in seconds (one small C program, no dependency beyond libc).
#
# The source comes from Debian's archive by apt itself (`apt-get source`), through a
# source list of vnet64's own that names only `deb-src` of this release's main component
# (and its -updates and -security suites, where a newer tayga would come from) in
# $VNET64_APT_CACHE (default /var/cache/vnet64/apt-src; mirrors $VNET64_DEBIAN_MIRROR,
# default http://deb.debian.org/debian, and $VNET64_DEBIAN_SECURITY_MIRROR): the
# system's apt configuration is left alone.
# apt checks the files against the signed Release, as for any package.
#
# Installs $VNET64_TAYGA_DIR/tayga (default /usr/local/libexec/vnet64, beside the
# patched ovs-vswitchd), where the node agent looks for it. Idempotent: rebuilds only
# when the patches or the installed tayga version change. Run as root (apt, /usr/local).
#   scripts/build-tayga.sh           build if needed
#   scripts/build-tayga.sh --check   exit 0 if the installed build is current, else 1
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${VNET64_TAYGA_DIR:-/usr/local/libexec/vnet64}
CACHE=${VNET64_APT_CACHE:-/var/cache/vnet64/apt-src}
MIRROR=${VNET64_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${VNET64_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
shopt -s nullglob
PATCHES=("$PWD"/ovs-setup/tayga-patches/*.patch)
if ! version=$(dpkg-query -W -f='${Version}' tayga 2>/dev/null) || [ -z "$version" ]; then
    echo "build-tayga: tayga is not installed (scripts/setup.sh installs it)" >&2
    exit 1
fi
want="tayga $version; patches $(cat "${PATCHES[@]}" | sha256sum | cut -d' ' -f1)"
if [ -x "$DEST/tayga" ] && [ "$(cat "$DEST/tayga.built" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
if [ "${1:-}" = --check ]; then
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "build-tayga: need root to build and install $DEST/tayga" >&2
    exit 1
fi
echo "build-tayga: building tayga ($version + ${#PATCHES[@]} vnet64 patch(es)) into $DEST"

missing=()
for pkg in build-essential dpkg-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null || apt-get update
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    }
fi

# vnet64's own deb-src list (this release's main component, nothing else) and package
# lists, in $CACHE: `apt-get source` there, with the system's keyring.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
mkdir -p "$CACHE/lists/partial"
cat > "$CACHE/deb-src.sources.new" <<EOF
Types: deb-src
URIs: $MIRROR
Suites: $codename $codename-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: $SECURITY_MIRROR
Suites: $codename-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
mv "$CACHE/deb-src.sources.new" "$CACHE/deb-src.sources"
APT=(apt-get -q -o Dir::Etc::SourceList="$CACHE/deb-src.sources" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$CACHE/lists" -o APT::Sandbox::User=root)

work=$(mktemp -d /tmp/vnet64-tayga-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
log="$work/build.log"
fail() { echo "build-tayga: $1 failed; the end of its log:" >&2; tail -40 "$log" >&2; exit 1; }
# the lists are refreshed only when the source of this version is not found in them
(cd "$work" && "${APT[@]}" source --download-only "tayga=$version" >> "$log" 2>&1) || {
    "${APT[@]}" update >> "$log" 2>&1 || fail "apt-get update (deb-src of $MIRROR $codename)"
    (cd "$work" && "${APT[@]}" source --download-only "tayga=$version" >> "$log" 2>&1) \
        || fail "apt-get source tayga=$version"
}
dsc=("$work"/tayga_*.dsc)
dpkg-source -x "${dsc[0]}" "$work/tayga" >> "$log" 2>&1 || fail "dpkg-source -x (Debian's patches)"
cd "$work/tayga"
for p in "${PATCHES[@]}"; do
    patch -p1 --forward --quiet < "$p" >> "$log" 2>&1 || fail "patch $(basename "$p")"
done
./configure --prefix=/usr >> "$log" 2>&1 || fail configure
make -j"$(nproc)" tayga >> "$log" 2>&1 || fail "make tayga"

install -d "$DEST"
install -m 755 tayga "$DEST/tayga.new"
mv "$DEST/tayga.new" "$DEST/tayga"
echo "$want" > "$DEST/tayga.built"
echo "build-tayga: installed $DEST/tayga"
