"""One IMAP folder's index and its sync with the Maildir: UIDs, flags, \\Recent.

One `FolderIndex` per Maildir folder in the process holds its index (UID ↔ Maildir key, flags
from the file names) and is shared by every session that has the folder open, so a change one
session makes reaches the others at once; changes made by anyone else (SMTP delivery, POP3,
another program) are found on disk by `sync`, which compares the listing of new/ and cur/ with
the index (cheap when the directories' modification times say nothing changed). All disk work
runs in the executor with the folder's lock held (the UID list and keywords: uidlist.py; the
message files: store/); the index is changed only on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from appliance.imap import keywords as keywords_file
from appliance.imap import uidlist
from appliance.imap.uidlist import LETTER_FLAGS, MAX_KEYWORDS, SYSTEM_LETTERS
from appliance.store.maildir import (
    INFO_SEPARATOR,
    age_order,
    message_size,
    remove_messages,
    rename_with_flags,
)

if TYPE_CHECKING:
    from appliance.imap.mailboxes import Mailboxes
    from appliance.imap.ordering import Summary
    from appliance.imap.threads import Container
    from appliance.imap.view import FolderView

SETTLE_NS = 1_000_000_000  # a directory changed less than this before our listing is listed again


class MailboxError(Exception):
    """A folder operation refused: a NO with this response code (RFC 3501 §7.1, RFC 5530)."""

    def __init__(self, code: str | None, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class MessageInfo:
    uid: int
    key: str  # the Maildir unique name (before ":2,")
    flags: frozenset[str]  # system flags and keywords; never \Recent
    internaldate: float  # epoch seconds
    size: int  # RFC822.SIZE, with CRLF line ends


@dataclass(slots=True)
class Entry:
    info: MessageInfo
    sub: str  # "new" or "cur"
    name: str  # the file name now
    letters: str  # the flags in the name


@dataclass
class _Scan:
    """What one look at the disk found (made in the executor, applied on the loop)."""

    stamp: tuple[int, int]
    listed_ns: int
    listing: dict[str, tuple[str, str]]
    described: dict[str, tuple[float, int]]  # keys the index did not know: (internaldate, size)
    uids: uidlist.UidList | None = None  # on the first look
    keywords: list[str | None] | None = None  # on the first look
    keywords_stamp: keywords_file.Stamp = None


# -- one folder ------------------------------------------------------------------------------------
class FolderIndex:
    """The index of one Maildir folder, shared by every session that has it open."""

    def __init__(self, owner: Mailboxes, path: Path) -> None:
        self.owner = owner
        self.path = path
        self.prefix = f"{path}/"  # for file paths built per message: str, not Path (10x cheaper)
        self.lock = asyncio.Lock()
        self.loaded = False
        self.uidvalidity = 0
        self.uidnext = 1
        self.recent_upto = 0
        self.recent_written = 0
        self.lines = 0
        self.entries: dict[str, Entry] = {}  # key → entry
        self.by_uid: dict[int, MessageInfo] = {}
        self.uids: list[int] = []  # ascending
        self._in_order: list[MessageInfo] | None = None  # by_uid's values by UID, until either changes
        self.keywords: list[str | None] = []  # index = letter - "a"
        self.keyword_names: tuple[str, ...] = ()
        self.keywords_stamp: keywords_file.Stamp = None  # the file they were read from
        self.stamp: tuple[int, int] | None = None
        self.listed_ns = 0
        self.version = 0
        self.views: set[FolderView] = set()
        self.last_used = time.monotonic()
        self._flag_sets: dict[str, frozenset[str]] = {}
        # Header field values SEARCH asked for: field → Maildir key → the values as
        # SearchBatch.fields holds them. A message's bytes never change under its key, so nothing
        # here goes stale; it lives as long as the index.
        self.fields: dict[str, dict[str, str | None]] = {}
        # What SORT and THREAD took out of each message's header, by Maildir key (as `fields`).
        self.summaries: dict[str, Summary] = {}
        # The last THREAD of each algorithm: the Maildir keys it threaded (in sequence order) and
        # its trees. The same messages thread the same way, so an unchanged folder reuses them.
        self.threads: dict[str, tuple[tuple[str, ...], list[Container]]] = {}

    # -- reading the disk (lock held) ------------------------------------------------------------
    def maybe_changed(self) -> bool:
        """Whether a listing could find something new (two stats; no listing)."""
        if not self.loaded or self.stamp is None:
            return True
        stamp = directory_stamp(self.path)
        return stamp != self.stamp or self.listed_ns - max(stamp) < SETTLE_NS

    async def sync(self, *, force: bool = False) -> None:
        if not force and not self.maybe_changed():
            return
        known = set(self.entries) if self.loaded else None
        uidvalidity = uidlist.new_uidvalidity(self.owner.last_uidvalidity)
        scan = await self.owner.run(self._scan, known, uidvalidity)
        await self._apply(scan, uidvalidity)

    def _scan(self, known: set[str] | None, uidvalidity: int) -> _Scan:
        """Executor: the listing, and what is needed about the files the index does not know."""
        uids = keywords = None
        if known is None:
            uids = uidlist.load_uidlist(self.path, uidvalidity)
            known = set(uids.records)
        keywords_stamp = keywords_file.stamp(self.path)
        if uids is not None or keywords_stamp != self.keywords_stamp:  # another program added some
            keywords, keywords_stamp = keywords_file.read(self.path)
        listed_ns = time.time_ns()
        stamp = directory_stamp(self.path)
        listing = list_messages(self.path)
        if self.loaded and any(key not in listing for key in known):
            # A rename by someone else during the listing can hide a file: look once more.
            for key, place in list_messages(self.path).items():
                listing.setdefault(key, place)
        described: dict[str, tuple[float, int]] = {}
        for key, (sub, name) in listing.items():
            if key not in known:
                found = describe(self.path, sub, name)
                if found is not None:
                    described[key] = found
        return _Scan(stamp, listed_ns, listing, described, uids, keywords, keywords_stamp)

    async def _apply(self, scan: _Scan, uidvalidity: int) -> None:
        records: dict[str, uidlist.Record] = {}
        if scan.uids is not None:
            self.uidvalidity = scan.uids.uidvalidity
            if self.uidvalidity == uidvalidity:
                self.owner.last_uidvalidity = uidvalidity
            self.uidnext = scan.uids.uidnext
            self.recent_upto = self.recent_written = scan.uids.recent_upto
            self.lines = scan.uids.lines
            records = scan.uids.records
            self._set_keywords(scan.keywords or [])
            self.keywords_stamp = scan.keywords_stamp
        elif scan.keywords is not None:
            self._adopt_keywords(scan.keywords, scan.keywords_stamp)
        listing = scan.listing
        # New messages get the next UIDs in delivery order (RFC 3501 §2.3.1.1: ascending).
        fresh = sorted((key for key in scan.described if key not in records), key=age_order)
        adopted = scan.uids.adopted if scan.uids is not None else None
        lines = []
        added: list[tuple[str, uidlist.Record]] = []
        for key in fresh:
            internaldate, size = scan.described[key]
            uid = adopted.get(key) if adopted else None  # the UID Dovecot gave it (uidlist.py)
            if uid is None:
                uid = self.uidnext
                self.uidnext += 1
            record = uidlist.Record(uid, internaldate, size)
            added.append((key, record))
            lines.append(f"+{record.uid} {int(internaldate)} {size} {key}")
        if self.recent_upto != self.recent_written:
            lines.append(f"R{self.recent_upto}")
        if lines or adopted is not None:  # adopted: our whole list in one write, even an empty one
            self.lines += len(added)
            live = len(listing)
            if self.lines > 2 * live + 1000 or adopted is not None:
                kept = {key: records[key] for key in listing if key in records}
                for key, entry in self.entries.items():
                    if key in listing:
                        kept[key] = uidlist.Record(entry.info.uid, entry.info.internaldate, entry.info.size)
                kept.update(added)
                whole = uidlist.UidList(self.uidvalidity, self.uidnext, self.recent_upto, kept, 0)
                await self.owner.run(uidlist.rewrite_uidlist, self.path, whole)
                self.lines = whole.lines
            else:
                await self.owner.run(uidlist.append_uidlist, self.path, lines, durable=bool(added))
            self.recent_written = self.recent_upto
        # Only now, with the UIDs on disk, does anyone see them.
        changed = False
        for key, record in [*records.items(), *added]:
            place = listing.get(key)
            if place is None or key in self.entries:
                continue
            sub, name = place
            letters = name.partition(INFO_SEPARATOR)[2]
            info = MessageInfo(record.uid, key, self._flags(letters), record.internaldate, record.size)
            self.entries[key] = Entry(info, sub, name, letters)
            self.by_uid[record.uid] = info
            self._in_order = None
            changed = True
        if records or added:
            self.uids = sorted(self.by_uid)
        gone = [key for key in self.entries if key not in listing]
        if gone:
            self._forget(gone)
            changed = True
        for key, (sub, name) in listing.items():
            known = self.entries.get(key)
            if known is None or (known.sub == sub and known.name == name):
                continue
            letters = name.partition(INFO_SEPARATOR)[2]
            known.sub, known.name = sub, name
            if letters != known.letters:
                known.letters = letters
                self._replace(known, self._flags(letters))
                changed = True
        self.stamp, self.listed_ns, self.loaded = scan.stamp, scan.listed_ns, True
        if changed:
            self.changed()

    # -- the index (event loop only) -------------------------------------------------------------
    def file_path(self, key: str) -> str:
        """Where the message with `key` is as far as the index knows (str, not Path: built per
        message); a reader falls back to looking it up by key if it moved meanwhile."""
        entry = self.entries.get(key)
        return f"{self.prefix}{entry.sub}/{entry.name}" if entry is not None else f"{self.prefix}cur/{key}"

    def messages_in_order(self) -> list[MessageInfo]:
        """The messages by ascending UID (kept between changes: every session that opens the
        folder meanwhile copies the same list instead of looking up each UID again)."""
        if self._in_order is None:
            by_uid = self.by_uid
            self._in_order = [by_uid[uid] for uid in self.uids]
        return self._in_order

    def changed(self) -> None:
        self.version += 1
        for view in self.views:
            view.wake()

    def _forget(self, keys: Collection[str]) -> None:
        for key in keys:
            entry = self.entries.pop(key, None)
            if entry is not None:
                self.by_uid.pop(entry.info.uid, None)
        self.uids = sorted(self.by_uid)
        self._in_order = None

    def _replace(self, entry: Entry, flags: frozenset[str]) -> None:
        old = entry.info
        info = MessageInfo(old.uid, old.key, flags, old.internaldate, old.size)
        entry.info = info
        self.by_uid[old.uid] = info
        self._in_order = None

    def _set_keywords(self, keywords: list[str | None]) -> None:
        self.keywords = keywords
        self.keyword_names = tuple(name for name in keywords if name is not None)
        self._flag_sets.clear()

    def _flags(self, letters: str) -> frozenset[str]:
        found = self._flag_sets.get(letters)
        if found is None:
            flags = []
            for letter in letters:
                if letter in LETTER_FLAGS:
                    flags.append(LETTER_FLAGS[letter])
                elif "a" <= letter <= "z":
                    number = ord(letter) - ord("a")
                    name = self.keywords[number] if number < len(self.keywords) else None
                    if name is not None:
                        flags.append(name)
            found = self._flag_sets[letters] = frozenset(flags)
        return found

    async def refresh_keywords(self) -> None:
        """Read the keywords file again if another program changed it (lock held; before any
        flag write, so that its keywords are neither dropped nor given a second name)."""
        if not self.loaded:
            return
        now = await self.owner.run(keywords_file.stamp, self.path)
        if now != self.keywords_stamp:
            self._adopt_keywords(*await self.owner.run(keywords_file.read, self.path))

    def _adopt_keywords(self, names: list[str | None], stamp: keywords_file.Stamp) -> None:
        """The file's names in force: messages whose letters now name a keyword show it."""
        self.keywords_stamp = stamp
        if names == self.keywords:
            return
        self._set_keywords(names)
        for entry in self.entries.values():
            if any("a" <= letter <= "z" for letter in entry.letters):
                flags = self._flags(entry.letters)
                if flags != entry.info.flags:
                    self._replace(entry, flags)
        self.changed()  # sessions announce the new FLAGS, and FETCH FLAGS for changed messages

    async def letters_for(self, flags: Collection[str], keep: str = "", *, here: bool = False) -> str:
        """Maildir letters for IMAP flags (a new keyword gets a letter; lock held). Letters the
        server does not know (e.g. "P", passed) are kept from `keep`; with `here` (`keep` is a
        message of this folder), so are keyword letters the keywords file names no keyword for."""
        letters = {letter for letter in keep if "A" <= letter <= "Z" and letter not in LETTER_FLAGS}
        if here:
            letters.update(letter for letter in keep if "a" <= letter <= "z" and self._unnamed(letter))
        lowered = {name.lower(): number for number, name in enumerate(self.keywords) if name is not None}
        missing = [flag for flag in flags if flag not in SYSTEM_LETTERS and flag.lower() not in lowered]
        if missing:
            # Added as Dovecot adds them: the file re-read and written under its dotlock.
            try:
                self._adopt_keywords(*await self.owner.run(keywords_file.add, self.path, missing))
            except keywords_file.KeywordsLocked:
                raise MailboxError("INUSE", "Another program is changing this mailbox; try again") from None
            lowered = {name.lower(): number for number, name in enumerate(self.keywords) if name is not None}
        for flag in flags:
            if flag in SYSTEM_LETTERS:
                letters.add(SYSTEM_LETTERS[flag])
                continue
            number = lowered.get(flag.lower())
            if number is None:
                raise MailboxError("LIMIT", f"No more than {MAX_KEYWORDS} keywords per mailbox")
            letters.add(chr(ord("a") + number))
        return "".join(sorted(letters))

    def _unnamed(self, letter: str) -> bool:
        number = ord(letter) - ord("a")
        return number >= len(self.keywords) or self.keywords[number] is None

    # -- changes (lock held) ---------------------------------------------------------------------
    async def set_flags(
        self, uids: Sequence[int], mode: Literal["set", "add", "remove"], flags: set[str]
    ) -> list[Entry]:
        # Another program's flag changes and new keywords are kept, not dropped: the file names
        # and the keywords file are looked at again before the flags are computed.
        await self.sync()
        await self.refresh_keywords()
        plan: list[tuple[Entry, str, frozenset[str]]] = []
        removed = {flag.lower() for flag in flags}  # keywords match without regard to case
        for uid in uids:
            info = self.by_uid.get(uid)
            if info is None:
                continue
            if mode == "set":
                wanted = frozenset(flags)
            elif mode == "add":
                wanted = info.flags | flags
            else:
                wanted = frozenset(flag for flag in info.flags if flag.lower() not in removed)
            if wanted == info.flags:
                continue
            entry = self.entries[info.key]
            letters = await self.letters_for(wanted, keep=entry.letters, here=True)
            plan.append((entry, letters, self._flags(letters)))
        if not plan:
            return []
        moves = [(entry.sub, entry.name, entry.info.key, letters) for entry, letters, _ in plan]
        renamed = await self.owner.run(rename_with_flags, self.path, moves)
        done = []
        for (entry, letters, new_flags), name in zip(plan, renamed, strict=True):
            if name is None:
                continue  # gone meanwhile: the next sync reports it
            entry.sub, entry.name, entry.letters = "cur", name, letters
            self._replace(entry, new_flags)
            done.append(entry)
        if done:
            self.changed()
        return done

    async def remove(self, keys: Sequence[str]) -> int:
        """Delete these messages' files; returns the bytes freed (for the quota)."""
        places = [(self.entries[key].sub, self.entries[key].name, key) for key in keys if key in self.entries]
        freed = await self.owner.run(remove_messages, self.path, places)
        self._forget(keys)
        self.changed()
        return freed

    def claim_recent(self, uid: int) -> None:
        if uid > self.recent_upto:
            self.recent_upto = uid

    async def flush_recent(self) -> None:
        """Note on disk how far \\Recent has been handed out (lock held; not fsynced: after a
        crash some messages are only \\Recent once more)."""
        if self.loaded and self.recent_upto != self.recent_written and self.path.is_dir():
            upto = self.recent_upto
            await self.owner.run(uidlist.append_uidlist, self.path, [f"R{upto}"], durable=False)
            self.recent_written = upto

    async def write_recent(self) -> None:
        async with self.lock:
            await self.flush_recent()


# -- listings ------------------------------------------------------------------------------------
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
