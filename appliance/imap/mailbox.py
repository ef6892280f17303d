"""IMAP folders over the Maildir++ store: UIDs, flags, \\Recent, and each session's view of them.

One `_Folder` per Maildir folder in the process holds its index (UID ↔ Maildir key, flags from
the file names) and is shared by every session that has the folder open, so a change one session
makes reaches the others at once; changes made by anyone else (SMTP delivery, POP3, another
program) are found on disk by `sync`, which compares the listing of new/ and cur/ with the index
(cheap when the directories' modification times say nothing changed). All disk work runs in the
executor with the folder's lock held (index.py); the index is changed only on the event loop.

A `FolderView` is one session's picture of its selected folder: its own sequence numbers, which
change only when that session is told (RFC 3501 §7.4.1: EXPUNGE responses are held back during
FETCH, STORE and SEARCH), and its own \\Recent messages (RFC 3501 §2.3.2: one session gets each).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from appliance.imap import index
from appliance.imap.index import INFO_SEPARATOR, LETTER_FLAGS, MAX_KEYWORDS, SYSTEM_LETTERS
from appliance.imap.message import ParsedMessage
from appliance.imap.search import folded_fields
from appliance.store.maildir import (
    Maildir,
    MailStore,
    age_order,
    disk_size,
    find_message,
    fsync_directory,
)

if TYPE_CHECKING:
    from appliance.snapshot import AccountEntry
    from appliance.store.reader import Readers

log = logging.getLogger("appliance.imap")

DELIMITER = "."
SPECIAL_USE = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
PREPARED_MARKER = "appliance-imap-prepared"
POLL_INTERVAL = 0.5  # seconds between looks at the disk while a session idles
SETTLE_NS = 1_000_000_000  # a directory changed less than this before our listing is listed again
MAX_NAME = 255
MAX_CACHED_FOLDERS = 256  # folder indexes kept in memory while no session has them open
MAX_CACHED_FIELDS = 200_000  # header values cached per field and folder
_T = TypeVar("_T")
_SIZE_FIELDS = re.compile(r",[SW]=\d+")


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


@dataclass(frozen=True, slots=True)
class FolderInfo:
    name: str
    attributes: tuple[str, ...]
    subscribed: bool


@dataclass(frozen=True, slots=True)
class FolderStatus:
    messages: int
    recent: int
    uidnext: int
    uidvalidity: int
    unseen: int


@dataclass(frozen=True, slots=True)
class Exists:
    count: int


@dataclass(frozen=True, slots=True)
class Recent:
    count: int


@dataclass(frozen=True, slots=True)
class Expunged:
    seq: int


@dataclass(frozen=True, slots=True)
class FlagsChanged:
    seq: int
    info: MessageInfo


@dataclass(frozen=True, slots=True)
class NewFlags:
    flags: tuple[str, ...]


Update = Exists | Recent | Expunged | FlagsChanged | NewFlags


@dataclass(slots=True)
class _Entry:
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
    uidlist: index.UidList | None = None  # on the first look
    keywords: list[str | None] | None = None  # on the first look


# -- one folder ------------------------------------------------------------------------------------
class _Folder:
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
        self.entries: dict[str, _Entry] = {}  # key → entry
        self.by_uid: dict[int, MessageInfo] = {}
        self.uids: list[int] = []  # ascending
        self._in_order: list[MessageInfo] | None = None  # by_uid's values by UID, until either changes
        self.keywords: list[str | None] = []  # index = letter - "a"
        self.keyword_names: tuple[str, ...] = ()
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

    # -- reading the disk (lock held) ------------------------------------------------------------
    def maybe_changed(self) -> bool:
        """Whether a listing could find something new (two stats; no listing)."""
        if not self.loaded or self.stamp is None:
            return True
        stamp = index.directory_stamp(self.path)
        return stamp != self.stamp or self.listed_ns - max(stamp) < SETTLE_NS

    async def sync(self, *, force: bool = False) -> None:
        if not force and not self.maybe_changed():
            return
        known = set(self.entries) if self.loaded else None
        uidvalidity = index.new_uidvalidity(self.owner.last_uidvalidity)
        scan = await self.owner.run(self._scan, known, uidvalidity)
        await self._apply(scan, uidvalidity)

    def _scan(self, known: set[str] | None, uidvalidity: int) -> _Scan:
        """Executor: the listing, and what is needed about the files the index does not know."""
        uidlist = keywords = None
        if known is None:
            uidlist = index.load_uidlist(self.path, uidvalidity)
            keywords = index.read_keywords(self.path)
            known = set(uidlist.records)
        listed_ns = time.time_ns()
        stamp = index.directory_stamp(self.path)
        listing = index.list_messages(self.path)
        if self.loaded and any(key not in listing for key in known):
            # A rename by someone else during the listing can hide a file: look once more.
            for key, place in index.list_messages(self.path).items():
                listing.setdefault(key, place)
        described: dict[str, tuple[float, int]] = {}
        for key, (sub, name) in listing.items():
            if key not in known:
                found = index.describe(self.path, sub, name)
                if found is not None:
                    described[key] = found
        return _Scan(stamp, listed_ns, listing, described, uidlist, keywords)

    async def _apply(self, scan: _Scan, uidvalidity: int) -> None:
        records: dict[str, index.Record] = {}
        if scan.uidlist is not None:
            self.uidvalidity = scan.uidlist.uidvalidity
            if self.uidvalidity == uidvalidity:
                self.owner.last_uidvalidity = uidvalidity
            self.uidnext = scan.uidlist.uidnext
            self.recent_upto = self.recent_written = scan.uidlist.recent_upto
            self.lines = scan.uidlist.lines
            records = scan.uidlist.records
            self._set_keywords(scan.keywords or [])
        listing = scan.listing
        # New messages get the next UIDs in delivery order (RFC 3501 §2.3.1.1: ascending).
        fresh = sorted((key for key in scan.described if key not in records), key=age_order)
        lines = []
        added: list[tuple[str, index.Record]] = []
        for key in fresh:
            internaldate, size = scan.described[key]
            record = index.Record(self.uidnext, internaldate, size)
            self.uidnext += 1
            added.append((key, record))
            lines.append(f"+{record.uid} {internaldate:.0f} {size} {key}")
        if self.recent_upto != self.recent_written:
            lines.append(f"R{self.recent_upto}")
        if lines:
            self.lines += len(added)
            live = len(listing)
            if self.lines > 2 * live + 1000:
                kept = {key: records[key] for key in listing if key in records}
                for key, entry in self.entries.items():
                    if key in listing:
                        kept[key] = index.Record(entry.info.uid, entry.info.internaldate, entry.info.size)
                kept.update(added)
                whole = index.UidList(self.uidvalidity, self.uidnext, self.recent_upto, kept, 0)
                await self.owner.run(index.rewrite_uidlist, self.path, whole)
                self.lines = whole.lines
            else:
                await self.owner.run(index.append_uidlist, self.path, lines, durable=bool(added))
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
            self.entries[key] = _Entry(info, sub, name, letters)
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

    def _replace(self, entry: _Entry, flags: frozenset[str]) -> None:
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

    async def letters_for(self, flags: Collection[str], keep: str = "") -> str:
        """Maildir letters for IMAP flags (a new keyword gets a letter; lock held). Letters the
        server does not know (e.g. "P", passed) are kept from `keep`."""
        letters = {letter for letter in keep if "A" <= letter <= "Z" and letter not in LETTER_FLAGS}
        lowered = {name.lower(): number for number, name in enumerate(self.keywords) if name is not None}
        added = False
        for flag in flags:
            if flag in SYSTEM_LETTERS:
                letters.add(SYSTEM_LETTERS[flag])
                continue
            number = lowered.get(flag.lower())
            if number is None:
                free = [n for n, name in enumerate(self.keywords) if name is None]
                if free:
                    number = free[0]
                elif len(self.keywords) < MAX_KEYWORDS:
                    number = len(self.keywords)
                    self.keywords.append(None)
                else:
                    raise MailboxError("LIMIT", f"No more than {MAX_KEYWORDS} keywords per mailbox")
                self.keywords[number] = flag
                lowered[flag.lower()] = number
                added = True
            letters.add(chr(ord("a") + number))
        if added:
            await self.owner.run(index.write_keywords, self.path, list(self.keywords))
            self._set_keywords(self.keywords)
            self.changed()
        return "".join(sorted(letters))

    # -- changes (lock held) ---------------------------------------------------------------------
    async def set_flags(
        self, uids: Sequence[int], mode: Literal["set", "add", "remove"], flags: set[str]
    ) -> list[_Entry]:
        plan: list[tuple[_Entry, str, frozenset[str]]] = []
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
            letters = await self.letters_for(wanted, keep=entry.letters)
            plan.append((entry, letters, self._flags(letters)))
        if not plan:
            return []
        moves = [(entry.sub, entry.name, entry.info.key, letters) for entry, letters, _ in plan]
        renamed = await self.owner.run(_rename_all, self.path, moves)
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
        freed = await self.owner.run(_unlink_all, self.path, places)
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
            await self.owner.run(index.append_uidlist, self.path, [f"R{upto}"], durable=False)
            self.recent_written = upto

    async def write_recent(self) -> None:
        async with self.lock:
            await self.flush_recent()


def _rename_all(folder: Path, moves: list[tuple[str, str, str, str]]) -> list[str | None]:
    """Executor: each message renamed to cur/<key>:2,<letters>; None for one that is gone."""
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


def _unlink_all(folder: Path, places: list[tuple[str, str, str]]) -> int:
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


# -- a session's view of its selected folder -------------------------------------------------------
class FolderView:
    def __init__(self, folder: _Folder, account: AccountMailboxes, name: str, readonly: bool) -> None:
        self._folder = folder
        self._account = account
        self.name = name
        self.readonly = readonly
        self.uidvalidity = folder.uidvalidity
        self.messages: list[MessageInfo] = list(folder.messages_in_order())
        self._uids: list[int] = list(folder.uids)
        # RFC 3501 §2.3.2: this session is the first to see these; EXAMINE claims none of them.
        self._recent = set(folder.uids[bisect.bisect_right(folder.uids, folder.recent_upto) :])
        if not readonly and folder.uids:
            folder.claim_recent(folder.uids[-1])
        self._version = folder.version
        self._held = False  # expunges known but not yet told
        self._keywords = folder.keyword_names
        self._event = asyncio.Event()
        self._closed = False
        folder.views.add(self)

    # -- what the session asks ---------------------------------------------------------------------
    @property
    def uids(self) -> list[int]:
        """The UIDs of `messages`, in the same order (ascending); not to be changed."""
        return self._uids

    def uidnext(self) -> int:
        return self._folder.uidnext

    def recent_count(self) -> int:
        return len(self._recent)

    def is_recent(self, uid: int) -> bool:
        return uid in self._recent

    @property
    def recent(self) -> Collection[int]:
        """The UIDs that are \\Recent for this session (not to be changed)."""
        return self._recent

    def first_unseen(self) -> int | None:
        for number, info in enumerate(self.messages, 1):
            if "\\Seen" not in info.flags:
                return number
        return None

    def flags_in_use(self) -> list[str]:
        return list(self._keywords)

    def can_create_keywords(self) -> bool:
        return len(self._folder.keyword_names) < MAX_KEYWORDS

    def wake(self) -> None:
        self._event.set()

    # -- keeping up ------------------------------------------------------------------------------
    async def refresh(self) -> None:
        folder = self._folder
        if folder.maybe_changed():
            async with folder.lock:
                await folder.sync()
        if folder.recent_upto != folder.recent_written:
            async with folder.lock:
                await folder.flush_recent()

    def pending(self, *, expunges: bool) -> list[Update]:
        folder = self._folder
        if self._version == folder.version and not (self._held and expunges):
            return []
        self._version = folder.version
        out: list[Update] = []
        if folder.keyword_names != self._keywords:
            self._keywords = folder.keyword_names
            out.append(NewFlags(self._keywords))
        by_uid = folder.by_uid
        gone = [number for number, uid in enumerate(self._uids) if uid not in by_uid]
        if gone:
            if expunges:
                out += [Expunged(seq) for seq in self._drop(gone)]
                self._held = False
            else:
                self._held = True
        messages = self.messages
        for number, info in enumerate(messages):
            current = by_uid.get(info.uid)
            if current is not None and current is not info:
                messages[number] = current
                if current.flags != info.flags:
                    out.append(FlagsChanged(number + 1, current))
        last = self._uids[-1] if self._uids else 0
        arrived = folder.uids[bisect.bisect_right(folder.uids, last) :]
        if arrived:
            for uid in arrived:
                messages.append(by_uid[uid])
                self._uids.append(uid)
                if uid > folder.recent_upto:
                    self._recent.add(uid)
                    if not self.readonly:
                        folder.claim_recent(uid)
            out.append(Exists(len(messages)))
            out.append(Recent(len(self._recent)))
        return out

    def _drop(self, numbers: list[int]) -> list[int]:
        """Remove messages (0-based positions, ascending) from this view; the EXPUNGE numbers to
        send, in order: each one shifts the later ones down (RFC 3501 §7.4.1)."""
        for number in reversed(numbers):
            uid = self._uids.pop(number)
            del self.messages[number]
            self._recent.discard(uid)
        return [number + 1 - shift for shift, number in enumerate(numbers)]

    def _drop_uids(self, uids: Collection[int]) -> list[int]:
        wanted = set(uids)
        return self._drop([number for number, uid in enumerate(self._uids) if uid in wanted])

    async def wait_for_change(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        folder = self._folder
        while True:
            if self._version != folder.version or self._held:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), min(POLL_INTERVAL, remaining))
                return True
            except TimeoutError:
                pass
            if folder.maybe_changed():
                return True

    # -- changes ---------------------------------------------------------------------------------
    def _own(self, entries: Sequence[_Entry]) -> list[MessageInfo]:
        """This session's own changes go into its view at once (it reports them itself)."""
        infos = []
        for entry in entries:
            info = entry.info
            number = bisect.bisect_left(self._uids, info.uid)
            if number < len(self._uids) and self._uids[number] == info.uid:
                self.messages[number] = info
            infos.append(info)
        return infos

    async def store(
        self, uids: Sequence[int], mode: Literal["set", "add", "remove"], flags: set[str]
    ) -> list[MessageInfo]:
        folder = self._folder
        async with folder.lock:
            return self._own(await folder.set_flags(uids, mode, flags))

    async def mark_seen(self, uids: Sequence[int]) -> list[MessageInfo]:
        return await self.store(uids, "add", {"\\Seen"})

    async def expunge(self, uids: Collection[int] | None = None) -> list[int]:
        folder = self._folder
        wanted = set(uids) if uids is not None else None
        async with folder.lock:
            await folder.sync()
            doomed = [
                entry.info
                for entry in folder.entries.values()
                if "\\Deleted" in entry.info.flags and (wanted is None or entry.info.uid in wanted)
            ]
            if not doomed:
                return []
            freed = await folder.remove([info.key for info in doomed])
        self._account.charge(-freed)
        return self._drop_uids([info.uid for info in doomed])

    async def copy(self, uids: Sequence[int], target: str) -> tuple[int, list[int], list[int]]:
        uidvalidity, source, created, _ = await self._copy(uids, target, move=False)
        return uidvalidity, source, created

    async def move(self, uids: Sequence[int], target: str) -> tuple[int, list[int], list[int], list[int]]:
        return await self._copy(uids, target, move=True)

    async def _copy(
        self, uids: Sequence[int], target_name: str, *, move: bool
    ) -> tuple[int, list[int], list[int], list[int]]:
        folder = self._folder
        try:
            target = await self._account.folder(target_name)
        except MailboxError as error:
            if error.code == "NONEXISTENT":
                raise MailboxError("TRYCREATE", error.text) from None
            raise
        sources = [folder.entries[info.key] for uid in uids if (info := folder.by_uid.get(uid)) is not None]
        if not sources:
            return target.uidvalidity, [], [], []
        incoming = sum(entry.info.size for entry in sources)
        await self._account.check_quota(incoming)
        async with target.lock:
            await target.sync()
            jobs = []
            for entry in sources:
                letters = await target.letters_for(entry.info.flags, keep=entry.letters)
                sizes = "".join(_SIZE_FIELDS.findall(entry.info.key))
                if ",W=" not in sizes:
                    sizes += f",W={entry.info.size}"
                unique = self._account.unique_name() + sizes
                jobs.append((folder.path / entry.sub / entry.name, entry.info.key, unique, letters))
            linked = await self._account.run(_link_all, folder.path, target.path, jobs)
            await target.sync(force=True)
            copied, created = [], []
            for entry, new_key in zip(sources, linked, strict=True):
                if new_key is None:
                    continue
                found = target.entries.get(new_key)
                if found is not None:
                    copied.append(entry.info.uid)
                    created.append(found.info.uid)
            uidvalidity = target.uidvalidity
        self._account.charge(incoming)
        expunged: list[int] = []
        if move and copied:
            async with folder.lock:
                keys = [folder.by_uid[uid].key for uid in copied if uid in folder.by_uid]
                freed = await folder.remove(keys)
            self._account.charge(-freed)
            expunged = self._drop_uids(copied)
        return uidvalidity, copied, created, expunged

    async def header_columns(
        self,
        infos: Sequence[MessageInfo],
        names: Sequence[str],
    ) -> tuple[dict[str, list[str | None]], set[int]]:
        """The header fields `names` of each message, as columns (field → value per position in
        `infos`, as SearchBatch.fields holds them), and the positions of messages that vanished.
        Values come from the folder's cache; the header of a message not cached yet is read (only
        the header) and its fields taken out where message reads are done."""
        folder = self._folder
        caches = [folder.fields.setdefault(name, {}) for name in names]
        missing = [
            position for position, info in enumerate(infos) if any(info.key not in cache for cache in caches)
        ]
        columns = {
            name: [cache.get(info.key) for info in infos] for name, cache in zip(names, caches, strict=True)
        }
        gone: set[int] = set()
        if missing:
            places = [(folder.file_path(infos[position].key), infos[position].key) for position in missing]
            found = await self._account.read_files(_read_headers, folder.path, places, list(names))
            for position, values in zip(missing, found, strict=True):
                if values is None:
                    gone.add(position)
                    continue
                key = infos[position].key
                for name, cache in zip(names, caches, strict=True):
                    value = columns[name][position] = values.get(name)
                    if len(cache) < MAX_CACHED_FIELDS:
                        cache[key] = value
        return columns, gone

    async def read(self, infos: Sequence[MessageInfo]) -> list[bytes | None]:
        folder = self._folder
        places = [(folder.file_path(info.key), info.key, info.size) for info in infos]
        return await self._account.read_files(_read_all, folder.path, places)

    @property
    def path(self) -> Path:
        """The folder's Maildir."""
        return self._folder.path

    def file_names(self, infos: Sequence[MessageInfo]) -> list[str]:
        """Where the messages are in the folder as far as the index knows ("cur/<name>"; a
        reader looks a moved one up by key)."""
        entries = self._folder.entries
        names = []
        for info in infos:
            entry = entries.get(info.key)
            names.append(f"{entry.sub}/{entry.name}" if entry is not None else f"cur/{info.key}")
        return names

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        folder = self._folder
        folder.views.discard(self)
        folder.last_used = time.monotonic()
        if folder.recent_upto != folder.recent_written:
            self._account.background(folder.write_recent())


