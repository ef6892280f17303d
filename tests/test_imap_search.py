"""SEARCH keys (RFC 3501 §6.4.4) compiled and run against real MIME messages."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from appliance.imap.message import ParsedMessage
from appliance.imap.search import Search, SearchBatch, SearchError, compile_search, joined_values
from appliance.imap.tokens import Atom, Token


@dataclass(frozen=True)
class Info:
    """A stand-in for mailbox.MessageInfo with the fields the contract names."""

    uid: int
    key: str
    flags: frozenset[str]
    internaldate: float
    size: int


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def local(year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> float:
    return time.mktime((year, month, day, hour, minute, 0, 0, 0, -1))


MESSAGES = [
    crlf(
        "From: Jane Doe <jane@example.test>\nTo: team@example.test\nCc: boss@example.test\n"
        "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_der_Stra=C3=9Fe?=\nDate: Tue, 1 Feb 1994 23:30:00 -0800\n"
        "X-Priority: 1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
        "Das Fr=C3=BChst=C3=BCck ist fertig.\n"
    ),
    crlf(
        "From: bob@example.test\nTo: jane@example.test\nBcc: secret@example.test\nSubject: Lunch?\n"
        "Date: Wed, 2 Feb 1994 01:00:00 +0900\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        "zrrOsc67zrfOvM6tz4HOsSwgbHVuY2ggYXQgbm9vbg==\n--b\n"
        "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nc2VjcmV0IHdvcmQ=\n--b--\n"
    ),
    crlf("From: carol@example.test\nSubject: no date here\n\nplain body\n"),
]
INFOS = [
    Info(10, "k10", frozenset({"\\Seen", "\\Answered"}), local(1994, 2, 1), 400),
    Info(20, "k20", frozenset({"\\Flagged", "$Important"}), local(1994, 2, 2, 0, 30), 1500),
    Info(35, "k35", frozenset({"\\Deleted", "\\Draft", "\\Seen"}), local(1994, 2, 5), 90),
]
RECENT = {20, 35}


def run(compiled: Search, counter: list[int] | None = None) -> list[int]:
    """The sequence numbers of MESSAGES that `compiled` selects; `counter` gets a 1 per parse."""

    def message(position: int) -> ParsedMessage:
        if counter is not None:
            counter.append(1)
        return ParsedMessage.parse(MESSAGES[position])

    batch = SearchBatch([1, 2, 3], INFOS, RECENT.__contains__, message)  # type: ignore[arg-type]
    return [position + 1 for position in compiled.select(batch)]


def tokens(text: str) -> list[Token]:
    """A tiny stand-in for the command parser: atoms, "quoted" strings and (lists)."""
    out: list[Token] = []
    stack = [out]
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == " ":
            pos += 1
        elif char == "(":
            inner: list[Token] = []
            stack[-1].append(inner)
            stack.append(inner)
            pos += 1
        elif char == ")":
            stack.pop()
            pos += 1
        elif char == '"':
            end = text.index('"', pos + 1)
            stack[-1].append(text[pos + 1 : end].encode("utf-8"))
            pos = end + 1
        else:
            end = pos
            while end < len(text) and text[end] not in ' ()"':
                end += 1
            stack[-1].append(Atom(text[pos:end]))
            pos = end
    return out


def search(text: str, charset: str | None = None) -> list[int]:
    compiled = compile_search(tokens(text), max_seq=3, max_uid=35, charset=charset)
    return run(compiled)


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("ALL", [1, 2, 3]),
        ("SEEN", [1, 3]),
        ("UNSEEN", [2]),
        ("ANSWERED", [1]),
        ("UNANSWERED", [2, 3]),
        ("DELETED", [3]),
        ("UNDELETED", [1, 2]),
        ("DRAFT", [3]),
        ("UNDRAFT", [1, 2]),
        ("FLAGGED", [2]),
        ("UNFLAGGED", [1, 3]),
        ("KEYWORD $important", [2]),
        ("UNKEYWORD $Important", [1, 3]),
        ("RECENT", [2, 3]),
        ("NEW", [2]),
        ("OLD", [1]),
        ("LARGER 400", [2]),
        ("SMALLER 400", [3]),
        ("2:*", [2, 3]),
        ("*", [3]),
        ("1,3", [1, 3]),
        ("UID 20:*", [2, 3]),
        ("UID 36:*", [3]),  # RFC 3501 §6.4.8: "*" is the largest UID even when N is above it
        ("UID 1:15,35", [1, 3]),
        ("NOT SEEN", [2]),
        ("OR DELETED FLAGGED", [2, 3]),
        ("OR (SEEN ANSWERED) NOT OR FLAGGED DRAFT", [1]),
        ("NOT (SEEN UNDELETED)", [2, 3]),
        ("SEEN 2:3", [3]),
    ],
)
def test_keys_on_flags_sizes_and_sets_need_no_message(criteria: str, expected: list[int]) -> None:
    reads: list[int] = []
    compiled = compile_search(tokens(criteria), max_seq=3, max_uid=35)
    assert not compiled.needs_message
    assert run(compiled, reads) == expected
    assert reads == []


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("ON 2-Feb-1994", [2]),
        ("BEFORE 2-Feb-1994", [1]),
        ("SINCE 2-Feb-1994", [2, 3]),
        ('SINCE "05-feb-1994"', [3]),
        ("BEFORE 1-Feb-1994", []),
    ],
)
def test_internal_dates_compare_by_day_in_the_server_zone(criteria: str, expected: list[int]) -> None:
    compiled = compile_search(tokens(criteria), max_seq=3, max_uid=35)
    assert not compiled.needs_message
    assert search(criteria) == expected


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("SENTON 1-Feb-1994", [1]),  # 23:30 -0800 is still the 1st where it was written
        ("SENTON 2-Feb-1994", [2]),  # 01:00 +0900: the 2nd in its own zone
        ("SENTBEFORE 2-Feb-1994", [1]),
        ("SENTSINCE 2-Feb-1994", [2, 3]),  # no Date: the internal date stands in
    ],
)
def test_sent_dates_use_the_date_field_in_its_own_zone(criteria: str, expected: list[int]) -> None:
    assert compile_search(tokens(criteria), max_seq=3, max_uid=35).needs_message
    assert search(criteria) == expected


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("FROM JANE", [1]),
        ("FROM example.test", [1, 2, 3]),
        ("TO jane@", [2]),
        ("CC boss", [1]),
        ("BCC secret", [2]),
        ('SUBJECT "STRASSE"', [1]),  # RFC 2047 decoded, Unicode case folding: ß = ss
        ('SUBJECT "grüße"', [1]),
        ("SUBJECT lunch", [2]),
        ('HEADER X-Priority ""', [1]),  # an empty string: every message that has the field
        ("HEADER x-priority 1", [1]),
        ('HEADER Bcc ""', [2]),
        ("BODY frühstück", [1]),  # quoted-printable undone, UTF-8 decoded
        ("BODY ΚΑΛΗΜΈΡΑ", [2]),  # base64 undone
        ("BODY noon", [2]),
        ("BODY secret", []),  # an attachment is not text; Bcc is in the header, not the body
        ("TEXT secret", [2]),  # TEXT: header and body
        ("TEXT fertig", [1]),
        ('BODY "plain body"', [3]),
        ("OR FROM carol BODY fertig", [1, 3]),
        ("NOT FROM bob", [1, 3]),
    ],
)
def test_header_and_text_keys_match_decoded_text_case_insensitively(
    criteria: str, expected: list[int]
) -> None:
    assert compile_search(tokens(criteria), max_seq=3, max_uid=35).needs_message
    assert search(criteria) == expected


def test_utf8_charset_arguments_are_accepted_as_literals_or_after_charset() -> None:
    assert search('SUBJECT "Grüße"', charset="UTF-8") == [1]
    assert search('CHARSET utf-8 BODY "Frühstück"') == [1]
    assert search("CHARSET US-ASCII FROM bob") == [2]


def test_an_unknown_charset_is_badcharset() -> None:
    with pytest.raises(SearchError) as error:
        compile_search(tokens("FROM bob"), max_seq=3, max_uid=35, charset="KOI8-R")
    assert str(error.value).startswith("[BADCHARSET (US-ASCII UTF-8)]")
    assert error.value.code == "BADCHARSET"


@pytest.mark.parametrize(
    "criteria",
    [
        "FOO",
        "FROM",
        "LARGER x",
        "SINCE 31-Feb-1994",
        "SINCE Feb-1-1994",
        "ON 1-Foo-1994",
        "OR SEEN",
        "NOT",
        "UID",
        "UID (1)",
        "1:x",
        '"quoted"',
        "()",
        "HEADER Subject",
    ],
)
def test_malformed_keys_are_search_errors(criteria: str) -> None:
    with pytest.raises(SearchError):
        compile_search(tokens(criteria), max_seq=3, max_uid=35)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(SearchError):
        compile_search(tokens("NOT " * 10_000 + "ALL"), max_seq=3, max_uid=35)


def test_a_message_is_parsed_only_when_a_key_needs_it() -> None:
    reads: list[int] = []
    compiled = compile_search(tokens("OR SEEN SUBJECT lunch"), max_seq=3, max_uid=35)
    matched = run(compiled, reads)
    assert matched == [1, 2, 3]
    assert len(reads) == 1  # messages 1 and 3 matched on their flags alone


def test_cached_header_fields_answer_without_parsing_any_message() -> None:
    """A header-only search over SearchBatch.fields (the folder's cache) reads no message, and a
    field's values match one at a time, never across the boundary between two of them."""
    two_to = crlf("From: dan@example.test\nTo: ab@one.test\nTo: cd@two.test\nSubject: two\n\nx\n")
    raws = [*MESSAGES[:2], two_to]

    def refuse(position: int) -> ParsedMessage:
        raise AssertionError("a cached search parsed a message")

    names = ("from", "to", "subject", "x-priority", "bcc")
    fields = {name: [joined_values(ParsedMessage.parse(raw).header(name)) for raw in raws] for name in names}
    batch = SearchBatch([1, 2, 3], INFOS, RECENT.__contains__, refuse, fields)  # type: ignore[arg-type]
    cases = [
        ("FROM JANE", [1]),
        ('SUBJECT "strasse"', [1]),
        ('HEADER X-Priority ""', [1]),
        ('HEADER Bcc ""', [2]),
        ("TO cd@two", [3]),
        ("TO test", [1, 2, 3]),
        ('TO "test cd"', []),  # "ab@one.test" and "cd@two.test" are two values, not one text
        ("TO testcd", []),
        ("OR TO ab@ SUBJECT lunch", [2, 3]),
        ("NOT TO one.test", [1, 2]),
        ("SEEN NOT FROM bob", [1, 3]),
    ]
    for criteria, expected in cases:
        compiled = compile_search(tokens(criteria), max_seq=3, max_uid=35)
        assert compiled.header_only
        assert [position + 1 for position in compiled.select(batch)] == expected, criteria


def test_keys_that_read_no_message_narrow_the_ones_that_do() -> None:
    """ANDed keys: flags first whatever the order written, so only the unseen message is parsed."""
    reads: list[int] = []
    compiled = compile_search(tokens("BODY noon UNSEEN"), max_seq=3, max_uid=35)
    assert run(compiled, reads) == [2]
    assert len(reads) == 1
