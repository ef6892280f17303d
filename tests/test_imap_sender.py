"""FETCH responses written by the sender processes (appliance/imap/sender.py), on a running server.

A FETCH of many messages on a clear-text connection is written to the client's socket by a sender
process; on a TLS connection the session renders it itself. The same FETCHes over both must give
the same bytes (literals, partials, headers, ENVELOPE, flags; a message of 3 MB; LF, CRLF and mixed
files), in order with what the session writes before and after (pipelined commands). A client that
does not read holds up no other client and does not hold up the server's stop; a sender killed in
the middle of a response ends that session only. The sender process itself, over a real socket
pair: what it writes is what render_pieces gives here, a message moved meanwhile is found, a
vanished one is counted.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import pickle
import re
import signal
import socket
import struct
import termios
import time
from pathlib import Path

import pytest

from appliance.auth.passwords import hash_password
from appliance.imap.fetch import parse_items, render_pieces
from appliance.imap.index import MessageInfo
from appliance.imap.message import ParsedMessage
from appliance.imap.selected import JOB_MESSAGES
from appliance.imap.sender import FetchJob, SenderProcess
from appliance.imap.tokens import Atom
from appliance.store.maildir import to_crlf
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.imap import RawClient
from tests.support.wait import wait_for, wait_for_async

PASSWORD = "Sender!Passw0rd"
ACCOUNTS = ("ann", "bob", "cy", "dee", "eve", "fay")
DOMAINS = (
    '[domains."example.test"]\n[domains."example.test".accounts]\n'
    + "".join(f'{name} = {{ password_hash = "{hash_password(PASSWORD)}" }}\n' for name in ACCOUNTS)
    + "\n[security.auto_ban]\nenabled = false\n"
)
PLAINTEXT = "allow_plaintext_auth = true"
MESSAGES = 260  # more than one batch of 200, well over sender.MIN_MESSAGES
SOCKET_TIMEOUT = 30


def compose(number: int, size: int = 0) -> bytes:
    """Message `number`: LF, CRLF or mixed line ends, a few MIME shapes, about `size` bytes of body."""
    body = b"".join(b"line %d of message %d\n" % (n, number) for n in range(3 + number % 7))
    if size:
        body += b"x" * 70 + b"\n"
        body *= max(1, size // len(body))
    if number % 5 == 0:
        text = (
            b"From: Ann <ann@remote.example>\nTo: bob@example.test\nSubject: multipart %d\n"
            b"MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=XX\n\n"
            b"--XX\nContent-Type: text/plain\n\n%s\n--XX\nContent-Type: text/html\n\n<p>%d</p>\n--XX--\n"
        ) % (number, body, number)
    else:
        text = (
            b"From: Bob <bob@remote.example>\nSubject: note %d\nDate: Mon, 7 Feb 1994 21:52:25 -0800\n\n%s"
            % (
                number,
                body,
            )
        )
    if number % 3 == 1:
        return text.replace(b"\n", b"\r\n")  # stored by another program, with CRLF
    if number % 3 == 2:
        return text.replace(b"\n", b"\r\n", 2)  # mixed
    return text


def fill(server: RunningAppliance, account: str, count: int, big: dict[int, int] | None = None) -> None:
    """Messages written straight into the account's Maildir (as another delivery agent would)."""
    maildir = server.data_dir / "mail" / "example.test" / account
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for number in range(1, count + 1):
        flags = "S" if number % 4 else "FS"
        path = maildir / "cur" / f"{1_700_000_000 + number}.M{number}P1Q1.test:2,{flags}"
        path.write_bytes(compose(number, (big or {}).get(number, 0)))
        os.utime(path, (1_700_000_000 + number * 3600,) * 2)


def logged_in(server: RunningAppliance, account: str, tls: bool = False) -> RawClient:
    """A raw IMAP connection logged in as `account`, that reads responses byte for byte."""
    client = RawClient(server, "imaps" if tls else "imap", timeout=SOCKET_TIMEOUT)
    assert client.greeting.startswith(b"* OK")
    client.login(f"{account}@example.test", PASSWORD)
    return client


