"""Logs an admin can follow: a session id on every line of a connection, the SMTP accept line
naming the queue id the outbound queue's lines carry to the end, syslog priorities under journald."""

from __future__ import annotations

import os
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.loglines import under_journald
from tests.fixtures.appliance import ApplianceFactory
from tests.support import smtp
from tests.support.dns_server import DNSServer
from tests.support.queue import Behaviour, Peer, free_port_on, message

MX = "127.0.0.2"
ALICE = "alice@example.test"


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    server = DNSServer()
    yield server
    server.close()


def body(resolver: str = "127.0.0.1:53", port: int = 25) -> str:
    return f"""
[outbound]
resolver = "{resolver}"
smtp_port = {port}
retry_intervals = ["1s"]

[domains."example.test".accounts]
alice = {{ password_hash = "{smtp.HASH}" }}
john = {{ password_hash = "{smtp.HASH}" }}
mary = {{}}
"""


def lines_with(log: str, needle: str) -> list[str]:
    return [line for line in log.splitlines() if needle in line]


def test_one_grep_of_the_queue_id_follows_a_message_from_smtp_accept_to_delivered_and_bounced(
    appliance: ApplianceFactory, dns_server: DNSServer
) -> None:
    port = free_port_on(MX)
    dns_server.add("remote.test", "MX", "10 mx1.remote.test.")
    dns_server.add("mx1.remote.test", "A", MX)
    peer = Peer(MX, port, behaviour=Behaviour(rcpt={"nobody@remote.test": "550 5.1.1 no such user here"}))
    try:
        server = appliance.start(
            body(dns_server.address, port),
            listeners=("smtp",),
            server_extra='trusted_networks = ["127.0.0.1/32"]',
        )
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=15) as client:
            client.sendmail(
                ALICE,
                ["bob@remote.test", "nobody@remote.test", "mary@example.test"],
                message(ALICE, "bob@remote.test", "followed"),
            )
        peer.wait_for(1)
        accept = server.wait_for_log(
            r"delivered id=(\S+) queue=(\S+) from=alice@example\.test .* session=(\w+)"
        )
        queue_id, session = accept.group(2), accept.group(3)
        assert queue_id != "-"
        server.wait_for_log(rf"queue done id={queue_id} ")
        server.wait_for_log(rf"bounce sent id={queue_id} ")
    finally:
        peer.stop()
    story = lines_with(server.log(), queue_id)
    events = [re.search(r"INFO \S+ (\w+(?: \w+)?) ", line).group(1) for line in story]  # type: ignore[union-attr]
    assert events[0] == "queued" and f"session={session}" in story[0], story
    assert "delivered" in events  # the SMTP accept line
    assert any("delivery" in line and "to=bob@remote.test result=delivered" in line for line in story), story
    assert any("delivery" in line and "to=nobody@remote.test result=failed" in line for line in story), story
    assert "bounce sent" in events and "queue done" in events, story


def test_every_line_of_a_connection_names_its_session_and_connections_differ(
    appliance: ApplianceFactory,
) -> None:
    server = appliance.start(body(), listeners=("submission",))
    with smtp.login(server) as client:
        client.sendmail(smtp.JOHN, ["mary@example.test"], smtp.message(sender=smtp.JOHN))
    with smtp.connect(server, "submission") as client, pytest.raises(smtplib.SMTPAuthenticationError):
        client.login(smtp.JOHN, "wrong password")
    accepted = server.wait_for_log(r"auth result=accepted .* session=(\w+)").group(1)
    rejected = server.wait_for_log(r"auth result=rejected .* session=(\w+)").group(1)
    assert accepted != rejected and len(accepted) == 12
    first = lines_with(server.log(), f"session={accepted}")
    events = [re.search(r"INFO \S+ (\w+)", line).group(1) for line in first]  # type: ignore[union-attr]
    assert events == ["connect", "auth", "delivered", "disconnect"], first
    # The connections ran one after the other: every SMTP and login line from the first one's
    # connect to its disconnect is its own and names it.
    log = server.log().splitlines()
    during = log[log.index(first[0]) : log.index(first[-1]) + 1]
    assert [line for line in during if re.search(r" appliance\.(smtp|auth) ", line)] == first
    # Lines of no connection carry no session.
    assert all("session=" not in line for line in lines_with(server.log(), "listening name="))


def test_under_journald_lines_carry_syslog_priorities_and_no_timestamp(
    appliance: ApplianceFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "appliance"
    directory.mkdir()
    log_path = directory / "serve.log"  # the fixture truncates it, keeping its inode
    log_path.touch()
    info = os.stat(log_path)
    server = appliance.start(
        body(), listeners=("pop3",), env={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
    )
    server.wait_for_log(r"(?m)^<6>appliance\.serve listening name=pop3 ")
    offset = server.log_size()
    server.write_manifest(body() + "ghost = { enabeld = true }\n")
    server.wait_for_log(r"(?m)^<3>appliance\.serve reload rejected ", after=offset)
    lines = [line for line in server.log().splitlines() if line]
    assert all(re.match(r"<[0-7]>appliance\.", line) for line in lines), lines
    assert not any(re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", line) for line in lines)


def test_a_journal_stream_that_is_not_our_output_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A child that inherited $JOURNAL_STREAM with its output sent elsewhere keeps the plain format.
    other = tmp_path / "other"
    other.touch()
    info = os.stat(other)
    with open(tmp_path / "output", "w") as output:
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert not under_journald(output.fileno())
        mine = os.fstat(output.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{mine.st_dev}:{mine.st_ino}")
        assert under_journald(output.fileno())


def test_the_line_that_ends_a_session_on_reload_names_that_session(appliance: ApplianceFactory) -> None:
    server = appliance.start(body(), listeners=("submission",))
    with smtp.login(server) as client:
        session = server.wait_for_log(
            r"auth result=accepted login=john@example\.test .* session=(\w+)"
        ).group(1)
        offset = server.log_size()
        server.write_manifest(
            body().replace(f'john = {{ password_hash = "{smtp.HASH}" }}', "john = { enabled = false }")
        )
        revoked = server.wait_for_log(r"session revoked login=john@example\.test .*", after=offset)
        assert revoked.group(0).endswith(f"session={session}")
        with pytest.raises(smtplib.SMTPException):
            client.noop()
            client.mail(smtp.JOHN)
