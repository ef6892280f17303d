"""ENVELOPE, BODYSTRUCTURE and body sections of real MIME messages, byte for byte (RFC 3501 §6.4.5, §7.4.2)."""

from __future__ import annotations

import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.imap.message import EMPTY_BODYSTRUCTURE, ParsedMessage

IMAP_ITEM = re.compile(rb'\(|\)|NIL|\d+|"(?:[^"\\\r\n]|\\["\\])*"|\{(\d+)\}\r\n| ')


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def parse_imap(data: bytes) -> object:
    """One parenthesized IMAP value (lists, strings, literals, numbers, NIL); raises unless the
    whole of `data` is exactly one well-formed value."""
    stack: list[list[object]] = [[]]
    pos = 0
    while pos < len(data):
        match = IMAP_ITEM.match(data, pos)
        assert match is not None, f"bad IMAP syntax at {pos}: {data[pos : pos + 40]!r}"
        token = match.group(0)
        pos = match.end()
        if token == b"(":
            stack.append([])
        elif token == b")":
            assert len(stack) > 1, "unbalanced )"
            done = stack.pop()
            stack[-1].append(done)
        elif token == b" ":
            continue
        elif token == b"NIL":
            stack[-1].append(None)
        elif token.startswith(b'"'):
            stack[-1].append(re.sub(rb"\\(.)", rb"\1", token[1:-1]))
        elif match.group(1) is not None:
            size = int(match.group(1))
            assert pos + size <= len(data), "literal runs past the end"
            stack[-1].append(data[pos : pos + size])
            pos += size
        else:
            stack[-1].append(int(token))
    assert len(stack) == 1 and len(stack[0]) == 1, "not exactly one balanced value"
    return stack[0][0]


# RFC 3501 §7.4.2's own example message (header as in the RFC's ENVELOPE example).
RFC3501_MESSAGE = crlf(
    """Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev1 WG mtg summary and minutes
To: imap@cac.washington.edu
cc: minutes@CNRI.Reston.VA.US,
 John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

Minutes of the meeting.
Second line.
"""
)

MIXED = crlf(
    """From: "Doe, Jane" <jane@example.test>
To: team@example.test
Subject: =?UTF-8?Q?R=C3=A9sum=C3=A9?= attached
Date: Tue, 1 Feb 1994 21:52:25 -0800
Message-ID: <1@example.test>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is a multi-part message in MIME format.
--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Gr=C3=BC=C3=9Fe aus der Stra=C3=9Fe
--inner
Content-Type: text/html; charset=utf-8

<p>Hello</p>
--inner--
--outer
Content-Type: application/pdf; name="cv.pdf"
Content-Disposition: attachment; filename="cv.pdf"
Content-Transfer-Encoding: base64
Content-ID: <cv@example.test>
Content-Language: en, de

JVBERi0xLjQK
--outer
Content-Type: message/rfc822
Content-Description: forwarded

From: Bob <bob@example.test>
Subject: inner subject
Content-Type: text/plain

Forwarded body text.
--outer--
epilogue
"""
)


