"""Defects a compliance run (imaptest against the appliance and Dovecot) found, each shown by the
exchange that failed; where Dovecot's answer is the reference, it is asked over the same Maildir.

One appliance serves the module; each test logs in as an account of its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.dovecot import dovecot_session, untagged_answers
from tests.support.imap import RawClient
from tests.test_imap import DOMAINS, HASH, NO_AUTOBAN, PASSWORD
from tests.test_imap_message import MIXED

ACCOUNTS = iter(f"user{n:02d}" for n in range(1, 41))
QUOTA_DOMAIN = (
    '[domains."quota.test"]\n[domains."quota.test".accounts]\n'
    f'full = {{ password_hash = "{HASH}", quota = "100 KiB" }}\n'
    f'multi = {{ password_hash = "{HASH}", quota = "100 KiB" }}\n'
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    factory = ApplianceFactory(tmp_path_factory.mktemp("imap-compliance"))
    try:
        yield factory.start(DOMAINS + QUOTA_DOMAIN + NO_AUTOBAN, listeners=("smtp", "imaps"))
    finally:
        factory.close()


@pytest.fixture
def user() -> str:
    return f"{next(ACCOUNTS)}@example.test"


def maildir(server: RunningAppliance, address: str) -> Path:
    local, domain = address.split("@")
    return server.data_dir / "mail" / domain / local


def append(raw: RawClient, body: bytes, folder: str = "INBOX") -> None:
    raw.ok(b"APPEND " + folder.encode() + b" {%d+}\r\n" % len(body) + body)


# Multiparts whose text parts end with and without a line break of their own before the
# delimiter, nested multiparts, a message/rfc822 part, an unclosed last part.
MULTIPARTS = [
    MIXED,
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="xx"\r\n\r\npreamble\r\n'
    b"--xx\r\nContent-Type: text/plain\r\n\r\nline1\r\nline2\r\n"
    b"--xx\r\nContent-Type: text/plain\r\n\r\nline1\r\nline2\r\n\r\n--xx--\r\nepilogue\r\n",
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="xx"\r\n\r\n'
    b"--xx\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nbody1\r\nbody2\r\n"
    b'--xx\r\nContent-Type: multipart/alternative; boundary="yy"\r\n\r\n--yy\r\n\r\nt1\r\n'
    b"--yy\r\nContent-Type: text/html\r\n\r\n<p>\r\n</p>\r\n--yy--\r\n--xx--\r\n",
    b'Content-Type: multipart/mixed; boundary="xx"\r\n\r\n--xx\r\n\r\n--xx\r\n\r\nx\r\n'
    b"--xx\r\nContent-Type: text/plain\r\n\r\nunclosed\r\nmore",
    b"Content-Type: message/rfc822\r\n\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n"
    b"--q\r\n\r\nz\r\n--q--\r\n",
]


def test_bodystructure_line_counts_in_multiparts_are_dovecots(server: RunningAppliance, user: str) -> None:
    """The CRLF before a delimiter belongs to the delimiter (RFC 2046 §5.1.1): a part's last line
    without a CRLF of its own is not one more line (the count was one too high)."""
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    for body in MULTIPARTS:
        append(raw, body)
    raw.ok("SELECT INBOX")
    ours = [line for line in raw.ok("FETCH 1:* (BODYSTRUCTURE BODY)") if b" FETCH " in line]
    raw.close()
    theirs = untagged_answers(
        dovecot_session(
            maildir(server, user), [b"s SELECT INBOX\r\n", b"f FETCH 1:* (BODYSTRUCTURE BODY)\r\n"]
        ),
        b"* ",
    )
    theirs = [line for line in theirs if b" FETCH " in line]
    assert len(ours) == len(MULTIPARTS)
    assert ours == theirs


def test_fetch_of_a_message_another_session_expunged_answers_the_rest_and_completes_ok(
    server: RunningAppliance, user: str
) -> None:
    """RFC 2180 §4.1 as Dovecot answers it: the vanished message is left out, the others are
    answered, and the command completes OK [EXPUNGEISSUED]; the EXPUNGE comes at the next NOOP."""
    reader, expunger = RawClient(server), RawClient(server)
    for client in (reader, expunger):
        client.login(user, PASSWORD)
    for n in range(1, 4):
        append(reader, b"Subject: s%d\r\n\r\nbody %d\r\n" % (n, n))
    reader.ok("SELECT INBOX")
    expunger.ok("SELECT INBOX")
    expunger.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    expunger.ok("EXPUNGE")
    untagged, done = reader.command("FETCH 1:3 (UID BODY.PEEK[TEXT])")
    assert untagged == [
        b"* 1 FETCH (UID 1 BODY[TEXT] {8}\r\nbody 1\r\n)",
        b"* 3 FETCH (UID 3 BODY[TEXT] {8}\r\nbody 3\r\n)",
    ]
    assert done.split(b" ", 1)[1] == b"OK [EXPUNGEISSUED] Some messages were already expunged"
    # What this session knew without the file still comes from memory.
    assert reader.ok("FETCH 2 (UID FLAGS)") == [b"* 2 FETCH (UID 2 FLAGS (\\Recent))"]
    assert reader.ok("NOOP") == [b"* 2 EXPUNGE"]
    assert reader.ok("FETCH 2 (UID BODY.PEEK[TEXT])") == [b"* 2 FETCH (UID 3 BODY[TEXT] {8}\r\nbody 3\r\n)"]
    reader.close()
    expunger.close()


def dovecot_adds_keyword(root: Path, index: int, name: str) -> None:
    """What Dovecot does to add a keyword: the whole file written to its dotlock, renamed over
    dovecot-keywords, its mtime made to grow."""
    path = root / "dovecot-keywords"
    old = path.read_text() if path.exists() else ""
    before = path.stat().st_mtime if path.exists() else 0
    lock = root / "dovecot-keywords.lock"
    lock.write_text(old + f"{index} {name}\n")
    os.rename(lock, path)
    later = max(int(before) + 1, int(time.time()))
    os.utime(path, (later, later))


def test_keywords_another_program_adds_are_kept_and_never_renamed(
    server: RunningAppliance, user: str
) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    append(raw, b"Subject: one\r\n\r\nbody\r\n")
    append(raw, b"Subject: two\r\n\r\nbody\r\n")
    raw.ok("SELECT INBOX")
    raw.ok("STORE 1 +FLAGS.SILENT (Ours)")
    root = maildir(server, user)
    assert (root / "dovecot-keywords").read_text() == "0 Ours\n"
    # Another program names letter "b" and sets it (and \Seen) on message 1, as Dovecot would.
    dovecot_adds_keyword(root, 1, "Theirs")
    (path,) = [p for p in (root / "cur").iterdir() if p.name.endswith(":2,a")]
    os.rename(path, path.with_name(path.name.replace(":2,a", ":2,Sab")))
    # The appliance's next flag change on that message keeps the other program's keyword...
    got = raw.ok("STORE 1 +FLAGS (\\Flagged)")
    assert got[-1] == b"* 1 FETCH (FLAGS (\\Recent \\Flagged \\Seen Ours Theirs))"
    (path,) = [p for p in (root / "cur").iterdir() if ":2,F" in p.name]
    assert path.name.endswith(":2,FSab")
    # ... and its next new keyword takes a letter nobody uses, appended to the file.
    raw.ok("STORE 2 +FLAGS.SILENT (Mine)")
    assert (root / "dovecot-keywords").read_text() == "0 Ours\n1 Theirs\n2 Mine\n"
    untagged = raw.ok("FETCH 1:2 (FLAGS)")
    assert b"* 1 FETCH (FLAGS (\\Recent \\Flagged \\Seen Ours Theirs))" in untagged
    assert b"* 2 FETCH (FLAGS (\\Recent Mine))" in untagged
    # A letter the file names no keyword for is kept through a flag change, not dropped.
    (path,) = [p for p in (root / "cur").iterdir() if p.name.endswith(":2,c")]
    os.rename(path, path.with_name(path.name.replace(":2,c", ":2,cz")))
    raw.ok("STORE 2 +FLAGS.SILENT (\\Answered)")
    (path,) = [p for p in (root / "cur").iterdir() if ":2,R" in p.name]
    assert path.name.endswith(":2,Rcz")
    raw.close()


def test_lines_up_to_64_kib_pass_and_the_work_they_ask_for_stays_bounded(
    server: RunningAppliance, user: str
) -> None:
    """max_line_length is 64 KiB for IMAP by default (Dovecot's): a long ID or SEARCH line from a
    real client passes, while what one line can make the server do per message stays bounded."""
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    for n in range(1, 6):
        append(raw, b"Subject: s%d\r\n\r\nbody %d\r\n" % (n, n))
    raw.ok("SELECT INBOX")
    fields = " ".join(f'"x-client-field-{n}" "{"v" * 500}"' for n in range(30))  # RFC 2971 allows it
    assert len(fields) > 8192
    untagged = raw.ok(f"ID ({fields})")
    assert untagged[0].startswith(b"* ID ")
    # 16,000 ranges: merged once, each message listed once.
    ranges = ",".join(["1:*"] * 8000 + ["2", "4"] * 4000)
    assert raw.ok(f"SEARCH {ranges}") == [b"* SEARCH 1 2 3 4 5"]
    assert raw.ok(f"UID SEARCH UID {ranges} NOT 3") == [b"* SEARCH 1 2 4 5"]
    assert raw.ok(f"FETCH {ranges} (UID)") == [b"* %d FETCH (UID %d)" % (n, n) for n in range(1, 6)]
    # An item asked twice is answered once; a flood of distinct items or field names is BAD.
    assert raw.ok("FETCH 1 (UID UID FLAGS UID)") == [b"* 1 FETCH (UID 1 FLAGS (\\Recent))"]
    names = " ".join(f"X-F{n}" for n in range(300))
    assert raw.command(f"FETCH 1 (BODY.PEEK[HEADER.FIELDS ({names})])")[1].split()[1] == b"BAD"
    items = " ".join(f"BODY.PEEK[HEADER.FIELDS (X-{n})]" for n in range(100))
    assert raw.command(f"FETCH 1 ({items})")[1].split()[1] == b"BAD"
    raw.close()


def test_esearch_return_options_answer_as_dovecot_does(server: RunningAppliance, user: str) -> None:
    """RFC 4731: SEARCH RETURN (MIN MAX ALL COUNT), with and without UID, compared with Dovecot's
    answers over the same Maildir (the same tags, so the lines must be equal byte for byte)."""
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    flags = ["\\Seen", "", "\\Flagged", "\\Seen \\Flagged", "", "\\Seen", "", "\\Answered", "\\Seen", ""]
    for n, flag in enumerate(flags, start=1):
        body = b"Subject: s%d\r\nFrom: a%d@example.test\r\n\r\nbody %d\r\n" % (n, n % 3, n)
        raw.ok(b"APPEND INBOX (" + flag.encode() + b") {%d+}\r\n" % len(body) + body)
    raw.ok("SELECT INBOX")
    raw.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    raw.ok("EXPUNGE")  # UIDs and sequence numbers part ways
    commands = [
        "SEARCH RETURN (MIN MAX COUNT) SEEN",
        "SEARCH RETURN () UNSEEN",
        "SEARCH RETURN (ALL) FROM a1@example.test",
        "UID SEARCH RETURN (MIN MAX ALL COUNT) NOT SEEN",
        "UID SEARCH RETURN (COUNT) DELETED",
        "SEARCH RETURN (MIN MAX ALL) DELETED",
        "SEARCH RETURN (MAX) CHARSET UTF-8 SUBJECT s",
        "UID SEARCH RETURN (ALL) 2:4,7:*",
    ]
    ours = []
    for number, text in enumerate(commands):
        tag = f"e{number}"
        raw.send(f"{tag} {text}\r\n")
        untagged, done = raw.response(tag)
        assert done.startswith(tag.encode() + b" OK"), (text, done)
        ours += [line for line in untagged if line.startswith(b"* ESEARCH")]
    raw.close()
    output = dovecot_session(
        maildir(server, user),
        [b"s SELECT INBOX\r\n"] + [f"e{n} {text}\r\n".encode() for n, text in enumerate(commands)],
    )
    theirs = untagged_answers(output, b"* ESEARCH")
    assert len(ours) == len(commands)
    assert ours == theirs
    assert ours[1] == b'* ESEARCH (TAG "e1") ALL 2,4,6:7,9'  # sequence numbers after the EXPUNGE


def test_quota_reports_the_accounts_quota_and_usage_in_kib(server: RunningAppliance, user: str) -> None:
    """RFC 9208: one quota root "" for the account's `quota`, STORAGE in units of 1024 octets."""
    raw = RawClient(server)
    raw.login("full@quota.test", PASSWORD)
    assert raw.ok("GETQUOTAROOT INBOX") == [b'* QUOTAROOT INBOX ""', b'* QUOTA "" (STORAGE 0 100)']
    body = b"Subject: big\r\n\r\n" + b"x" * 40_000 + b"\r\n"
    append(raw, body)
    assert raw.ok('GETQUOTA ""') == [b'* QUOTA "" (STORAGE %d 100)' % (len(body) // 1024)]
    assert raw.ok("GETQUOTAROOT Trash") == [b'* QUOTAROOT "Trash" ""', raw.ok('GETQUOTA ""')[0]]
    append(raw, body)
    _, done = raw.command(b"APPEND INBOX {%d+}\r\n" % len(body) + body)  # a third one is over 100 KiB
    assert done.split(b" ", 2)[1:] == [b"NO", b"[OVERQUOTA] Mailbox is full"]
    assert raw.command('SETQUOTA "" (STORAGE 512)')[1].split(b" ", 3)[1:3] == [b"NO", b"[NOPERM]"]
    assert raw.command('GETQUOTA "other"')[1].split(b" ", 3)[1:3] == [b"NO", b"[NONEXISTENT]"]
    assert raw.command("GETQUOTAROOT nosuch")[1].split(b" ", 3)[1:3] == [b"NO", b"[NONEXISTENT]"]
    raw.close()
    # An account without a quota has no quota root.
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    assert b" QUOTA=RES-STORAGE" in raw.ok("CAPABILITY")[0]
    assert raw.ok("GETQUOTAROOT INBOX") == [b"* QUOTAROOT INBOX"]
    assert raw.command('GETQUOTA ""')[1].split(b" ", 3)[1:3] == [b"NO", b"[NONEXISTENT]"]
    raw.close()


def test_multiappend_stores_every_message_in_order_or_none(server: RunningAppliance, user: str) -> None:
    """RFC 3502: several messages in one APPEND, each with its own flags and date; APPENDUID
    gives their UIDs (RFC 4315); messages past 1 MB together are spooled, not held in memory."""
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    assert b" MULTIAPPEND" in raw.ok("CAPABILITY")[0]
    small = [b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n) for n in range(3)]
    big = b"Subject: big\r\n\r\n" + b"y" * 1_500_000 + b"\r\n"  # spooled to a file
    middling = [b"Subject: mid%d\r\n\r\n" % n + b"z" * 600_000 + b"\r\n" for n in range(3)]
    command = (
        b"APPEND INBOX (\\Seen) {%d+}\r\n" % len(small[0])
        + small[0]
        + b' (\\Flagged $Work) "07-Feb-1994 21:52:25 -0800" {%d}\r\n' % len(small[1])
    )
    raw.send(b"m1 " + command)
    assert raw.line().startswith(b"+ ")  # a synchronizing literal in the middle of the command
    rest = small[1] + b" {%d+}\r\n" % len(small[2]) + small[2] + b" {%d+}\r\n" % len(big) + big
    for body in middling:
        rest += b" {%d+}\r\n" % len(body) + body
    raw.send(rest + b"\r\n")
    _, done = raw.response("m1")
    assert done.startswith(b"m1 OK [APPENDUID "), done
    assert done.split(b" ")[4] == b"1:7]"
    raw.ok("SELECT INBOX")
    untagged = raw.ok("FETCH 1:2 (FLAGS INTERNALDATE)")
    assert untagged[0].startswith(b"* 1 FETCH (FLAGS (\\Recent \\Seen) INTERNALDATE ")
    assert (
        untagged[1]
        == b'* 2 FETCH (FLAGS (\\Recent \\Flagged $Work) INTERNALDATE "08-Feb-1994 05:52:25 +0000")'
    )
    for seq, body in enumerate([*small, big, *middling], start=1):
        assert raw.ok(f"FETCH {seq} (BODY.PEEK[])") == [
            b"* %d FETCH (BODY[] {%d}\r\n" % (seq, len(body)) + body + b")"
        ]
    raw.close()
    assert not list((server.data_dir / "tmp" / "imap-append").glob("*"))  # spooled files removed
    # All or none: three messages of 40 KB are over a quota of 100 KiB together.
    raw = RawClient(server)
    raw.login("multi@quota.test", PASSWORD)
    body = b"Subject: q\r\n\r\n" + b"q" * 40_000 + b"\r\n"
    three = b"APPEND INBOX" + b"".join(b" {%d+}\r\n" % len(body) + body for _ in range(3))
    assert raw.command(three)[1].split(b" ", 3)[1:3] == [b"NO", b"[OVERQUOTA]"]
    assert raw.ok("STATUS INBOX (MESSAGES)") == [b"* STATUS INBOX (MESSAGES 0)"]
    assert raw.command(b"APPEND INBOX {%d+}\r\n" % len(body) + body + b" {0+}\r\n")[1].split()[1] == b"NO"
    assert raw.ok("STATUS INBOX (MESSAGES)") == [b"* STATUS INBOX (MESSAGES 0)"]  # an empty one: none stored
    raw.close()


def test_list_extended_selection_and_return_options_and_list_status(
    server: RunningAppliance, user: str
) -> None:
    """RFC 5258 (selection SUBSCRIBED, RECURSIVEMATCH; RETURN SUBSCRIBED; several patterns) and
    RFC 5819 (RETURN STATUS: a STATUS line after each selectable mailbox)."""
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    caps = raw.ok("CAPABILITY")[0]
    assert b" LIST-EXTENDED" in caps and b" LIST-STATUS" in caps
    for name in ("Fruit", "Fruit.Apple", "Fruit.Banana", "Tofu"):
        raw.ok(f"CREATE {name}")
    raw.ok("SUBSCRIBE Fruit.Banana")
    raw.ok("SUBSCRIBE Peach")  # subscribed, does not exist
    append(raw, b"Subject: a\r\n\r\nbody\r\n", "Fruit.Apple")
    append(raw, b"Subject: b\r\n\r\nbody\r\n", "Fruit.Apple")
    assert raw.ok('LIST (SUBSCRIBED) "" "Fruit*"') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "." "Fruit.Banana"'
    ]
    assert raw.ok('LIST (SUBSCRIBED) "" "P*"') == [b'* LIST (\\NonExistent \\Subscribed) "." "Peach"']
    assert raw.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" ("F%" "P%")') == [
        b'* LIST (\\HasChildren) "." "Fruit" ("CHILDINFO" ("SUBSCRIBED"))',
        b'* LIST (\\NonExistent \\Subscribed) "." "Peach"',
    ]
    assert raw.ok('LIST "" ("Tofu" "Fruit.B*") RETURN (SUBSCRIBED CHILDREN)') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "." "Fruit.Banana"',
        b'* LIST (\\HasNoChildren) "." "Tofu"',
    ]
    assert raw.ok('LIST "" "Fruit.%" RETURN (STATUS (MESSAGES UNSEEN))') == [
        b'* LIST (\\HasNoChildren) "." "Fruit.Apple"',
        b'* STATUS "Fruit.Apple" (MESSAGES 2 UNSEEN 2)',
        b'* LIST (\\HasNoChildren) "." "Fruit.Banana"',
        b'* STATUS "Fruit.Banana" (MESSAGES 0 UNSEEN 0)',
    ]
    for bad in ('LIST (RECURSIVEMATCH) "" "%"', 'LIST (NOSUCH) "" "%"', 'LIST "" "%" RETURN (NOSUCH)'):
        assert raw.command(bad)[1].split()[1] == b"BAD", bad
    raw.close()


