"""SEARCH criteria (RFC 3501 §6.4.4) compiled once per command into a predicate over messages.

`compile_search` parses the search keys into nested closures; `Search.needs_message` tells the
session whether any key looks at the message itself (headers, dates sent, text), so a search on
flags, sizes, internal dates and sets never reads a file. Strings match as case-insensitive
substrings with Unicode case folding, against RFC 2047-decoded header values and text with its
transfer-encoding and charset undone.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.imap.message import ParsedMessage, decode_header_value, sent_date
from appliance.imap.sequence import SequenceSet, SequenceSetError
from appliance.imap.tokens import Atom, Token

if TYPE_CHECKING:
    from appliance.imap.mailbox import MessageInfo

CHARSETS = ("US-ASCII", "UTF-8")  # RFC 3501 §6.4.4: US-ASCII MUST be supported; UTF-8 as well
MAX_DEPTH = 50  # nesting of NOT / OR / parentheses
_SEQUENCE_SET = re.compile(r"^[\d*:,]+$")
_DATE = re.compile(r"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")  # RFC 3501 §9 date-text
_MONTHS = {
    name: n
    for n, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_FLAG_KEYS = {  # RFC 3501 §6.4.4: key → (flag, whether it must be set)
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_ADDRESS_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "TO": "to", "SUBJECT": "subject"}


class SearchError(ValueError):
    """Search keys that cannot be used; the session answers BAD (NO for BADCHARSET) with the text."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


@dataclass(slots=True)
class SearchContext:
    """What one message offers to a search."""

    seq: int
    uid: int
    info: MessageInfo
    recent: bool
    message: Callable[[], ParsedMessage]  # parsed at first use (the bytes were read before)
    # The folded values of a header field, when the caller has them cached (Search.fields);
    # otherwise they come from message().
    fields: Callable[[str], Sequence[str]] | None = None


Matcher = Callable[[SearchContext], bool]


class Search:
    """A compiled search: `matches` per message; `needs_message` when a key reads the message.

    `header_only`: every key that reads the message reads only the header fields named in
    `fields` (folded values, SearchContext.fields), so a caller with those cached needs no bytes.
    """

    __slots__ = ("_matcher", "fields", "header_only", "needs_message")

    def __init__(
        self,
        matcher: Matcher,
        needs_message: bool,
        fields: frozenset[str] = frozenset(),
        header_only: bool = False,
    ) -> None:
        self._matcher = matcher
        self.needs_message = needs_message
        self.fields = fields
        self.header_only = header_only and needs_message

    def matches(self, context: SearchContext) -> bool:
        return self._matcher(context)


def compile_search(args: list[Token], *, max_seq: int, max_uid: int, charset: str | None = None) -> Search:
    """The search keys `args` (all ANDed, RFC 3501 §6.4.4) as a `Search`.

    `max_seq` and `max_uid` stand for "*" in sequence sets and UID sets. `charset` is the CHARSET
    argument, if the session took it off already; a leading CHARSET in `args` is accepted too.
    """
    if charset is None and len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == "CHARSET":
        charset_token = args[1]
        if not isinstance(charset_token, Atom | bytes):
            raise SearchError("CHARSET needs a charset name")
        charset = charset_token.value if isinstance(charset_token, Atom) else charset_token.decode("latin-1")
        args = args[2:]
    if charset is not None and charset.upper() not in CHARSETS:
        # RFC 3501 §6.4.4, §7.1: tagged NO with the BADCHARSET code listing what is supported
        raise SearchError(
            f"[BADCHARSET ({' '.join(CHARSETS)})] Unsupported charset {charset[:40]}", "BADCHARSET"
        )
    if not args:
        raise SearchError("Missing search keys")
    compiler = _Compiler(args, max_seq, max_uid)
    matchers = []
    while not compiler.done():
        matchers.append(compiler.key(0))
    return Search(
        _all_of(matchers), compiler.needs_message, frozenset(compiler.fields), not compiler.needs_body
    )


def _all_of(matchers: list[Matcher]) -> Matcher:
    if len(matchers) == 1:
        return matchers[0]
    return lambda context: all(matcher(context) for matcher in matchers)


