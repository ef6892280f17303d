"""A helper process of the server's own, spoken to over a socket pair from the event loop.

Why processes: disk work done by the server's threads has to take Python's global lock back after
every system call, and in the server that lock is held most of the time by the event loop serving
the sessions. Under load the hand-offs cost more than the work (see writer.py, reader.py and
imap/sender.py for the figures). A process has a lock of its own: the event loop writes a
request to a socket and goes on; the reply wakes it like any client socket does.

On the socket pair (a stream; both directions framed alike):
  FRAME (id, length of the meta part, length of the data part), the meta part, the data part.
What the parts hold is up to the kind of process (a subclass's `decode` and its process's
`handle` function). Reply 0 says the process is ready. Replies are read into one buffer kept for
the next ones and sent with one gathering `sendmsg`: a megabyte of messages is not copied into a
fresh allocation at every step (fresh memory costs a page fault per 4 KB: measured, the copies
and faults cost ten times the transfer itself).

A kind of process that works on the server's client sockets (`passes_descriptors`) gets a second
socket pair, of packets, and a request may carry a file descriptor: it goes as one packet (the
request id, the descriptor as SCM_RIGHTS) just before the request's frame, so the process finds it
waiting when it reads the frame.

The process runs `python -m <module> FD THREADS [DESCRIPTOR_FD]`. It ignores SIGINT and SIGTERM
(a Ctrl-C or a service stop reaches the whole process group; the server decides when work ends)
and exits once the server closes its end, after the requests it has are answered. If it dies, the
requests in flight fail (`lost_error`) and the next request starts a new process, no more than once
every `restart_pause` seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import itertools
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from appliance.loglines import EscapingFormatter

log = logging.getLogger("appliance.store")

FRAME = struct.Struct("!QII")
DESCRIPTOR_ID = struct.Struct("!Q")  # the packet beside a request that carries a descriptor
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

IOV_MAX = 1024  # buffers one sendmsg may gather (Linux)
# For a process that reads message files by the thousand: glibc's malloc keeps the memory freed
# after a batch (up to 64 MB) instead of giving it back and faulting it in again for the next.
# Measured on IMAP FETCH (10,000 messages of 4.7 KB): page faults 130,000 → 9,600, system time
# a message 5.5 → 4.9 µs. Messages over 4 MB are still mapped and unmapped one by one.
KEEP_FREED_MEMORY = {
    "MALLOC_TRIM_THRESHOLD_": str(64 << 20),
    "MALLOC_TOP_PAD_": str(16 << 20),
    "MALLOC_MMAP_THRESHOLD_": str(4 << 20),
}
MAX_KEPT_BUFFER = 64 * 1024 * 1024  # a reply buffer grown past this is let go after use


class ChildProcess:
    """The server's end. Subclasses name their `module` and wrap `request` in their own call."""

    module = ""  # run as `python -m module FD THREADS`
    label = "helper process"  # in log lines: "<label> started pid=..."
    failed_name = "failed_requests"  # "<label> stopped pid=... exit=... <failed_name>=N"
    restart_pause = 1.0  # a process that keeps dying is not restarted more often than this
    threads = 1  # the process's pool threads, unless given
    passes_descriptors = False  # requests may carry a file descriptor (see the module's docstring)
    environment: ClassVar[dict[str, str]] = {}  # set for the process, beside the server's own environment

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None:
            self.threads = threads
        self._process: subprocess.Popen[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        self._descriptors: socket.socket | None = None  # our end of the packet pair, if any
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[None] | None = None
        self._start_lock = asyncio.Lock()
        self._started_at = 0.0
        self._closing = False
        self._reports: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def lost_error(self, text: str) -> OSError:
        """What a request gets when the process is not there to answer it."""
        return OSError(errno.EIO, f"the {self.label} {text}")

    def process_environment(self) -> dict[str, str]:
        """Set for the process, beside the server's own environment."""
        return self.environment

    def decode(self, meta: bytes, data: memoryview) -> Any:
        """A reply as `request` returns it. `data` is only valid during this call: copy from it."""
        return meta, bytes(data)

    async def start(self) -> None:
        """Start the process and wait until it says it is ready; OSError when it cannot run."""
        async with self._start_lock:
            if self._transport is not None:
                return
            self._started_at = time.monotonic()
            loop = asyncio.get_running_loop()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            packets = (
                socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) if self.passes_descriptors else None
            )
            passed = [theirs.fileno()] + ([packets[1].fileno()] if packets is not None else [])
            try:
                environment = dict(os.environ) | self.process_environment()
                package_root = str(Path(__file__).resolve().parents[2])
                inherited = environment.get("PYTHONPATH")
                environment["PYTHONPATH"] = package_root + (os.pathsep + inherited if inherited else "")
                command = [sys.executable, "-m", self.module, str(passed[0]), str(self.threads)]
                command += [str(descriptor) for descriptor in passed[1:]]
                process = subprocess.Popen(
                    command, pass_fds=passed, stdin=subprocess.DEVNULL, env=environment
                )
            except BaseException:
                ours.close()
                if packets is not None:
                    packets[0].close()
                raise
            finally:
                theirs.close()
                if packets is not None:
                    packets[1].close()
            if packets is not None:
                packets[0].setblocking(False)
                self._descriptors = packets[0]
            self._process = process
            self._ready = loop.create_future()
            transport, _protocol = await loop.create_unix_connection(lambda: _Replies(self), sock=ours)
            self._transport = transport
            try:
                await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
            except (TimeoutError, OSError) as error:
                transport.close()
                self._transport = None
                self._close_descriptors()
                process.kill()
                raise OSError(errno.EIO, f"the {self.label} did not start: {error}") from error
            log.info("%s started pid=%d threads=%d", self.label, process.pid, self.threads)

    async def ensure_running(self) -> asyncio.Transport:
        """The process's socket, started (or restarted) if need be; `lost_error` when it cannot be."""
        transport = self._transport
        if (transport is None or transport.is_closing()) and self._start_lock.locked():
            async with self._start_lock:  # another request is starting it: wait for that
                transport = self._transport
            if transport is None or transport.is_closing():
                raise self.lost_error("is not running")
        if transport is None or transport.is_closing():
            if self._closing or time.monotonic() - self._started_at < self.restart_pause:
                raise self.lost_error("is not running")
            try:
                await self.start()
            except OSError as error:
                log.error("%s restart failed error=%s", self.label, error)
                raise self.lost_error("is not running") from error
            transport = self._transport
            assert transport is not None
        return transport

    async def request(self, meta: bytes, data: bytes = b"", descriptor: int | None = None) -> Any:
        """Send one request and wait for its reply (`decode`d); `lost_error` when the process
        cannot answer. `descriptor`: a file descriptor the process gets a copy of (only for a
        kind that `passes_descriptors`); BlockingIOError, before anything is sent, when the
        process has too many waiting to take one more."""
        transport = await self.ensure_running()
        request_id = next(self._ids)
        if descriptor is not None:
            assert self._descriptors is not None, f"the {self.label} takes no descriptors"
            socket.send_fds(self._descriptors, [DESCRIPTOR_ID.pack(request_id)], [descriptor])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if data:
            transport.writelines([FRAME.pack(request_id, len(meta), len(data)), meta, data])
        else:
            transport.write(FRAME.pack(request_id, len(meta), 0) + meta)
        return await future

    def _reply(self, request_id: int, meta: bytes, data: memoryview) -> None:
        if request_id == 0:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        future = self._pending.pop(request_id, None)
        if future is None or future.done():
            return  # its caller went away meanwhile
        try:
            future.set_result(self.decode(meta, data))
        except Exception as error:
            future.set_exception(error)

    def _lost(self, protocol: _Replies) -> None:
        if self._transport is None or self._transport.get_protocol() is not protocol:
            return
        self._transport = None
        self._close_descriptors()
        pending, self._pending = self._pending, {}
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(OSError(errno.EIO, "it exited before it was ready"))
        for future in pending.values():
            if not future.done():
                future.set_exception(self.lost_error("stopped"))
        if not self._closing and self._process is not None:
            task = asyncio.get_running_loop().create_task(self._report_exit(self._process, len(pending)))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

    def _close_descriptors(self) -> None:
        if self._descriptors is not None:
            self._descriptors.close()
            self._descriptors = None

    async def _report_exit(self, process: subprocess.Popen[bytes], failed: int) -> None:
        """Log how the process ended (its socket closes a moment before it can be reaped)."""
        deadline = time.monotonic() + 5.0
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        code = process.poll()
        log.error(
            "%s stopped pid=%d exit=%s %s=%d",
            self.label,
            process.pid,
            "running" if code is None else code,
            self.failed_name,
            failed,
        )

    async def close(self) -> None:
        """Let the process finish what it has (its replies still come) and exit; killed after
        STOP_TIMEOUT seconds."""
        self._closing = True
        transport, process = self._transport, self._process
        deadline = time.monotonic() + STOP_TIMEOUT
        if transport is not None:
            transport.write_eof()  # the process reads to the end, answers, exits; then we see EOF
        if process is not None:
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if process.poll() is None:
                log.error("%s did not stop pid=%d: killed", self.label, process.pid)
                process.kill()
                process.wait()
        while self._transport is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the last replies, then the end of the stream
        if transport is not None:
            transport.close()
        self._close_descriptors()


