"""No directory user is locked out through us, and nobody can lock one out of mail through us.

Active Directory locks a user after `lockoutThreshold` wrong passwords within its observation
window (`lockOutObservationWindow`), counting every bind that carried a wrong password, from
anywhere. The guard keeps, per directory user - (directory, user name), not per mail account, so
two accounts linked to one AD user share it - the binds of the window that were not accepted and
the binds still in flight, and lets one more bind go only while

    failures in the window + binds in flight < budget

A bind in flight counts as a failure until it answers, so twenty guesses sent at once send at
most `budget` binds; the others wait for those to answer (a right password resets AD's count,
and ours) or are refused without asking the directory. The budget is the manifest's
`[security.auto_ban] max_failures_per_account`, kept below the directory's own threshold when the
directory has told us its policy (`set_policy`); the window is the longer of the two.

Against the denial of service the same rule would hand an attacker (three wrong guesses from
anywhere would keep the right password out), the last slot of the budget is kept for clients
known to be the user's: an address that logged in to this directory user with the right password
within TRUST_SECONDS, or a password that did (kept as an HMAC with a key this process drew at
random, in memory only; never the password). Strangers share the rest. An attacker can then hold
the account's budget from anywhere without locking it in AD, while its owner's known devices -
and anyone presenting the password that last worked - still get in.

Local accounts (`password_hash`, `local=True`) have no directory to protect: past the budget
their logins are paced instead of refused - one at a time, each after a pause that doubles with
every failure past the budget, up to MAX_WAIT - so guessing one account from many addresses
stays slow while its owner still gets in from anywhere, a few seconds later.

Everything runs on the event loop: no locks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from appliance.auth.verdict import Outcome, Verdict

log = logging.getLogger("appliance.auth.guard")
K = TypeVar("K", str, bytes)

TRUST_SECONDS = 14 * 24 * 3600.0  # an address or password that worked is the user's this long
MAX_WAIT = 10.0  # seconds a login may wait for a slot before it is refused
FIRST_PAUSE = 0.5  # seconds between logins to a local account past its budget, doubling
MAX_TRUSTED = 16  # addresses and passwords remembered per user
MAX_USERS = 100_000  # users tracked at most (idle ones are forgotten first)
# Refusals AD gives only after the password was right: they add nothing to its lockout count.
RIGHT_PASSWORD_CAUSES = frozenset(
    {"account_disabled", "password_expired", "must_change_password", "account_expired", "not_in_group"}
)


@dataclass(frozen=True)
class Policy:
    """A directory's own lockout policy, as its domain object says."""

    threshold: int  # wrong passwords that lock the user; 0: never
    window: float  # seconds over which they count


@dataclass
class _User:
    failures: deque[float] = field(default_factory=deque)
    in_flight: int = 0
    trusted_clients: dict[str, float] = field(default_factory=dict)
    trusted_passwords: dict[bytes, float] = field(default_factory=dict)
    next_at: float = 0.0  # a local account past its budget: no login before this
    # Set when a bind answers; made by the first login that waits (on the loop that runs it).
    changed: asyncio.Event | None = None


class Slot:
    """One bind the guard let go; `release` with what the directory said."""

    def __init__(self, guard: DirectoryGuard, key: tuple[str, str], client: str, digest: bytes) -> None:
        self._guard, self._key, self._client, self._digest = guard, key, client, digest
        self._released = False

    def release(self, verdict: Verdict | None) -> None:
        """`verdict` None: no answer (cancelled, crashed) - counted as a failure, to be safe."""
        if not self._released:
            self._released = True
            self._guard._release(self._key, self._client, self._digest, verdict)


