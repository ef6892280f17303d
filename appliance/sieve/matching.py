"""Comparators and match types: how a test compares the values it found with its keys.

RFC 5228 §2.7: `:is`, `:contains`, `:matches` (`*` and `?`, backslash quotes) under the
comparators `i;ascii-casemap` (the default), `i;octet` and `i;ascii-numeric` (RFC 4790 §9.1).
RFC 5231 adds `:count` and `:value` with a relation. A successful `:matches` yields the match
variables of RFC 5229 §3.2: `${0}` the whole value, `${1}`... what each wildcard took.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Matcher:
    match_type: str  # ":is", ":contains", ":matches", ":count", ":value"
    comparator: str
    relation: str  # for :count and :value

    @classmethod
    def from_tags(cls, tags: Mapping[str, object]) -> Matcher:
        match_type = next(
            (t for t in (":is", ":contains", ":matches", ":count", ":value") if t in tags), ":is"
        )
        relation = str(tags[match_type]).lower() if match_type in (":count", ":value") else ""
        comparator = str(tags.get(":comparator", "i;ascii-casemap"))
        return cls(match_type, comparator, relation)


def _casemap(value: str) -> str:
    # RFC 4790 §9.2: i;ascii-casemap folds only the ASCII letters.
    return value.translate(_ASCII_UPPER)


_ASCII_UPPER = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}


def _fold(comparator: str, value: str) -> str:
    return _casemap(value) if comparator == "i;ascii-casemap" else value


def _numeric(value: str) -> float:
    # RFC 4790 §9.1.1: the leading digits; a string that starts with none is positive infinity.
    digits = re.match(r"[0-9]+", value)
    return float("inf") if digits is None else int(digits.group())


def _relate(relation: str, left: object, right: object) -> bool:
    if relation == "eq":
        return left == right
    if relation == "ne":
        return left != right
    if relation == "gt":
        return left > right  # type: ignore[operator]
    if relation == "ge":
        return left >= right  # type: ignore[operator]
    if relation == "lt":
        return left < right  # type: ignore[operator]
    return left <= right  # type: ignore[operator]


def _compare(matcher: Matcher, value: str, key: str) -> bool:
    if matcher.comparator == "i;ascii-numeric":
        return _relate(matcher.relation, _numeric(value), _numeric(key))
    return _relate(matcher.relation, _fold(matcher.comparator, value), _fold(matcher.comparator, key))


@lru_cache(maxsize=512)
def _wildcard(pattern: str, fold: bool) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append("(.*?)" if c == "*" else "(.)" if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL | (re.IGNORECASE | re.ASCII if fold else 0))


def match(matcher: Matcher, values: Sequence[str], keys: Sequence[str]) -> tuple[bool, list[str] | None]:
    """Whether any value matches any key, and the match variables of a :matches success."""
    if matcher.match_type == ":count":
        # RFC 5231 §4.1: the number of values, compared as a number string with each key.
        count = str(len(values))
        return any(_compare(matcher, count, key) for key in keys), None
    for value in values:
        for key in keys:
            if matcher.match_type == ":value":
                if _compare(matcher, value, key):
                    return True, None
            elif matcher.match_type == ":matches":
                if matcher.comparator == "i;ascii-numeric":
                    continue
                found = _wildcard(key, matcher.comparator == "i;ascii-casemap").fullmatch(value)
                if found is not None:
                    return True, [value, *found.groups()]
            elif matcher.match_type == ":contains":
                if _fold(matcher.comparator, key) in _fold(matcher.comparator, value):
                    return True, None
            elif matcher.comparator == "i;ascii-numeric":
                if _numeric(value) == _numeric(key):
                    return True, None
            elif _fold(matcher.comparator, value) == _fold(matcher.comparator, key):
                return True, None
    return False, None


def quote_wildcard(value: str) -> str:
    """RFC 5229 §4.1.3 :quotewildcard: a backslash before `*`, `?` and `\\`."""
    return re.sub(r"([*?\\])", r"\\\1", value)