class _Replies(asyncio.BufferedProtocol):
    """Reads replies into one buffer (kept, and grown to the largest reply) and hands each one
    over, as views into it, as soon as it is whole."""

    def __init__(self, owner: ChildProcess) -> None:
        self.owner = owner
        self.buffer = bytearray(1 << 20)
        self.used = 0  # bytes of the buffer holding what arrived
        self.wanted = 0  # bytes the reply begun at the front needs, once its frame is known

    def get_buffer(self, sizehint: int) -> memoryview:
        size = len(self.buffer)
        needed = max(self.used + 65536, self.wanted)
        if needed > size:
            self._resize(max(needed, 2 * size))
        elif size > MAX_KEPT_BUFFER and needed <= MAX_KEPT_BUFFER:
            self._resize(MAX_KEPT_BUFFER)
        return memoryview(self.buffer)[self.used :]

    def _resize(self, size: int) -> None:
        # A new buffer, not an in-place resize: the transport may still hold a view of the old.
        resized = bytearray(size)
        resized[: self.used] = memoryview(self.buffer)[: self.used]
        self.buffer = resized

    def buffer_updated(self, nbytes: int) -> None:
        self.used += nbytes
        if self.used < max(self.wanted, FRAME.size):
            return
        start = 0
        with memoryview(self.buffer) as view:
            while self.used - start >= FRAME.size:
                request_id, meta_length, data_length = FRAME.unpack_from(view, start)
                middle = start + FRAME.size + meta_length
                end = middle + data_length
                if self.used < end:
                    break
                with view[middle:end] as data:
                    self.owner._reply(request_id, bytes(view[start + FRAME.size : middle]), data)
                start = end
            rest = self.used - start
            if rest and start:
                view[:rest] = view[start : self.used]  # a reply begun: to the front
            self.wanted = 0
            if rest >= FRAME.size:
                _request_id, meta_length, data_length = FRAME.unpack_from(view, 0)
                self.wanted = FRAME.size + meta_length + data_length
        self.used = rest

    def connection_lost(self, error: Exception | None) -> None:
        self.owner._lost(self)


