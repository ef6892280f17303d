"""FETCH responses written to the client by processes of their own (clear-text connections).

Why: a FETCH of many whole messages (a client's first download of a folder) is per message three
system calls to read the file, a conversion to CRLF, a response line and a write. Done by the
server process, all of it shares Python's global lock with every other session and with the
thread that reads the files; measured with bench/imap.py (10,000 messages, 20 clients on one
folder), the server then used one core at most, the lock passing between its two threads after
every system call, while Dovecot's processes used one and a half.

How: the session hands the job to one of a few sender processes, with a copy of the client
socket's descriptor (store/child.py: sent beside the request, SCM_RIGHTS). The sender reads the
files, renders the responses with the same code as the session (fetch.render_pieces) and writes
them straight to the socket, a batch at a time, as fast as the client takes them; each job is a
task of the sender's event loop, so a client that reads slowly holds up no other. The session
waits for the reply (bytes sent, messages that vanished meanwhile), then writes its own
responses after them: nothing of the session's is buffered while the sender writes, and the
sender's bytes are all in the socket before the reply comes, so the order on the wire is the
order of the protocol.

When not: TLS connections (the session's TLS state is in the server process), FETCHes of fewer
than MIN_MESSAGES messages (the hand-off costs more than it saves), FETCHes that set \\Seen (they
change the folder as they go). Those run in the session as before. When no sender process can
be had (it failed to start, or keeps dying), the FETCH runs in the session too; when one dies
in the middle of a job, what the client got is cut short, and the session ends.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pickle
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.connection import ConnectionClosed
from appliance.imap.fetch import WHOLE_TAIL, Request, batch_bounds, render_pieces, whole_message_head
from appliance.imap.index import MessageInfo
from appliance.imap.message import ParsedMessage
from appliance.store.child import IOV_MAX, KEEP_FREED_MEMORY, ChildProcess, main_async
from appliance.store.maildir import INFO_SEPARATOR, read_crlf

if TYPE_CHECKING:
    from appliance.connection import Connection

log = logging.getLogger("appliance.imap")

MIN_MESSAGES = 64  # a FETCH of fewer messages is rendered by the session itself
MAX_PROCESSES = 4
_NO_FLAGS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FetchJob:
    """One FETCH, as columns (cheap to pickle: no object per message). `flags`, `dates` and
    `recent` are there only when the request needs them."""

    folder: str
    request: Request
    seqs: list[int]
    uids: list[int]
    names: list[str]  # where each message is in the folder, as far as the index knows: "cur/<name>"
    sizes: list[int]
    flags: list[frozenset[str]] | None
    dates: list[float] | None
    recent: list[bool] | None


class Unavailable(Exception):
    """No sender process could take the job; nothing was sent: the session does it itself."""


class SenderProcess(ChildProcess):
    module = "appliance.imap.sender"
    label = "fetch sender process"
    failed_name = "failed_fetches"
    passes_descriptors = True
    environment = KEEP_FREED_MEMORY

    def __init__(self) -> None:
        super().__init__()
        self.jobs = 0  # in flight

    def decode(self, meta: bytes, data: memoryview) -> Any:
        try:
            return pickle.loads(meta)
        except Exception as error:  # a defect in the process (it answered nothing readable)
            return False, OSError(errno.EIO, f"unreadable reply from the sender: {error!r}")


class Senders:
    """The sender processes (started when first needed), each job to the least busy."""

    def __init__(self, count: int | None = None) -> None:
        count = count if count is not None else min(MAX_PROCESSES, os.cpu_count() or 1)
        self.processes = [SenderProcess() for _ in range(max(1, count))]
        self.min_messages = MIN_MESSAGES
        self._writing: set[Connection] = set()  # connections a sender is writing to

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes if process.pid is not None]

    async def send(self, connection: Connection, job: FetchJob) -> tuple[int, int]:
        """Have a sender write the job's responses to the client: (bytes sent, messages gone).

        Unavailable when no sender could take it (nothing was sent); ConnectionClosed when the
        client went away or the sender failed in the middle (the session must end: what the
        client got is cut short). Cancelled, the socket is shut down so that the sender stops.
        """
        await connection.drain_all()  # the session's earlier responses go first
        descriptor = connection.plain_descriptor()
        if descriptor is None:
            raise Unavailable("not a clear-text connection")
        # A copy of our own, taken now: the transport closes its descriptor if the client hangs
        # up while we wait below, and the number may then be another client's connection.
        try:
            own = os.dup(descriptor)
        except OSError as error:
            raise Unavailable(str(error)) from error
        try:
            return await self._send(connection, job, own)
        finally:
            os.close(own)

    async def _send(self, connection: Connection, job: FetchJob, descriptor: int) -> tuple[int, int]:
        # All of them started together when the first is needed (a start takes a few tenths of a
        # second): the first big FETCH does not wait for them one by one.
        processes = self.processes
        started = await asyncio.gather(
            *(process.ensure_running() for process in processes), return_exceptions=True
        )
        running = [
            process
            for process, up in zip(processes, started, strict=True)
            if not isinstance(up, BaseException)
        ]
        if not running:
            raise Unavailable(str(started[0]))
        process = min(running, key=lambda candidate: candidate.jobs)
        meta = pickle.dumps(job, pickle.HIGHEST_PROTOCOL)
        process.jobs += 1
        self._writing.add(connection)
        try:
            ok, value = await process.request(meta, descriptor=descriptor)
        except BlockingIOError as error:  # raised before anything was sent
            raise Unavailable(str(error)) from error
        except OSError as error:
            log.error(
                "fetch sender failed in the middle of a response client=%s error=%s", connection.peer, error
            )
            raise ConnectionClosed() from error
        except asyncio.CancelledError:
            connection.shutdown()  # the sender's writes fail and it lets go of the socket
            raise
        finally:
            process.jobs -= 1
            self._writing.discard(connection)
        if not ok:
            if not isinstance(value, OSError) or value.errno not in _CLIENT_GONE:
                log.error("fetch sender failed client=%s error=%r", connection.peer, value)
            raise ConnectionClosed()
        sent, missing = value
        return int(sent), int(missing)

    async def close(self) -> None:
        """Stop the processes; a job still writing (to a client that does not read) is cut off."""
        for connection in list(self._writing):
            connection.shutdown()
        await asyncio.gather(*(process.close() for process in self.processes))


_CLIENT_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})


# -- the process ------------------------------------------------------------------------------
async def _handle(meta: bytes, data: bytes, descriptor: int) -> bytes:
    try:
        sock = socket.socket(fileno=descriptor)
    except OSError as error:
        os.close(descriptor)
        return pickle.dumps((False, error), pickle.HIGHEST_PROTOCOL)
    try:
        sock.setblocking(False)  # already so (the server's event loop), said again for this object
        job: FetchJob = pickle.loads(meta)
        outcome: tuple[bool, Any] = (True, await _stream(sock, job))
    except Exception as error:
        outcome = (False, error)
    finally:
        sock.close()
    try:
        return pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
    except Exception as error:  # an exception that cannot travel
        return pickle.dumps((False, OSError(errno.EIO, repr(error))), pickle.HIGHEST_PROTOCOL)


async def _stream(sock: socket.socket, job: FetchJob) -> tuple[int, int]:
    """Read, render and write the job's messages a batch at a time: (bytes sent, messages gone)."""
    request, folder = job.request, Path(job.folder)
    head = whole_message_head(request)
    prefix = f"{job.folder}/"
    sent = missing = 0
    for start, end in batch_bounds(job.sizes):
        pieces: list[bytes] = []
        for i in range(start, end):
            name = job.names[i]
            key = name.rpartition("/")[2].partition(INFO_SEPARATOR)[0]  # found by it if it moved meanwhile
            raw = read_crlf(prefix + name, folder, key, job.sizes[i])
            if raw is None:
                missing += 1  # expunged meanwhile (RFC 2180 §4.1)
                continue
            if head is not None:  # the whole message and at most its UID: one format operation
                pieces += (head(job.seqs[i], job.uids[i], len(raw)), raw, WHOLE_TAIL)
                continue
            info = MessageInfo(
                job.uids[i],
                key,
                job.flags[i] if job.flags is not None else _NO_FLAGS,
                job.dates[i] if job.dates is not None else 0.0,
                job.sizes[i],
            )
            parsed = ParsedMessage.parse(raw) if request.needs_parse else None
            recent = job.recent[i] if job.recent is not None else False
            pieces += render_pieces(job.seqs[i], info, recent, request, raw, parsed)
        sent += await send_gathered(sock, pieces)
    return sent, missing


async def send_gathered(sock: socket.socket, pieces: Sequence[bytes]) -> int:
    """Write every piece to a non-blocking socket (gathered, not joined), waiting while it is
    full; the bytes written."""
    loop = asyncio.get_running_loop()
    total = sum(map(len, pieces))
    rest: list[bytes | memoryview] = list(pieces)
    first = 0
    while first < len(rest):
        try:
            sent = sock.sendmsg(rest[first : first + IOV_MAX])
        except BlockingIOError:
            await _writable(loop, sock.fileno())
            continue
        while first < len(rest) and sent >= len(rest[first]):
            sent -= len(rest[first])
            first += 1
        if sent:
            rest[first] = memoryview(rest[first])[sent:]
    return total


async def _writable(loop: asyncio.AbstractEventLoop, descriptor: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(descriptor, wake)
    try:
        await ready
    finally:
        loop.remove_writer(descriptor)


if __name__ == "__main__":
    sys.exit(main_async(sys.argv[1:], _handle))
