"""Header field values as text: MIME parameters, address lists and encoded words.

What IMAP needs from a header value, apart from where it sits in the message (message.py): the
main value and parameters of Content-Type/Content-Disposition (RFC 2045 §5.1, RFC 2231
continuations), an address list read leniently into ENVELOPE's four parts (RFC 5322 §3.4,
RFC 3501 §7.4.2), and RFC 2047 encoded words decoded for SEARCH. Pure functions on str and bytes;
malformed input never raises.
"""

from __future__ import annotations

import binascii
import re
from urllib.parse import quote

_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([QqBb])\?([^?\s]*)\?=")
_EXTENDED_PARAM = re.compile(r"^([^*]+)\*(?:(\d{1,3})(\*)?)?$")  # RFC 2231 §3, §4
_ADDRESS_SPECIALS = frozenset('()<>@,;:"[]')

Address = tuple[str | None, str | None, str | None, str | None]  # name adl mailbox host


# -- Structured field values: tokens, comments, parameters (RFC 2045 §5.1, RFC 2231) ---------------
def is_token(text: str) -> bool:
    """An RFC 2045 §5.1 token: not empty, no tspecials, spaces or controls."""
    return bool(text) and not any(char in '()<>@,;:\\"/[]?= \t' or ord(char) < 0x21 for char in text)


