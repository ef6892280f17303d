"""Every account's IMAP folder tree: the folders an account has, their names and subscriptions.

`Mailboxes` (one per process) keeps the folder indexes (index.py) that sessions share;
`AccountMailboxes` is one logged-in account's tree of Maildir++ folders: LIST, CREATE, DELETE,
RENAME, (UN)SUBSCRIBE, STATUS, APPEND and SELECT (which gives a FolderView, view.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.imap.index import FolderIndex, MailboxError
from appliance.imap.view import FolderView
from appliance.store.delivery import write_message
from appliance.store.dovecot import DOVECOT_UIDLIST
from appliance.store.durable import replace_file
from appliance.store.folders import (
    create_folders,
    delete_folder,
    folder_directory_fits,
    move_messages,
    remove_leftovers,
    rename_folders,
)
from appliance.store.maildir import INFO_SEPARATOR, Maildir, disk_size
from appliance.store.mailstore import MailStore

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
SUBSCRIPTIONS = "subscriptions"  # ours: one name a line (Maildir++'s form, Dovecot's version 1)
# Dovecot 2.x writes its `subscriptions` as "V\t2", an empty line, then names with "\t" between
# levels. Such a file is read, never written: our changes go to this file beside it.
OWN_SUBSCRIPTIONS = "appliance-subscriptions"
_DOVECOT_SUBSCRIPTIONS_HEADER = "V\t"
DELETED_PREFIX = "~deleted-"  # a folder being deleted is renamed to this first
MAX_CACHED_FOLDERS = 256  # folder indexes kept in memory while no session has them open
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message of an APPEND: its bytes (or the file they were spooled to), flags and date."""

    data: bytes | Path
    size: int
    flags: set[str]
    internaldate: float | None


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


# -- an account's folders --------------------------------------------------------------------------
def check_name(name: str) -> str:
    """A folder name the Maildir++ layout can hold (RFC 3501 §5.1), or MailboxError CANNOT."""
    if name.upper() == "INBOX":
        return "INBOX"
    if (
        not name
        or "/" in name
        or name.startswith(DELIMITER)
        or name.endswith(DELIMITER)
        or DELIMITER * 2 in name
        or not modified_utf7_valid(name)
    ):
        raise MailboxError("CANNOT", "Invalid mailbox name")
    if not folder_directory_fits(name):  # the directory is "." + the whole name: NAME_MAX bounds it
        raise MailboxError("CANNOT", "Mailbox name too long")
    return name


_BASE64 = {char: value for value, char in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
)}  # fmt: skip


def modified_utf7_valid(name: str) -> bool:
    """RFC 3501 §5.1.3: printable US-ASCII stands for itself, "&-" for "&", and "&...-" holds
    modified BASE64 (with "," for "/") of UTF-16 for anything else: never of a printable US-ASCII
    character, with no leftover bits but zero padding, and no unpaired surrogate."""
    position, length = 0, len(name)
    while position < length:
        char = name[position]
        if not " " <= char <= "~":  # controls, DEL, 8-bit: not modified UTF-7
            return False
        position += 1
        if char != "&":
            continue
        end = name.find("-", position)
        if end < 0:
            return False
        run, position = name[position:end], end + 1
        units: list[int] = []
        bits = buffered = 0
        for letter in run:
            value = _BASE64.get(letter)
            if value is None:
                return False
            buffered, bits = (buffered << 6) | value, bits + 6
            if bits >= 16:
                bits -= 16
                units.append(buffered >> bits)
                buffered &= (1 << bits) - 1
        if bits >= 6 or buffered:  # more than padding left over, or padding that is not zero
            return False
        if run and not _utf16_valid(units):
            return False
    return True


