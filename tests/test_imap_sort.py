"""SORT and ESORT (RFC 5256, RFC 5267) and THREAD (RFC 5256) answered as Dovecot answers them,
over the same Maildir: a generated corpus of a few hundred messages with odd subjects (reply and
forward markers, [tags], encoded words), dates in many zones or none, and addresses with display
names and groups.

One appliance serves the module; each test logs in as an account of its own.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.dovecot import dovecot_session, untagged_answers
from tests.support.imap import RawClient
from tests.test_imap import DOMAINS, NO_AUTOBAN, PASSWORD

ACCOUNTS = iter(f"user{n:02d}" for n in range(1, 41))
CORPUS_SIZE = 240

SUBJECTS = [
    "hello world",
    "Hello   World",
    "Re: hello world",
    "RE: re: Fwd: hello world",
    "Fw: [tag] plan",
    "FWD: plan",
    "[Fwd: budget]",
    "budget (fwd)",
    "budget (FWD)  (fwd) ",
    "Re: [list] Re: status",
    "[list] status",
    "[list][other] status",
    "[only a blob]",
    "[a] [b]",
    "re:no space",
    "Re [x]: tagged refwd",
    "Re : not a marker",
    "Rex: not a marker",
    "\tleading\ttabs",
    "=?UTF-8?B?UmU6IGVuY29kZWQgc3ViamVjdA==?=",
    "=?iso-8859-1?Q?caf=E9?= au lait",
    "=?UTF-8?Q?Fwd=3A_[Fwd:_nested]?=",
    "[Fwd: Re: [list] deep (fwd)]",
    "",
    "zebra",
    "Apple",
    "apple",
    "123 numbers",
    "_under_score",
]
ADDRESSES = [
    '"Doe, John" <john@example.org>',
    "Alice Example <ALICE@example.net>",
    "bob@example.com (Bob)",
    "carol@example.com",
    "undisclosed-recipients:;",
    "Team: dave@example.org, erin@example.org;",
    "<Zed@example.org>",
    "=?UTF-8?Q?Fr=C3=A9d=C3=A9ric?= <frederic@example.fr>",
    "mallory@example.org, alice@example.net",
    "_x@example.org",
]
ZONES = ["+0000", "-0500", "+0930", "+1400", "-1200", "+0100", "GMT", "-0000"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    factory = ApplianceFactory(tmp_path_factory.mktemp("imap-sort"))
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


def _date(rng: random.Random) -> str:
    day, month, year = rng.randint(1, 28), rng.choice(MONTHS), rng.randint(2019, 2026)
    clock = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    return f"{day} {month} {year} {clock} {rng.choice(ZONES)}"


def corpus(seed: int, size: int = CORPUS_SIZE) -> list[tuple[bytes, str]]:
    """`size` messages and the internal date each is appended with (some alike, so that ties
    are broken by sequence number)."""
    rng = random.Random(seed)
    messages = []
    for n in range(size):
        lines = []
        if rng.random() < 0.9:
            lines.append("Subject: " + rng.choice(SUBJECTS))
        roll = rng.random()
        if roll < 0.1:
            pass  # no Date field: SORT DATE uses the internal date
        elif roll < 0.15:
            lines.append("Date: not a date at all")
        else:
            lines.append("Date: " + _date(rng))
        for field in ("From", "To", "Cc"):
            if rng.random() < 0.8:
                lines.append(f"{field}: {rng.choice(ADDRESSES)}")
        lines.append(f"Message-ID: <m{n}.{seed}@example.org>")
        body = "line\r\n" * rng.randint(0, 30)
        raw = ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
        day = rng.randint(1, 3)
        internal = f"0{day}-Dec-2026 {rng.choice(['08:00:00', '09:30:00'])} {rng.choice(['+0000', '-0700'])}"
        messages.append((raw, internal))
    return messages


def load(raw: RawClient, messages: list[tuple[bytes, str]]) -> None:
    for body, internal in messages:
        raw.ok(b'APPEND INBOX "%s" {%d+}\r\n' % (internal.encode(), len(body)) + body)


_TAG = re.compile(rb"^\* ESEARCH \(TAG \"[^\"]*\"\)")


def compare(server: RunningAppliance, user: str, raw: RawClient, commands: list[str], prefix: bytes) -> None:
    """Each command's untagged `prefix` answers from the appliance and from Dovecot, alike."""
    ours = []
    for text in commands:
        ours.append([_TAG.sub(b"* ESEARCH (TAG)", line) for line in raw.ok(text) if line.startswith(prefix)])
    output = dovecot_session(
        maildir(server, user),
        [b"s SELECT INBOX\r\n"] + [b"c%d %s\r\n" % (n, text.encode()) for n, text in enumerate(commands)],
    )
    # Dovecot runs a few SORTs at once and completes them out of order, but answers each with
    # one line, in the order sent.
    # One difference is known and kept: for no messages Dovecot writes "* THREAD " with a space
    # the grammar has no room for (RFC 5256 §4: thread-data = "THREAD" [SP 1*thread-list]).
    theirs = [[_TAG.sub(b"* ESEARCH (TAG)", line).rstrip(b" ")] for line in untagged_answers(output, prefix)]
    assert len(theirs) == len(commands), output[-500:]
    differ = [text for text, mine, reference in zip(commands, ours, theirs, strict=True) if mine != reference]
    assert not differ, (differ, [(m, t) for m, t in zip(ours, theirs, strict=True) if m != t][:1])


