"""Log lines of the service: plain with time stamps on a terminal or in a file, syslog-prefixed under systemd.

systemd sets JOURNAL_STREAM when it connects stdout/stderr to the journal. journald then reads a leading `<N>` on
each line as that line's syslog priority (so `journalctl -p warning` works) and stamps the time itself.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"


def syslog_priority(level: int) -> int:
    """The syslog priority of a logging level: 2 critical, 3 error, 4 warning, 6 info, 7 debug."""
    for threshold, priority in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6)):
        if level >= threshold:
            return priority
    return 7


class JournalFormatter(logging.Formatter):
    """Every line of a record gets the prefix: journald takes each line of a traceback as an entry of its own."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def writes_to_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """JOURNAL_STREAM is set, and names this stream where that can be checked: a child whose stderr was sent to a
    file inherits the variable, and its file should not get the prefixes."""
    value = environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    device, _, inode = value.partition(":")
    try:
        status = os.fstat(stream.fileno())
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (AttributeError, OSError, ValueError):  # no descriptor (a test's buffer) or not "device:inode"
        return True


def error_lines(text: str, stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> str:
    """`text` for printing to `stream` (stderr) as an error: under the journal each line gets the error priority, as
    a log record would. Why the service refuses to start or exits is printed, not logged (an invalid config gives
    no log level), and is what an operator most needs `journalctl -p err` to find."""
    stream = sys.stderr if stream is None else stream
    if not writes_to_journal(stream, os.environ if environ is None else environ):
        return text
    prefix = f"<{syslog_priority(logging.ERROR)}>"
    return "\n".join(prefix + line for line in text.splitlines())


def log_handler(stream: TextIO, environ: Mapping[str, str]) -> logging.Handler:
    """A handler writing to `stream`, formatted for the journal or plainly."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if writes_to_journal(stream, environ) else logging.Formatter(PLAIN_FORMAT))
    return handler


def configure_logging(level: str | int, stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> None:
    """The root logger's one handler, on stderr unless told otherwise; like logging.basicConfig, a no-op when the
    root logger has handlers already."""
    stream = sys.stderr if stream is None else stream
    logging.basicConfig(level=level, handlers=[log_handler(stream, os.environ if environ is None else environ)])
