"""Protocol fuzzing: hypothesis throws random and mutated command lines at a running `appliance serve`
over real sockets (SMTP, POP3, IMAP), and random and mutated manifests at the loader that
`appliance validate` and every reload use.

A fuzzed session may be refused, but each line gets a well-formed reply (SMTP: a 3-digit code; POP3:
+OK / -ERR; IMAP: untagged, continuation or tagged lines), the server closes only after saying so,
a fresh connection is served normally afterwards, and the log never shows a traceback.

The examples are derandomized (no database): CI runs the same cases every time. Set
APPLIANCE_FUZZ_EXAMPLES to run more (or fewer) per protocol; the manifest loader, in process and
fast, gets five times as many.
"""

from __future__ import annotations

import base64
import json
import os
import re
import smtplib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import bcrypt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.manifest import ManifestError, parse_manifest
from appliance.snapshot import build_snapshot
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import LineClient, client_context
from tests.support.pop3 import put_message

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("APPLIANCE_FUZZ_EXAMPLES", "200"))
T = TypeVar("T")

PASSWORD = "Fuzz!Passw0rd"
# bcrypt at its lowest cost: a correct login costs a millisecond, so fuzzed sessions that log in
# (and the health check after each example) stay cheap. The server verifies bcrypt for migrations.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
JOHN = "john@example.test"  # the account fuzzed sessions log in as
MARY = "mary@example.test"  # the account the health check logs in as
DOMAINS = f"""
[domains."example.test"]
aliases = {{ team = ["john", "mary"] }}
[domains."example.test".accounts]
john = {{ password_hash = "{HASH}", addresses = ["j.doe"] }}
mary = {{ password_hash = "{HASH}" }}
small = {{ password_hash = "{HASH}", quota = "2 KB" }}
"""
# Fuzzed logins fail all the time: 127.0.0.1 must not get banned for it.
NO_AUTOBAN = "\n[security.auto_ban]\nenabled = false\n"
REPLY_TIMEOUT = 15.0  # seconds a reply may take (a failed login alone takes 1 s)
MAX_LINE = 3000  # bytes per fuzzed line: longer than POP3's limit, within SMTP's and IMAP's


def fuzz(strategy: st.SearchStrategy[T], check: Callable[[T], None], examples: int = EXAMPLES) -> int:
    """Run `check` on `examples` derandomized examples of `strategy`; the number of cases run."""
    cases = 0

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def run(example: T) -> None:
        nonlocal cases
        cases += 1
        check(example)

    run()
    return cases


# -- lines: random bytes and mutations of valid commands ----------------------------------------------

SPECIAL = [
    b"\x00", b"\r", b"\t", b"\x0b", b"\x1b", b"\x7f", b"\xff", b"\xc3", b"\xe2\x80\xa8", "é".encode(),
    b" ", b"  ", b"<", b">", b":", b"@", b'"', b"\\", b"{", b"}", b"(", b")", b"[", b"]", b"%", b"*",
    b"+", b"=", b"-", b".", b",", b";", b"{0}", b"{5}", b"{5+}", b"~{1}", b"NIL", b"\r\n.\r",
]  # fmt: skip
NUMBERS = [
    b"0", b"1", b"2", b"-1", b"+1", b"007", b"4294967295", b"4294967296", b"18446744073709551616",
    b"99999999999999999999999999", b"1:*", b"*", b"*:1", b"2:1", b"1,2,3", b"0:0", b"1e9", b"1.5", b"",
]  # fmt: skip
FRAGMENTS = st.one_of(st.sampled_from(SPECIAL), st.sampled_from(NUMBERS), st.binary(min_size=1, max_size=12))
MUTATIONS = ("insert", "delete", "replace", "repeat", "number", "case", "truncate")


def listed(text: bytes) -> list[bytes]:
    """One item per line of `text` (a literal the formatter leaves as written)."""
    return [line.strip() for line in text.strip().split(b"\n")]


def one_line(data: bytes) -> bytes:
    return data.replace(b"\n", b"")[:MAX_LINE]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid command with one to three byte-level mutations (no line feed: still one line)."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(MUTATIONS))
        start = draw(st.integers(0, len(data)))
        end = draw(st.integers(start, min(len(data), start + 16)))
        if kind == "insert":
            data[start:start] = draw(FRAGMENTS)
        elif kind == "delete":
            del data[start:end]
        elif kind == "replace":
            data[start:end] = draw(FRAGMENTS)
        elif kind == "repeat":
            data[start:end] = bytes(data[start:end]) * draw(st.integers(2, 200))
        elif kind == "number":
            data[start:end] = draw(st.sampled_from(NUMBERS))
        elif kind == "case":
            data[start:end] = bytes(data[start:end]).swapcase()
        else:
            del data[start:]
    return one_line(bytes(data))


RANDOM_LINES = st.one_of(
    st.binary(max_size=200).map(one_line),
    st.text(max_size=80).map(lambda text: one_line(text.encode())),
)


def lines_of(valid: st.SearchStrategy[bytes], most: int = 6) -> st.SearchStrategy[list[bytes]]:
    """A session: a few lines, each valid, a mutation of a valid one, or random bytes."""
    line = st.one_of(valid, mutated(valid), RANDOM_LINES)
    return st.lists(line, min_size=1, max_size=most)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def plain(login: str, password: str, authzid: str = "") -> bytes:
    return b64(f"{authzid}\0{login}\0{password}".encode())


SASL = st.one_of(
    st.sampled_from([plain(JOHN, PASSWORD), plain(JOHN, "wrong"), plain(MARY, PASSWORD, JOHN), b"*", b"="]),
    st.binary(max_size=60).map(b64),
    st.builds(
        lambda a, b, c: b64(a + b"\0" + b + b"\0" + c),
        st.binary(max_size=8),
        st.sampled_from([JOHN.encode(), b"", b"\xff", b"nobody@example.test"]),
        st.binary(max_size=12),
    ),
)