def test_envelope_of_the_rfc_3501_example_matches_the_rfc() -> None:
    assert ParsedMessage.parse(RFC3501_MESSAGE).envelope() == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) (("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) ((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL '
        b'"<B27397-0100000@cac.washington.edu>")'
    )


def test_a_single_part_text_message_has_its_size_and_line_count() -> None:
    message = ParsedMessage.parse(RFC3501_MESSAGE)
    body = b"Minutes of the meeting.\r\nSecond line.\r\n"
    assert (
        message.bodystructure()
        == b'("TEXT" "PLAIN" ("charset" "US-ASCII") NIL NIL "7bit" %d 2 NIL NIL NIL NIL)' % len(body)
    )
    assert message.body() == b'("TEXT" "PLAIN" ("charset" "US-ASCII") NIL NIL "7bit" %d 2)' % len(body)
    assert (
        message.section((1,), None) == body
    )  # RFC 3501 §6.4.5: a non-multipart message's part 1 is its body
    assert message.section((), "TEXT") == body
    assert message.section((2,), None) == b""
    assert message.section((1, 1), None) == b""


def test_bodystructure_of_mixed_with_alternative_attachment_and_forwarded_message() -> None:
    inner_envelope = (
        b'(NIL "inner subject" (("Bob" NIL "bob" "example.test")) (("Bob" NIL "bob" "example.test")) '
        b'(("Bob" NIL "bob" "example.test")) NIL NIL NIL NIL NIL)'
    )
    assert ParsedMessage.parse(MIXED).bodystructure() == (
        b'((("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 35 0 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 12 0 NIL NIL NIL NIL) "alternative" '
        b'("boundary" "inner") NIL NIL NIL)'
        b'("application" "pdf" ("name" "cv.pdf") "<cv@example.test>" NIL "base64" 12 NIL '
        b'("attachment" ("filename" "cv.pdf")) ("en" "de") NIL)'
        b'("message" "rfc822" NIL NIL "forwarded" "7bit" 102 ' + inner_envelope + b" "
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 20 0 NIL NIL NIL NIL) 4 NIL NIL NIL NIL) '
        b'"mixed" ("boundary" "outer") NIL NIL NIL)'
    )
    assert ParsedMessage.parse(MIXED).body() == (
        b'((("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 35 0)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 12 0) "alternative")'
        b'("application" "pdf" ("name" "cv.pdf") "<cv@example.test>" NIL "base64" 12)'
        b'("message" "rfc822" NIL NIL "forwarded" "7bit" 102 ' + inner_envelope + b" "
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 20 0) 4) "mixed")'
    )


