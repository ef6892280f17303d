"""The IMAP server against imaplib, imapclient and a raw socket, on a running `appliance serve`.

One appliance serves the whole module; each test logs in as an account of its own, so tests do
not see each other's mail. Tests that need other settings (a restart, limits) start their own.
"""

from __future__ import annotations

import base64
import imaplib
import re
import smtplib
import time
from collections.abc import Iterator

import imapclient
import pytest

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.imap import RawClient
from tests.support.lines import client_context

PASSWORD = "Imap!Passw0rd"
HASH = hash_password(PASSWORD)
ACCOUNTS = [f"user{n:02d}" for n in range(1, 41)]
_accounts = iter(ACCOUNTS)
DOMAINS = (
    '[domains."example.test"]\n[domains."example.test".accounts]\n'
    + "".join(f'{name} = {{ password_hash = "{HASH}" }}\n' for name in ACCOUNTS)
    + 'gone = { password_hash = "'
    + HASH
    + '", enabled = false }\n'
)
# Failed logins in one test must not get 127.0.0.1 banned for the next ones.
NO_AUTOBAN = "\n[security.auto_ban]\nenabled = false\n"
SPECIAL_USE = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}


def message(subject: str, body: str = "Hello.\r\n", sender: str = "a@remote.example") -> bytes:
    return (
        f"From: Ann Example <{sender}>\r\nTo: someone@example.test\r\nSubject: {subject}\r\n"
        f"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <{subject.replace(' ', '.')}@remote.example>\r\n"
        f"\r\n{body}"
    ).encode()


# -- fixtures and clients ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    factory = ApplianceFactory(tmp_path_factory.mktemp("imap"))
    try:
        yield factory.start(DOMAINS + NO_AUTOBAN, listeners=("smtp", "imap", "imaps"))
    finally:
        factory.close()


@pytest.fixture
def user() -> str:
    """An account no other test uses."""
    return f"{next(_accounts)}@example.test"


def imaps(server: RunningAppliance, address: str) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=30
    )
    client.login(address, PASSWORD)
    return client


def imapclient_session(server: RunningAppliance, address: str) -> imapclient.IMAPClient:
    client = imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=client_context(server), timeout=30
    )
    client.login(address, PASSWORD)
    return client


def deliver(server: RunningAppliance, address: str, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.sendmail("a@remote.example", [address], body)


def folder_names(client: imaplib.IMAP4) -> dict[str, str]:
    """LIST "" "*" as name → attributes."""
    status, lines = client.list('""', "*")
    assert status == "OK"
    found = {}
    for line in lines:
        assert isinstance(line, bytes)
        match = re.match(rb'^\((.*?)\) "\." (.*)$', line)
        assert match, line
        found[match.group(2).decode().strip('"')] = match.group(1).decode()
    return found


# -- connection, capabilities, login -----------------------------------------------------------------
def test_before_tls_the_server_offers_starttls_and_refuses_plaintext_logins(server: RunningAppliance) -> None:
    raw = RawClient(server, "imap")
    assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    capabilities = raw.ok("CAPABILITY")[0].split()
    assert b"STARTTLS" in capabilities and b"LOGINDISABLED" in capabilities
    assert not any(word.startswith(b"AUTH=") for word in capabilities)
    _, done = raw.command(f'LOGIN user01@example.test "{PASSWORD}"')
    assert done.split()[1:3] == [b"NO", b"[PRIVACYREQUIRED]"]
    _, done = raw.command("AUTHENTICATE PLAIN " + base64.b64encode(b"\0x\0y").decode())
    assert done.split()[1:3] == [b"NO", b"[PRIVACYREQUIRED]"]
    raw.starttls()
    capabilities = raw.ok("CAPABILITY")[0].split()
    assert b"AUTH=PLAIN" in capabilities and b"STARTTLS" not in capabilities
    assert b"LOGINDISABLED" not in capabilities
    raw.close()


def test_commands_pipelined_after_starttls_are_dropped(server: RunningAppliance, user: str) -> None:
    raw = RawClient(server, "imap")
    raw.send("s1 STARTTLS\r\ns2 NOOP\r\n")  # CVE-2011-0411: s2 must not run inside TLS
    assert raw.line().startswith(b"s1 OK ")
    raw.wrap(client_context(server))
    untagged, done = raw.command(f'LOGIN {user} "{PASSWORD}"')
    assert untagged == [] and b" OK " in done  # no answer to s2 came first
    assert raw.ok("NOOP") == []
    raw.close()


def test_imaplib_logs_in_over_starttls_and_sees_the_extensions(server: RunningAppliance, user: str) -> None:
    client = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
    client.starttls(ssl_context=client_context(server))
    status, _ = client.login(user, PASSWORD)
    assert status == "OK"
    capabilities = set(client.capability()[1][0].split())
    for word in (b"IDLE", b"UIDPLUS", b"MOVE", b"LITERAL+", b"NAMESPACE", b"UNSELECT", b"SPECIAL-USE"):
        assert word in capabilities
    client.logout()
    server.wait_for_log(
        rf"auth result=accepted login={re.escape(user)} protocol=imap listener=imap mechanism=LOGIN tls=yes "
        rf"client=127\.0\.0\.1 cause=ok "
    )
    server.wait_for_log(
        rf"imap closed login={re.escape(user)} client=127\.0\.0\.1 reason=logout commands=\d+ "
    )


def test_authenticate_plain_with_and_without_initial_response(server: RunningAppliance, user: str) -> None:
    raw = RawClient(server)
    credentials = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    _, done = raw.command(f"AUTHENTICATE PLAIN {credentials}")  # SASL-IR, RFC 4959
    assert b"OK [CAPABILITY IMAP4rev1" in done
    raw.close()
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=30
    )
    status, _ = client.authenticate("PLAIN", lambda _: f"\0{user}\0{PASSWORD}".encode())
    assert status == "OK"
    client.logout()
    server.wait_for_log(
        rf"auth result=accepted login={re.escape(user)} protocol=imap listener=imaps mechanism=PLAIN tls=yes "
    )


