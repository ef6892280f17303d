"""The mail store: every account's Maildir under `<data_dir>/mail`, its quota, and delivery.

`MailStore.deliver` is where SMTP hands a message over: it checks the quota, adds the trace
fields and has the message written durably in every recipient's Maildir (delivery.py: by the
delivery process when the server has one, store/writer.py, else in the executor) before it
returns: RFC 5321 §6.1, with the 250 the server takes responsibility for the message, so it is
on disk (file and directory fsynced) first. Reading one Maildir is maildir.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from appliance.store.delivery import DeliveryError, MaildirWriter, write_message
from appliance.store.maildir import Maildir, Usage, disk_size, to_lf

if TYPE_CHECKING:
    from appliance.snapshot import AccountEntry
    from appliance.store.writer import DeliveryProcess

log = logging.getLogger("appliance.store")

USAGE_MAX_AGE = 60.0  # seconds before a cached mailbox size is counted again from the disk


class QuotaExceeded(Exception):
    """Delivery would take a mailbox over its account's quota (nothing was written)."""

    def __init__(self, mailbox: str) -> None:
        super().__init__(f"quota exceeded: {mailbox}")
        self.mailbox = mailbox


class MailStore:
    """Every account's Maildir under `<data_dir>/mail`, and delivery into them."""

    def __init__(
        self,
        data_dir: Path,
        executor: concurrent.futures.Executor,
        delivery_process: DeliveryProcess | None = None,
    ) -> None:
        self.root = Path(data_dir) / "mail"
        self.executor = executor
        self._usage: dict[str, Usage] = {}
        self._usage_lock = threading.Lock()
        self.writer = MaildirWriter()
        # When given (the server gives one), deliveries are written by a process of their own
        # instead of this process's disk threads: see store/writer.py for why.
        self.delivery_process = delivery_process
        # Called on the event loop after each delivery with the Maildirs it reached (IMAP IDLE).
        self.listeners: list[Callable[[list[Path]], None]] = []

    def path(self, account: AccountEntry) -> Path:
        return self.root / account.mailbox

    def maildir(self, account: AccountEntry) -> Maildir:
        with self._usage_lock:
            usage = self._usage.get(account.mailbox)
        return Maildir(self.path(account), usage)

    # -- quota ---------------------------------------------------------------------------------
    async def usage(self, account: AccountEntry) -> int:
        """Bytes stored in the account's Maildir (all folders): cached, counted again now and then."""

        with self._usage_lock:
            usage = self._usage.get(account.mailbox)
        if usage is not None and time.monotonic() - usage.counted_at < USAGE_MAX_AGE:
            return usage.size
        size = await asyncio.get_running_loop().run_in_executor(
            self.executor, _count_usage, self.path(account)
        )
        with self._usage_lock:
            self._usage[account.mailbox] = Usage(size)
        return size

    async def quota(self, account: AccountEntry) -> tuple[int, int] | None:
        """(bytes used, the account's quota in bytes), None when the account has no quota."""
        quota = account.account.quota
        return None if quota is None else (await self.usage(account), quota)

    async def over_quota(self, account: AccountEntry, incoming: int = 0) -> bool:
        """True when `incoming` more bytes would take the account over its quota."""
        quota = account.account.quota
        if quota is None:
            return False
        used = await self.usage(account)
        return used + incoming > quota if incoming else used >= quota

    # -- delivery ------------------------------------------------------------------------------
    async def deliver(
        self,
        message: bytes,
        mailboxes: Sequence[AccountEntry],
        *,
        return_path: str,
        received: str,
        folder: str | None = None,
    ) -> None:
        """Store `message` (as received: CRLF line ends) durably in every mailbox, or in none.

        `return_path` is the envelope sender ("" for the null sender); `received` is the value of
        the Received field this server adds (RFC 5321 §4.4); `folder` ("Junk") is where it goes
        in the mailboxes that have that folder (the others get it in INBOX). Raises
        QuotaExceeded when a mailbox is full, OSError when the disk fails; in both cases no
        mailbox keeps the message.
        """

        data = trace_headers(return_path, received) + to_lf(message)
        for account in mailboxes:
            if await self.over_quota(account, len(data)):
                raise QuotaExceeded(account.mailbox)
        paths = [self.path(account) for account in mailboxes]
        if folder is not None:
            paths = await asyncio.get_running_loop().run_in_executor(self.executor, _in_folder, paths, folder)
        if self.delivery_process is not None:
            unique = self.writer.unique_name()
            try:
                await self.delivery_process.deliver(data, paths, unique)
            except DeliveryError:
                # All recipients or none: a process killed between two links left the message
                # in some mailboxes; the client gets 4xx and sends it again, so none keeps it.
                removed = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.writer.withdraw, data, paths, unique
                )
                if removed:
                    log.warning("delivery withdrawn unique=%s mailboxes=%d", unique, removed)
                raise
        else:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.deliver_now, data, paths)
        with self._usage_lock:
            for account in mailboxes:
                usage = self._usage.get(account.mailbox)
                if usage is not None:
                    usage.add(len(data))
        for listener in self.listeners:
            listener(paths)

    async def deliver_placed(
        self, message: bytes, placements: Sequence[Placement], *, return_path: str, received: str
    ) -> list[Path]:
        """`deliver`, with copies filed in folders and with flags (Sieve fileinto, imap4flags).

        A copy without folder or flags takes the usual path (new/ of the account's Maildir); the
        others are written to new/ of the folder, or to cur/ with their flag letters (Maildir
        info, as the IMAP server reads them). All or none: when anything fails, the copies
        already written are removed. Returns the Maildirs written to.
        """
        plain = [p.account for p in placements if p.folder is None and not p.letters]
        placed = [p for p in placements if p.folder is not None or p.letters]
        if not placed:
            await self.deliver(message, plain, return_path=return_path, received=received)
            return [self.path(account) for account in plain]
        data = trace_headers(return_path, received) + to_lf(message)
        copies: dict[str, int] = {}
        for placement in placements:
            copies[placement.account.mailbox] = copies.get(placement.account.mailbox, 0) + len(data)
        for placement in placements:
            if await self.over_quota(placement.account, copies[placement.account.mailbox]):
                raise QuotaExceeded(placement.account.mailbox)
        loop = asyncio.get_running_loop()
        written = await loop.run_in_executor(self.executor, self._write_placed, data, placed)
        try:
            if plain:
                await self.deliver(message, plain, return_path=return_path, received=received)
        except BaseException:
            await loop.run_in_executor(self.executor, _remove_files, written)
            raise
        for placement in placed:
            self.charge(placement.account, len(data))
        folders = [path.parent.parent for path in written]
        for listener in self.listeners:
            listener(folders)
        return [self.path(account) for account in plain] + folders

    def _write_placed(self, data: bytes, placed: Sequence[Placement]) -> list[Path]:
        written: list[Path] = []
        try:
            for placement in placed:
                root = self.path(placement.account)
                if placement.folder is not None:
                    folder = root / f".{placement.folder}"
                    # RFC 5228 §4.1: fileinto a folder that does not exist fails, and the message is
                    # kept in INBOX instead (RFC 5490 §3.2: unless :create).
                    if placement.create or folder.is_dir():
                        root = folder
                    else:
                        log.info("fileinto missing folder=%s: kept in INBOX", placement.folder)
                sub: Literal["new", "cur"] = "cur" if placement.letters else "new"
                name = write_message(
                    root, self.writer.unique_name(), data, sub=sub, letters=placement.letters or None
                )
                written.append(root / sub / name)
        except BaseException:
            _remove_files(written)
            raise
        return written

    def charge(self, account: AccountEntry, delta: int) -> None:
        """Bytes added to (or, negative, removed from) the account's mailbox outside `deliver`."""
        with self._usage_lock:
            usage = self._usage.get(account.mailbox)
        if usage is not None:
            usage.add(delta)

    def deliver_now(self, data: bytes, maildirs: Sequence[Path]) -> list[Path]:
        """`MaildirWriter.deliver` in this process (blocking)."""
        return self.writer.deliver(data, maildirs)

    def unique_name(self) -> str:
        return self.writer.unique_name()


