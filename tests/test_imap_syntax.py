"""The IMAP command tokenizer, fetch item parser and date-time parser, without a server."""

from __future__ import annotations

import pytest

from appliance.imap.fetch import (
    WHOLE_TAIL,
    batch_bounds,
    metadata_lines,
    parse_items,
    render_pieces,
    whole_message_head,
)
from appliance.imap.index import MessageInfo
from appliance.imap.responses import Bad, internaldate, parse_date_time
from appliance.imap.sequence import SequenceSet, SequenceSetError
from appliance.imap.syntax import CommandSyntaxError, Tokenizer
from appliance.imap.tokens import Atom


def tokens(*lines: bytes, literals: tuple[bytes, ...] = ()) -> list[object]:
    tokenizer = Tokenizer()
    pending = list(literals)
    for line in lines:
        request = tokenizer.feed(line)
        if request is not None:
            tokenizer.literal(pending.pop(0))
    return list(tokenizer.finish())


def test_atoms_strings_lists_and_fetch_attributes_kept_whole() -> None:
    assert tokens(b'1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100>) "a \\"q\\" \\\\" NIL') == [
        Atom("1:*"),
        [Atom("FLAGS"), Atom("BODY.PEEK[HEADER.FIELDS (From To)]<0.100>")],
        b'a "q" \\',
        Atom("NIL"),
    ]


def test_a_literal_continues_the_command_on_the_next_line() -> None:
    tokenizer = Tokenizer()
    assert tokenizer.feed(b"INBOX (\\Seen) {5+}") == (5, False)
    tokenizer.literal(b"hello")
    assert tokenizer.feed(b" {3}") == (3, True)
    tokenizer.literal(b"abc")
    assert tokenizer.feed(b"") is None
    assert tokenizer.finish() == [Atom("INBOX"), [Atom("\\Seen")], b"hello", b"abc"]


@pytest.mark.parametrize(
    "line",
    [b'"open', b"(a", b"a)", b"{5", b"{x}", b'"bad \\escape"', b"a\x01b", b"(" * 40, b"BODY[TEXT"],
)
def test_malformed_arguments_are_syntax_errors(line: bytes) -> None:
    with pytest.raises(CommandSyntaxError):
        tokens(line)


def test_fetch_items_macros_sections_and_partials() -> None:
    request = parse_items([Atom("FAST")], uid=True)
    assert [item.name for item in request.items] == ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert not request.needs_bytes
    request = parse_items(
        [[Atom("BODY.PEEK[1.2.HEADER.FIELDS.NOT (X-Spam)]<10.20>"), Atom("BODY[]")]], uid=False
    )
    first, second = request.items
    assert (first.part, first.text, first.fields, first.partial, first.peek) == (
        (1, 2),
        "HEADER.FIELDS.NOT",
        ("X-Spam",),
        (10, 20),
        True,
    )
    assert first.label == b"BODY[1.2.HEADER.FIELDS.NOT (X-Spam)]<10>"
    assert second.whole and request.sets_seen and request.needs_parse
    for bad in ("BODY[0]", "BODY[MIME]", "BODY[HEADER.FIELDS]", "BODY[]<1.0>", "BODYX", "ALL2"):
        with pytest.raises(Bad):
            parse_items([Atom(bad)], uid=False)


def test_date_time_round_trips_through_internaldate() -> None:
    stamp = parse_date_time(" 7-Feb-1994 21:52:25 -0800")
    assert stamp == 760686745.0
    assert parse_date_time(internaldate(stamp).decode().strip('"')) == stamp
    with pytest.raises(Bad):
        parse_date_time("31-Foo-2020 10:00:00 +0000")


@pytest.mark.parametrize(
    ("items", "uid"),
    [
        ([Atom("FLAGS")], True),  # the resync: UID FETCH 1:* (FLAGS)
        ([Atom("FLAGS")], False),
        ([Atom("UID")], False),
        ([[Atom("FLAGS"), Atom("UID")]], False),
        ([Atom("FAST")], True),
        ([[Atom("RFC822.SIZE"), Atom("INTERNALDATE")]], False),
    ],
)
def test_metadata_lines_are_what_render_gives(items: list, uid: bool) -> None:
    request = parse_items(items, uid)
    lines = metadata_lines(request)
    infos = [
        MessageInfo(7, "k7", frozenset({"\\Seen", "$Work"}), 1_700_000_000.0, 4321),
        MessageInfo(9, "k9", frozenset(), 1_700_086_400.0, 12),
        MessageInfo(
            10, "k10", frozenset({"\\Seen", "$Work"}), 1_700_000_000.0, 4321
        ),  # a flag set seen before
        MessageInfo(12, "k12", frozenset({"\\Seen", "$Work"}), 1_700_000_000.0, 4321),  # ... and \\Recent
    ]
    recent = {9, 12}
    expected = b"".join(
        b"".join(render_pieces(seq, info, info.uid in recent, request, None, None))
        for seq, info in enumerate(infos, 1)
    )
    assert lines(range(1, 5), infos, recent) == expected
    assert lines(range(1, 5), infos, set()) == b"".join(
        b"".join(render_pieces(seq, info, False, request, None, None)) for seq, info in enumerate(infos, 1)
    )