def test_failed_logins_look_alike_and_the_third_one_closes_the_connection(
    server: RunningAppliance, user: str
) -> None:
    raw = RawClient(server)
    answers = []
    for login, password in (
        (user, "wrong"),
        ("nobody@example.test", PASSWORD),
        ("gone@example.test", PASSWORD),
    ):
        _, done = raw.command(f'LOGIN {login} "{password}"')
        answers.append(done.split(b" ", 1)[1])
    assert answers == [b"NO [AUTHENTICATIONFAILED] Authentication failed"] * 3
    assert raw.line() == b"* BYE Too many failed logins; closing"
    with pytest.raises(ConnectionError):
        raw.line()
    server.wait_for_log(
        rf"auth result=rejected login={re.escape(user)} protocol=imap listener=imaps mechanism=LOGIN tls=yes "
        r"client=127\.0\.0\.1 cause=bad_credentials "
    )
    assert "wrong" not in server.log().replace("wrong_password", "")
    assert PASSWORD not in server.log()


def test_capability_noop_id_namespace_enable_and_logout(server: RunningAppliance, user: str) -> None:
    raw = RawClient(server)
    assert raw.ok("NOOP") == []
    assert raw.ok('ID ("name" "test" "version" "1")') == [b'* ID ("name" "appliance" "vendor" "appliance")']
    raw.ok("ID NIL")
    _, done = raw.command("NAMESPACE")
    assert b" BAD " in done  # not before login
    raw.login(user, PASSWORD)
    assert raw.ok("NAMESPACE") == [b'* NAMESPACE (("" ".")) NIL NIL']
    assert raw.ok("ENABLE CONDSTORE") == [b"* ENABLED"]
    untagged, done = raw.command("LOGOUT")
    assert untagged == [b"* BYE Logging out"] and b" OK " in done
    raw.close()


# -- folders -----------------------------------------------------------------------------------------
def test_a_new_account_has_the_special_use_folders(server: RunningAppliance, user: str) -> None:
    client = imaps(server, user)
    folders = folder_names(client)
    assert "INBOX" in folders
    for name, attribute in SPECIAL_USE.items():
        assert attribute in folders[name].split(), folders
    _, lines = client.list('""', '""')
    assert lines == [b'(\\Noselect) "." ""']  # RFC 3501 §6.3.8: the delimiter
    client.logout()
    # RFC 5258 selection option SPECIAL-USE, as Thunderbird asks
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    listed = raw.ok('LIST (SPECIAL-USE) "" "*"')
    assert {line.rsplit(b" ", 1)[1].strip(b'"').decode() for line in listed} == set(SPECIAL_USE)