SORTS = [
    "SORT (ARRIVAL) US-ASCII ALL",
    "SORT (DATE) UTF-8 ALL",
    "SORT (REVERSE DATE) UTF-8 ALL",
    "SORT (SUBJECT) UTF-8 ALL",
    "SORT (REVERSE SUBJECT) UTF-8 ALL",
    "SORT (FROM) UTF-8 ALL",
    "SORT (TO) UTF-8 ALL",
    "SORT (CC) UTF-8 ALL",
    "SORT (SIZE) UTF-8 ALL",
    "SORT (REVERSE SIZE) UTF-8 ALL",
    "SORT (SUBJECT DATE) UTF-8 ALL",
    "SORT (REVERSE SUBJECT REVERSE ARRIVAL) UTF-8 ALL",
    "SORT (FROM REVERSE SIZE) UTF-8 ALL",
    "SORT (DATE) UTF-8 SUBJECT hello",
    "SORT (SUBJECT) US-ASCII 20:90 NOT FROM alice",
    "UID SORT (REVERSE DATE) UTF-8 ALL",
    "UID SORT (SUBJECT) UTF-8 UID 100:*",
    "SORT (DISPLAYFROM) UTF-8 ALL",
    "SORT (REVERSE DISPLAYTO) UTF-8 ALL",
    "SORT (DISPLAYFROM DATE) UTF-8 ALL",
]


def test_sort_answers_are_dovecots_on_an_odd_corpus(server: RunningAppliance, user: str) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    assert b" SORT ESORT SORT=DISPLAY" in raw.ok("CAPABILITY")[0]
    load(raw, corpus(5256))
    raw.ok("SELECT INBOX")
    compare(server, user, raw, SORTS, b"* SORT")
    raw.close()


ESORTS = [
    "SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL",
    "SORT RETURN (ALL) (SUBJECT) UTF-8 ALL",
    "SORT RETURN () (REVERSE ARRIVAL) UTF-8 ALL",
    "UID SORT RETURN (COUNT ALL MIN) (FROM) UTF-8 ALL",
    "SORT RETURN (MIN MAX ALL COUNT) (SIZE) UTF-8 SUBJECT nothing-matches-this",
    "SORT RETURN (COUNT) (DATE) UTF-8 1:10",
    "SORT RETURN (ALL) (REVERSE ARRIVAL) UTF-8 61:*",  # a descending run
    "UID SORT RETURN (ALL MIN MAX) (ARRIVAL) UTF-8 59:*",
]