def _in_folder(paths: list[Path], folder: str) -> list[Path]:
    """Each Maildir's folder `folder` where it exists (a Maildir++ `.folder` with `cur/`)."""
    return [path / f".{folder}" if (path / f".{folder}" / "cur").is_dir() else path for path in paths]


def _remove_files(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class Placement:
    """Where one copy of a delivered message goes: the account, a folder (None: INBOX; the
    Maildir++ name, "." between levels) and its Maildir flag letters ("" for none)."""

    account: AccountEntry
    folder: str | None = None
    letters: str = ""
    create: bool = False


def trace_headers(return_path: str, received: str) -> bytes:
    """`Return-Path` (RFC 5321 §4.4) and `Received` fields, LF line ends."""
    value = received.replace("\r\n", "\n").strip("\n")
    text = f"Return-Path: <{return_path}>\nReceived: {value}\n"
    return text.encode("utf-8", "surrogateescape")


def mailbox_size(root: Path) -> int:
    """Bytes stored in the Maildir at `root`, all folders (what the quota counts)."""
    return _count_usage(root)


def _count_usage(root: Path) -> int:
    """Bytes in the Maildir and its folders, from S= fields (a stat for files without one)."""
    total = 0
    directories = [root]
    try:
        directories += [
            root / entry for entry in os.listdir(root) if entry.startswith(".") and len(entry) > 1
        ]
    except FileNotFoundError:
        return 0
    for directory in directories:
        for sub in ("new", "cur"):
            try:
                names = os.listdir(directory / sub)
            except (FileNotFoundError, NotADirectoryError):
                continue
            total += sum(disk_size(directory / sub / name) for name in names)
    return total
