"""DATA (RFC 5321 §4.5.2): the end of the message, dot transparency and the size and line
limits, checked against a line-by-line reading of the RFC however the stream is cut into
pieces (the transport on a socket pair, fed piece by piece), then over a real socket against
`appliance serve`."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.connection import Connection, ConnectionClosed
from appliance.smtp.data import Data, DataState, read_data
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.smtp import JOHN, RawClient, start, stored

# -- the reader against the RFC, line by line ----------------------------------------------------


def by_the_rfc(stream: bytes, size_limit: int, line_limit: int) -> tuple[set[DataState], bytes, bytes] | None:
    """What RFC 5321 §4.5.2 and aiosmtpd's limits say, one CRLF line at a time: the limits the
    message breaks, its content, and what is left in the stream after its end (None: no end)."""
    lines: list[bytes] = []
    position = 0
    total = 0
    broken: set[DataState] = set()
    while True:
        end = stream.find(b"\r\n", position)
        if end < 0:
            return None
        line = stream[position : end + 2]
        position = end + 2
        if line == b".\r\n":
            break
        total += len(line)
        if len(line) > line_limit:
            broken.add(DataState.TOO_LONG)
        lines.append(line[1:] if line.startswith(b".") else line)
    if size_limit and total > size_limit:
        broken.add(DataState.TOO_MUCH)
    return broken, b"".join(lines), stream[position:]


async def transport() -> tuple[Connection, socket.socket]:
    """The server's transport on one end of a socket pair (the other end is returned too)."""
    ours, peer = socket.socketpair()

    async def nothing(_connection: Connection) -> None:
        return None

    _, connection = await asyncio.get_running_loop().create_unix_connection(
        lambda: Connection(nothing), sock=ours
    )
    return connection, peer


async def read_or_none(connection: Connection, size_limit: int, line_limit: int) -> Data | None:
    try:
        return await read_data(connection, size_limit, line_limit, 5.0)
    except ConnectionClosed:
        return None  # the stream ended before the end of the message


def read_in_pieces(
    stream: bytes, cuts: list[int], size_limit: int, line_limit: int
) -> tuple[Data | None, bytes]:
    """read_data on the transport fed `stream` cut at `cuts`, each piece arriving on its own;
    and what the transport holds afterwards."""

    async def run() -> tuple[Data | None, bytes]:
        connection, peer = await transport()
        task = asyncio.ensure_future(read_or_none(connection, size_limit, line_limit))
        edges = [0, *sorted(set(cuts)), len(stream)]
        for first, last in itertools.pairwise(edges):
            if last > first:
                connection.data_received(stream[first:last])
                await asyncio.sleep(0)  # let the reader see each piece on its own
        connection.eof_received()
        data = await asyncio.wait_for(task, 5)
        rest = b""
        for _ in range(len(stream) + 1):
            try:
                rest += await connection.read_some(1 << 20, 5.0)
            except ConnectionClosed:
                break
        peer.close()
        return data, rest

    return asyncio.run(run())