def _link_all(source: Path, target: Path, jobs: list[tuple[Path, str, str, str]]) -> list[str | None]:
    """Executor: each message linked into the target's cur/; the new keys (None when gone)."""
    done: list[str | None] = []
    for path, key, unique, letters in jobs:
        name = f"{unique}{INFO_SEPARATOR}{letters}"
        try:
            index.link_message(path, target, name)
        except FileNotFoundError:
            current = find_message(source, key)
            if current is None:
                done.append(None)
                continue
            index.link_message(current, target, name)
        done.append(unique)
    fsync_directory(target / "cur")
    return done


def _read_all(folder: Path, places: list[tuple[str, str, int]]) -> list[bytes | None]:
    return [index.read_crlf(path, folder, key, size) for path, key, size in places]


def _read_headers(
    folder: Path, places: list[tuple[str, str]], names: list[str]
) -> list[dict[str, str | None] | None]:
    """Each message's header fields `names` as SEARCH compares them (None: it vanished)."""
    found: list[dict[str, str | None] | None] = []
    for path, key in places:
        header = index.read_header(path, folder, key)
        found.append(None if header is None else folded_fields(ParsedMessage.parse(header), names))
    return found


# -- an account's folders --------------------------------------------------------------------------
def check_name(name: str) -> str:
    """A folder name the Maildir++ layout can hold (RFC 3501 §5.1), or MailboxError CANNOT."""
    if name.upper() == "INBOX":
        return "INBOX"
    if (
        not name
        or len(name) > MAX_NAME
        or "/" in name
        or name.startswith(DELIMITER)
        or name.endswith(DELIMITER)
        or DELIMITER * 2 in name
        or any(ord(char) < 0x20 or ord(char) == 0x7F for char in name)
    ):
        raise MailboxError("CANNOT", "Invalid mailbox name")
    return name