def test_sections_of_nested_parts_are_exact_slices() -> None:
    message = ParsedMessage.parse(MIXED)
    assert message.section((1, 1), None) == b"Gr=C3=BC=C3=9Fe aus der Stra=C3=9Fe"
    assert message.section((1, 1), "MIME") == (
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    assert message.section((1, 2), None) == b"<p>Hello</p>"
    assert message.section((1,), None) == (
        b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        b"\r\nGr=C3=BC=C3=9Fe aus der Stra=C3=9Fe\r\n--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<p>Hello</p>\r\n--inner--"
    )
    assert message.section((2,), None) == b"JVBERi0xLjQK"
    assert message.section((3,), None) == (
        b"From: Bob <bob@example.test>\r\nSubject: inner subject\r\nContent-Type: text/plain\r\n\r\n"
        b"Forwarded body text."
    )
    assert message.section((3,), "HEADER") == (
        b"From: Bob <bob@example.test>\r\nSubject: inner subject\r\nContent-Type: text/plain\r\n\r\n"
    )
    assert message.section((3,), "TEXT") == b"Forwarded body text."
    assert message.section((3, 1), None) == b"Forwarded body text."
    assert message.section((3,), "HEADER.FIELDS", ("SUBJECT",)) == b"Subject: inner subject\r\n\r\n"
    assert (
        message.section((3,), "MIME")
        == b"Content-Type: message/rfc822\r\nContent-Description: forwarded\r\n\r\n"
    )
    assert message.section((2,), "HEADER") == b""  # not a message/rfc822 part
    assert message.section((4,), None) == b""
    assert message.section((1, 3), None) == b""
    assert message.section((), None) == MIXED
    assert message.section((), "TEXT").startswith(b"This is a multi-part message")


def test_header_fields_match_names_case_insensitively_and_keep_folded_lines_whole() -> None:
    message = ParsedMessage.parse(RFC3501_MESSAGE)
    assert message.section((), "HEADER.FIELDS", ("CC", "from")) == (
        b"From: Terry Gray <gray@cac.washington.edu>\r\ncc: minutes@CNRI.Reston.VA.US,\r\n"
        b" John Klensin <KLENSIN@MIT.EDU>\r\n\r\n"
    )
    assert message.section((), "HEADER.FIELDS", ("X-Absent",)) == b"\r\n"
    assert message.section(
        (), "HEADER.FIELDS.NOT", ("date", "FROM", "subject", "to", "cc", "message-id")
    ) == (b"MIME-Version: 1.0\r\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n")
    header = message.section((), "HEADER")
    assert header.endswith(b"CHARSET=US-ASCII\r\n\r\n") and RFC3501_MESSAGE.startswith(header)


def test_subject_is_sent_raw_in_the_envelope_and_decoded_by_header() -> None:
    message = ParsedMessage.parse(MIXED)
    envelope = parse_imap(message.envelope())
    assert isinstance(envelope, list)
    assert envelope[1] == b"=?UTF-8?Q?R=C3=A9sum=C3=A9?= attached"
    assert message.header("Subject") == ["Résumé attached"]
    assert envelope[2] == [[b"Doe, Jane", None, b"jane", b"example.test"]]


def test_rfc_2047_words_are_joined_across_folds_and_charsets() -> None:
    message = ParsedMessage.parse(
        crlf(
            "Subject: =?utf-8?b?8J+Ym8OkIA==?=\n =?utf-8?B?c2/DnyA=?= plain\n"
            "From: =?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>\n\nbody\n"
        )
    )
    assert message.header("subject") == ["😛ä soß  plain"]
    assert message.header("FROM") == ["André Pirard <PIRARD@vm1.ulg.ac.be>"]
    assert message.header("x-missing") == []


def test_groups_routes_and_comments_in_addresses() -> None:
    message = ParsedMessage.parse(
        crlf(
            'From: Team: a@example.test, "Smith, J" <js@example.test>;, boss@example.test (The Boss)\n'
            "To: undisclosed-recipients:;\n"
            "Cc: <@relay1,@relay2:route@example.test>, nobody\n"
            "Sender: \n"
            "Reply-To: replies@example.test\n\nbody\n"
        )
    )
    env = message.envelope()
    from_ = (
        b'((NIL NIL "Team" NIL)(NIL NIL "a" "example.test")("Smith, J" NIL "js" "example.test")(NIL NIL NIL NIL)'
        b'("The Boss" NIL "boss" "example.test"))'
    )
    assert env == (
        b"(NIL NIL " + from_ + b" " + from_ + b' ((NIL NIL "replies" "example.test")) '
        b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
        b'((NIL "@relay1,@relay2" "route" "example.test")(NIL NIL "nobody" "MISSING_DOMAIN")) NIL NIL NIL)'
    )


def test_rfc_2231_parameters_are_joined_and_kept_encoded() -> None:
    message = ParsedMessage.parse(
        crlf(
            'Content-Type: application/octet-stream;\n name*0="long"; name*1="name.bin"\n'
            "Content-Disposition: attachment; filename*=utf-8''%E2%82%AC%20rates.txt\n\nxyz\n"
        )
    )
    assert message.bodystructure() == (
        b'("application" "octet-stream" ("name" "longname.bin") NIL NIL "7bit" 5 NIL '
        b'("attachment" ("filename*" "utf-8\'\'%E2%82%AC%20rates.txt")) NIL NIL)'
    )


def test_the_default_content_type_is_text_plain_us_ascii_and_digest_parts_are_messages() -> None:
    assert ParsedMessage.parse(b"Subject: none\r\n\r\nhello\r\n").bodystructure() == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 7 1 NIL NIL NIL NIL)'
    )
    digest = ParsedMessage.parse(
        crlf("Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: one\n\nfirst\n--d--\n")
    )
    structure = parse_imap(digest.body())
    assert isinstance(structure, list)
    assert structure[0][:2] == [b"message", b"rfc822"]
    assert structure[0][7][1] == b"one"  # the envelope of the digest's message


def test_eight_bit_headers_go_as_literals() -> None:
    message = ParsedMessage.parse("Subject: Grüße\r\nFrom: Jörg <j@example.test>\r\n\r\nx\r\n".encode())
    envelope = message.envelope()
    assert b"{7}\r\nGr\xc3\xbc\xc3\x9fe" in envelope
    assert parse_imap(envelope) == [
        None,
        "Grüße".encode(),
        [["Jörg".encode(), None, b"j", b"example.test"]],
        [["Jörg".encode(), None, b"j", b"example.test"]],
        [["Jörg".encode(), None, b"j", b"example.test"]],
        None,
        None,
        None,
        None,
        None,
    ]
    assert message.header("subject") == ["Grüße"]


