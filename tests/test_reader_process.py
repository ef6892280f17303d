"""The reader process (appliance/store/reader.py, child.py): message reads done beside the server.

A real process on a real socket pair: what it reads is compared with what the same function gives
in this process, replies of every size (up to 20 MB) and many at once must reach the right
callers, errors keep their type, and a killed process fails what it had and is replaced. With the
server: POP3 RETR goes through it, and a dead one costs one temporary error, not the session.
"""

from __future__ import annotations

import asyncio
import errno
import os
import poplib
import random
import re
import signal
import time
from pathlib import Path

import pytest

from appliance.pop3 import readahead
from appliance.pop3.maildrop import read_wire
from appliance.store.maildir import Maildir
from appliance.store.reader import ReaderProcess
from tests.fixtures.appliance import ApplianceFactory
from tests.support import pop3 as pop3_support
from tests.support.wait import wait_for
from tests.test_delivery_process import killed_in_flight, pid_alive


def run(coroutine_function, *args):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coroutine_function(*args), 120))


def message(size: int, seed: int) -> bytes:
    """LF text of about `size` bytes, with lines that POP3 must dot-stuff."""
    rng = random.Random(seed)
    lines = [b"Subject: %d" % seed, b""]
    total = 0
    while total < size:
        line = rng.choice([b".", b".dot first", b"plain text line", b"x" * rng.randint(0, 200)])
        lines.append(line)
        total += len(line) + 1
    return b"\n".join(lines) + b"\n"


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    root = tmp_path / "mail" / "example.test" / "john"
    Maildir(root).ensure()
    return root


def store(maildir: Path, key: str, data: bytes, sub: str = "cur") -> str:
    path = maildir / sub / (f"{key}:2,S" if sub == "cur" else key)
    path.write_bytes(data)
    return str(path)


def place(maildir: Path, key: str, data: bytes, path: str) -> tuple[str, int, str, str]:
    wire_size = len(data) + data.count(b"\n")  # W=: the size with CRLF line ends
    return path, wire_size, str(maildir), key


def test_reads_give_what_the_same_function_gives_here(maildir: Path) -> None:
    texts = {f"k{n}": message(size, n) for n, size in enumerate([0, 10, 4_000, 70_000, 1_000_000])}
    places = {
        n: place(maildir, key, data, store(maildir, key, data)) for n, (key, data) in enumerate(texts.items())
    }
    # One moved to new/ after it was listed, one gone: found where it is now / an error outcome.
    moved = message(3_000, 99)
    places[10] = place(maildir, "moved", moved, str(maildir / "cur" / "moved:2,S"))
    store(maildir, "moved", moved, sub="new")
    places[11] = (str(maildir / "cur" / "gone:2,S"), 100, str(maildir), "gone")

    async def scenario() -> dict[int, object]:
        process = ReaderProcess()
        await process.start()
        try:
            result: dict[int, object] = await process.run(readahead._read_all, places)
            return result
        finally:
            await process.close()

    there = run(scenario)
    here = readahead._read_all(places)
    assert set(there) == set(here) == set(places)
    for index, outcome in here.items():
        if isinstance(outcome, bytes):
            assert there[index] == outcome, index
        else:
            assert isinstance(there[index], FileNotFoundError) and isinstance(outcome, FileNotFoundError)
            assert there[index].errno == errno.ENOENT  # type: ignore[union-attr]
    assert there[10] == read_wire(places[10])
    assert b"\r\n..dot first\r\n" in there[0] + there[3] + there[4]  # type: ignore[operator]


def test_replies_of_every_size_and_many_at_once_reach_their_callers(maildir: Path) -> None:
    sizes = [0, 1, 511, 512, 65_536, 300_000, 2_000_000] * 6 + [20_000_000]
    random.Random(7).shuffle(sizes)
    texts = [message(size, n) for n, size in enumerate(sizes)]
    places = [place(maildir, f"m{n}", data, store(maildir, f"m{n}", data)) for n, data in enumerate(texts)]

    async def scenario() -> list[bytes]:
        process = ReaderProcess()
        await process.start()
        try:
            return list(await asyncio.gather(*(process.run(read_wire, where) for where in places)))
        finally:
            await process.close()

    results = run(scenario)
    assert len(results) == len(places)
    for where, got in zip(places, results, strict=True):
        assert got == read_wire(where), where[3]


def test_an_exception_comes_back_as_itself(maildir: Path) -> None:
    async def scenario() -> OSError:
        process = ReaderProcess()
        await process.start()
        try:
            with pytest.raises(OSError) as caught:
                await process.run(os.stat, str(maildir / "no-such-file"))
            return caught.value
        finally:
            await process.close()

    error = run(scenario)
    assert isinstance(error, FileNotFoundError)
    assert error.filename == str(maildir / "no-such-file")


def test_a_killed_process_fails_its_reads_and_the_next_one_starts_anew(
    maildir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = message(4_000, 1)
    where = place(maildir, "k", data, store(maildir, "k", data))

    async def scenario() -> None:
        process = ReaderProcess()
        await process.start()
        first = process.pid
        assert first is not None
        try:
            error = await killed_in_flight(first, process.run(read_wire, where))
            assert error.errno == errno.EIO
            monkeypatch.setattr(ReaderProcess, "restart_pause", 0.0)
            assert await process.run(read_wire, where) == read_wire(where)
            assert process.pid not in (None, first)
        finally:
            await process.close()
        assert not pid_alive(first)

    run(scenario)


# -- with the server ---------------------------------------------------------------------------


def reader_pid(log: str) -> int:
    match = re.search(r"reader process started pid=(\d+)", log)
    assert match, log
    return int(match.group(1))


def test_pop3_reads_through_the_process_and_survives_its_death(appliance: ApplianceFactory) -> None:
    running = pop3_support.start(appliance, listeners=("pop3",), server_extra="allow_plaintext_auth = true")
    pid = reader_pid(running.log())
    texts = [message(3_000 + n, n) for n in range(12)]
    for data in texts:
        pop3_support.put_message(running, data)
    client = poplib.POP3("127.0.0.1", running.ports["pop3"], timeout=20)
    try:
        client.user(pop3_support.JOHN)
        client.pass_(pop3_support.PASSWORD)
        _reply, lines, _octets = client.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == texts[0].replace(b"\n", b"\r\n")
        os.kill(pid, signal.SIGKILL)
        running.wait_for_log(rf"reader process stopped pid={pid} exit=-9")
        # Message 10 was not read ahead: within the restart pause, a temporary error; the
        # session goes on.
        with pytest.raises(poplib.error_proto) as caught:
            client.retr(10)
        assert caught.value.args[0].startswith(b"-ERR [SYS/TEMP]")
        time.sleep(ReaderProcess.restart_pause)  # a set pause, part of the behaviour under test
        for number in (10, 2, 12):
            _reply, lines, _octets = client.retr(number)
            assert b"\r\n".join(lines) + b"\r\n" == texts[number - 1].replace(b"\n", b"\r\n")
        client.quit()
    finally:
        client.close()
    assert reader_pid(running.log().split(f"pid={pid}", 1)[1]) != pid
    new_pid = reader_pid(running.log().split(f"pid={pid}", 1)[1])
    assert running.stop() == 0
    wait_for(lambda: not pid_alive(new_pid), what="the reader process gone with the server")
