"""Sieve tests: each takes a checked node and the running state, and answers true or false.

RFC 5228 §5 (address, header, envelope, exists, size, allof/anyof/not, true/false), RFC 5173
(body), RFC 5260 (date, currentdate, :index), RFC 5229 (string), RFC 5232 (hasflag),
RFC 5233 (:user/:detail). Strings are expanded through the variables first when the script
requires "variables" (RFC 5229 §3).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence
from typing import Protocol

from appliance.sieve.grammar import Node
from appliance.sieve.matching import Matcher, match
from appliance.sieve.message import Envelope, MessageView, pick

# The headers RFC 5228 §5.1 lets the address test read.
ADDRESS_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "sender", "resent-from", "resent-to", "reply-to", "resent-cc", "resent-bcc"}
)


class State(Protocol):
    message: MessageView
    envelope: Envelope
    delimiter: str

    def expand(self, value: str) -> str: ...
    def expand_all(self, values: Sequence[str]) -> list[str]: ...
    def set_match_variables(self, values: list[str]) -> None: ...
    def flag_variable(self, name: str | None) -> list[str]: ...
    def now(self) -> datetime.datetime: ...


def evaluate(node: Node, state: State) -> bool:
    return _TESTS[node.name](node, state)


def _strings(node: Node, index: int, state: State) -> list[str]:
    return state.expand_all(node.positional[index])  # type: ignore[arg-type]


def _compare(node: Node, state: State, values: list[str], keys: list[str]) -> bool:
    matcher = Matcher.from_tags(node.tags)
    found, variables = match(matcher, values, keys)
    if found and variables is not None:
        state.set_match_variables(variables)
    return found


def _address_part(address: str, part: str, delimiter: str) -> str | None:
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if part == ":localpart":
        return local
    if part == ":domain":
        return domain
    if part in (":user", ":detail"):
        # RFC 5233 §4: the user is the local part up to the separator; no separator -> no detail.
        user, separator, detail = local.partition(delimiter) if delimiter else (local, "", "")
        if part == ":user":
            return user
        return detail if separator else None
    return address


def _parts(node: Node, state: State, addresses: list[str]) -> list[str]:
    part = next((p for p in (":localpart", ":domain", ":user", ":detail") if p in node.tags), ":all")
    out = []
    for address in addresses:
        value = _address_part(address, part, state.delimiter)
        if value is not None:
            out.append(value)
    return out


def _header_values(node: Node, state: State, name: str) -> list[str]:
    values = state.message.header(name)
    if ":index" in node.tags:
        values = pick(values, int(node.tags[":index"]), ":last" in node.tags)  # type: ignore[call-overload]
    return values


def _address(node: Node, state: State) -> bool:
    values: list[str] = []
    for name in _strings(node, 0, state):
        if name.lower() not in ADDRESS_HEADERS:
            continue
        raw = state.message.raw_header(name)
        if ":index" in node.tags:
            raw = pick(raw, int(node.tags[":index"]), ":last" in node.tags)  # type: ignore[call-overload]
        values += _parts(node, state, state.message.addresses(raw))
    return _compare(node, state, values, _strings(node, 1, state))


def _header(node: Node, state: State) -> bool:
    values: list[str] = []
    for name in _strings(node, 0, state):
        values += _header_values(node, state, name)
    return _compare(node, state, values, _strings(node, 1, state))


def _envelope(node: Node, state: State) -> bool:
    values: list[str] = []
    for part in _strings(node, 0, state):
        part = part.lower()
        if part == "from":
            address = state.envelope.sender
        elif part == "to":
            address = state.envelope.recipient
        else:
            continue
        if address == "":
            # RFC 5228 §5.4: the null reverse-path is the empty string, whatever the address part.
            values.append("")
            continue
        values += _parts(node, state, [address])
    return _compare(node, state, values, _strings(node, 1, state))


def _exists(node: Node, state: State) -> bool:
    return all(state.message.exists(name) for name in _strings(node, 0, state))


def _size(node: Node, state: State) -> bool:
    limit = int(node.positional[0])  # type: ignore[call-overload]
    return state.message.size > limit if ":over" in node.tags else state.message.size < limit


def _body(node: Node, state: State) -> bool:
    transform = next((t for t in (":raw", ":content") if t in node.tags), ":text")
    types = tuple(state.expand_all(node.tags.get(":content", ())))  # type: ignore[arg-type]
    values = state.message.body(transform, types)
    return _compare(node, state, values, _strings(node, 0, state))


def _zone_offset(zone: str) -> datetime.timezone | None:
    found = re.fullmatch(r"([+-])(\d\d)(\d\d)", zone.strip())
    if found is None:
        return None
    minutes = int(found.group(2)) * 60 + int(found.group(3))
    return datetime.timezone(datetime.timedelta(minutes=-minutes if found.group(1) == "-" else minutes))


def date_part(value: datetime.datetime, part: str) -> str | None:
    """RFC 5260 §4.2: the date-part strings."""
    offset = value.utcoffset() or datetime.timedelta(0)
    total = int(offset.total_seconds() // 60)
    zone = f"{'-' if total < 0 else '+'}{abs(total) // 60:02d}{abs(total) % 60:02d}"
    parts = {
        "year": f"{value.year:04d}",
        "month": f"{value.month:02d}",
        "day": f"{value.day:02d}",
        "date": f"{value.year:04d}-{value.month:02d}-{value.day:02d}",
        "julian": str((value.date() - datetime.date(1858, 11, 17)).days),
        "hour": f"{value.hour:02d}",
        "minute": f"{value.minute:02d}",
        "second": f"{value.second:02d}",
        "time": f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}",
        "iso8601": value.strftime("%Y-%m-%dT%H:%M:%S") + zone[:3] + ":" + zone[3:],
        "std11": value.strftime("%a, %d %b %Y %H:%M:%S ") + zone,
        "zone": zone,
        "weekday": str((value.weekday() + 1) % 7),  # 0 is Sunday
    }
    return parts.get(part.lower())


def _in_zone(node: Node, state: State, value: datetime.datetime) -> datetime.datetime | None:
    if ":originalzone" in node.tags:
        return value
    if ":zone" in node.tags:
        zone = _zone_offset(state.expand(str(node.tags[":zone"])))
        return None if zone is None else value.astimezone(zone)
    return value.astimezone()  # RFC 5260 §4.1: no zone given -> the local time zone


def _date(node: Node, state: State) -> bool:
    name = state.expand(str(node.positional[0]))
    index = int(node.tags[":index"]) if ":index" in node.tags else None  # type: ignore[call-overload]
    value = state.message.date(name, index, ":last" in node.tags)
    return _date_compare(node, state, value, state.expand(str(node.positional[1])), _strings(node, 2, state))


def _currentdate(node: Node, state: State) -> bool:
    return _date_compare(
        node, state, state.now(), state.expand(str(node.positional[0])), _strings(node, 1, state)
    )


def _date_compare(
    node: Node, state: State, value: datetime.datetime | None, part: str, keys: list[str]
) -> bool:
    values: list[str] = []
    if value is not None:
        zoned = _in_zone(node, state, value)
        text = None if zoned is None else date_part(zoned, part)
        if text is not None:
            values.append(text)
    return _compare(node, state, values, keys)


def _string(node: Node, state: State) -> bool:
    values = _strings(node, 0, state)
    if Matcher.from_tags(node.tags).match_type == ":count":
        values = [v for v in values if v != ""]  # RFC 5229 §5: empty strings are not counted
    return _compare(node, state, values, _strings(node, 1, state))


def _hasflag(node: Node, state: State) -> bool:
    name = state.expand(str(node.positional[0])) if len(node.positional) == 2 else None
    flags = state.flag_variable(name)
    return _compare(node, state, flags, _strings(node, len(node.positional) - 1, state))


def _allof(node: Node, state: State) -> bool:
    return all(evaluate(test, state) for test in node.tests)


def _anyof(node: Node, state: State) -> bool:
    return any(evaluate(test, state) for test in node.tests)


_TESTS: dict[str, Callable[[Node, State], bool]] = {
    "address": _address,
    "header": _header,
    "envelope": _envelope,
    "exists": _exists,
    "size": _size,
    "body": _body,
    "date": _date,
    "currentdate": _currentdate,
    "string": _string,
    "hasflag": _hasflag,
    "allof": _allof,
    "anyof": _anyof,
    "not": lambda node, state: not evaluate(node.tests[0], state),
    "true": lambda node, state: True,
    "false": lambda node, state: False,
}
