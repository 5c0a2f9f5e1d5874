"""docs/deploy.md as a program: its command blocks, where each runs, and what the lab changes.

Every ```` ```sh ```` block of the guide starts with a line naming where it runs::

    # on host1, host2, host3
    # on every machine
    # on ca
    # on a-vm1                          (a guest: a VM or the service endpoint)
    # on every machine [lab: units]     (the lab cannot run it as written)

A block with ``[lab: TAG ...]`` installs packages, talks to systemd or libvirt, or makes
a tap device for QEMU: the lab test does the equivalent named by TAG (the test's
``STAND_INS`` say what each does). Every other block runs as written, in the
namespace standing in for each machine it names, in a fresh ``bash -euo pipefail``
whose working directory is the machine's directory, with ``NODE`` (the machine's name)
and ``MGMT_IP`` (its management address) set - as the guide asks of its reader - after
:func:`substitute` has changed what the lab must differ in:

==============================  =============================================================
in the guide                    in the lab
==============================  =============================================================
``/opt/vnet64/venv``            the venv running the test (made from the lock by ``make setup``)
``/opt/vnet64/src``             this checkout
``/etc/vnet64``,                ``<run>/machines/<machine>/etc/vnet64``, ... : the machines
``/var/lib/vnet64``,            share one file system, so each gets a directory of its own
``/var/lib/openvswitch/pki``,
``/run/vnet64-node``
``/var/run/openvswitch``        the node's Open vSwitch run directory (``vnet64_lab.ovs.OvsNode``;
                                ``OVS_RUNDIR`` ... in the environment, so ``ovs-vsctl`` finds it)
``eth1`` (the underlay NIC)     ``ul0``, the node's leg of the lab's fabric
``deploy/install-units.sh``     ``deploy/install-units.sh --root <machine dir> --no-reload``
``scp root@M:/PATH``            ``cp`` from or to M's directory (a shell function)
``vnet64``, ``ovs-pki`` ...     found on ``PATH``: the venv's ``bin/`` first (the guide links
                                ``vnet64`` into ``/usr/local/bin``)
==============================  =============================================================

and ``VNET64_RUN_DIR`` is set to the machine's ``/var/lib/vnet64`` (the NB's default run
directory, which ``vnet64 nb ...`` and the unit use). A unit is started by running its
installed ``ExecStart=`` (with its ``EnvironmentFile=``, ``$VAR``/``%i`` expanded as systemd
does, and the substitutions above) in the machine's network namespace
(``nsenter --net``, as the lab runs the agent), plus, for ``vnet64-node`` only,
``--run-dir <machine>/run/vnet64-node --translator-netns <prefix>xl-<host>``: four agents
share one kernel, and the translator namespace of each must be its own and the lab's
(the agent's defaults, ``/run/vnet64-node`` and ``vnet64-xlat``, would be shared).
The unit's ``Restart=``, ``RestartSec=`` and ``KillMode=`` are read too:
``tests/lab/test_deploy_recovery.py`` restarts a killed process as systemd would per the
unit (systemd is not PID 1 in the lab).

Pure: parsing and substitution only; ``tests/lab/test_deploy_guide.py`` runs the blocks.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
EVERY_MACHINE = "every machine"
# /<this> in a command -> <machine dir>/<this>: state and configuration of one machine
MACHINE_PATHS = ("/etc/vnet64", "/var/lib/vnet64", "/var/lib/openvswitch/pki", "/run/vnet64-node")
VENV_PATH = "/opt/vnet64/venv"
SRC_PATH = "/opt/vnet64/src"
OVS_RUNDIR = "/var/run/openvswitch"
UNDERLAY_NIC, LAB_UNDERLAY_NIC = "eth1", "ul0"
INSTALL_UNITS = "deploy/install-units.sh"

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_ON = re.compile(r"^# on (?P<targets>[^\[#]+?)\s*(?:\[lab: (?P<tag>[^\]]+)\])?\s*$")
_REMOTE = re.compile(r"root@[^\s:]+:/\S*")

# bash: scp between machines is cp between their directories (one file system)
SCP_FUNCTION = r"""scp() {
    local a m p args=()
    for a in "$@"; do
        case $a in
            root@*:*) m=${a#root@}; m=${m%%:*}; p=${a#*:}; a="$GUIDE_MACHINES/$m$p" ;;
        esac
        args+=("$a")
    done
    cp "${args[@]}"
}
"""


class GuideError(ValueError):
    pass


@dataclass(frozen=True)
class Block:
    line: int                  # of the opening fence in the guide
    targets: tuple[str, ...]   # machine or guest names, or (EVERY_MACHINE,)
    tag: str | None            # "units", "tap a-vm1", ...: a stand-in; None: run as written
    script: str                # the block, its "# on" line included

    @property
    def stand_in(self) -> str | None:
        return self.tag.split()[0] if self.tag else None

    @property
    def args(self) -> list[str]:
        return self.tag.split()[1:] if self.tag else []


def blocks(text: str) -> list[Block]:
    """Every ``sh`` block of the guide, in order; a block without its ``# on`` line is an
    error (the guide would hold a command no test runs)."""
    out = []
    for m in _FENCE.finditer(text):
        if m.group(1) != "sh":
            continue
        line = text.count("\n", 0, m.start()) + 1
        body = m.group(2)
        first = body.splitlines()[0] if body.strip() else ""
        on = _ON.match(first)
        if not on:
            raise GuideError(f"docs/deploy.md:{line}: an sh block must start with '# on MACHINES' "
                             f"(optionally '[lab: TAG]'), got {first!r}")
        targets = tuple(t.strip() for t in on.group("targets").split(","))
        out.append(Block(line, targets, on.group("tag"), body))
    return out


def heredoc(text: str, path: str) -> str:
    """The text a block of the guide writes to ``path`` with ``cat > PATH <<'EOF'``."""
    m = re.search(rf"cat > {re.escape(path)} <<'?EOF'?\n(.*?)^EOF$", text, re.M | re.S)
    if not m:
        raise GuideError(f"docs/deploy.md writes no {path} with a here-document")
    return m.group(1)


def substitute(script: str, machine_dir: Path, venv: Path, src: Path,
               ovs_rundir: Path | None) -> str:
    """``script`` with the guide's paths and names changed to the lab's (module docstring).
    ``root@M:/PATH`` arguments (scp) are left for the scp function, which knows M's directory."""
    protected: list[str] = []

    def protect(m: re.Match) -> str:
        protected.append(m.group(0))
        return f"\0{len(protected) - 1}\0"
    text = _REMOTE.sub(protect, script)
    table = {VENV_PATH: str(venv), SRC_PATH: str(src),
             **{p: f"{machine_dir}{p}" for p in MACHINE_PATHS}}
    if ovs_rundir is not None:
        table[OVS_RUNDIR] = str(ovs_rundir)
    # at the start of a path only: a path made from one already (<machine dir>/etc/vnet64)
    # stays as it is
    pattern = re.compile(r"(?<![\w/.-])(?:"
                         + "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
                         + ")")
    text = pattern.sub(lambda m: table[m.group(0)], text)
    text = re.sub(rf"\b{UNDERLAY_NIC}\b", LAB_UNDERLAY_NIC, text)
    text = text.replace(INSTALL_UNITS, f"{INSTALL_UNITS} --root {machine_dir} --no-reload")
    return re.sub(r"\0(\d+)\0", lambda m: protected[int(m.group(1))], text)


