#!/usr/bin/env bash
# Install vnet64's systemd units and example configuration files; --help says what it
# does. Tested by tests/unit/test_deploy_units.py (into a temporary --root).
set -euo pipefail

PROG=install-units.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
UNIT_SRC=$HERE/systemd
CONFIG_SRC=$HERE/config
DEFAULT_VENV=/opt/vnet64/venv       # the path the shipped units name
UNIT_DIR=/etc/systemd/system
CONFIG_DIR=/etc/vnet64

usage() {
    cat <<EOF
usage: deploy/install-units.sh [--root DIR] [--venv DIR] [--no-reload]

Installs vnet64's systemd units and their configuration files, and starts nothing:
  every unit file of deploy/systemd/  into $UNIT_DIR/, replacing an older copy
                                     (local changes belong in drop-ins: systemctl edit UNIT)
  every file of deploy/config/        into $CONFIG_DIR/, only where there is none yet:
                                     an existing configuration file is never overwritten
Then, if a unit file changed, 'systemctl daemon-reload' - only when installing into /
and systemd is running. Running it again changes nothing.

  --root DIR   install under DIR instead of / (a package build, tests); no daemon-reload
  --venv DIR   the venv whose bin/ holds vnet64-controller and vnet64-node (default
               $DEFAULT_VENV): the units' ExecStart= lines are written with it.
               Installing into /, a venv without them is warned about (not refused)
  --no-reload  do not run 'systemctl daemon-reload'
  -h, --help   show this help

Next, as deploy/README.md says: edit $CONFIG_DIR/node.env and $CONFIG_DIR/controller.conf,
then, on every node:  systemctl enable --now vnet64-node vnet64-controller@NODE
(or one central controller: systemctl enable --now vnet64-controller).
EOF
}

die() {
    echo "$PROG: error: $*" >&2
    exit 2
}

root=/
venv=$DEFAULT_VENV
reload=1
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --venv) [ $# -ge 2 ] || die "--venv needs a directory"; venv=$2; shift 2 ;;
        --venv=*) venv=${1#--venv=}; shift ;;
        --no-reload) reload=0; shift ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

# The venv goes into ExecStart= as it is: an absolute path without spaces, quotes, '%'
# (a unit specifier) or '$' (a variable).
venv=${venv%/}
[[ $venv =~ ^/[A-Za-z0-9._/+-]+$ ]] ||
    die "--venv wants an absolute path of letters, digits and . _ / + - (got '$venv')"
[ -n "$root" ] && [ -d "$root" ] || die "--root $root: no such directory"
root=$(cd "$root" && pwd)
[ "$root" = / ] && prefix= || prefix=$root

shopt -s nullglob
units=("$UNIT_SRC"/*.service "$UNIT_SRC"/*.socket "$UNIT_SRC"/*.target "$UNIT_SRC"/*.timer \
       "$UNIT_SRC"/*.path)
configs=("$CONFIG_SRC"/*)
shopt -u nullglob
[ ${#units[@]} -gt 0 ] || die "no unit files in $UNIT_SRC"

if [ -z "$prefix" ]; then
    for tool in vnet64-controller vnet64-node; do
        [ -x "$venv/bin/$tool" ] ||
            echo "$PROG: warning: $venv/bin/$tool does not exist: the units cannot start" \
                 "until vnet64 is installed there (or run this again with --venv DIR)" >&2
    done
    case $venv/ in
        /home/*|/root/*|/run/user/*|/tmp/*|/var/tmp/*)
            echo "$PROG: warning: the controller units hide $venv (ProtectHome=, PrivateTmp=):" \
                 "put the venv elsewhere, e.g. $DEFAULT_VENV" >&2 ;;
    esac
fi

for dir in "$prefix$UNIT_DIR" "$prefix$CONFIG_DIR"; do
    mkdir -p "$dir" 2>/dev/null && [ -w "$dir" ] ||
        die "cannot write to $dir (run as root, or install elsewhere with --root DIR)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say() { printf '%-10s %s\n' "$1" "$2"; }
units_changed=0
configs_added=0
for src in "${units[@]}"; do
    name=$(basename "$src")
    dest=$prefix$UNIT_DIR/$name
    # '|' cannot be in $venv (checked above)
    sed "s|$DEFAULT_VENV/|$venv/|g" "$src" > "$work/$name"
    if [ -f "$dest" ] && cmp -s "$work/$name" "$dest"; then
        say unchanged "$dest"
        continue
    fi
    [ -e "$dest" ] && what=updated || what=installed
    install -m 0644 "$work/$name" "$dest.tmp" && mv -f "$dest.tmp" "$dest" ||
        die "cannot write $dest"
    say "$what" "$dest"
    units_changed=1
done

for src in "${configs[@]}"; do
    [ -f "$src" ] || continue
    name=$(basename "$src")
    dest=$prefix$CONFIG_DIR/$name
    if [ -e "$dest" ]; then
        if cmp -s "$src" "$dest"; then
            say kept "$dest"
        else
            say kept "$dest (yours; the shipped example is deploy/config/$name)"
        fi
        continue
    fi
    install -m 0644 "$src" "$dest.tmp" && mv -f "$dest.tmp" "$dest" || die "cannot write $dest"
    say installed "$dest"
    configs_added=1
done

if [ "$units_changed" = 0 ]; then
    [ "$configs_added" = 1 ] || echo "nothing changed"
elif [ -n "$prefix" ]; then
    : # another root: its systemd reads the units when it starts
elif [ "$reload" = 0 ]; then
    echo "not reloading systemd (--no-reload): run 'systemctl daemon-reload' before starting a unit"
elif [ -d /run/systemd/system ]; then
    echo "systemctl daemon-reload"
    systemctl daemon-reload || die "systemctl daemon-reload failed"
else
    echo "systemd is not running here: no daemon-reload (it reads the units when it starts)"
fi
