"""Log records on standard error, as the journal wants them when systemd runs us.

In a terminal or a file, a record carries its own time stamp. When a systemd unit sends
standard error to the journal (the default), journald stamps every line itself, so a
second time stamp is noise; and journald reads a ``<N>`` syslog priority prefix at the
start of each line (``SyslogLevelPrefix=``, on by default), which makes
``journalctl -p warning`` and the colours of ``journalctl`` work. systemd says where the
stream goes in ``$JOURNAL_STREAM`` (``DEVICE:INODE`` of the stream it connected,
systemd.exec(5)); a program whose standard error was redirected elsewhere inherits the
variable, so it counts only when standard error still is that very stream.
"""

from __future__ import annotations

import logging
import os
from typing import TextIO

# syslog priorities (sd-daemon(3)): err 3, warning 4, info 6, debug 7
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
            logging.DEBUG: 7}
TIME_FIELD = "%(asctime)s "


def is_journal(stream: TextIO | None) -> bool:
    """Whether ``stream`` is the journal stream systemd named in ``$JOURNAL_STREAM``."""
    wanted = os.environ.get("JOURNAL_STREAM")
    if not wanted or stream is None:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):   # no file descriptor (a test's buffer)
        return False
    return wanted == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    """Each line of a record (a traceback's too) starts with the record's priority."""

    def format(self, record: logging.LogRecord) -> str:
        level = max((lv for lv in PRIORITY if lv <= record.levelno), default=logging.DEBUG)
        prefix = f"<{PRIORITY[level]}>"
        return prefix + super().format(record).replace("\n", "\n" + prefix)


def formatter(fmt: str, stream: TextIO | None) -> logging.Formatter:
    """``fmt`` for a handler writing to ``stream`` (None: a log file): as it is, or, when
    ``stream`` is the journal, without its leading time stamp and with priorities."""
    if is_journal(stream):
        return JournalFormatter(fmt.removeprefix(TIME_FIELD))
    return logging.Formatter(fmt)
