"""The disk side of IMAP folders: UID lists, keywords, listings and message files.

Every function here blocks and runs in the executor, with the folder's lock held by the caller
(mailbox.py). Nothing here keeps state between calls.

`appliance-uidlist` (one per Maildir folder) is an append-only log, so that a new message costs
one short line, not a rewrite of the whole list:

    appliance-uidlist 1 <uidvalidity>      header, written once
    +<uid> <internaldate> <size> <key>     a UID given to the message with that Maildir key
    R<uid>                                 every UID up to this one has been \\Recent somewhere
    N<uid>                                 the next UID is at least this (after a compaction)

A record whose message is gone from disk is dropped when the log is compacted (rewritten with
only the live records, crash-safely: temporary file, fsync, rename). A torn last line (a crash
while appending) is cut off before the next append. Lines are fsynced before a UID is reported
to any client, so a UID once seen never changes (RFC 3501 §2.3.1.1).

Flags are in the file names (`:2,` info, as every Maildir reader agrees): D \\Draft,
F \\Flagged, R \\Answered, S \\Seen, T \\Deleted, and keywords as the letters a-z, mapped through
`dovecot-keywords` ("<index> <name>" per line, index 0 = "a"), as Dovecot does.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from appliance.store.maildir import (
    INFO_SEPARATOR,
    find_message,
    fsync_directory,
    message_size,
    read_message_file,
    try_link,
    wire_size,
    write_all,
)

UIDLIST = "appliance-uidlist"
KEYWORDS = "dovecot-keywords"
SUBSCRIPTIONS = "subscriptions"
DELETED_PREFIX = "~deleted-"  # a folder being deleted is renamed to this first
_HEADER = "appliance-uidlist 1"
MAX_KEYWORDS = 26
SYSTEM_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_FLAGS = {letter: flag for flag, letter in SYSTEM_LETTERS.items()}
COPY_CHUNK = 1 << 20
HEADER_CHUNK = 8192
MAX_HEADER = 1 << 20  # a header longer than this is searched by its first megabyte


@dataclass(frozen=True, slots=True)
class Record:
    uid: int
    internaldate: float
    size: int  # RFC822.SIZE (CRLF)


@dataclass
class UidList:
    uidvalidity: int
    uidnext: int
    recent_upto: int
    records: dict[str, Record]  # Maildir key → its UID record
    lines: int  # records in the file, live or not (for compaction)


@dataclass(frozen=True, slots=True)
class Found:
    """A message file a listing found that the index did not know (or knew under another name)."""

    key: str
    sub: str  # "new" or "cur"
    name: str
    letters: str  # the flags after ":2,"


# -- the UID list ---------------------------------------------------------------------------------
def load_uidlist(folder: Path, uidvalidity: int) -> UidList:
    """The folder's UID list; a new one (with `uidvalidity`) when it has none or it is unreadable."""
    path = folder / UIDLIST
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        data = b""
    lines = data.split(b"\n")
    head = lines[0].decode("ascii", "replace").split(" ")
    if len(head) != 3 or " ".join(head[:2]) != _HEADER or not head[2].isdigit():
        return _new_uidlist(folder, uidvalidity)
    result = UidList(int(head[2]), 1, 0, {}, 0)
    complete = data.endswith(b"\n")
    for raw in lines[1:-1]:  # the last is b"" after a complete line, or a torn one (ignored)
        line = raw.decode("utf-8", "surrogateescape")
        if line.startswith("+"):
            parts = line[1:].split(" ", 3)
            if len(parts) != 4 or not parts[0].isdigit():
                continue
            try:
                record = Record(int(parts[0]), float(parts[1]), int(parts[2]))
            except ValueError:
                continue
            result.records[parts[3]] = record
            result.lines += 1
            result.uidnext = max(result.uidnext, record.uid + 1)
        elif line[:1] in ("R", "N") and line[1:].isdigit():
            if line[0] == "R":
                result.recent_upto = max(result.recent_upto, int(line[1:]))
            else:
                result.uidnext = max(result.uidnext, int(line[1:]))
    if not complete:
        _cut_torn_line(path, data)
    return result


def _new_uidlist(folder: Path, uidvalidity: int) -> UidList:
    """A fresh list: a new UIDVALIDITY, so that no client trusts UIDs it knew before (§2.3.1.1)."""
    result = UidList(uidvalidity, 1, 0, {}, 0)
    if folder.is_dir():
        rewrite_uidlist(folder, result)
    return result


def _cut_torn_line(path: Path, data: bytes) -> None:
    end = data.rfind(b"\n") + 1
    with open(path, "r+b") as handle:
        handle.truncate(end)
        os.fsync(handle.fileno())


