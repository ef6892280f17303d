"""Local-account logins that verified recently, so a phone that reconnects all day does not pay an
argon2 verification (~200 ms of CPU) each time. Dovecot's auth_cache is the anchor.

What is kept is never the password: an HMAC of (address, the account's stored hash, password) under
a key this process draws at random and keeps in memory only. An entry matches only the same
password against the same stored hash, so a changed `password_hash` (a reload) can never match an
old entry - and `retain` drops those entries at once. Entries end after LIFETIME, the oldest go
first past MAX_ENTRIES. Only successes are cached: a wrong password is always verified, and so
costs what it costs. Directory-linked accounts are never cached - their password may change in the
directory at any moment and must take effect at the next login.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable

LIFETIME = 3600.0  # seconds a verified password is taken on trust
MAX_ENTRIES = 100_000


class VerifiedCredentials:
    def __init__(self, lifetime: float = LIFETIME, max_entries: int = MAX_ENTRIES) -> None:
        self._key = os.urandom(32)
        self._lifetime = lifetime
        self._max = max_entries
        self._entries: OrderedDict[bytes, tuple[float, str, str]] = OrderedDict()  # → (until, address, hash)

    def _digest(self, address: str, stored_hash: str, password: str) -> bytes:
        message = "\0".join((address, stored_hash, password)).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def known(self, address: str, stored_hash: str, password: str) -> bool:
        digest = self._digest(address, stored_hash, password)
        entry = self._entries.get(digest)
        if entry is None:
            return False
        if entry[0] <= time.monotonic():
            del self._entries[digest]
            return False
        return True

    def remember(self, address: str, stored_hash: str, password: str) -> None:
        digest = self._digest(address, stored_hash, password)
        self._entries.pop(digest, None)
        self._entries[digest] = (time.monotonic() + self._lifetime, address, stored_hash)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def retain(self, current_hash: Callable[[str], str | None]) -> None:
        """Keep only entries whose account still has the hash they were made with (a reload)."""
        for digest, (_, address, stored_hash) in list(self._entries.items()):
            if current_hash(address) != stored_hash:
                del self._entries[digest]

    def __len__(self) -> int:
        return len(self._entries)