# -- a client that reads line by line and can switch to TLS -------------------------------------------


class Wire(LineClient):
    """The shared line client with a transcript: a failure shows the session's last lines. Every
    read bounded in size and time."""

    def __init__(self, server: RunningAppliance, listener: str) -> None:
        super().__init__(server.ports[listener], timeout=REPLY_TIMEOUT)
        self.server = server
        self.transcript: list[bytes] = []

    def send(self, data: bytes | str) -> None:
        data = data.encode() if isinstance(data, str) else data
        self.transcript.append(b"C: " + data[:200])
        try:
            super().send(data)
        except OSError as error:
            raise AssertionError(f"the server went away mid-session ({error!r})\n{self.history()}") from None

    def readline(self, limit: int = 1 << 20) -> bytes:
        """One line with its line end; b"" at the end of the connection (a partial line is an error)."""
        try:
            line = super().readline(limit)
        except TimeoutError:
            raise AssertionError(f"no reply within {REPLY_TIMEOUT}s\n{self.history()}") from None
        except OSError as error:
            raise AssertionError(f"the connection failed ({error!r})\n{self.history()}") from None
        assert len(line) < limit, f"a reply line over {limit} bytes\n{self.history()}"
        assert line == b"" or line.endswith(b"\n"), f"connection closed inside a line {line!r}"
        self.transcript.append(b"S: " + line[:200])
        return line

    def read_exactly(self, count: int) -> bytes:
        try:
            return self.read(count)
        except ConnectionError:
            raise AssertionError(f"connection closed inside a literal\n{self.history()}") from None

    def starttls(self) -> None:
        self.wrap(client_context(self.server))  # no bytes after the go-ahead for TLS
        self.transcript.append(b"-- TLS --")

    def expect_close(self) -> None:
        """The server said it is closing: the connection ends within a few more lines."""
        for _ in range(10):
            if self.readline() == b"":
                return
        raise AssertionError(f"still open after a closing reply\n{self.history()}")

    def history(self) -> str:
        return "\n".join(repr(line) for line in self.transcript[-40:])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    """One appliance for the SMTP and POP3 fuzzing (IMAP gets its own below)."""
    factory = ApplianceFactory(tmp_path_factory.mktemp("fuzz"))
    try:
        yield factory.start(
            DOMAINS + NO_AUTOBAN,
            listeners=("smtp", "pop3"),
            server_extra="allow_plaintext_auth = true",  # so USER/PASS/AUTH are parsed before TLS
        )
    finally:
        factory.close()


class LogWatch:
    """The server log past the last check must show no traceback and no internal error."""

    def __init__(self, server: RunningAppliance) -> None:
        self.server = server
        self.offset = len(server.log())

    def check(self, what: str) -> None:
        assert self.server.process.poll() is None, f"appliance serve exited after {what}"
        log = self.server.log()
        fresh, self.offset = log[self.offset :], len(log)
        for bad in ("Traceback", "internal error"):
            assert bad not in fresh, f"{bad!r} in the log after {what}:\n{fresh[-6000:]}"


# -- SMTP ------------------------------------------------------------------------------------------------

SMTP_ADDRESSES = st.sampled_from([
    b"john@example.test", b"mary@example.test", b"team@example.test", b"small@example.test", b"postmaster",
    b"nobody@example.test", b"x@remote.example", b"", b"j\xc3\xb6rg@b\xc3\xbccher.example", b'"a b"@example.test',
    b"@relay.example:john@example.test", b"john@[127.0.0.1]", b"john@[IPv6:::1]", b"john+tag@example.test",
    b"JOHN@EXAMPLE.TEST.", b"a@b@c", b"<john@example.test>", b"john@-bad-.example",
])  # fmt: skip
SMTP_PARAMETERS = st.lists(
    st.sampled_from(
        b"SIZE=100 SIZE=99999999999999999999 SIZE=-1 SIZE= BODY=8BITMIME BODY=7BIT BODY=BINARYMIME SMTPUTF8 "
        b"SMTPUTF8=yes RET=HDRS ENVID=x AUTH=<> = NOTIFY=NEVER ORCPT=rfc822;john@example.test X-\xff=1".split()
    ),
    max_size=3,
)
SMTP_BODY_LINES = st.sampled_from(
    [
        b"Subject: fuzz",
        b"From: a@remote.example",
        b"",
        b".",
        b"..",
        b". x",
        b"x" * 998,
        b"\x00\xff",
        b"MIME-Version: 1.0",
    ]
)
SMTP_COMMANDS = st.one_of(
    st.builds(
        lambda verb, host: verb + b" " + host,
        st.sampled_from([b"EHLO", b"HELO", b"ehlo", b"LHLO"]),
        st.sampled_from([b"client.example", b"[127.0.0.1]", b"", b"x" * 300, b"\xc3\xa9.example"]),
    ),
    st.builds(
        lambda address, params: b" ".join([b"MAIL FROM:<" + address + b">", *params]),
        SMTP_ADDRESSES,
        SMTP_PARAMETERS,
    ),
    st.builds(
        lambda address, params: b" ".join([b"RCPT TO:<" + address + b">", *params]),
        SMTP_ADDRESSES,
        SMTP_PARAMETERS,
    ),
    st.sampled_from(
        listed(b"""
            DATA
            RSET
            NOOP
            QUIT
            HELP
            VRFY john
            EXPN team
            STARTTLS
            AUTH LOGIN
            AUTH PLAIN
            AUTH CRAM-MD5
            AUTH XOAUTH2 dXNlcj0=
            BDAT 10
            BDAT 0 LAST
            BDAT 99999999999999999999 LAST
            ETRN example.test
            TURN
            MAIL FROM: <>
            RCPT TO:john
        """)
    ),
    st.builds(
        lambda mechanism, blob: b"AUTH " + mechanism + b" " + blob,
        st.sampled_from([b"PLAIN", b"LOGIN"]),
        SASL,
    ),
    SASL,
    SMTP_BODY_LINES,
)
SMTP_REPLY = re.compile(rb"([2-5][0-9][0-9])([ -])[^\r\n\x00]*\r\n|([2-5][0-9][0-9])\r\n")