# -- the process -----------------------------------------------------------------------------
Buffer = bytes | bytearray | memoryview
Reply = tuple[bytes, Sequence[Buffer]]  # the meta part, and the data part in pieces
Handler = Callable[[bytes, bytes], Reply]  # (meta, data) of a request → its reply


def serve(connection: socket.socket, threads: int, handle: Handler, name: str) -> None:
    """Read requests until the server closes its end; each one is handled by a pool thread."""
    sending = threading.Lock()

    def reply(request_id: int, meta: bytes = b"", data: Sequence[Buffer] = ()) -> None:
        pieces = [memoryview(piece).cast("B") for piece in data]
        length = sum(piece.nbytes for piece in pieces)
        with sending:
            head = memoryview(FRAME.pack(request_id, len(meta), length))
            send_all(connection, [head, memoryview(meta), *pieces])

    def run(request_id: int, meta: bytes, data: bytes) -> None:
        answer = handle(meta, data)
        try:
            reply(request_id, *answer)
        except OSError:
            pass  # the server is gone; nobody is waiting for the answer

    stream = connection.makefile("rb", buffering=1 << 16)
    reply(0)
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=name) as pool:
        while True:
            head = stream.read(FRAME.size)
            if len(head) < FRAME.size:
                break
            request_id, meta_length, data_length = FRAME.unpack(head)
            meta = stream.read(meta_length)
            data = stream.read(data_length) if data_length else b""
            if len(meta) < meta_length or len(data) < data_length:
                break
            pool.submit(run, request_id, meta, data)


