"""Removing what a crash leaves in the Maildirs' tmp/ directories.

A message is written to `tmp/`, fsynced and only then renamed into `new/` (delivery.py; where the
filesystem allows it, it is never named in `tmp/` at all), and a client hears "250" only after
that. A file still in `tmp/` when the server starts was never acknowledged: a `kill -9` or a
power cut interrupted its delivery (or an IMAP APPEND). Nothing reads `tmp/`, so such files are
only wasted space and quota; they are removed at start, in the background. Files newer than the
server's start are left alone (another writer's, in flight).
"""

from __future__ import annotations

import os
from pathlib import Path


def sweep_tmp(mail_root: Path, started: float) -> tuple[int, int]:
    """Remove files in every `<domain>/<account>/[.<folder>/]tmp/` changed before `started`.

    Returns (files removed, bytes freed). Blocking: run it in an executor.
    """
    removed = freed = 0
    for account in _accounts(mail_root):
        for maildir in _maildirs(account):
            tmp = os.path.join(maildir, "tmp")
            try:
                entries = list(os.scandir(tmp))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                    if not entry.is_file(follow_symlinks=False) or info.st_mtime >= started:
                        continue
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                removed += 1
                freed += info.st_size
    return removed, freed


def _accounts(mail_root: Path) -> list[str]:
    accounts: list[str] = []
    try:
        domains = list(os.scandir(mail_root))
    except FileNotFoundError:
        return accounts
    for domain in domains:
        if not domain.is_dir(follow_symlinks=False):
            continue
        try:
            accounts.extend(e.path for e in os.scandir(domain.path) if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return accounts


def _maildirs(account: str) -> list[str]:
    """The account's INBOX and its Maildir++ folders (`.Name`)."""
    found = [account]
    try:
        found.extend(
            e.path
            for e in os.scandir(account)
            if e.name.startswith(".") and e.name not in (".", "..") and e.is_dir(follow_symlinks=False)
        )
    except OSError:
        pass
    return found