def smtp_reply(wire: Wire) -> bytes:
    """One whole reply (every line checked); the code. AssertionError when there is none."""
    code = None
    for _ in range(100):
        line = wire.readline()
        assert line, f"the connection closed without a reply\n{wire.history()}"
        match = SMTP_REPLY.fullmatch(line)
        assert match, f"malformed SMTP reply line {line!r}\n{wire.history()}"
        this = match.group(1) or match.group(3)
        assert code is None or this == code, f"a multi-line reply changed its code\n{wire.history()}"
        code = this
        if match.group(2) != b"-":
            return code
    raise AssertionError(f"a reply of over 100 lines\n{wire.history()}")


def smtp_session(server: RunningAppliance, lines: list[bytes]) -> None:
    wire = Wire(server, "smtp")
    try:
        assert smtp_reply(wire) == b"220"
        in_data = False
        for line in lines:
            wire.send(line + b"\r\n")
            if in_data and line != b".":
                continue  # a line of the message: no reply until the lone dot
            in_data = False
            code = smtp_reply(wire)
            if code == b"354":
                in_data = True
            elif code == b"220":  # the go-ahead for STARTTLS (RFC 3207 §4)
                wire.starttls()
            elif code in (b"221", b"421"):  # RFC 5321 §3.8: the server closes only after these
                wire.expect_close()
                return
        if in_data:
            wire.send(b".\r\n")
            if smtp_reply(wire) in (b"221", b"421"):
                wire.expect_close()
    finally:
        wire.close()


def smtp_still_serves(server: RunningAppliance) -> None:
    wire = Wire(server, "smtp")
    try:
        assert smtp_reply(wire) == b"220"
        wire.send(b"NOOP\r\n")
        assert smtp_reply(wire) == b"250"
    finally:
        wire.close()


def test_fuzzed_smtp_sessions_get_well_formed_replies_and_leave_the_server_serving(
    server: RunningAppliance,
) -> None:
    watch = LogWatch(server)

    def check(lines: list[bytes]) -> None:
        smtp_session(server, lines)
        smtp_still_serves(server)
        watch.check(f"SMTP lines {lines!r}")

    cases = fuzz(lines_of(SMTP_COMMANDS), check)
    print(f"\nfuzz smtp: {cases} cases")
    assert cases >= EXAMPLES // 2
    assert "Traceback" not in server.log() and "internal error" not in server.log()


# -- POP3 ------------------------------------------------------------------------------------------------

POP3_COMMANDS = st.one_of(
    st.sampled_from(
        [f"USER {JOHN}".encode(), f"PASS {PASSWORD}".encode()]
        + listed(b"""
            USER nobody@example.test
            PASS wrong
            STAT
            LIST
            UIDL
            RSET
            NOOP
            QUIT
            CAPA
            STLS
            AUTH
            AUTH PLAIN
            AUTH LOGIN
            APOP john 0123456789abcdef0123456789abcdef
            LAST
            XTND XMIT
            USER
            PASS
        """)
    ),
    st.builds(
        lambda verb, number: verb + b" " + number,
        st.sampled_from([b"LIST", b"UIDL", b"RETR", b"DELE", b"TOP"]),
        st.sampled_from(NUMBERS),
    ),
    st.builds(lambda a, b: b"TOP " + a + b" " + b, st.sampled_from(NUMBERS), st.sampled_from(NUMBERS)),
    st.builds(lambda blob: b"AUTH PLAIN " + blob, SASL),
    SASL,
)
POP3_STATUS = re.compile(rb"(\+OK|-ERR)( [^\r\n\x00]*)?\r\n")


def pop3_multiline(line: bytes) -> bool:
    """Whether "+OK" to this command line is followed by a multi-line body (RFC 1939 §3, RFC 2449)."""
    keyword, _, argument = line.partition(b" ")
    name = keyword.decode("ascii", "replace").upper()
    try:
        rest = argument.decode()
    except UnicodeDecodeError:
        return False
    return name in ("CAPA", "RETR", "TOP") or (name in ("LIST", "UIDL", "AUTH") and not rest.strip())


def pop3_reply(wire: Wire, multiline: bool) -> bytes:
    """The status line (checked), and the body up to its "." when `multiline` and the status is +OK."""
    status = wire.readline()
    assert status, f"the connection closed without a reply\n{wire.history()}"
    if status in (b"+ \r\n", b"+\r\n"):
        return status  # a SASL continuation (RFC 5034 §4)
    assert POP3_STATUS.fullmatch(status), f"malformed POP3 status line {status!r}\n{wire.history()}"
    if multiline and status.startswith(b"+OK"):
        for _ in range(1_000_000):
            line = wire.readline()
            assert line.endswith(b"\r\n"), f"a multi-line reply ended early\n{wire.history()}"
            if line == b".\r\n":
                break
    return status


