"""One client connection, the transport under SMTP, POP3 and IMAP: bounded line reads with a
timeout, writes with back-pressure, the upgrade to TLS, and the listener (`listen`).

An `asyncio.Protocol` rather than streams, so that the upgrade to TLS can throw away whatever the
client sent after STARTTLS/STLS and before the handshake (RFC 3207 §4.2, RFC 2595 §4; the
command-injection flaw CVE-2011-0411), and so that reading stays cheap: one buffer, one search per
line. A session may also answer a line from the data callback itself (`on_line`), while its task
waits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, cast

from appliance.auth.service import log_field
from appliance.loglines import SESSION, new_session_id

if TYPE_CHECKING:
    from appliance.context import ListenerSpec, Services

_PAUSE_ABOVE = 256 * 1024  # stop reading from the socket while this much is unread
_RESUME_BELOW = 64 * 1024
_HEAD = 64  # bytes of an over-long line kept for the error reply


TLS_HANDSHAKE_TIMEOUT = 30.0  # seconds, for implicit TLS and for STLS/STARTTLS
BACKLOG = 100  # asyncio's default listen(2) backlog
ACCEPT_PAUSE = 0.1  # seconds before accepting again after accept(2) failed

log = logging.getLogger("appliance.tls")


def handshake_failure(error: BaseException) -> str:
    """The `reason=... error=...` fields of a failed TLS handshake's log line: OpenSSL's reason
    (`unsupported_protocol`, `wrong_version_number`, `no_shared_cipher`, ...) when it gave one,
    `timeout` or `closed` otherwise."""
    if isinstance(error, ssl.SSLError) and error.reason:
        reason = error.reason.lower()
    elif isinstance(error, TimeoutError) or "taking longer than" in str(error):
        reason = "timeout"  # asyncio and uvloop raise ConnectionAbortedError for the handshake timeout
    elif isinstance(error, ConnectionError | ConnectionClosed | EOFError):
        reason = "closed"
    else:
        reason = type(error).__name__
    return f"reason={reason} error={log_field(str(error) or reason)}"


class Listener(Protocol):
    """What the composition root does with a listener: close it (sessions go on to their end)."""

    def close(self) -> None: ...


async def listen(
    services: Services,
    listener: ListenerSpec,
    run: Callable[[Connection], Coroutine[Any, Any, None]],
    *,
    backlog: int = BACKLOG,
) -> Listener:
    """A listener whose connections each run `run(connection)` (an SMTP, POP3 or IMAP session)
    in a task kept referenced until it ends; implicit TLS for "submissions"/"pop3s"/"imaps"."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def serve(connection: Connection) -> None:
        SESSION.set(new_session_id())  # this task's context: every line it logs names the session
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)  # a strong reference while the session runs
        try:
            await run(connection)
        finally:
            if task is not None:
                tasks.discard(task)

    if listener.implicit_tls:
        return TlsListener(listener, services.tls.listener_context(), lambda: Connection(serve), backlog)
    return await loop.create_server(
        lambda: Connection(serve), listener.host, listener.port, reuse_address=True, backlog=backlog
    )


class TlsListener:
    """An implicit-TLS listener: each accepted socket is handed to the session only after its TLS
    handshake, and a handshake that fails is logged with the peer and OpenSSL's reason.

    `create_server(ssl=...)` would do the handshake too, but asyncio and uvloop drop a failed one
    without a word (outside debug mode), and an admin needs to see an old client, a cipher
    mismatch or a port scan. Accepting here and handing the socket to `connect_accepted_socket`
    keeps to the loop's public interface and reads no byte of the handshake itself.
    """

    def __init__(
        self,
        listener: ListenerSpec,
        context: ssl.SSLContext,
        factory: Callable[[], Connection],
        backlog: int,
    ) -> None:
        self._name = listener.name
        self._context = context
        self._factory = factory
        family, kind, proto, _, address = socket.getaddrinfo(
            listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as create_server does
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._handshakes: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:  # until close() cancels it
            try:
                conn, address = await loop.sock_accept(self._sock)
            except OSError as error:  # out of descriptors, or the socket closed under us
                if self._sock.fileno() < 0:
                    return
                log.warning("tls accept failed listener=%s error=%s", self._name, log_field(str(error)))
                await asyncio.sleep(ACCEPT_PAUSE)  # as asyncio pauses on EMFILE: no busy loop
                continue
            task = loop.create_task(self._handshake(conn, address))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, address: Any) -> None:
        peer = str(address[0]) if isinstance(address, tuple) and address else "unknown"
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                self._factory, conn, ssl=self._context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
            )
        except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError; the loop closed conn
            log.info(
                "tls handshake failed listener=%s client=%s %s", self._name, peer, handshake_failure(error)
            )

    def close(self) -> None:
        """Stop accepting; sessions already handed over go on to their end."""
        self._accepting.cancel()
        self._sock.close()


