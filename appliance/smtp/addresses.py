"""Envelope addresses as RFC 5321 §4.1.2 writes them, parsed strictly.

    Path        = "<" [ A-d-l ":" ] Mailbox ">"
    Mailbox     = Local-part "@" ( Domain / address-literal )
    Local-part  = Dot-string / Quoted-string

Everything that decides relaying looks at `Mailbox.domain`, normalised once here: lower case,
without a trailing dot, internationalised names as A-labels. The old routing tricks therefore
mean nothing special: a source route (`<@a:b@c>`) is dropped as RFC 5321 §4.1.2 says (the mail
goes to b@c), while `%` and `!` are ordinary characters of a local part and are never routed on.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_STRING = re.compile(rf"^[{_ATEXT}]+(?:\.[{_ATEXT}]+)*$")
# RFC 6531 §3.3: with SMTPUTF8, atext also takes any non-ASCII UTF-8 character.
_DOT_STRING_UTF8 = re.compile(rf"^[\u0080-\U0010ffff{_ATEXT}]+(?:\.[\u0080-\U0010ffff{_ATEXT}]+)*$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2


class AddressError(ValueError):
    """The text is not a valid envelope address."""


@dataclass(frozen=True)
class Mailbox:
    local_part: str  # unquoted when it is a plain dot-string; the quoted form otherwise
    domain: str  # normalised: lower case, no trailing dot, A-labels; "[192.0.2.1]" for a literal
    quoted: bool  # the local part needs quoting (has characters a dot-string cannot hold)

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain}"

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")


def split_path(argument: str) -> tuple[str, str]:
    """`<path> params` → ("path inside the brackets", "params"); lenient about missing brackets."""
    text = argument.strip()
    if not text.startswith("<"):
        # RFC 5321 asks for the brackets; many old clients omit them (Postfix accepts that too).
        path, _, rest = text.partition(" ")
        return path, rest.strip()
    in_quotes = escaped = False
    for index in range(1, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == "\\" and in_quotes:
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == ">" and not in_quotes:
            return text[1:index], text[index + 1 :].strip()
    raise AddressError("missing >")


def parse_mailbox(path: str, *, utf8: bool = False) -> Mailbox:
    """The mailbox of a path (without its brackets); a source route is dropped."""
    if path.startswith("@"):
        # RFC 5321 §4.1.2 and Appendix C: A-d-l ":" Mailbox; the route SHOULD be ignored.
        route, colon, path = path.partition(":")
        if not colon:
            raise AddressError("source route without ':'")
        for hop in route.split(","):
            if not hop.startswith("@"):
                raise AddressError("bad source route")
            normalise_domain(hop[1:], utf8=utf8)
    local_part, quoted, rest = _local_part(path, utf8=utf8)
    if not rest.startswith("@"):
        raise AddressError("no domain")
    domain = normalise_domain(rest[1:], utf8=utf8)
    return Mailbox(local_part, domain, quoted)


def normalise_domain(text: str, *, utf8: bool = False) -> str:
    if not text:
        raise AddressError("empty domain")
    if text.startswith("["):
        return _address_literal(text)
    name = text[:-1] if text.endswith(".") else text  # the root label: "example.test." is example.test
    if not name or len(name) > MAX_DOMAIN:
        raise AddressError("bad domain length")
    if not name.isascii():
        if not utf8:
            raise AddressError("non-ASCII domain without SMTPUTF8")
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise AddressError("bad internationalised domain") from None
    name = name.lower()
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise AddressError("bad domain")
    return name


def _address_literal(text: str) -> str:
    """RFC 5321 §4.1.3: "[192.0.2.1]" or "[IPv6:2001:db8::1]", normalised."""
    if not text.endswith("]"):
        raise AddressError("bad address literal")
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise AddressError("bad address literal") from None


def _local_part(text: str, *, utf8: bool) -> tuple[str, bool, str]:
    """(local part, needs quoting, the rest starting at "@")."""
    if text.startswith('"'):
        chars: list[str] = []
        index = 1
        while index < len(text):
            char = text[index]
            if char == "\\":
                # quoted-pairSMTP = %d92 %d32-126
                if index + 1 >= len(text) or not (" " <= text[index + 1] <= "~"):
                    raise AddressError("bad quoted pair")
                chars.append(text[index + 1])
                index += 2
                continue
            if char == '"':
                break
            if not (" " <= char <= "~" or (utf8 and ord(char) >= 0x80)):
                raise AddressError("bad character in quoted local part")
            chars.append(char)
            index += 1
        else:
            raise AddressError("unterminated quoted local part")
        value = "".join(chars)
        rest = text[index + 1 :]
        if not value or len(value) > MAX_LOCAL_PART:
            raise AddressError("bad local part length")
        pattern = _DOT_STRING_UTF8 if utf8 else _DOT_STRING
        if pattern.match(value):
            return value, False, rest  # "john"@example.test is john@example.test (RFC 5321 §4.1.2)
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"', True, rest
    local, at, domain = text.partition("@")
    if not at:
        raise AddressError("no @")
    if len(local) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    pattern = _DOT_STRING_UTF8 if utf8 else _DOT_STRING
    if not pattern.match(local):
        raise AddressError("bad local part")
    return local, False, "@" + domain


def parse_parameters(text: str) -> dict[str, str | None]:
    """RFC 5321 §4.1.2 Mail-parameters: "KEY=value KEY2" → {"KEY": "value", "KEY2": None}."""
    parameters: dict[str, str | None] = {}
    for item in text.split():
        key, equals, value = item.partition("=")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", key) or (equals and not value):
            raise AddressError(f"bad parameter {item!r}")
        parameters[key.upper()] = value if equals else None
    return parameters
