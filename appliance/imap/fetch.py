"""FETCH data items (RFC 3501 §6.4.5, §7.4.2): parsing the request, rendering the responses.

`parse_items` turns the arguments into `Item`s once per command; `render_pieces` builds one
message's `* n FETCH (...)` response from its MessageInfo and, when an item needs them, its bytes
(CRLF line ends) and parsed form. The whole message (BODY[], RFC822) is sent from the bytes as
read, never parsed nor copied into the response; `metadata_lines` renders responses that need no
bytes (the flag resync) with one format operation each, `whole_message_head` the head of a
whole-message response (a folder's download) likewise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

from appliance.imap import responses, wire
from appliance.imap.index import MessageInfo
from appliance.imap.message import ParsedMessage
from appliance.imap.responses import Bad
from appliance.imap.tokens import Atom, Token

MACROS = {  # RFC 3501 §6.4.5
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
SIMPLE = frozenset(
    {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE", "UID"}
    | {"RFC822", "RFC822.HEADER", "RFC822.TEXT"}
)
NEEDS_BYTES = frozenset({"ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822", "RFC822.HEADER", "RFC822.TEXT"})
BINARY_ITEMS = ("BINARY[]", "BINARY.SIZE")  # RFC 3516
SETS_SEEN = frozenset({"RFC822", "RFC822.TEXT"})  # RFC 3501 §6.4.5; RFC822.HEADER is a peek

# With lines of 64 KiB, what one FETCH asks of every message is bounded: an item asked twice is
# answered once (as Dovecot does), and more distinct items or header field names than a client
# ever needs is a BAD rather than work and output multiplied by every message.
MAX_ITEMS = 64
MAX_FIELD_NAMES = 256
BATCH_MESSAGES = 200  # messages read, rendered and written at a time
BATCH_BYTES = 16 * 1024 * 1024  # ... and at most this many bytes of them (one big message excepted)

_BINARY_SECTION = re.compile(  # RFC 3516 §4.2: a part number only
    r"^(BINARY|BINARY\.PEEK|BINARY\.SIZE)\[((?:[1-9]\d{0,8})(?:\.[1-9]\d{0,8})*)?\](?:<(\d{1,10})\.(\d{1,10})>)?$",
    re.IGNORECASE,
)
_BODY_SECTION = re.compile(r"^(BODY|BODY\.PEEK)\[([^\]]*)\](?:<(\d{1,10})\.(\d{1,10})>)?$", re.IGNORECASE)
_SECTION = re.compile(
    r"^((?:[1-9]\d{0,8})(?:\.[1-9]\d{0,8})*)?"
    r"(?:(?:^|\.)(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME))?"
    r"(?: \((.*)\))?$",
    re.IGNORECASE | re.DOTALL,
)
_FIELD_NAME = re.compile(r'^"?([!-9;-~]+)"?$')  # RFC 5322 §3.6.8 field name, quoted or not


@dataclass(frozen=True, slots=True)
class Item:
    name: str  # one of SIMPLE, or "BODY[]" for a body section
    label: bytes = b""  # the section's name in the response: b"BODY[HEADER.FIELDS (From)]"
    part: tuple[int, ...] = ()
    text: str | None = None  # HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None  # <origin.count>
    peek: bool = False

    @property
    def response_label(self) -> bytes:
        """How the item is named before its literal in the response: b"RFC822", b"BODY[...]"."""
        return b"RFC822" if self.name == "RFC822" else self.label

    @property
    def whole(self) -> bool:
        """The whole message: served from the bytes as they are, without parsing."""
        return self.name == "RFC822" or (self.name == "BODY[]" and not self.part and self.text is None)


@dataclass(frozen=True)
class Request:
    items: tuple[Item, ...]
    needs_bytes: bool
    needs_parse: bool
    sets_seen: bool


def parse_items(args: list[Token], uid: bool) -> Request:
    """The fetch attributes after the sequence set: one atom, a macro, or a parenthesized list."""
    if len(args) != 1:
        raise Bad("FETCH takes a sequence set and data items")
    tokens = args[0] if isinstance(args[0], list) else [args[0]]
    if not tokens:
        raise Bad("No data items")
    names: list[Item] = []
    for token in tokens:
        if not isinstance(token, Atom):
            raise Bad("Invalid data item")
        word = token.upper()
        if word in MACROS and not isinstance(args[0], list):
            names.extend(Item(name) for name in MACROS[word])
        elif word in SIMPLE:
            names.append(Item(word))
        elif word.startswith("BINARY"):
            names.append(_binary_section(token.value))
        else:
            names.append(_section(token.value))
    if uid and not any(item.name == "UID" for item in names):
        names.insert(0, Item("UID"))  # RFC 3501 §6.4.8: UID FETCH always returns the UID
    items = tuple(dict.fromkeys(names))
    if len(items) > MAX_ITEMS:
        raise Bad(f"Too many data items (at most {MAX_ITEMS})")
    needs_bytes = any(
        item.name in NEEDS_BYTES or item.name in BINARY_ITEMS or item.name == "BODY[]" for item in items
    )
    needs_parse = any(
        item.name in ("ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822.HEADER", "RFC822.TEXT", *BINARY_ITEMS)
        or (item.name == "BODY[]" and not item.whole)
        for item in items
    )
    sets_seen = any(
        item.name in SETS_SEEN or (item.name in ("BODY[]", "BINARY[]") and not item.peek) for item in items
    )
    return Request(items, needs_bytes, needs_parse, sets_seen)


def _section(value: str) -> Item:
    """BODY[<section>]<<partial>> and BODY.PEEK[...] (RFC 3501 §6.4.5, §9 `section`)."""
    match = _BODY_SECTION.match(value)
    if match is None:
        raise Bad(f"Unknown data item {value[:40]}")
    kind, spec, origin, count = match.groups()
    found = _SECTION.match(spec)
    if found is None:
        raise Bad("Invalid section")
    numbers, text, field_list = found.groups()
    part = tuple(int(n) for n in numbers.split(".")) if numbers else ()
    text = text.upper() if text else None
    fields: tuple[str, ...] = ()
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        if field_list is None or not field_list.strip():
            raise Bad("HEADER.FIELDS takes a list of field names")
        names = []
        for word in field_list.split():
            name = _FIELD_NAME.match(word)
            if name is None:
                raise Bad("Invalid header field name")
            names.append(name.group(1))
        fields = tuple(dict.fromkeys(names))
        if len(fields) > MAX_FIELD_NAMES:
            raise Bad(f"Too many header field names (at most {MAX_FIELD_NAMES})")
    elif field_list is not None:
        raise Bad("Invalid section")
    if text == "MIME" and not part:
        raise Bad("MIME needs a part number")
    label = ".".join(str(n) for n in part)
    if text:
        label = f"{label}.{text}" if label else text
    if fields:
        label += " (" + " ".join(fields) + ")"
    partial = (int(origin), int(count)) if origin is not None else None
    if partial is not None and partial[1] == 0:
        raise Bad("A partial fetch needs a non-zero length")
    head = b"BODY[" + label.encode() + b"]"
    if partial is not None:
        head += b"<%d>" % partial[0]  # RFC 3501 §7.4.2: only the origin is echoed
    return Item("BODY[]", head, part, text, fields, partial, kind.upper() == "BODY.PEEK")


def _binary_section(value: str) -> Item:
    """BINARY[<part>]<<partial>>, BINARY.PEEK[...] and BINARY.SIZE[<part>] (RFC 3516 §4.2)."""
    match = _BINARY_SECTION.match(value)
    if match is None:
        raise Bad(f"Unknown data item {value[:40]}")
    kind, numbers, origin, count = match.groups()
    part = tuple(int(n) for n in numbers.split(".")) if numbers else ()
    kind = kind.upper()
    if kind == "BINARY.SIZE":
        if origin is not None:
            raise Bad("BINARY.SIZE takes no partial range")
        return Item("BINARY.SIZE", b"BINARY.SIZE[" + (numbers or "").encode() + b"]", part)
    partial = (int(origin), int(count)) if origin is not None else None
    if partial is not None and partial[1] == 0:
        raise Bad("A partial fetch needs a non-zero length")
    head = b"BINARY[" + (numbers or "").encode() + b"]"
    if partial is not None:
        head += b"<%d>" % partial[0]
    return Item("BINARY[]", head, part, None, (), partial, kind == "BINARY.PEEK")


class UnknownTransferEncoding(Exception):
    """BINARY of a part whose Content-Transfer-Encoding this server cannot undo (RFC 3516 §4.3)."""


def batch_bounds(
    sizes: Iterable[int], count: int = BATCH_MESSAGES, max_bytes: int = BATCH_BYTES
) -> Iterator[tuple[int, int]]:
    """(start, end) of each batch of consecutive messages of these sizes: at most `count` of them
    and `max_bytes` together (a message larger by itself is a batch of its own)."""
    start = end = size = 0
    for end, message_size in enumerate(sizes, 1):  # `end`: just after this message
        position = end - 1
        if position > start and (position - start >= count or size + message_size > max_bytes):
            yield start, position
            start, size = position, 0
        size += message_size
    if end > start:
        yield start, end


Lines = Callable[[Sequence[int], Sequence[MessageInfo], Collection[int]], bytes]


def metadata_lines(request: Request) -> Lines:
    """For a request that needs no message bytes (UID, FLAGS, INTERNALDATE, RFC822.SIZE): the
    responses for a run of messages, `lines(seqs, infos, recent)` (`recent`: the \\Recent UIDs).
    The full `UID FETCH 1:* (FLAGS)` resync a client does on reconnecting is one format operation
    per message, each distinct flag set rendered once."""
    names = tuple(item.name for item in request.items)
    if names in (("UID", "FLAGS"), ("FLAGS",)):
        with_uid = names[0] == "UID"

        def flag_lines(seqs: Sequence[int], infos: Sequence[MessageInfo], recent: Collection[int]) -> bytes:
            # flag set → "(\\Seen ...)": for messages that are not \\Recent, and for those that are
            rendered: tuple[dict[frozenset[str], bytes], ...] = ({}, {})
            out = []
            for seq, info in zip(seqs, infos, strict=True):
                uid, flags = info.uid, info.flags
                is_recent = bool(recent) and uid in recent
                text = rendered[is_recent].get(flags)
                if text is None:
                    text = rendered[is_recent][flags] = responses.flag_list(flags, is_recent)
                if with_uid:
                    out.append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, uid, text))
                else:
                    out.append(b"* %d FETCH (FLAGS %s)\r\n" % (seq, text))
            return b"".join(out)

        return flag_lines

    def any_lines(seqs: Sequence[int], infos: Sequence[MessageInfo], recent: Collection[int]) -> bytes:
        return b"".join(
            [
                b"".join(render_pieces(seq, info, info.uid in recent, request, None, None))
                for seq, info in zip(seqs, infos, strict=True)
            ]
        )

    return any_lines


WholeHead = Callable[[int, int, int], bytes]
WHOLE_TAIL = b")\r\n"


def whole_message_head(request: Request) -> WholeHead | None:
    """For a request of the whole message, with its UID or without (`BODY.PEEK[]`, `UID FETCH
    (BODY.PEEK[])`, `RFC822`: how a client downloads a folder), the response up to the message:
    `head(seq, uid, octets)`; the message follows, then WHOLE_TAIL. The same bytes as
    render_pieces, with one format operation. None for any other request."""
    items = request.items
    if len(items) == 2 and items[0].name == "UID":
        uid, whole = True, items[1]
    elif len(items) == 1:
        uid, whole = False, items[0]
    else:
        return None
    if not (whole.name in ("RFC822", "BODY[]") and whole.whole and whole.partial is None):
        return None
    label = whole.response_label
    if uid:
        return lambda seq, uid, octets: b"* %d FETCH (UID %d %s {%d}\r\n" % (seq, uid, label, octets)
    return lambda seq, uid, octets: b"* %d FETCH (%s {%d}\r\n" % (seq, label, octets)


def render_pieces(
    seq: int,
    info: MessageInfo,
    recent: bool,
    request: Request,
    raw: bytes | None,
    parsed: ParsedMessage | None,
    extra_flags: bool = False,
) -> list[bytes]:
    """`* seq FETCH (...)` for one message, in pieces: a whole message is one of them as it was
    read, so the caller writes it out without copying it into a response of its own first.
    `extra_flags`: FLAGS changed by this fetch (\\Seen set implicitly) and must be sent even when
    not asked for (RFC 3501 §6.4.5)."""
    out: list[bytes] = []
    whole: list[tuple[int, bytes]] = []  # (position in out, message bytes) of whole-message literals
    for item in request.items:
        name = item.name
        if name == "UID":
            out.append(b"UID %d" % info.uid)
        elif name == "FLAGS":
            out.append(b"FLAGS " + responses.flag_list(info.flags, recent))
        elif name == "INTERNALDATE":
            out.append(b"INTERNALDATE " + responses.internaldate(info.internaldate))
        elif name == "RFC822.SIZE":
            out.append(b"RFC822.SIZE %d" % info.size)
        elif raw is None:
            continue  # the caller checked; unreachable for items that need the bytes
        elif name == "RFC822" or (item.whole and item.partial is None):
            out.append(b"%s {%d}\r\n" % (item.response_label, len(raw)))
            whole.append((len(out), raw))
        elif item.whole:
            out.append(item.label + b" " + wire.literal(_partial(raw, item.partial)))
        else:
            assert parsed is not None
            if name == "ENVELOPE":
                out.append(b"ENVELOPE " + parsed.envelope())
            elif name == "BODYSTRUCTURE":
                out.append(b"BODYSTRUCTURE " + parsed.bodystructure())
            elif name == "BODY":
                out.append(b"BODY " + parsed.body())
            elif name == "RFC822.HEADER":
                out.append(b"RFC822.HEADER " + wire.literal(parsed.section((), "HEADER")))
            elif name == "RFC822.TEXT":
                out.append(b"RFC822.TEXT " + wire.literal(parsed.section((), "TEXT")))
            elif name in BINARY_ITEMS:
                found = parsed.binary(item.part)
                if found is None:
                    raise UnknownTransferEncoding()
                data, decoded = found
                if name == "BINARY.SIZE":
                    out.append(item.label + b" %d" % len(data))
                else:
                    out.append(item.label + b" " + wire.literal8(_partial(data, item.partial), decoded))
            else:
                data = parsed.section(item.part, item.text, item.fields)
                out.append(item.label + b" " + wire.literal(_partial(data, item.partial)))
    if extra_flags and not any(item.name == "FLAGS" for item in request.items):
        out.append(b"FLAGS " + responses.flag_list(info.flags, recent))
    if not whole:
        return [b"* %d FETCH (" % seq + b" ".join(out) + b")\r\n"]
    pieces = [b"* %d FETCH (" % seq]
    literals = dict(whole)
    for position, text in enumerate(out):
        if position:
            pieces.append(b" ")
        pieces.append(text)
        message = literals.get(position + 1)
        if message is not None:
            pieces.append(message)
    pieces.append(b")\r\n")
    return pieces


def _partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    origin, count = partial
    return data[origin : origin + count]  # beyond the end: an empty string (RFC 3501 §6.4.5)