def normalized(response: bytes) -> bytes:
    """The response without its tag (every command has a tag of its own)."""
    return re.sub(rb"(^|\r\n)t\d+ ", rb"\1TAG ", response)


@pytest.fixture
def server(appliance: ApplianceFactory) -> RunningAppliance:
    return appliance.start(DOMAINS, listeners=("imap", "imaps"), server_extra=PLAINTEXT)


FETCHES = (
    "FETCH 1:* (BODY.PEEK[])",
    "UID FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (Subject From)] BODY.PEEK[]<10.200>)",
    "FETCH 2:150 (ENVELOPE BODYSTRUCTURE BODY.PEEK[1] BODY.PEEK[TEXT]<0.64>)",
    "FETCH 1:* (RFC822 RFC822.HEADER FLAGS)",  # EXAMINE: RFC822 sets no \\Seen, so it is sent from afar too
)


def test_the_sender_writes_the_same_bytes_as_the_session(server: RunningAppliance) -> None:
    fill(server, "ann", MESSAGES, big={7: 3_000_000})
    first = logged_in(server, "ann", tls=True)
    first.exchange("SELECT INBOX")  # \Recent claimed here: the sessions below see none
    first.close()
    sessions = {}
    for tls in (True, False):  # TLS first: rendered by the session, no sender started
        wire = logged_in(server, "ann", tls=tls)
        wire.exchange("EXAMINE INBOX")
        sessions[tls] = [normalized(wire.exchange(text)) for text in FETCHES]
        wire.exchange("LOGOUT")
        wire.close()
        if tls:
            assert "fetch sender process started" not in server.log()
    server.wait_for_log(r"fetch sender process started pid=\d+")
    assert "rendered by the session" not in server.log()
    for text, by_session, by_sender in zip(FETCHES, sessions[True], sessions[False], strict=True):
        assert by_session == by_sender, text
    whole = sessions[False][0]
    assert whole.count(b" FETCH (BODY[] {") == MESSAGES
    assert to_crlf(compose(7, 3_000_000)) in whole
    assert b"\r\n\r\n" in whole and b"\n\n" not in whole.replace(b"\r\n", b"")  # CRLF only


def test_responses_stay_in_order_with_pipelined_commands(server: RunningAppliance) -> None:
    fill(server, "bob", 100)
    wire = logged_in(server, "bob")
    wire.send(
        b"p1 SELECT INBOX\r\np2 FETCH 1:* (UID BODY.PEEK[])\r\np3 FETCH 100 (UID)\r\n"
        b"p4 UID FETCH 1:* (BODY.PEEK[HEADER])\r\np5 NOOP\r\n"
    )
    parts = [wire.read_until(b"p%d" % n) for n in range(1, 6)]
    assert b"* 100 EXISTS" in parts[0] and parts[0].endswith(b"p1 OK [READ-WRITE] SELECT completed\r\n")
    for part, count in ((parts[1], 100), (parts[3], 100), (parts[2], 1)):
        lines = [line for line in re.split(rb"\r\n(?=\* |p\d )", part) if line.startswith(b"* ")]
        assert len(lines) == count
        assert [int(line.split()[1]) for line in lines] == list(range(101 - count, 101))
    assert parts[4] == b"p5 OK NOOP completed\r\n"
    wire.close()


def test_a_fetch_of_more_messages_than_one_job_takes(server: RunningAppliance) -> None:
    count = JOB_MESSAGES + 150  # two jobs, the second one small
    maildir = server.data_dir / "mail" / "example.test" / "fay"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for number in range(1, count + 1):
        (maildir / "cur" / f"{1_700_000_000 + number}.M{number}P1Q1.test:2,S").write_bytes(
            b"Subject: %d\n\nx\n" % number
        )
    responses = []
    for tls in (True, False):
        wire = logged_in(server, "fay", tls=tls)
        wire.exchange("EXAMINE INBOX")
        responses.append(normalized(wire.exchange("UID FETCH 1:* (BODY.PEEK[])")))
        wire.close()
    assert responses[0] == responses[1]
    assert responses[1].count(b" FETCH (UID ") == count
    last = b"Subject: %d\r\n\r\nx\r\n" % count
    assert (
        b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\nTAG OK" % (count, count, len(last), last) in responses[1]
    )


