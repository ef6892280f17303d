"""Deliveries written by a process of their own, not by the server's disk threads.

Why a process: a delivery is a handful of system calls (open, write, fsync, link, fsync of new/),
and after each one a thread must take Python's global lock back. In the server that lock is held
most of the time by the event loop serving the sessions, so under load a delivery that needs about
0.3 ms of the disk spent 1.5 ms (one disk thread) to 5 ms (twenty) waiting for the lock, and the
hand-off to and from the thread pool added about 2 ms each way (measured with 20 SMTP sessions of
4 KB messages). A process has a lock of its own: the event loop writes the message to a socket
and goes on; the reply wakes it like any client socket does.

On the socket pair (a stream; both directions framed):
  request  REQUEST (id, length of the JSON part, length of the message), a JSON list of the
           Maildirs, the message bytes (final: trace headers added, LF line ends)
  reply    REPLY (id, length of the JSON part), then nothing when the message is in every new/,
           or JSON {"errno", "strerror", "filename"} when it is in none of them.
Reply 0 says the process is ready.

The process runs `python -m appliance.store.writer FD THREADS`. It ignores SIGINT and SIGTERM (a
Ctrl-C or a service stop reaches the whole process group; the server decides when deliveries
end) and exits once the server closes its end, after the deliveries it has are done. If it dies,
the deliveries in flight fail as temporary errors (nothing was acknowledged) and the next
delivery starts a new process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import itertools
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from appliance.store.maildir import DeliveryError, MaildirWriter

log = logging.getLogger("appliance.store")

REQUEST = struct.Struct("!QIQ")
REPLY = struct.Struct("!QI")
THREADS = 2  # measured: 1 to 4 differ little; the disk work itself is short (see the module doc)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
RESTART_PAUSE = 1.0  # a process that keeps dying is not restarted more often than this


class DeliveryProcess:
    """The server's end: `deliver` hands a message to the process and waits for its reply."""

    def __init__(self, threads: int = THREADS) -> None:
        self.threads = threads
        self._process: subprocess.Popen[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[None] | None = None
        self._start_lock = asyncio.Lock()
        self._started_at = 0.0
        self._closing = False
        self._reports: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

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
                command = [
                    sys.executable,
                    "-m",
                    "appliance.store.writer",
                    str(theirs.fileno()),
                    str(self.threads),
                ]
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
                raise OSError(errno.EIO, f"the delivery process did not start: {error}") from error
            log.info("delivery process started pid=%d threads=%d", process.pid, self.threads)

    async def deliver(self, data: bytes, maildirs: Sequence[Path]) -> None:
        """Store `data` in every Maildir's new/ (see MaildirWriter.deliver); DeliveryError when
        it is stored in none of them."""
        transport = self._transport
        if transport is None or transport.is_closing():
            if self._closing or time.monotonic() - self._started_at < RESTART_PAUSE:
                raise DeliveryError(errno.EIO, "the delivery process is not running")
            try:
                await self.start()
            except OSError as error:
                log.error("delivery process restart failed error=%s", error)
                raise DeliveryError(errno.EIO, "the delivery process is not running") from error
            transport = self._transport
            assert transport is not None
        request_id = next(self._ids)
        header = json.dumps([str(path) for path in maildirs]).encode()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        transport.writelines([REQUEST.pack(request_id, len(header), len(data)), header, data])
        await future

    def _reply(self, request_id: int, body: bytes) -> None:
        if request_id == 0:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        future = self._pending.pop(request_id, None)
        if future is None or future.done():
            return  # its session went away meanwhile: the result has no one to tell
        if not body:
            future.set_result(None)
            return
        problem = json.loads(body)
        future.set_exception(DeliveryError(problem["errno"], problem["strerror"], problem.get("filename")))

    def _lost(self, protocol: _Replies) -> None:
        if self._transport is None or self._transport.get_protocol() is not protocol:
            return
        self._transport = None
        pending, self._pending = self._pending, {}
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(OSError(errno.EIO, "it exited before it was ready"))
        for future in pending.values():
            if not future.done():
                future.set_exception(DeliveryError(errno.EIO, "the delivery process stopped"))
        if not self._closing and self._process is not None:
            task = asyncio.get_running_loop().create_task(self._report_exit(self._process, len(pending)))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

    @staticmethod
    async def _report_exit(process: subprocess.Popen[bytes], failed: int) -> None:
        """Log how the process ended (its socket closes a moment before it can be reaped)."""
        deadline = time.monotonic() + 5.0
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        code = process.poll()
        log.error(
            "delivery process stopped pid=%d exit=%s failed_deliveries=%d",
            process.pid,
            "running" if code is None else code,
            failed,
        )

    async def close(self) -> None:
        """Let the process finish what it has (their replies still come) and exit; killed after
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
                log.error("delivery process did not stop pid=%d: killed", process.pid)
                process.kill()
                process.wait()
        while self._transport is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the last replies, then the end of the stream
        if transport is not None:
            transport.close()


class _Replies(asyncio.Protocol):
    def __init__(self, owner: DeliveryProcess) -> None:
        self.owner = owner
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        start = 0
        while len(buffer) - start >= REPLY.size:
            request_id, length = REPLY.unpack_from(buffer, start)
            end = start + REPLY.size + length
            if len(buffer) < end:
                break
            self.owner._reply(request_id, bytes(buffer[start + REPLY.size : end]))
            start = end
        del buffer[:start]

    def connection_lost(self, error: Exception | None) -> None:
        self.owner._lost(self)


# -- the process -----------------------------------------------------------------------------
def serve(connection: socket.socket, threads: int) -> None:
    """Read requests until the server closes its end; each one is delivered by a pool thread."""
    writer = MaildirWriter()
    sending = threading.Lock()

    def reply(request_id: int, body: bytes = b"") -> None:
        with sending:
            connection.sendall(REPLY.pack(request_id, len(body)) + body)

    def deliver(request_id: int, maildirs: list[str], data: bytes) -> None:
        body = b""
        try:
            writer.deliver(data, [Path(path) for path in maildirs])
        except OSError as error:
            body = json.dumps(
                {
                    "errno": error.errno or errno.EIO,
                    "strerror": error.strerror or str(error),
                    "filename": None if error.filename is None else str(error.filename),
                }
            ).encode()
        except Exception as error:  # a defect, not the disk: still nothing was stored
            log.exception("delivery failed")
            body = json.dumps({"errno": errno.EIO, "strerror": f"delivery process: {error!r}"}).encode()
        try:
            reply(request_id, body)
        except OSError:
            pass  # the server is gone; the message was not acknowledged to anyone

    stream = connection.makefile("rb", buffering=1 << 16)
    reply(0)
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="deliver") as pool:
        while True:
            head = stream.read(REQUEST.size)
            if len(head) < REQUEST.size:
                break
            request_id, header_length, data_length = REQUEST.unpack(head)
            header = stream.read(header_length)
            data = stream.read(data_length)
            if len(header) < header_length or len(data) < data_length:
                break
            pool.submit(deliver, request_id, json.loads(header), data)


def main(arguments: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        level=logging.INFO,
    )
    descriptor, threads = int(arguments[0]), int(arguments[1])
    with socket.socket(fileno=descriptor) as connection:
        serve(connection, threads)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
