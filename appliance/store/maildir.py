"""One Maildir++ mailbox on disk: its layout, its message files, reading them and their flags.

Layout (https://cr.yp.to/proto/maildir.html, Maildir++ folders as `.<Name>/`): each account has
`<data_dir>/mail/<domain>/<local>/` with `tmp/`, `new/` and `cur/`. A message file is named
`<unique>,S=<bytes on disk>,W=<RFC 822 size with CRLF>` in `new/`, and gains `:2,<flags>` when it
moves to `cur/` (Dovecot's size fields, so sizes need no read). Messages are stored with LF line
ends, as Dovecot and mutt expect.

New message files are written by delivery.py (the one write sequence, for SMTP delivery and IMAP
APPEND/COPY); the store's quota and delivery entry point is mailstore.py. Every function here
touches the disk and must run in an executor.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from appliance.store.durable import create_directories, fsync_directory

INFO_SEPARATOR = ":2,"  # Maildir "experimental semantics" info, version 2: the flags follow
SUBDIRECTORIES = ("cur", "new", "tmp")
HEADER_CHUNK = 8192
MAX_HEADER = 1 << 20  # a header longer than this is read as its first megabyte
_SIZE_FIELD = re.compile(r",S=(\d+)")
_WIRE_SIZE_FIELD = re.compile(r",W=(\d+)")
_ORDER = re.compile(r"^(\d+)\.(?:[^.]*?M(\d+))?")  # "<seconds>.M<usec>P<pid>Q<n>.<host>"


@dataclass(frozen=True)
class MessageFile:
    key: str  # the unique base name (before ":2,"), the same in new/ and cur/: the UIDL
    path: Path
    size: int  # RFC 822 size with CRLF line ends (the W= field)
    flags: str  # Maildir flags after ":2,", e.g. "S" or "FS"; "" in new/
    in_new: bool


class Usage:
    """A cheap estimate of the bytes in one mailbox: S= fields summed, then kept up to date."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.counted_at = time.monotonic()
        self.lock = threading.Lock()

    def add(self, delta: int) -> None:
        with self.lock:
            self.size = max(0, self.size + delta)


class Maildir:
    """One Maildir (an account's INBOX, or one of its `.Folder`s)."""

    def __init__(self, path: Path, usage: Usage | None = None) -> None:
        self.path = Path(path)
        self._usage = usage

    def __repr__(self) -> str:
        return f"Maildir({str(self.path)!r})"

    def ensure(self) -> None:
        """Create `cur/ new/ tmp/` (and missing parents) when they do not exist yet."""
        if all((self.path / sub).is_dir() for sub in SUBDIRECTORIES):
            return
        create_directories(self.path, SUBDIRECTORIES)

    def folder(self, name: str) -> Maildir:
        """The Maildir++ folder `name` ("Sent", "Archive.2024"): `<maildir>/.<name>/`."""
        if not name or "/" in name or name.startswith(".") or name in (".", ".."):
            raise ValueError(f"not a folder name: {name!r}")
        return Maildir(self.path / f".{name}", self._usage)

    def folders(self) -> list[str]:
        """Names of the Maildir++ folders that exist, sorted."""
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(
            entry[1:]
            for entry in entries
            if entry.startswith(".") and entry not in (".", "..") and (self.path / entry / "cur").is_dir()
        )

    def scan(self) -> list[MessageFile]:
        """Messages in new/ and cur/, oldest first; the order is stable between scans."""
        found: dict[str, MessageFile] = {}
        # new/ before cur/: a message moved new/ → cur/ between the two listings is seen twice
        # (and kept once, from cur/), never missed.
        for sub, in_new in (("new", True), ("cur", False)):
            directory = self.path / sub
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith("."):
                    continue
                message = _message_file(directory / name, name, in_new)
                if message is not None:
                    found[message.key] = message
        return sorted(found.values(), key=lambda message: age_order(message.key))

    def open(self, message: MessageFile) -> BinaryIO:
        """The stored bytes (LF line ends), even when the file has moved or changed flags since."""
        try:
            return open(message.path, "rb")
        except FileNotFoundError:
            current = self._find(message.key)
            if current is None:
                raise
            return open(current, "rb")

    def mark_seen(self, message: MessageFile) -> MessageFile:
        """Add the Seen flag, moving the file from new/ to cur/ (`<key>:2,S`)."""
        return self.set_flags(message, "".join(sorted(set(message.flags) | {"S"})))

    def set_flags(self, message: MessageFile, flags: str) -> MessageFile:
        """Give the message exactly `flags` (Maildir letters, kept in ASCII order) in cur/."""
        flags = "".join(sorted(set(flags)))
        target = self.path / "cur" / f"{message.key}{INFO_SEPARATOR}{flags}"
        if target == message.path:
            return message
        source = message.path
        try:
            os.rename(source, target)
        except FileNotFoundError:
            found = self._find(message.key)
            if found is None:
                raise
            source = found
            os.rename(source, target)
        return MessageFile(message.key, target, message.size, flags, False)

    def delete(self, message: MessageFile) -> None:
        """Remove the message (raises FileNotFoundError when it is already gone)."""
        path = message.path
        try:
            os.unlink(path)
        except FileNotFoundError:
            found = self._find(message.key)
            if found is None:
                raise
            path = found
            os.unlink(path)
        if self._usage is not None:
            self._usage.add(-stored_size(path.name, default=message.size))

    def _find(self, key: str) -> Path | None:
        return find_message(self.path, key)


