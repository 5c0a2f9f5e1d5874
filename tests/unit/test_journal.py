"""Log records under systemd (vnet64.journal): when standard error is the journal stream
systemd names in $JOURNAL_STREAM, the controller and the agent write each line with its
syslog priority and without a time stamp of their own; anywhere else, as before."""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vnet64 import journal
from vnet64.controller import launcher
from vnet64.node import cli as node_cli

BIN = Path(sys.executable).parent
STAMPED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO vnet64\.test: hello$")


def stream_id(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}"


def test_only_the_stream_systemd_named_is_the_journal(tmp_path, monkeypatch):
    named, other = tmp_path / "journal", tmp_path / "other"
    with open(named, "w") as a, open(other, "w") as b:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert not journal.is_journal(a)
        monkeypatch.setenv("JOURNAL_STREAM", stream_id(named))
        assert journal.is_journal(a)
        assert not journal.is_journal(b)      # inherited variable, redirected stream
        assert not journal.is_journal(None)   # a log file
        assert not journal.is_journal(io.StringIO())


def record(level: int, msg: str, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("vnet64.test", level, __file__, 1, msg, None, exc_info)


def test_each_line_carries_its_priority_and_no_time_stamp():
    fmt = journal.JournalFormatter("%(levelname)s %(name)s: %(message)s")
    assert fmt.format(record(logging.INFO, "hello")) == "<6>INFO vnet64.test: hello"
    assert fmt.format(record(logging.WARNING, "w")) == "<4>WARNING vnet64.test: w"
    assert fmt.format(record(logging.ERROR, "a\nb")) == "<3>ERROR vnet64.test: a\n<3>b"
    assert fmt.format(record(logging.DEBUG, "d")).startswith("<7>")
    assert fmt.format(record(logging.CRITICAL, "c")).startswith("<2>")
    assert fmt.format(record(5, "below debug")).startswith("<7>")
    try:
        raise ValueError("boom")
    except ValueError:
        text = fmt.format(record(logging.ERROR, "failed", sys.exc_info()))
    lines = text.splitlines()
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines), text
    assert lines[-1] == "<3>ValueError: boom"


def test_formatter_keeps_the_time_stamp_off_the_journal(tmp_path, monkeypatch):
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    path = tmp_path / "err"
    with open(path, "w") as stream:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert STAMPED.match(journal.formatter(fmt, stream).format(record(logging.INFO, "hello")))
        monkeypatch.setenv("JOURNAL_STREAM", stream_id(path))
        assert journal.formatter(fmt, stream).format(record(logging.INFO, "hello")) == \
            "<6>INFO vnet64.test: hello"
        # a log file keeps its time stamps, under systemd too
        assert STAMPED.match(journal.formatter(fmt, None).format(record(logging.INFO, "hello")))


@pytest.fixture
def root_logger():
    """The root logger as it was, after a test that set logging up."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("setup", [launcher.setup_logging, node_cli.setup_logging],
                         ids=["vnet64-controller", "vnet64-node"])
@pytest.mark.parametrize("under_systemd", [True, False])
def test_the_programs_log_for_the_journal_only_under_systemd(setup, under_systemd, tmp_path,
                                                             monkeypatch, root_logger):
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        if under_systemd:
            monkeypatch.setenv("JOURNAL_STREAM", stream_id(path))
        else:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        setup("INFO", None)
        logging.getLogger("vnet64.test").info("hello")
        logging.getLogger("vnet64.test").warning("careful")
        for h in root_logger.handlers:
            h.flush()
    lines = path.read_text().splitlines()
    if under_systemd:
        assert lines == ["<6>INFO vnet64.test: hello", "<4>WARNING vnet64.test: careful"]
    else:
        assert STAMPED.match(lines[0]) and len(lines) == 2, lines


def test_a_controller_under_systemd_writes_prioritised_lines(tmp_path):
    """A real process whose standard error is the stream $JOURNAL_STREAM names, as systemd
    starts it: every line it writes carries a priority and no time stamp."""
    err = tmp_path / "stderr"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket() as s:               # an NB address nothing listens on: retried
        s.bind(("127.0.0.1", 0))
        nb_port = s.getsockname()[1]
    with open(err, "w") as stream:
        env = {**os.environ, "JOURNAL_STREAM": stream_id(err)}
        proc = subprocess.Popen(
            [str(BIN / "vnet64-controller"), "--ofp-listen-host", "127.0.0.1",
             "--ofp-tcp-listen-port", str(port), "--vnet64-nb-remote", f"tcp:127.0.0.1:{nb_port}"],
            stdout=subprocess.DEVNULL, stderr=stream, env=env)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                if "listening for switches" in err.read_text():
                    break
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)      # our own child, by its pid
            proc.wait(timeout=30)
    text = err.read_text()
    assert "listening for switches" in text, text
    strangers = [line for line in text.splitlines()
                 if not re.match(r"<[2-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.-]+: ", line)]
    assert not strangers, "lines without a priority:\n" + "\n".join(strangers)
    assert "<6>INFO vnet64.controller.launcher: stopped" in text.splitlines()
