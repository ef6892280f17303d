"""A helper process of the server's own, spoken to over a socket pair from the event loop.

Why processes: disk work done by the server's threads has to take Python's global lock back after
every system call, and in the server that lock is held most of the time by the event loop serving
the sessions. Under load the hand-offs cost more than the work (see writer.py and reader.py for
the figures). A process has a lock of its own: the event loop writes a request to a socket and
goes on; the reply wakes it like any client socket does.

On the socket pair (a stream; both directions framed alike):
  FRAME (id, length of the meta part, length of the data part), the meta part, the data part.
What the parts hold is up to the kind of process (a subclass's `decode` and its process's
`handle` function). Reply 0 says the process is ready. Replies are read into one buffer kept for
the next ones and sent with one gathering `sendmsg`: a megabyte of messages is not copied into a
fresh allocation at every step (fresh memory costs a page fault per 4 KB: measured, the copies
and faults cost ten times the transfer itself).

The process runs `python -m <module> FD THREADS`. It ignores SIGINT and SIGTERM (a Ctrl-C or a
service stop reaches the whole process group; the server decides when work ends) and exits once
the server closes its end, after the requests it has are answered. If it dies, the requests in
flight fail (`lost_error`) and the next request starts a new process, no more than once every
`restart_pause` seconds.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("appliance.store")

FRAME = struct.Struct("!QII")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

IOV_MAX = 1024  # buffers one sendmsg may gather (Linux)
MAX_KEPT_BUFFER = 64 * 1024 * 1024  # a reply buffer grown past this is let go after use


class ChildProcess:
    """The server's end. Subclasses name their `module` and wrap `request` in their own call."""

    module = ""  # run as `python -m module FD THREADS`
    label = "helper process"  # in log lines: "<label> started pid=..."
    failed_name = "failed_requests"  # "<label> stopped pid=... exit=... <failed_name>=N"
    restart_pause = 1.0  # a process that keeps dying is not restarted more often than this
    threads = 1  # the process's pool threads, unless given

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None:
            self.threads = threads
        self._process: subprocess.Popen[bytes] | None = None
        self._transport: asyncio.Transport | None = None
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
            try:
                environment = dict(os.environ)
                package_root = str(Path(__file__).resolve().parents[2])
                inherited = environment.get("PYTHONPATH")
                environment["PYTHONPATH"] = package_root + (os.pathsep + inherited if inherited else "")
                command = [sys.executable, "-m", self.module, str(theirs.fileno()), str(self.threads)]
                process = subprocess.Popen(
                    command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=environment
                )
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            self._process = process
            self._ready = loop.create_future()
            transport, _protocol = await loop.create_unix_connection(lambda: _Replies(self), sock=ours)
            self._transport = transport
            try:
                await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
            except (TimeoutError, OSError) as error:
                transport.close()
                self._transport = None
                process.kill()
                raise OSError(errno.EIO, f"the {self.label} did not start: {error}") from error
            log.info("%s started pid=%d threads=%d", self.label, process.pid, self.threads)

    async def request(self, meta: bytes, data: bytes = b"") -> Any:
        """Send one request and wait for its reply (`decode`d); `lost_error` when the process
        cannot answer."""
        transport = self._transport
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
        request_id = next(self._ids)
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


def main(arguments: list[str], handle: Handler, name: str) -> int:
    """The process's entry point: `python -m <module> FD THREADS`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        level=logging.INFO,
    )
    descriptor, threads = int(arguments[0]), int(arguments[1])
    with socket.socket(fileno=descriptor) as connection:
        serve(connection, threads, handle, name)
    return 0
