"""Read-ahead: the next messages read and converted before the client asks for them.

POP3 clients download in order, one RETR per round trip. Handing each small read to the reader
process (Services.reader_process) costs a round trip per message, more than reading 4 KB from the
page cache; reading a window of the following messages in one request spreads that cost over the
window, and the request for the next window runs while the client reads the current one. The loop
itself never touches the disk.

Memory is bounded: a window holds at most `WINDOW_BYTES` (and `MAX_WINDOW` messages), messages
over `SMALL_MESSAGE` are left to the streaming path, and what the client skipped is dropped.
The window starts small and doubles while the client keeps reading in order, so a client that
fetches one message does not make the server read sixty-four.

A window lands in `_ready` as soon as it is read (a done callback), so `take` can give the next
message without awaiting anything; `message` is the way for everything else.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from appliance.pop3.maildrop import Maildrop, Place, read_wire

if TYPE_CHECKING:
    from appliance.store.reader import Readers

SMALL_MESSAGE = 1024 * 1024  # larger messages are streamed, never read ahead
WINDOW_BYTES = 256 * 1024  # per window; with the next one in flight, about 0.5 MB a session
FIRST_WINDOW = 4
MAX_WINDOW = 128

Outcome = bytes | OSError


class ReadAhead:
    def __init__(self, maildrop: Maildrop, readers: Readers) -> None:
        self._maildrop = maildrop
        self._readers = readers
        self._ready: dict[int, Outcome] = {}
        self._pending: asyncio.Future[dict[int, Outcome]] | None = None
        self._pending_indexes: frozenset[int] = frozenset()
        self._window = FIRST_WINDOW
        self._last: int | None = None
        self._sequential = False  # the last message given was the one after the one before

    async def message(self, index: int) -> bytes:
        """The wire form of small message `index` (raises OSError when it cannot be read)."""
        sequential = self._last is not None and index == self._last + 1
        self._last, self._sequential = index, sequential
        if not sequential and self._ready:
            for skipped in [i for i in self._ready if i < index]:
                del self._ready[skipped]  # the client went elsewhere: do not hold what it skipped
        if index not in self._ready and index in self._pending_indexes:
            await self._collect()
        if index not in self._ready:
            if not sequential:
                self._window = FIRST_WINDOW
            await self._collect()  # a window in flight for other messages: let it land first
            self._start(index)
            await self._collect()
        outcome = self._ready.pop(index, None)
        if outcome is None:  # not readable ahead (e.g. over the window's byte budget by itself)
            outcome = await self._readers.run(_attempt, self._maildrop.place(index))
        if isinstance(outcome, OSError):
            raise outcome
        return outcome

    def take(self, index: int) -> bytes | None:
        """Message `index` if it is the next one in order and already read, else None (then
        `message` is the way): lets the session answer without waiting for anything."""
        if self._last is None or index != self._last + 1:
            return None
        outcome = self._ready.get(index)
        if outcome is None or isinstance(outcome, OSError):
            return None  # not read yet, or an error `message` reports
        del self._ready[index]
        self._last, self._sequential = index, True
        return outcome

    def refill(self) -> None:
        """Once half of what is ready has been given out, in order: read the next window, in the
        background. Called after the message was sent, so the client is not kept waiting."""
        if not self._sequential or self._pending is not None or self._last is None:
            return
        if len(self._ready) * 2 <= self._window:
            self._start(max(self._ready, default=self._last) + 1)

    def forget(self, index: int) -> None:
        """Drop what was read of `index` (it was marked as deleted)."""
        self._ready.pop(index, None)

    def _start(self, first: int) -> None:
        if self._pending is not None:
            return
        indexes = self._plan(first)
        if not indexes:
            return
        places = {index: self._maildrop.place(index) for index in indexes}
        pending = asyncio.ensure_future(self._readers.run(_read_all, places))
        pending.add_done_callback(self._landed)  # ready for `take` as soon as it is read
        self._pending, self._pending_indexes = pending, frozenset(indexes)
        self._window = min(self._window * 2, MAX_WINDOW)

    def _plan(self, first: int) -> list[int]:
        messages, deleted = self._maildrop.messages, self._maildrop.deleted
        indexes: list[int] = []
        budget = WINDOW_BYTES
        for index in range(first, len(messages)):
            if len(indexes) >= self._window or (indexes and budget < messages[index].size):
                break
            if index in deleted or index in self._ready:
                continue
            if messages[index].size > SMALL_MESSAGE:
                break
            indexes.append(index)
            budget -= messages[index].size
        return indexes

    async def _collect(self) -> None:
        pending = self._pending
        if pending is None:
            return
        try:
            await pending
        except Exception:
            pass  # see _landed
        finally:
            self._landed(pending)

    def _landed(self, pending: asyncio.Future[dict[int, Outcome]]) -> None:
        """Move a finished window into `_ready`, once: from its done callback or `_collect`,
        whichever runs first. A window that failed leaves nothing ready; its messages are then
        read one by one, which reports the error."""
        if pending is not self._pending:
            return  # already moved, or the read-ahead was closed
        self._pending, self._pending_indexes = None, frozenset()
        if not pending.cancelled() and pending.exception() is None:
            self._ready.update(pending.result())

    async def close(self) -> None:
        """Wait for a read in flight, so no read outlives the session's lock on its files."""
        if self._pending is not None:
            try:
                await self._pending
            except Exception:
                pass
            self._pending = None
        self._ready.clear()


def _attempt(place: Place) -> Outcome:
    try:
        return read_wire(place)
    except OSError as error:
        return error


def _read_all(places: dict[int, Place]) -> dict[int, Outcome]:
    """Read a window (in the reader process), giving the CPU up after each message.

    A window is a millisecond or more of reading. Without the yields, a loop woken by a client
    meanwhile can wait behind the reader for that whole time on a busy CPU (measured with one
    client on 2 CPUs: a 1 ms stall at every window, a third of the mean time per RETR). With
    them it runs after the message being read; when nothing else wants the CPU, a yield returns
    at once."""
    outcomes: dict[int, Outcome] = {}
    for index, place in places.items():
        outcomes[index] = _attempt(place)
        os.sched_yield()
    return outcomes
