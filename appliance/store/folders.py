"""An account's Maildir++ folders on disk: made, renamed, deleted, emptied into another.

Each step is durable before it returns (the directories whose entries changed are fsynced), and
a deletion is one atomic rename out of sight before the files go. The IMAP folder tree
(imap/mailboxes.py) decides what to do; this is how it is done. Everything here blocks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from appliance.store.durable import fsync_directory
from appliance.store.maildir import Maildir, disk_size


def create_folders(paths: list[Path]) -> None:
    """Each of these Maildirs (and missing parents) made, durably."""
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
