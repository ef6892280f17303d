"""What an IMAP client that has not logged in can make the server spend: no continuation for a
command it may not use, no literal bigger than a LOGIN needs, and a deadline for each whole
command. Each test is the attack, over a raw socket to a running `appliance serve`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.imap import RawClient

PASSWORD = "Imap!Passw0rd"
DOMAINS = f'[domains."example.test".accounts]\njohn = {{ password_hash = "{hash_password(PASSWORD)}" }}\n'
COMMAND_TIMEOUT = 2.0
NO_AUTOBAN = "\n[security.auto_ban]\nenabled = false\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    factory = ApplianceFactory(tmp_path_factory.mktemp("imap-before-login"))
    try:
        yield factory.start(
            DOMAINS + NO_AUTOBAN,
            listeners=("imap",),
            server_extra="allow_plaintext_auth = true",
            limits=f'command_timeout = "{COMMAND_TIMEOUT}s"\nmax_connections_per_client = 200',
        )
    finally:
        factory.close()


def connect(server: RunningAppliance) -> RawClient:
    client = RawClient(server, "imap", timeout=10)
    assert client.greeting.startswith(b"* OK")
    return client


def test_append_before_login_gets_no_continuation_and_nothing_is_spooled(server: RunningAppliance) -> None:
    client = connect(server)
    try:
        client.send(b"a1 APPEND INBOX {17600000}\r\n")
        reply = client.line()
        assert reply.startswith(b"a1 BAD "), reply  # not "+ Ready for literal data"
        client.send(b"a2 NOOP\r\n")
        assert client.line().startswith(b"a2 OK")  # still in step with the client
        spool = server.data_dir / "tmp" / "imap-append"
        assert not spool.exists() or not any(spool.iterdir())
    finally:
        client.close()


def test_a_literal_bigger_than_a_login_needs_is_not_asked_for_before_login(server: RunningAppliance) -> None:
    client = connect(server)
    try:
        client.send(b"a1 LOGIN {100000}\r\n")
        reply = client.line()
        assert reply.startswith(b"a1 NO [TOOBIG]"), reply
        # A password literal of ordinary size still works.
        client.send(b"a2 LOGIN {17}\r\n")
        assert client.line().startswith(b"+ ")
        client.send(b"john@example.test {13}\r\n")
        assert client.line().startswith(b"+ ")
        client.send(PASSWORD.encode() + b"\r\n")
        assert client.line().startswith(b"a2 OK")
    finally:
        client.close()


def test_a_big_unasked_literal_before_login_ends_the_connection_unread(server: RunningAppliance) -> None:
    client = connect(server)
    try:
        client.send(b"a1 LOGIN {1000000+}\r\n" + b"x" * 1000)
        # At once: not after reading a megabyte, nor after the command timeout.
        assert client.closed(COMMAND_TIMEOUT / 2)
    finally:
        client.close()


def test_a_literal_trickled_before_login_does_not_outlive_the_command_timeout(
    server: RunningAppliance,
) -> None:
    client = connect(server)
    started = time.monotonic()
    closed = False
    try:
        client.send(b"a1 LOGIN {200}\r\n")
        assert client.line().startswith(b"+ ")
        # One byte every 0.5 s: each arrives well within the timeout, the command never does.
        for _ in range(40):
            try:
                client.send(b"x")
            except OSError:
                closed = True
                break
            if client.closed(0.5):
                closed = True
                break
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert closed
    assert elapsed < COMMAND_TIMEOUT + 3.0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_many_connections_holding_literals_before_login_cost_little_memory(server: RunningAppliance) -> None:
    before = _rss_kib(server.process.pid)
    clients = [connect(server) for _ in range(100)]
    try:
        for client in clients:
            try:
                client.send(b"a1 LOGIN {1000000+}\r\n" + b"x" * 1_000_000)
            except OSError:
                pass  # the server closed it before taking the megabyte
        grown = _rss_kib(server.process.pid) - before
        for client in clients:
            assert client.closed(10.0)
    finally:
        for client in clients:
            client.close()
    print(f"server RSS grew {grown / 1024:.1f} MiB with 100 connections sending 1 MB literals")
    assert grown < 30 * 1024