def stalled(server: RunningAppliance, account: str) -> socket.socket:
    """A session that asks for every message and then reads nothing."""
    sock = socket.create_connection(("127.0.0.1", server.ports["imap"]), SOCKET_TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.recv(1000)
    sock.sendall(
        f'a LOGIN {account}@example.test "{PASSWORD}"\r\nb EXAMINE INBOX\r\nc FETCH 1:* (BODY.PEEK[])\r\n'.encode()
    )
    return sock


def queued(sock: socket.socket) -> int:
    """Bytes that have arrived on `sock` and wait unread (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]  # type: ignore[no-any-return]


def writing(sock: socket.socket) -> bool:
    """The server has sent `sock` more than a reply to LOGIN and EXAMINE: the FETCH is being written."""
    return queued(sock) > 32 * 1024


def read_to_end(sock: socket.socket, limit: float) -> bytes:
    sock.settimeout(limit)
    data = bytearray()
    while chunk := sock.recv(1 << 20):
        data += chunk
    return bytes(data)


def test_clients_that_do_not_read_hold_up_neither_others_nor_the_stop(server: RunningAppliance) -> None:
    big = dict.fromkeys(range(1, 81), 200_000)  # 16 MB: far more than the socket buffers hold
    for account in ("cy", "dee"):
        fill(server, account, 80, big)
    sleepers = [stalled(server, "cy") for _ in range(3)]
    # their jobs are in the senders, stuck on full sockets
    wait_for(
        lambda: all(writing(sock) for sock in sleepers), 20, "the senders writing to the stalled clients"
    )
    started = time.monotonic()
    reader = logged_in(server, "dee")
    reader.exchange("EXAMINE INBOX")
    response = reader.exchange("FETCH 1:* (BODY.PEEK[])")
    assert response.count(b" FETCH (BODY[] {") == 80
    assert time.monotonic() - started < 20
    reader.close()
    started = time.monotonic()
    assert server.stop(timeout=40) == 0
    stopped_in = time.monotonic() - started
    assert stopped_in < 25, stopped_in  # 10 s of grace for the sessions, then they are cut off
    assert "did not stop" not in server.log()
    for sock in sleepers:  # what they got ends early: the server let go of the sockets
        data = read_to_end(sock, 10)
        assert b"c OK" not in data
        assert data.count(b" FETCH (BODY[] {") < 80
        sock.close()


def test_a_sender_killed_in_the_middle_ends_that_session_only(server: RunningAppliance) -> None:
    fill(server, "eve", 80, dict.fromkeys(range(1, 81), 200_000))
    sleeper = stalled(server, "eve")
    match = server.wait_for_log(r"fetch sender process started pid=(\d+)")
    wait_for(lambda: writing(sleeper), 20, "the sender in the middle of the response")
    pids = [int(pid) for pid in re.findall(r"fetch sender process started pid=(\d+)", server.log())]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    server.wait_for_log(r"fetch sender failed in the middle of a response", after=match.start())
    data = read_to_end(sleeper, 10)  # cut short, then closed
    assert b"c OK" not in data and data.count(b" FETCH (BODY[] {") < 80
    sleeper.close()
    wire = logged_in(
        server, "eve"
    )  # the next session gets every message (a new sender, or the session itself)
    wire.exchange("EXAMINE INBOX")
    response = wire.exchange("FETCH 1:* (BODY.PEEK[])")
    assert response.count(b" FETCH (BODY[] {") == 80
    assert to_crlf(compose(80, 200_000)) in response
    wire.close()


def test_a_client_that_hangs_up_mid_fetch_costs_nothing_but_its_session(server: RunningAppliance) -> None:
    fill(server, "ann", 80, dict.fromkeys(range(1, 81), 200_000))
    mark = server.log_size()
    for _ in range(3):
        sock = stalled(server, "ann")
        wait_for(functools.partial(writing, sock), 20, "the sender writing")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # reset
    server.wait_for_log(r"imap closed login=ann@example.test .*reason=dropped", after=mark)
    wire = logged_in(server, "ann")
    wire.exchange("EXAMINE INBOX")
    assert wire.exchange("FETCH 1:* (BODY.PEEK[])").count(b" FETCH (BODY[] {") == 80
    wire.close()
    logged = server.log()[mark:]
    assert " ERROR " not in logged and "Traceback" not in logged, logged[-3000:]


# -- the process, on its own ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "items",
    [
        [[Atom("UID"), Atom("FLAGS"), Atom("BODY.PEEK[]"), Atom("ENVELOPE")]],
        [Atom("BODY.PEEK[]")],  # UID FETCH of whole messages: the one-format head (whole_message_head)
    ],
)
def test_the_process_writes_what_render_pieces_gives_and_counts_what_vanished(
    tmp_path: Path, items: list
) -> None:
    folder = tmp_path / "INBOX"
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True)
    texts = {n: compose(n, 50_000 if n == 3 else 0) for n in range(1, 8)}
    names = []
    for n, text in texts.items():
        name = f"{n}.M{n}P1Q1.test:2,S"
        (folder / "cur" / name).write_bytes(text)
        names.append(f"cur/{name}")
    (folder / "cur" / "4.M4P1Q1.test:2,S").rename(folder / "new" / "4.M4P1Q1.test")  # moved meanwhile
    (folder / "cur" / "6.M6P1Q1.test:2,S").unlink()  # expunged meanwhile
    request = parse_items(items, True)
    job = FetchJob(
        folder=str(folder),
        request=request,
        seqs=list(range(1, 8)),
        uids=[n * 10 for n in range(1, 8)],
        names=names,
        sizes=[len(to_crlf(text)) for text in texts.values()],
        flags=[frozenset({"\\Seen"})] * 7,
        dates=None,
        recent=[n == 2 for n in range(1, 8)],
    )
    expected = b"".join(
        b"".join(
            render_pieces(
                n,
                MessageInfo(n * 10, f"{n}.M{n}P1Q1.test", frozenset({"\\Seen"}), 0.0, len(to_crlf(texts[n]))),
                n == 2,
                request,
                to_crlf(texts[n]),
                ParsedMessage.parse(to_crlf(texts[n])),
            )
        )
        for n in texts
        if n != 6
    )

    async def scenario() -> tuple[object, bytes]:
        process = SenderProcess()
        await process.start()
        client, ours = socket.socketpair()
        try:
            received = bytearray()
            loop = asyncio.get_running_loop()

            async def drain() -> None:
                while chunk := await loop.sock_recv(client, 1 << 16):
                    received.extend(chunk)

            client.setblocking(False)
            reading = asyncio.ensure_future(drain())
            reply = await process.request(pickle.dumps(job), descriptor=ours.fileno())
            ours.close()  # the sender's copy is closed too: the client sees the end
            await asyncio.wait_for(reading, 30)
            return reply, bytes(received)
        finally:
            client.close()
            await process.close()

    reply, received = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert reply == (True, (len(expected), 1))
    assert received == expected


def test_drain_all_waits_until_nothing_is_left_in_the_transport() -> None:
    """Before a sender writes, the session's own bytes must all have left its transport."""
    from appliance.connection import Connection

    async def scenario() -> tuple[bool, int, int]:
        loop = asyncio.get_running_loop()
        ours, peer = socket.socketpair()

        async def nothing(_connection: Connection) -> None:
            return None

        transport, connection = await loop.create_unix_connection(lambda: Connection(nothing), sock=ours)
        size = 20_000_000
        connection.write(b"x" * size)  # far more than the socket pair holds
        draining = asyncio.ensure_future(connection.drain_all())
        await asyncio.sleep(0.3)  # time in which the drain must not end: the peer reads nothing
        waited = not draining.done()
        received = await loop.run_in_executor(None, _receive, peer, size)
        await asyncio.wait_for(draining, 10)
        left = transport.get_write_buffer_size()
        transport.close()
        peer.close()
        return waited, left, received

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == (True, 0, 20_000_000)


def test_drain_all_ends_in_connection_closed_when_the_client_hangs_up_meanwhile() -> None:
    """On uvloop (the server's loop) a closed transport refuses every call: drain_all must not
    restore the write limits on one the hang-up closed (that was a RuntimeError)."""
    import uvloop

    from appliance.connection import Connection, ConnectionClosed

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ours, peer = socket.socketpair()

        async def nothing(_connection: Connection) -> None:
            return None

        transport, connection = await loop.create_unix_connection(lambda: Connection(nothing), sock=ours)
        connection.write(b"x" * 20_000_000)  # far more than the socket pair holds
        draining = asyncio.ensure_future(connection.drain_all())
        await asyncio.sleep(0.3)  # time in which the drain must not end: the peer reads nothing
        assert not draining.done()
        peer.close()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(draining, 10)
        transport.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))


