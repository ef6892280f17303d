"""The server's log line format, with every control character escaped.

Clients choose much of what a log line says (a HELO name, an unknown command, a login name), and a
raw ESC, CR or NUL from the wire in the log would let them rewrite a terminal, forge a line or cut
one short. Call sites quote the fields they know come from the wire (`auth.service.log_field`);
this formatter is the net under them all: no control character, C1 code, line separator or lone
surrogate reaches the log raw, whatever a call site forgot. A traceback keeps its line breaks
(they are the server's own), but what a client put into an exception's text is escaped there too.
"""

from __future__ import annotations

import logging
import re

LINE_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"

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
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: object) -> str:
        text = super().formatException(ei)  # type: ignore[arg-type]
        return text if _UNSAFE_BUT_NEWLINE.search(text) is None else _UNSAFE_BUT_NEWLINE.sub(_escaped, text)

    def formatStack(self, stack_info: str) -> str:
        return _UNSAFE_BUT_NEWLINE.sub(_escaped, stack_info)
