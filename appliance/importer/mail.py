"""hMailServer's messages copied into each account's Maildir++: folders, flags, dates, UIDs.

Where hMailServer keeps a message: `<data dir>/<domain>/<local part>/<2 characters>/{GUID}.eml`,
the two characters being the GUID's first two (hm_messages.messagefilename holds the file name,
or a full Windows path in old versions: only its last part is used, and the file is also looked
for without the two-character directory).

Each folder of `hm_imapfolders` becomes a Maildir++ folder (INBOX the account's root, a child
`.Parent.Child`, names in modified UTF-7); each message a file in `cur/` named
`<created>.M<message id>P<account id>.hmailserver,S=<bytes>,W=<size with CRLF>:2,<flags>`, its
modification time the message's creation time (IMAP's internal date), its UID the next one of
the folder's `appliance-uidlist` in hMailServer's UID order (a folder new to the store gets a
fresh UIDVALIDITY, so no client mixes old UIDs with new ones).

Idempotent: `appliance-hmailserver-imported` in each folder lists the message ids already
copied, appended after the messages and their UIDs are on disk; a re-run copies only the ids it
does not list (a file an interrupted run left without its line is written anew). The messages of
one account are written without an fsync each, then made durable together (one sync) before the
UID list and that ledger name them.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import itertools
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from appliance.imap.uidlist import (
    UIDLIST,
    UidList,
    append_uidlist,
    load_uidlist,
    new_uidvalidity,
    rewrite_uidlist,
)
from appliance.importer.plan import Mailbox, Note
from appliance.importer.source import Row, Tables, as_int, as_text, as_time
from appliance.store.durable import fsync_directory, replace_file, write_all
from appliance.store.folders import encode_folder_name
from appliance.store.maildir import INFO_SEPARATOR, Maildir, to_lf, wire_size

LEDGER = "appliance-hmailserver-imported"
WRITERS = 4  # threads writing message files: the copy waits on the disk, not on Python
SUBSCRIPTIONS = "subscriptions"  # the IMAP server's list of subscribed folders (imap/mailboxes.py)
DELIMITER = "."
# hMailServer's message flags (hm_messages.messageflags) → Maildir letters, in ASCII order.
_FLAG_LETTERS = ((16, "D"), (4, "F"), (8, "R"), (1, "S"), (2, "T"))
_OURS = re.compile(r"^\d+\.M(\d+)P\d+\.hmailserver(?:,|$)")


@dataclass
class MailResult:
    messages: int = 0
    bytes: int = 0
    already: int = 0
    folders: int = 0
    notes: list[Note] = field(default_factory=list)


def flag_letters(flags: int) -> str:
    return "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit)


def copy_mail(
    tables: Tables,
    mailboxes: list[Mailbox],
    data_dir: Path,
    store: Path,
    zone: datetime.tzinfo = datetime.UTC,
) -> MailResult:
    """Every message of `mailboxes` from hMailServer's `data_dir` into `store` (<data_dir>/mail);
    hMailServer's times are read in its server's time `zone`."""
    result = MailResult()
    folders_by_account: dict[int, list[Row]] = defaultdict(list)
    for row in tables.get("hm_imapfolders", []):
        folders_by_account[as_int(row.get("folderaccountid"))].append(row)
    messages_by_folder: dict[int, list[Row]] = defaultdict(list)
    for row in tables.get("hm_messages", []):
        if as_int(row.get("messageaccountid")) != 0:
            messages_by_folder[as_int(row.get("messagefolderid"))].append(row)
    with concurrent.futures.ThreadPoolExecutor(WRITERS, thread_name_prefix="import") as writers:
        for mailbox in mailboxes:
            _copy_account(
                mailbox,
                folders_by_account.get(mailbox.account_id, []),
                messages_by_folder,
                Path(data_dir),
                Path(store) / mailbox.domain / mailbox.local_part,
                result,
                writers,
                zone,
            )
    return result


def _folder_names(folders: list[Row], address: str, notes: list[Note]) -> dict[int, str]:
    """Folder id → its IMAP name (modified UTF-7, "." between levels); INBOX as "INBOX"."""
    by_id = {as_int(row.get("folderid")): row for row in folders}
    names: dict[int, str] = {}
    for folder_id in by_id:
        parts: list[str] = []
        current: int | None = folder_id
        for _ in range(64):  # bounded: a loop in folderparentid ends here
            row = by_id.get(current) if current is not None else None
            if row is None:
                break
            part = as_text(row.get("foldername"))
            if DELIMITER in part or "/" in part or not part:
                notes.append(Note("renamed", address, f'folder "{part}": "." and "/" became "_"'))
                part = part.replace(DELIMITER, "_").replace("/", "_") or "_"
            parts.append(part)
            current = as_int(row.get("folderparentid"), -1)
        name = DELIMITER.join(encode_folder_name(part) for part in reversed(parts))
        names[folder_id] = "INBOX" if name.upper() == "INBOX" else name
    return names


def _copy_account(
    mailbox: Mailbox,
    folders: list[Row],
    messages_by_folder: dict[int, list[Row]],
    data_dir: Path,
    root: Path,
    result: MailResult,
    writers: concurrent.futures.Executor,
    zone: datetime.tzinfo,
) -> None:
    Maildir(root).ensure()
    names = _folder_names(folders, mailbox.address, result.notes)
    source_dir = _as_on_disk(_as_on_disk(data_dir, mailbox.domain), mailbox.local_part)
    written: list[tuple[Path, list[str], list[str], UidList]] = []
    subscribed: list[str] = []
    for row in sorted(folders, key=lambda r: names.get(as_int(r.get("folderid")), "")):
        folder_id = as_int(row.get("folderid"))
        name = names[folder_id]
        path = root if name == "INBOX" else root / f".{name}"
        Maildir(path).ensure()
        result.folders += 1
        if as_int(row.get("folderissubscribed"), 1):
            subscribed.append(name)
        rows = sorted(
            messages_by_folder.get(folder_id, []),
            key=lambda r: (as_int(r.get("messageuid")), as_int(r.get("messageid"))),
        )
        done = _read_ledger(path)
        pending = [r for r in rows if as_int(r.get("messageid")) not in done]
        result.already += len(rows) - len(pending)
        if not pending:
            continue
        leftovers = _leftovers(path)
        uids = _uidlist(path)
        uid_lines: list[str] = []
        ledger_lines: list[str] = []
        jobs = []
        for row in pending:
            message_id = as_int(row.get("messageid"))
            source = _find_source(source_dir, as_text(row.get("messagefilename")))
            if source is None:
                result.notes.append(
                    Note("not imported", mailbox.address, f"message {message_id}: file not found in {name}")
                )
                continue
            for stale in leftovers.get(message_id, []):
                os.unlink(stale)
            jobs.append((message_id, source, row))
        # Written in parallel, given UIDs in hMailServer's order (map keeps the order).
        copied = writers.map(
            _write,
            itertools.repeat(path),
            [job[1] for job in jobs],
            [job[0] for job in jobs],
            itertools.repeat(mailbox.account_id),
            [job[2] for job in jobs],
            itertools.repeat(zone),
        )
        for (message_id, _source, _row), (key, created, wire) in zip(jobs, copied, strict=True):
            uid_lines.append(f"+{uids.uidnext} {created:.0f} {wire} {key}")
            uids.uidnext += 1
            ledger_lines.append(f"{message_id} {key}")
            result.messages += 1
            result.bytes += wire
        written.append((path, uid_lines, ledger_lines, uids))
    # One sync makes every message above durable, before any UID list or ledger names it.
    if written:
        os.sync()
    for path, uid_lines, ledger_lines, _uids in written:
        fsync_directory(path / "cur")
        append_uidlist(path, uid_lines, durable=True)
        _append_ledger(path, ledger_lines)
    _subscribe(root, subscribed)


def _uidlist(path: Path) -> UidList:
    if (path / UIDLIST).exists():
        return load_uidlist(path, new_uidvalidity(0))
    uids = UidList(new_uidvalidity(0), 1, 0, {}, 0)
    rewrite_uidlist(path, uids)  # the header: a fresh UIDVALIDITY for this folder
    return uids


def _as_on_disk(parent: Path, name: str) -> Path:
    """`parent/name`, or the entry of `parent` that differs from it only in case: Windows does
    not tell "John" from "john", so a copied data directory may hold either."""
    exact = parent / name
    if exact.exists():
        return exact
    try:
        entries = os.listdir(parent)
    except OSError:
        return exact
    return next((parent / entry for entry in entries if entry.lower() == name.lower()), exact)


def _find_source(source_dir: Path, filename: str) -> Path | None:
    base = re.split(r"[\\/]", filename)[-1]
    if not base or base in (".", ".."):
        return None
    partial = base[1:3] if base.startswith("{") else base[:2]
    for candidate in (source_dir / partial / base, source_dir / base):
        if candidate.is_file():
            return candidate
    # The two-character directory and the file name as Windows may have cased them.
    directory = _as_on_disk(source_dir, partial)
    found = _as_on_disk(directory, base)
    return found if found.is_file() else None


def _write(
    folder: Path, source: Path, message_id: int, account_id: int, row: Row, zone: datetime.tzinfo
) -> tuple[str, float, int]:
    """The message in `folder`/cur (not fsynced: the caller syncs the batch); (key, internal
    date, size with CRLF)."""
    created = as_time(row.get("messagecreatetime"), zone)
    with open(source, "rb") as handle:
        if created is None:
            created = os.fstat(handle.fileno()).st_mtime
        data = to_lf(handle.read())
    wire = wire_size(data)
    unique = f"{int(created)}.M{message_id}P{account_id}.hmailserver"
    key = f"{unique},S={len(data)},W={wire}"
    letters = flag_letters(as_int(row.get("messageflags")))
    temporary = folder / "tmp" / unique
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.utime(descriptor, (created, created))
    finally:
        os.close(descriptor)
    os.rename(temporary, folder / "cur" / f"{key}{INFO_SEPARATOR}{letters}")
    return key, created, wire


def _leftovers(folder: Path) -> dict[int, list[Path]]:
    """Files of ours an interrupted run left (their id is not in the ledger), by message id."""
    found: dict[int, list[Path]] = defaultdict(list)
    for sub in ("cur", "new"):
        try:
            names = os.listdir(folder / sub)
        except FileNotFoundError:
            continue
        for name in names:
            match = _OURS.match(name)
            if match:
                found[int(match.group(1))].append(folder / sub / name)
    return found


def _read_ledger(folder: Path) -> set[int]:
    try:
        text = (folder / LEDGER).read_text("ascii", "replace")
    except FileNotFoundError:
        return set()
    lines = text.split("\n")
    return {int(line.split(" ", 1)[0]) for line in lines[:-1] if line.split(" ", 1)[0].isdigit()}


def _append_ledger(folder: Path, lines: list[str]) -> None:
    if not lines:
        return
    descriptor = os.open(folder / LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        write_all(descriptor, "".join(line + "\n" for line in lines).encode("ascii"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _subscribe(root: Path, names: list[str]) -> None:
    path = root / SUBSCRIPTIONS
    try:
        present = [line for line in path.read_text("utf-8").splitlines() if line]
    except FileNotFoundError:
        present = []
    wanted = present + [name for name in names if name not in present]
    if wanted != present:
        replace_file(path, "".join(f"{name}\n" for name in wanted).encode("utf-8"))
