"""Sessions that follow the manifest and the directory: a login is not forever.

Every session that logged in registers here with a `revoke(reason)` callback. It ends:
- at a reload, when its account is gone, disabled (or its domain is), linked to another directory
  user or unlinked, or its local password hash changed (`reloaded`);
- within an active-directory directory's `recheck_interval` (default 60 s), when the directory
  says its user is disabled, locked out, expired, must change or has changed the password
  (pwdLastSet moved since the login), or no longer exists. The states of all users with sessions
  on one directory are read in one search per 100 users, as the directory's read-only service
  account (`bind_dn`), once per interval - not once per session (`run`);
- and an authenticated SMTP session asks again at each MAIL FROM (`check_now`), as hMailServer does.

A directory without a service account is not asked: its sessions follow the manifest only (the
password the session logged in with is never kept to ask again with).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance.auth.service_account import ServicePasswordError
from appliance.loglines import SESSION
from appliance.manifest.models import ActiveDirectory

if TYPE_CHECKING:
    from appliance.auth.service import AuthService
    from appliance.auth.user_states import UserState
    from appliance.snapshot import AccountEntry, Snapshot, SnapshotHolder

log = logging.getLogger("appliance.auth")

TICK = 1.0  # seconds between looks at which directories are due


@dataclass(eq=False)
class LoggedIn:
    """One session's login, as registered."""

    address: str  # the account's primary address
    protocol: str
    client: str
    revoke: Callable[[str], None]
    directory: str | None = None  # the directory and user it is linked to, if any
    user: str | None = None
    password_set: int | None = None  # AD pwdLastSet at login
    password_hash: str | None = None  # a local account's hash at login
    revoked: str | None = field(default=None)  # why, once revoked
    # The connection's id (loglines.SESSION), registered from its task: the line that ends the
    # session is written by the recheck task or a reload, and names it too.
    session: str = field(default_factory=SESSION.get)


def _link(entry: AccountEntry) -> tuple[str | None, str | None]:
    link = entry.account.active_directory
    return (link.domain, link.user) if link is not None else (None, None)


class Revocations:
    def __init__(self, auth: AuthService, holder: SnapshotHolder) -> None:
        self._auth = auth
        self._holder = holder
        self._sessions: set[LoggedIn] = set()
        self._checked: dict[str, float] = {}  # directory → when its states were last read
        self.queries = 0  # directory searches made (status, benchmarks)

    # -- sessions ---------------------------------------------------------------------------------
    def register(
        self,
        entry: AccountEntry,
        protocol: str,
        client: str,
        revoke: Callable[[str], None],
        password_set: int | None,
    ) -> LoggedIn:
        directory, user = _link(entry)
        session = LoggedIn(
            entry.address,
            protocol,
            client,
            revoke,
            directory,
            user,
            password_set,
            entry.account.password_hash,
        )
        self._sessions.add(session)
        return session

    def unregister(self, session: LoggedIn) -> None:
        self._sessions.discard(session)

    def count(self) -> int:
        return len(self._sessions)

    def _revoke(self, session: LoggedIn, reason: str) -> None:
        if session.revoked is not None:
            return
        session.revoked = reason
        self._sessions.discard(session)
        token = SESSION.set(session.session)
        try:
            log.info(
                "session revoked login=%s protocol=%s client=%s reason=%s",
                session.address,
                session.protocol,
                session.client,
                reason,
            )
        finally:
            SESSION.reset(token)
        try:
            session.revoke(reason)
        except Exception:
            log.exception("session revoke failed login=%s protocol=%s", session.address, session.protocol)

    # -- the manifest -----------------------------------------------------------------------------
    def reloaded(self, snapshot: Snapshot) -> None:
        """A new snapshot serves: end the sessions it no longer allows."""
        for session in list(self._sessions):
            reason = _manifest_reason(session, snapshot)
            if reason is not None:
                self._revoke(session, reason)

    # -- the directory ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Read the directories' states when due, until cancelled."""
        while True:
            await asyncio.sleep(TICK)
            try:
                await self.check_due()
            except Exception:
                log.exception("session recheck failed")

    def due_now(self) -> None:
        """Make every directory due at the next check_due (tests, benchmarks)."""
        self._checked.clear()

    async def check_due(self) -> None:
        snapshot = self._holder.current
        now = time.monotonic()
        by_directory: dict[str, list[LoggedIn]] = {}
        for session in self._sessions:
            if session.directory is not None:
                by_directory.setdefault(session.directory, []).append(session)
        for name, sessions in by_directory.items():
            model = snapshot.directory(name)
            if not isinstance(model, ActiveDirectory) or not model.bind_dn:
                continue
            if now - self._checked.get(name, 0.0) < float(model.recheck_interval):
                continue
            self._checked[name] = now
            states = await self._states(name, sorted({s.user or "" for s in sessions}), follow=True)
            if states is None:
                continue  # the directory cannot answer: nobody is cut off for that
            for session in sessions:
                state = states.get((session.user or "").casefold())
                reason = "deleted_in_directory" if state is None else state.why_revoked(session.password_set)
                if reason is not None:
                    self._revoke(session, reason)

    async def check_now(self, session: LoggedIn) -> str | None:
        """Why `session` must end now (asking its directory if it has a service account), or None."""
        if session.revoked is not None:
            return session.revoked
        reason = _manifest_reason(session, self._holder.current)
        if reason is None and session.directory is not None and session.user is not None:
            model = self._holder.current.directory(session.directory)
            if isinstance(model, ActiveDirectory) and model.bind_dn:
                # One search for this user (a few ms): a change made a moment ago must count.
                states = await self._states(session.directory, [session.user])
                if states is not None:
                    state = states.get(session.user.casefold())
                    reason = (
                        "deleted_in_directory" if state is None else state.why_revoked(session.password_set)
                    )
        if reason is not None:
            self._revoke(session, reason)
        return reason

    async def _states(
        self, directory: str, users: list[str], *, follow: bool = False
    ) -> dict[str, UserState] | None:
        self.queries += 1
        try:
            return await self._auth.user_states(directory, users, follow=follow)
        except ServicePasswordError as error:
            log.warning("session recheck unavailable directory=%s error=%s", directory, error)
        except Exception as error:
            log.warning("session recheck unavailable directory=%s error=%s", directory, type(error).__name__)
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._sessions.clear()


def _manifest_reason(session: LoggedIn, snapshot: Snapshot) -> str | None:
    entry = snapshot.account_by_address(session.address)
    if entry is None or entry.address != session.address:
        return "account_removed"
    if not entry.enabled:
        return "disabled_in_manifest"
    directory, user = _link(entry)
    if directory != session.directory or (user or "").casefold() != (session.user or "").casefold():
        return "relinked_in_manifest"
    if directory is None and entry.account.password_hash != session.password_hash:
        return "password_changed_in_manifest"
    return None