BINARY_MESSAGE = (
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\nSubject: binary\r\n\r\n'
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"R3LDvMOfZSBhdXMgZGVyIFN0cmHDn2UK\r\n"
    b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"caf=C3=A9 soft=\r\nbreak and =3D sign\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"AAECAwBhYmMA\r\n"
    b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"stra\xc3\x9fe\r\n"
    b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-unknown\r\n\r\n"
    b"what\r\n"
    b"--b--\r\n"
)


def tagged_segments(output: bytes, tags: list[str]) -> list[tuple[bytes, bytes]]:
    """For each tag in order: (what came after the previous tagged line, the tagged line's status
    and response code)."""
    found = []
    output = b"\r\n" + output
    start = 0
    for tag in tags:
        at = output.index(b"\r\n" + tag.encode() + b" ", start) + 2
        end = output.index(b"\r\n", at)
        status = output[at:end].split(b" ")
        code = status[2] if len(status) > 2 and status[2].startswith(b"[") else b""
        found.append((output[start + 2 : at], status[1] + b" " + code))
        start = end  # at the CRLF that ends the tagged line
    return found


def test_binary_fetches_decoded_parts_as_dovecot_does(server: RunningAppliance, user: str) -> None:
    """RFC 3516: BINARY[part], BINARY.PEEK with a partial range, BINARY.SIZE, literal8 for a part
    with NUL, UNKNOWN-CTE; compared byte for byte with Dovecot over the same Maildir. And APPEND
    takes a literal8."""
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    assert b" BINARY" in raw.ok("CAPABILITY")[0]
    append(raw, BINARY_MESSAGE)
    raw.send(
        b"a8 APPEND INBOX ~{%d+}\r\n" % len(b"Subject: nul\r\n\r\na\0b\r\n")
        + b"Subject: nul\r\n\r\na\0b\r\n\r\n"
    )
    assert raw.response("a8")[1].startswith(b"a8 OK [APPENDUID ")
    commands = [
        "FETCH 1 (BINARY.PEEK[1])",
        "FETCH 1 (BINARY.PEEK[2])",
        "FETCH 1 (BINARY.PEEK[3])",
        "FETCH 1 (BINARY.PEEK[4] BINARY.PEEK[2]<2.5>)",
        "FETCH 2 (BINARY.PEEK[1] BINARY.SIZE[1])",
        "FETCH 1 (BINARY.SIZE[9])",
    ]
    tags = [f"b{n}" for n in range(len(commands))]
    raw.ok("SELECT INBOX")
    ours = b""
    for tag, text in zip(tags, commands, strict=True):
        raw.send(f"{tag} {text}\r\n")
        ours += raw.read_until(tag)
    raw.close()
    theirs = b""
    for tag, text in zip(
        tags, commands, strict=True
    ):  # one at a time: Dovecot runs pipelined FETCHes together
        output = dovecot_session(maildir(server, user), [b"s SELECT INBOX\r\n", f"{tag} {text}\r\n".encode()])
        output = output[output.index(b"\r\ns OK") + 2 :]
        theirs += output[output.index(b"\r\n") + 2 : output.index(b"\r\n* BYE") + 2]
    assert tagged_segments(ours, tags) == tagged_segments(theirs, tags)
    assert b"~{9}\r\n\x00\x01\x02\x03\x00abc\x00)" in ours  # decoded, NULs and all, as a literal8
    # Dovecot 2.3 refuses BINARY.SIZE of an encoded part; the RFC asks for the decoded size.
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    raw.ok("SELECT INBOX")
    assert raw.ok("FETCH 1 (BINARY.SIZE[1] BINARY.SIZE[2] BINARY.SIZE[3])") == [
        b"* 1 FETCH (BINARY.SIZE[1] 24 BINARY.SIZE[2] 26 BINARY.SIZE[3] 9)"
    ]
    assert raw.command("FETCH 1 (BINARY.PEEK[5])")[1].split(b" ", 3)[1:3] == [b"NO", b"[UNKNOWN-CTE]"]
    assert raw.ok("FETCH 1 (FLAGS)") == [b"* 1 FETCH (FLAGS ())"]  # PEEK left \Seen alone
    assert raw.ok("FETCH 1 (BINARY[4])") == [b"* 1 FETCH (BINARY[4] {7}\r\nstra\xc3\x9fe FLAGS (\\Seen))"]
    raw.close()
