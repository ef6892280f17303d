"""One user's SEARCH must not stall everyone else: the attack over real sockets against a running
`appliance serve` - thousands of keys refused at once, the largest allowed search matched while
another client is answered."""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Iterator

import pytest

from appliance.auth.passwords import hash_password
from appliance.imap.search import MAX_KEYS
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.imap import RawClient

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


def connect(server: RunningAppliance, user: str) -> RawClient:
    client = RawClient(server, "imap", timeout=120)
    client.login(user, PASSWORD)
    return client


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
    client = connect(server, "searcher@example.test")
    try:
        client.ok("SELECT INBOX")
        started = time.monotonic()
        _, done = client.command(b"SEARCH " + _keys(12_021))
        assert done.split(b" ", 1)[1].startswith(b"BAD Too many search keys"), done[:200]
        print(f"refused in {(time.monotonic() - started) * 1000:.0f} ms")
        client.ok("NOOP")
    finally:
        client.close()


def test_other_clients_are_answered_while_the_largest_search_runs(server: RunningAppliance) -> None:
    searcher, other = connect(server, "searcher@example.test"), connect(server, "other@example.test")
    try:
        searcher.ok("SELECT INBOX")
        searcher.command("SEARCH BODY zzz")  # the messages read once, so the next search only matches
        done = threading.Event()
        result: list[tuple[list[bytes], bytes]] = []

        def search() -> None:
            try:
                result.append(searcher.command(b"SEARCH " + _keys(MAX_KEYS // 2)))  # NOT counts
            finally:
                done.set()

        thread = threading.Thread(target=search)
        started = time.monotonic()
        thread.start()
        answered_during = []
        for _ in range(10_000):  # NOOPs round trips while the search runs
            if done.is_set():
                break
            other.ok("NOOP")
            answered_during.append(time.monotonic() - started)
        thread.join(120)
        took = time.monotonic() - started
        assert result
        untagged, completion = result[-1]
        assert completion.split(b" ", 2)[1] == b"OK", completion
        assert len(untagged) == 1 and untagged[0].count(b" ") == MESSAGES + 1  # every message matches
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
