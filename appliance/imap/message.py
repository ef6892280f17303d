"""A message as IMAP shows it: ENVELOPE, BODY/BODYSTRUCTURE and body sections (RFC 3501 §6.4.5, §7.4.2).

The message is kept as the bytes read from disk (CRLF line ends) and every section is a slice of
them at exact offsets: a small boundary scanner on bytes (RFC 2046 §5.1.1) finds the parts, so
nothing is re-serialized. Work is lazy: `parse` stores the bytes, the header block is split into
fields on first use, and the MIME tree is built only when a section or BODYSTRUCTURE asks for it.

Malformed input never raises; it falls back as Dovecot does (a multipart without a boundary is a
single part, a multipart whose boundary never appears gets one empty text/plain part, an
unterminated multipart ends at the end of its parent) and the output stays valid IMAP syntax.
Header values are handled as latin-1 text so that 8-bit bytes travel back unchanged (as literals).
"""

from __future__ import annotations

import binascii
import email.utils
import re

from appliance.imap import wire
from appliance.imap.headers import (
    Address,
    decode_base64,
    decode_header_value,
    is_token,
    mime_value,
    parse_addresses,
    strip_comments,
    to_text,
)

MAX_DEPTH = 50  # nesting of multiparts and message/rfc822 parts; deeper ones are leaves
MAX_PARTS = 5000  # parts of one multipart; later delimiters are left inside the last part
DEFAULT_CHARSET = "us-ascii"  # RFC 2045 §5.2
# Dovecot's reply for a multipart with no parts, which RFC 3501's grammar does not allow.
EMPTY_BODY = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'
EMPTY_BODYSTRUCTURE = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'

_FOLD = re.compile(rb"\r?\n")
_QUOTABLE = re.compile(rb'[^\x00\r\n"\\\x80-\xff]*')  # wire.py's rule for a quoted string

Field = tuple[str, int, int]  # lowercase name (latin-1), start, end (the line end included)
DateTuple = tuple[int, int, int, int, int, int, int, int, int, int | None]  # email.utils.parsedate_tz


