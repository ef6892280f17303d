"""The POP3 server against Python's poplib and a raw socket, on a running `appliance serve`."""

from __future__ import annotations

import base64
import fcntl
import os
import poplib
import re
import socket
import ssl
import time

import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import client_context
from tests.support.pop3 import (
    JOHN,
    MARY,
    PASSWORD,
    RawClient,
    files,
    login,
    maildir,
    message,
    put_message,
    start,
)
from tests.support.wait import wait_for


@pytest.fixture
def server(appliance: ApplianceFactory) -> RunningAppliance:
    return start(appliance)


def plain(login: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{login}\0{password}".encode()).decode()


def test_download_delete_and_the_deletion_holds_after_reconnecting(server: RunningAppliance) -> None:
    for n in range(3):
        put_message(server, message(f"number {n}"))
    client = login(server)
    assert client.stat()[0] == 3
    for n in range(3):
        _, lines, _ = client.retr(n + 1)
        assert f"Subject: number {n}".encode() in lines
    client.dele(2)
    client.quit()
    assert len(files(server)) == 2
    client = login(server)
    count, _ = client.stat()
    subjects = [
        b"".join(line for line in client.retr(i + 1)[1] if line.startswith(b"Subject")) for i in range(count)
    ]
    client.quit()
    assert subjects == [b"Subject: number 0", b"Subject: number 2"]
    server.wait_for_log(
        r"pop3 quit login=john@example\.test client=127\.0\.0\.1 retrieved=3 octets=\d+ deleted=1 "
    )


def test_a_dropped_connection_deletes_nothing(server: RunningAppliance) -> None:
    for n in range(2):
        put_message(server, message(f"number {n}"))
    client = login(server)
    client.dele(1)
    client.dele(2)
    client.sock.shutdown(socket.SHUT_RDWR)  # no QUIT: the session never enters UPDATE
    client.close()
    server.wait_for_log(r"pop3 closed login=john@example\.test .*reason=dropped")
    client = login(server)
    assert client.stat()[0] == 2
    client.quit()
    assert len(files(server)) == 2


def test_rset_unmarks_deletions_and_a_deleted_message_cannot_be_named(server: RunningAppliance) -> None:
    put_message(server, message("one"))
    put_message(server, message("two"))
    client = login(server)
    client.dele(1)
    assert client.stat()[0] == 1
    with pytest.raises(poplib.error_proto, match="deleted"):
        client.retr(1)
    assert [line.split()[0] for line in client.list()[1]] == [b"2"]
    client.rset()
    assert client.stat()[0] == 2
    client.quit()
    assert len(files(server)) == 2


def test_a_second_session_gets_in_use_and_other_processes_see_the_lock(server: RunningAppliance) -> None:
    put_message(server, message("one"))
    first = login(server)
    second = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=15)
    second.stls(client_context(server))
    second.user(JOHN)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PASSWORD)
    # the lock file is locked for this (other) process too
    with open(maildir(server) / "pop3.lock", "rb") as handle, pytest.raises(BlockingIOError):
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # another account is not affected
    assert login(server, MARY).stat()[0] == 0
    first.quit()
    # once the first session is over, the maildrop is free again (here and for other processes)
    with open(maildir(server) / "pop3.lock", "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(handle, fcntl.LOCK_UN)
    second.user(JOHN)
    second.pass_(PASSWORD)
    assert second.stat()[0] == 1
    second.quit()


def test_a_lock_held_by_another_process_gives_in_use(server: RunningAppliance) -> None:
    put_message(server, message("one"))
    with open(maildir(server) / "pop3.lock", "wb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            login(server)
    assert login(server).stat()[0] == 1


def test_uidl_values_are_stable_across_sessions_and_never_reused(server: RunningAppliance) -> None:
    for n in range(3):
        put_message(server, message(f"number {n}"))
    client = login(server)
    first = dict(line.split() for line in client.uidl()[1])
    client.retr(1)
    client.dele(2)
    client.quit()
    put_message(server, message("late"))
    client = login(server)
    second = dict(line.split() for line in client.uidl()[1])
    assert client.uidl(3).split()[1:] == [b"3", second[b"3"]]
    client.quit()
    assert [second[b"1"], second[b"2"]] == [first[b"1"], first[b"3"]]
    assert second[b"3"] not in first.values()
    for uid in second.values():
        assert re.fullmatch(rb"[\x21-\x7e]{1,70}", uid)


def test_retrieved_messages_move_from_new_to_cur_at_quit(server: RunningAppliance) -> None:
    unique = put_message(server, message("one"))
    put_message(server, message("two"))
    client = login(server)
    client.retr(1)
    client.quit()
    cur = [p.name for p in (maildir(server) / "cur").iterdir()]
    new = [p.name for p in (maildir(server) / "new").iterdir()]
    assert len(cur) == 1 and cur[0].startswith(unique) and cur[0].endswith(":2,S")
    assert len(new) == 1 and not new[0].startswith(unique)


def test_messages_come_back_right_whatever_order_they_are_asked_in(server: RunningAppliance) -> None:
    for n in range(1, 41):
        put_message(server, message(f"number {n}", f"body of {n}\n" * n))
    client = login(server)
    order = [5, 1, 2, 3, 40, 39, 6, 7, 8, 9, 10, 11, 12, 20, 21, 22, 4, 13, 14, 15, 16, 17, 18, 19]
    client.dele(23)
    for n in order:
        _, lines, _ = client.retr(n)
        assert lines.count(f"body of {n}".encode()) == n, n
        assert f"Subject: number {n}".encode() in lines
    with pytest.raises(poplib.error_proto):
        client.retr(23)
    for n in range(24, 39):
        assert f"Subject: number {n}".encode() in client.retr(n)[1]
    client.quit()
    assert len(files(server)) == 39


def test_octet_counts_are_crlf_sizes_and_lines_are_dot_stuffed(server: RunningAppliance) -> None:
    body = b"From: a@remote.example\nSubject: dots\n\n.leading dot\n..two\n.\nlast line without newline"
    put_message(server, body)
    client = RawClient(server)
    client.starttls()
    client.command(f"USER {JOHN}")
    assert client.command(f"PASS {PASSWORD}").startswith(b"+OK")
    crlf = body.replace(b"\n", b"\r\n")
    assert client.command("LIST 1") == b"+OK 1 %d" % len(crlf)
    assert client.command("RETR 1").startswith(b"+OK")
    raw = b"\r\n".join(client.multiline())
    assert (
        raw
        == b"From: a@remote.example\r\nSubject: dots\r\n\r\n..leading dot\r\n...two\r\n..\r\nlast line without newline"
    )
    assert client.command("QUIT").startswith(b"+OK")
    client.close()


def test_top_sends_the_header_and_the_first_lines_of_the_body(server: RunningAppliance) -> None:
    put_message(server, message("top", "one\ntwo\nthree\n"))
    client = login(server)
    _, lines, _ = client.top(1, 2)
    assert lines[-4:] == [b"Subject: top", b"", b"one", b"two"]
    _, lines, _ = client.top(1, 0)
    assert lines[-2:] == [b"Subject: top", b""]
    client.quit()


def test_stls_then_auth_plain_with_an_initial_response(server: RunningAppliance) -> None:
    put_message(server, message("one"))
    client = RawClient(server)
    capabilities = client.command("CAPA") and client.multiline()
    assert b"STLS" in capabilities and b"USER" not in capabilities
    client.starttls()
    client.command("CAPA")
    capabilities = client.multiline()
    assert b"SASL PLAIN" in capabilities and b"STLS" not in capabilities
    assert (
        b"RESP-CODES" in capabilities and b"AUTH-RESP-CODE" in capabilities and b"PIPELINING" in capabilities
    )
    assert client.command(f"AUTH PLAIN {plain(JOHN, PASSWORD)}").startswith(b"+OK")
    assert client.command("STAT").startswith(b"+OK 1 ")
    assert client.command("QUIT").startswith(b"+OK")
    client.close()


def test_auth_plain_without_initial_response_and_cancelling_it(server: RunningAppliance) -> None:
    client = RawClient(server, "pop3s")
    assert client.command("AUTH PLAIN") == b"+ "
    assert client.command("*").startswith(b"-ERR")
    assert client.command("AUTH PLAIN") == b"+ "
    assert client.command("not base64 !!").startswith(b"-ERR")
    assert client.command("AUTH PLAIN") == b"+ "
    assert client.command(plain(JOHN, PASSWORD)).startswith(b"+OK")
    assert client.command("QUIT").startswith(b"+OK")
    client.close()


def test_plaintext_logins_before_tls_are_refused_without_reading_a_password(server: RunningAppliance) -> None:
    client = RawClient(server)
    assert client.command(f"USER {JOHN}").startswith(b"-ERR [AUTH]")
    assert client.command(f"PASS {PASSWORD}").startswith(b"-ERR [AUTH]")
    assert client.command(f"AUTH PLAIN {plain(JOHN, PASSWORD)}").startswith(b"-ERR [AUTH]")
    # no "+ " continuation: the server does not ask for the credentials
    assert client.command("AUTH PLAIN").startswith(b"-ERR [AUTH]")
    assert client.command("STAT").startswith(b"-ERR")
    assert client.command("QUIT").startswith(b"+OK")
    client.close()
    assert PASSWORD not in server.log()
    assert "auth result=accepted" not in server.log()


def test_plaintext_logins_are_allowed_when_the_manifest_says_so(appliance: ApplianceFactory) -> None:
    server = start(appliance, server_extra="allow_plaintext_auth = true")
    client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=15)
    assert "USER" in client.capa()
    client.user(JOHN)
    client.pass_(PASSWORD)
    assert client.stat() == (0, 0)
    client.quit()


def test_a_wrong_password_gets_auth_after_a_delay_and_is_never_logged(server: RunningAppliance) -> None:
    client = RawClient(server, "pop3s")
    started = time.monotonic()
    assert client.command(f"USER {JOHN}").startswith(b"+OK")
    assert client.command("PASS Wrong!Secret 42").startswith(b"-ERR [AUTH]")
    assert time.monotonic() - started >= 0.5
    assert client.command(f"AUTH PLAIN {plain('nobody@example.test', 'Other!Secret')}").startswith(
        b"-ERR [AUTH]"
    )
    # the third failure closes the connection
    assert client.command(f"AUTH PLAIN {plain(JOHN, 'Third!Secret')}").startswith(b"-ERR [AUTH]")
    with pytest.raises(ConnectionError):
        client.line()
    client.close()
    server.wait_for_log(
        r"auth result=rejected login=john@example\.test protocol=pop3 listener=pop3s mechanism=USER tls=yes "
        r"client=127\.0\.0\.1 cause=bad_credentials "
    )
    for secret in ("Wrong!Secret", "Other!Secret", "Third!Secret"):
        assert secret not in server.log()


def test_garbage_and_over_long_lines_get_err_and_the_session_stays_usable(server: RunningAppliance) -> None:
    put_message(server, message("one"))
    client = RawClient(server, "pop3s")
    assert client.command(b"\x00\xff\xfe garbage \x1b[31m").startswith(b"-ERR")
    assert client.command(b"X" * 100_000).startswith(b"-ERR")
    assert client.command(b"USER " + b"a" * 600).startswith(b"-ERR")
    assert client.command("RETR 1").startswith(b"-ERR")  # not in AUTHORIZATION
    assert client.command(b"USER \xff\xfe").startswith(b"-ERR")
    assert client.command(f"USER {JOHN}").startswith(b"+OK")
    assert client.command(f"PASS {PASSWORD}").startswith(b"+OK")
    for bad in (
        "RETR",
        "RETR 0",
        "RETR -1",
        "RETR 2",
        "RETR 1 2 x",
        "RETR 99999999999999999",
        "TOP 1",
        "TOP 1 x",
    ):
        assert client.command(bad).startswith(b"-ERR"), bad
    assert client.command("\r").startswith(b"-ERR")
    assert client.command("STAT").startswith(b"+OK 1 ")
    assert client.command("QUIT").startswith(b"+OK")
    client.close()
    assert "Traceback" not in server.log()


def test_pipelined_commands_are_answered_in_order(server: RunningAppliance) -> None:
    for n in range(3):
        put_message(server, message(f"number {n}"))
    client = RawClient(server, "pop3s")
    client.send(
        f"USER {JOHN}\r\nPASS {PASSWORD}\r\nSTAT\r\nRETR 1\r\nRETR 2\r\nUIDL\r\nNOOP\r\nQUIT\r\n".encode()
    )
    assert client.line().startswith(b"+OK")
    assert client.line().startswith(b"+OK")
    assert client.line().startswith(b"+OK 3 ")
    for n in range(2):
        assert client.line().startswith(b"+OK")
        assert f"Subject: number {n}".encode() in client.multiline()
    assert client.line().startswith(b"+OK")
    assert len(client.multiline()) == 3
    assert client.line() == b"+OK"
    assert client.line().startswith(b"+OK")
    client.close()


def stuffed(body: bytes) -> list[bytes]:
    """The lines RFC 1939 sends for a stored LF message: dot-stuffed, without the final "."."""
    return [b"." + line if line.startswith(b".") else line for line in body.rstrip(b"\n").split(b"\n")]


def test_a_pipelined_download_with_deletions_between_comes_back_byte_for_byte(
    server: RunningAppliance,
) -> None:
    # Sequential RETRs of messages already read ahead are answered on the spot, the others by
    # the session; mixed in one burst, every reply must still be the right one, in order.
    bodies = [
        message(
            f"number {n}", "".join(f".line {i} of {n}\n" if i % 3 == 0 else f"text {i}\n" for i in range(n))
        )
        for n in range(1, 121)
    ]
    for body in bodies:
        put_message(server, body)
    client = RawClient(server, "pop3s")
    assert client.command(f"USER {JOHN}").startswith(b"+OK")
    assert client.command(f"PASS {PASSWORD}").startswith(b"+OK")
    commands = [f"RETR {n}" for n in range(1, 61)]
    commands += [
        "DELE 62",
        "RETR 61",
        "RETR 62",
        "LIST 63",
        "RETR 63",
        "RETR 100",
        "RETR 64",
        "RSET",
        "RETR 62",
    ]
    commands += [f"RETR {n}" for n in range(65, 121)] + ["DELE 1", "STAT"]
    refused = {commands.index("RETR 62")}  # the first one: after DELE 62, before RSET
    for position, command in enumerate(commands):
        if position % 5 == 0:  # in bursts of five: each may start while the session waits
            client.send("".join(command + "\r\n" for command in commands[position : position + 5]).encode())
        reply = client.line()
        verb, _, number = command.partition(" ")
        if position in refused:
            assert reply.startswith(b"-ERR"), (command, reply)
        elif verb == "RETR":
            body = bodies[int(number) - 1]
            assert reply == b"+OK %d octets" % (len(body) + body.count(b"\n")), (command, reply)
            assert client.multiline() == stuffed(body), command
        else:
            assert reply.startswith(b"+OK"), (command, reply)
    assert client.command("QUIT").startswith(b"+OK")
    client.close()
    names = files(server)
    assert len(names) == 119 and all(name.endswith(":2,S") for name in names)  # all but 1: in cur/


def test_downloading_keeps_a_session_alive_and_silence_ends_it(appliance: ApplianceFactory) -> None:
    server = start(appliance, limits='pop3_idle_timeout = "1s"')
    for n in range(12):
        put_message(server, message(f"number {n}"))
    client = RawClient(server, "pop3s")
    assert client.command(f"USER {JOHN}").startswith(b"+OK")
    assert client.command(f"PASS {PASSWORD}").startswith(b"+OK")
    started = time.monotonic()
    for n in range(1, 9):  # 2.4 s of one RETR every 0.3 s: longer than the timeout
        assert client.command(f"RETR {n}").startswith(b"+OK"), n
        assert f"Subject: number {n - 1}".encode() in client.multiline()
        time.sleep(0.3)
    silent = time.monotonic()
    assert client.line().startswith(b"-ERR")
    with pytest.raises(ConnectionError):
        client.line()
    client.close()
    assert 0.5 <= time.monotonic() - silent < 4 and silent - started > 2
    server.wait_for_log(r"reason=idle_timeout retrieved=8 ")
    assert len(files(server)) == 12


def test_commands_sent_with_stls_before_the_handshake_are_discarded(server: RunningAppliance) -> None:
    client = RawClient(server)
    client.send(f"STLS\r\nUSER {JOHN}\r\n".encode())  # the USER line travels in clear
    assert client.line().startswith(b"+OK")
    client.wrap(client_context(server))
    # had the clear-text USER been kept, this PASS would log in (RFC 2595 §4, CVE-2011-0411)
    assert client.command(f"PASS {PASSWORD}").startswith(b"-ERR Send USER first")
    client.close()


def peak_memory_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_twenty_megabyte_message_round_trips_byte_for_byte_and_streams(server: RunningAppliance) -> None:
    line = b".dot-stuffed line that is long enough to fill twenty megabytes quickly ......\n"
    body = b"From: a@remote.example\nSubject: big\n\n" + line * (20_000_000 // len(line))
    put_message(server, body)
    client = login(server)
    listing = client.list(1)
    assert isinstance(listing, bytes)
    size = int(listing.split()[2])
    assert size == len(body.replace(b"\n", b"\r\n"))
    peak_before = peak_memory_mb(server.process.pid)
    _, lines, octets = client.retr(1)
    # streamed in chunks: the server's peak memory grew by far less than the message
    assert peak_memory_mb(server.process.pid) - peak_before < 10
    client.quit()
    assert b"\r\n".join(lines) + b"\r\n" == body.replace(b"\n", b"\r\n")
    assert octets >= size


def test_an_unreachable_directory_gives_sys_temp(appliance: ApplianceFactory) -> None:
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.1", 0))
    port = closed_port.getsockname()[1]  # bound, never listening: connections are refused
    body = (
        '[directories."cloudtech.local"]\n'
        'type = "active-directory"\n'
        f'servers = ["ldaps://127.0.0.1:{port}"]\n'
        "connect_timeout = 1\n"
        '[domains."example.test".accounts]\n'
        'john = { active_directory = { domain = "cloudtech.local", user = "john" } }\n'
    )
    try:
        server = start(appliance, body=body)
        client = RawClient(server, "pop3s")
        client.command(f"USER {JOHN}")
        assert client.command(f"PASS {PASSWORD}").startswith(b"-ERR [SYS/TEMP]")
        client.close()
    finally:
        closed_port.close()


def test_an_unreadable_maildir_gives_sys_temp(server: RunningAppliance) -> None:
    root = maildir(server)
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("a file where the Maildir should be")
    client = RawClient(server, "pop3s")
    client.command(f"USER {JOHN}")
    assert client.command(f"PASS {PASSWORD}").startswith(b"-ERR [SYS/TEMP]")
    os.unlink(root)
    # the lock was given back: the next try succeeds
    client.command(f"USER {JOHN}")
    assert client.command(f"PASS {PASSWORD}").startswith(b"+OK")
    client.close()


def test_an_idle_client_is_disconnected_even_in_the_middle_of_auth(appliance: ApplianceFactory) -> None:
    server = start(appliance, limits='pop3_idle_timeout = "1s"')
    idle = RawClient(server, "pop3s")
    halfway = RawClient(server, "pop3s")
    started = time.monotonic()
    assert halfway.command("AUTH PLAIN") == b"+ "
    assert idle.line().startswith(b"-ERR")
    assert halfway.line().startswith(b"-ERR")
    for client in (idle, halfway):
        with pytest.raises(ConnectionError):
            client.line()
        client.close()
    assert 0.9 <= time.monotonic() - started < 5
    server.wait_for_log(r"reason=idle_timeout")
    assert "Traceback" not in server.log()


def test_sessions_are_counted_while_open(server: RunningAppliance) -> None:
    client = login(server)
    wait_for(lambda: pop3_sessions(server) == 1)
    client.quit()
    wait_for(lambda: pop3_sessions(server) == 0)


def pop3_sessions(server: RunningAppliance) -> int:
    sessions = server.status().get("sessions")
    assert isinstance(sessions, dict)
    return int(sessions.get("pop3", 0))


def test_pop3s_serves_a_renewed_certificate_without_a_restart(server: RunningAppliance) -> None:
    from appliance.tls import generate_self_signed

    first = RawClient(server, "pop3s")
    assert isinstance(first.sock, ssl.SSLSocket)
    old = first.sock.getpeercert(binary_form=True)
    first.close()
    generate_self_signed(server.cafile, server.data_dir / "tls" / "key.pem", "mail.example.test")
    second = RawClient(server, "pop3s")  # verifies against the new certificate file
    assert isinstance(second.sock, ssl.SSLSocket)
    new = second.sock.getpeercert(binary_form=True)
    assert new != old
    assert new == ssl.PEM_cert_to_DER_cert(server.cafile.read_text())
    second.close()


def test_a_maildir_key_that_rfc_1939_does_not_allow_as_uidl_gets_a_stable_digest() -> None:
    from appliance.pop3.maildrop import unique_id

    short = "1764040000.M1P2Q3.host,S=10,W=12"
    assert unique_id(short) == short
    long = "1764040000.M123456P1234567Q89." + "a-very-long-host-name" * 3 + ",S=4400,W=4470"
    assert len(long) > 70
    assert unique_id(long) == unique_id(long) and re.fullmatch(r"h[0-9a-f]{40}", unique_id(long))
    assert unique_id(long) != unique_id(long.replace("S=4400", "S=4401"))
    assert re.fullmatch(r"h[0-9a-f]{40}", unique_id("with space,S=1,W=1"))
