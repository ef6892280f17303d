"""The message and envelope as Sieve tests see them.

Header values are unfolded and RFC 2047-decoded (RFC 5228 §5.7); addresses are the mailboxes of
an address header (groups flattened, §2.7.4); the body test reads the decoded text of the parts
whose type it asks for (RFC 5173 §5). Parsing is lazy and done once per message.
"""

from __future__ import annotations

import datetime
import email.policy
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from functools import cached_property

MAX_BODY_PARTS = 200


@dataclass(frozen=True)
class Envelope:
    sender: str  # "" for the null sender
    recipient: str  # the address this delivery is for
    original_recipient: str = ""
    own_addresses: tuple[str, ...] = field(default_factory=tuple)  # every address of the account


class MessageView:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self._decoded: dict[str, list[str]] = {}
        self._addresses: dict[tuple[str, ...], list[str]] = {}

    @cached_property
    def parsed(self) -> Message:
        return BytesParser(policy=email.policy.compat32).parsebytes(self.data)

    @cached_property
    def _raw_headers(self) -> dict[str, list[str]]:
        # Parsed once per message; a 20-rule script asks for the same few headers many times.
        headers: dict[str, list[str]] = {}
        for name, value in self.parsed.items():
            headers.setdefault(name.lower(), []).append(str(value))
        return headers

    def raw_header(self, name: str) -> list[str]:
        return list(self._raw_headers.get(name.lower(), ()))

    def header(self, name: str) -> list[str]:
        """Every value of a header, unfolded and decoded, in message order."""
        key = name.lower()
        found = self._decoded.get(key)
        if found is None:
            found = self._decoded[key] = [_decode(value) for value in self._raw_headers.get(key, ())]
        return list(found)

    def exists(self, name: str) -> bool:
        return name.lower() in self._raw_headers

    def addresses(self, values: list[str]) -> list[str]:
        key = tuple(values)
        found = self._addresses.get(key)
        if found is None:
            found = [address for _, address in getaddresses([_unfold(v) for v in values]) if address]
            self._addresses[key] = found
        return list(found)

    def body(self, transform: str, content_types: tuple[str, ...]) -> list[str]:
        """The body texts the body test compares: one per matching part (RFC 5173)."""
        if transform == ":raw":
            head_end = self.data.find(b"\r\n\r\n")
            separator = 4
            if head_end < 0:
                head_end, separator = self.data.find(b"\n\n"), 2
            raw = b"" if head_end < 0 else self.data[head_end + separator :]
            return [raw.decode("utf-8", "replace")]
        wanted = content_types if transform == ":content" else ("text",)
        out: list[str] = []
        for count, part in enumerate(self.parsed.walk()):
            if count >= MAX_BODY_PARTS:
                break
            if part.is_multipart() and not _wanted(part, wanted):
                continue
            if _wanted(part, wanted):
                out.append(_part_text(part))
        return out

    def date(self, name: str, index: int | None, last: bool) -> datetime.datetime | None:
        values = self.header(name)
        if index is not None:
            values = pick(values, index, last)
        if not values:
            return None
        try:
            value = parsedate_to_datetime(values[0])
        except (TypeError, ValueError, IndexError):
            return None
        if value.tzinfo is None:  # "-0000": the zone is unknown (RFC 5322 §3.3)
            value = value.replace(tzinfo=datetime.UTC)
        return value


def _wanted(part: Message, content_types: tuple[str, ...]) -> bool:
    maintype, subtype = part.get_content_maintype(), part.get_content_subtype()
    for wanted in content_types:
        wanted = wanted.lower()
        if wanted == "" or wanted == maintype or wanted == f"{maintype}/{subtype}":
            return True
    return False


def _part_text(part: Message) -> str:
    if part.is_multipart():
        return ""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def pick(values: list[str], index: int, last: bool) -> list[str]:
    # RFC 5260 §6: :index N counts header fields from the top, or from the bottom with :last.
    if index < 1 or index > len(values):
        return []
    return [values[-index] if last else values[index - 1]]


def _unfold(value: str) -> str:
    return value.replace("\r\n", "").replace("\n", "")


def _decode(value: str) -> str:
    value = _unfold(value)
    if "=?" not in value:
        return value.strip()
    try:
        return str(make_header(decode_header(value))).strip()
    except (ValueError, LookupError):
        return value.strip()