# -- changes to many messages at once (IMAP STORE, EXPUNGE) ----------------------------------
def rename_with_flags(folder: Path, moves: list[tuple[str, str, str, str]]) -> list[str | None]:
    """Messages (sub, name, key, letters) renamed to cur/<key>:2,<letters>, found by key if one
    moved meanwhile, and cur/ fsynced; the new names (None for one that is gone)."""
    names: list[str | None] = []
    for sub, name, key, letters in moves:
        base = name.partition(INFO_SEPARATOR)[0]
        target_name = f"{base}{INFO_SEPARATOR}{letters}"
        target = folder / "cur" / target_name
        try:
            os.rename(folder / sub / name, target)
        except FileNotFoundError:
            current = find_message(folder, key)
            if current is None:
                names.append(None)
                continue
            try:
                os.rename(current, target)
            except FileNotFoundError:
                names.append(None)
                continue
        names.append(target_name)
    fsync_directory(folder / "cur")
    return names


def remove_messages(folder: Path, places: list[tuple[str, str, str]]) -> int:
    """Messages (sub, name, key) removed, found by key if one moved meanwhile, and their
    directories fsynced; the bytes freed (for the quota)."""
    freed = 0
    touched = set()
    for sub, name, key in places:
        path = folder / sub / name
        try:
            size = disk_size(path)
            os.unlink(path)
        except FileNotFoundError:
            current = find_message(folder, key)
            if current is None:
                continue
            size = disk_size(current)
            try:
                os.unlink(current)
            except FileNotFoundError:
                continue
            sub = current.parent.name
        freed += size
        touched.add(sub)
    for sub in touched:
        fsync_directory(folder / sub)
    return freed


# -- names and bytes ------------------------------------------------------------------------------
def to_lf(message: bytes) -> bytes:
    """CRLF line ends (SMTP) as LF (Maildir)."""
    return message.replace(b"\r\n", b"\n") if b"\r" in message else message