def _utf16_valid(units: list[int]) -> bool:
    index = 0
    while index < len(units):
        unit = units[index]
        if 0x20 <= unit <= 0x7E:  # printable US-ASCII must represent itself
            return False
        if 0xD800 <= unit <= 0xDBFF:  # a high surrogate needs its low one
            if index + 1 >= len(units) or not 0xDC00 <= units[index + 1] <= 0xDFFF:
                return False
            index += 1
        elif 0xDC00 <= unit <= 0xDFFF:
            return False
        index += 1
    return True


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

    async def quota(self) -> tuple[int, int] | None:
        """(bytes used, quota in bytes) of the account, None when it has no quota."""
        return await self._owner.store.quota(self._account)

    async def check_quota(self, incoming: int) -> None:
        if await self._owner.store.over_quota(self._account, incoming):
            raise MailboxError("OVERQUOTA", "Mailbox is full")  # RFC 9208 §4.3.3

    def _path(self, name: str) -> Path:
        name = check_name(name)
        return self.root if name == "INBOX" else self.root / f".{name}"

    async def folder(self, name: str) -> FolderIndex:
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

    async def subscriptions(self) -> Sequence[str]:
        """The subscribed names, whether the folders exist or not (RFC 3501 §6.3.6)."""
        return await self.run(_read_subscriptions, self.root)

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
            await self.run(create_folders, paths)
        log.info("imap folder created login=%s folder=%r", self._account.address, name)

    async def delete(self, name: str) -> None:
        if name.upper() == "INBOX":
            raise MailboxError("CANNOT", "INBOX cannot be deleted")
        path = self._path(name)
        async with self._lock:
            if not (path / "cur").is_dir():
                raise MailboxError("NONEXISTENT", "No such mailbox")
            self._owner.forget(path)
            freed = await self.run(delete_folder, path, self.root / f"{DELETED_PREFIX}{self.unique_name()}")
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
                    await self.run(move_messages, self.root, target)
                    await inbox.sync(force=True)
            else:
                moves = [
                    (self.root / f".{name}", self.root / f".{new}{name[len(old) :]}")
                    for name in names
                    if name == old or name.startswith(old + DELIMITER)
                ]
                if not all(folder_directory_fits(after.name[1:]) for _, after in moves):
                    # A child's whole name grows with its parent's: each must still fit.
                    raise MailboxError("CANNOT", "A mailbox name would be too long")
                for before, after in moves:
                    self._owner.forget(before)
                    self._owner.forget(after)
                parents = new.split(DELIMITER)[:-1]
                parent_paths = [
                    self.root / f".{DELIMITER.join(parents[: n + 1])}" for n in range(len(parents))
                ]
                await self.run(rename_folders, self.root, moves, parent_paths)
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

    async def append(self, name: str, messages: Sequence[NewMessage]) -> tuple[int, Sequence[int]]:
        """APPEND, and MULTIAPPEND (RFC 3502 §6.3.11): every message stored durably, in order,
        or none of them; the folder's UIDVALIDITY and the new UIDs."""
        folder = await self.folder(name)
        await self.check_quota(sum(message.size for message in messages))
        async with folder.lock:
            await folder.sync()
            await folder.refresh_keywords()
            jobs = []
            for message in messages:
                letters = await folder.letters_for(message.flags)
                jobs.append((self.unique_name(), message.data, letters, message.internaldate))
            file_names = await self.run(_write_all, folder.path, jobs)
            await folder.sync(force=True)
            uids = []
            for file_name in file_names:
                entry = folder.entries.get(file_name.partition(INFO_SEPARATOR)[0])
                if entry is None:
                    raise MailboxError("SERVERBUG", "The message vanished as it was stored")
                uids.append(entry.info.uid)
            self.charge(sum(disk_size(folder.path / "cur" / file_name) for file_name in file_names))
            return folder.uidvalidity, uids

    async def select(self, name: str, *, readonly: bool) -> FolderView:
        folder = await self.folder(name)
        async with folder.lock:
            await folder.sync()
            view = FolderView(folder, self, "INBOX" if name.upper() == "INBOX" else name, readonly)
            await folder.flush_recent()
        return view