class AccountMailboxes:
    def __init__(self, owner: Mailboxes, account: AccountEntry) -> None:
        self._owner = owner
        self._account = account
        self.root = owner.store.path(account)
        self._lock = owner.account_lock(self.root)

    def run(self, function: Callable[..., _T], *args: object) -> asyncio.Future[_T]:
        return self._owner.run(function, *args)

    async def read_files(self, function: Callable[..., _T], *args: object) -> _T:
        """`function(*args)` where message reads are done (Services.readers), else in the executor."""
        readers = self._owner.readers
        if readers is None:
            return await self._owner.run(function, *args)
        return await readers.run(function, *args)

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        self._owner.background(work)

    def unique_name(self) -> str:
        return self._owner.store.unique_name()

    def charge(self, delta: int) -> None:
        if delta:
            self._owner.store.charge(self._account, delta)

    async def check_quota(self, incoming: int) -> None:
        if await self._owner.store.over_quota(self._account, incoming):
            raise MailboxError("OVERQUOTA", "Mailbox is full")  # RFC 9208 §4.3.3

    def _path(self, name: str) -> Path:
        name = check_name(name)
        return self.root if name == "INBOX" else self.root / f".{name}"

    async def folder(self, name: str) -> _Folder:
        path = self._path(name)
        if not (path / "cur").is_dir():
            raise MailboxError("NONEXISTENT", "No such mailbox")
        return self._owner.folder(path)

    # -- the folder list ---------------------------------------------------------------------------
    async def prepare(self) -> None:
        async with self._lock:
            await self.run(_prepare, self.root)

    async def list(self) -> list[FolderInfo]:
        names, subscribed = await self.run(_folder_names, self.root)
        everything = ["INBOX", *names]
        result = []
        for name in everything:
            prefix = name + DELIMITER
            children = any(other.startswith(prefix) for other in names)
            attributes = ["\\HasChildren" if children else "\\HasNoChildren"]
            if name in SPECIAL_USE:
                attributes.append(SPECIAL_USE[name])
            result.append(FolderInfo(name, tuple(attributes), name in subscribed))
        return result

    async def create(self, name: str) -> None:
        path = self._path(name)
        if name.upper() == "INBOX":
            raise MailboxError("ALREADYEXISTS", "INBOX always exists")
        async with self._lock:
            if (path / "cur").is_dir():
                raise MailboxError("ALREADYEXISTS", "Mailbox exists")
            # RFC 3501 §6.3.3: superior names are created as needed.
            parts = name.split(DELIMITER)
            paths = [self.root / f".{DELIMITER.join(parts[: n + 1])}" for n in range(len(parts))]
            await self.run(_create_all, paths)
        log.info("imap folder created login=%s folder=%r", self._account.address, name)

    async def delete(self, name: str) -> None:
        if name.upper() == "INBOX":
            raise MailboxError("CANNOT", "INBOX cannot be deleted")
        path = self._path(name)
        async with self._lock:
            if not (path / "cur").is_dir():
                raise MailboxError("NONEXISTENT", "No such mailbox")
            self._owner.forget(path)
            freed = await self.run(_delete_folder, self.root, path, self.unique_name())
        self.charge(-freed)
        log.info("imap folder deleted login=%s folder=%r", self._account.address, name)

    async def rename(self, old: str, new: str) -> None:
        source, target = self._path(old), self._path(new)
        if new == "INBOX":
            raise MailboxError("ALREADYEXISTS", "INBOX always exists")
        if old != "INBOX" and (new + DELIMITER).startswith(old + DELIMITER):
            raise MailboxError("CANNOT", "A mailbox cannot be moved into itself")
        async with self._lock:
            if not (source / "cur").is_dir():
                raise MailboxError("NONEXISTENT", "No such mailbox")
            if (target / "cur").is_dir():
                raise MailboxError("ALREADYEXISTS", "Mailbox exists")
            names, _ = await self.run(_folder_names, self.root)
            if old == "INBOX":
                # RFC 3501 §6.3.5: the messages move to the new folder; INBOX stays, empty.
                inbox = self._owner.folder(self.root)
                async with inbox.lock:
                    await self.run(_move_messages, self.root, target)
                    await inbox.sync(force=True)
            else:
                moves = [
                    (self.root / f".{name}", self.root / f".{new}{name[len(old) :]}")
                    for name in names
                    if name == old or name.startswith(old + DELIMITER)
                ]
                for before, after in moves:
                    self._owner.forget(before)
                    self._owner.forget(after)
                parents = new.split(DELIMITER)[:-1]
                parent_paths = [
                    self.root / f".{DELIMITER.join(parents[: n + 1])}" for n in range(len(parents))
                ]
                await self.run(_rename_folders, self.root, moves, parent_paths)
                await self.run(_rename_subscriptions, self.root, old, new)
        log.info("imap folder renamed login=%s from=%r to=%r", self._account.address, old, new)

    async def subscribe(self, name: str) -> None:
        check_name(name)
        async with self._lock:
            await self.run(_change_subscription, self.root, name, True)

    async def unsubscribe(self, name: str) -> None:
        check_name(name)
        async with self._lock:
            await self.run(_change_subscription, self.root, name, False)

    # -- one folder ------------------------------------------------------------------------------
    async def status(self, name: str) -> FolderStatus:
        folder = await self.folder(name)
        async with folder.lock:
            await folder.sync()
            infos = folder.by_uid.values()
            return FolderStatus(
                messages=len(folder.by_uid),
                recent=sum(1 for uid in folder.by_uid if uid > folder.recent_upto),
                uidnext=folder.uidnext,
                uidvalidity=folder.uidvalidity,
                unseen=sum(1 for info in infos if "\\Seen" not in info.flags),
            )

    async def append(
        self, name: str, data: bytes | Path, flags: set[str], internaldate: float | None
    ) -> tuple[int, int]:
        folder = await self.folder(name)
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        await self.check_quota(size)
        async with folder.lock:
            await folder.sync()
            letters = await folder.letters_for(flags)
            unique = self.unique_name()
            file_name = await self.run(_write, folder.path, unique, data, letters, internaldate)
            await folder.sync(force=True)
            entry = folder.entries.get(file_name.partition(INFO_SEPARATOR)[0])
            if entry is None:
                raise MailboxError("SERVERBUG", "The message vanished as it was stored")
            self.charge(disk_size(folder.path / "cur" / file_name))
            return folder.uidvalidity, entry.info.uid

    async def select(self, name: str, *, readonly: bool) -> FolderView:
        folder = await self.folder(name)
        async with folder.lock:
            await folder.sync()
            view = FolderView(folder, self, "INBOX" if name.upper() == "INBOX" else name, readonly)
            await folder.flush_recent()
        return view


