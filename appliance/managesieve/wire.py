"""ManageSieve on the wire (RFC 5804 §4): commands in, responses out.

A command is an atom and arguments: quoted strings (`\\"` and `\\\\` escaped), literals
(`{n+}` CRLF then n octets: non-synchronizing, §4; `{n}` is taken the same way, as Dovecot
does), and numbers. `read_command` reads one whole command, literals included, within size
limits; `quoted`/`literal` and `response` build what the server says.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

MAX_LINE = 8192
MAX_LITERAL = (1 << 20) + 1024  # a script (store/userscripts.py bounds it) and a little
MAX_ARGUMENTS = 8

_LITERAL_AT_END = re.compile(rb"\{(\d{1,10})\+?\}\r?\n?$")


class CommandError(Exception):
    """The command cannot be understood (answered NO, the session goes on)."""


class LiteralTooLarge(Exception):
    """A literal over MAX_LITERAL was announced: its octets are not read, the session ends."""


Argument = str | bytes | int  # a string argument is str when it came quoted, bytes as a literal


async def read_command(
    readline: Callable[[], Awaitable[bytes]], read_exactly: Callable[[int], Awaitable[bytes]]
) -> tuple[str, list[Argument]]:
    """One command: its name (upper case) and arguments. Raises CommandError for bad syntax,
    after reading the whole command so that the next one starts clean."""
    pieces: list[bytes | tuple[bytes]] = []  # line text, and literals as 1-tuples
    line = await readline()
    for _ in range(MAX_ARGUMENTS + 1):
        found = _LITERAL_AT_END.search(line)
        if found is None:
            pieces.append(line.rstrip(b"\r\n"))
            break
        size = int(found.group(1))
        if size > MAX_LITERAL:
            raise LiteralTooLarge()
        pieces.append(line[: found.start()])
        pieces.append((await read_exactly(size),))
        line = await readline()
    else:
        raise CommandError("Too many arguments")
    return _parse(pieces)


def _parse(pieces: list[bytes | tuple[bytes]]) -> tuple[str, list[Argument]]:
    arguments: list[Argument] = []
    name = ""
    for piece in pieces:
        if isinstance(piece, tuple):
            arguments.append(piece[0])
            continue
        text = piece.decode("utf-8", "surrogateescape")
        i = 0
        while i < len(text):
            c = text[i]
            if c == " ":
                i += 1
            elif c == '"':
                value, i = _quoted(text, i + 1)
                arguments.append(value)
            elif c.isdigit() and name != "":
                j = i
                while j < len(text) and text[j].isdigit():
                    j += 1
                arguments.append(int(text[i:j]))
                i = j
            else:
                j = i
                while j < len(text) and text[j] != " ":
                    j += 1
                if name:
                    raise CommandError(f"Unexpected {text[i:j]!r}")
                name = text[i:j].upper()
                i = j
    if not name:
        raise CommandError("Empty command")
    return name, arguments


def _quoted(text: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
            c = text[i + 1]
            i += 1
        out.append(c)
        i += 1
    raise CommandError("Unterminated string")


def quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def string(value: str) -> bytes:
    """A quoted string when it may be one (§4: no CR, LF; short), else a literal."""
    if "\r" in value or "\n" in value or len(value) > 1024:
        return literal(value.encode("utf-8"))
    return quoted(value).encode("utf-8")


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def response(status: str, text: str = "", code: str = "") -> bytes:
    """OK, NO or BYE (RFC 5804 §1.3), with a response code in parentheses and a human text."""
    parts = [status]
    if code:
        parts.append(f"({code})")
    out = " ".join(parts).encode()
    if text:
        out += b" " + string(text)
    return out + b"\r\n"
