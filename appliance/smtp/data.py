"""Reading a message after DATA (RFC 5321 §4.5.2): up to the line holding only ".", with dot
transparency undone, the size limit and the line-length limit enforced.

Reading one line at a time would cost an await, a limit check and a copy per line; this reads
the message in as few pieces as the stream offers: `Connection.read_until(b".\\r\\n")` returns at
the first line that ends with a dot, which is the end of the message when that dot starts its
line, and otherwise is only part of it (or, with no such line yet, what has arrived). The checks
run once per piece, in C (bytes.split, replace).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

_DOT_LINE = b".\r\n"
_END = b"\r\n.\r\n"  # the end of DATA, counting the CRLF that ended the line before it


class DataState(enum.Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too_long"  # a line longer than the line-length limit (RFC 5321 §4.5.3.1.6)
    TOO_MUCH = "too_much"  # more bytes than the size limit (RFC 1870)


@dataclass(frozen=True)
class Data:
    state: DataState
    content: bytes  # the message as the client meant it (dots unstuffed); empty unless NOMINAL


class PieceReader(Protocol):
    """What DATA is read from: `appliance.connection.Connection`."""

    async def read_until(self, separator: bytes, timeout: float) -> bytes: ...


class _LineMeter:
    """The longest line seen so far in a stream fed in pieces, its CRLF counted (RFC 5321
    §4.5.3.1.6 counts it); a line not ended yet counts with the CRLF it will at least need."""

    def __init__(self) -> None:
        self.open = 0  # bytes of the line not ended yet
        self.cr = False  # whether the last piece ended with CR (a CRLF may be split)

    def feed(self, piece: bytes) -> int:
        """The longest line `piece` ends or leaves open, with its CRLF."""
        longest = 0
        if self.cr and piece.startswith(b"\n"):
            self.open = 0  # the open line, measured with its CR, has ended
            piece = piece[1:]
        lines = piece.split(b"\r\n")
        if len(lines) == 1:
            self.open += len(piece)
        else:
            longest = self.open + len(lines[0]) + 2
            if len(lines) > 2:
                longest = max(longest, max(map(len, lines[1:-1])) + 2)
            self.open = len(lines[-1])
        self.cr = piece.endswith(b"\r")
        if self.open:
            longest = max(longest, self.open + (1 if self.cr else 2))
        return longest


async def read_data(reader: PieceReader, size_limit: int, line_limit: int, timeout: float) -> Data:
    """Read one message's data from `reader`, which stands just after the DATA command's line.

    `size_limit` bounds the message (0: none), `line_limit` each line with its CRLF. A message
    over either limit is read to its end and dropped (the reply comes only then, RFC 5321
    §4.2.5); nothing of it is kept from the piece that showed it over. Each piece must come
    within `timeout` seconds (TimeoutError); the reader's ConnectionClosed when the stream ends
    first.
    """
    kept = bytearray()
    state = DataState.NOMINAL
    total = 0  # bytes read; all but the final ".\r\n" are the message's
    meter = _LineMeter()
    window = b"\r\n"  # the stream's last bytes: the DATA line's CRLF to start with
    while True:
        piece = await reader.read_until(_DOT_LINE, timeout)
        total += len(piece)
        window = (window + piece[-5:])[-5:]
        if state is DataState.NOMINAL:
            if meter.feed(piece) > line_limit:
                state, kept = DataState.TOO_LONG, bytearray()
            elif size_limit and total - len(_DOT_LINE) > size_limit:
                state, kept = DataState.TOO_MUCH, bytearray()
            else:
                kept += piece
        if window == _END:
            break
    if state is not DataState.NOMINAL:
        return Data(state, b"")
    del kept[-len(_DOT_LINE) :]
    # Dot transparency (RFC 5321 §4.5.2): a line's leading dot was doubled by the client.
    content = bytes(kept).replace(b"\r\n.", b"\r\n")
    if content.startswith(b"."):
        content = content[1:]
    return Data(DataState.NOMINAL, content)


__all__ = ["Data", "DataState", "PieceReader", "read_data"]
