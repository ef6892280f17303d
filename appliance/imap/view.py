"""A session's view of its selected folder: its own sequence numbers and \\Recent messages.

A `FolderView` is one session's picture of the folder index (index.py) it selected: its own
sequence numbers, which change only when that session is told (RFC 3501 §7.4.1: EXPUNGE
responses are held back during FETCH, STORE and SEARCH), and its own \\Recent messages (RFC 3501
§2.3.2: one session gets each). It finds what to tell (updates.py) and makes the session's own
changes: STORE, EXPUNGE, COPY and MOVE, and the reads of FETCH and SEARCH.
"""

from __future__ import annotations

import asyncio
import bisect
import re
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from appliance.imap.index import Entry, FolderIndex, MailboxError, MessageInfo
from appliance.imap.message import ParsedMessage
from appliance.imap.ordering import Summary, summarize
from appliance.imap.search import folded_fields
from appliance.imap.uidlist import MAX_KEYWORDS
from appliance.imap.updates import Exists, Expunged, FlagsChanged, NewFlags, Recent, Update
from appliance.store.delivery import copy_messages
from appliance.store.maildir import read_crlf, read_header

if TYPE_CHECKING:
    from appliance.imap.mailboxes import AccountMailboxes
    from appliance.imap.threads import Container

POLL_INTERVAL = 0.5  # seconds between looks at the disk while a session idles
MAX_CACHED_FIELDS = 200_000  # header values cached per field and folder
_SIZE_FIELDS = re.compile(r",[SW]=\d+")


# -- a session's view of its selected folder -------------------------------------------------------
class FolderView:
    """One session's picture of its selected folder."""

    def __init__(self, folder: FolderIndex, account: AccountMailboxes, name: str, readonly: bool) -> None:
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
    def _own(self, entries: Sequence[Entry]) -> list[MessageInfo]:
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
            await target.refresh_keywords()
            jobs = []
            for entry in sources:
                letters = await target.letters_for(entry.info.flags, keep=entry.letters)
                sizes = "".join(_SIZE_FIELDS.findall(entry.info.key))
                if ",W=" not in sizes:
                    sizes += f",W={entry.info.size}"
                unique = self._account.unique_name() + sizes
                jobs.append((folder.path / entry.sub / entry.name, entry.info.key, unique, letters))
            linked = await self._account.run(copy_messages, folder.path, target.path, jobs)
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

    async def summaries(self, infos: Sequence[MessageInfo]) -> list[Summary | None]:
        """What SORT and THREAD use of each message (ordering.summarize), None for one that
        vanished: from the folder's cache, else from the header alone, read and summarized where
        message reads are done."""
        cache = self._folder.summaries
        found: list[Summary | None] = [cache.get(info.key) for info in infos]
        missing = [position for position, summary in enumerate(found) if summary is None]
        if missing:
            folder = self._folder
            places = [(folder.file_path(infos[position].key), infos[position].key) for position in missing]
            read = await self._account.read_files(_summarize_all, folder.path, places)
            for position, summary in zip(missing, read, strict=True):
                found[position] = summary
                if summary is not None and len(cache) < MAX_CACHED_FIELDS:
                    cache[infos[position].key] = summary
        return found

    @property
    def threads(self) -> dict[str, tuple[tuple[str, ...], list[Container]]]:
        """The folder's last THREAD trees, shared by its sessions (FolderIndex.threads)."""
        return self._folder.threads

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


def _read_all(folder: Path, places: list[tuple[str, str, int]]) -> list[bytes | None]:
    return [read_crlf(path, folder, key, size) for path, key, size in places]


def _summarize_all(folder: Path, places: list[tuple[str, str]]) -> list[Summary | None]:
    found: list[Summary | None] = []
    for path, key in places:
        header = read_header(path, folder, key)
        found.append(None if header is None else summarize(header))
    return found


def _read_headers(
    folder: Path, places: list[tuple[str, str]], names: list[str]
) -> list[dict[str, str | None] | None]:
    """Each message's header fields `names` as SEARCH compares them (None: it vanished)."""
    found: list[dict[str, str | None] | None] = []
    for path, key in places:
        header = read_header(path, folder, key)
        found.append(None if header is None else folded_fields(ParsedMessage.parse(header), names))
    return found
