"""The keyword names file other Maildir programs share with us (`dovecot-keywords`), kept the
way Dovecot keeps it, so that neither side loses the other's keywords.

A file name carries keywords as the letters a-z; the file says which name each letter stands for
("<index> <name>" per line, index 0 = "a"). Another program (Dovecot, or anything that writes
Dovecot's format) may add names at any time. So the file is read again whenever it changed
(inode, size, mtime) before any flag write (`stamp`, `read`), and a new name is added as Dovecot
adds one (`add`): under the dotlock `dovecot-keywords.lock` (created O_EXCL; the new whole file
is written into it and renamed over the old one, which releases it), after reading the file as
it is now, so an index another program took is never given to a second name. The mtime is
made to grow on every write, as Dovecot does, since Dovecot notices changes by mtime in
seconds. Functions here run in the executor, with the folder's lock held.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from appliance.imap.uidlist import KEYWORDS, MAX_KEYWORDS, read_keywords
from appliance.store.durable import replace_file

LOCK_SUFFIX = ".lock"  # Dovecot's dotlock beside the file
LOCK_WAIT = 2.0  # seconds to wait for another writer's lock
LOCK_PAUSE = 0.01
STALE_LOCK = 30.0  # seconds: a lock older than this was left by a writer that died

Stamp = tuple[int, int, int] | None  # (inode, size, mtime_ns); None when there is no file


class KeywordsLocked(Exception):
    """Another writer held the keywords lock for longer than LOCK_WAIT."""


def stamp(folder: Path) -> Stamp:
    try:
        found = os.stat(folder / KEYWORDS)
    except FileNotFoundError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns)


def read(folder: Path) -> tuple[list[str | None], Stamp]:
    """The names by index and the stamp of the file they were read from (taken first: a change
    while reading makes the next look read again)."""
    before = stamp(folder)
    return read_keywords(folder), before


def add(folder: Path, wanted: list[str]) -> tuple[list[str | None], Stamp]:
    """Give each of `wanted` not yet in the file (matched without regard to case) the first free
    index, as it stands on disk now; the names and the new stamp. Names that find no free index
    are left out (the caller refuses them)."""
    path = folder / KEYWORDS
    lock = folder / (KEYWORDS + LOCK_SUFFIX)
    _take_lock(lock)
    try:
        old = stamp(folder)
        names = read_keywords(folder)
        known = {name.lower() for name in names if name is not None}
        for name in wanted:
            if name.lower() in known:
                continue
            free = next((index for index, have in enumerate(names) if have is None), len(names))
            if free >= MAX_KEYWORDS:
                continue
            if free == len(names):
                names.append(name)
            else:
                names[free] = name
            known.add(name.lower())
        text = "".join(f"{index} {name}\n" for index, name in enumerate(names) if name is not None)
        replace_file(path, text.encode("utf-8", "surrogateescape"), temporary=lock)  # releases the lock
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        raise
    new = stamp(folder)
    if old is not None and new is not None and new[2] // 1_000_000_000 <= old[2] // 1_000_000_000:
        # Dovecot: "mtime must grow every time" (it compares whole seconds).
        seconds = old[2] // 1_000_000_000 + 1
        os.utime(path, (seconds, seconds))
        new = stamp(folder)
    return names, new


def _take_lock(lock: Path) -> None:
    deadline = time.monotonic() + LOCK_WAIT
    while True:  # bounded by LOCK_WAIT
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            return
        except FileExistsError:
            pass
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.stat(lock).st_mtime > STALE_LOCK:
                lock.unlink()  # its writer is gone (Dovecot overrides stale dotlocks the same way)
                continue
        if time.monotonic() >= deadline:
            raise KeywordsLocked(f"{lock} is held by another writer")
        time.sleep(LOCK_PAUSE)
