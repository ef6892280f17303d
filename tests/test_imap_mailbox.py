"""IMAP folders on the Maildir++ store: UIDs and flags stay right when SMTP, other sessions and
other programs change a folder at the same time, and the on-disk files agree with other readers.

Each test logs in as an account of its own on one running appliance.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.imap import RawClient
from tests.test_imap import DOMAINS, NO_AUTOBAN, PASSWORD, deliver, message

ACCOUNTS = iter(f"user{n:02d}" for n in range(1, 41))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    factory = ApplianceFactory(tmp_path_factory.mktemp("imap-mailbox"))
    try:
        yield factory.start(DOMAINS + NO_AUTOBAN, listeners=("smtp", "imaps"))
    finally:
        factory.close()


@pytest.fixture
def user() -> str:
    return f"{next(ACCOUNTS)}@example.test"


def maildir(server: RunningAppliance, address: str) -> Path:
    local, domain = address.split("@")
    return server.data_dir / "mail" / domain / local


def uid_flags(lines: list[bytes]) -> dict[int, bytes]:
    """UID → FLAGS (\\Recent left out) from `* n FETCH (UID u FLAGS (...))` lines."""
    found = {}
    for line in lines:
        match = re.match(rb"^\* \d+ FETCH \(UID (\d+) FLAGS \((.*?)\)\)$", line)
        assert match, line
        found[int(match.group(1))] = b" ".join(f for f in match.group(2).split() if f != b"\\Recent")
    return found


def test_uids_stay_unique_and_ascending_while_smtp_delivers_into_the_selected_folder(
    server: RunningAppliance, user: str
) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    raw.ok("SELECT INBOX")
    count = 60
    errors: list[BaseException] = []

    def send() -> None:
        try:
            for n in range(count):
                deliver(server, user, message(f"concurrent {n}"))
        except BaseException as error:  # reported below
            errors.append(error)

    sender = threading.Thread(target=send)
    sender.start()
    seen_exists = 0
    deadline = time.monotonic() + 60
    while (sender.is_alive() or seen_exists < count) and time.monotonic() < deadline:
        for line in raw.ok("NOOP"):
            match = re.match(rb"^\* (\d+) EXISTS$", line)
            if match:
                assert int(match.group(1)) >= seen_exists  # no message counted twice or lost
                seen_exists = int(match.group(1))
    sender.join(30)
    assert not errors and seen_exists == count
    first = raw.ok("UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    uids = [int(m.group(1)) for line in first if (m := re.search(rb"UID (\d+)", line))]
    assert uids == sorted(set(uids)) and len(uids) == count
    subjects = [re.search(rb"concurrent (\d+)", line).group(1) for line in first]  # type: ignore[union-attr]
    assert sorted(int(s) for s in subjects) == list(range(count))
    # Another session, and a fresh SELECT, see exactly the same UIDs.
    other = RawClient(server)
    other.login(user, PASSWORD)
    other.ok("EXAMINE INBOX")
    again = other.ok("UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert again == first
    other.close()
    raw.close()


def test_a_message_another_program_drops_into_new_gets_the_next_uid(
    server: RunningAppliance, user: str
) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    raw.ok(b"APPEND INBOX {%d+}\r\n" % len(message("first")) + message("first"))
    raw.ok("SELECT INBOX")
    root = maildir(server, user)
    # A delivery agent of some other kind: tmp/ then rename into new/, no size fields, LF line ends.
    name = f"{int(time.time())}.M1P1.other-host"
    (root / "tmp" / name).write_bytes(message("from elsewhere").replace(b"\r\n", b"\n"))
    os.rename(root / "tmp" / name, root / "new" / name)
    deadline = time.monotonic() + 10
    untagged: list[bytes] = []
    while b"* 2 EXISTS" not in untagged and time.monotonic() < deadline:
        untagged = raw.ok("NOOP")
    assert b"* 2 EXISTS" in untagged
    fetched = raw.ok("UID FETCH 2 (UID RFC822.SIZE BODY.PEEK[])")
    body = message("from elsewhere")
    assert fetched[0].startswith(b"* 2 FETCH (UID 2 RFC822.SIZE %d BODY[] {%d}\r\n" % (len(body), len(body)))
    raw.close()


def test_flags_changed_by_renaming_the_file_on_disk_reach_a_selected_session(
    server: RunningAppliance, user: str
) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    raw.ok(b"APPEND INBOX {%d+}\r\n" % len(message("flags")) + message("flags"))
    raw.ok("SELECT INBOX")
    root = maildir(server, user)
    (path,) = list((root / "cur").iterdir())
    key = path.name.split(":2,")[0]
    os.rename(path, root / "cur" / f"{key}:2,FS")  # what mutt does when you flag and read a message
    deadline = time.monotonic() + 10
    untagged: list[bytes] = []
    while not untagged and time.monotonic() < deadline:
        untagged = raw.ok("NOOP")
    assert untagged == [b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Flagged \\Seen))"]  # this session's \\Recent
    raw.close()


def test_flags_and_keywords_are_written_where_other_maildir_readers_look(
    server: RunningAppliance, user: str
) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    raw.ok(b"APPEND INBOX (\\Answered $Forwarded) {%d+}\r\n" % len(message("kw")) + message("kw"))
    raw.ok("SELECT INBOX")
    raw.ok("STORE 1 +FLAGS (\\Deleted Project)")
    root = maildir(server, user)
    (path,) = list((root / "cur").iterdir())
    assert path.name.endswith(":2,RTab")  # Maildir letters in ASCII order; keywords a, b
    assert (root / "dovecot-keywords").read_text() == "0 $Forwarded\n1 Project\n"
    raw.ok("STORE 1 -FLAGS ($forwarded)")  # keywords are matched without regard to case
    (path,) = list((root / "cur").iterdir())
    assert path.name.endswith(":2,RTb")
    raw.close()


def test_a_folder_deleted_and_created_again_gets_a_new_uidvalidity(
    server: RunningAppliance, user: str
) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    raw.ok("CREATE Projects")
    raw.ok(b"APPEND Projects {%d+}\r\n" % len(message("p")) + message("p"))
    first = re.search(rb"UIDVALIDITY (\d+)", b" ".join(raw.ok("STATUS Projects (UIDVALIDITY UIDNEXT)")))
    raw.ok("DELETE Projects")
    raw.ok("CREATE Projects")
    status = b" ".join(raw.ok("STATUS Projects (UIDVALIDITY UIDNEXT MESSAGES)"))
    second = re.search(rb"UIDVALIDITY (\d+)", status)
    assert first and second and int(second.group(1)) > int(first.group(1))
    assert b"MESSAGES 0" in status and b"UIDNEXT 1" in status
    assert not [entry for entry in maildir(server, user).iterdir() if entry.name.startswith("~deleted-")]
    raw.close()


def test_the_uid_log_is_compacted_and_still_gives_the_same_uids(appliance: ApplianceFactory) -> None:
    running = appliance.start(DOMAINS, listeners=("imaps",))
    address = "user03@example.test"
    raw = RawClient(running)
    raw.login(address, PASSWORD)
    bodies = [message(f"c{n}") for n in range(1100)]
    raw.send(b"".join(b"a%d APPEND INBOX {%d+}\r\n%s\r\n" % (n, len(b), b) for n, b in enumerate(bodies)))
    for n in range(len(bodies)):
        raw.response(f"a{n}")
    raw.ok("SELECT INBOX")
    raw.ok("STORE 1:1090 +FLAGS.SILENT (\\Deleted)")
    raw.ok("EXPUNGE")
    # More arrivals: the log now holds far more dead records than live ones, and is rewritten.
    raw.send(
        b"".join(b"b%d APPEND INBOX {%d+}\r\n%s\r\n" % (n, len(b), b) for n, b in enumerate(bodies[:20]))
    )
    for n in range(20):
        raw.response(f"b{n}")
    before = uid_flags(raw.ok("UID FETCH 1:* (UID FLAGS)"))
    raw.close()
    log = (maildir(running, address) / "appliance-uidlist").read_text().splitlines()
    assert len([line for line in log if line.startswith("+")]) == 30
    running.stop()
    again = appliance.start(DOMAINS, listeners=("imaps",))
    raw = RawClient(again)
    raw.login(address, PASSWORD)
    untagged = raw.ok("SELECT INBOX")
    assert b"* OK [UIDNEXT 1121] Predicted next UID" in untagged
    assert uid_flags(raw.ok("UID FETCH 1:* (UID FLAGS)")) == before
    raw.close()


def test_header_searches_answer_the_same_from_the_cache_as_from_the_messages(
    server: RunningAppliance, user: str
) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    encoded = (
        b"From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <jm@remote.example>\r\nTo: someone@example.test\r\n"
        b"Subject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\nX-Ticket: TCK-4711\r\n\r\nBody words.\r\n"
    )
    raw.ok(b"APPEND INBOX {%d+}\r\n" % len(encoded) + encoded)
    for n in range(3):
        raw.ok(b"APPEND INBOX {%d+}\r\n" % len(message(f"plain {n}")) + message(f"plain {n}"))
    raw.ok("SELECT INBOX")
    for _ in range(2):  # the first search fills the cache, the second is answered from it
        assert raw.ok(b"SEARCH CHARSET UTF-8 SUBJECT {7+}\r\nGR\xc3\x9cSSE") == [b"* SEARCH 1"]
        assert raw.ok(b"SEARCH CHARSET UTF-8 FROM {7+}\r\nm\xc3\xbcller") == [b"* SEARCH 1"]
        assert raw.ok("SEARCH HEADER X-Ticket 4711") == [b"* SEARCH 1"]
        assert raw.ok('SEARCH HEADER X-Ticket ""') == [b"* SEARCH 1"]
        assert raw.ok("SEARCH NOT SUBJECT plain") == [b"* SEARCH 1"]
        assert raw.ok('SEARCH OR SUBJECT "plain 2" BODY words') == [b"* SEARCH 1 4"]
    raw.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    raw.ok("EXPUNGE")
    assert raw.ok("SEARCH SUBJECT plain") == [b"* SEARCH 1 2 3"]
    raw.close()
