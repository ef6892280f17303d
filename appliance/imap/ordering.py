"""SORT (RFC 5256 §3) keys: what each message is sorted by, and the order of a folder's messages.

`summarize` takes what SORT (and THREAD) need out of one message header: the base subject
(RFC 5256 §2.1), the sent date in UTC, the first mailbox of From, To and Cc, the Message-ID,
In-Reply-To and References. It runs where message reads are done, one batch of headers at a time;
`sort_order` then orders positions in memory. Strings compare as i;ascii-casemap (RFC 4790
§9.2: ASCII letters upper-cased, then octet by octet); ties fall back to the sequence number.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from appliance.imap.headers import decode_header_value, parse_addresses
from appliance.imap.message import ParsedMessage, sent_date
from appliance.imap.tokens import Atom, Token

# RFC 5256 §3, and RFC 5957 §3's DISPLAYFROM and DISPLAYTO
SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")
MAX_SORT_KEYS = 16
_WHITESPACE = re.compile(r"[ \t\r\n]+")
_ASCII_LOWER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class SortError(ValueError):
    """Sort criteria that cannot be used; the session answers BAD with the text."""


class Summary(NamedTuple):
    """What SORT and THREAD look at in one message's header."""

    subject: str  # base subject, ASCII upper-cased (i;ascii-casemap)
    reply: bool  # the subject had a reply or forward marker (RFC 5256 §2.1)
    date: float | None  # Date field in epoch seconds; None: missing or unreadable
    from_: str
    to: str
    cc: str
    display_from: str  # RFC 5957 §2: the first From address's display name, else its addr-spec
    display_to: str
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]


def casemap(text: str) -> str:
    """RFC 4790 §9.2 i;ascii-casemap: ASCII letters upper-cased, everything else as it is."""
    return text.translate(_ASCII_LOWER)


def parse_sort_criteria(tokens: list[Token]) -> tuple[tuple[str, bool], ...]:
    """RFC 5256 §3: sort-criteria = "(" sort-criterion *(SP sort-criterion) ")", each
    ["REVERSE" SP] sort-key. Returns (key, reversed) pairs."""
    criteria: list[tuple[str, bool]] = []
    reverse = False
    for token in tokens:
        word = token.upper() if isinstance(token, Atom) else ""
        if word == "REVERSE" and not reverse:
            reverse = True
            continue
        if word not in SORT_KEYS:
            raise SortError("Unknown sort key")
        criteria.append((word, reverse))
        reverse = False
    if reverse or not criteria:
        raise SortError("Sort criteria expected")
    if len(criteria) > MAX_SORT_KEYS:
        raise SortError(f"Too many sort keys (at most {MAX_SORT_KEYS})")
    return tuple(criteria)


# -- base subject (RFC 5256 §2.1) ------------------------------------------------------------------
def _remove_blob(text: str, at: int) -> int:
    """subj-blob = "[" *BLOBCHAR "]" *WSP at `at`: the position after it, or -1."""
    if at >= len(text) or text[at] != "[":
        return -1
    end = at + 1
    while end < len(text) and text[end] not in "[]":
        end += 1
    if end >= len(text) or text[end] != "]":
        return -1
    end += 1
    return end + 1 if end < len(text) and text[end] == " " else end


def _remove_leader(text: str, at: int) -> tuple[int, bool, bool]:
    """subj-leader = (*subj-blob subj-refwd) / WSP at `at`: (new position, removed, refwd)."""
    removed = False
    if at < len(text) and text[at] == " ":
        at += 1
        removed = True
    pos = at
    while pos < len(text) and text[pos] == "[":
        pos = _remove_blob(text, pos)
        if pos < 0:
            return at, removed, False
    for word in ("RE", "FWD", "FW"):
        if text.startswith(word, pos):
            pos += len(word)
            break
    else:
        return at, removed, False
    if pos < len(text) and text[pos] == " ":
        pos += 1
    if pos < len(text) and text[pos] == "[":
        pos = _remove_blob(text, pos)
        if pos < 0:
            return at, removed, False
    if pos >= len(text) or text[pos] != ":":
        return at, removed, False
    return pos + 1, True, True