def send_all(connection: socket.socket, pieces: list[memoryview]) -> None:
    """Send every piece, gathered (no copy into one buffer), whatever each sendmsg took."""
    first = 0
    while first < len(pieces):
        sent = connection.sendmsg(pieces[first : first + IOV_MAX])
        while first < len(pieces) and sent >= pieces[first].nbytes:
            sent -= pieces[first].nbytes
            first += 1
        if sent:
            pieces[first] = pieces[first][sent:]


def _process_setup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter())  # the server's line format, controls escaped
    logging.basicConfig(handlers=[handler], level=logging.INFO)


def main(arguments: list[str], handle: Handler, name: str) -> int:
    """The process's entry point: `python -m <module> FD THREADS`."""
    _process_setup()
    descriptor, threads = int(arguments[0]), int(arguments[1])
    with socket.socket(fileno=descriptor) as connection:
        serve(connection, threads, handle, name)
    return 0


# -- a process whose requests are tasks of an event loop, each with a descriptor ---------------
AsyncHandler = Callable[[bytes, bytes, int], Awaitable[bytes]]  # (meta, data, descriptor) → reply meta


def take_descriptor(packets: socket.socket, request_id: int) -> int:
    """The descriptor sent with request `request_id`: its packet was sent just before it."""
    message, descriptors, _flags, _address = socket.recv_fds(packets, DESCRIPTOR_ID.size, 1)
    if len(descriptors) != 1 or message != DESCRIPTOR_ID.pack(request_id):
        for extra in descriptors:
            os.close(extra)
        raise OSError(errno.EPROTO, f"no descriptor came with request {request_id}")
    return descriptors[0]


async def serve_async(connection: socket.socket, packets: socket.socket, handle: AsyncHandler) -> None:
    """Read requests until the server closes its end; each one runs as a task of this process's
    event loop (a request that waits, for a slow client, holds up no other). Every request comes
    with a descriptor; the handler owns it (closes it). Exits once the tasks it has are done."""
    reader, writer = await asyncio.open_unix_connection(sock=connection)
    tasks: set[asyncio.Task[None]] = set()

    def reply(request_id: int, meta: bytes = b"") -> None:
        if not writer.is_closing():
            writer.write(FRAME.pack(request_id, len(meta), 0) + meta)

    async def run(request_id: int, meta: bytes, data: bytes, descriptor: int) -> None:
        try:
            answer = await handle(meta, data, descriptor)
        except Exception:  # the handler answers its own failures; this is a defect here
            log.exception("request %d failed", request_id)
            answer = b""
        reply(request_id, answer)

    reply(0)
    while True:
        try:
            head = await reader.readexactly(FRAME.size)
            request_id, meta_length, data_length = FRAME.unpack(head)
            meta = await reader.readexactly(meta_length)
            data = await reader.readexactly(data_length) if data_length else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            break
        descriptor = take_descriptor(packets, request_id)
        task = asyncio.get_running_loop().create_task(run(request_id, meta, data, descriptor))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    writer.close()


def main_async(arguments: list[str], handle: AsyncHandler) -> int:
    """The entry point of a process that `passes_descriptors`: `python -m <module> FD THREADS
    DESCRIPTOR_FD` (THREADS unused: one event loop)."""
    _process_setup()
    connection = socket.socket(fileno=int(arguments[0]))  # the event loop's transport closes it
    with socket.socket(fileno=int(arguments[2])) as packets:
        packets.setblocking(False)
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve_async(connection, packets, handle))
        else:
            uvloop.run(serve_async(connection, packets, handle))
    return 0
