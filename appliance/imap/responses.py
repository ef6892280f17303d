"""IMAP responses built in one place: completion results, capabilities, flags, dates, updates.

A command handler returns the text of its tagged OK, or raises `No` / `Bad`; response codes in
brackets follow RFC 3501 §7.1 and RFC 5530 (AUTHENTICATIONFAILED, PRIVACYREQUIRED, CANNOT,
NONEXISTENT, SERVERBUG...). A client reads the code, not the words.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable

from appliance.auth.verdict import Reason
from appliance.imap import wire
from appliance.imap.updates import Exists, Expunged, FlagsChanged, NewFlags, Recent, Update

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
SYSTEM_FLAGS_UPPER = {flag.upper(): flag for flag in (*SYSTEM_FLAGS, "\\Recent")}
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# A refused login whose password was right (AD 532, 773, 701): RFC 5530 §3 EXPIRED, "either
# authentication succeeded or the server no longer had the necessary data; either way, access is
# no longer permitted using that passphrase" - the client shows the words and asks for a new one.
LOGIN_REFUSED_BECAUSE = {reason: ("EXPIRED", reason.text) for reason in Reason}

# Capabilities (RFC 3501 §6.1.1 and the extensions' RFCs)
BASE_CAPABILITIES = ("IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE")
AUTHENTICATED_CAPABILITIES = (
    "IMAP4rev1",
    "LITERAL+",  # RFC 7888
    "SASL-IR",  # RFC 4959
    "ID",  # RFC 2971
    "ENABLE",  # RFC 5161
    "IDLE",  # RFC 2177
    "NAMESPACE",  # RFC 2342
    "UNSELECT",  # RFC 3691
    "UIDPLUS",  # RFC 4315
    "MOVE",  # RFC 6851
    "CHILDREN",  # RFC 3348
    "SPECIAL-USE",  # RFC 6154
    "ESEARCH",  # RFC 4731
    "MULTIAPPEND",  # RFC 3502
    "LIST-EXTENDED",  # RFC 5258
    "LIST-STATUS",  # RFC 5819
    "BINARY",  # RFC 3516
    "QUOTA",  # RFC 9208
    "QUOTA=RES-STORAGE",  # RFC 9208 §5.1
    "SORT",  # RFC 5256
    "ESORT",  # RFC 5267
    "SORT=DISPLAY",  # RFC 5957
    "THREAD=ORDEREDSUBJECT",  # RFC 5256
    "THREAD=REFERENCES",  # RFC 5256
)


class Bad(Exception):
    """`tag BAD text`: the command or its arguments are not valid (RFC 3501 §7.1.3)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class No(Exception):
    """`tag NO [code] text`: the command was understood but failed (RFC 3501 §7.1.2)."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    prefix = f"[{code}] " if code else ""
    return f"{tag} {status} {prefix}{text}\r\n".encode("utf-8", "replace")


def continuation(text: str) -> bytes:
    """RFC 3501 §7.5: a continuation request ("+ " and, for AUTHENTICATE, a base64 challenge)."""
    return b"+ " + text.encode("ascii") + b"\r\n"


def untagged(text: str) -> bytes:
    return f"* {text}\r\n".encode("utf-8", "replace")


def flag_list(flags: Iterable[str], recent: bool = False) -> bytes:
    """A parenthesized flag list in a stable order: system flags first, then keywords."""
    if isinstance(flags, frozenset):  # a message's flags: few distinct sets, rendered once each
        cached = _FLAG_LISTS.get((flags, recent))
        if cached is None:
            if len(_FLAG_LISTS) >= MAX_FLAG_LISTS:
                _FLAG_LISTS.clear()
            cached = _FLAG_LISTS[(flags, recent)] = _flag_list(flags, recent)
        return cached
    return _flag_list(flags, recent)


def _flag_list(flags: Iterable[str], recent: bool) -> bytes:
    ordered = sorted(flags, key=lambda flag: (not flag.startswith("\\"), flag))
    if recent:
        ordered.insert(0, "\\Recent")
    return b"(" + " ".join(ordered).encode("utf-8", "replace") + b")"


MAX_FLAG_LISTS = 4096
_FLAG_LISTS: dict[tuple[frozenset[str], bool], bytes] = {}


def mailbox_name(name: str) -> bytes:
    """A mailbox name as an astring (RFC 3501 §9 `mailbox`): INBOX bare, others quoted."""
    if name == "INBOX":
        return b"INBOX"
    return wire.string(name)


def internaldate(epoch: float) -> bytes:
    """RFC 3501 §9 date-time, "17-Jul-1996 02:44:25 -0700", in the server's zone."""
    local = time.localtime(epoch)
    offset = (local.tm_gmtoff or 0) // 60
    sign = "+" if offset >= 0 else "-"
    offset = abs(offset)
    return (
        f'"{local.tm_mday:02d}-{MONTHS[local.tm_mon - 1]}-{local.tm_year:04d} '
        f'{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} {sign}{offset // 60:02d}{offset % 60:02d}"'
    ).encode()


_DATE_TIME = re.compile(r"^([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")


def parse_date_time(text: str) -> float:
    """RFC 3501 §9 date-time (APPEND's internal date) as epoch seconds; raises Bad."""
    match = _DATE_TIME.match(text)
    if match is None:
        raise Bad("Invalid date-time")
    day, month_name, year, hour, minute, second, sign, zone_hours, zone_minutes = match.groups()
    try:
        month = [m.upper() for m in MONTHS].index(month_name.upper()) + 1
        stamp = calendar.timegm((int(year), month, int(day), int(hour), int(minute), int(second), 0, 0, 0))
        time.gmtime(stamp)  # range check
    except (ValueError, OverflowError):
        raise Bad("Invalid date-time") from None
    if not (1 <= int(day) <= 31 and int(hour) < 24 and int(minute) < 60 and int(second) < 61):
        raise Bad("Invalid date-time")
    offset = (int(zone_hours) * 60 + int(zone_minutes)) * 60
    return float(stamp - offset if sign == "+" else stamp + offset)


def update(item: Update, *, recent: bool = False) -> bytes:
    """One untagged response for a mailbox change (RFC 3501 §7.3.1, §7.4.1, §7.4.2)."""
    if isinstance(item, Exists):
        return b"* %d EXISTS\r\n" % item.count
    if isinstance(item, Recent):
        return b"* %d RECENT\r\n" % item.count
    if isinstance(item, Expunged):
        return b"* %d EXPUNGE\r\n" % item.seq
    if isinstance(item, FlagsChanged):
        # The UID is included so that a client can apply the change without a mapping.
        return b"* %d FETCH (UID %d FLAGS %s)\r\n" % (
            item.seq,
            item.info.uid,
            flag_list(item.info.flags, recent),
        )
    if isinstance(item, NewFlags):
        return b"* FLAGS " + flag_list(set(SYSTEM_FLAGS) | set(item.flags)) + b"\r\n"
    raise TypeError(f"unknown update {item!r}")