def test_multipart_without_boundary_is_one_part_and_an_unfound_boundary_gives_an_empty_part() -> None:
    no_boundary = ParsedMessage.parse(crlf("Content-Type: multipart/mixed\n\n--x\n\nhello\n--x--\n"))
    assert no_boundary.bodystructure() == b'("multipart" "mixed" NIL NIL NIL "7bit" 21 NIL NIL NIL NIL)'
    assert no_boundary.section((1,), None) == b"--x\r\n\r\nhello\r\n--x--\r\n"
    never_found = ParsedMessage.parse(crlf("Content-Type: multipart/mixed; boundary=zz\n\n--x\n\nhello\n"))
    assert (
        never_found.bodystructure() == b"(" + EMPTY_BODYSTRUCTURE + b' "mixed" ("boundary" "zz") NIL NIL NIL)'
    )
    assert never_found.section((1,), None) == b""


def test_an_unterminated_multipart_ends_at_the_end_of_the_message() -> None:
    message = ParsedMessage.parse(
        crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\n\ntwo\n")
    )
    assert message.section((1,), None) == b"one"
    assert message.section((2,), None) == b"two\r\n"
    assert message.body() == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0)'
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 1) "mixed")'
    )


def test_a_message_without_a_blank_line_is_all_header() -> None:
    message = ParsedMessage.parse(b"Subject: only a header\r\nFrom: a@b")
    assert message.section((), "HEADER") == b"Subject: only a header\r\nFrom: a@b"
    assert message.section((), "TEXT") == b""
    assert message.section((), "HEADER.FIELDS", ("from",)) == b"From: a@b\r\n\r\n"
    assert parse_imap(message.envelope())


def test_text_undoes_transfer_encodings_and_charsets() -> None:
    message = ParsedMessage.parse(
        crlf(
            "Content-Type: multipart/mixed; boundary=b\n\n--b\n"
            "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
            "caf=E9 cr=E8me=\n br=FBl=E9e\n--b\n"
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
            "zrrOsc67zrfOvM6tz4HOsQ==\n--b\n"
            "Content-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo=\n--b--\n"
        )
    )
    text = message.text()
    assert "café crème brûlée" in text
    assert "καλημέρα" in text
    assert "PNG" not in text


def test_date_is_read_in_its_own_zone() -> None:
    assert ParsedMessage.parse(RFC3501_MESSAGE).date() == 837595405.0
    assert ParsedMessage.parse(b"Date: not a date\r\n\r\n").date() is None
    assert ParsedMessage.parse(b"\r\n").date() is None


def test_parsing_is_lazy_and_a_large_batch_stays_cheap() -> None:
    started = time.process_time()
    parsed = [ParsedMessage.parse(MIXED) for _ in range(2000)]
    for message in parsed:
        message.envelope()
        message.bodystructure()
    # A generous bound that only catches a pathological (quadratic, re-serializing) parser.
    assert time.process_time() - started < 10


MIME_PIECES = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=b\r\n",
        b'Content-Type: multipart/alternative; boundary="c"\r\n',
        b"Content-Type: message/rfc822\r\n",
        b'Content-Type: text/plain; charset="utf-8\r\n',
        b'Content-Type: ;;=="\r\n',
        b"Content-Disposition: attachment; filename*0*=x'y'%; filename*1=\r\n",
        b"Content-Language: \r\n",
        b'From: a@b, Group:;, "q\\" <x@y>\r\n',
        b"To: (((\r\n",
        b"Subject: =?utf-8?b?####?= \xff\r\n",
        b" folded\r\n",
        b"--b\r\n",
        b"--b--\r\n",
        b"--c\r\n",
        b"\r\n",
        b"\n",
        b"body text\r\n",
        b'\xff\x00"\\{3}\r\n',
    ]
)


def _check_all_outputs(raw: bytes) -> None:
    message = ParsedMessage.parse(raw)
    for output in (message.envelope(), message.bodystructure(), message.body()):
        parse_imap(output)
    for part in ((), (1,), (2,), (1, 1), (1, 2), (2, 1), (3, 1, 1)):
        for text in (None, "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            if text == "MIME" and not part:
                continue
            assert isinstance(message.section(part, text, ("from", "content-type")), bytes)
    message.header("subject")
    message.date()
    message.text()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_and_give_balanced_syntax(raw: bytes) -> None:
    _check_all_outputs(raw)


@settings(max_examples=300, deadline=None)
@given(st.lists(MIME_PIECES, max_size=40))
def test_broken_mime_never_raises_and_gives_balanced_syntax(pieces: list[bytes]) -> None:
    _check_all_outputs(b"".join(pieces))