class DirectoryGuard:
    def __init__(self, settings: Callable[[], tuple[int, float]]) -> None:
        """`settings()`: the manifest's (max_failures_per_account, window) in force."""
        self._settings = settings
        self._users: dict[tuple[str, str], _User] = {}
        self._policies: dict[str, Policy] = {}
        self._key = os.urandom(32)

    # -- what limits apply ------------------------------------------------------------------------
    def set_policy(self, directory: str, policy: Policy) -> None:
        if self._policies.get(directory) != policy:
            self._policies[directory] = policy
            budget, window = self.budget(directory)
            log.info(
                "directory lockout policy directory=%s threshold=%d window=%d budget=%d guard_window=%d",
                directory,
                policy.threshold,
                policy.window,
                budget,
                window,
            )

    def policy(self, directory: str) -> Policy | None:
        return self._policies.get(directory)

    def settings(self) -> tuple[int, float]:
        """The manifest's (max_failures_per_account, window) in force."""
        return self._settings()

    def budget(self, directory: str) -> tuple[int, float]:
        """(binds that may fail within the window, the window in seconds) for one user."""
        limit, window = self._settings()
        policy = self._policies.get(directory)
        if policy is not None and policy.threshold > 0:
            limit = min(limit, policy.threshold - 1)
            window = max(window, policy.window)
        return max(limit, 0), window

    # -- one login --------------------------------------------------------------------------------
    async def admit(
        self, directory: str, user: str, client: str, password: str, *, local: bool = False
    ) -> Slot | None:
        """A slot for one bind of `user`, waiting up to MAX_WAIT for one; None: refuse the login
        without asking the directory. `local`: a local account, paced rather than refused."""
        key = (directory, user.casefold())
        digest = hmac.new(self._key, "\0".join((*key, password)).encode(), hashlib.sha256).digest()
        state = self._users.get(key)
        if state is None:
            self._forget_idle()
            state = self._users[key] = _User()
        deadline = time.monotonic() + MAX_WAIT
        while True:
            now = time.monotonic()
            limit, window = self.budget(directory)
            failures = state.failures
            while failures and failures[0] <= now - window:
                failures.popleft()
            known = self._known(state, client, digest, now)
            if not known and limit >= 2:
                limit -= 1  # the last slot is kept for the user's own devices
            if len(failures) + state.in_flight < limit:
                state.in_flight += 1
                return Slot(self, key, client, digest)
            if local:
                if not state.in_flight and now >= state.next_at:
                    state.in_flight += 1
                    return Slot(self, key, client, digest)
                if now >= deadline:
                    return None
                free_at: float | None = None if state.in_flight else state.next_at
            else:
                # Full: wait for a bind in flight to answer or the oldest failure to age out.
                free_at = failures[0] + window if failures and not state.in_flight else None
                if now >= deadline or (free_at is not None and free_at > deadline):
                    return None
            if state.changed is None:
                state.changed = asyncio.Event()
            event = state.changed
            try:
                await asyncio.wait_for(event.wait(), max(0.0, (free_at or deadline) - now))
            except TimeoutError:
                pass

    def _known(self, state: _User, client: str, digest: bytes, now: float) -> bool:
        until = state.trusted_clients.get(client)
        if until is not None and until > now:
            return True
        until = state.trusted_passwords.get(digest)
        return until is not None and until > now

    def _release(self, key: tuple[str, str], client: str, digest: bytes, verdict: Verdict | None) -> None:
        state = self._users.get(key)
        if state is None:
            return
        state.in_flight -= 1
        now = time.monotonic()
        if verdict is not None and verdict.outcome is Outcome.ACCEPTED:
            state.failures.clear()  # AD resets badPwdCount on a successful bind
            _remember(state.trusted_clients, client, now + TRUST_SECONDS)
            _remember(state.trusted_passwords, digest, now + TRUST_SECONDS)
        elif verdict is None or verdict.cause not in RIGHT_PASSWORD_CAUSES:
            state.failures.append(now)
            state.trusted_passwords.pop(digest, None)  # no longer the password that works
            limit, _ = self.budget(key[0])
            past = len(state.failures) - limit
            if past >= 0:
                state.next_at = now + min(MAX_WAIT, FIRST_PAUSE * 2 ** min(past, 8))
        if state.changed is not None:
            state.changed.set()  # every waiting login looks again
            state.changed = None

    def _forget_idle(self) -> None:
        if len(self._users) < MAX_USERS:
            return
        for key in [k for k, s in self._users.items() if not s.in_flight and not s.failures][
            : MAX_USERS // 10
        ]:
            del self._users[key]
        while len(self._users) >= MAX_USERS:  # all busy: the oldest go
            del self._users[next(iter(self._users))]


def _remember(table: dict[K, float], key: K, until: float) -> None:
    table.pop(key, None)
    table[key] = until  # newest last
    while len(table) > MAX_TRUSTED:
        del table[next(iter(table))]