def test_sequence_sets_resolve_ranges_overlaps_and_star() -> None:
    uids = [1, 2, 3, 5, 9, 12]
    assert SequenceSet.parse("1:*").select(uids, 12) == uids
    assert SequenceSet.parse("4:2,3,9:*").select(uids, 12) == [2, 3, 9, 12]
    assert SequenceSet.parse("20:*").select(uids, 12) == [12]  # RFC 3501 §6.4.8: "*" is the largest
    assert SequenceSet.parse("6:8").select(uids, 12) == []
    assert SequenceSet.parse("1:*").seqs(5) == [1, 2, 3, 4, 5]
    assert SequenceSet.parse("5,1:2,2,*").seqs(5) == [1, 2, 5]
    assert SequenceSet.parse("3:1").seqs(3) == [1, 2, 3]
    with pytest.raises(SequenceSetError):
        SequenceSet.parse("6").seqs(5)
    with pytest.raises(SequenceSetError):
        SequenceSet.parse("1").seqs(0)


RAW = b"Subject: hi\r\n\r\nbody\r\n"  # 21 octets


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([Atom("BODY.PEEK[]")], b"* 3 FETCH (UID 7 BODY[] {21}\r\n" + RAW + b" FLAGS (\\Seen))\r\n"),
        (
            [[Atom("FLAGS"), Atom("BODY[]"), Atom("RFC822.SIZE")]],
            b"* 3 FETCH (UID 7 FLAGS (\\Seen) BODY[] {21}\r\n" + RAW + b" RFC822.SIZE 21)\r\n",
        ),
        (
            [[Atom("RFC822"), Atom("BODY.PEEK[]<2.5>"), Atom("BODY.PEEK[]")]],
            b"* 3 FETCH (UID 7 RFC822 {21}\r\n"
            + RAW
            + b" BODY[]<2> {5}\r\nbject BODY[] {21}\r\n"
            + RAW
            + b" FLAGS (\\Seen))\r\n",
        ),
        ([[Atom("UID"), Atom("RFC822.SIZE")]], b"* 3 FETCH (UID 7 RFC822.SIZE 21 FLAGS (\\Seen))\r\n"),
    ],
)
def test_fetch_responses_carry_whole_messages_as_read(items: list, expected: bytes) -> None:
    request = parse_items(items, uid=True)
    info = MessageInfo(7, "k7", frozenset({"\\Seen"}), 1_700_000_000.0, len(RAW))
    pieces = render_pieces(3, info, False, request, RAW, None, extra_flags=True)
    assert b"".join(pieces) == expected
    if any(item.whole and item.partial is None for item in request.items):
        assert any(piece is RAW for piece in pieces)  # not copied into a response of its own


@pytest.mark.parametrize(
    ("items", "uid"),
    [
        ([Atom("BODY.PEEK[]")], False),  # a folder's download
        ([Atom("BODY.PEEK[]")], True),
        ([Atom("BODY[]")], False),
        ([Atom("RFC822")], True),
        ([[Atom("UID"), Atom("BODY.PEEK[]")]], False),
    ],
)
def test_whole_message_heads_are_what_render_gives(items: list, uid: bool) -> None:
    request = parse_items(items, uid)
    head = whole_message_head(request)
    assert head is not None
    info = MessageInfo(70, "k70", frozenset({"\\Seen"}), 1_700_000_000.0, len(RAW))
    expected = b"".join(render_pieces(12, info, False, request, RAW, None))
    assert head(12, 70, len(RAW)) + RAW + WHOLE_TAIL == expected


@pytest.mark.parametrize(
    "items",
    [
        [[Atom("BODY.PEEK[]"), Atom("UID")]],  # the UID after the literal
        [[Atom("FLAGS"), Atom("BODY.PEEK[]")]],
        [Atom("BODY.PEEK[]<0.100>")],
        [Atom("BODY.PEEK[TEXT]")],
        [[Atom("UID"), Atom("UID"), Atom("FLAGS"), Atom("BODY.PEEK[]")]],  # repeats are answered once
        [Atom("RFC822.HEADER")],
        [Atom("FLAGS")],
    ],
)
def test_other_requests_have_no_whole_message_head(items: list) -> None:
    assert whole_message_head(parse_items(items, False)) is None


def test_batches_are_bounded_by_count_and_bytes_and_a_big_message_stands_alone() -> None:
    assert list(batch_bounds([], 3, 100)) == []
    assert list(batch_bounds([10] * 7, 3, 100)) == [(0, 3), (3, 6), (6, 7)]
    assert list(batch_bounds([40, 40, 40, 500, 10], 10, 100)) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert list(batch_bounds([0, 0, 0], 2, 0)) == [(0, 2), (2, 3)]  # empty messages: the count bounds


def test_brackets_are_ordinary_atom_characters_outside_fetch_sections() -> None:
    """RFC 3501 §9: "[" is an ATOM-CHAR and "]" an ASTRING-CHAR; BODY[ starts a section."""
    assert tokens(b"!#$&'+,-.0123456789:;<=>?@^_`|[} a]b [x") == [
        Atom("!#$&'+,-.0123456789:;<=>?@^_`|[}"),
        Atom("a]b"),
        Atom("[x"),
    ]
    assert tokens(b"(BODY[HEADER.FIELDS (A B)] BINARY.PEEK[1])") == [
        [Atom("BODY[HEADER.FIELDS (A B)]"), Atom("BINARY.PEEK[1]")]
    ]