def pop3_session(server: RunningAppliance, lines: list[bytes]) -> None:
    wire = Wire(server, "pop3")
    try:
        assert pop3_reply(wire, False).startswith(b"+OK")
        pending: list[bytes] = list(lines)
        while pending:
            line = pending.pop(0)
            wire.send(line + b"\r\n")
            status = pop3_reply(wire, pop3_multiline(line))
            if status.startswith(b"+ "):  # the server waits for the SASL response: the next line
                wire.send((pending.pop(0) if pending else b"*") + b"\r\n")
                status = pop3_reply(wire, False)
            name = line.partition(b" ")[0].upper()
            if name == b"STLS" and status.startswith(b"+OK"):
                wire.starttls()
            elif (name == b"QUIT" and status.startswith((b"+OK", b"-ERR"))) or b"closing" in status:
                wire.expect_close()
                return
    finally:
        wire.close()


def pop3_still_serves(server: RunningAppliance) -> None:
    """A fresh connection: the greeting, a login (as another account) and NOOP."""
    wire = Wire(server, "pop3")
    try:
        assert pop3_reply(wire, False).startswith(b"+OK")
        for command in (f"USER {MARY}", f"PASS {PASSWORD}", "NOOP", "QUIT"):
            wire.send(command.encode() + b"\r\n")
            status = pop3_reply(wire, False)
            assert status.startswith(b"+OK"), f"{command}: {status!r}"
    finally:
        wire.close()


def keep_messages(server: RunningAppliance, local: str, count: int = 3) -> None:
    """Sessions may delete mail: top the Maildir up so RETR, TOP and FETCH have something to read."""
    root = server.data_dir / "mail" / "example.test" / local
    present = sum(1 for sub in ("new", "cur") if (root / sub).is_dir() for _ in (root / sub).iterdir())
    for n in range(present, count):
        put_message(
            server, f"From: a@remote.example\nSubject: fuzz {n}\n\n.line\n..two\nlast\n".encode(), local
        )


def test_fuzzed_pop3_sessions_get_well_formed_replies_and_leave_the_server_serving(
    server: RunningAppliance,
) -> None:
    watch = LogWatch(server)

    def check(lines: list[bytes]) -> None:
        keep_messages(server, "john")
        pop3_session(server, lines)
        pop3_still_serves(server)
        watch.check(f"POP3 lines {lines!r}")

    cases = fuzz(lines_of(POP3_COMMANDS), check)
    print(f"\nfuzz pop3: {cases} cases")
    assert cases >= EXAMPLES // 2
    assert "Traceback" not in server.log() and "internal error" not in server.log()


