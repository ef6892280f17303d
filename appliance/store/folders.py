"""An account's Maildir++ folders on disk: made, renamed, deleted, emptied into another.

Each step is durable before it returns (the directories whose entries changed are fsynced), and
a deletion is one atomic rename out of sight before the files go. The IMAP folder tree
(imap/mailboxes.py) decides what to do; this is how it is done. Everything here blocks.
"""

from __future__ import annotations

import base64
import errno
import os
import shutil
from pathlib import Path

from appliance.store.durable import fsync_directory
from appliance.store.maildir import Maildir, disk_size

# Linux's NAME_MAX (ext4, xfs, btrfs, tmpfs): the bytes one directory entry's name may hold.
NAME_MAX = 255


def folder_directory_fits(name: str) -> bool:
    """True when the Maildir++ directory of folder `name` ("." + the whole hierarchical name, as
    bytes) fits in one directory entry."""
    return len(os.fsencode(f".{name}")) <= NAME_MAX


def encode_folder_name(name: str) -> str:
    """A folder name (Unicode) as IMAP names it, RFC 3501 §5.1.3 modified UTF-7: printable
    US-ASCII as itself ("&" as "&-"), anything else as "&" + modified BASE64 of its UTF-16 + "-".
    The Maildir++ directory is "." + this name; hmailserver import and Sieve `fileinto` use it."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if " " <= char <= "~":
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def create_folders(paths: list[Path]) -> None:
    """Each of these Maildirs (and missing parents) made, durably."""
    for path in paths:
        if len(os.fsencode(path.name)) > NAME_MAX:  # refused before any of them is made
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path.name)
    for path in paths:
        Maildir(path).ensure()


def delete_folder(path: Path, doomed: Path) -> int:
    """The folder renamed out of sight to `doomed` first (one atomic step, its parent fsynced),
    then removed; the bytes its messages took (for the quota). A crash between the two leaves
    `doomed` for the next login to remove."""
    freed = 0
    for sub in ("new", "cur"):
        try:
            names = os.listdir(path / sub)
        except FileNotFoundError:
            continue
        freed += sum(disk_size(path / sub / name) for name in names)
    os.rename(path, doomed)
    fsync_directory(doomed.parent)
    shutil.rmtree(doomed, ignore_errors=True)
    return freed


def remove_leftovers(root: Path, prefix: str) -> None:
    """What an interrupted delete_folder left under `root` (names starting with `prefix`)."""
    for entry in os.listdir(root):
        if entry.startswith(prefix):
            shutil.rmtree(root / entry, ignore_errors=True)


def rename_folders(root: Path, moves: list[tuple[Path, Path]], parents: list[Path]) -> None:
    """Folders under `root` renamed (before, after) once the new `parents` exist; `root` fsynced."""
    for path in [*parents, *(after for _, after in moves)]:
        if len(os.fsencode(path.name)) > NAME_MAX:  # refused before anything moved
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path.name)
    for parent in parents:
        Maildir(parent).ensure()
    for before, after in moves:
        os.rename(before, after)
    fsync_directory(root)


def move_messages(root: Path, target: Path) -> None:
    """Every message of the Maildir `root` moved into `target` (made if missing), both fsynced."""
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