def test_a_client_gone_while_the_senders_start_gets_nothing_and_nobody_else_gets_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first big FETCH waits for the sender processes to start. A client that hangs up
    meanwhile has its socket closed, and the descriptor's number may go to another connection:
    the sender must get the client's own socket (a copy taken at the start), never that number."""
    from appliance.connection import Connection, ConnectionClosed
    from appliance.imap.sender import Senders

    folder = tmp_path / "INBOX"
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True)
    texts = {n: compose(n) for n in range(1, 4)}
    for n, text in texts.items():
        (folder / "cur" / f"{n}.M{n}P1Q1.test:2,S").write_bytes(text)
    job = FetchJob(
        folder=str(folder),
        request=parse_items([Atom("BODY.PEEK[]")], True),
        seqs=list(texts),
        uids=list(texts),
        names=[f"cur/{n}.M{n}P1Q1.test:2,S" for n in texts],
        sizes=[len(to_crlf(text)) for text in texts.values()],
        flags=[frozenset({"\\Seen"})] * len(texts),
        dates=None,
        recent=[False] * len(texts),
    )

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        ours, peer = socket.socketpair()

        async def nothing(_connection: Connection) -> None:
            return None

        transport, connection = await loop.create_unix_connection(lambda: Connection(nothing), sock=ours)
        senders = Senders(count=1)
        others: list[socket.socket] = []
        try:
            sending = asyncio.ensure_future(senders.send(connection, job))
            await asyncio.sleep(0.02)  # the sender process is not there yet: the window tested
            assert not sending.done(), "the sender process started at once: nothing was tested"
            peer.close()  # the client hangs up; its transport closes its descriptor
            await wait_for_async(transport.is_closing, 1, "the transport closing")
            others = list(socket.socketpair())  # most likely given the number just freed
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(sending, 20)
            others[1].setblocking(False)
            try:
                return others[1].recv(1 << 16)
            except BlockingIOError:
                return b""
        finally:
            for sock in others:
                sock.close()
            transport.close()
            await senders.close()

    with caplog.at_level("INFO", logger="appliance"):
        assert asyncio.run(asyncio.wait_for(scenario(), 60)) == b"", "another connection got the FETCH"
    assert not [record for record in caplog.records if record.levelname == "ERROR"], caplog.text


def _receive(sock: socket.socket, size: int) -> int:
    sock.settimeout(10)
    received = 0
    while received < size:
        received += len(sock.recv(1 << 20))
    return received
