"""IMAP strings on the wire (RFC 3501 §4.3): quoted when safe, a literal otherwise."""

from __future__ import annotations

_QUOTED_UNSAFE = frozenset(b'\r\n"\\\0') | frozenset(range(0x80, 0x100))
MAX_QUOTED = 1024  # longer strings go as literals: cheaper for the client to read


def string(value: bytes | str) -> bytes:
    """`value` as an IMAP string: "quoted" for short plain text, {n}CRLF literal otherwise."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if len(data) <= MAX_QUOTED and not any(byte in _QUOTED_UNSAFE for byte in data):
        return b'"' + data + b'"'
    return b"{%d}\r\n" % len(data) + data


def nstring(value: bytes | str | None) -> bytes:
    """`value` as an IMAP nstring: NIL for None."""
    return b"NIL" if value is None else string(value)


def literal(data: bytes) -> bytes:
    """`data` always as a literal (message bodies and sections: FETCH BODY[...])."""
    return b"{%d}\r\n" % len(data) + data


def literal8(data: bytes, decoded: bool = False) -> bytes:
    """RFC 3516 §4.3: `data` as a literal8 (~{n}) when it holds a NUL or was decoded from
    base64 or quoted-printable (any octet may be there: as Dovecot answers), else a literal."""
    return (b"~{%d}\r\n" if decoded or b"\0" in data else b"{%d}\r\n") % len(data) + data