class ParsedMessage:
    """One message's bytes (CRLF) with its MIME structure found on demand."""

    __slots__ = ("_raw", "_root", "_text")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._root: _Entity | None = None
        self._text: str | None = None

    @classmethod
    def parse(cls, raw: bytes) -> ParsedMessage:
        return cls(raw)

    @property
    def root(self) -> _Entity:
        if self._root is None:
            self._root = _Entity(self._raw, 0, len(self._raw), message=True)
        return self._root

    def envelope(self) -> bytes:
        return _envelope(self.root)

    def bodystructure(self) -> bytes:
        return _structure(self.root, extended=True)

    def body(self) -> bytes:
        return _structure(self.root, extended=False)

    def section(self, part: tuple[int, ...], text: str | None, fields: tuple[str, ...] = ()) -> bytes:
        """RFC 3501 §6.4.5 BODY[<section>]; b"" for a part that does not exist (as Dovecot)."""
        root = self.root
        if not part:
            return b"" if text == "MIME" else _message_section(root, text, fields)
        entity = self._part(part)
        if entity is None:
            return b""
        if text is None:  # the part's body; for a message/rfc822 part, the whole inner message
            return self._raw[entity.body_start : entity.end]
        if text == "MIME":  # the part's own MIME header, blank line included
            return self._raw[entity.start : entity.body_start]
        inner = entity.inner()  # HEADER, HEADER.FIELDS(.NOT), TEXT: only for message/rfc822 parts
        return b"" if inner is None else _message_section(inner, text, fields)

    def binary(self, part: tuple[int, ...]) -> tuple[bytes, bool] | None:
        """RFC 3516 §4.2 BINARY[<part>]: the part's content with its Content-Transfer-Encoding
        undone, and whether there was one to undo (base64, quoted-printable); None for an
        encoding this server cannot undo (the caller answers UNKNOWN-CTE). The empty section is
        the whole message as stored; a part that does not exist is b""."""
        if not part:
            return self._raw, False
        entity = self._part(part)
        if entity is None:
            return b"", False
        encoding = (entity.first("content-transfer-encoding") or "7bit").strip().lower()
        if encoding in ("7bit", "8bit", "binary"):
            return self._raw[entity.body_start : entity.end], False
        if encoding in ("base64", "quoted-printable"):
            return _decoded_body(entity), True
        return None

    def _part(self, part: tuple[int, ...]) -> _Entity | None:
        entity: _Entity | None = None
        for number in part:
            children = _message_children(self.root) if entity is None else _part_children(entity)
            if not 1 <= number <= len(children):
                return None
            entity = children[number - 1]
        return entity

    def header(self, name: str) -> list[str]:
        """The values of a header field of the message, unfolded and RFC 2047 decoded."""
        return [decode_header_value(value) for value in self.root.values(name.lower())]

    def addresses(self, name: str) -> list[str]:
        """The addr-specs (mailbox@host) of an address field, comments and display names left
        out: what SEARCH FROM/TO/CC/BCC also match, as ENVELOPE parses them (group markers,
        which have no host, are skipped)."""
        found = []
        for value in self.root.values(name.lower()):
            for _, _, mailbox, host in parse_addresses(value.decode("latin-1")):
                if mailbox is not None and host is not None:
                    found.append(f"{mailbox}@{host}")
        return found

    def date(self) -> float | None:
        """The Date field (RFC 5322 §3.6.1) as epoch seconds; None when absent or unreadable."""
        parsed = sent_date(self)
        if parsed is None:
            return None
        try:
            return float(email.utils.mktime_tz(parsed))
        except (OverflowError, ValueError, TypeError):
            return None

    def text(self) -> str:
        """The decoded text of the text parts, attached messages' headers included (SEARCH BODY)."""
        if self._text is None:
            pieces: list[str] = []
            _collect_text(self.root, pieces)
            self._text = "\n".join(pieces)
        return self._text


def sent_date(message: ParsedMessage) -> DateTuple | None:
    """The Date field as `email.utils.parsedate_tz` gives it (its own zone), or None."""
    values = message.root.values("date")
    if not values:
        return None
    try:
        parsed = email.utils.parsedate_tz(values[0].decode("latin-1"))
    except (ValueError, TypeError, IndexError):
        return None
    if parsed is None or not 1 <= parsed[1] <= 12 or not 1 <= parsed[2] <= 31:
        return None
    return parsed


