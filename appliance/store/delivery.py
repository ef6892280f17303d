"""New message files in a Maildir: the one write sequence for SMTP delivery and IMAP APPEND/COPY.

A message is durable before anyone is told it is stored: its file is written and fsynced under
no name (durable.py), named `<unique>,S=<bytes>,W=<wire size>` in new/ (delivery) or with its
`:2,<flags>` in cur/ (APPEND, COPY), and that directory fsynced. A second mailbox or a COPY gets
a hard link to the same file (a copy made the same way when a link is impossible).
`MaildirWriter` is the delivery side: unique names, one file linked into every recipient's
Maildir, group-committed syncs of new/, and `withdraw` to take back what a delivery that failed
half way left (all recipients or none: the delivery process may die between two links).
Everything here blocks: run it in an executor or in the delivery process (store/writer.py).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from appliance.store import durable
from appliance.store.maildir import INFO_SEPARATOR, Maildir, find_message, wire_size

COPY_CHUNK = 1 << 20
_NO_LINK = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP)

Sync = Callable[[Path], None]


class DeliveryError(OSError):
    """Writing a message failed; nothing of it is left in any mailbox."""


def write_message(
    root: Path,
    unique: str,
    data: bytes | Path,
    *,
    sub: Literal["new", "cur"] = "new",
    letters: str | None = None,
    mtime: float | None = None,
    crlf: bool = True,
    sync: Sync | None = durable.fsync_directory,
) -> str:
    """Store a message in the Maildir at `root` durably; returns its file name.

    `data` has CRLF or LF line ends (stored with LF); a Path is streamed (an IMAP literal
    spooled to disk); with `crlf=False` it is final (LF line ends already) and stored as it is.
    The name is "<unique>,S=<bytes stored>,W=<size with CRLF>", with ":2,<letters>" when
    `letters` is given (cur/). `mtime` becomes the file's modification time
    (IMAP's internal date). `sync(sub directory)` makes the name durable before this returns;
    None leaves that to the caller (once for a batch). A Maildir missing its directories (or
    one some other program removed) is created.
    """
    suffix = "" if letters is None else f"{INFO_SEPARATOR}{letters}"
    directory = root / sub
    content = _LfContent(data, crlf)

    def target() -> Path:
        return directory / f"{unique},S={content.stored},W={content.wire}{suffix}"

    try:
        path = durable.create_file(root / "tmp", unique, content, target, mtime=mtime)
    except FileNotFoundError:
        if all((root / part).is_dir() for part in ("tmp", sub)):
            raise
        Maildir(root).ensure()
        path = durable.create_file(root / "tmp", unique, content, target, mtime=mtime)
    _sync_or_remove(path, sync)
    return path.name


def delivered_name(unique: str, data: bytes) -> str:
    """The name `MaildirWriter.deliver` gives `data` (final bytes, LF line ends) in new/."""
    return f"{unique},S={len(data)},W={wire_size(data)}"


def link_message(
    source: Path, root: Path, name: str, *, sub: Literal["new", "cur"] = "new", sync: Sync | None = None
) -> Path:
    """The message file `source` also as `root/sub/name`: a hard link, or a durable copy (with
    its modification time) where the filesystem cannot link. FileNotFoundError when `source`
    is gone. `sync` as for write_message."""
    target = root / sub / name
    try:
        linked = _try_link(source, target)
    except FileNotFoundError:
        if source.exists():
            Maildir(root).ensure()
        linked = _try_link(source, target)
    if not linked:
        mtime = os.stat(source).st_mtime
        durable.create_file(root / "tmp", name, _FileChunks(source), lambda: target, mtime=mtime)
    _sync_or_remove(target, sync)
    return target


def copy_messages(source: Path, target: Path, jobs: list[tuple[Path, str, str, str]]) -> list[str | None]:
    """IMAP COPY: each message (path, key, new unique name, flags) linked into `target`'s cur/
    as "<unique>:2,<letters>", found by key in `source` if it moved meanwhile, and cur/ fsynced
    once for all; the new keys (None for a message that is gone)."""
    done: list[str | None] = []
    for path, key, unique, letters in jobs:
        name = f"{unique}{INFO_SEPARATOR}{letters}"
        try:
            link_message(path, target, name, sub="cur")
        except FileNotFoundError:
            current = find_message(source, key)
            if current is None:
                done.append(None)
                continue
            link_message(current, target, name, sub="cur")
        done.append(unique)
    durable.fsync_directory(target / "cur")
    return done


def _try_link(source: Path, target: Path) -> bool:
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno in _NO_LINK:
            return False
        raise
    return True


def _sync_or_remove(path: Path, sync: Sync | None) -> None:
    if sync is None:
        return
    try:
        sync(path.parent)
    except BaseException:
        try:
            os.unlink(path)  # never acknowledged: it must not turn up later
        except OSError:
            pass
        raise


class _LfContent:
    """A message's bytes with LF line ends, in chunks; counts what it gave (stored bytes and the
    size with CRLF) on each pass, so a second try counts afresh."""

    def __init__(self, data: bytes | Path, crlf: bool) -> None:
        self.data = data
        self.crlf = crlf
        self.stored = self.wire = 0

    def __iter__(self) -> Iterator[bytes]:
        self.stored = self.wire = 0
        for chunk in self._chunks():
            self.stored += len(chunk)
            self.wire += wire_size(chunk)
            yield chunk

    def _chunks(self) -> Iterator[bytes]:
        data = self.data
        if isinstance(data, bytes):
            yield data.replace(b"\r\n", b"\n") if self.crlf and b"\r" in data else data
            return
        if not self.crlf:
            yield from _FileChunks(data)
            return
        carry = b""  # a CR at a chunk's end waits for the next chunk's LF
        for chunk in _FileChunks(data):
            chunk = carry + chunk
            carry = b""
            if chunk.endswith(b"\r"):
                chunk, carry = chunk[:-1], b"\r"
            yield chunk.replace(b"\r\n", b"\n")
        if carry:
            yield carry


class _FileChunks:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as handle:
            while chunk := handle.read(COPY_CHUNK):
                yield chunk


class MaildirWriter:
    """Blocking delivery into Maildirs' new/: unique file names, the files, and group-committed
    syncs of new/. Thread-safe; one per process (the names carry the process id)."""

    def __init__(self) -> None:
        self._syncs = durable.DirectorySyncs()
        # Maildir unique names: "<seconds>.M<usec>P<pid>Q<counter>.<host>", with "/" and ":"
        # escaped in the host name as the Maildir convention says.
        self._host = socket.gethostname().replace("/", r"\057").replace(":", r"\072") or "localhost"
        self._counter = itertools.count(1)
        self._pid = os.getpid()

    def deliver(self, data: bytes, maildirs: Sequence[Path], unique: str | None = None) -> list[Path]:
        """Write `data` (final bytes, LF line ends) into each Maildir's new/; blocking.

        `unique` is the Maildir unique name to use (made here when None): the file is named
        `delivered_name(unique, data)` in every new/, so whoever asked can `withdraw` it. The
        first mailbox gets the file written (write_message), the others hard links to it (a
        copy when a link is impossible, the bytes written again when a reader of the first
        mailbox moved the file meanwhile). Each new/ is fsynced (shared between concurrent
        deliveries) before this returns. On any failure every file already placed is removed
        again and DeliveryError is raised.
        """
        unique = unique or self.unique_name()
        placed: list[Path] = []
        try:
            for root in maildirs:
                if not placed:
                    name = write_message(root, unique, data, crlf=False, sync=self._syncs.sync)
                    placed.append(root / "new" / name)
                else:
                    try:
                        placed.append(link_message(placed[0], root, placed[0].name, sync=self._syncs.sync))
                    except FileNotFoundError:
                        # The first copy moved on before it was linked (a client of that mailbox
                        # already saw it: new/ to cur/, or expunged): write this one afresh,
                        # under the same name, so withdraw still finds it.
                        name = write_message(root, unique, data, crlf=False, sync=self._syncs.sync)
                        placed.append(root / "new" / name)
        except OSError as error:
            for path in placed:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise DeliveryError(error.errno, error.strerror, error.filename) from error
        return placed

    def withdraw(self, data: bytes, maildirs: Sequence[Path], unique: str) -> int:
        """Remove what a delivery of `data` as `unique` left in `maildirs` (its file in new/, a
        half-written one in tmp/), each new/ it left in fsynced, so the removal is on disk before
        the client hears 4xx; how many mailboxes held it. Blocking. For a delivery whose writer
        died half way (the delivery process killed): its links must not outlive the failure."""
        name = delivered_name(unique, data)
        removed = 0
        for root in maildirs:
            for leftover in (root / "tmp" / unique, root / "tmp" / name):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
            try:
                os.unlink(root / "new" / name)
            except FileNotFoundError:
                continue
            removed += 1
            self._syncs.sync(root / "new")
        return removed

    def unique_name(self) -> str:
        """A Maildir unique name, "<seconds>.M<usec>P<pid>Q<counter>.<host>" (thread-safe)."""
        now = time.time()
        seconds = int(now)
        usec = int((now - seconds) * 1_000_000)
        return f"{seconds}.M{usec}P{self._pid}Q{next(self._counter)}.{self._host}"