def _write_all(folder: Path, jobs: list[tuple[str, bytes | Path, str, float | None]]) -> list[str]:
    """APPEND: each message in cur/ with its flags and internal date, durably (RFC 3501
    §6.3.11); when one cannot be written, those already written are removed (RFC 3502: all or
    none)."""
    written: list[str] = []
    try:
        for unique, data, letters, internaldate in jobs:
            written.append(
                write_message(folder, unique, data, sub="cur", letters=letters, mtime=internaldate)
            )
    except BaseException:
        for name in written:
            (folder / "cur" / name).unlink(missing_ok=True)
        raise
    return written


def _write_text(path: Path, text: str) -> None:
    replace_file(path, text.encode("utf-8", "surrogateescape"))


def _prepare(root: Path) -> None:
    """First login: INBOX and the special-use folders (RFC 6154), subscribed. Later logins only
    clear away what an interrupted DELETE left behind."""
    Maildir(root).ensure()
    remove_leftovers(root, DELETED_PREFIX)
    if (root / PREPARED_MARKER).exists():
        return
    if (root / DOVECOT_UIDLIST).exists() or _subscriptions_file(root)[1]:
        # A Maildir Dovecot served keeps the folders and subscriptions its clients know.
        _write_text(root / PREPARED_MARKER, "")
        return
    for name in SPECIAL_USE:
        Maildir(root / f".{name}").ensure()
    subscribed = _read_subscriptions(root)
    for name in ["INBOX", *SPECIAL_USE]:
        if name not in subscribed:
            subscribed.append(name)
    _write_subscriptions(root, subscribed)
    _write_text(root / PREPARED_MARKER, "")


def _folder_names(root: Path) -> tuple[list[str], set[str]]:
    return Maildir(root).folders(), set(_read_subscriptions(root))


def _subscriptions_file(root: Path) -> tuple[Path, bool]:
    """The file that holds the account's subscriptions, and whether it is Dovecot's (read only)."""
    own = root / OWN_SUBSCRIPTIONS
    if own.exists():
        return own, False
    path = root / SUBSCRIPTIONS
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(_DOVECOT_SUBSCRIPTIONS_HEADER))
    except FileNotFoundError:
        return path, False
    return path, start == _DOVECOT_SUBSCRIPTIONS_HEADER.encode()


def _read_subscriptions(root: Path) -> list[str]:
    path, dovecot = _subscriptions_file(root)
    try:
        text = path.read_text("utf-8", "replace")
    except FileNotFoundError:
        return []
    lines = text.splitlines()
    if dovecot:  # "V\t2", "", then the names, levels apart by "\t"
        return [line.replace("\t", DELIMITER) for line in lines[1:] if line]
    return [line for line in lines if line]


def _write_subscriptions(root: Path, names: list[str]) -> None:
    path, dovecot = _subscriptions_file(root)
    _write_text(root / OWN_SUBSCRIPTIONS if dovecot else path, "".join(f"{name}\n" for name in names))


def _change_subscription(root: Path, name: str, subscribe: bool) -> None:
    names = _read_subscriptions(root)
    if subscribe and name not in names:
        names.append(name)
    elif not subscribe and name in names:
        names.remove(name)
    else:
        return
    _write_subscriptions(root, names)


def _rename_subscriptions(root: Path, old: str, new: str) -> None:
    names = _read_subscriptions(root)
    renamed = [
        new + name[len(old) :] if name == old or name.startswith(old + DELIMITER) else name for name in names
    ]
    if renamed != names:
        _write_subscriptions(root, renamed)


# -- the process-wide registry ---------------------------------------------------------------------
@dataclass(eq=False)
class Mailboxes:
    """Every folder index in the process; built once by serve (imap.server.IMAPServer)."""

    store: MailStore
    executor: concurrent.futures.Executor
    last_uidvalidity: int = 0
    _folders: dict[Path, FolderIndex] = field(default_factory=dict)
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

    def folder(self, path: Path) -> FolderIndex:
        found = self._folders.get(path)
        if found is None:
            if len(self._folders) >= MAX_CACHED_FOLDERS:
                self._evict()
            found = self._folders[path] = FolderIndex(self, path)
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
