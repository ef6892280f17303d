"""A stored message as POP3 sends it: CRLF line ends, dot-stuffed, ended by ".".

Maildir keeps messages with LF line ends; RFC 1939 §3 sends them with CRLF, every line that
begins with "." gets one more ".", and a line holding only "." ends the multi-line reply. The
conversion is three `bytes.replace` calls per chunk (no per-line Python work). A message is
read and converted in chunks, so a 20 MB message never sits in memory whole.

The functions here run in the disk executor: they read files.
"""

from __future__ import annotations

from typing import BinaryIO

CHUNK_SIZE = 256 * 1024  # bytes read per step when streaming a large message
TERMINATOR = b".\r\n"


class WireEncoder:
    """Converts a message to the wire format chunk by chunk (chunks may split lines anywhere)."""

    def __init__(self) -> None:
        self._at_line_start = True  # the next byte begins a line (may need dot-stuffing)
        self._held_cr = False  # a chunk ended in "\r": it may be the first half of "\r\n"

    def encode(self, data: bytes) -> bytes:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
        if not data:
            return b""
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")  # a CRLF already there stays one CRLF
        data = data.replace(b"\n", b"\r\n")
        # RFC 1939 §3: a line that begins with the termination octet gets it doubled.
        data = data.replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and data[:1] == b".":
            data = b"." + data
        self._at_line_start = data.endswith(b"\n")
        return data

    def finish(self) -> bytes:
        """The end of the message: a last CRLF when it lacks one, then the ".\\r\\n" terminator."""
        tail = b""
        if self._held_cr:
            tail = b"\r"  # nothing follows: the held "\r" was a bare CR
            self._held_cr = False
            self._at_line_start = False
        if not self._at_line_start:
            tail += b"\r\n"
        return tail + TERMINATOR


def encode_whole(data: bytes) -> bytes:
    """A whole message, ready to follow a "+OK" line."""
    encoder = WireEncoder()
    return encoder.encode(data) + encoder.finish()


def read_whole(handle: BinaryIO) -> bytes:
    """Read an open message and convert it (for messages small enough to hold at once)."""
    with handle:
        return encode_whole(handle.read())


class MessageStream:
    """A large message read and converted one chunk at a time; `next_chunk` runs in the executor."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._encoder = WireEncoder()
        self.done = False

    def next_chunk(self) -> bytes:
        data = self._handle.read(CHUNK_SIZE)
        if data:
            return self._encoder.encode(data)
        self.close()
        self.done = True
        return self._encoder.finish()

    def close(self) -> None:
        self._handle.close()


def read_top(handle: BinaryIO, body_lines: int) -> bytes:
    """RFC 1939 §7 TOP: the header, the blank line, then `body_lines` lines of the body."""
    collected = bytearray()
    with handle:
        while True:
            data = handle.read(64 * 1024)
            if data:
                collected += data
            normalized = bytes(collected).replace(b"\r\n", b"\n")
            end = _top_end(normalized, body_lines)
            if end is not None:
                return encode_whole(normalized[:end])
            if not data:
                return encode_whole(normalized)


def _top_end(text: bytes, body_lines: int) -> int | None:
    """Where the TOP excerpt of LF-ended `text` ends, or None when more text is needed."""
    if text.startswith(b"\n"):
        header_end = 1  # no header at all: the body starts after the first empty line
    else:
        found = text.find(b"\n\n")
        if found < 0:
            return None
        header_end = found + 2
    position = header_end
    for _ in range(body_lines):
        newline = text.find(b"\n", position)
        if newline < 0:
            return None
        position = newline + 1
    return position