# -- IMAP ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    """A literal argument (RFC 3501 §4.3): `{n}` waits for "+", `{n+}` (RFC 7888) does not.
    `announced` overrides the size sent: a huge one the server must refuse without asking for it."""

    data: bytes
    plus: bool = False
    announced: int | None = None


Part = bytes | Literal
Parts = tuple[Part, ...]


def join(*items: Parts | bytes) -> Parts:
    """Tokens separated by one space, adjacent text merged."""
    out: list[Part] = []
    for index, item in enumerate(items):
        parts: Parts = (item,) if isinstance(item, bytes) else item
        if index:
            parts = (b" ", *parts)
        for part in parts:
            if isinstance(part, bytes) and out and isinstance(out[-1], bytes):
                out[-1] += part
            else:
                out.append(part)
    return tuple(out)


def enclose(inner: Parts) -> Parts:
    """`inner` in parentheses (a list, RFC 3501 §4.4)."""
    merged: list[Part] = []
    for part in (b"(", *inner, b")"):
        if isinstance(part, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += part
        else:
            merged.append(part)
    return tuple(merged)


def quoted(data: bytes) -> bytes:
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


TEXT = st.binary(max_size=24).map(lambda data: data.replace(b"\r", b"").replace(b"\n", b""))
LITERALS = st.builds(Literal, st.binary(max_size=40), st.booleans())
HUGE_LITERAL = st.sampled_from([Literal(b"", False, 10**10), Literal(b"", False, 2**64)])


def astring(values: list[bytes]) -> st.SearchStrategy[Parts]:
    """An atom, a quoted string or a literal carrying one of `values` (or random text)."""
    value = st.one_of(st.sampled_from(values), TEXT)
    return st.one_of(
        st.sampled_from(values).map(lambda v: (v,)),
        value.map(lambda v: (quoted(v),)),
        st.builds(lambda v, plus: (Literal(v, plus),), value, st.booleans()),
    )


MAILBOXES = astring(
    [b"INBOX", b"inbox", b"Sent", b"Trash", b"a/b", b"&AMk-", b"..", b"../x", b"a%", b"*", b"x" * 300]
)
SEQUENCES = st.one_of(
    st.sampled_from(
        [b"1", b"1:*", b"*", b"2:4", b"1,3,5:7", b"0", b"4294967295", b"4294967296", b"1:", b"$"]
    ),
    st.lists(st.integers(0, 2**32 + 1).map(lambda n: str(n).encode()), min_size=1, max_size=4).map(b",".join),
)
FETCH_ITEMS = st.sampled_from([
    b"FLAGS", b"UID", b"RFC822.SIZE", b"INTERNALDATE", b"ENVELOPE", b"BODYSTRUCTURE", b"BODY", b"BODY[]",
    b"BODY.PEEK[]", b"BODY[HEADER]", b"BODY[TEXT]", b"BODY[1]", b"BODY[1.2.MIME]", b"BODY[0]",
    b"BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]", b"BODY[HEADER.FIELDS.NOT (DATE)]", b"BODY[]<0.10>",
    b"BODY[]<4294967295.4294967295>", b"BINARY[1]", b"BINARY.SIZE[1]", b"RFC822", b"RFC822.HEADER",
    b"RFC822.TEXT", b"MODSEQ", b"ALL", b"FAST", b"FULL", b"BODY[", b"BODY[]<",
])  # fmt: skip
FETCH_ATTRIBUTES = st.one_of(
    FETCH_ITEMS.map(lambda item: (item,)),
    st.lists(FETCH_ITEMS, max_size=5).map(lambda items: (b"(" + b" ".join(items) + b")",)),
)
FLAGS = st.lists(
    st.sampled_from(
        rb"\Seen \Deleted \Flagged \Answered \Draft \Recent \* $Label \Bogus".split() + [b"x" * 100]
    ),
    max_size=4,
).map(lambda flags: b"(" + b" ".join(flags) + b")")
DATES = st.sampled_from(
    [b"1-Feb-1994", b"31-Dec-9999", b"0-Jan-0", b"29-Feb-2001", b"1-Foo-2000", b'"1-Feb-1994"']
)
SEARCH_KEYS: st.SearchStrategy[Parts] = st.recursive(
    st.one_of(
        st.sampled_from(
            b"ALL ANSWERED DELETED FLAGGED NEW OLD RECENT SEEN UNSEEN UNDELETED DRAFT".split()
            + [b"LARGER 0", b"SMALLER 99999999999999999999", b"KEYWORD $Label"]
        ).map(lambda key: (key,)),
        SEQUENCES.map(lambda s: (s,)),
        st.builds(lambda s: (b"UID " + s,), SEQUENCES),
        st.builds(
            lambda key, date: (key + b" " + date,),
            st.sampled_from([b"SINCE", b"BEFORE", b"ON", b"SENTON"]),
            DATES,
        ),
        st.builds(
            lambda key, value: join(key, value),
            st.sampled_from([b"SUBJECT", b"FROM", b"TO", b"BODY", b"TEXT", b"BCC"]),
            astring([b"fuzz", b"", b"\xc3\xa9"]),
        ),
        st.builds(lambda field, value: join(b"HEADER", field, value), astring([b"Subject"]), astring([b"x"])),
    ),
    lambda keys: st.one_of(
        st.builds(lambda key: join(b"NOT", key), keys),
        st.builds(lambda a, b: join(b"OR", a, b), keys, keys),
        st.lists(keys, min_size=1, max_size=3).map(lambda items: enclose(join(*items))),
    ),
    max_leaves=6,
)
LOGIN_NAMES = astring([JOHN.encode(), b"nobody@example.test", b""])
PASSWORDS = astring([PASSWORD.encode(), b"wrong"])
UID_COMMANDS = st.one_of(
    st.builds(lambda s, attrs: join(b"FETCH", s, attrs), SEQUENCES, FETCH_ATTRIBUTES),
    st.builds(lambda keys: join(b"SEARCH", keys), SEARCH_KEYS),
    st.builds(
        lambda s, op, flags: join(b"STORE", s, op, flags),
        SEQUENCES,
        st.sampled_from([b"+FLAGS", b"-FLAGS", b"FLAGS", b"+FLAGS.SILENT", b"FLAGS.SILENT", b"X-FLAGS"]),
        FLAGS,
    ),
    st.builds(
        lambda verb, s, box: join(verb, s, box), st.sampled_from([b"COPY", b"MOVE"]), SEQUENCES, MAILBOXES
    ),
    st.builds(lambda s: join(b"EXPUNGE", s), SEQUENCES),
    st.builds(
        lambda returns, criteria, charset, keys: join(b"SORT", *returns, criteria, charset, keys),
        st.lists(
            st.sampled_from([b"RETURN (MIN MAX ALL COUNT)", b"RETURN ()", b"RETURN (BOGUS)"]), max_size=1
        ),
        st.sampled_from(
            [b"(DATE)", b"(REVERSE SUBJECT FROM)", b"(DISPLAYTO SIZE)", b"(REVERSE)", b"()", b"DATE", b"(X)"]
        ),
        st.sampled_from([b"UTF-8", b"US-ASCII", b"KOI8-R"]),
        SEARCH_KEYS,
    ),
    st.builds(
        lambda algorithm, charset, keys: join(b"THREAD", algorithm, charset, keys),
        st.sampled_from([b"REFERENCES", b"ORDEREDSUBJECT", b"REFS", b"(REFERENCES)"]),
        st.sampled_from([b"UTF-8", b"KOI8-R"]),
        SEARCH_KEYS,
    ),
)
IMAP_ARGUMENTS: st.SearchStrategy[Parts] = st.one_of(
    st.sampled_from(
        listed(b"""
            CAPABILITY
            NOOP
            LOGOUT
            STARTTLS
            ID NIL
            ID ("name" "fuzz")
            ID ("a")
            IDLE
            CHECK
            CLOSE
            UNSELECT
            EXPUNGE
            NAMESPACE
            ENABLE CONDSTORE UTF8=ACCEPT
            AUTHENTICATE PLAIN
            AUTHENTICATE CRAM-MD5
            SELECT INBOX
            EXAMINE INBOX
            LIST "" "*"
            LIST "" %
            LSUB "" "*"
            UID
            X-UNKNOWN arg
        """)
    ).map(lambda text: (text,)),
    st.builds(lambda user, password: join(b"LOGIN", user, password), LOGIN_NAMES, PASSWORDS),
    st.builds(lambda blob: (b"AUTHENTICATE PLAIN " + blob,), SASL),
    st.builds(
        lambda verb, box: join(verb, box),
        st.sampled_from(b"SELECT EXAMINE CREATE DELETE SUBSCRIBE UNSUBSCRIBE".split()),
        MAILBOXES,
    ),
    st.builds(lambda a, b: join(b"RENAME", a, b), MAILBOXES, MAILBOXES),
    st.builds(
        lambda verb, ref, pattern: join(verb, ref, pattern),
        st.sampled_from([b"LIST", b"LSUB"]),
        MAILBOXES,
        MAILBOXES,
    ),
    st.builds(
        lambda box, items: join(b"STATUS", box, items),
        MAILBOXES,
        st.sampled_from(
            [
                b"(MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT SIZE)",
                b"(MESSAGES)",
                b"()",
                b"(BOGUS)",
                b"MESSAGES",
            ]
        ),
    ),
    st.builds(
        lambda box, flags, date, message: join(b"APPEND", box, *flags, *date, (message,)),
        MAILBOXES,
        st.lists(FLAGS, max_size=1),
        st.lists(
            st.sampled_from([b'"7-Feb-1994 21:52:25 -0800"', b'"99-Xxx-0000 99:99:99 +9999"']), max_size=1
        ),
        st.one_of(
            st.builds(
                Literal,
                st.sampled_from([b"Subject: appended\r\n\r\nbody\r\n", b"", b"\x00\xff", b"no header"]),
                st.booleans(),
            ),
            HUGE_LITERAL,
        ),
    ),
    st.builds(lambda s, attrs: join(b"FETCH", s, attrs), SEQUENCES, FETCH_ATTRIBUTES),
    st.builds(
        lambda charset, keys: join(b"SEARCH", *charset, keys),
        st.lists(
            st.sampled_from([b"CHARSET UTF-8", b"CHARSET US-ASCII", b"CHARSET KOI8-R", b"RETURN (MIN MAX)"]),
            max_size=1,
        ),
        SEARCH_KEYS,
    ),
    st.builds(lambda command: join(b"UID", command), UID_COMMANDS),
    UID_COMMANDS,
    st.builds(lambda huge: join(b"LOGIN", (huge,), b"x"), HUGE_LITERAL),
)
TAGS = st.one_of(st.sampled_from([b"a1", b"A.2", b"tag]"]), st.from_regex(rb"\A[a-z0-9]{1,8}\Z"))


@st.composite
def imap_commands(draw: st.DrawFn) -> Parts:
    """A tagged command; sometimes with a byte-level mutation of one of its text parts."""
    parts = list(join(draw(TAGS), draw(IMAP_ARGUMENTS)))
    choice = draw(st.sampled_from(["valid", "mutated", "random"]))
    if choice == "random":
        return (draw(RANDOM_LINES),)
    if choice == "mutated":
        texts = [index for index, part in enumerate(parts) if isinstance(part, bytes)]
        index = draw(st.sampled_from(texts))
        parts[index] = draw(mutated(st.just(parts[index])))
    return tuple(parts)


TAG_RE = re.compile(rb"[!#$&'\x2c-\x5b\x5d-\x7a|}~]+")  # RFC 3501 §9: astring chars but "+"
LITERAL_AT_END = re.compile(rb"~?\{(\d+)\+?\}\r\n\Z")
TRAILING_LITERAL = re.compile(rb"\{\d+\+?\}\Z")


def wire_lines(parts: Parts) -> list[tuple[bytes, Literal | None]]:
    """The command as lines: each line's text and the literal it announces at its end."""
    lines: list[tuple[bytes, Literal | None]] = []
    text = b""
    for part in parts:
        if isinstance(part, Literal):
            lines.append((text, part))
            text = b""
        else:
            text += part
    # A last line that happens to end like "{5}" would announce a literal nobody sends.
    lines.append((text + b"x" if TRAILING_LITERAL.search(text) else text, None))
    return lines


