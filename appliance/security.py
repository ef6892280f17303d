"""Auto-ban: refuse addresses that keep failing to log in.

Failed logins are counted per client address over `window`; at `max_failures` the address is
refused for `ban_time`, on every protocol. A login that succeeds forgives that address's failures
for the same account only (a user who mistyped, then got it right) - never another account's, so
one valid login cannot launder guesses against others. How many binds may reach a directory for
one user is the auth guard's business (appliance/auth/guard.py), not this one's.

State is in memory (a restart forgives everyone); the settings come from the snapshot in force,
so a reload changes them at once. All methods run on the event loop: no locks needed.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import deque

from appliance.manifest.models import AutoBan as AutoBanSettings
from appliance.snapshot import SnapshotHolder, address_in_networks

log = logging.getLogger("appliance.security")

_MAX_TRACKED = 100_000  # addresses remembered at most (oldest forgotten first)
_MAX_FAILURES_KEPT = 1000  # per address


class AutoBan:
    def __init__(self, holder: SnapshotHolder) -> None:
        self._holder = holder
        self._failures: dict[str, deque[tuple[float, str | None]]] = {}  # ip → (when, account)
        self._banned_until: dict[str, float] = {}

    def _settings(self) -> AutoBanSettings:
        return self._holder.current.manifest.security.auto_ban

    def _allowed(self, ip: str) -> bool:
        networks = (ipaddress.ip_network(n, strict=False) for n in self._settings().allow_networks)
        return address_in_networks(ip, networks)

    def is_banned(self, ip: str) -> bool:
        """True when connections (and logins) from `ip` are to be refused now."""
        until = self._banned_until.get(ip)
        if until is None:
            return False
        if time.monotonic() >= until or not self._settings().enabled or self._allowed(ip):
            del self._banned_until[ip]
            return False
        return True

    def failed(self, ip: str, account: str | None) -> None:
        """Count a failed login from `ip` (to `account`, when the login named a known one)."""
        settings = self._settings()
        if not settings.enabled or self._allowed(ip):
            return
        now = time.monotonic()
        failures = self._failures.setdefault(ip, deque(maxlen=_MAX_FAILURES_KEPT))
        failures.append((now, account))
        while failures and failures[0][0] < now - settings.window:
            failures.popleft()
        if len(failures) >= settings.max_failures:
            self._banned_until[ip] = now + settings.ban_time
            self._failures.pop(ip, None)
            log.warning("auto-ban banned client=%s seconds=%d", ip, settings.ban_time)
            _trim(self._banned_until)
        _trim(self._failures)

    def succeeded(self, ip: str, account: str) -> None:
        """`account` logged in from `ip`: its own failures from there are forgiven, no others."""
        failures = self._failures.get(ip)
        if failures:
            kept = deque((entry for entry in failures if entry[1] != account), maxlen=_MAX_FAILURES_KEPT)
            if kept:
                self._failures[ip] = kept
            else:
                del self._failures[ip]


def _trim(table: dict[str, float] | dict[str, deque[tuple[float, str | None]]]) -> None:
    while len(table) > _MAX_TRACKED:
        del table[next(iter(table))]