def wire_size(data: bytes) -> int:
    """The size with CRLF line ends, as POP3 and IMAP count it (RFC 1939 §11, RFC 3501 §2.3.4)."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def _message_file(path: Path, name: str, in_new: bool) -> MessageFile | None:
    key, separator, flags = name.partition(INFO_SEPARATOR)
    if not separator and ":" in name:
        return None  # some other info version: not ours to interpret
    size = message_size(path, key)
    if size is None:
        return None
    return MessageFile(key, path, size, flags if separator else "", in_new)


def message_size(path: Path, key: str) -> int | None:
    """RFC 822 size with CRLF: the W= field of the key, or counted from the file (None: gone)."""
    wire = _WIRE_SIZE_FIELD.search(key)
    if wire is not None:
        return int(wire.group(1))
    try:
        with open(path, "rb") as handle:
            return wire_size(handle.read())
    except (FileNotFoundError, IsADirectoryError):
        return None


def age_order(key: str) -> tuple[int, int, str]:
    """Delivery order from the unique name "<seconds>.M<usec>P<pid>..." (others first, by name)."""
    match = _ORDER.match(key)
    if match is None:
        return (0, 0, key)
    return (int(match.group(1)), int(match.group(2) or 0), key)


def stored_size(name: str, default: int) -> int:
    """Bytes on disk from the S= field of a file name; `default` when it has none."""
    match = _SIZE_FIELD.search(name)
    return int(match.group(1)) if match else default


def disk_size(path: Path) -> int:
    """Bytes the message file takes, for the quota: its S= field, or a stat (0 when gone)."""
    size = stored_size(path.name, -1)
    if size >= 0:
        return size
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def read_message_file(path: str | Path, size: int, folder: Path, key: str) -> bytes | None:
    """A message file's stored bytes, or None when it is gone (looked for under `key` first if
    another session moved it meanwhile).

    Three system calls (open, read, close) rather than the eight or more of a buffered file
    object: at thousands of messages a second, that is a tenth of the server's CPU. `size` (the
    size with CRLF line ends, W=, never below the size on disk; 0 when unknown) lets one read
    take the whole file.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        moved = find_message(folder, key)
        if moved is None:
            return None
        try:
            descriptor = os.open(moved, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
    try:
        wanted = size + 1 if size > 0 else 1 << 20
        data = os.read(descriptor, wanted)
        if len(data) >= wanted:  # larger than expected (or no size given): read on to the end
            chunks = [data]
            while chunk := os.read(descriptor, 1 << 20):
                chunks.append(chunk)
            data = b"".join(chunks)
    finally:
        os.close(descriptor)
    return data


def find_message(folder: Path, key: str) -> Path | None:
    """Where the message with `key` is now in a Maildir (another session may have moved it)."""
    for sub in ("cur", "new"):
        directory = folder / sub
        if (directory / key).exists():
            return directory / key
        prefix = key + INFO_SEPARATOR
        try:
            for name in os.listdir(directory):
                if name.startswith(prefix):
                    return directory / name
        except FileNotFoundError:
            continue
    return None


def read_crlf(path: str | Path, folder: Path, key: str, size: int = 0) -> bytes | None:
    """A message's bytes with CRLF line ends (stored with LF); None when it is gone. `size`:
    RFC822.SIZE, so that one read takes the whole file (read_message_file)."""
    data = read_message_file(path, size, folder, key)
    return None if data is None else to_crlf(data)


def read_header(path: str | Path, folder: Path, key: str) -> bytes | None:
    """A message's header with CRLF line ends, blank line included (the body is not read)."""
    handle = _open_current(path, folder, key)
    if handle is None:
        return None
    with handle:
        data = b""
        while len(data) < MAX_HEADER:
            chunk = handle.read(HEADER_CHUNK)
            data += chunk
            end = data.find(b"\n\n")
            if end < 0:
                end = data.find(b"\r\n\r\n")
                end = end + 2 if end >= 0 else -1
            if end >= 0:
                return to_crlf(data[: end + 2])
            if not chunk:
                break
        return to_crlf(data)


def _open_current(path: str | Path, folder: Path, key: str) -> BinaryIO | None:
    """The message file at `path`, or where it is now if another session renamed it meanwhile;
    None when it is gone."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        moved = find_message(folder, key)
        if moved is None:
            return None
        try:
            return open(moved, "rb")
        except FileNotFoundError:
            return None


def to_crlf(data: bytes) -> bytes:
    """LF line ends (Maildir) as CRLF (POP3, IMAP), CRLFs already there left as they are."""
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)