def test_list_patterns_children_and_subscriptions(server: RunningAppliance, user: str) -> None:
    client = imaps(server, user)
    for name in ("Projects", "Projects.2024", "Projects.2024.Q1", "Other"):
        assert client.create(name)[0] == "OK"
    folders = folder_names(client)
    assert "\\HasChildren" in folders["Projects"] and "\\HasNoChildren" in folders["Other"]
    top = [
        line.rsplit(b" ", 1)[1].strip(b'"') for line in client.list('""', "%")[1] if isinstance(line, bytes)
    ]
    assert b"Projects" in top and b"Projects.2024" not in top
    under = [line.rsplit(b" ", 1)[1].strip(b'"') for line in client.list("Projects.", "%")[1]]
    assert under == [b"Projects.2024"]
    deep = {line.rsplit(b" ", 1)[1].strip(b'"') for line in client.list('""', "Projects*")[1]}
    assert deep == {b"Projects", b"Projects.2024", b"Projects.2024.Q1"}
    assert client.list('""', "inbox")[1] == [b'(\\HasNoChildren) "." INBOX']
    assert client.subscribe("Projects.2024")[0] == "OK"
    subscribed = {line.rsplit(b" ", 1)[1].strip(b'"') for line in client.lsub('""', "*")[1] if line}
    assert b"Projects.2024" in subscribed and b"Other" not in subscribed
    assert client.unsubscribe("Projects.2024")[0] == "OK"
    subscribed = {line.rsplit(b" ", 1)[1].strip(b'"') for line in client.lsub('""', "*")[1] if line}
    assert b"Projects.2024" not in subscribed
    client.logout()


def test_create_rename_delete_and_status(server: RunningAppliance, user: str) -> None:
    client = imapclient_session(server, user)
    client.create_folder("Receipts")
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="ALREADYEXISTS"):
        client.create_folder("Receipts")
    client.append("Receipts", message("one"), flags=[b"\\Seen"])
    client.append("Receipts", message("two"))
    status = client.folder_status("Receipts", [b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN"])
    assert status[b"MESSAGES"] == 2 and status[b"UNSEEN"] == 1 and status[b"UIDNEXT"] == 3
    assert status[b"UIDVALIDITY"] > 0
    client.rename_folder("Receipts", "Paid")
    assert client.folder_status("Paid", [b"MESSAGES"])[b"MESSAGES"] == 2
    assert not client.folder_exists("Receipts")
    client.delete_folder("Paid")
    assert not client.folder_exists("Paid")
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="NONEXISTENT"):
        client.select_folder("Paid")
    with pytest.raises(imapclient.exceptions.IMAPClientError):
        client.create_folder("bad/name")
    client.logout()


# -- SELECT, APPEND, FETCH, STORE -------------------------------------------------------------------
def test_select_and_examine_answer_as_rfc_3501_says(server: RunningAppliance, user: str) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    raw.ok(b"APPEND INBOX (\\Seen) {%d+}\r\n" % len(message("seen")) + message("seen"))
    raw.ok(b"APPEND INBOX {%d+}\r\n" % len(message("new")) + message("new"))
    untagged, done = raw.command("SELECT inbox")
    text = b"\n".join(untagged)
    # RFC 3501 §2.3.2: appended messages are new arrivals, \Recent for the first session to select.
    assert b"* 2 EXISTS" in untagged and b"* 2 RECENT" in untagged
    assert re.search(rb"^\* FLAGS \(\\Answered \\Deleted \\Draft \\Flagged \\Seen\)$", text, re.M)
    assert re.search(rb"^\* OK \[PERMANENTFLAGS \(.*\\Seen.*\\\*\)\]", text, re.M)
    assert re.search(rb"^\* OK \[UNSEEN 2\]", text, re.M)
    assert re.search(rb"^\* OK \[UIDVALIDITY \d+\]", text, re.M)
    assert re.search(rb"^\* OK \[UIDNEXT 3\]", text, re.M)
    assert done.split()[1:3] == [b"OK", b"[READ-WRITE]"]
    untagged, done = raw.command("EXAMINE INBOX")
    assert done.split()[1:3] == [b"OK", b"[READ-ONLY]"]
    assert b"* OK [PERMANENTFLAGS ()] Read-only mailbox" in untagged
    assert b"* 0 RECENT" in untagged  # the SELECT before was told of them
    _, done = raw.command("STORE 1 +FLAGS (\\Deleted)")
    assert b" NO " in done
    _, done = raw.command("FETCH 2 BODY[]")  # does not set \Seen in a read-only folder
    untagged = raw.ok("FETCH 2 FLAGS")
    assert untagged == [b"* 2 FETCH (FLAGS ())"]
    raw.close()


def test_append_returns_appenduid_and_fetch_returns_what_was_stored(
    server: RunningAppliance, user: str
) -> None:
    client = imaps(server, user)
    body = message("Fetch me", "First line.\r\nSecond line.\r\n")
    status, data = client.append("INBOX", "(\\Flagged $Work)", '"14-Jul-2020 10:20:30 +0200"', body)
    assert status == "OK"
    appenduid = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0])
    assert appenduid and appenduid.group(2) == b"1"
    client.select("INBOX")
    status, data = client.fetch("1", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    head, content = data[0]
    assert content == body
    assert b"UID 1" in head and b"RFC822.SIZE %d" % len(body) in head
    assert b'INTERNALDATE "14-Jul-2020' in head or b"INTERNALDATE" in head
    assert b"\\Flagged" in head and b"$Work" in head and b"\\Seen" not in head
    _, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (Subject)])")
    assert data[0][1] == b"Subject: Fetch me\r\n\r\n"
    _, data = client.fetch("1", "(BODY.PEEK[TEXT]<6.4>)")
    assert data[0][0].endswith(b"BODY[TEXT]<6> {4}") and data[0][1] == b"line"
    _, data = client.fetch("1", "(RFC822.HEADER)")
    assert data[0][1].endswith(b"\r\n\r\n") and b"Subject: Fetch me" in data[0][1]
    _, data = client.fetch("1", "(ENVELOPE)")
    assert b'"Fetch me"' in data[0] and b'"remote.example"' in data[0]
    _, data = client.fetch("1", "(BODYSTRUCTURE)")
    assert b'"TEXT" "PLAIN"' in data[0].upper()
    _, data = client.fetch("1", "FAST")
    assert b"\\Seen" not in data[0]
    _, data = client.fetch("1", "(BODY[])")  # without PEEK: \Seen is set and reported
    assert b"\\Seen" in data[0][0] or b"\\Seen" in data[-1]
    _, data = client.uid("FETCH", "1", "(FLAGS)")
    assert b"UID 1" in data[0] and b"\\Seen" in data[0]
    client.logout()


