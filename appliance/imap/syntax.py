"""Reading one IMAP command off the wire: tag, name, and arguments as Tokens (RFC 3501 §2.2, §9).

A command is one line, or several lines joined by literals: a line ending in `{n}` asks for a
continuation ("+ ") before the client sends n octets (RFC 3501 §7.5), one ending in `{n+}` is
followed by them at once (LITERAL+, RFC 7888). The `Tokenizer` turns each line into atoms,
strings and lists as it arrives and says when a literal follows; `CommandReader` does the
reading, enforces the limits (line length, list nesting, literal size) and streams big APPEND
literals into a file, so a 50 MB message never sits in memory.

Errors leave the connection in step with the client: a refused synchronizing literal is simply
never asked for, a refused non-synchronizing one is read and thrown away with the rest of the
command, and the caller answers `tag BAD` / `tag NO [TOOBIG]`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from appliance.connection import Connection
from appliance.imap.tokens import Atom, Token

log = logging.getLogger("appliance.imap")

MAX_DEPTH = 16  # nested parenthesized lists (SEARCH groups, fetch lists); more is an attack
MAX_LITERALS = 1000  # literals in one command
MEMORY_LITERALS = 1024 * 1024  # literal bytes per command kept in memory (all but APPEND's message)
# Before login a literal can only carry a LOGIN user name or password: more is never asked for,
# and a bigger non-synchronizing one ends the connection instead of being read (RFC 7888 §4).
PRE_AUTH_LITERAL = 4096
SPOOL_ABOVE = 1024 * 1024  # an APPEND literal above this goes to a temporary file
SPOOL_CHUNK = 1024 * 1024  # bytes written to the spool file per executor call
CONTINUATION = b"+ Ready for literal data\r\n"

_LITERAL = re.compile(rb"\{(\d{1,19})(\+?)\}")
_LITERAL_AT_END = re.compile(rb"\{(\d{1,19})(\+?)\}$")
# RFC 3501 §9: tag = 1*<any ASTRING-CHAR except "+">; ATOM-CHAR excludes "(){ %*\"\\" and CTLs.
_TAG = re.compile(rb"^[!#$&'\x2c-\x5b\x5d-\x7a|}~]+$")
_COMMAND_NAME = re.compile(rb"^[A-Za-z][A-Za-z0-9-]{0,31}$")
_ATOM_END = frozenset(b" ()")
_CTL = frozenset(range(0x20)) | {0x7F}
# Fetch attributes followed by a section in brackets (RFC 3501 §6.4.5, RFC 3516 BINARY).
_SECTION_PREFIXES = frozenset({b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"})


class CommandSyntaxError(Exception):
    """The command is malformed: answer `tag BAD text` (or `* BAD text` without a tag). With
    `fatal`, the rest of the command was not read: the session closes the connection after it."""

    def __init__(self, text: str, tag: str | None = None, *, fatal: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.tag = tag
        self.fatal = fatal


class CommandRefused(Exception):
    """The command is well-formed but cannot be taken (a literal too big): `tag NO [code] text`."""

    def __init__(self, tag: str, code: str, text: str) -> None:
        super().__init__(text)
        self.tag, self.code, self.text = tag, code, text


class FileLiteral(bytes):
    """A literal spooled to a file (an APPEND message over SPOOL_ABOVE). Its bytes value is b"";
    the data is in `path` (`size` octets, as sent). The session removes the file afterwards."""

    path: Path
    size: int

    def __new__(cls, path: Path, size: int) -> FileLiteral:
        self = super().__new__(cls, b"")
        self.path = path
        self.size = size
        return self


class MessageLiteral(bytes):
    """An APPEND literal kept in memory: marked, so that APPEND tells a message from a quoted
    date-time string (RFC 3502: several messages, each with optional flags and date)."""


@dataclass
class Command:
    tag: str
    name: str  # upper case
    args: list[Token]
    files: list[Path] = field(default_factory=list)  # spooled literals, to remove when done


class Tokenizer:
    """Arguments of one command, line by line (RFC 3501 §4: atoms, quoted strings, literals, lists).

    Fetch attributes are kept whole, brackets and all: `BODY.PEEK[HEADER.FIELDS (A B)]<0.10>`
    is one Atom (inside "[...]" spaces and parentheses belong to the atom).
    """

    def __init__(self, max_depth: int = MAX_DEPTH) -> None:
        self.args: list[Token] = []
        self._stack: list[list[Token]] = [self.args]
        self._max_depth = max_depth

    def feed(self, line: bytes) -> tuple[int, bool] | None:
        """Tokenize one line; (size, synchronizing) when it ends with a literal's announcement."""
        i, n = 0, len(line)
        while i < n:
            char = line[i]
            if char == 0x20:  # SP between tokens (a run of them is tolerated)
                i += 1
            elif char == 0x28:  # "("
                if len(self._stack) > self._max_depth:
                    raise CommandSyntaxError("Too many nested lists")
                nested: list[Token] = []
                self._stack[-1].append(nested)
                self._stack.append(nested)
                i += 1
            elif char == 0x29:  # ")"
                if len(self._stack) == 1:
                    raise CommandSyntaxError("Unexpected )")
                self._stack.pop()
                i += 1
            elif char == 0x22:  # '"'
                i = self._quoted(line, i + 1)
            elif char == 0x7B:  # "{": RFC 3501 §4.3 literal, only at the end of a line
                match = _LITERAL.fullmatch(line, i)
                if match is None:
                    raise CommandSyntaxError("Invalid literal")
                return int(match.group(1)), not match.group(2)
            elif char == 0x7E and (match := _LITERAL.fullmatch(line, i + 1)) is not None:
                return int(match.group(1)), not match.group(2)  # "~{n}": RFC 3516 literal8 (APPEND)
            else:
                i = self._atom(line, i)
        return None

    def literal(self, data: bytes) -> None:
        self._stack[-1].append(data)

    def finish(self) -> list[Token]:
        if len(self._stack) != 1:
            raise CommandSyntaxError("Missing )")
        return self.args

    def _quoted(self, line: bytes, i: int) -> int:
        """RFC 3501 §4.3 quoted string: \\" and \\\\ are the only escapes."""
        end = line.find(b'"', i)
        if end < 0:
            raise CommandSyntaxError("Unterminated quoted string")
        if b"\\" not in line[i:end] and b"\0" not in line[i:end]:
            self._stack[-1].append(line[i:end])
            return end + 1
        value = bytearray()
        n = len(line)
        while i < n:
            char = line[i]
            if char == 0x5C:  # backslash
                if i + 1 >= n or line[i + 1] not in b'"\\':
                    raise CommandSyntaxError("Invalid escape in quoted string")
                value.append(line[i + 1])
                i += 2
            elif char == 0x22:
                self._stack[-1].append(bytes(value))
                return i + 1
            elif char == 0:
                raise CommandSyntaxError("NUL in quoted string")
            else:
                value.append(char)
                i += 1
        raise CommandSyntaxError("Unterminated quoted string")

    def _atom(self, line: bytes, i: int) -> int:
        start, n = i, len(line)
        while i < n:
            char = line[i]
            if char in _ATOM_END:
                break
            if char == 0x5B and line[start:i].upper() in _SECTION_PREFIXES:
                # "BODY[...]": up to the matching "]", spaces and parentheses included. Elsewhere
                # "[" is an ATOM-CHAR and "]" an ASTRING-CHAR (RFC 3501 §9): mailbox names,
                # passwords and SEARCH strings may hold either.
                close = line.find(b"]", i)
                if close < 0:
                    raise CommandSyntaxError("Missing ]")
                if any(byte in _CTL for byte in line[i:close]):
                    raise CommandSyntaxError("Control character in atom")
                i = close + 1
                continue
            if char in _CTL or char == 0x22 or char == 0x7B:
                raise CommandSyntaxError("Invalid character in atom")
            i += 1
        self._stack[-1].append(Atom(line[start:i].decode("utf-8", "surrogateescape")))
        return i


