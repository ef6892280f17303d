"""What one session tells another's client about a folder they share (RFC 3501 §7.3, §7.4):
new messages, \\Recent, expunges, changed flags and new keywords. A FolderView (view.py) finds
them; responses.py puts them into words.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.imap.index import MessageInfo


@dataclass(frozen=True, slots=True)
class Exists:
    count: int


@dataclass(frozen=True, slots=True)
class Recent:
    count: int


@dataclass(frozen=True, slots=True)
class Expunged:
    seq: int


@dataclass(frozen=True, slots=True)
class FlagsChanged:
    seq: int
    info: MessageInfo


@dataclass(frozen=True, slots=True)
class NewFlags:
    flags: tuple[str, ...]


Update = Exists | Recent | Expunged | FlagsChanged | NewFlags