def test_store_reports_flags_unless_silent_and_keywords_become_flags(
    server: RunningAppliance, user: str
) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    for n in range(3):
        raw.ok(b"APPEND INBOX {%d+}\r\n" % len(message(f"m{n}")) + message(f"m{n}"))
    raw.ok("SELECT INBOX")  # takes \Recent from the new messages
    raw.ok("SELECT INBOX")
    assert raw.ok("STORE 1:2 +FLAGS (\\Answered)") == [
        b"* 1 FETCH (FLAGS (\\Answered))",
        b"* 2 FETCH (FLAGS (\\Answered))",
    ]
    assert raw.ok("STORE 1 -FLAGS.SILENT \\Answered") == []
    assert raw.ok("UID STORE 3 FLAGS (\\Seen \\Draft)") == [b"* 3 FETCH (UID 3 FLAGS (\\Draft \\Seen))"]
    untagged = raw.ok("STORE 3 +FLAGS (Project)")
    assert b"* FLAGS (" in untagged[0] and b"Project" in untagged[0]
    assert untagged[-1] == b"* 3 FETCH (FLAGS (\\Draft \\Seen Project))"
    _, done = raw.command("STORE 1 +FLAGS (\\Bogus)")
    assert b" BAD " in done
    _, done = raw.command("STORE 9 +FLAGS (\\Seen)")
    assert b" BAD " in done  # RFC 3501 §9: no message 9
    assert raw.ok("UID STORE 9 +FLAGS (\\Seen)") == []  # a UID that does not exist is ignored
    raw.close()