def _write(folder: Path, unique: str, data: bytes | Path, letters: str, internaldate: float | None) -> str:
    try:
        return index.write_message(folder, unique, data, letters, internaldate)
    except FileNotFoundError:
        Maildir(folder).ensure()  # a tmp/ some other program removed
        return index.write_message(folder, unique, data, letters, internaldate)


def _prepare(root: Path) -> None:
    """First login: INBOX and the special-use folders (RFC 6154), subscribed. Later logins only
    clear away what an interrupted DELETE left behind."""
    Maildir(root).ensure()
    for entry in os.listdir(root):
        if entry.startswith(index.DELETED_PREFIX):
            index.remove_tree(root / entry)
    if (root / PREPARED_MARKER).exists():
        return
    for name in SPECIAL_USE:
        Maildir(root / f".{name}").ensure()
    subscribed = _read_subscriptions(root)
    for name in ["INBOX", *SPECIAL_USE]:
        if name not in subscribed:
            subscribed.append(name)
    index.write_atomically(root / index.SUBSCRIPTIONS, "".join(f"{name}\n" for name in subscribed))
    index.write_atomically(root / PREPARED_MARKER, "")


def _folder_names(root: Path) -> tuple[list[str], set[str]]:
    return Maildir(root).folders(), set(_read_subscriptions(root))


