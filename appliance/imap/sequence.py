"""Sequence sets (RFC 3501 §9 `sequence-set`): "1:4,7,9:*" for sequence numbers and UIDs."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

_RANGE = re.compile(r"^(\d+|\*)(?::(\d+|\*))?$")
STAR = 0  # "*": the largest number in use (the last message's sequence number or UID)
MAX_NUMBER = 4294967295  # nz-number is a 32-bit unsigned integer


class SequenceSetError(ValueError):
    """Not a sequence set; the text says why, for a BAD reply."""


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """Ranges as written, `STAR` standing for "*"; bounds are resolved against the largest number."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        if not text or len(text) > 100_000:
            raise SequenceSetError("sequence set expected")
        ranges: list[tuple[int, int]] = []
        for part in text.split(","):
            match = _RANGE.match(part)
            if match is None:
                raise SequenceSetError(f"not a sequence set: {text[:40]!r}")
            low = _number(match.group(1))
            high = _number(match.group(2)) if match.group(2) is not None else low
            ranges.append((low, high))
        return cls(tuple(ranges))

    def bounds(self, largest: int) -> Iterator[tuple[int, int]]:
        """Each range as (low, high), "*" replaced by `largest`; "4:2" is the same as "2:4"."""
        for low, high in self.ranges:
            low = largest if low == STAR else low
            high = largest if high == STAR else high
            yield (low, high) if low <= high else (high, low)

    def merged(self, largest: int) -> tuple[list[int], list[int]]:
        """The ranges sorted and merged, as two lists (lows, highs): disjoint and ascending. A
        line of 64 KiB can hold 16,000 ranges ("1:*,1:*,..."); merged once, each lookup is a
        bisection and each message is listed once, whatever the client wrote."""
        lows: list[int] = []
        highs: list[int] = []
        for low, high in sorted(self.bounds(largest)):
            if highs and low <= highs[-1] + 1:
                highs[-1] = max(highs[-1], high)
            else:
                lows.append(low)
                highs.append(high)
        return lows, highs

    def membership(self, largest: int) -> Callable[[int], bool]:
        """A test of one number against the set (ranges merged once: a bisection per number)."""
        lows, highs = self.merged(largest)

        def contains(number: int) -> bool:
            where = bisect.bisect_right(lows, number) - 1
            return where >= 0 and number <= highs[where]

        return contains

    def select(self, numbers: Sequence[int], largest: int) -> list[int]:
        """The members of `numbers` (ascending, e.g. the UIDs of a folder) in the set, ascending.

        RFC 3501 §6.4.8: a UID range matches the UIDs that exist in it; "*" is the largest one
        (so "N:*" with N above every UID still matches the last message).
        """
        if not numbers:
            return []
        lows, highs = self.merged(largest)
        if len(lows) == 1:  # one range (the usual "1:*")
            return list(
                numbers[bisect.bisect_left(numbers, lows[0]) : bisect.bisect_right(numbers, highs[0])]
            )
        chosen: list[int] = []
        for low, high in zip(lows, highs, strict=True):  # disjoint and ascending: no sort, no duplicates
            chosen += numbers[bisect.bisect_left(numbers, low) : bisect.bisect_right(numbers, high)]
        return chosen

    def seqs(self, count: int) -> list[int]:
        """Sequence numbers 1..count in the set, ascending; raises if one lies beyond `count`.

        RFC 3501 §6.4.8 / §9: a sequence number above the number of messages is an error (BAD),
        unlike a UID, and so is any number when the folder is empty.
        """
        lows, highs = self.merged(count)
        if not lows or lows[0] < 1 or highs[-1] > count:
            raise SequenceSetError("no such message" if count else "the folder is empty")
        chosen: list[int] = []
        for low, high in zip(lows, highs, strict=True):  # disjoint and ascending
            chosen += range(low, high + 1)
        return chosen

    def __str__(self) -> str:
        return ",".join(
            _text(low) if low == high else f"{_text(low)}:{_text(high)}" for low, high in self.ranges
        )


def format_set(numbers: Sequence[int]) -> str:
    """Ascending numbers as a compact set, "1:3,7" (for COPYUID, SEARCH results stay lists)."""
    parts: list[str] = []
    start = previous = -2
    for number in numbers:
        if number == previous + 1:
            previous = number
            continue
        if start >= 0:
            parts.append(str(start) if start == previous else f"{start}:{previous}")
        start = previous = number
    if start >= 0:
        parts.append(str(start) if start == previous else f"{start}:{previous}")
    return ",".join(parts)


def _number(text: str) -> int:
    if text == "*":
        return STAR
    value = int(text)
    if value < 1 or value > MAX_NUMBER:
        raise SequenceSetError(f"not a valid number in a sequence set: {text}")
    return value


def _text(number: int) -> str:
    return "*" if number == STAR else str(number)