def test_search_and_uid_search(server: RunningAppliance, user: str) -> None:
    client = imaps(server, user)
    client.append("INBOX", "(\\Seen)", None, message("alpha report", sender="boss@corp.example"))
    client.append("INBOX", None, None, message("beta", "needle in the text\r\n"))
    client.append("INBOX", "(\\Flagged)", None, message("gamma"))
    client.select("INBOX")
    assert client.search(None, "ALL") == ("OK", [b"1 2 3"])
    assert client.search(None, "UNSEEN") == ("OK", [b"2 3"])
    assert client.search(None, "FLAGGED") == ("OK", [b"3"])
    assert client.search(None, "FROM", "boss") == ("OK", [b"1"])
    assert client.search(None, "SUBJECT", '"beta"') == ("OK", [b"2"])
    assert client.search(None, "BODY", "needle") == ("OK", [b"2"])
    assert client.search(None, "OR", "SEEN", "FLAGGED") == ("OK", [b"1 3"])
    assert client.search("UTF-8", "SUBJECT", "gamma") == ("OK", [b"3"])
    assert client.uid("SEARCH", "UID", "2:*") == ("OK", [b"2 3"])
    client.store("1", "+FLAGS", "\\Deleted")
    client.expunge()
    assert client.uid("SEARCH", "ALL") == ("OK", [b"2 3"])
    assert client.search(None, "ALL") == ("OK", [b"1 2"])
    status, data = client.search("KOI8-R", "ALL")
    assert status == "NO" and b"[BADCHARSET" in data[0]
    with pytest.raises(imaplib.IMAP4.error):
        client.search(None, "NOSUCHKEY")
    client.logout()


