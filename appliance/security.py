"""Auto-ban: refuse addresses that keep failing to log in, and stop asking the directory about
an account that is being guessed at before the directory locks its user out.

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

_MAX_TRACKED = 100_000  # addresses and accounts remembered at most (oldest forgotten first)


class AutoBan:
    def __init__(self, holder: SnapshotHolder) -> None:
        self._holder = holder
        self._failures: dict[str, deque[float]] = {}
        self._banned_until: dict[str, float] = {}
        self._account_failures: dict[str, deque[float]] = {}
        self._account_blocked_until: dict[str, float] = {}

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

    def account_blocked(self, account: str) -> bool:
        """True when logins to `account` are refused here without asking its directory."""
        until = self._account_blocked_until.get(account)
        if until is None:
            return False
        if time.monotonic() >= until or not self._settings().enabled:
            del self._account_blocked_until[account]
            return False
        return True

    def failed(self, ip: str, account: str | None, *, linked: bool) -> None:
        """Count a failed login from `ip` (to `account`, which is directory-linked or not)."""
        settings = self._settings()
        if not settings.enabled:
            return
        now = time.monotonic()
        if (
            not self._allowed(ip)
            and _count(self._failures, ip, now, settings.window) >= settings.max_failures
        ):
            self._banned_until[ip] = now + settings.ban_time
            self._failures.pop(ip, None)
            log.warning("auto-ban banned client=%s seconds=%d", ip, settings.ban_time)
            _trim(self._banned_until)
        if account is not None and linked:
            count = _count(self._account_failures, account, now, settings.window)
            if count >= settings.max_failures_per_account:
                self._account_blocked_until[account] = now + settings.ban_time
                self._account_failures.pop(account, None)
                log.warning(
                    "auto-ban account-blocked account=%s seconds=%d reason=failures-before-directory-lockout",
                    account,
                    settings.ban_time,
                )
                _trim(self._account_blocked_until)
        _trim(self._failures)
        _trim(self._account_failures)

    def succeeded(self, ip: str, account: str) -> None:
        self._failures.pop(ip, None)
        self._account_failures.pop(account, None)


def _count(table: dict[str, deque[float]], key: str, now: float, window: float) -> int:
    times = table.setdefault(key, deque(maxlen=1000))
    times.append(now)
    while times and times[0] < now - window:
        times.popleft()
    return len(times)


def _trim(table: dict[str, float] | dict[str, deque[float]]) -> None:
    while len(table) > _MAX_TRACKED:
        del table[next(iter(table))]