def append_uidlist(folder: Path, lines: list[str], *, durable: bool) -> None:
    """Add lines to the log in one write (O_APPEND); fsynced when `durable`."""
    if not lines:
        return
    data = ("".join(line + "\n" for line in lines)).encode("utf-8", "surrogateescape")
    descriptor = os.open(folder / UIDLIST, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        write_all(descriptor, data)
        if durable:
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def rewrite_uidlist(folder: Path, uidlist: UidList) -> None:
    """The whole list written anew with only its live records (temporary file, fsync, rename)."""
    lines = [f"{_HEADER} {uidlist.uidvalidity}", f"N{uidlist.uidnext}", f"R{uidlist.recent_upto}"]
    ordered = sorted(uidlist.records.items(), key=lambda item: item[1].uid)
    lines += [f"+{r.uid} {r.internaldate:.0f} {r.size} {key}" for key, r in ordered]
    write_atomically(folder / UIDLIST, "".join(line + "\n" for line in lines))
    uidlist.lines = len(ordered)


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(text.encode("utf-8", "surrogateescape"))
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, path)
    fsync_directory(path.parent)


# -- keywords --------------------------------------------------------------------------------------
def read_keywords(folder: Path) -> list[str | None]:
    """Keyword names by index (None for a gap) from `dovecot-keywords`."""
    try:
        text = (folder / KEYWORDS).read_text("utf-8", "replace")
    except FileNotFoundError:
        return []
    names: list[str | None] = [None] * MAX_KEYWORDS
    for line in text.splitlines():
        index, _, name = line.partition(" ")
        if index.isdigit() and int(index) < MAX_KEYWORDS and name:
            names[int(index)] = name
    while names and names[-1] is None:
        names.pop()
    return names


def write_keywords(folder: Path, names: list[str | None]) -> None:
    text = "".join(f"{index} {name}\n" for index, name in enumerate(names) if name is not None)
    write_atomically(folder / KEYWORDS, text)


# -- listings and message files -------------------------------------------------------------------
def directory_stamp(folder: Path) -> tuple[int, int]:
    """The modification times of new/ and cur/ (0 for a missing one): a change shows in them."""
    stamps = []
    for sub in ("new", "cur"):
        try:
            stamps.append(os.stat(folder / sub).st_mtime_ns)
        except FileNotFoundError:
            stamps.append(0)
    return stamps[0], stamps[1]


def list_messages(folder: Path) -> dict[str, tuple[str, str]]:
    """Every message file: key → (sub, name). new/ first, then cur/: a file moved from new/ to
    cur/ between the two listings is seen twice and kept from cur/, never missed."""
    found: dict[str, tuple[str, str]] = {}
    for sub in ("new", "cur"):
        try:
            names = os.listdir(folder / sub)
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith("."):
                continue
            key, separator, _ = name.partition(INFO_SEPARATOR)
            if not separator and ":" in name:
                continue  # another info version: not ours to interpret
            found[key] = (sub, name)
    return found


def describe(folder: Path, sub: str, name: str) -> tuple[float, int] | None:
    """(internaldate, RFC822.SIZE) of a message new to the index; None when it vanished."""
    path = folder / sub / name
    try:
        internaldate = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    size = message_size(path, name.partition(INFO_SEPARATOR)[0])
    return None if size is None else (internaldate, size)


def read_crlf(path: str | Path, folder: Path, key: str, size: int = 0) -> bytes | None:
    """A message's bytes with CRLF line ends (stored with LF); None when it is gone. `size`:
    RFC822.SIZE, so that one read takes the whole file (store.maildir.read_message_file)."""
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
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def write_message(folder: Path, unique: str, data: bytes | Path, letters: str, mtime: float | None) -> str:
    """Store a message (CRLF or LF line ends; a Path is streamed) in cur/ with its flags, durably.

    Written to tmp/ with LF line ends and fsynced, given its internal date, renamed into cur/ as
    "<unique>,S=<size>,W=<wire size>:2,<letters>", and cur/ fsynced. Returns the file name.
    """
    temporary = folder / "tmp" / unique
    stored = wire = 0
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            for chunk in _lf_chunks(data):
                stored += len(chunk)
                wire += wire_size(chunk)
                write_all(descriptor, chunk)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if mtime is not None:
            os.utime(temporary, (mtime, mtime))
        name = f"{unique},S={stored},W={wire}{INFO_SEPARATOR}{letters}"
        os.rename(temporary, folder / "cur" / name)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    fsync_directory(folder / "cur")
    return name


def _lf_chunks(data: bytes | Path) -> Iterator[bytes]:
    """The message with CRLF made LF; a spooled literal in chunks (a CR at a chunk's end waits)."""
    if isinstance(data, bytes):
        yield data.replace(b"\r\n", b"\n")
        return
    carry = b""
    with open(data, "rb") as handle:
        while True:
            chunk = handle.read(COPY_CHUNK)
            if not chunk:
                break
            chunk = carry + chunk
            carry = b""
            if chunk.endswith(b"\r"):
                chunk, carry = chunk[:-1], b"\r"
            yield chunk.replace(b"\r\n", b"\n")
    if carry:
        yield carry


def link_message(source: Path, folder: Path, name: str) -> None:
    """COPY: the same file under a new name in `folder`/cur/ (a hard link; a copy across devices)."""
    target = folder / "cur" / name
    if try_link(source, target):
        return
    temporary = folder / "tmp" / name
    shutil.copy2(source, temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.rename(temporary, target)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def new_uidvalidity(previous: int) -> int:
    """Time-based, and never the same twice in one process."""
    return max(int(time.time()), previous + 1)