def test_copy_move_and_uid_expunge_with_uidplus(server: RunningAppliance, user: str) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    for n in range(4):
        raw.ok(b"APPEND INBOX {%d+}\r\n" % len(message(f"m{n}")) + message(f"m{n}"))
    raw.ok("SELECT INBOX")
    _, done = raw.command("COPY 1:2 Archive")
    assert re.search(rb"OK \[COPYUID \d+ 1:2 1:2\]", done)
    _, done = raw.command("COPY 1 Nowhere")
    assert b"NO [TRYCREATE]" in done
    _, done = raw.command(b"APPEND Nowhere {%d+}\r\n" % len(message("x")) + message("x"))
    assert b"NO [TRYCREATE]" in done
    untagged, done = raw.command("UID MOVE 3 Trash")
    assert re.match(rb"\* OK \[COPYUID \d+ 3 1\]", untagged[0]) and untagged[1] == b"* 3 EXPUNGE"
    assert b" OK " in done
    raw.ok("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    assert raw.ok("UID EXPUNGE 2") == [b"* 2 EXPUNGE"]  # only UID 2, though 1 and 4 are \Deleted too
    assert raw.ok("UID SEARCH DELETED") == [b"* SEARCH 1 4"]
    assert raw.ok("EXPUNGE") == [b"* 1 EXPUNGE", b"* 1 EXPUNGE"]
    untagged = raw.ok("STATUS Archive (MESSAGES)")
    assert untagged == [b'* STATUS "Archive" (MESSAGES 2)'] or untagged == [b"* STATUS Archive (MESSAGES 2)"]
    raw.close()


def test_close_expunges_silently_and_unselect_does_not(server: RunningAppliance, user: str) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    for n in range(2):
        raw.ok(b"APPEND INBOX {%d+}\r\n" % len(message(f"m{n}")) + message(f"m{n}"))
    raw.ok("SELECT INBOX")
    raw.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert raw.ok("UNSELECT") == []
    raw.ok("SELECT INBOX")
    assert raw.ok("CHECK") == []
    assert raw.ok("CLOSE") == []
    _, done = raw.command("FETCH 1 FLAGS")
    assert b" BAD " in done  # no folder selected any more
    assert b"* 1 EXISTS" in raw.ok("SELECT INBOX")
    raw.close()


# -- literals and malformed input -------------------------------------------------------------------
def test_append_of_a_20_mb_literal_with_literal_plus(server: RunningAppliance, user: str) -> None:
    line = b"x" * 998 + b"\r\n"
    body = message("big", "") + line * (20_000_000 // len(line))
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    raw.send(b"a1 APPEND INBOX {%d+}\r\n" % len(body))
    raw.sock.sendall(body)
    raw.send(b"\r\n")
    _, done = raw.response("a1")
    assert re.match(rb"a1 OK \[APPENDUID \d+ 1\]", done), done
    raw.ok("SELECT INBOX")
    assert raw.ok("FETCH 1 (RFC822.SIZE)") == [b"* 1 FETCH (RFC822.SIZE %d)" % len(body)]
    untagged = raw.ok("FETCH 1 (BODY.PEEK[]<19000000.10>)")
    assert untagged == [b"* 1 FETCH (BODY[]<19000000> {10}\r\n" + body[19_000_000:19_000_010] + b")"]
    spool = server.data_dir / "tmp" / "imap-append"
    assert not spool.exists() or list(spool.iterdir()) == []
    raw.close()


def test_a_synchronizing_literal_gets_a_continuation_and_a_too_big_one_is_refused(
    server: RunningAppliance, user: str
) -> None:
    raw = RawClient(server)
    raw.send(b"a1 LOGIN {%d}\r\n" % len(user))
    assert raw.line().startswith(b"+ ")
    raw.send(user.encode() + b" {%d}\r\n" % len(PASSWORD))
    assert raw.line().startswith(b"+ ")
    raw.send(PASSWORD.encode() + b"\r\n")
    assert raw.response("a1")[1].startswith(b"a1 OK ")
    raw.send(b"a2 APPEND INBOX {30000000}\r\n")  # over the 25 MB default: no continuation
    assert raw.line().startswith(b"a2 NO [TOOBIG]")
    raw.send(b"a3 APPEND INBOX {30000000+}\r\n")  # already on its way: read and thrown away
    raw.sock.sendall(b"y" * 30_000_000 + b"\r\n")
    assert raw.response("a3")[1].startswith(b"a3 NO [TOOBIG]")
    assert raw.ok("NOOP") == []
    raw.close()


def test_malformed_commands_get_bad_and_the_session_goes_on(server: RunningAppliance, user: str) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    raw.send(b"\r\n")
    assert raw.line().startswith(b"* BAD ")
    raw.send(b"+oops NOOP\r\n")
    assert raw.line().startswith(b"* BAD ")
    for text, expected in (
        (b"FROBNICATE", b"BAD"),
        (b'SELECT "unterminated', b"BAD"),
        (b"STATUS INBOX (MESSAGES", b"BAD"),
        (b"STATUS INBOX (MESSAGES))", b"BAD"),
        (b"LIST " + b"(" * 100 + b")" * 100, b"BAD"),
        (b"FETCH 1 FLAGS", b"BAD"),  # nothing selected
        (b"SELECT", b"BAD"),
        (b'LOGIN a "b"', b"BAD"),  # wrong state
        (b"APPEND INBOX {5x}", b"BAD"),
        (b"UID FROB 1", b"BAD"),
    ):
        _, done = raw.command(text)
        assert done.split()[1] == expected, (text, done)
    raw.ok("SELECT INBOX")
    for text in (
        b"FETCH x FLAGS",
        b"FETCH 1:* FLAGS",
        b"FETCH 1 (NOSUCH)",
        b"FETCH 1 BODY[1.TEXT.X]",
        b"SEARCH",
    ):
        _, done = raw.command(text)
        assert done.split()[1] == b"BAD", (text, done)
    raw.send(b"long1 NOOP " + b"x" * 70_000 + b"\r\n")  # over max_line_length (64 KiB): dropped
    assert raw.line().startswith(b"long1 BAD ")
    raw.send(b"lit1 SEARCH {5+}\r\n(((((\r\n")  # a non-synchronizing literal after an error is skipped
    assert raw.response("lit1")[1].split()[1] == b"BAD"
    assert raw.ok("NOOP") == []
    raw.close()


# -- several sessions, IDLE, restarts ---------------------------------------------------------------
def test_two_sessions_on_one_folder_see_each_others_changes(server: RunningAppliance, user: str) -> None:
    first, second = RawClient(server), RawClient(server)
    first.login(user, PASSWORD)
    second.login(user, PASSWORD)
    for n in range(2):
        first.ok(b"APPEND INBOX {%d+}\r\n" % len(message(f"m{n}")) + message(f"m{n}"))
    second.ok("SELECT INBOX")  # the first to select: messages 1 and 2 are \Recent there only
    first.ok("SELECT INBOX")
    second.ok(b"APPEND INBOX {%d+}\r\n" % len(message("m2")) + message("m2"))
    assert b"* 3 EXISTS" in first.ok("NOOP")
    second.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    assert first.ok("NOOP") == [b"* 1 FETCH (UID 1 FLAGS (\\Flagged))"]
    second.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    second.ok("EXPUNGE")
    # RFC 3501 §7.4.1: no EXPUNGE while answering FETCH; sequence numbers stay as they were
    untagged = first.ok("FETCH 3 (UID)")
    assert not any(line.endswith(b"EXPUNGE") for line in untagged)
    assert b"* 3 FETCH (UID 3)" in untagged
    assert b"* 2 EXPUNGE" in first.ok("NOOP")
    assert first.ok("FETCH 2 (UID)") == [b"* 2 FETCH (UID 3)"]
    first.close()
    second.close()


def test_idle_hears_of_an_smtp_delivery_within_a_second(server: RunningAppliance, user: str) -> None:
    client = imapclient_session(server, user)
    client.select_folder("INBOX")
    client.idle()
    started = time.monotonic()
    deliver(server, user, message("pushed"))
    delivered = time.monotonic()
    responses = client.idle_check(timeout=5)
    heard = time.monotonic()
    client.idle_done()
    assert (1, b"EXISTS") in responses, responses
    assert heard - delivered < 1.0, (delivered - started, heard - delivered)
    fetched = client.fetch([1], ["ENVELOPE"])
    assert fetched[1][b"ENVELOPE"].subject == b"pushed"
    # another session's change reaches the idling one too
    other = imapclient_session(server, user)
    other.select_folder("INBOX")
    client.idle()
    other.add_flags([1], [b"\\Flagged"])
    responses = client.idle_check(timeout=5)
    client.idle_done()
    assert any(item[1] == b"FETCH" for item in responses), responses
    other.logout()
    client.logout()
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    raw.send("i1 IDLE\r\n")  # in the authenticated state IDLE only waits for DONE
    assert raw.line().startswith(b"+ ")
    raw.send("NOT DONE\r\n")
    assert raw.response("i1")[1].startswith(b"i1 BAD")
    raw.send("i2 IDLE\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send("done\r\n")
    assert raw.response("i2")[1] == b"i2 OK IDLE terminated"
    raw.close()


def test_many_messages_are_fetched_whole_across_batches(server: RunningAppliance, user: str) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    bodies = [message(f"number {n}", f"{n}\r\n" * (n % 7 + 1)) for n in range(450)]
    raw.send(
        b"".join(b"a%d APPEND INBOX {%d+}\r\n%s\r\n" % (n, len(body), body) for n, body in enumerate(bodies))
    )
    for n in range(len(bodies)):
        raw.response(f"a{n}")
    raw.ok("SELECT INBOX")
    untagged = raw.ok("FETCH 1:* (UID BODY.PEEK[])")
    assert len(untagged) == len(bodies)
    for n, line in enumerate(untagged):
        expected = b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)" % (n + 1, n + 1, len(bodies[n]), bodies[n])
        assert line == expected
    raw.close()


def test_uids_and_flags_survive_a_restart(appliance: ApplianceFactory) -> None:
    running = appliance.start(DOMAINS, listeners=("imaps",))
    client = imaps(running, "user01@example.test")
    for n in range(3):
        client.append("INBOX", "(\\Seen)" if n == 1 else None, None, message(f"m{n}"))
    client.select("INBOX")  # \Recent is handed out once, and that is remembered across the restart
    client.select("INBOX")
    client.store("1", "+FLAGS", "\\Deleted")
    client.expunge()
    before = client.fetch("1:*", "(UID FLAGS)")[1]
    uidvalidity = client.response("UIDVALIDITY")
    client.logout()
    running.stop()
    again = appliance.start(DOMAINS, listeners=("imaps",))
    client = imaps(again, "user01@example.test")
    client.select("INBOX")
    assert client.response("UIDVALIDITY") == uidvalidity
    assert client.fetch("1:*", "(UID FLAGS)")[1] == before
    _, data = client.append("INBOX", None, None, message("after"))
    assert re.search(rb"APPENDUID \d+ 4\]", data[0])
    client.logout()


def test_an_idle_client_is_logged_out_and_a_banned_one_refused(appliance: ApplianceFactory) -> None:
    running = appliance.start(
        DOMAINS + "\n[security.auto_ban]\nmax_failures = 2\n",
        listeners=("imap", "imaps"),
        server_extra="allow_plaintext_auth = true",
        limits='imap_idle_timeout = "1s"\ncommand_timeout = "1s"',
    )
    raw = RawClient(running, "imap")  # the manifest allows logins in clear: no LOGINDISABLED
    capabilities = raw.greeting.split(b"]")[0].split()
    assert b"AUTH=PLAIN" in capabilities and b"LOGINDISABLED" not in capabilities
    raw.login("user02@example.test", PASSWORD)
    raw.ok("SELECT INBOX")
    assert raw.line().startswith(b"* BYE ")
    raw.close()
    running.wait_for_log(r"imap closed login=user02@example\.test client=127\.0\.0\.1 reason=idle_timeout")
    raw = RawClient(running)
    assert raw.line().startswith(b"* BYE ")  # RFC 3501 §5.4 autologout
    raw.close()
    running.wait_for_log(r"imap closed login=- client=127\.0\.0\.1 reason=idle_timeout")
    raw = RawClient(running)
    for _ in range(2):
        _, done = raw.command('LOGIN user01@example.test "wrong"')
        assert b"NO [AUTHENTICATIONFAILED]" in done
    raw.close()
    refused = RawClient(running)
    assert refused.greeting.startswith(b"* BYE ")
    refused.close()


def test_nothing_is_left_in_the_spool(server: RunningAppliance) -> None:
    spool = server.data_dir / "tmp" / "imap-append"
    assert not spool.exists() or list(spool.iterdir()) == []


def test_brackets_in_atoms_outside_fetch_sections_are_ordinary_characters(
    server: RunningAppliance, user: str
) -> None:
    """RFC 3501 §9: "[" is an ATOM-CHAR and "]" an ASTRING-CHAR; only BODY[...] takes a section."""
    raw = RawClient(server)
    raw.ok(f"LOGIN {user} {PASSWORD}")
    odd = "!#$&'+,-.0123456789:;<=>?@^_`|[}"  # imaptest's atom test
    _, done = raw.command(f"SELECT {odd}")
    assert b" NO " in done, done  # no such folder; not "BAD Missing ]"
    raw.ok("CREATE a[b]c")
    assert any(b'"a[b]c"' in line or b" a[b]c" in line for line in raw.ok('LIST "" a[b]*'))
    raw.ok("SELECT a[b]c")
    assert raw.ok("SEARCH SUBJECT x[y") == [b"* SEARCH"]
    raw.close()


def test_search_from_and_to_match_the_parsed_address_despite_comments(
    server: RunningAppliance, user: str
) -> None:
    """imaptest's search-addresses: the addr-spec split by comments is still the address."""
    raw = RawClient(server)
    raw.ok(f"LOGIN {user} {PASSWORD}")
    odd = (
        b"From: <user-from (comment)@ (comment) domain.org>\r\n"
        b"To: Group: <user-to@ domain.org>, (c) plain@example.org;\r\nSubject: odd\r\n\r\nbody\r\n"
    )
    raw.ok(b"APPEND INBOX {%d+}\r\n" % len(odd) + odd)
    raw.ok(b"APPEND INBOX {%d+}\r\n" % len(message("plain")) + message("plain"))
    raw.ok("SELECT INBOX")
    assert raw.ok("SEARCH FROM user-from@domain.org") == [b"* SEARCH 1"]
    assert raw.ok("SEARCH TO user-to@domain.org") == [b"* SEARCH 1"]
    assert raw.ok("SEARCH TO plain@example.org") == [b"* SEARCH 1"]
    assert raw.ok('SEARCH FROM "(comment)"') == [b"* SEARCH 1"]  # the raw field still matches
    assert raw.ok("SEARCH FROM a@remote.example") == [b"* SEARCH 2"]
    raw.close()


def test_lsub_with_percent_lists_the_unsubscribed_parent_of_a_subscribed_child(
    server: RunningAppliance, user: str
) -> None:
    """RFC 3501 §6.3.9: foo.bar subscribed, foo not: LSUB "" % answers foo with \\Noselect."""
    raw = RawClient(server)
    raw.ok(f"LOGIN {user} {PASSWORD}")
    raw.ok("CREATE lsubparent.child")
    raw.ok("SUBSCRIBE lsubparent.child")
    raw.ok("UNSUBSCRIBE lsubparent")
    assert raw.ok('LSUB "" lsubparent%') == [b'* LSUB (\\Noselect) "." "lsubparent"']
    assert raw.ok('LSUB "" lsubparent.%') == [b'* LSUB () "." "lsubparent.child"']
    assert raw.ok('LSUB "" lsubparent*') == [b'* LSUB () "." "lsubparent.child"']
    raw.close()
