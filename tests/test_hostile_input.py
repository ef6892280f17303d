"""Hostile input the smaller defects let through (issue 21, item 12), sent for real: control bytes
from the wire that must reach the log escaped, IMAP folder names that cannot be stored or are not
modified UTF-7, and a stored hash the password libraries cannot read."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.imap import RawClient as Raw
from tests.support.lines import LineClient, ListenerClient
from tests.test_imap import DOMAINS, NO_AUTOBAN, PASSWORD

RAW_CONTROLS = (b"\x1b", b"\r", b"\x00")
EVIL = b"ev\x1b[2Jil\x00x\ry"  # clears a terminal, cuts a C string, rewrites a line


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    factory = ApplianceFactory(tmp_path_factory.mktemp("hostile-input"))
    try:
        yield factory.start(
            DOMAINS + NO_AUTOBAN,
            listeners=("smtp", "pop3", "imaps"),
            server_extra="allow_plaintext_auth = true",
        )
    finally:
        factory.close()


def open_socket(server: RunningAppliance, listener: str) -> ListenerClient:
    return ListenerClient(server, listener)


def smtp_reply(client: LineClient) -> bytes:
    """One whole SMTP reply, continuation lines and all."""
    lines = []
    for _ in range(100):
        line = client.readline()
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            break
    return b"".join(lines)


def read_line(client: LineClient) -> bytes:
    return client.readline()


def smtp_session(server: RunningAppliance) -> None:
    sock = open_socket(server, "smtp")
    try:
        assert smtp_reply(sock).startswith(b"220")
        for line in (
            b"HELO " + EVIL,
            b"EHLO " + EVIL,
            b"MAIL FROM:<" + EVIL + b"@example.test>",
            b"MAIL FROM:<sender@remote.example> " + EVIL,
            b"RCPT TO:<" + EVIL + b"@example.test>",
            b"RCPT TO:<user01@example.test> " + EVIL,
            b"X" + EVIL,
            b"VRFY " + EVIL,
            b"AUTH " + EVIL,
        ):
            sock.send(line + b"\r\n")
            assert smtp_reply(sock)[:1] in (b"2", b"3", b"4", b"5")
        sock.send(b"QUIT\r\n")
        smtp_reply(sock)
    finally:
        sock.close()


def smtp_auth(server: RunningAppliance) -> None:
    """AUTH PLAIN is offered after STARTTLS only; a login name full of controls, over plain text
    where the manifest allows it."""
    sock = open_socket(server, "smtp")
    try:
        assert smtp_reply(sock).startswith(b"220")
        sock.send(b"EHLO client.example\r\n")
        smtp_reply(sock)
        plain = base64.b64encode(b"\0" + EVIL + b"@example.test\0wrong")
        sock.send(b"AUTH PLAIN " + plain + b"\r\n")
        assert smtp_reply(sock)[:1] in (b"4", b"5")
    finally:
        sock.close()


def pop3_session(server: RunningAppliance) -> None:
    sock = open_socket(server, "pop3")
    try:
        assert read_line(sock).startswith(b"+OK")
        for line in (b"X" + EVIL, b"USER " + EVIL + b"@example.test", b"PASS " + EVIL, b"APOP " + EVIL):
            sock.send(line + b"\r\n")
            assert read_line(sock)[:1] in (b"+", b"-")
        sock.send(b"QUIT\r\n")
        read_line(sock)
    finally:
        sock.close()


def imap_session(server: RunningAppliance) -> None:
    raw = Raw(server, "imaps")
    try:
        login = b"ev\x1bil\x00\r@example.test"
        raw.send(b"a1 LOGIN {%d+}\r\n%s wrong\r\n" % (len(login), login))
        raw.response("a1")
        raw.send(b"a2 X" + EVIL + b"\r\n")
        raw.response("a2")
        raw.login("user01@example.test", PASSWORD)
        name = b"\x1b[2J\x00\r"
        raw.send(b"a3 CREATE {%d+}\r\n%s\r\n" % (len(name), name))
        raw.response("a3")
        raw.send(b"a4 SELECT {%d+}\r\n%s\r\n" % (len(name), name))
        raw.response("a4")
        raw.send(b"a5 LOGOUT\r\n")
        raw.response("a5")
    finally:
        raw.close()


def test_control_bytes_from_every_protocol_reach_the_log_escaped(server: RunningAppliance) -> None:
    start = server.log_size()
    smtp_session(server)
    smtp_auth(server)
    pop3_session(server)
    imap_session(server)
    server.wait_for_log(r"imap closed login=user01@example\.test", after=start)
    server.wait_for_log(r"pop3 closed|auth result=\w+ login=\S+ protocol=pop3", after=start)
    written = server.log_path.read_bytes()
    for control in RAW_CONTROLS:
        assert control not in written, (control, written[-3000:])
    assert "ev\\x1b[2Jil" in server.log()[start:] or "ev\\u001b[2Jil" in server.log()[start:]


# -- IMAP folder names ---------------------------------------------------------------------------
def create(raw: Raw, name: str) -> bytes:
    return raw.command(f'CREATE "{name}"')[1]


def test_a_folder_name_longer_than_a_directory_entry_is_refused_with_cannot(server: RunningAppliance) -> None:
    raw = Raw(server)
    try:
        raw.login("user02@example.test", PASSWORD)
        start = server.log_size()
        assert b"NO [CANNOT]" in create(raw, "x" * 255)  # "." + 255 bytes: one byte too many
        assert b"OK" in create(raw, "y" * 254)  # exactly NAME_MAX with its "."
        # The directory is "." + the whole hierarchical name: a short leaf does not make it fit.
        assert b"NO [CANNOT]" in create(raw, "a." + "b" * 300)
        assert b"OK" in create(raw, "p" * 100 + ".c" + "c" * 100)
        # RENAME of the parent: its child's whole name grows past NAME_MAX; nothing moves.
        _, done = raw.command(f'RENAME "{"p" * 100}" "{"q" * 160}"')
        assert b"NO [CANNOT]" in done, done
        listed = b"\n".join(raw.ok('LIST "" "*"'))
        assert b"p" * 100 + b".c" in listed and b"q" * 160 not in listed
        assert b"OK" in raw.command(f'RENAME "{"p" * 100}" "{"q" * 140}"')[1]
        assert "Traceback" not in server.log()[start:] and "SERVERBUG" not in server.log()[start:]
        raw.ok("LOGOUT")
    finally:
        raw.close()


@pytest.mark.parametrize(
    "name",
    [
        "&Jjo",  # the BASE64 run never ends
        "&AGE-",  # BASE64 of "a": printable US-ASCII must stand for itself
        "&2D3-",  # a high surrogate with no low one
        "&3gA-",  # a lone low surrogate
        "&Jj!-",  # "!" is not modified BASE64
        "&AMl-",  # bits left over that are not zero
        "&ZeVnLIqe",  # unterminated after a valid run
        "caf\u00e9",  # 8-bit: modified UTF-7 has none
    ],
)
def test_a_name_that_is_not_modified_utf7_is_refused(server: RunningAppliance, name: str) -> None:
    raw = Raw(server)
    try:
        raw.login("user03@example.test", PASSWORD)
        quoted = b'"' + name.encode() + b'"'
        for command in (b"CREATE ", b"SELECT ", b"RENAME Sent ", b"APPEND "):
            tail = b" {3+}\r\nx\r\n" if command == b"APPEND " else b""
            _, done = raw.command(command + quoted + tail)
            assert b" NO [CANNOT]" in done or b" BAD " in done, (command, done)
        listed = b"\n".join(raw.ok('LIST "" "*"'))
        assert name.encode() not in listed
        raw.ok("LOGOUT")
    finally:
        raw.close()


def test_valid_modified_utf7_names_are_still_created(server: RunningAppliance) -> None:
    raw = Raw(server)
    try:
        raw.login("user04@example.test", PASSWORD)
        for name in ("&AMk-t&AOk-", "&ZeVnLIqe-", "R&AOk-sum&AOk-.&2D3eAA-", "a&-b"):
            assert b"OK" in create(raw, name), name
            raw.ok(f'SELECT "{name}"')
        raw.ok("LOGOUT")
    finally:
        raw.close()


def test_a_stored_hash_the_library_cannot_read_refuses_the_login_with_a_cause(
    appliance: ApplianceFactory,
) -> None:
    # Its form passes validation (argon2id, every field present) but argon2 refuses m=1.
    unreadable = "$argon2id$v=19$m=1,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNo"
    body = f'[domains."example.test".accounts]\nodd = {{ password_hash = "{unreadable}" }}\n'
    running = appliance.start(body, listeners=("imaps",))
    raw = Raw(running)
    try:
        _, done = raw.command('LOGIN odd@example.test "whatever"')
        assert b" NO " in done
        running.wait_for_log(r"auth result=rejected login=odd@example\.test .*cause=stored_hash_invalid")
        assert "Traceback" not in running.log()
    finally:
        raw.close()