LINE = st.one_of(
    st.sampled_from([b"", b".", b"..", b"...", b".x", b"x.", b"\r", b"\n", b"a\nb", b"\r.", b". ", b"\n."]),
    st.binary(max_size=40).map(lambda raw: raw.replace(b"\r\n", b"")),
    st.integers(0, 2200).map(lambda n: b"y" * n),
)


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(LINE, max_size=20),
    ended=st.booleans(),
    after=st.sampled_from([b"", b"QUIT\r\n", b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"]),
    cuts=st.lists(st.integers(0, 50_000), max_size=12),
    size_limit=st.sampled_from([0, 1, 10, 100, 3000, 1 << 20]),
    line_limit=st.sampled_from([1000, 1001, 2048]),
)
def test_the_reader_agrees_with_a_line_by_line_reading_however_the_stream_is_cut(
    lines: list[bytes], ended: bool, after: bytes, cuts: list[int], size_limit: int, line_limit: int
) -> None:
    stream = b"".join(line + b"\r\n" for line in lines) + (b".\r\n" + after if ended else b"")
    cuts = [cut % (len(stream) + 1) for cut in cuts]
    data, rest = read_in_pieces(stream, cuts, size_limit, line_limit)
    expected = by_the_rfc(stream, size_limit, line_limit)
    if expected is None:
        assert data is None
        return
    broken, content, after_end = expected
    assert data is not None and rest == after_end
    if broken:  # over a limit: refused for one it breaks (the one found first), nothing kept
        assert data.state in broken and data.content == b""
    else:
        assert data == Data(DataState.NOMINAL, content)


@pytest.mark.parametrize(
    ("stream", "content"),
    [
        (b".\r\n", b""),  # an empty message
        (b"..\r\n.\r\n", b".\r\n"),  # a line holding one dot, stuffed
        (b"a.\r\nb .\r\n.\r\n", b"a.\r\nb .\r\n"),  # lines that end with a dot are not the end
        (b"..x\r\n...\r\n.\r\n", b".x\r\n..\r\n"),
        (b"x\r\n.y\r\n.\r\n", b"x\r\ny\r\n"),  # a dot the client did not double is dropped (RFC)
        (b"a\r\n.\r\nQUIT\r\n", b"a\r\n"),  # what follows the end is the next command's
    ],
)
def test_examples_every_cut(stream: bytes, content: bytes) -> None:
    for cut in range(len(stream) + 1):
        data, _ = read_in_pieces(stream, [cut], 0, 1000)
        assert data == Data(DataState.NOMINAL, content), cut


def test_a_line_exactly_at_the_limit_passes_whatever_the_cut_and_one_more_byte_does_not() -> None:
    at_limit = b"z" * 998 + b"\r\n"  # 1000 with its CRLF
    for cut in (0, 500, 998, 999, 1000):
        data, _ = read_in_pieces(at_limit + b".\r\n", [cut], 0, 1000)
        assert data == Data(DataState.NOMINAL, at_limit), cut
        data, _ = read_in_pieces(b"z" + at_limit + b".\r\n", [cut], 0, 1000)
        assert data == Data(DataState.TOO_LONG, b""), cut


def test_an_endless_line_is_not_kept() -> None:
    """Past the line limit nothing more of the message is held, whatever the size limit."""

    async def run() -> tuple[Data | None, int]:
        connection, peer = await transport()
        reading = read_data(connection, 0, 1000, 5.0)
        task = asyncio.ensure_future(reading)
        for _ in range(2000):
            connection.data_received(b"w" * 4096)
            await asyncio.sleep(0)
        held = len(reading.cr_frame.f_locals["kept"])
        connection.data_received(b"\r\n.\r\n")
        data = await asyncio.wait_for(task, 5)
        peer.close()
        return data, held

    data, held = asyncio.run(run())
    assert data == Data(DataState.TOO_LONG, b"")
    assert held == 0


# -- over the socket -----------------------------------------------------------------------------


@pytest.fixture
def server(appliance: ApplianceFactory) -> RunningAppliance:
    return start(appliance, listeners=("smtp",), limits="max_line_length = 1000")


def open_transaction(server: RunningAppliance) -> RawClient:
    client = RawClient(server)
    assert client.command("EHLO client.example").startswith("250")
    assert client.command("MAIL FROM:<a@remote.example>").startswith("250")
    assert client.command(f"RCPT TO:<{JOHN}>").startswith("250")
    assert client.command("DATA").startswith("354")
    return client


def stored_body(server: RunningAppliance, index: int) -> bytes:
    data = stored(server)[index].read_bytes()
    return data.split(b"\n\n", 1)[1]


def test_dot_stuffed_lines_arrive_unstuffed_when_sent_a_byte_at_a_time(server: RunningAppliance) -> None:
    client = open_transaction(server)
    wire = b"Subject: dots\r\n\r\n..\r\n...leading\r\nends with a dot.\r\n.\r\nQUIT\r\n"
    for byte in wire:
        client.send(bytes([byte]))
        time.sleep(0.001)  # one byte per segment: the trickle is what is tested
    assert client.reply().startswith("250 2.0.0")
    assert client.reply().startswith("221")  # the pipelined QUIT was kept for after DATA
    assert stored_body(server, 0) == b".\n..leading\nends with a dot.\n"


def test_an_empty_message_and_one_pipelined_after_another_are_both_stored(server: RunningAppliance) -> None:
    client = open_transaction(server)
    second = f"MAIL FROM:<b@remote.example>\r\nRCPT TO:<{JOHN}>\r\nDATA\r\n".encode()
    client.send(b".\r\n" + second)
    assert client.reply().startswith("250 2.0.0")
    for _ in range(2):
        assert client.reply().startswith("250")
    assert client.reply().startswith("354")
    client.send(b"Subject: second\r\n\r\nbody\r\n.\r\n")
    assert client.reply().startswith("250 2.0.0")
    assert len(stored(server)) == 2
    client.close()


def test_an_overlong_data_line_gets_500_after_the_end_and_the_session_goes_on(
    server: RunningAppliance,
) -> None:
    client = open_transaction(server)
    client.send(b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\nmore\r\n.\r\n")
    assert client.reply().startswith("500 5.5.2")
    assert client.command("NOOP").startswith("250")
    assert stored(server) == []
    assert "stage=data reason=line_too_long code=500" in server.log()


def test_a_client_that_leaves_during_data_stores_nothing(server: RunningAppliance) -> None:
    client = open_transaction(server)
    client.send(b"Subject: cut\r\n\r\nhalf a message\r\n")
    client.close()
    server.wait_for_log(r"data aborted client=127\.0\.0\.1 listener=smtp")
    server.wait_for_log(r"disconnect client=127\.0\.0\.1 listener=smtp messages=0")
    assert stored(server) == []
