"""The SMTP session's own rules, byte for byte over raw sockets against `appliance serve`:
STARTTLS and what was pipelined after it, the idle and DATA timeouts, too many unknown commands,
line limits, PIPELINING, and the replies of the commands that only answer."""

from __future__ import annotations

import base64
import select
import time

import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import client_context
from tests.support.smtp import JOHN, MARY, PASSWORD, RawClient, start, stored

HOST = "mail.example.test"


@pytest.fixture
def server(appliance: ApplianceFactory) -> RunningAppliance:
    return start(appliance, listeners=("smtp", "submission"), limits="max_line_length = 1000")


def starttls(client: RawClient, server: RunningAppliance) -> None:
    client.wrap(client_context(server))


def test_the_greeting_names_the_host_and_carries_no_enhanced_code(server: RunningAppliance) -> None:
    client = RawClient(server)
    assert client.greeting == f"220 {HOST} ESMTP appliance"
    assert client.command("HELO client.example") == f"250 {HOST}"
    client.close()


def test_bytes_pipelined_after_starttls_are_discarded_and_the_session_starts_over(
    appliance: ApplianceFactory,
) -> None:
    server = start(appliance, listeners=("submission",), server_extra="allow_plaintext_auth = true")
    client = RawClient(server, "submission")
    assert client.command("EHLO client.example").endswith("AUTH PLAIN LOGIN")
    plain = base64.b64encode(f"\0{JOHN}\0{PASSWORD}".encode()).decode()
    assert client.command(f"AUTH PLAIN {plain}").startswith("235 2.7.0")
    # RFC 3207 §4.2, CVE-2011-0411: the NOOP and RSET travel in clear in the same packet as
    # STARTTLS; they must never be answered, before or after the handshake.
    client.send(b"STARTTLS\r\nNOOP\r\nRSET\r\n")
    assert client.reply() == "220 2.0.0 Ready to start TLS"
    starttls(client, server)
    # The first reply after the handshake is to the first command sent over TLS.
    assert client.command("MAIL FROM:<john@example.test>") == "503 5.5.1 send HELO first"
    assert "STARTTLS" not in client.command("EHLO client.example")
    # RFC 3207 §4.2: the login made before the handshake is forgotten.
    assert client.command("MAIL FROM:<john@example.test>") == "530 5.7.0 Authentication required"
    assert client.command("STARTTLS") == "503 5.5.1 TLS already active"
    assert client.command("QUIT") == "221 2.0.0 Bye"
    assert client.closed()


def test_an_idle_client_gets_421_4_4_2_and_is_disconnected(appliance: ApplianceFactory) -> None:
    server = start(appliance, listeners=("smtp",), limits="command_timeout = 1")
    client = RawClient(server)
    started = time.monotonic()
    assert client.command("EHLO client.example").startswith("250")
    assert client.reply() == f"421 4.4.2 {HOST} timeout exceeded, closing connection"
    assert client.closed()
    assert 0.9 < time.monotonic() - started < 10
    server.wait_for_log(r"timeout client=127\.0\.0\.1 listener=smtp")


def test_the_data_timeout_not_the_command_timeout_applies_while_a_message_arrives(
    appliance: ApplianceFactory,
) -> None:
    server = start(appliance, listeners=("smtp",), limits="command_timeout = 1\ndata_timeout = 30")
    client = RawClient(server)
    client.command("EHLO client.example")
    client.command("MAIL FROM:<a@remote.example>")
    client.command(f"RCPT TO:<{JOHN}>")
    assert client.command("DATA").startswith("354")
    client.send(b"Subject: slow\r\n\r\nfirst half\r\n")
    # Longer than the command timeout: the session waits for the rest of the message, silent.
    readable, _, _ = select.select([client.sock], [], [], 2.5)
    assert readable == []
    client.send(b"second half\r\n.\r\n")
    assert client.reply().startswith("250 2.0.0 OK id=")
    assert len(stored(server)) == 1
    # Back between commands, the command timeout holds again.
    assert client.reply().startswith("421 4.4.2")
    assert client.closed()