class _Entity:
    """A MIME entity (RFC 2045 §2.4) spanning raw[start:end]: header, blank line, body."""

    __slots__ = (
        "_fields",
        "_index",
        "_inner",
        "_parts",
        "_type",
        "body_start",
        "delimited",
        "depth",
        "end",
        "fields_end",
        "in_digest",
        "message",
        "raw",
        "start",
    )

    def __init__(
        self,
        raw: bytes,
        start: int,
        end: int,
        *,
        message: bool = False,
        depth: int = 0,
        delimited: bool = False,
        in_digest: bool = False,
    ) -> None:
        self.raw, self.start, self.end = raw, start, end
        self.message = message  # a whole message (the root or inside message/rfc822)
        self.depth = depth
        self.delimited = delimited  # ended by a boundary delimiter (whose CRLF is not ours)
        self.in_digest = in_digest  # RFC 2046 §5.1.5: the default type is message/rfc822
        self.fields_end, self.body_start = _split_header(raw, start, end)
        self._fields: list[Field] | None = None
        self._index: dict[str, list[tuple[int, int]]] | None = None
        self._type: tuple[str, str, list[tuple[str, str]], bool] | None = None
        self._parts: list[_Entity] | None = None
        self._inner: _Entity | bool | None = False

    def fields(self) -> list[Field]:
        if self._fields is None:
            self._fields = _scan_fields(self.raw, self.start, self.fields_end)
        return self._fields

    def values(self, name: str) -> list[bytes]:
        """Unfolded raw values of the fields called `name` (lowercase), in order."""
        if self._index is None:
            index: dict[str, list[tuple[int, int]]] = {}
            for field, start, end in self.fields():
                index.setdefault(field, []).append((start, end))
            self._index = index
        raw = self.raw
        found = []
        for start, end in self._index.get(name, ()):
            value = raw[raw.index(b":", start, end) + 1 : end]
            found.append(_FOLD.sub(b"", value).strip(b" \t\r\n"))
        return found

    def first(self, name: str) -> str | None:
        values = self.values(name)
        return values[0].decode("latin-1") if values else None

    def content_type(self) -> tuple[str, str, list[tuple[str, str]], bool]:
        """(type, subtype, parameters, explicit) as written; the RFC 2045 §5.2 default if invalid."""
        if self._type is None:
            value = self.first("content-type")
            kind, params = mime_value(value) if value is not None else ("", [])
            main, slash, sub = kind.partition("/")
            main, sub = main.strip(), sub.strip()
            if slash and is_token(main) and is_token(sub):
                self._type = (main, sub, params, True)
            elif self.in_digest:
                self._type = ("message", "rfc822", [], False)
            else:
                self._type = ("text", "plain", [], False)
        return self._type

    def is_rfc822(self) -> bool:
        main, sub, _, _ = self.content_type()
        return main.lower() == "message" and sub.lower() == "rfc822"

    def boundary(self) -> str | None:
        main, _, params, _ = self.content_type()
        if main.lower() != "multipart" or self.depth >= MAX_DEPTH:
            return None
        for name, value in params:
            if name == "boundary" and value:
                return value
        return None  # Dovecot: a multipart without a boundary is a single part

    def parts(self) -> list[_Entity]:
        if self._parts is None:
            boundary = self.boundary()
            digest = self.content_type()[1].lower() == "digest"
            spans = (
                [] if boundary is None else _split_multipart(self.raw, self.body_start, self.end, boundary)
            )
            self._parts = [
                _Entity(self.raw, start, end, depth=self.depth + 1, delimited=delimited, in_digest=digest)
                for start, end, delimited in spans
            ]
        return self._parts

    def inner(self) -> _Entity | None:
        """The encapsulated message of a message/rfc822 part (RFC 2046 §5.2.1)."""
        if self._inner is False:
            if self.is_rfc822() and self.depth < MAX_DEPTH:
                self._inner = _Entity(
                    self.raw,
                    self.body_start,
                    self.end,
                    message=True,
                    depth=self.depth + 1,
                    delimited=self.delimited,
                )
            else:
                self._inner = None
        return self._inner if isinstance(self._inner, _Entity) else None

    def lines(self) -> int:
        # RFC 3501 §7.4.2 body-fld-lines, counted as Dovecot does: the line ends in the part. The
        # CRLF before a boundary delimiter belongs to the delimiter (RFC 2046 §5.1.1), so a last
        # line without one of its own is not counted.
        return self.raw.count(b"\n", self.body_start, self.end)


# -- Section numbers (RFC 3501 §6.4.5) ------------------------------------------------------------
def _message_children(message: _Entity) -> list[_Entity]:
    """A message's parts: a multipart's parts, or part 1 = the message itself (its body)."""
    return message.parts() if message.boundary() is not None else [message]


def _part_children(entity: _Entity) -> list[_Entity]:
    if entity.boundary() is not None:
        return entity.parts()
    inner = entity.inner()
    return _message_children(inner) if inner is not None else []


def _message_section(message: _Entity, text: str | None, fields: tuple[str, ...]) -> bytes:
    raw = message.raw
    if text is None:
        return raw[message.start : message.end]
    if text == "HEADER":
        return raw[message.start : message.body_start]
    if text == "TEXT":
        return raw[message.body_start : message.end]
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        wanted = {name.lower() for name in fields}
        keep = text == "HEADER.FIELDS"
        chosen = [raw[start:end] for name, start, end in message.fields() if (name in wanted) == keep]
        if chosen and not chosen[-1].endswith(b"\n"):
            chosen[-1] += b"\r\n"
        chosen.append(b"\r\n")  # RFC 3501 §6.4.5: the blank line that ends the header is included
        return b"".join(chosen)
    return b""