class ConnectionClosed(Exception):
    """The client went away (or the connection was closed here)."""


class LineTooLong(Exception):
    """A line longer than allowed arrived; it was read to its end and thrown away.

    `head` holds its first bytes (IMAP answers with the command's tag, RFC 3501 §7.1.3).
    """

    def __init__(self, head: bytes = b"") -> None:
        super().__init__()
        self.head = head


class Connection(asyncio.Protocol):
    def __init__(self, on_connect: Callable[[Connection], Coroutine[Any, Any, None]]) -> None:
        self._on_connect = on_connect
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop  # from connection_made on
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer already known to hold no "\n"
        self._discarding = False  # inside an over-long line: drop bytes up to its end
        self._discarded_head = b""  # the first bytes of that line
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._eof = False
        # One timer for the idle timeout, re-armed only when it fires early: cheaper than a
        # timeout context per line when a client pipelines thousands of commands.
        self._deadline = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._line_limit: int | None = None  # while the session waits in readline: its limit
        self._line_timeout = 0.0
        # Set by the session: answers a line on the spot, or returns False to leave it to readline.
        self.on_line: Callable[[bytes], bool] | None = None
        self.peer = "unknown"
        self.task: asyncio.Task[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._loop = asyncio.get_running_loop()
        peer = self._transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0])
        self.task = self._loop.create_task(self._on_connect(self))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        waiter, on_line, limit = self._waiter, self.on_line, self._line_limit
        if on_line is not None and limit is not None and waiter is not None and not waiter.done():
            self._answer_now(on_line, limit)
            if not self._buffer:
                return  # all answered: the session's task sleeps on
        if len(self._buffer) > _PAUSE_ABOVE and not self._reading_paused and self._transport:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._eof = True
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionClosed())
            self._drain_waiter.exception()  # retrieved: nobody may be waiting any more

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- for the session -------------------------------------------------------------------------
    @property
    def is_tls(self) -> bool:
        return self._transport is not None and self._transport.get_extra_info("ssl_object") is not None

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS state of the connection (cipher, version), None in clear text."""
        transport = self._transport
        return None if transport is None else transport.get_extra_info("ssl_object")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting_for_client(self) -> bool:
        """True while the session waits in a read for what the client sends next (between
        commands, or in IMAP IDLE): a line written now interleaves with nothing."""
        return self._waiter is not None and not self._waiter.done()

    async def readline(self, limit: int, timeout: float) -> bytes:
        """The next line without its line end (CRLF or a bare LF).

        Raises LineTooLong for a line over `limit` bytes (after reading past its end, so the next
        line is read cleanly), TimeoutError when nothing completes a line within `timeout`
        seconds, ConnectionClosed at the end of the connection.
        """
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        self._line_limit, self._line_timeout = limit, timeout
        while True:
            newline = self._buffer.find(b"\n", self._searched)
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                self._searched = 0
                self._maybe_resume()
                if self._discarding:
                    self._discarding = False
                    raise LineTooLong(self._discarded_head)
                if len(line) > limit:
                    raise LineTooLong(line[:_HEAD])
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buffer) > limit:
                if not self._discarding:
                    self._discarded_head = bytes(self._buffer[:_HEAD])
                self._discarding = True
                self._buffer.clear()
                self._maybe_resume()
            self._searched = len(self._buffer)
            await self._more(loop)

    async def read_some(self, limit: int, timeout: float) -> bytes:
        """Up to `limit` bytes (at least one), as they arrive: for IMAP literals (RFC 3501 §4.3).

        Raises TimeoutError when nothing arrives within `timeout` seconds, ConnectionClosed at
        the end of the connection.
        """
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        self._line_limit = None
        while True:
            if self._buffer:
                data = bytes(self._buffer[:limit])
                del self._buffer[:limit]
                self._searched = 0
                self._maybe_resume()
                return data
            await self._more(loop)

    async def read_until(self, separator: bytes, timeout: float) -> bytes:
        """The bytes up to and including the first `separator`; or, when none is buffered, what
        is (at least one byte), but for a tail that may begin a separator: for SMTP DATA, read in
        as few pieces as the stream offers (RFC 5321 §4.5.2).

        Raises TimeoutError when nothing arrives within `timeout` seconds, ConnectionClosed at
        the end of the connection.
        """
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        self._line_limit = None
        keep = len(separator) - 1
        while True:
            end = self._buffer.find(separator)
            if end >= 0:
                end += len(separator)
            elif len(self._buffer) > keep:
                end = len(self._buffer) - keep
            if end > 0:
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                self._searched = 0
                self._maybe_resume()
                return data
            await self._more(loop)

    async def _more(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for more bytes (ConnectionClosed at the end; the idle timer raises TimeoutError)."""
        if self._eof:
            raise ConnectionClosed()
        timer = self._idle_timer
        if timer is None or timer.when() > self._deadline:
            # No timer, or one set for a longer timeout (DATA's) than the one in force now.
            if timer is not None:
                timer.cancel()
            self._idle_timer = loop.call_at(self._deadline, self._idle_check)
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read_exactly(self, count: int, timeout: float) -> bytes:
        """Exactly `count` bytes (each arrival within `timeout` seconds of the previous one)."""
        parts: list[bytes] = []
        while count > 0:
            data = await self.read_some(count, timeout)
            parts.append(data)
            count -= len(data)
        return b"".join(parts)

    def write(self, data: bytes) -> None:
        if self._closed or self._transport is None or self._transport.is_closing():
            raise ConnectionClosed()
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the socket's send buffer is over its high-water mark."""
        if self._closed:
            raise ConnectionClosed()
        if not self._write_paused:
            return
        self._drain_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None

    async def drain_all(self) -> None:
        """Wait until everything written so far has left for the socket (none of it is left in
        the transport's buffer): before another process writes to the socket."""
        transport = self._transport
        if transport is None or self._closed:
            raise ConnectionClosed()
        while transport.get_write_buffer_size():
            transport.set_write_buffer_limits(high=0)  # paused until the buffer is empty
            try:
                await self.drain()
            finally:
                if not transport.is_closing():  # uvloop refuses any call on a closed transport
                    transport.set_write_buffer_limits()
            if self._closed:
                raise ConnectionClosed()

    def plain_descriptor(self) -> int | None:
        """The socket's file descriptor, for a clear-text connection that is open (a TLS one's
        bytes must go through this process's TLS state)."""
        transport = self._transport
        if transport is None or self._closed or transport.is_closing() or self.is_tls:
            return None
        sock = transport.get_extra_info("socket")
        return sock.fileno() if sock is not None else None

    def shutdown(self) -> None:
        """Shut the socket down both ways: whoever else holds a copy of its descriptor (a FETCH
        sender) can no longer write to it. Then closed."""
        descriptor = self.plain_descriptor()
        if descriptor is not None:
            try:
                with socket.socket(fileno=os.dup(descriptor)) as copy:
                    copy.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already shut down or gone
        self.abort()

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> None:
        """Upgrade to TLS. Bytes that arrived before the handshake are discarded (RFC 2595 §4)."""
        assert self._transport is not None
        self._buffer.clear()
        self._searched = 0
        self._maybe_resume()
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            self._transport, self, context, server_side=True, ssl_handshake_timeout=timeout
        )
        if transport is None:
            raise ConnectionClosed()
        self._transport = cast(asyncio.Transport, transport)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- internals ------------------------------------------------------------------------------
    def _answer_now(self, on_line: Callable[[bytes], bool], limit: int) -> None:
        """While the session waits in readline with nothing before them: offer each complete
        line to `on_line`, in order, until one is left for readline (then it and all after it
        go through the session's task, so the order of replies is the order of commands).

        What this saves is the task switch per command: a client that downloads one message
        per round trip is answered from here, at once."""
        transport = self._transport
        while not (self._write_paused or self._discarding or transport is None or transport.is_closing()):
            newline = self._buffer.find(b"\n", self._searched)
            if newline < 0 or newline > limit:
                return  # no line yet, or an over-long one: readline reports it
            end = newline - 1 if newline and self._buffer[newline - 1] == 13 else newline  # CR
            if not on_line(bytes(self._buffer[:end])):
                return
            del self._buffer[: newline + 1]
            self._searched = 0
            self._deadline = self._loop.time() + self._line_timeout

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _idle_check(self) -> None:
        self._idle_timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting for the client now; the next readline arms the timer again
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._idle_timer = loop.call_at(self._deadline, self._idle_check)

    def _maybe_resume(self) -> None:
        if self._reading_paused and len(self._buffer) < _RESUME_BELOW and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
