"""The server's log line format, with every control character escaped.

Clients choose much of what a log line says (a HELO name, an unknown command, a login name), and a
raw ESC, CR or NUL from the wire in the log would let them rewrite a terminal, forge a line or cut
one short. Call sites quote the fields they know come from the wire (`auth.service.log_field`);
this formatter is the net under them all: no control character, C1 code, line separator or lone
surrogate reaches the log raw, whatever a call site forgot. A traceback keeps its line breaks
(they are the server's own), but what a client put into an exception's text is escaped there too.

Every line logged while a client connection's task runs ends with `session=ID`, the id
`connection.listen` gives the connection (a context variable, so no call site passes it): one
`grep session=ID` follows a connection, its logins and the messages it handed over.

Under systemd's journal (`$JOURNAL_STREAM` names our standard error) each line starts with its
syslog priority (`<3>` error ... `<7>` debug, sd-daemon(3)) and carries no timestamp of its own:
the journal records both.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import secrets

LINE_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s %(message)s"
JOURNAL_FORMAT = "%(name)s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"

# The connection the running task serves; "" outside one.
SESSION: contextvars.ContextVar[str] = contextvars.ContextVar("appliance_session", default="")

# sd-daemon(3) / syslog(3) priorities.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def new_session_id() -> str:
    """A connection's id: 12 hex digits, random, so ids do not repeat across restarts."""
    return secrets.token_hex(6)


def under_journald(stream_fd: int = 2) -> bool:
    """True when `stream_fd` is the journal stream systemd connected ($JOURNAL_STREAM is its
    device:inode, systemd.exec(5)); a child process that inherited the variable with its output
    redirected elsewhere is not."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream_fd)
    except OSError:
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def syslog_priority(levelno: int) -> int:
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7  # debug


# C0 controls and DEL, the C1 controls, U+2028/U+2029 and lone surrogates (bytes that were not UTF-8).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_UNSAFE_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape kept: show the byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` with every control character written as a backslash escape (`\\x1b`, `\\x0d`)."""
    return text if _UNSAFE.search(text) is None else _UNSAFE.sub(_escaped, text)


class EscapingFormatter(logging.Formatter):
    """A `logging.Formatter` whose lines hold no raw control character from anywhere."""

    def __init__(self, fmt: str = LINE_FORMAT, datefmt: str = DATE_FORMAT) -> None:
        super().__init__(fmt, datefmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        session = SESSION.get()
        return escape_controls(f"{text} session={session}" if session else text)

    def formatException(self, ei: object) -> str:
        text = super().formatException(ei)  # type: ignore[arg-type]
        return text if _UNSAFE_BUT_NEWLINE.search(text) is None else _UNSAFE_BUT_NEWLINE.sub(_escaped, text)

    def formatStack(self, stack_info: str) -> str:
        return _UNSAFE_BUT_NEWLINE.sub(_escaped, stack_info)


class JournalFormatter(EscapingFormatter):
    """EscapingFormatter's lines for the journal: `<priority>` first, on every line of a
    traceback too (the journal makes each line an entry), and no timestamp."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return prefix + super().format(record).replace("\n", "\n" + prefix)