def base_subject(subject: str) -> tuple[str, bool]:
    """RFC 5256 §2.1's base subject (upper-cased ASCII) and whether a reply or forward marker
    (subj-refwd, "(fwd)" or "[fwd: ...]") was taken off."""
    # (1) encoded words decoded by the caller; whitespace runs to one space
    text = casemap(_WHITESPACE.sub(" ", subject).strip())
    reply = False
    start = 0
    while True:
        # (2) subj-trailer = "(fwd)" / WSP, from the end, repeatedly
        end = len(text)
        while end > start:
            if text[end - 1] == " ":
                end -= 1
            elif end - start >= 5 and text.endswith("(FWD)", start, end):
                end -= 5
                reply = True
            else:
                break
        text = text[:end]
        while True:
            # (3) subj-leader; (4) a subj-blob when something is left after it; (5) repeat
            start, found, refwd = _remove_leader(text, start)
            reply |= refwd
            after = _remove_blob(text, start)
            if after > 0 and after < len(text):
                start, found = after, True
            if not found:
                break
        # (6) subj-fwd-hdr "[FWD:" ... subj-fwd-trl "]": take them off and go back to (2)
        if text.startswith("[FWD:", start) and text.endswith("]") and len(text) - start >= 6:
            text = text[:-1]
            start += 5
            reply = True
            continue
        return text[start:], reply


# -- one message's facts ---------------------------------------------------------------------------
def _first_mailbox(message: ParsedMessage, name: str) -> str:
    """The local part of the first address of the first `name` field; a group's name when the
    field starts with a group (as Dovecot sorts "undisclosed-recipients:;")."""
    values = message.root.values(name)
    if not values:
        return ""
    for _, _, mailbox, _ in parse_addresses(values[0].decode("latin-1")):
        return casemap(mailbox) if mailbox is not None else ""
    return ""


def _display_name(message: ParsedMessage, name: str) -> str:
    """RFC 5957 §2: the first address's display name (encoded words decoded), or its addr-spec
    when it has none; a group's name when the field starts with a group (as Dovecot sorts it);
    "" for no field. ASCII upper-cased (i;ascii-casemap)."""
    values = message.root.values(name)
    if not values:
        return ""
    for display, _, mailbox, host in parse_addresses(values[0].decode("latin-1")):
        if display:
            decoded = decode_header_value(display.encode("latin-1", "replace"))
            if decoded:
                return casemap(decoded)
        if mailbox is None:
            return ""
        return casemap(mailbox if host is None else f"{mailbox}@{host}")  # a group: its name, as Dovecot
    return ""


_MSG_ID = re.compile(r"<([^<>@\s]+@[^<>\s]+)>")


def _ids(message: ParsedMessage, name: str) -> list[str]:
    values = message.root.values(name)
    return _MSG_ID.findall(values[0].decode("latin-1")) if values else []


def summarize(header: bytes) -> Summary:
    """The facts SORT and THREAD use, from a message's header."""
    message = ParsedMessage.parse(header)
    subjects = message.root.values("subject")
    subject, reply = base_subject(decode_header_value(subjects[0])) if subjects else ("", False)
    parsed = sent_date(message)
    date: float | None = None
    if parsed is not None:
        try:
            date = float(email.utils.mktime_tz(parsed))
        except (OverflowError, ValueError, TypeError):
            date = None
    message_ids = _ids(message, "message-id")
    in_reply_to = _ids(message, "in-reply-to")
    return Summary(
        subject,
        reply,
        date,
        _first_mailbox(message, "from"),
        _first_mailbox(message, "to"),
        _first_mailbox(message, "cc"),
        _display_name(message, "from"),
        _display_name(message, "to"),
        message_ids[0] if message_ids else None,
        in_reply_to[0] if in_reply_to else None,
        tuple(_ids(message, "references")),
    )


def sort_order(
    criteria: Sequence[tuple[str, bool]],
    summaries: Sequence[Summary],
    internaldates: Sequence[float],
    sizes: Sequence[int],
) -> list[int]:
    """Positions (0-based, also the order of sequence numbers) sorted by `criteria`; ties keep
    sequence order (RFC 5256 §3). One stable sort per key, from the last key to the first."""
    order = list(range(len(summaries)))

    def sent(i: int) -> float:  # RFC 5256 §3: no usable Date field: the internal date
        date = summaries[i].date
        return internaldates[i] if date is None else date

    columns: dict[str, Callable[[int], Any]] = {
        "ARRIVAL": lambda i: internaldates[i],
        "CC": lambda i: summaries[i].cc,
        "DATE": sent,
        "FROM": lambda i: summaries[i].from_,
        "SIZE": lambda i: sizes[i],
        "SUBJECT": lambda i: summaries[i].subject,
        "TO": lambda i: summaries[i].to,
        "DISPLAYFROM": lambda i: summaries[i].display_from,
        "DISPLAYTO": lambda i: summaries[i].display_to,
    }
    for key, reverse in reversed(criteria):
        order.sort(key=columns[key], reverse=reverse)
    return order