def announcement(literal: Literal) -> bytes:
    size = len(literal.data) if literal.announced is None else literal.announced
    return b"{%d%s}" % (size, b"+" if literal.plus else b"")


class ImapWire(Wire):
    def __init__(self, server: RunningAppliance, listener: str) -> None:
        super().__init__(server, listener)
        self.said_bye = False
        self.finished = b""  # the line that ended the last command

    def response_line(self) -> bytes:
        """One response line with its literals (RFC 3501 §4.3), checked; b"" after BYE and close."""
        line = self.readline()
        if not line:
            assert self.said_bye, f"the connection closed without BYE\n{self.history()}"
            return b""
        whole = line
        for _ in range(1000):
            match = LITERAL_AT_END.search(line)
            if match is None:
                break
            whole += self.read_exactly(int(match.group(1)))
            line = self.readline()
            assert line, f"connection closed after a literal\n{self.history()}"
            whole += line
        assert whole.endswith(b"\r\n"), whole
        assert re.match(rb"\* [^\r\n]|\+( |\r\n)|[^ \r\n]+ (OK|NO|BAD)[ \r]", whole), (
            f"malformed IMAP response {whole[:300]!r}\n{self.history()}"
        )
        if whole.startswith(b"* BYE"):
            self.said_bye = True
        return whole

    def until_done(self, tag: bytes, waiting_for_literal: bool = False) -> bytes | None:
        """Read to the end of the command `tag` (`*`: a command without a valid tag, answered
        `* BAD`); its status, or None at a continuation when `waiting_for_literal`."""
        for _ in range(100_000):
            line = self.response_line()
            if not line:
                return b"BYE"
            if line.startswith(b"+"):
                if waiting_for_literal:
                    return None
                self.send(b"DONE\r\n")  # IDLE (RFC 2177) ends; a SASL exchange is cut short
                continue
            if tag == b"*" and line.startswith(b"* BAD"):
                self.finished = line
                return b"BAD"
            if not line.startswith(b"* "):
                assert line.startswith(tag + b" "), f"a tagged response for another tag\n{self.history()}"
                self.finished = line
                return line.split(b" ", 2)[1]
        raise AssertionError("no end of the response")

    def command(self, parts: Parts) -> bytes:
        """Send a command (waiting for "+" before each synchronizing literal); its status."""
        lines = wire_lines(parts)
        first = lines[0][0] + (announcement(lines[0][1]) if lines[0][1] is not None else b"")
        head = first.partition(b" ")[0]
        tag = head if first.strip() and TAG_RE.fullmatch(head) else b"*"
        for text, literal in lines:
            if literal is None:
                self.send(text + b"\r\n")
                break
            self.send(text + announcement(literal) + b"\r\n")
            if not literal.plus:
                status = self.until_done(tag, waiting_for_literal=True)
                if status is not None:
                    return status  # the literal was refused: the command is over
                assert literal.announced is None, f"the server asked for a {literal.announced}-octet literal"
            self.send(literal.data)
        status = self.until_done(tag)
        return status


