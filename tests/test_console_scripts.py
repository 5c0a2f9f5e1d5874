"""Every console script, run as a user runs it: a fresh process, its ``--help`` and one
real command each. Their stderr must hold nothing but vnet64's own messages - no
warning from a dependency, no traceback - and their help no docstring markup.

Also: importing any vnet64 program makes no dependency warn at all. Users would not see
such a warning (``vnet64._warnings`` keeps it off stderr), so this is what catches a lock
refresh (``make lock``) that lets in a noisy release: pin it in requirements/lock.in.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from vnet64.nb.server import NbServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
MARKUP = re.compile(r"``|:(func|class|mod|meth|attr):`")
# every program module a user or the lab starts (console scripts and python -m ...)
PROGRAMS = sorted({spec.split(":")[0] for spec in SCRIPTS.values()}
                  | {"vnet64_lab.demo", "vnet64_lab.connload", "vnet64_lab.traffic"})


def run(*argv: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False, **kw)


def subcommands(script: str) -> list[str]:
    """The subcommands ``script --help`` lists in its ``{a,b,...}`` or COMMAND block."""
    out = run(str(BIN / script), "--help").stdout
    braces = re.search(r"^\s+\{([a-z,-]+)\}", out, re.M)
    if braces:
        return braces.group(1).split(",")
    block = re.search(r"^\s+COMMAND\n((?:\s{4}\S.*\n(?:\s{6,}.*\n)*)+)", out, re.M)
    return re.findall(r"^\s{4}(\S+)", block.group(1), re.M) if block else []


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_is_clean_in_a_fresh_process(script):
    helps = [[]] + [[sub] for sub in subcommands(script)]
    for sub in helps:
        proc = run(str(BIN / script), *sub, "--help")
        where = " ".join([script, *sub, "--help"])
        assert proc.returncode == 0, f"{where}: {proc.stderr}"
        assert proc.stdout.startswith(f"usage: {script}"), where
        assert proc.stderr == "", f"{where} wrote to stderr:\n{proc.stderr}"
        assert not MARKUP.search(proc.stdout), f"{where} shows docstring markup:\n{proc.stdout}"
    if script in ("vnet64", "vnet64-lab"):
        assert len(helps) > 5, f"{script}: found no subcommands to check"


def test_every_console_script_has_a_real_command_below():
    """A new console script gets a real command in this file too."""
    assert set(SCRIPTS) == {"vnet64", "vnet64-lab", "vnet64-controller", "vnet64-node"}, \
        "add a test_<script>_real_command for the new console script"


def test_vnet64_real_command():
    proc = run(str(BIN / "vnet64"), "address", "decode", "fd41:0:0:3930:1f:6600:a00:4", "--json")
    assert proc.returncode == 0 and proc.stderr == ""
    assert json.loads(proc.stdout)["ipv4"] == "10.0.0.4"
    proc = run(str(BIN / "vnet64"), "address", "decode", "fd42::1")
    assert proc.returncode == 1 and proc.stdout == ""
    assert re.fullmatch(r"vnet64: error: [^\n]*fd42[^\n]*\n", proc.stderr), proc.stderr


def test_vnet64_lab_real_command(tmp_path):
    """``status`` of a lab that is not up: exit 1, says so, nothing else anywhere."""
    proc = run(str(BIN / "vnet64-lab"), "--prefix", "v64u-", "--run-dir", str(tmp_path / "run"),
               "status")
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "lab: down\n", "")



def test_vnet64_lab_stops_quietly_when_its_reader_goes_away(tmp_path):
    """`vnet64-lab status | head -0`: 141 (as a shell reports SIGPIPE), no traceback; and
    main() leaves this process's SIGPIPE alone (it runs inside tests and other programs)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([str(BIN / "vnet64-lab"), "--prefix", "v64u-", "--run-dir",
                               str(tmp_path / "run"), "status"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")
    from vnet64_lab.cli import main
    before = signal.getsignal(signal.SIGPIPE)
    assert main(["--prefix", "v64u-", "--run-dir", str(tmp_path / "run"), "status"]) == 1
    assert signal.getsignal(signal.SIGPIPE) == before

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vnet64_controller_real_command(tmp_path):
    """The controller against a real NB: starts, listens, stops on SIGTERM; every line it
    wrote is a record of its log (its own loggers and os-ken's, in its format)."""
    nb = NbServer(tmp_path / "nb")
    nb.start()
    try:
        port = free_port()
        proc = subprocess.Popen(
            [str(BIN / "vnet64-controller"), "--ofp-listen-host", "127.0.0.1",
             "--ofp-tcp-listen-port", str(port), "--vnet64-nb-remote", nb.remote],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)     # our own child, by its pid
            out, err = proc.communicate(timeout=30)
    finally:
        nb.stop()
    assert proc.returncode == 0, err
    assert out == ""
    lines = err.splitlines()
    assert any("listening for switches" in line for line in lines), err
    record = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) "
                        r"(vnet64|os_ken)[\w.-]*: ")
    strangers = [line for line in lines if not record.match(line)]
    assert not strangers, "not records of the controller's log:\n" + "\n".join(strangers)


def test_vnet64_node_real_command(tmp_path):
    """The agent for a node the NB does not have: exit 2, one error line besides its own
    log records, and nothing else on stderr."""
    nb = NbServer(tmp_path / "nb")
    nb.start()
    try:
        proc = run(str(BIN / "vnet64-node"), "--nb", nb.remote, "--name", "nosuch",
                   "--run-dir", str(tmp_path / "run"))
    finally:
        nb.stop()
    assert proc.returncode == 2 and proc.stdout == ""
    record = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) vnet64[\w.-]*: ")
    others = [line for line in proc.stderr.splitlines() if not record.match(line)]
    assert len(others) == 1, proc.stderr
    assert others[0].startswith("vnet64-node: error: node 'nosuch' is not in the NB"), proc.stderr


@pytest.mark.parametrize("module", PROGRAMS)
def test_no_dependency_warns_when_a_program_is_imported(module):
    code = ("import json, importlib, vnet64._warnings as w; "
            f"importlib.import_module({module!r}); print(json.dumps(w.diverted()))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = run(sys.executable, "-c", code, env=env)
    assert proc.returncode == 0, proc.stderr
    warned = json.loads(proc.stdout.splitlines()[-1])
    assert not warned, (f"importing {module} made a dependency warn (hidden from users, but "
                        f"pin the release that does it in requirements/lock.in):\n"
                        + "\n".join(warned))


NOISY = '''
import warnings
warnings.warn("a dependency's deprecation", UserWarning)
'''


def test_a_dependency_warning_stays_off_stderr_unless_asked_for(tmp_path):
    """The mechanism itself, with a stand-in dependency that warns on import."""
    (tmp_path / "noisy_dep.py").write_text(NOISY)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
           "PYTHONPATH": str(tmp_path)}
    code = "import vnet64, vnet64._warnings as w, noisy_dep; print(len(w.diverted()))"
    proc = run(sys.executable, "-c", code, env=env)
    assert (proc.stdout, proc.stderr) == ("1\n", "")
    # asked for with -W: shown as Python would
    proc = run(sys.executable, "-W", "default", "-c", code, env=env)
    assert "UserWarning: a dependency's deprecation" in proc.stderr and proc.stdout == "0\n"
    # vnet64's own warnings are never diverted
    code = ("import vnet64, warnings; from vnet64 import _warnings as w; "
            "warnings.showwarning('ours', UserWarning, w.__file__, 1)")
    proc = run(sys.executable, "-c", code, env=env)
    assert "UserWarning: ours" in proc.stderr
