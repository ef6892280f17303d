"""Dovecot's `pop3_uidl_format`, for POP3 UIDLs that stay what Dovecot served (store/dovecot.py).

A format is text with variables, as Dovecot's var_expand writes them: `%` then an optional
zero-padded width, an optional `X` (hexadecimal; Dovecot prints it in lowercase) and the
variable: `u` the message's UID, `v` the folder's UIDVALIDITY, `f` the Maildir file's base name;
`%%` is a percent sign. Dovecot's default is `%08Xu%08Xv`. Variables that need the message
itself (`%m`, the header's MD5) or Dovecot's index (`%g`) are not supported.

Here, below the manifest's models (which check a format) and the store (which expands one), and
importing nothing of the rest: the POP3 reader process imports the store's Dovecot reader, and
must not load the manifest's models to start (it restarts within a set pause).
"""

from __future__ import annotations

import re

DEFAULT_UIDL_FORMAT = "%08Xu%08Xv"
_TOKEN = re.compile(r"%(?:(%)|(0?)(\d*)(X?)([uvf]))")


def check_uidl_format(text: str) -> str:
    """`text`, or ValueError saying what in it Dovecot's syntax or this server cannot expand."""
    stripped = _TOKEN.sub("", text)
    if "%" in stripped:
        raise ValueError(
            "supported: %u (UID), %v (UIDVALIDITY), %f (file name) with a width and X for hex, "
            'e.g. "%08Xu%08Xv"; ' + f"not {stripped[stripped.index('%') :][:3]!r}"
        )
    if not _TOKEN.search(text):
        raise ValueError("names no message: use %u with %v, or %f")
    return text


def expand_uidl_format(text: str, uid: int, uidvalidity: int, name: str) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return "%"
        zero, width, hexadecimal, variable = match.group(2, 3, 4, 5)
        if variable == "f":
            return name
        number = uid if variable == "u" else uidvalidity
        return format(number, f"{zero}{width}{'x' if hexadecimal else 'd'}")

    return _TOKEN.sub(one, text)
