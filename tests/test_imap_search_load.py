"""One user's SEARCH must not stall everyone else: the attack over real sockets against a running
`appliance serve` - thousands of keys refused at once, the largest allowed search matched while
another client is answered."""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from appliance.auth.passwords import hash_password
from appliance.imap.search import MAX_KEYS
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance

PASSWORD = "Imap!Passw0rd"
HASH = hash_password(PASSWORD)
DOMAINS = (
    '[domains."example.test".accounts]\n'
    f'searcher = {{ password_hash = "{HASH}" }}\nother = {{ password_hash = "{HASH}" }}\n'
    "\n[security.auto_ban]\nenabled = false\n"
)
MESSAGES = 200  # one batch (fetch.BATCH_MESSAGES): matched in one go
BODY = "".join(f"line {n} of a message body that a search has to read through\r\n" for n in range(250))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    factory = ApplianceFactory(tmp_path_factory.mktemp("imap-search-load"))
    try:
        running = factory.start(
            DOMAINS, listeners=("smtp", "imap"), server_extra="allow_plaintext_auth = true"
        )
        with smtplib.SMTP("127.0.0.1", running.ports["smtp"], timeout=30) as client:
            for n in range(MESSAGES):
                data = f"From: a@remote.example\r\nSubject: message {n}\r\n\r\n{BODY}".encode()
                client.sendmail("a@remote.example", ["searcher@example.test"], data)
        yield running
    finally:
        factory.close()


class Client:
    def __init__(self, server: RunningAppliance, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=120)
        self.file = self.sock.makefile("rb")
        self.file.readline()
        assert self.command(b"a LOGIN " + user.encode() + b" " + PASSWORD.encode())[-1].startswith(b"a OK")

    def command(self, line: bytes) -> list[bytes]:
        """Send one tagged command (tag "a"); every line of the answer up to the tagged one."""
        self.sock.sendall(line + b"\r\n")
        lines = []
        for _ in range(100_000):
            reply = self.file.readline(1 << 20)
            if not reply:
                raise ConnectionError("closed")
            lines.append(reply)
            if reply.startswith(b"a "):
                return lines
        raise AssertionError("no tagged reply")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _keys(count: int) -> bytes:
    """`count` keys NOT BODY zzN, in lines under 8,000 octets joined by non-synchronizing literals
    (RFC 7888) as a client may send them: no line is over the limit, the command is."""
    lines, line = [], b""
    for n in range(count):
        key = b"NOT BODY zz%d" % n
        if len(line) + len(key) > 8000:
            argument = b"zz%d" % n
            lines.append(line + b"NOT BODY {%d+}" % len(argument))
            line = argument + b" "
        else:
            line += key + b" "
    return b"\r\n".join([*lines, line.rstrip()])


def test_a_search_of_thousands_of_keys_is_refused_at_once(server: RunningAppliance) -> None:
    client = Client(server, "searcher@example.test")
    try:
        assert client.command(b"a SELECT INBOX")[-1].startswith(b"a OK")
        started = time.monotonic()
        reply = client.command(b"a SEARCH " + _keys(12_021))
        assert reply[-1].startswith(b"a BAD Too many search keys"), reply[-1][:200]
        print(f"refused in {(time.monotonic() - started) * 1000:.0f} ms")
        assert client.command(b"a NOOP")[-1].startswith(b"a OK")
    finally:
        client.close()


def test_other_clients_are_answered_while_the_largest_search_runs(server: RunningAppliance) -> None:
    searcher, other = Client(server, "searcher@example.test"), Client(server, "other@example.test")
    try:
        assert searcher.command(b"a SELECT INBOX")[-1].startswith(b"a OK")
        searcher.command(b"a SEARCH BODY zzz")  # the messages read once, so the next search only matches
        done = threading.Event()
        result: list[list[bytes]] = []

        def search() -> None:
            try:
                result.append(searcher.command(b"a SEARCH " + _keys(MAX_KEYS // 2)))  # NOT counts
            finally:
                done.set()

        thread = threading.Thread(target=search)
        started = time.monotonic()
        thread.start()
        answered_during = []
        for _ in range(10_000):  # NOOPs round trips while the search runs
            if done.is_set():
                break
            other.command(b"a NOOP")
            answered_during.append(time.monotonic() - started)
        thread.join(120)
        took = time.monotonic() - started
        assert result and result[-1][-1].startswith(b"a OK")
        assert len(result[-1]) == 2 and result[-1][0].count(b" ") == MESSAGES + 1  # every message matches
        gaps = [b - a for a, b in zip([0.0, *answered_during], answered_during, strict=False)]
        print(
            f"search took {took:.2f} s; {len(answered_during)} NOOPs meanwhile, longest wait {max(gaps):.3f} s"
        )
        # The other client was answered all along, not once the search was over.
        assert len(answered_during) >= 5
        assert max(gaps) < took / 2
    finally:
        searcher.close()
        other.close()
