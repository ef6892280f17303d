"""SEARCH criteria (RFC 3501 §6.4.4) compiled once per command, run over a batch of messages.

`compile_search` parses the search keys into nested selectors: each takes the positions still
in question and returns those that match, one list comprehension per key over the whole batch
rather than a call chain per message. `Search.needs_message` tells the session whether any key
looks at the message itself (headers, dates sent, text), so a search on flags, sizes, internal
dates and sets never reads a file. Strings match as case-insensitive substrings with Unicode case
folding, against RFC 2047-decoded header values and text with its transfer-encoding and charset
undone.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.imap.headers import decode_header_value
from appliance.imap.message import ParsedMessage, sent_date
from appliance.imap.sequence import SequenceSet, SequenceSetError
from appliance.imap.tokens import Atom, Token

if TYPE_CHECKING:
    from appliance.imap.index import MessageInfo

CHARSETS = ("US-ASCII", "UTF-8")  # RFC 3501 §6.4.4: US-ASCII MUST be supported; UTF-8 as well
MAX_DEPTH = 50  # nesting of NOT / OR / parentheses
# Keys in one SEARCH, nested ones included: clients send a few dozen at most. Each key is a pass
# over the messages, so this bounds the work one command may ask for.
MAX_KEYS = 256
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


FIELD_SEPARATOR = "\0"  # between a field's values in SearchBatch.fields (RFC 3501 text has no NUL)


@dataclass(slots=True)
class SearchBatch:
    """Messages a search runs over; keys look at them by position (0-based) in the batch."""

    seqs: Sequence[int]
    infos: Sequence[MessageInfo]
    recent: Callable[[int], bool]  # by UID
    message: Callable[[int], ParsedMessage]  # by position; parsed at first use (most keys never need it)
    # Header fields the caller has cached: field → per position, the folded values joined by
    # FIELD_SEPARATOR (None: the message has no such field). Otherwise they come from message().
    fields: Mapping[str, Sequence[str | None]] | None = None


# A compiled key: the positions among `candidates` (ascending) whose message matches, ascending.
Selector = Callable[[SearchBatch, list[int]], list[int]]


class Search:
    """A compiled search; `needs_message` when a key reads the message.

    Each key runs over a whole batch at once, and only over the messages the keys before it left
    (an AND narrows, an OR asks its second key only about what the first did not match), so a key
    that needs the message parses only the ones that are still in question.

    `header_only`: every key that reads the message reads only the header fields named in
    `fields`, so a caller with those cached (SearchBatch.fields) needs no bytes.
    """

    __slots__ = ("_selector", "fields", "header_only", "keys", "needs_message")

    def __init__(
        self,
        selector: Selector,
        needs_message: bool,
        fields: frozenset[str] = frozenset(),
        header_only: bool = False,
        keys: int = 1,
    ) -> None:
        self._selector = selector
        self.needs_message = needs_message
        self.fields = fields
        self.header_only = header_only and needs_message
        self.keys = keys  # how many keys, nested ones included: the passes over a batch

    def select(self, batch: SearchBatch, candidates: list[int] | None = None) -> list[int]:
        """The positions in `batch` (of `candidates`, by default all) that match, ascending."""
        if candidates is None:
            candidates = list(range(len(batch.infos)))
        return self._selector(batch, candidates) if candidates else []


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
    selector = compiler.all_keys(0)
    return Search(
        selector,
        compiler.needs_message,
        frozenset(compiler.fields),
        not compiler.needs_body,
        compiler.keys[0],
    )


def _all_of(selectors: list[Selector]) -> Selector:
    if len(selectors) == 1:
        return selectors[0]

    def select(batch: SearchBatch, candidates: list[int]) -> list[int]:
        for selector in selectors:
            candidates = selector(batch, candidates)
            if not candidates:
                break
        return candidates

    return select


def fold(text: str) -> str:
    """Text for case-insensitive comparison (Unicode case folding, RFC 5051 in spirit)."""
    return text.casefold()


class _Compiler:
    """A recursive-descent parser over the tokens of one SEARCH command."""

    def __init__(
        self, tokens: list[Token], max_seq: int, max_uid: int, keys: list[int] | None = None
    ) -> None:
        self.tokens = tokens
        self.keys = [0] if keys is None else keys  # shared with nested compilers
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

    def all_keys(self, depth: int) -> Selector:
        """Every key up to the end, ANDed: those that read no message first (they are cheap and
        narrow what the others must read)."""
        cheap: list[Selector] = []
        costly: list[Selector] = []
        while not self.done():
            before = self.needs_message
            self.needs_message = False
            selector = self.key(depth)
            (costly if self.needs_message else cheap).append(selector)
            self.needs_message |= before
        return _all_of(cheap + costly)

    def key(self, depth: int) -> Selector:
        if depth > MAX_DEPTH:
            raise SearchError("Search keys nested too deeply")
        self.keys[0] += 1
        if self.keys[0] > MAX_KEYS:
            raise SearchError(f"Too many search keys (at most {MAX_KEYS})")
        token = self.next("search key")
        if isinstance(token, list):  # RFC 3501 §6.4.4: "(" search-key *(SP search-key) ")"
            if not token:
                raise SearchError("Empty parenthesized search keys")
            inner = _Compiler(token, self.max_seq, self.max_uid, self.keys)
            selector = inner.all_keys(depth + 1)
            self.needs_message |= inner.needs_message
            self.needs_body |= inner.needs_body
            self.fields |= inner.fields
            return selector
        if not isinstance(token, Atom):
            raise SearchError("Search key expected, found a string")
        word = token.upper()
        if _SEQUENCE_SET.match(word):
            in_set = self.sequence_set(token.value).membership(self.max_seq)
            return lambda batch, candidates: [i for i in candidates if in_set(batch.seqs[i])]
        handler = getattr(self, "key_" + word, None)
        if handler is None:
            if word in _FLAG_KEYS:
                return _flag_key(*_FLAG_KEYS[word])
            if word in _ADDRESS_KEYS:
                return self.header_key(_ADDRESS_KEYS[word], self.string(word))
            raise SearchError(f"Unknown search key {token.value[:40]}")
        compiled: Selector = handler(depth)
        return compiled

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
    def key_ALL(self, depth: int) -> Selector:
        return lambda batch, candidates: candidates

    def key_NOT(self, depth: int) -> Selector:
        inner = self.key(depth + 1)

        def select(batch: SearchBatch, candidates: list[int]) -> list[int]:
            matched = set(inner(batch, candidates))
            return [i for i in candidates if i not in matched]

        return select

    def key_OR(self, depth: int) -> Selector:
        first = self.key(depth + 1)
        second = self.key(depth + 1)

        def select(batch: SearchBatch, candidates: list[int]) -> list[int]:
            matched = first(batch, candidates)
            if len(matched) == len(candidates):
                return matched
            taken = set(matched)
            rest = second(batch, [i for i in candidates if i not in taken])
            return sorted(matched + rest) if rest else matched  # two ascending runs: one merge

        return select

    def key_UID(self, depth: int) -> Selector:
        token = self.next("UID set")
        if not isinstance(token, Atom):
            raise SearchError("UID needs a sequence set")
        in_set = self.sequence_set(token.value).membership(self.max_uid)
        return lambda batch, candidates: [i for i in candidates if in_set(batch.infos[i].uid)]

    def key_NEW(self, depth: int) -> Selector:
        def select(batch: SearchBatch, candidates: list[int]) -> list[int]:
            infos, recent = batch.infos, batch.recent
            return [i for i in candidates if recent(infos[i].uid) and "\\Seen" not in infos[i].flags]

        return select

    def key_OLD(self, depth: int) -> Selector:
        return lambda batch, candidates: [i for i in candidates if not batch.recent(batch.infos[i].uid)]

    def key_RECENT(self, depth: int) -> Selector:
        return lambda batch, candidates: [i for i in candidates if batch.recent(batch.infos[i].uid)]

    def key_KEYWORD(self, depth: int) -> Selector:
        wanted = fold(self.string("KEYWORD"))
        return lambda batch, candidates: [
            i for i in candidates if any(fold(flag) == wanted for flag in batch.infos[i].flags)
        ]

    def key_UNKEYWORD(self, depth: int) -> Selector:
        wanted = fold(self.string("UNKEYWORD"))
        return lambda batch, candidates: [
            i for i in candidates if not any(fold(flag) == wanted for flag in batch.infos[i].flags)
        ]

    def key_LARGER(self, depth: int) -> Selector:
        size = self.number("LARGER")
        return lambda batch, candidates: [i for i in candidates if batch.infos[i].size > size]

    def key_SMALLER(self, depth: int) -> Selector:
        size = self.number("SMALLER")
        return lambda batch, candidates: [i for i in candidates if batch.infos[i].size < size]

    # RFC 3501 §6.4.4: BEFORE/ON/SINCE compare the internal date, disregarding time and timezone:
    # its day in the server's local zone.
    def key_BEFORE(self, depth: int) -> Selector:
        day = self.date("BEFORE").toordinal()
        return lambda batch, candidates: [i for i in candidates if _internal_day(batch, i) < day]

    def key_ON(self, depth: int) -> Selector:
        day = self.date("ON").toordinal()
        return lambda batch, candidates: [i for i in candidates if _internal_day(batch, i) == day]

    def key_SINCE(self, depth: int) -> Selector:
        day = self.date("SINCE").toordinal()
        return lambda batch, candidates: [i for i in candidates if _internal_day(batch, i) >= day]

    # SENT*: the Date: field's own date, disregarding time and timezone.
    def key_SENTBEFORE(self, depth: int) -> Selector:
        day = self.date("SENTBEFORE").toordinal()
        self.needs_message = self.needs_body = True
        return lambda batch, candidates: [i for i in candidates if _sent_day(batch, i) < day]

    def key_SENTON(self, depth: int) -> Selector:
        day = self.date("SENTON").toordinal()
        self.needs_message = self.needs_body = True
        return lambda batch, candidates: [i for i in candidates if _sent_day(batch, i) == day]

    def key_SENTSINCE(self, depth: int) -> Selector:
        day = self.date("SENTSINCE").toordinal()
        self.needs_message = self.needs_body = True
        return lambda batch, candidates: [i for i in candidates if _sent_day(batch, i) >= day]

    def key_HEADER(self, depth: int) -> Selector:
        name = self.string("HEADER field name")
        return self.header_key(name.lower(), self.string("HEADER"))

    def key_BODY(self, depth: int) -> Selector:
        needle = fold(self.string("BODY"))
        self.needs_message = self.needs_body = True
        return lambda batch, candidates: [i for i in candidates if needle in fold(batch.message(i).text())]

    def key_TEXT(self, depth: int) -> Selector:
        needle = fold(self.string("TEXT"))
        self.needs_message = self.needs_body = True

        def matches(message: ParsedMessage) -> bool:
            header = decode_header_value(message.section((), "HEADER"))
            return needle in fold(header) or needle in fold(message.text())

        return lambda batch, candidates: [i for i in candidates if matches(batch.message(i))]

    def header_key(self, name: str, value: str) -> Selector:
        """A header field containing `value`; an empty value: any message with the field."""
        needle = fold(value)
        self.needs_message = True
        self.fields.add(name)

        def select(batch: SearchBatch, candidates: list[int]) -> list[int]:
            cached = batch.fields.get(name) if batch.fields is not None else None
            column: Sequence[str | None] | _Column = cached if cached is not None else _Column(batch, name)
            if not needle:
                return [i for i in candidates if column[i] is not None]
            if FIELD_SEPARATOR in needle:  # never in RFC 3501 text; match within one value then
                return [
                    i
                    for i in candidates
                    if (found := column[i]) is not None
                    and any(needle in part for part in found.split(FIELD_SEPARATOR))
                ]
            return [i for i in candidates if (found := column[i]) is not None and needle in found]

        return select


def _flag_key(flag: str, wanted: bool) -> Selector:
    if wanted:
        return lambda batch, candidates: [i for i in candidates if flag in batch.infos[i].flags]
    return lambda batch, candidates: [i for i in candidates if flag not in batch.infos[i].flags]


class _Column:
    """A header field's values read from the messages themselves (no cache), by position."""

    __slots__ = ("_batch", "_name")

    def __init__(self, batch: SearchBatch, name: str) -> None:
        self._batch = batch
        self._name = name

    def __getitem__(self, position: int) -> str | None:
        return field_values(self._batch.message(position), self._name)