def fold(text: str) -> str:
    """Text for case-insensitive comparison (Unicode case folding, RFC 5051 in spirit)."""
    return text.casefold()


class _Compiler:
    """A recursive-descent parser over the tokens of one SEARCH command."""

    def __init__(self, tokens: list[Token], max_seq: int, max_uid: int) -> None:
        self.tokens = tokens
        self.pos = 0
        self.max_seq = max_seq
        self.max_uid = max_uid
        self.needs_message = False
        self.needs_body = False  # a key reads more than the header fields in `fields`
        self.fields: set[str] = set()

    def done(self) -> bool:
        return self.pos >= len(self.tokens)

    def next(self, what: str) -> Token:
        if self.done():
            raise SearchError(f"Missing {what}")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def key(self, depth: int) -> Matcher:
        if depth > MAX_DEPTH:
            raise SearchError("Search keys nested too deeply")
        token = self.next("search key")
        if isinstance(token, list):  # RFC 3501 §6.4.4: "(" search-key *(SP search-key) ")"
            if not token:
                raise SearchError("Empty parenthesized search keys")
            inner = _Compiler(token, self.max_seq, self.max_uid)
            matchers = []
            while not inner.done():
                matchers.append(inner.key(depth + 1))
            self.needs_message |= inner.needs_message
            self.needs_body |= inner.needs_body
            self.fields |= inner.fields
            return _all_of(matchers)
        if not isinstance(token, Atom):
            raise SearchError("Search key expected, found a string")
        word = token.upper()
        if _SEQUENCE_SET.match(word):
            numbers = self.sequence_set(token.value)
            max_seq = self.max_seq
            return lambda context: numbers.contains(context.seq, max_seq)
        handler = getattr(self, "key_" + word, None)
        if handler is None:
            if word in _FLAG_KEYS:
                flag, wanted = _FLAG_KEYS[word]
                return lambda context: (flag in context.info.flags) == wanted
            if word in _ADDRESS_KEYS:
                return self.header_key(_ADDRESS_KEYS[word], self.string(word))
            raise SearchError(f"Unknown search key {token.value[:40]}")
        matcher: Matcher = handler(depth)
        return matcher

    # -- arguments ------------------------------------------------------------------------------
    def string(self, key: str) -> str:
        """An astring argument as text (UTF-8; US-ASCII is a subset)."""
        token = self.next(f"{key} argument")
        if isinstance(token, Atom):
            return token.value
        if isinstance(token, bytes):
            return token.decode("utf-8", "replace")
        raise SearchError(f"{key} needs a string")

    def plain(self, key: str) -> str:
        """The next argument as text: an atom, or a string taken byte for byte; "" for a list."""
        token = self.next(f"{key} argument")
        if isinstance(token, Atom):
            return token.value
        return token.decode("latin-1") if isinstance(token, bytes) else ""

    def number(self, key: str) -> int:
        text = self.plain(key)
        if not text.isdigit() or len(text) > 20:
            raise SearchError(f"{key} needs a number")
        return int(text)

    def date(self, key: str) -> datetime.date:
        text = self.plain(key)
        match = _DATE.match(text)
        month = _MONTHS.get(match.group(2).upper()) if match else None
        if match is None or month is None:
            raise SearchError(f"{key} needs a date like 1-Feb-1994")
        try:
            return datetime.date(int(match.group(3)), month, int(match.group(1)))
        except ValueError:
            raise SearchError(f"{key}: no such date {text}") from None

    def sequence_set(self, text: str) -> SequenceSet:
        try:
            return SequenceSet.parse(text)
        except SequenceSetError as error:
            raise SearchError(str(error)) from None

    # -- keys -----------------------------------------------------------------------------------
    def key_ALL(self, depth: int) -> Matcher:
        return lambda context: True

    def key_NOT(self, depth: int) -> Matcher:
        inner = self.key(depth + 1)
        return lambda context: not inner(context)

    def key_OR(self, depth: int) -> Matcher:
        first = self.key(depth + 1)
        second = self.key(depth + 1)
        return lambda context: first(context) or second(context)

    def key_UID(self, depth: int) -> Matcher:
        token = self.next("UID set")
        if not isinstance(token, Atom):
            raise SearchError("UID needs a sequence set")
        numbers = self.sequence_set(token.value)
        max_uid = self.max_uid
        return lambda context: numbers.contains(context.uid, max_uid)

    def key_NEW(self, depth: int) -> Matcher:
        return lambda context: context.recent and "\\Seen" not in context.info.flags

    def key_OLD(self, depth: int) -> Matcher:
        return lambda context: not context.recent

    def key_RECENT(self, depth: int) -> Matcher:
        return lambda context: context.recent

    def key_KEYWORD(self, depth: int) -> Matcher:
        wanted = fold(self.string("KEYWORD"))
        return lambda context: any(fold(flag) == wanted for flag in context.info.flags)

    def key_UNKEYWORD(self, depth: int) -> Matcher:
        wanted = fold(self.string("UNKEYWORD"))
        return lambda context: not any(fold(flag) == wanted for flag in context.info.flags)

    def key_LARGER(self, depth: int) -> Matcher:
        size = self.number("LARGER")
        return lambda context: context.info.size > size

    def key_SMALLER(self, depth: int) -> Matcher:
        size = self.number("SMALLER")
        return lambda context: context.info.size < size

    # RFC 3501 §6.4.4: BEFORE/ON/SINCE compare the internal date, disregarding time and timezone:
    # its day in the server's local zone.
    def key_BEFORE(self, depth: int) -> Matcher:
        day = self.date("BEFORE")
        return lambda context: _internal_day(context) < day

    def key_ON(self, depth: int) -> Matcher:
        day = self.date("ON")
        return lambda context: _internal_day(context) == day

    def key_SINCE(self, depth: int) -> Matcher:
        day = self.date("SINCE")
        return lambda context: _internal_day(context) >= day

    # SENT*: the Date: field's own date, disregarding time and timezone.
    def key_SENTBEFORE(self, depth: int) -> Matcher:
        day = self.date("SENTBEFORE")
        self.needs_message = self.needs_body = True
        return lambda context: _sent_day(context) < day

    def key_SENTON(self, depth: int) -> Matcher:
        day = self.date("SENTON")
        self.needs_message = self.needs_body = True
        return lambda context: _sent_day(context) == day

    def key_SENTSINCE(self, depth: int) -> Matcher:
        day = self.date("SENTSINCE")
        self.needs_message = self.needs_body = True
        return lambda context: _sent_day(context) >= day

    def key_HEADER(self, depth: int) -> Matcher:
        name = self.string("HEADER field name")
        return self.header_key(name.lower(), self.string("HEADER"))

    def key_BODY(self, depth: int) -> Matcher:
        needle = fold(self.string("BODY"))
        self.needs_message = self.needs_body = True
        return lambda context: needle in fold(context.message().text())

    def key_TEXT(self, depth: int) -> Matcher:
        needle = fold(self.string("TEXT"))
        self.needs_message = self.needs_body = True

        def matches(context: SearchContext) -> bool:
            message = context.message()
            header = decode_header_value(message.section((), "HEADER"))
            return needle in fold(header) or needle in fold(message.text())

        return matches

    def header_key(self, name: str, value: str) -> Matcher:
        """A header field containing `value`; an empty value: any message with the field."""
        needle = fold(value)
        self.needs_message = True
        self.fields.add(name)

        def matches(context: SearchContext) -> bool:
            if context.fields is not None:
                return any(needle in found for found in context.fields(name))
            return any(needle in fold(found) for found in context.message().header(name))

        return matches


def folded_fields(message: ParsedMessage, names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """What SearchContext.fields gives: each field's RFC 2047-decoded values, case-folded."""
    return {name: tuple(fold(value) for value in message.header(name)) for name in names}


def _internal_day(context: SearchContext) -> datetime.date:
    return datetime.date(*time.localtime(context.info.internaldate)[:3])


def _sent_day(context: SearchContext) -> datetime.date:
    """The Date field's day as written; a message without a usable one counts by its internal date."""
    parsed = sent_date(context.message())
    if parsed is not None:
        try:
            return datetime.date(parsed[0], parsed[1], parsed[2])
        except ValueError:
            pass
    return _internal_day(context)
