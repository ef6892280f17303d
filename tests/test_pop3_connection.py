"""Commands answered on the spot (appliance/connection.py `on_line`, readahead.py `take`).

A RETR of a message already read ahead is answered from the connection's data callback, without
waking the session's task. These tests hold the rules that make that safe, on real loopback
sockets: every line is answered once and in the order sent, whichever way it goes; nothing is
answered on the spot while the client is not reading (back-pressure) or inside an over-long line;
lines answered on the spot count as activity for the idle timeout. And `take` gives a message only
when it is the next one in order and already read, by the real reader in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from appliance.connection import Connection, ConnectionClosed, LineTooLong
from appliance.pop3.maildrop import Maildrop, read_wire
from appliance.pop3.readahead import ReadAhead
from appliance.store.maildir import Maildir
from appliance.store.reader import ThreadReaders
from tests.support.wait import wait_for_async

SMALL_BUFFER = 64 * 1024


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


class Served:
    """One connection to a server of `Connection`s whose session answers every line it reads
    with "task <line>", and whose `on_line` answers lines that `fast(line)` accepts with
    "now <line>" (and a `payload` after it)."""

    def __init__(
        self,
        fast: Callable[[bytes], bool],
        payload: bytes = b"",
        timeout: float = 30.0,
        small_buffers: bool = False,
    ) -> None:
        self.fast = fast
        self.small_buffers = small_buffers  # so that writes are paused soon when the client does not read
        self.payload = payload
        self.timeout = timeout
        self.answered_now: list[bytes] = []
        self.read_by_task: list[bytes] = []
        self.ended: BaseException | None = None
        self.done = asyncio.Event()
        self.connection: Connection | None = None

    async def session(self, connection: Connection) -> None:
        self.connection = connection
        if self.small_buffers:
            sock = connection._transport.get_extra_info("socket")  # type: ignore[union-attr]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)

        def on_line(line: bytes) -> bool:
            if not self.fast(line):
                return False
            self.answered_now.append(line)
            connection.write(b"now " + line + b"\r\n" + self.payload)
            return True

        connection.on_line = on_line
        try:
            while True:
                try:
                    line = await connection.readline(64, self.timeout)
                except LineTooLong as error:
                    connection.write(b"too long " + error.head[:8] + b"\r\n")
                    continue
                self.read_by_task.append(line)
                connection.write(b"task " + line + b"\r\n" + self.payload)
                await connection.drain()
        except (ConnectionClosed, TimeoutError) as error:
            self.ended = error
        finally:
            connection.close()
            self.done.set()

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[socket.socket]:
        """The client's socket; on the way out it is closed, the session has ended (within
        10 s) and the server is closed."""
        server = await asyncio.get_running_loop().create_server(
            lambda: Connection(self.session), "127.0.0.1", 0
        )
        client = socket.socket()
        try:
            if self.small_buffers:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
            client.connect(("127.0.0.1", server.sockets[0].getsockname()[1]))
            client.setblocking(False)
            yield client
            client.close()
            await asyncio.wait_for(self.done.wait(), 10)
        finally:
            client.close()
            server.close()


async def send(client: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(client, data)


async def receive_lines(client: socket.socket, count: int, payload: int = 0) -> list[bytes]:
    """`count` reply lines (each followed by `payload` bytes, skipped)."""
    loop = asyncio.get_running_loop()
    data = b""
    lines: list[bytes] = []
    while len(lines) < count:
        chunk = await loop.sock_recv(client, 1 << 20)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
        while b"\n" in data:
            line, _, rest = data.partition(b"\n")
            if len(rest) < payload:
                break
            lines.append(line.rstrip(b"\r"))
            data = rest[payload:]
    return lines


def fast_lines(line: bytes) -> bool:
    return line.startswith(b"FAST")


def test_every_line_is_answered_once_and_in_the_order_sent() -> None:
    async def scenario() -> None:
        served = Served(fast_lines)
        async with served.connected() as client:
            # One at a time first: each arrives while the session waits, so it is answered now.
            for n in range(5):
                await send(client, b"FAST %d\r\n" % n)
                assert await receive_lines(client, 1) == [b"now FAST %d" % n]
            # Then a burst: after a line the callback declines, the task reads every line that
            # follows it (answering them on the spot would overtake the declined one).
            burst = [b"FAST 5", b"FAST 6", b"SLOW 7", b"FAST 8", b"SLOW 9", b"FAST 10"]
            await send(client, b"".join(line + b"\r\n" for line in burst))
            replies = await receive_lines(client, len(burst))
            assert [reply.split(b" ", 1)[1] for reply in replies] == burst
            assert replies[2] == b"task SLOW 7" and replies[3] == b"task FAST 8"
            assert served.answered_now[:5] == [b"FAST %d" % n for n in range(5)]
            assert sorted(served.answered_now + served.read_by_task) == sorted(
                [b"FAST %d" % n for n in range(5)] + burst
            )

    run(scenario)


def test_lines_split_across_packets_and_bare_lf_are_handled_on_the_spot() -> None:
    async def scenario() -> None:
        served = Served(fast_lines)
        async with served.connected() as client:
            await send(client, b"FA")
            await asyncio.sleep(0.05)  # apart in time, so in packets of their own: what is tested
            await send(client, b"ST 1\r")
            await asyncio.sleep(0.05)
            await send(client, b"\nFAST 2\n")
            assert await receive_lines(client, 2) == [b"now FAST 1", b"now FAST 2"]
            assert served.read_by_task == []

    run(scenario)


def test_an_over_long_line_goes_to_the_session_even_if_the_callback_would_take_it() -> None:
    async def scenario() -> None:
        served = Served(fast_lines)
        async with served.connected() as client:
            await send(client, b"FAST " + b"x" * 200 + b"\r\nFAST after\r\n")
            assert await receive_lines(client, 2) == [b"too long FAST xxx", b"task FAST after"]
            # The same in pieces, the line's end arriving long after its limit was passed.
            await send(client, b"FAST " + b"y" * 100)
            await asyncio.sleep(0.05)  # the line's end in a later packet: what is tested
            await send(client, b"y" * 100 + b"\r\n")
            assert await receive_lines(client, 1) == [b"too long FAST yyy"]
            await send(client, b"FAST 3\r\n")
            assert await receive_lines(client, 1) == [b"now FAST 3"]
            assert served.answered_now == [b"FAST 3"]

    run(scenario)


def test_nothing_is_answered_on_the_spot_while_the_client_is_not_reading() -> None:
    payload = b"p" * (512 * 1024)  # each reply is larger than the socket buffers

    async def scenario() -> None:
        served = Served(fast_lines, payload=payload, small_buffers=True)
        async with served.connected() as client:
            count = 12
            await send(client, b"".join(b"FAST %d\r\n" % n for n in range(count)))
            await asyncio.sleep(0.5)  # not reading: the server's writes are paused meanwhile
            assert served.connection is not None
            buffered = served.connection._transport.get_write_buffer_size()  # type: ignore[union-attr]
            assert len(served.answered_now) == 1, "answered on the spot while writes were paused"
            assert buffered < 2 * len(payload), "the server went on writing to a client that is not reading"
            replies = await receive_lines(client, count, payload=len(payload))
            assert [reply.split(b" ", 1)[1] for reply in replies] == [b"FAST %d" % n for n in range(count)]

    run(scenario)


def test_lines_answered_on_the_spot_keep_the_session_alive_and_silence_ends_it() -> None:
    async def scenario() -> None:
        served = Served(fast_lines, timeout=1.0)
        async with served.connected() as client:
            started = time.monotonic()
            for n in range(8):  # 2 s of activity, every 0.25 s: twice the timeout
                await send(client, b"FAST %d\r\n" % n)
                assert await receive_lines(client, 1) == [b"now FAST %d" % n]
                await asyncio.sleep(0.25)
            assert served.ended is None, "timed out although the client kept sending"
            silent = time.monotonic()
            await asyncio.wait_for(served.done.wait(), 10)
            assert isinstance(served.ended, TimeoutError)
            assert 0.5 <= time.monotonic() - silent < 5 and silent - started > 1.9
            assert served.read_by_task == []

    run(scenario)


# -- ReadAhead.take -------------------------------------------------------------------------------
def store_messages(root: Path, count: int) -> None:
    Maildir(root).ensure()
    for n in range(count):
        data = b"Subject: %d\n\n.dot line\nbody %d\n" % (n, n)
        wire = len(data) + data.count(b"\n")
        (root / "cur" / f"{1700000000 + n}.M{n}P1Q{n}.test,S={len(data)},W={wire}:2,S").write_bytes(data)


@contextlib.asynccontextmanager
async def read_ahead(root: Path, count: int) -> AsyncIterator[tuple[Maildrop, ReadAhead]]:
    """`count` messages in a Maildrop, read ahead by the real reader code in a thread."""
    store_messages(root, count)
    maildrop = Maildrop.open(Maildir(root))
    readers = ThreadReaders()
    readahead = ReadAhead(maildrop, readers)
    try:
        yield maildrop, readahead
    finally:
        await readahead.close()
        await readers.close()
        maildrop.release()


async def until_landed(readahead: ReadAhead, index: int | None = None) -> None:
    """Wait (at most 2 s) until no window is in flight, and `index` is ready if given: windows
    land by themselves, through their done callback."""
    await wait_for_async(
        lambda: readahead._pending is None and (index is None or index in readahead._ready),
        2,
        "the window landed",
    )


def test_take_gives_the_next_message_once_it_is_read_and_nothing_else(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with read_ahead(tmp_path / "john", 40) as (maildrop, readahead):
            assert readahead.take(0) is None  # nothing asked yet: the async way starts reading
            assert await readahead.message(0) == read_wire(maildrop.place(0))
            readahead.refill()
            await until_landed(readahead)
            assert readahead.take(2) is None  # not the next one
            for index in range(1, 4):
                assert readahead.take(index) == read_wire(maildrop.place(index))
                readahead.refill()
            assert readahead.take(3) is None  # given once
            readahead.forget(4)  # DELE 5
            assert readahead.take(4) is None
            assert await readahead.message(5) == read_wire(maildrop.place(5))
            # Out of order: what was skipped is dropped, and the async way is needed again.
            assert await readahead.message(30) == read_wire(maildrop.place(30))
            assert readahead.take(6) is None
            assert all(index >= 30 for index in readahead._ready)

    run(scenario)


def test_a_message_that_cannot_be_read_is_left_to_the_async_way_which_reports_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with read_ahead(tmp_path / "john", 12) as (maildrop, readahead):
            await readahead.message(0)  # reads 0-3; the next window is 4-11
            maildrop.messages[6].path.unlink()  # gone before the next window reads it
            assert readahead.take(1) == read_wire(maildrop.place(1))
            readahead.refill()
            await until_landed(readahead, 6)
            for index in range(2, 6):
                assert readahead.take(index) == read_wire(maildrop.place(index))
            assert readahead.take(6) is None
            with pytest.raises(FileNotFoundError):
                await readahead.message(6)
            assert await readahead.message(7) == read_wire(maildrop.place(7))

    run(scenario)


def test_a_place_names_the_message_file_in_new_and_in_cur(tmp_path: Path) -> None:
    store_messages(tmp_path / "john", 3)
    (tmp_path / "john" / "new" / "1800000000.M1P1Q1.test").write_bytes(b"Subject: new\n\nhi\n")
    maildrop = Maildrop.open(Maildir(tmp_path / "john"))
    try:
        assert [message.in_new for message in maildrop.messages] == [False, False, False, True]
        for index, message in enumerate(maildrop.messages):
            path, size, root, key = maildrop.place(index)
            assert (path, size, root, key) == (
                str(message.path),
                message.size,
                str(tmp_path / "john"),
                message.key,
            )
            assert Path(path).is_file()
    finally:
        maildrop.release()
