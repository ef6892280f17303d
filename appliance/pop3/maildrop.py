"""An account's Maildir as one POP3 session sees it: locked, numbered, with deletion marks.

RFC 1939 §4: once the client has identified itself the server acquires an exclusive lock on the
maildrop, so that messages are not changed or removed before the session enters UPDATE. The lock
is held twice: in this process (a set of Maildir paths, so a second session here is refused
without touching the disk) and as an `flock` on `<maildir>/pop3.lock`, so that another process
(a second appliance, a maintenance script) sees it as well.

Everything that touches the disk runs in the executor (`open`, `update`, `release`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.pop3.wire import encode_whole
from appliance.store.dovecot import DEFAULT_UIDL_FORMAT, DovecotUidList, read_dovecot_uidlist
from appliance.store.maildir import read_message_file

if TYPE_CHECKING:
    from appliance.store.maildir import Maildir, MessageFile

log = logging.getLogger("appliance.pop3")

LOCK_FILE_NAME = "pop3.lock"
_UID_RE = re.compile(r"^[\x21-\x7e]{1,70}$")  # RFC 1939 §7 UIDL: 1 to 70 octets, 0x21 to 0x7E


class MaildropInUse(Exception):
    """Another session (here or in another process) holds this maildrop."""


# The maildrops this process has open. Process-wide on purpose: a lock is a property of the
# process (like the flock beside it), shared by the pop3 and pop3s listeners and by listeners a
# reload opens.
_held: set[str] = set()
_held_lock = threading.Lock()


def unique_id(key: str, dovecot: DovecotUidList | None = None, uidl_format: str = DEFAULT_UIDL_FORMAT) -> str:
    """The UIDL of a message: the one Dovecot served when the maildrop was Dovecot's and knew the
    message, else its Maildir key, which never changes and is never reused.

    A key that RFC 1939 does not allow as a unique-id (over 70 octets, or with octets outside
    0x21..0x7E) is replaced by a digest of itself, which is just as stable.
    """
    served = dovecot.pop3_uidl(key, uidl_format) if dovecot is not None else None
    if served is not None and _UID_RE.match(served):
        return served
    if _UID_RE.match(key):
        return key
    return "h" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:40]


Place = tuple[str, int, str, str]  # (path, RFC 822 size, Maildir, key): what read_wire needs


def read_wire(place: Place) -> bytes:
    """A message as RETR sends it (whole; for small messages; runs where reads are done), read
    where it is now if it moved (e.g. new/ → cur/ by IMAP); FileNotFoundError when it is gone."""
    path, size, root, key = place
    data = read_message_file(path, size, Path(root), key)
    if data is None:
        raise FileNotFoundError(errno.ENOENT, "the message is gone", path)
    return encode_whole(data)


@dataclass
class Maildrop:
    maildir: Maildir
    messages: list[MessageFile]
    uids: list[str]
    _lock_file: int | None
    _lock_key: str
    deleted: set[int] = field(default_factory=set)  # 0-based indexes marked by DELE
    retrieved: set[int] = field(default_factory=set)  # 0-based indexes sent by RETR
    released: bool = False
    _release_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, maildir: Maildir, uidl_format: str = DEFAULT_UIDL_FORMAT) -> Maildrop:
        """Lock the maildrop and list its messages (raises MaildropInUse or OSError)."""
        key = os.path.realpath(maildir.path)
        with _held_lock:
            if key in _held:
                raise MaildropInUse(key)
            _held.add(key)
        descriptor: int | None = None
        try:
            maildir.ensure()
            descriptor = os.open(
                os.path.join(maildir.path, LOCK_FILE_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MaildropInUse(key) from None
            messages = maildir.scan()
        except BaseException:
            if descriptor is not None:
                os.close(descriptor)
            with _held_lock:
                _held.discard(key)
            raise
        # A maildrop Dovecot served keeps the UIDLs Dovecot gave (store/dovecot.py), so that
        # clients that leave mail on the server do not fetch it all again.
        dovecot = read_dovecot_uidlist(Path(maildir.path))
        uids = [unique_id(message.key, dovecot, uidl_format) for message in messages]
        return cls(maildir, messages, uids, descriptor, key)

    # -- the view a session works with -------------------------------------------------------------
    def visible(self) -> list[int]:
        """Indexes of messages not marked as deleted."""
        return [i for i in range(len(self.messages)) if i not in self.deleted]

    def totals(self) -> tuple[int, int]:
        """(messages, octets) not marked as deleted (RFC 1939 §5 STAT)."""
        count = octets = 0
        for index, message in enumerate(self.messages):
            if index not in self.deleted:
                count += 1
                octets += message.size
        return count, octets

    def place(self, index: int) -> Place:
        """Where message `index` is, for `read_wire` (which runs where message reads are done).

        The path is put together from strings: str() of the message's Path costs three times as
        much, and the read-ahead plans a window of about sixty while a client may be waiting."""
        message = self.messages[index]
        root = str(self.maildir.path)  # computed once by pathlib, then kept
        sub = "new" if message.in_new else "cur"
        return f"{root}/{sub}/{message.path.name}", message.size, root, message.key

    # -- UPDATE and the end of a session -------------------------------------------------------------
    def update(self) -> tuple[int, int]:
        """RFC 1939 §6: remove the messages marked as deleted; move retrieved ones new/ → cur/.

        Returns (removed, failed). A message already gone (expunged by IMAP meanwhile) counts as
        removed. The lock is released at the end whatever happened.
        """
        removed = failed = 0
        try:
            for index in sorted(self.deleted):
                message = self.messages[index]
                try:
                    self.maildir.delete(message)
                    removed += 1
                except FileNotFoundError:
                    removed += 1
                except OSError as error:
                    failed += 1
                    log.error("pop3 delete failed key=%s error=%s", message.key, error)
            for index in sorted(self.retrieved - self.deleted):
                message = self.messages[index]
                if message.in_new:
                    try:
                        self.messages[index] = self.maildir.mark_seen(message)
                    except OSError as error:
                        log.warning("pop3 mark-seen failed key=%s error=%s", message.key, error)
        finally:
            self.release()
        return removed, failed

    def release(self) -> None:
        """Give the lock up (a session that ends without QUIT: nothing is deleted)."""
        with self._release_lock:  # UPDATE (a thread) and a cancelled session may race here
            if self.released:
                return
            self.released = True
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_file)  # closing the descriptor drops the flock
            self._lock_file = None
        with _held_lock:
            _held.discard(self._lock_key)