def _read_subscriptions(root: Path) -> list[str]:
    try:
        text = (root / index.SUBSCRIPTIONS).read_text("utf-8", "replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line]


def _change_subscription(root: Path, name: str, subscribe: bool) -> None:
    names = _read_subscriptions(root)
    if subscribe and name not in names:
        names.append(name)
    elif not subscribe and name in names:
        names.remove(name)
    else:
        return
    index.write_atomically(root / index.SUBSCRIPTIONS, "".join(f"{n}\n" for n in names))


def _rename_subscriptions(root: Path, old: str, new: str) -> None:
    names = _read_subscriptions(root)
    renamed = [
        new + name[len(old) :] if name == old or name.startswith(old + DELIMITER) else name for name in names
    ]
    if renamed != names:
        index.write_atomically(root / index.SUBSCRIPTIONS, "".join(f"{n}\n" for n in renamed))


def _create_all(paths: list[Path]) -> None:
    for path in paths:
        Maildir(path).ensure()


def _delete_folder(root: Path, path: Path, unique: str) -> int:
    """The folder renamed out of sight first (one atomic step), then removed."""
    doomed = root / f"{index.DELETED_PREFIX}{unique}"
    freed = 0
    for sub in ("new", "cur"):
        try:
            names = os.listdir(path / sub)
        except FileNotFoundError:
            continue
        freed += sum(disk_size(path / sub / name) for name in names)
    os.rename(path, doomed)
    fsync_directory(root)
    index.remove_tree(doomed)
    return freed


def _rename_folders(root: Path, moves: list[tuple[Path, Path]], parents: list[Path]) -> None:
    for parent in parents:
        Maildir(parent).ensure()
    for before, after in moves:
        os.rename(before, after)
    fsync_directory(root)


def _move_messages(root: Path, target: Path) -> None:
    Maildir(target).ensure()
    for sub in ("new", "cur"):
        try:
            names = os.listdir(root / sub)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.startswith("."):
                os.rename(root / sub / name, target / sub / name)
        fsync_directory(target / sub)
        fsync_directory(root / sub)


# -- the process-wide registry ---------------------------------------------------------------------
@dataclass(eq=False)
class Mailboxes:
    """Every folder index in the process; built once by start_imap."""

    store: MailStore
    executor: concurrent.futures.Executor
    last_uidvalidity: int = 0
    _folders: dict[Path, _Folder] = field(default_factory=dict)
    _locks: dict[Path, asyncio.Lock] = field(default_factory=dict)
    _tasks: set[asyncio.Future[None]] = field(default_factory=set)
    readers: Readers | None = None  # message reads (Services.readers)

    def __post_init__(self) -> None:
        self.store.listeners.append(self._delivered)

    def account(self, account: AccountEntry) -> AccountMailboxes:
        return AccountMailboxes(self, account)

    def run(self, function: Callable[..., _T], *args: object, **kwargs: object) -> asyncio.Future[_T]:
        loop = asyncio.get_running_loop()
        if kwargs:
            return loop.run_in_executor(self.executor, lambda: function(*args, **kwargs))
        return loop.run_in_executor(self.executor, function, *args)

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def account_lock(self, root: Path) -> asyncio.Lock:
        lock = self._locks.get(root)
        if lock is None:
            if len(self._locks) > 4 * MAX_CACHED_FOLDERS:
                for path in [path for path, held in self._locks.items() if not held.locked()]:
                    del self._locks[path]
            lock = self._locks[root] = asyncio.Lock()
        return lock

    def folder(self, path: Path) -> _Folder:
        found = self._folders.get(path)
        if found is None:
            if len(self._folders) >= MAX_CACHED_FOLDERS:
                self._evict()
            found = self._folders[path] = _Folder(self, path)
        found.last_used = time.monotonic()
        return found

    def forget(self, path: Path) -> None:
        """A folder deleted or renamed: its index must not be found under that name again."""
        self._folders.pop(path, None)

    def _evict(self) -> None:
        idle = [folder for folder in self._folders.values() if not folder.views and not folder.lock.locked()]
        idle.sort(key=lambda folder: folder.last_used)
        for folder in idle[: max(1, len(idle) // 2)]:
            del self._folders[folder.path]

    def _delivered(self, paths: list[Path]) -> None:
        """SMTP delivered into these INBOXes: sessions idling on them look now (RFC 2177)."""
        for path in paths:
            folder = self._folders.get(path)
            if folder is not None:
                for view in folder.views:
                    view.wake()
