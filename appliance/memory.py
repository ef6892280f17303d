"""Memory tuning for a server that rebuilds a 100k-account snapshot at every reload.

The cyclic garbage collector is paused while a manifest and its snapshot are built
(`gc_paused`), the live snapshot is left out of later collections (`freeze_live_objects`), and
after a reload the old generation is collected and its pages given back (`release_memory`).
glibc's malloc is held to two arenas (`limit_malloc_arenas`). Nothing here knows what a manifest
is: the manifest loader, the snapshot and the composition root call in.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects at once.

    A 100k-account manifest creates about a million objects; each allocation burst sets off
    collections that walk every object built so far, which doubled load time. Reference counting
    still frees everything as usual; only cycle collection waits until the block ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def limit_malloc_arenas(count: int = 2) -> None:
    """glibc's M_ARENA_MAX: by default each thread that allocates may get an arena of its own
    (up to 8 per core), and memory freed in one is not reused by another. Python allocates
    under its GIL anyway, so two arenas cost no concurrency; they keep a server that reloads a
    100k-account manifest from keeping every generation's freed memory. A no-op off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-8, count)  # M_ARENA_MAX


def release_memory() -> None:
    """After a reload: collect the old generation's cycles and give free pages back to the
    system (glibc malloc_trim), so the next reload starts from what is live. What is live then is
    frozen (see `freeze_live_objects`)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def freeze_live_objects() -> None:
    """Leave the objects alive now out of every later garbage collection (gc.freeze): the
    snapshot in force lives until the next reload, and every full collection walked it again
    while every session waited: 53 ms a time with a 100k-account manifest (330,000 objects the
    collector tracks), 0 once frozen. `release_memory` unfreezes, collects and freezes again at
    each reload, so the old snapshot's cycles are still collected."""
    gc.freeze()


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt and malloc_trim are its own), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