def joined_values(values: Sequence[str]) -> str | None:
    """A field's values as SearchBatch.fields holds them: case-folded, joined; None: no field."""
    if not values:
        return None
    return FIELD_SEPARATOR.join(fold(value) for value in values)


_ADDRESS_FIELDS = frozenset(_ADDRESS_KEYS.values()) - {"subject"}


def field_values(message: ParsedMessage, name: str) -> str | None:
    """A field of a message as SearchBatch.fields holds it (joined_values). An address field
    holds its parsed addresses too, so `FROM user@domain.org` finds
    `<user (comment)@ (comment) domain.org>` (RFC 3501 §6.4.4 matches the field's contents)."""
    values = message.header(name)
    if name in _ADDRESS_FIELDS and values:
        # Only the addresses the raw text does not already hold as they are (the usual case
        # holds them all): the column stays as short as the field, and so does every search.
        raw = fold(" ".join(values))
        values += [address for address in message.addresses(name) if fold(address) not in raw]
    return joined_values(values)


def folded_fields(message: ParsedMessage, names: Iterable[str]) -> dict[str, str | None]:
    """The fields `names` of a message as SearchBatch.fields holds them (joined_values)."""
    return {name: field_values(message, name) for name in names}


_DAYS: dict[float, int] = {}  # internal date → its day (ordinal) in the server's zone
MAX_DAYS = 200_000


def _internal_day(batch: SearchBatch, position: int) -> int:
    internaldate = batch.infos[position].internaldate
    day = _DAYS.get(internaldate)
    if day is None:
        if len(_DAYS) >= MAX_DAYS:
            _DAYS.clear()
        day = _DAYS[internaldate] = datetime.date(*time.localtime(internaldate)[:3]).toordinal()
    return day


def _sent_day(batch: SearchBatch, position: int) -> int:
    """The Date field's day as written; a message without a usable one counts by its internal date."""
    parsed = sent_date(batch.message(position))
    if parsed is not None:
        try:
            return datetime.date(parsed[0], parsed[1], parsed[2]).toordinal()
        except ValueError:
            pass
    return _internal_day(batch, position)
