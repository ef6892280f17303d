"""What Dovecot left in a Maildir folder it served, read so that its clients keep their caches.

`dovecot-uidlist` holds the folder's UIDVALIDITY, the next UID and each message's UID by its
Maildir base name. IMAP (imap/uidlist.py) adopts them the first time it sees a folder that has no
UID list of ours; POP3 (pop3/maildrop.py) serves the UIDLs Dovecot served. Nothing here writes:
Dovecot's files stay as Dovecot left them, so the move can be undone.

Formats read (Dovecot's src/lib-storage/index/maildir/maildir-uidlist.c):

    3 V<uidvalidity> N<next uid> G<guid> ...      version 3 header: fields by their letter
    <uid> [<letter><value> ...] :<base name>      a record; P<uidl> is a POP3 UIDL Dovecot saved
    1 <uidvalidity> <next uid>                    version 1 header
    <uid> <base name>                             version 1 record

Unknown header or record fields are ignored; a line that does not parse is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.dovecot_uidl import DEFAULT_UIDL_FORMAT, expand_uidl_format

__all__ = ["DEFAULT_UIDL_FORMAT", "DOVECOT_UIDLIST", "DovecotUidList", "read_dovecot_uidlist"]

DOVECOT_UIDLIST = "dovecot-uidlist"
MAX_UIDLIST_BYTES = 256 << 20  # ~2.5 million records; a larger file is not Dovecot's
MAX_UID = 2**32 - 1  # RFC 3501 §2.3.1.1: a UID is a 32-bit value


@dataclass
class DovecotUidList:
    uidvalidity: int
    next_uid: int
    uids: dict[str, int] = field(default_factory=dict)  # Maildir base name → UID
    pop3_uidls: dict[str, str] = field(default_factory=dict)  # base name → UIDL Dovecot saved (P)

    def pop3_uidl(self, key: str, uidl_format: str = DEFAULT_UIDL_FORMAT) -> str | None:
        """The UIDL Dovecot served for the message with this base name, by Dovecot's
        `pop3_uidl_format` (its default: UID and UIDVALIDITY, 8 hex digits each); None when it
        did not know the message."""
        saved = self.pop3_uidls.get(key)
        if saved is not None:
            return saved
        uid = self.uids.get(key)
        if uid is None:
            return None
        return expand_uidl_format(uidl_format, uid, self.uidvalidity, key)


def read_dovecot_uidlist(folder: Path) -> DovecotUidList | None:
    """The folder's `dovecot-uidlist`, or None when it has none or it is not one we can read."""
    try:
        with open(folder / DOVECOT_UIDLIST, "rb") as handle:
            data = handle.read(MAX_UIDLIST_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    if len(data) > MAX_UIDLIST_BYTES:
        return None
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    head = lines[0].split(" ")
    if head[0] == "3":
        result = _header_v3(head[1:])
        parse = _record_v3
    elif head[0] == "1" and len(head) == 3 and head[1].isdigit() and head[2].isdigit():
        result = DovecotUidList(int(head[1]), int(head[2]))
        parse = _record_v1
    else:
        return None
    if result is None or not 0 < result.uidvalidity <= MAX_UID:
        return None
    taken: set[int] = set()
    for line in lines[1:]:
        parsed = parse(line)
        if parsed is None:
            continue
        uid, key, uidl = parsed
        if uid in taken or key in result.uids:
            continue  # a UID or a name twice: only the first is trusted
        taken.add(uid)
        result.uids[key] = uid
        if uidl is not None:
            result.pop3_uidls[key] = uidl
        result.next_uid = max(result.next_uid, uid + 1)
    return result


def _header_v3(fields: list[str]) -> DovecotUidList | None:
    values = {item[:1]: item[1:] for item in fields if item}
    uidvalidity, next_uid = values.get("V", ""), values.get("N", "")
    if not uidvalidity.isdigit() or not next_uid.isdigit():
        return None
    return DovecotUidList(int(uidvalidity), max(1, int(next_uid)))


def _record_v3(line: str) -> tuple[int, str, str | None] | None:
    extensions, colon, name = line.partition(" :")
    if not colon:
        return None
    uid_text, _, rest = extensions.partition(" ")
    uidl = next((item[1:] for item in rest.split(" ") if item.startswith("P") and len(item) > 1), None)
    return _record(uid_text, name, uidl)


def _record_v1(line: str) -> tuple[int, str, str | None] | None:
    uid_text, _, name = line.partition(" ")
    return _record(uid_text, name, None)


def _record(uid_text: str, name: str, uidl: str | None) -> tuple[int, str, str | None] | None:
    if not uid_text.isdigit() or not 0 < int(uid_text) <= MAX_UID:
        return None
    key = name.partition(":2,")[0]  # the base name; Dovecot keeps the flags out of it
    if not key or "/" in key or key.startswith("."):
        return None
    return int(uid_text), key, uidl
