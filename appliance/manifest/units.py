"""Sizes and durations as a mail administrator writes them: "25 MB", "1 GiB", "30s", "5 days"."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_PART_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*")


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as "25 MB" (decimal) or "1 GiB" (binary)."""
    if isinstance(value, bool):
        raise ValueError('a size is a number of bytes or a string such as "25 MB"')
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError('a size is a number of bytes or a string such as "25 MB"')
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f'"{value}" is not a size (write e.g. "25 MB", "512 KiB" or "1 GB")')
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(
            f'"{value}" has an unknown unit "{unit}" (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)'
        )
    return int(float(number) * factor)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as "30s", "5 min", "1h30m" or "5 days"."""
    if isinstance(value, bool):
        raise ValueError('a duration is a number of seconds or a string such as "30s" or "5 days"')
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError('a duration is a number of seconds or a string such as "30s" or "5 days"')
    text = value.strip()
    position = 0
    total = 0.0
    while position < len(text):
        match = _DURATION_PART_RE.match(text, position)
        if not match:
            break
        number, unit = match.groups()
        factor = _DURATION_UNITS.get(unit.lower())
        if factor is None:
            raise ValueError(f'"{value}" has an unknown unit "{unit}" (use ms, s, min, h, days or weeks)')
        total += float(number) * factor
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f'"{value}" is not a duration (write e.g. "30s", "10 min" or "5 days")')
    return total


def format_size(size: int) -> str:
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def format_duration(seconds: float) -> str:
    for unit, factor in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[A-Za-z]*\s*$"},
            ],
            "description": 'Bytes, or a string such as "25 MB" or "1 GiB".',
        }
    ),
]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}],
            "description": 'Seconds, or a string such as "30s", "10 min" or "5 days".',
        }
    ),
]