# -- Header and body scanning ---------------------------------------------------------------------
def _split_header(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of the header fields, start of the body): the first empty line ends the header."""
    if raw.startswith(b"\r\n", start, end):
        return start, start + 2
    if raw.startswith(b"\n", start, end):
        return start, start + 1
    crlf = raw.find(b"\n\r\n", start, end)
    lf = raw.find(b"\n\n", start, end)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 1, crlf + 3
    if lf >= 0:
        return lf + 1, lf + 2
    return end, end  # no blank line: all header, an empty body


def _scan_fields(raw: bytes, start: int, end: int) -> list[Field]:
    """Header fields with folded lines kept whole (RFC 5322 §2.2.3); a line without a colon is
    kept (so HEADER.FIELDS.NOT returns it) under the name ""."""
    fields: list[Field] = []
    pos = start
    while pos < end:
        newline = raw.find(b"\n", pos, end)
        line_end = end if newline < 0 else newline + 1
        if raw[pos] in (0x20, 0x09) and fields:
            name, first, _ = fields[-1]
            fields[-1] = (name, first, line_end)
        else:
            colon = raw.find(b":", pos, line_end)
            name = raw[pos:colon].strip().decode("latin-1").lower() if colon > pos else ""
            fields.append((name, pos, line_end))
        pos = line_end
    return fields


def _split_multipart(raw: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int, bool]]:
    """The parts of a multipart body (RFC 2046 §5.1.1) as (start, end, ended by a delimiter).

    A delimiter is a line "--boundary" (or "--boundary--" to close) with only whitespace after
    it; the CRLF before it belongs to the delimiter. An unclosed last part runs to `end`.
    """
    delimiter = b"--" + boundary.encode("latin-1")
    parts: list[tuple[int, int, bool]] = []
    part_start: int | None = None
    search = start
    while len(parts) < MAX_PARTS:
        found = raw.find(delimiter, search, end)
        if found < 0:
            break
        search = found + 1
        if found != start and raw[found - 1] != 0x0A:
            continue  # not at the start of a line
        after = found + len(delimiter)
        closing = raw.startswith(b"--", after, end)
        newline = raw.find(b"\n", after, end)
        line_end = end if newline < 0 else newline + 1
        padding_start = after + 2 if closing else after
        if raw[padding_start:line_end].strip():
            continue  # a longer boundary that begins with this one, or text
        before = found
        if before > start and raw[before - 1] == 0x0A:
            before -= 1
            if before > start and raw[before - 1] == 0x0D:
                before -= 1
        if part_start is not None:
            parts.append((part_start, max(before, part_start), True))
        if closing:
            return parts
        part_start = search = line_end
    if part_start is not None:
        parts.append((part_start, end, False))
    return parts


# -- ENVELOPE (RFC 3501 §7.4.2) -------------------------------------------------------------------
def _text(value: str) -> bytes:
    """A latin-1 header text back to its bytes, as an IMAP string (quoted when wire.string would)."""
    data = value.encode("latin-1")
    if len(data) <= wire.MAX_QUOTED and _QUOTABLE.fullmatch(data):
        return b'"' + data + b'"'
    return wire.string(data)


def _ntext(value: str | None) -> bytes:
    return b"NIL" if value is None else _text(value)


def _envelope(message: _Entity) -> bytes:
    def addresses(name: str) -> list[Address]:
        value = message.first(name)
        return parse_addresses(value) if value is not None else []

    from_ = addresses("from")
    # RFC 3501 §7.4.2: Sender and Reply-To absent or empty take the value of From.
    sender = addresses("sender") or from_
    reply_to = addresses("reply-to") or from_
    items = [
        _ntext(message.first("date")),
        _ntext(message.first("subject")),  # raw, not decoded, as Dovecot sends it
        _address_list(from_),
        _address_list(sender),
        _address_list(reply_to),
        _address_list(addresses("to")),
        _address_list(addresses("cc")),
        _address_list(addresses("bcc")),
        _ntext(message.first("in-reply-to")),
        _ntext(message.first("message-id")),
    ]
    return b"(" + b" ".join(items) + b")"


def _address_list(addresses: list[Address]) -> bytes:
    if not addresses:
        return b"NIL"
    return (
        b"("
        + b"".join(b"(" + b" ".join(_ntext(item) for item in address) + b")" for address in addresses)
        + b")"
    )


# -- BODY and BODYSTRUCTURE (RFC 3501 §7.4.2, §9 body) ---------------------------------------------
def _params(params: list[tuple[str, str]], default_charset: bool = False) -> bytes:
    if default_charset and not any(name == "charset" for name, _ in params):
        params = [*params, ("charset", DEFAULT_CHARSET)]
    if not params:
        return b"NIL"
    return b"(" + b" ".join(_text(name) + b" " + _text(value) for name, value in params) + b")"


def _extension(entity: _Entity) -> list[bytes]:
    """body-fld-dsp, body-fld-lang, body-fld-loc (RFC 3501 §9; RFC 2183, RFC 3066, RFC 2557)."""
    disposition = entity.first("content-disposition")
    if disposition is not None:
        kind, params = mime_value(disposition)
        dsp = b"(" + _text(kind) + b" " + _params(params) + b")" if kind else b"NIL"
    else:
        dsp = b"NIL"
    language = entity.first("content-language")
    tags = [tag for tag in re.split(r"[\s,]+", strip_comments(language or "")) if tag]
    lang = b"(" + b" ".join(_text(tag) for tag in tags) + b")" if tags else b"NIL"
    return [dsp, lang, _ntext(entity.first("content-location"))]


def _structure(entity: _Entity, extended: bool) -> bytes:
    main, sub, params, _ = entity.content_type()
    if entity.boundary() is not None:
        parts = entity.parts()
        if parts:
            children = b"".join(_structure(part, extended) for part in parts)
        else:
            children = EMPTY_BODYSTRUCTURE if extended else EMPTY_BODY
        items = [children, _text(sub)]
        if extended:
            items += [_params(params), *_extension(entity)]
        return b"(" + b" ".join(items) + b")"
    inner = entity.inner()
    text = main.lower() == "text"
    encoding = entity.first("content-transfer-encoding")
    items = [
        b'"message" "rfc822"' if inner is not None else _text(main) + b" " + _text(sub),
        _params(params, default_charset=text),
        _ntext(entity.first("content-id")),
        _ntext(entity.first("content-description")),
        _text(encoding) if encoding else b'"7bit"',
        b"%d" % (entity.end - entity.body_start),
    ]
    if text:
        items.append(b"%d" % entity.lines())
    elif inner is not None:
        items += [_envelope(inner), _structure(inner, extended), b"%d" % entity.lines()]
    if extended:
        items += [_ntext(entity.first("content-md5")), *_extension(entity)]
    return b"(" + b" ".join(items) + b")"


# -- Decoding for SEARCH ---------------------------------------------------------------------------
def _decoded_body(entity: _Entity) -> bytes:
    data = entity.raw[entity.body_start : entity.end]
    encoding = (entity.first("content-transfer-encoding") or "").strip().lower()
    if encoding == "base64":
        return decode_base64(data)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(data)
    return data


def _collect_text(entity: _Entity, pieces: list[str]) -> None:
    if entity.boundary() is not None:
        for part in entity.parts():
            _collect_text(part, pieces)
        return
    inner = entity.inner()
    if inner is not None:
        raw = inner.raw[inner.start : inner.fields_end]
        pieces.append(decode_header_value(raw))
        _collect_text(inner, pieces)
        return
    main, _, params, _ = entity.content_type()
    if main.lower() == "text":
        charset = next((value for name, value in params if name == "charset"), None)
        pieces.append(to_text(_decoded_body(entity), charset))