def imap_name(parts: Parts) -> bytes:
    first = parts[0] if parts and isinstance(parts[0], bytes) else b""
    return first.partition(b" ")[2].partition(b" ")[0].upper()


@pytest.fixture(scope="module")
def imap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    factory = ApplianceFactory(tmp_path_factory.mktemp("fuzz-imap"))
    try:
        yield factory.start(
            DOMAINS + NO_AUTOBAN, listeners=("smtp", "imap"), server_extra="allow_plaintext_auth = true"
        )
    finally:
        factory.close()


def imap_session(server: RunningAppliance, commands: list[Parts]) -> None:
    wire = ImapWire(server, "imap")
    try:
        assert wire.response_line().startswith(b"* OK")
        for parts in commands:
            status = wire.command(parts)
            if status == b"OK" and imap_name(parts) == b"STARTTLS":
                wire.starttls()
            if wire.said_bye:
                wire.expect_close()
                return
    finally:
        wire.close()


def imap_still_serves(server: RunningAppliance) -> None:
    wire = ImapWire(server, "imap")
    try:
        assert wire.response_line().startswith(b"* OK")
        assert wire.command((b"h1 NOOP",)) == b"OK"
        assert wire.command((f"h2 LOGIN {MARY} {PASSWORD}".encode(),)) == b"OK"
        assert wire.command((b"h3 SELECT INBOX",)) == b"OK"
        assert wire.command((b"h4 NOOP",)) == b"OK"
    finally:
        wire.close()


def deliver_if_few(server: RunningAppliance, local: str, count: int = 3) -> None:
    root = server.data_dir / "mail" / "example.test" / local
    present = sum(1 for sub in ("new", "cur") if (root / sub).is_dir() for _ in (root / sub).iterdir())
    if present < count:
        body = "From: a@remote.example\r\nSubject: fuzz\r\n\r\nline\r\n.dot\r\n"
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=REPLY_TIMEOUT) as client:
            for _ in range(present, count):
                client.sendmail("a@remote.example", [f"{local}@example.test"], body)


def test_fuzzed_imap_sessions_get_well_formed_responses_and_leave_the_server_serving(
    imap_server: RunningAppliance,
) -> None:
    watch = LogWatch(imap_server)

    def check(commands: list[Parts]) -> None:
        deliver_if_few(imap_server, "john")
        imap_session(imap_server, commands)
        imap_still_serves(imap_server)
        watch.check(f"IMAP commands {commands!r}")

    # Sessions that log in first reach the authenticated and selected states.
    login = (f"a0 LOGIN {JOHN} {PASSWORD}".encode(),)
    select = (b"a0 SELECT INBOX",)
    sessions = st.one_of(
        st.lists(imap_commands(), min_size=1, max_size=6),
        st.lists(imap_commands(), min_size=1, max_size=5).map(lambda c: [login, select, *c]),
    )
    cases = fuzz(sessions, check)
    print(f"\nfuzz imap: {cases} cases")
    assert cases >= EXAMPLES // 2
    log = imap_server.log()
    assert "Traceback" not in log and "internal error" not in log


# -- what the fuzzers found, kept as plain tests ---------------------------------------------------------


def test_control_characters_in_an_unknown_smtp_command_are_not_echoed_into_the_reply(
    server: RunningAppliance,
) -> None:
    wire = Wire(server, "smtp")
    try:
        assert smtp_reply(wire) == b"220"
        wire.send(b"\x00EHLO client.example\r\nA\rB\r\n")
        assert smtp_reply(wire) == b"500"  # smtp_reply refuses a NUL or a bare CR in the line
        assert smtp_reply(wire) == b"500"
    finally:
        wire.close()


def test_too_many_unknown_smtp_commands_get_a_421_before_the_server_closes(server: RunningAppliance) -> None:
    wire = Wire(server, "smtp")
    try:
        assert smtp_reply(wire) == b"220"
        codes = []
        for n in range(10):
            wire.send(b"XBOGUS%d\r\n" % n)
            codes.append(smtp_reply(wire))
            if codes[-1] == b"421":
                break
        # RFC 5321 §3.8: a server closes the connection only after QUIT or a 421.
        assert codes[-1] == b"421" and set(codes[:-1]) == {b"500"}, codes
        wire.expect_close()
    finally:
        wire.close()


def test_an_imap_password_that_is_not_utf8_is_refused_without_a_traceback(
    imap_server: RunningAppliance,
) -> None:
    watch = LogWatch(imap_server)
    wire = ImapWire(imap_server, "imap")
    try:
        assert wire.response_line().startswith(b"* OK")
        assert wire.command((f"p1 LOGIN {JOHN} ".encode(), Literal(b"\x80pass\xff"), b"")) in (b"NO", b"BAD")
        assert b"[UNAVAILABLE]" not in wire.finished, wire.finished  # not "try again later" either
    finally:
        wire.close()
    imap_still_serves(imap_server)
    watch.check("LOGIN with a password that is not UTF-8")


# -- the manifest loader ---------------------------------------------------------------------------------