def strip_comments(text: str) -> str:
    """RFC 5322 §3.2.2 comments removed (nested, quoted strings respected)."""
    if "(" not in text:
        return text
    out: list[str] = []
    depth = 0
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                out.append(char)
        elif quoted:
            quoted = char != '"'
            out.append(char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth == 0:
            quoted = char == '"'
            out.append(char)
    return "".join(out)


def mime_value(value: str) -> tuple[str, list[tuple[str, str]]]:
    """A Content-Type / Content-Disposition value: the main value and its parameters
    (RFC 2045 §5.1), names lowercased, RFC 2231 continuations joined."""
    text = strip_comments(value)
    main, _, rest = text.partition(";")
    params: list[tuple[str, str]] = []
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        j = i
        while j < n and rest[j] not in "=;":
            j += 1
        name = rest[i:j].strip().lower()
        if j >= n or rest[j] == ";":
            i = j
            continue  # no "=": not a parameter
        i = j + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(rest[i])
                i += 1
            i += 1
            item = "".join(chars)
        else:
            j = i
            while j < n and rest[j] != ";":
                j += 1
            item = rest[i:j].strip()
            i = j
        if name:
            params.append((name, item))
    return main.strip(), _join_rfc2231(params)


def _join_rfc2231(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """RFC 2231: "name*0", "name*1*"... joined into one parameter; encoded values stay encoded
    under "name*" (charset'language'%XX), as Dovecot sends them."""
    if not any("*" in name for name, _ in params):
        return params
    out: list[tuple[str, str]] = []
    groups: dict[str, list[tuple[int, bool, str]]] = {}
    for name, value in params:
        match = _EXTENDED_PARAM.match(name)
        if match is None:
            out.append((name, value))
            continue
        base, index, star = match.groups()
        if base not in groups:
            groups[base] = []
            out.append((base, ""))  # placeholder keeps the order
        groups[base].append(
            (int(index) if index is not None else 0, index is None or star is not None, value)
        )
    result: list[tuple[str, str]] = []
    for name, value in out:
        segments = groups.pop(name, None) if value == "" and name in groups else None
        if segments is None:
            result.append((name, value))
            continue
        segments.sort(key=lambda segment: segment[0])
        if not any(encoded for _, encoded, _ in segments):
            result.append((name, "".join(value for _, _, value in segments)))
            continue
        pieces = [] if segments[0][1] else ["''"]
        pieces += [value if encoded else quote(value, safe="") for _, encoded, value in segments]
        result.append((name + "*", "".join(pieces)))
    return result


# -- Address lists (RFC 5322 §3.4) -----------------------------------------------------------------
def _tokenize_addresses(text: str) -> list[tuple[str, str]]:
    """RFC 5322 §3.2 lexical tokens: ("a", atom), ("q", quoted), ("c", comment), ("l", [literal]),
    (special, special)."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in " \t\r\n":
            i += 1
        elif char == '"':
            i += 1
            chars: list[str] = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(text[i])
                i += 1
            tokens.append(("q", "".join(chars)))
            i += 1
        elif char == "(":
            depth, j = 0, i
            while j < n:
                if text[j] == "\\":
                    j += 1
                elif text[j] == "(":
                    depth += 1
                elif text[j] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            tokens.append(("c", text[i + 1 : j].strip()))
            i = j + 1
        elif char == "[":
            j = text.find("]", i)
            j = n - 1 if j < 0 else j
            tokens.append(("l", text[i : j + 1]))
            i = j + 1
        elif char in _ADDRESS_SPECIALS:
            tokens.append((char, char))
            i += 1
        else:
            j = i
            while j < n and text[j] not in _ADDRESS_SPECIALS and text[j] not in " \t\r\n":
                j += 1
            tokens.append(("a", text[i:j]))
            i = j
    return tokens


def parse_addresses(text: str) -> list[Address]:
    """An address-list (RFC 5322 §3.4) leniently, groups as RFC 3501 §7.4.2 writes them."""
    out: list[Address] = []
    current: list[tuple[str, str]] = []
    in_group = in_angle = False
    for token in _tokenize_addresses(text):
        kind = token[0]
        if kind == "<":
            in_angle = True
        elif kind == ">":
            in_angle = False
        elif not in_angle and kind == ",":
            _add_mailbox(current, out)
            current = []
            continue
        elif not in_angle and kind == ":" and not in_group and all(t[0] in "aqc" for t in current):
            group = _phrase(current) or ""
            out.append((None, None, group, None))  # start of group
            in_group, current = True, []
            continue
        elif not in_angle and kind == ";" and in_group:
            _add_mailbox(current, out)
            out.append((None, None, None, None))  # end of group
            in_group, current = False, []
            continue
        current.append(token)
    _add_mailbox(current, out)
    if in_group:
        out.append((None, None, None, None))
    return out


def _phrase(tokens: list[tuple[str, str]]) -> str | None:
    words = [value for kind, value in tokens if kind in ("a", "q")]
    return " ".join(words) if words else None


def _add_mailbox(tokens: list[tuple[str, str]], out: list[Address]) -> None:
    """One mailbox: name-addr "Name <@route:local@host>" or addr-spec "local@host (comment)"."""
    comments = [value for kind, value in tokens if kind == "c"]
    tokens = [token for token in tokens if token[0] != "c"]
    if not tokens:
        return
    kinds = [kind for kind, _ in tokens]
    adl: str | None = None
    if "<" in kinds:
        at = kinds.index("<")
        name = _phrase(tokens[:at])
        spec = tokens[at + 1 :]
        if ">" in [kind for kind, _ in spec]:
            spec = spec[: [kind for kind, _ in spec].index(">")]
        if spec and spec[0][0] == "@" and ":" in [kind for kind, _ in spec]:
            colon = [kind for kind, _ in spec].index(":")
            adl = "".join(value for _, value in spec[:colon])  # RFC 5322 §4.4 obs-route
            spec = spec[colon + 1 :]
    else:
        name, spec = None, tokens
    if name is None and comments:
        name = comments[-1] or None  # "local@host (Name)"
    spec_kinds = [kind for kind, _ in spec]
    if "@" in spec_kinds:
        at = len(spec_kinds) - 1 - spec_kinds[::-1].index("@")
        local = "".join(value for _, value in spec[:at])
        host = "".join(value for _, value in spec[at + 1 :])
    else:
        local = " ".join(value for _, value in spec)
        host = ""
    # Dovecot fills in what is missing, so that a client never sees the group syntax by mistake.
    out.append((name, adl, local or "MISSING_MAILBOX", host or "MISSING_DOMAIN"))


# -- Encoded words (RFC 2047) and charsets ---------------------------------------------------------
def to_text(data: bytes, charset: str | None = None) -> str:
    """Bytes in a declared charset; undeclared or unknown: UTF-8, else latin-1 (never raises)."""
    if charset:
        try:
            return data.decode(charset, "replace")
        except (LookupError, ValueError, TypeError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_header_value(value: bytes) -> str:
    """A header value with RFC 2047 encoded-words decoded; whitespace between adjacent encoded
    words dropped (RFC 2047 §6.2); words of one charset joined before decoding."""
    text = to_text(value)
    if "=?" not in text:
        return text
    out: list[str] = []
    pending = b""
    pending_charset = ""
    last = -1  # the end of the previous encoded word
    for match in _ENCODED_WORD.finditer(text):
        between = text[max(last, 0) : match.start()]
        adjacent = last >= 0 and not between.strip()
        charset = match.group(1).lower()
        if pending and (not adjacent or charset != pending_charset):
            out.append(to_text(pending, pending_charset))
            pending = b""
        if not adjacent:
            out.append(between)
        payload = match.group(3).encode("latin-1", "replace")
        if match.group(2).upper() == "B":
            pending += decode_base64(payload)
        else:
            pending += binascii.a2b_qp(payload, header=True)
        pending_charset = charset
        last = match.end()
    if pending:
        out.append(to_text(pending, pending_charset))
    out.append(text[max(last, 0) :])
    return "".join(out)


def decode_base64(data: bytes) -> bytes:
    """Lenient base64: characters outside the alphabet skipped, missing padding supplied."""
    clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    clean = clean[: len(clean) - 1] if len(clean) % 4 == 1 else clean
    try:
        return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
    except (binascii.Error, ValueError):
        return b""