# -- systemd units, as far as the guide's units need ----------------------------------


@dataclass(frozen=True)
class Unit:
    name: str                    # as systemctl was given it: vnet64-controller@host1.service
    environment_files: tuple[str, ...]
    exec_start: str              # the raw line, continuation lines joined
    # what systemd does when the main process ends (systemd.service(5)); its defaults
    restart: str = "no"          # Restart=
    restart_sec: float = 0.1     # RestartSec=, in seconds (systemd's default: 100ms)
    kill_mode: str = "control-group"    # KillMode=

    def restarts_after_signal(self, signum: int) -> bool:
        """Whether systemd starts the unit again when its main process is killed by
        ``signum`` (systemd.service(5), the table under Restart=): SIGHUP, SIGINT,
        SIGTERM and SIGPIPE are clean signals, every other one unclean."""
        clean = signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)
        if clean:
            return self.restart == "always"
        return self.restart in ("always", "on-failure", "on-abnormal", "on-abort")


def read_unit(unit_dir: Path, name: str) -> Unit:
    """The installed unit ``name`` (a template instance reads ``NAME@.service``)."""
    base = re.sub(r"@[^.]+\.", "@.", name)
    path = unit_dir / base
    if not path.exists():
        raise GuideError(f"no unit {base} in {unit_dir}: was deploy/install-units.sh run?")
    lines, env_files, exec_start, cont = [], [], None, ""
    settings: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        if cont:
            raw = cont + " " + raw.strip()
            cont = ""
        if raw.endswith("\\"):
            cont = raw[:-1].rstrip()
            continue
        lines.append(raw)
    for line in lines:
        if line.startswith("EnvironmentFile="):
            env_files.append(line.split("=", 1)[1].strip())
        elif line.startswith("ExecStart="):
            exec_start = line.split("=", 1)[1].strip()
        elif line.startswith(("Restart=", "RestartSec=", "KillMode=")):
            key, value = line.split("=", 1)
            settings[key] = value.strip()     # the last one wins, as in systemd
    if exec_start is None:
        raise GuideError(f"{path}: no ExecStart=")
    unit = Unit(name, tuple(env_files), exec_start)
    return dataclasses.replace(
        unit, restart=settings.get("Restart", unit.restart),
        restart_sec=time_span(settings["RestartSec"]) if "RestartSec" in settings
        else unit.restart_sec,
        kill_mode=settings.get("KillMode", unit.kill_mode))


_SPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60,
               "min": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600,
               "hours": 3600}


def time_span(text: str) -> float:
    """A systemd time span in seconds: ``2``, ``2s``, ``100ms``, ``1min 30s``
    (systemd.time(7); a bare number is seconds)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    if not parts or re.sub(r"[\d.\sa-z]", "", text):
        raise GuideError(f"not a time span: {text!r}")
    total = 0.0
    for number, unit in parts:
        if unit not in _SPAN_UNITS and unit != "":
            raise GuideError(f"not a time span: {text!r} (unit {unit!r})")
        total += float(number) * _SPAN_UNITS.get(unit, 1)
    return total


def read_environment_file(path: Path) -> dict[str, str]:
    """systemd's ``EnvironmentFile=`` format: ``VAR=value`` lines, # comments, a value in
    double or single quotes loses them."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def exec_argv(unit: Unit, env: dict[str, str]) -> list[str]:
    """``ExecStart=`` as systemd runs it: ``%i`` the instance, ``$VAR`` split into words,
    ``${VAR}`` one word (systemd.service(5), "Command lines")."""
    instance = unit.name.split("@", 1)[1].rsplit(".", 1)[0] if "@" in unit.name else ""
    argv: list[str] = []
    for word in shlex.split(unit.exec_start.replace("%i", instance).replace("%%", "%")):
        m = re.fullmatch(r"\$(\w+)", word)
        if m:
            argv += env.get(m.group(1), "").split()
            continue
        argv.append(re.sub(r"\$\{(\w+)\}", lambda v: env.get(v.group(1), ""), word))
    return argv