SEEDS = [ROOT / "appliance.toml", *sorted((ROOT / "tests" / "manifests").glob("*/*.toml"))]
SEED_TEXTS = [path.read_bytes() for path in SEEDS]
VALID_SEEDS = [path.read_bytes() for path in SEEDS if "broken" not in path.parts]
KEYS = sorted(set(re.findall(rb"^\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=", b"\n".join(SEED_TEXTS), re.MULTILINE)))
TABLES = sorted(set(re.findall(rb"^\s*(\[\[?[^\]\n]+\]\]?)", b"\n".join(SEED_TEXTS), re.MULTILINE)))
UNITS = [b"", b"B", b"KB", b"KiB", b"MB", b"GB", b"TB", b"s", b"min", b"h", b"days", b"ms", b"xyz", b"1h30m"]
TOML_SCALARS = st.one_of(
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.sampled_from(
        b"0 -1 1e999 -1e999 inf -inf nan 0x10 0o7 0b1 1_000 3.14 true false 1979-05-27T07:32:00Z 07:32:00 "
        b"""1979-05-27 "" '' [] {} "127.0.0.1:99999" "[::1]:25" ":25" "0.0.0.0/0" "::/0" "postmaster" """
        b'"ldaps://dc1.example.test" "ldap://[::1]:389" "TLSv1.0" "TLSv1.3" "debug" "active-directory" '
        b'"local-system" "ldap" "upn" "required"'.split()
        + [b'"$2b$04$' + b"a" * 53 + b'"']
    ),
    st.text(max_size=30).map(
        lambda text: json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass")
    ),
    st.builds(
        lambda number, unit: b'"' + number + b" " + unit + b'"',
        st.sampled_from(NUMBERS + [b"25", b"0.5", b"1e3", b"-5"]),
        st.sampled_from(UNITS),
    ),
)
SEED_VALUES = sorted(set(re.findall(rb"^[^=#\n]+=[ \t]*(.+?)[ \t]*$", b"\n".join(SEED_TEXTS), re.MULTILINE)))
TOML_VALUES = st.recursive(
    st.one_of(st.sampled_from(SEED_VALUES), TOML_SCALARS),
    lambda values: st.one_of(
        st.lists(values, max_size=4).map(lambda items: b"[" + b", ".join(items) + b"]"),
        st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=3).map(
            lambda pairs: b"{ " + b", ".join(k + b" = " + v for k, v in pairs) + b" }"
        ),
    ),
    max_leaves=6,
)
EDITS = ("value",) * 5 + ("key", "insert", "table", "delete", "duplicate", "bytes")
KEY_VALUE = re.compile(rb"^(\s*)([^=\s][^=]*?)(\s*=\s*)(.*)$")


@st.composite
def manifest_texts(draw: st.DrawFn) -> bytes:
    """A seed manifest with line-level edits (values, keys, tables) and byte-level mutations."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(st.binary(max_size=400), st.text(max_size=200).map(str.encode)))
    lines = draw(st.one_of(st.sampled_from(VALID_SEEDS), st.sampled_from(SEED_TEXTS))).split(b"\n")
    for _ in range(draw(st.integers(1, 4))):
        pairs = [index for index, line in enumerate(lines) if KEY_VALUE.match(line)]
        kind = draw(st.sampled_from(EDITS))
        if kind in ("value", "key") and pairs:
            index = draw(st.sampled_from(pairs))
            match = KEY_VALUE.match(lines[index])
            assert match is not None
            indent, key, equals, value = match.groups()
            if kind == "value":
                value = draw(TOML_VALUES)
            else:
                key = draw(st.one_of(st.sampled_from(KEYS), mutated(st.just(key))))
            lines[index] = indent + key + equals + value
            continue
        index = draw(st.integers(0, max(0, len(lines) - 1)))
        if not lines:
            lines.append(b"")
        if kind == "insert":
            lines.insert(index, draw(st.sampled_from(KEYS)) + b" = " + draw(TOML_VALUES))
        elif kind == "table":
            lines.insert(index, draw(st.one_of(st.sampled_from(TABLES), mutated(st.sampled_from(TABLES)))))
        elif kind == "delete":
            del lines[index]
        elif kind == "duplicate":
            lines.insert(index, lines[index])
        else:
            lines[index] = draw(mutated(st.just(lines[index])))
    return b"\n".join(lines)


def test_fuzzed_manifests_give_a_manifest_or_manifest_error_and_nothing_else() -> None:
    outcomes: Counter[str] = Counter()

    def check(raw: bytes) -> None:
        try:
            loaded = parse_manifest(raw, "fuzz.toml")
        except ManifestError as error:
            # What `appliance validate` prints, as text and as JSON.
            assert error.problems, "a ManifestError without a problem"
            assert all(isinstance(line, str) and line.startswith("fuzz.toml") for line in error.lines())
            json.dumps([problem.as_dict(error.filename) for problem in error.problems])
            outcomes["invalid"] += 1
            outcomes["syntax" if "TOML syntax error" in str(error) else "semantic"] += 1
            return
        build_snapshot(loaded)  # what a reload does next with a valid manifest
        outcomes["valid"] += 1

    started = time.monotonic()
    cases = fuzz(manifest_texts(), check, examples=EXAMPLES * 5)
    print(
        f"\nfuzz manifest: {cases} cases in {time.monotonic() - started:.1f}s: {outcomes['valid']} valid, "
        f"{outcomes['invalid']} refused ({outcomes['syntax']} TOML syntax, {outcomes['semantic']} validation)"
    )
    assert cases >= EXAMPLES
    # The fuzzer reached past the TOML parser into validation, and kept some manifests valid.
    assert outcomes["semantic"] > cases // 10 and outcomes["valid"] > 0, outcomes