def test_esort_answers_are_dovecots(server: RunningAppliance, user: str) -> None:
    """RFC 5267 §3.2: MIN and MAX are the first and last in the sort order, ALL the numbers in
    that order as a sequence-set (ascending runs as ranges)."""
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    load(raw, corpus(5267, 60))
    load(raw, [(b"Subject: later %d\r\n\r\nx\r\n" % n, f"04-Dec-2026 10:00:0{n} +0000") for n in range(6)])
    raw.ok("SELECT INBOX")
    compare(server, user, raw, ESORTS, b"* ESEARCH")
    raw.close()


def test_sort_and_thread_arguments_that_cannot_be_used_are_bad_and_change_nothing(
    server: RunningAppliance, user: str
) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    load(raw, corpus(1, 3))
    raw.ok("SELECT INBOX")
    before = raw.ok("SORT (ARRIVAL) UTF-8 ALL")
    assert len(before[0].split()) == 5
    for text in (
        "SORT (NOSUCHKEY) UTF-8 ALL",
        "SORT (REVERSE) UTF-8 ALL",
        "SORT () UTF-8 ALL",
        "SORT DATE UTF-8 ALL",
        "SORT (DATE) UTF-8",
        "SORT RETURN (BOGUS) (DATE) UTF-8 ALL",
        "THREAD BOGUS UTF-8 ALL",
        "THREAD REFERENCES UTF-8",
        "THREAD (REFERENCES) UTF-8 ALL",
        "UID THREAD ORDEREDSUBJECT UTF-8 NOSUCHKEY",
    ):
        untagged, done = raw.command(text)
        assert done.split(b" ")[1] == b"BAD", (text, done)
        assert untagged == []
    for text in ("SORT (DATE) KOI8-R ALL", "THREAD REFERENCES KOI8-R ALL"):
        untagged, done = raw.command(text)
        assert done.split(b" ", 2)[1:] == [b"NO", b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset KOI8-R"]
        assert untagged == []
    assert raw.ok("SORT (ARRIVAL) UTF-8 ALL") == before
    raw.close()


TOPICS = ["plans", "budget", "lunch", "[team] offsite", "release 2.0", "=?UTF-8?Q?caf=C3=A9?="]


def threaded_corpus(seed: int, size: int = 220) -> list[tuple[bytes, str]]:
    """Conversations: replies with whole, truncated or missing References, In-Reply-To only,
    parents that are not in the folder, replies that only share a subject, duplicate and missing
    Message-IDs, and a References loop."""
    rng = random.Random(seed)
    ids: list[tuple[str, list[str], str]] = []  # (id, its references chain, topic)
    messages = []
    for n in range(size):
        topic = rng.choice(TOPICS)
        lines = []
        own = f"<t{n}.{seed}@example.org>"
        roll = rng.random()
        if ids and roll < 0.45:  # a reply to an earlier message
            parent, chain, topic = rng.choice(ids)
            refs = [*chain, parent]
            style = rng.random()
            if style < 0.5:
                lines.append("References: " + " ".join(refs))
            elif style < 0.65:
                lines.append("References: " + refs[-1])  # truncated
            elif style < 0.8:
                lines.append("In-Reply-To: " + parent)
            else:
                lines.append(f"References: <gone{n}@example.org> " + parent)  # a parent not here
            lines.append("Subject: " + rng.choice(["Re: ", "RE: ", "Fwd: ", "Re: Re: ", ""]) + topic)
            chain = refs
        elif roll < 0.6:  # only the subject ties it to a conversation
            lines.append("Subject: " + rng.choice(["Re: ", "", "Fw: ", "[Fwd: "]) + topic)
            chain = []
        elif roll < 0.65:  # a References loop with a later message
            lines.append(f"References: <t{n + 1}.{seed}@example.org>")
            lines.append("Subject: loop")
            chain = []
        else:
            lines.append("Subject: " + topic + rng.choice(["", " (fwd)", ""]))
            chain = []
        if n % 37 == 5 and ids:
            own = ids[0][0]  # a duplicate Message-ID
        if n % 41 != 7:
            lines.append("Message-ID: " + own)
            ids.append((own, chain, topic))
        if rng.random() < 0.9:
            lines.append("Date: " + _date(rng))
        lines.append("From: " + rng.choice(ADDRESSES))
        if lines[-1].startswith("From: ") and "Subject: loop" in lines:
            lines.append(f"In-Reply-To: <t{n - 1}.{seed}@example.org>")
        raw = ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()
        internal = f"0{rng.randint(1, 3)}-Dec-2026 {rng.choice(['08:00:00', '09:30:00'])} +0000"
        messages.append((raw, internal))
    return messages


THREADS = [
    "THREAD REFERENCES UTF-8 ALL",
    "THREAD ORDEREDSUBJECT UTF-8 ALL",
    "UID THREAD REFERENCES US-ASCII ALL",
    "UID THREAD ORDEREDSUBJECT UTF-8 ALL",
    "THREAD REFERENCES UTF-8 30:150",
    "THREAD ORDEREDSUBJECT UTF-8 SUBJECT budget",
    "THREAD REFERENCES UTF-8 SUBJECT nothing-matches-this",
]


def test_thread_answers_are_dovecots_on_conversations(server: RunningAppliance, user: str) -> None:
    raw = RawClient(server)
    raw.login(user, PASSWORD)
    assert b" THREAD=ORDEREDSUBJECT THREAD=REFERENCES" in raw.ok("CAPABILITY")[0]
    load(raw, threaded_corpus(3))
    raw.ok("SELECT INBOX")
    compare(server, user, raw, THREADS, b"* THREAD")
    # The threads of a folder that changed are threaded again, not taken from the last THREAD.
    raw.ok("STORE 4 +FLAGS.SILENT (\\Deleted)")
    raw.ok("EXPUNGE")
    reply = b"Subject: Re: plans\r\nReferences: <t0.3@example.org> <t1.3@example.org>\r\n\r\nreply\r\n"
    raw.ok(b"APPEND INBOX {%d+}\r\n" % len(reply) + reply)
    raw.ok("NOOP")
    compare(server, user, raw, THREADS, b"* THREAD")
    raw.close()


def test_a_reply_chain_longer_than_pythons_recursion_limit_is_one_thread(
    server: RunningAppliance, user: str
) -> None:
    """1,500 messages each replying to the one before (References holding only the parent, as
    some clients truncate it), delivered straight into the Maildir as an MDA does: one chain,
    written without recursion. Dovecot is asked about the first 900 only: deeper than about
    1,000 it hangs the rest of a chain under the thread's first message (its own limit, not
    RFC 5256's)."""
    raw = RawClient(server)
    raw.login(user, PASSWORD)  # the first login makes the Maildir
    new = maildir(server, user) / "new"
    for n in range(1500):
        refs = f"References: <c{n - 1}@example.org>\r\n" if n else ""
        body = f"Subject: {'Re: ' if n else ''}chain\r\nMessage-ID: <c{n}@example.org>\r\n{refs}\r\nx\r\n"
        (new / f"{1765000000 + n}.M{n}P1.sort-test").write_bytes(body.encode())
    raw.ok("SELECT INBOX")
    chain = " ".join(str(n) for n in range(1, 1501))
    assert raw.ok("THREAD REFERENCES UTF-8 ALL") == [f"* THREAD ({chain})".encode()]
    compare(
        server, user, raw, ["THREAD REFERENCES UTF-8 1:900", "UID THREAD REFERENCES UTF-8 1:900"], b"* THREAD"
    )
    raw.close()