@dataclass
class Limits:
    line: int  # longest line (RFC 7162 §4 asks servers to take at least 8192 octets)
    literal: int  # largest literal (the largest message an APPEND may bring)
    timeout: float  # seconds of silence allowed while a command is being read
    # Before login (None after it): why a command cannot run in this state, or None when it can.
    # Its literals are then never asked for, and nothing a client sends is held or spooled.
    pre_auth: Callable[[str], str | None] | None = None


class CommandReader:
    """Reads whole commands from a connection."""

    def __init__(
        self,
        connection: Connection,
        spool_dir: Callable[[], Path],
        executor: concurrent.futures.Executor,
    ) -> None:
        self.connection = connection
        self._spool_dir = spool_dir
        self._executor = executor
        self.bytes_in = 0

    async def read(self, limits: Limits) -> Command:
        """The next command. Raises CommandSyntaxError / CommandRefused once the whole command
        has been consumed, LineTooLong (the line was discarded), TimeoutError, ConnectionClosed."""
        line = await self._line(limits)
        head, _, rest = line.partition(b" ")
        if not line.strip():
            raise CommandSyntaxError("Empty command line")
        tag = head.decode("ascii", "replace") if _TAG.match(head) else None
        name_bytes, _, arguments = rest.partition(b" ")
        if tag is None or not _COMMAND_NAME.match(name_bytes):
            await self._skip(line, limits)
            raise CommandSyntaxError("Invalid tag" if tag is None else "Missing or invalid command", tag)
        name = name_bytes.decode("ascii").upper()
        tokenizer = Tokenizer()
        files: list[Path] = []
        literals = memory = 0
        current = arguments
        try:
            while True:
                try:
                    request = tokenizer.feed(current)
                except CommandSyntaxError as error:
                    await self._skip(current, limits)
                    raise CommandSyntaxError(error.text, tag) from None
                if request is None:
                    break
                size, synchronizing = request
                literals += 1
                if limits.pre_auth is not None:
                    await self._pre_auth_literal(tag, limits.pre_auth(name), size, synchronizing, limits)
                # MULTIAPPEND (RFC 3502) may bring many messages: in memory up to MEMORY_LITERALS
                # together, the rest spooled.
                spool = name == "APPEND" and (size > SPOOL_ABOVE or memory + size > MEMORY_LITERALS)
                allowed = limits.literal if name == "APPEND" else MEMORY_LITERALS - memory
                if size > allowed or literals > MAX_LITERALS:
                    if not synchronizing:  # RFC 7888 §4: already on its way; read and drop it
                        await self._discard(size, limits)
                        await self._skip_following(limits)
                    raise CommandRefused(tag, "TOOBIG", "Literal too big")
                if synchronizing:
                    self.connection.write(CONTINUATION)
                    await self.connection.drain()
                if spool:
                    path = await self._spool(size, limits)
                    if path is None:  # the disk failed; the literal was read and dropped
                        await self._skip_following(limits)
                        raise CommandRefused(tag, "UNAVAILABLE", "Cannot store the message now")
                    files.append(path)
                    tokenizer.literal(FileLiteral(path, size))
                else:
                    memory += size
                    data = await self.connection.read_exactly(size, limits.timeout)
                    tokenizer.literal(MessageLiteral(data) if name == "APPEND" else data)
                    self.bytes_in += size
                current = await self._line(limits)
            try:
                args = tokenizer.finish()
            except CommandSyntaxError as error:
                raise CommandSyntaxError(error.text, tag) from None
            return Command(tag, name, args, files)
        except BaseException:
            for path in files:
                path.unlink(missing_ok=True)
            raise

    async def _pre_auth_literal(
        self, tag: str, refusal: str | None, size: int, synchronizing: bool, limits: Limits
    ) -> None:
        """Before login: a literal of a command that cannot run now, or one over PRE_AUTH_LITERAL,
        is refused without a continuation ("+"); an unasked-for one that big is not read at all."""
        if refusal is None and size <= PRE_AUTH_LITERAL:
            return
        if not synchronizing:
            if size > PRE_AUTH_LITERAL:
                raise CommandSyntaxError("Literal too big before login", tag, fatal=True)
            await self._discard(size, limits)  # RFC 7888 §4: already on its way
            await self._skip_following(limits)
        if refusal is not None:
            raise CommandSyntaxError(refusal, tag)
        raise CommandRefused(tag, "TOOBIG", "Literal too big before login")

    async def _line(self, limits: Limits) -> bytes:
        line = await self.connection.readline(limits.line, limits.timeout)
        self.bytes_in += len(line) + 2
        return line

    async def _skip(self, line: bytes, limits: Limits) -> None:
        """After a syntax error in `line`: consume what the client still sends of the command."""
        match = _LITERAL_AT_END.search(line)
        if match is None or not match.group(2):
            return  # nothing follows, or a synchronizing literal that is never asked for
        await self._discard(int(match.group(1)), limits)
        await self._skip_following(limits)

    async def _skip_following(self, limits: Limits) -> None:
        for _ in range(MAX_LITERALS):
            line = await self._line(limits)
            match = _LITERAL_AT_END.search(line)
            if match is None or not match.group(2):
                return
            await self._discard(int(match.group(1)), limits)

    async def _discard(self, size: int, limits: Limits) -> None:
        if limits.pre_auth is not None and size > PRE_AUTH_LITERAL:
            raise CommandSyntaxError("Literal too big before login", fatal=True)
        while size > 0:
            size -= len(await self.connection.read_some(min(size, SPOOL_CHUNK), limits.timeout))

    async def _spool(self, size: int, limits: Limits) -> Path | None:
        """Stream a literal into a file under the data directory, written in large chunks.

        None when the file cannot be written (disk full...): the literal is then still read to
        its end, so that the connection stays in step with the client.
        """
        loop = asyncio.get_running_loop()
        handle: BinaryIO | None = None
        path: Path | None = None
        try:
            handle, path = await loop.run_in_executor(self._executor, _open_spool, self._spool_dir())
        except OSError as error:
            log.error("imap spool unavailable error=%s", error)
        try:
            pending: list[bytes] = []
            held = 0
            remaining = size
            while remaining > 0:
                data = await self.connection.read_some(min(remaining, SPOOL_CHUNK), limits.timeout)
                remaining -= len(data)
                self.bytes_in += len(data)
                if handle is None:
                    continue
                pending.append(data)
                held += len(data)
                if held >= SPOOL_CHUNK or remaining == 0:
                    try:
                        await loop.run_in_executor(self._executor, handle.write, b"".join(pending))
                    except OSError as error:
                        log.error("imap spool write failed error=%s", error)
                        if path is not None:
                            await loop.run_in_executor(self._executor, _close_and_remove, handle, path)
                        handle = path = None
                    pending.clear()
                    held = 0
        except BaseException:
            if handle is not None and path is not None:
                await loop.run_in_executor(self._executor, _close_and_remove, handle, path)
            raise
        if handle is not None:
            await loop.run_in_executor(self._executor, handle.close)
        return path


def _open_spool(directory: Path) -> tuple[BinaryIO, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix="append-", dir=directory)
    return open(descriptor, "wb", closefd=True), Path(name)


def _close_and_remove(handle: BinaryIO, path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


def remove_spool(directory: Path) -> None:
    """Remove spool files a previous process left behind (called at start, in the executor)."""
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith("append-"):
            try:
                os.unlink(entry)
            except OSError:
                pass
