"""The files an IMAP folder keeps beside its messages: the UID list and the keyword names.

Every function here blocks and runs in the executor, with the folder's lock held by the caller
(index.py). Nothing here keeps state between calls.

`appliance-uidlist` (one per Maildir folder) is an append-only log, so that a new message costs
one short line, not a rewrite of the whole list:

    appliance-uidlist 1 <uidvalidity>      header, written once
    +<uid> <internaldate> <size> <key>     a UID given to the message with that Maildir key
                                           (internaldate: whole seconds, cut as IMAP shows it)
    R<uid>                                 every UID up to this one has been \\Recent somewhere
    N<uid>                                 the next UID is at least this (after a compaction)

A folder Dovecot served (a `dovecot-uidlist` and no list of ours) is adopted: Dovecot's
UIDVALIDITY, next UID and UIDs (store/dovecot.py) become the first lines of our list, so its
clients keep their caches. Dovecot's file is only read. `appliance-adopted`, written (fsynced)
before our list, says it was done: a folder that has it and has lost its `appliance-uidlist` gets
a new UIDVALIDITY like any other, since UIDs given after the adoption could otherwise be given
again to other messages.

A record whose message is gone from disk is dropped when the log is compacted (rewritten with
only the live records, crash-safely: store/durable.py). A torn last line (a crash while
appending) is cut off before the next append. Lines are fsynced before a UID is reported to any
client, so a UID once seen never changes (RFC 3501 §2.3.1.1).

Flags are in the file names (`:2,` info, as every Maildir reader agrees): D \\Draft,
F \\Flagged, R \\Answered, S \\Seen, T \\Deleted, and keywords as the letters a-z, mapped through
`dovecot-keywords` ("<index> <name>" per line, index 0 = "a"), as Dovecot does.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.store.dovecot import read_dovecot_uidlist
from appliance.store.durable import replace_file, write_all

UIDLIST = "appliance-uidlist"
ADOPTED = "appliance-adopted"
KEYWORDS = "dovecot-keywords"
_HEADER = "appliance-uidlist 1"
MAX_KEYWORDS = 26
SYSTEM_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_FLAGS = {letter: flag for flag, letter in SYSTEM_LETTERS.items()}


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
    # Maildir key → UID Dovecot gave it, for a folder adopted from Dovecot (nothing of ours on
    # disk yet): the index gives these UIDs, then writes the whole list at once.
    adopted: dict[str, int] | None = None


# -- the UID list ---------------------------------------------------------------------------------
def load_uidlist(folder: Path, uidvalidity: int) -> UidList:
    """The folder's UID list; a new one (with `uidvalidity`) when it has none or it is unreadable."""
    path = folder / UIDLIST
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        dovecot = None if (folder / ADOPTED).exists() else read_dovecot_uidlist(folder)
        if dovecot is not None:
            replace_file(folder / ADOPTED, f"dovecot-uidlist {dovecot.uidvalidity}\n".encode())
            # Dovecot's messages are not \Recent to anyone: Dovecot's clients have seen them.
            return UidList(dovecot.uidvalidity, dovecot.next_uid, dovecot.next_uid - 1, {}, 0, dovecot.uids)
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
    lines += [f"+{r.uid} {int(r.internaldate)} {r.size} {key}" for key, r in ordered]
    replace_file(folder / UIDLIST, "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape"))
    uidlist.lines = len(ordered)


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
    replace_file(folder / KEYWORDS, text.encode("utf-8", "surrogateescape"))


def new_uidvalidity(previous: int) -> int:
    """Time-based, and never the same twice in one process."""
    return max(int(time.time()), previous + 1)
