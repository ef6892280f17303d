"""What the IMAP command parser hands to the commands: atoms, strings and parenthesized lists.

RFC 3501 §4 data formats, as the parser (syntax.py) produces them for a command's arguments:
an `Atom` (atoms, numbers, sequence sets, flags like `\\Seen`, NIL, and fetch attributes such
as `BODY.PEEK[HEADER.FIELDS (From)]<0.100>` kept whole), `bytes` for a quoted string or a
literal, and a `list` for a parenthesized list. Quoted strings and literals are never atoms, so
a command can tell `"NIL"` (a string) from `NIL`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class Atom:
    value: str

    def upper(self) -> str:
        return self.value.upper()

    def __str__(self) -> str:
        return self.value


Token: TypeAlias = "Atom | bytes | list[Token]"


def as_text(token: Token) -> str | None:
    """An atom or a string as text (strings decoded as UTF-8, bad bytes escaped); None for a list."""
    if isinstance(token, Atom):
        return token.value
    if isinstance(token, bytes):
        return token.decode("utf-8", "surrogateescape")
    return None