def test_too_many_unknown_commands_get_421_and_the_connection_is_closed(server: RunningAppliance) -> None:
    client = RawClient(server)
    replies = [client.command("XBOGUS1"), client.command("XBOGUS2"), client.command("NOOP")]
    replies += [client.command(f"XBOGUS{n}") for n in (3, 4)]
    assert replies == [
        '500 5.5.2 command "XBOGUS1" not recognized',
        '500 5.5.2 command "XBOGUS2" not recognized',
        "250 2.0.0 OK",  # a known command neither counts nor resets the count
        '500 5.5.2 command "XBOGUS3" not recognized',
        '500 5.5.2 command "XBOGUS4" not recognized',
    ]
    # RFC 5321 §3.8: the server closes the connection only after QUIT or with a 421.
    assert client.command("XBOGUS5") == f"421 4.7.0 {HOST} too many unrecognized commands, closing connection"
    assert client.closed()


def test_pipelined_transactions_are_answered_in_order_in_one_exchange(server: RunningAppliance) -> None:
    client = RawClient(server)
    client.command("EHLO client.example")
    # RFC 2920: a whole session in one packet; each reply in the order of its command.
    client.send(
        f"MAIL FROM:<a@remote.example>\r\nRCPT TO:<{JOHN}>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\n"
        f"Subject: one\r\n\r\nfirst\r\n.\r\n"
        f"RSET\r\nMAIL FROM:<b@remote.example>\r\nRCPT TO:<{MARY}>\r\nDATA\r\n"
        f"Subject: two\r\n\r\nsecond\r\n.\r\nNOOP\r\nQUIT\r\n".encode()
    )
    replies = [client.reply() for _ in range(11)]
    assert [reply[:9] for reply in replies] == [
        "250 2.1.0",
        "250 2.1.5",
        "550 5.1.1",
        "354 End d",
        "250 2.0.0",
        "250 2.0.0",
        "250 2.1.0",
        "250 2.1.5",
        "354 End d",
        "250 2.0.0",
        "250 2.0.0",
    ]
    assert replies[4].startswith("250 2.0.0 OK id=") and replies[9].startswith("250 2.0.0 OK id=")
    assert client.reply() == "221 2.0.0 Bye"
    assert client.closed()
    assert len(stored(server, JOHN)) == len(stored(server, MARY)) == 1


def test_a_command_line_over_max_line_length_with_its_cr_gets_500(server: RunningAppliance) -> None:
    client = RawClient(server)
    noop = "NOOP " + "x" * 994  # 999 bytes, 1000 with the CR
    assert client.command(noop) == "250 2.0.0 OK"
    assert client.command(noop + "x") == "500 5.5.2 Command line too long"
    assert client.command(noop + "x" * 5000) == "500 5.5.2 Command line too long"
    assert client.command("NOOP") == "250 2.0.0 OK"  # the next line reads cleanly


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"", "500 5.5.2 bad syntax"),
        (b"\xffNOOP", "500 5.5.2 bad syntax"),
        (b"\x00EHLO x", '500 5.5.2 command "?EHLO" not recognized'),
        (b"noop whatever", "250 2.0.0 OK"),
        (b"RSET x", "501 5.5.4 Syntax: RSET"),
        (b"QUIT x", "501 5.5.4 Syntax: QUIT"),
        (b"EHLO", "501 5.5.4 Syntax: EHLO hostname"),
        (b"HELO", "501 5.5.4 Syntax: HELO hostname"),
        (b"STARTTLS x", "501 5.5.4 Syntax: STARTTLS"),
        (b"VRFY", "501 5.5.4 Syntax: VRFY <address>"),
        (b"VRFY john", "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
        (b"EXPN team", "502 5.5.1 EXPN not implemented"),
        (b"HELP", "250 2.0.0 Supported commands: HELP NOOP QUIT RSET VRFY"),
        (b"HELP noop", "250 2.0.0 Syntax: NOOP [ignored]"),
        (b"HELP MAIL", "501 5.5.4 Supported commands: HELP NOOP QUIT RSET VRFY"),
        (b"MAIL FROM:<a@remote.example>", "503 5.5.1 send HELO first"),
        (b"AUTH PLAIN", "503 5.5.1 send EHLO first"),
        (b"DATA", "503 5.5.1 send HELO first"),
    ],
)
def test_each_line_gets_its_reply_before_helo(server: RunningAppliance, line: bytes, reply: str) -> None:
    client = RawClient(server)
    assert client.command(line) == reply
    assert client.command("NOOP") == "250 2.0.0 OK"  # the session goes on
    client.close()
