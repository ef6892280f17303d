"""The auth service: (login, password, protocol, client) → accepted | rejected | unavailable.

The login is one of the account's mail addresses. A directory-linked account is checked by its
directory (Active Directory, a generic LDAP directory, or this machine's accounts through PAM);
any other account by its own password hash. Every blocking call (ldap3, PAM, argon2) runs in a
bounded thread pool, so a slow directory slows logins, never the event loop.

Rules that hold whatever the directory:
- an empty password, or one with a control character, is rejected before anything is asked
  (AD counts even an empty-password bind toward its lockout threshold);
- a disabled account or domain is rejected without asking its directory;
- an unknown address is rejected after a dummy argon2 verification, so that it costs about what
  a real check costs;
- nothing positive is cached: a password changed in AD takes effect at the very next login;
- a directory that cannot answer makes the login UNAVAILABLE (a temporary failure), never
  REJECTED;
- a password is never logged nor kept.

`check()` decides and writes nothing; the protocols call it through the login path
(`appliance.auth.attempts`), which writes the one log line of the attempt. `authenticate()`
(the check-auth command, benchmarks) checks and logs on logger "appliance.auth":
  `auth result=rejected login=john@example.test protocol=imap client=192.0.2.7
  cause=locked_out ad_code=775 directory=cloudtech.local server=ldaps://dc1... ms=3.1`
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from appliance.auth.active_directory import ActiveDirectoryClient
from appliance.auth.cache import VerifiedCredentials
from appliance.auth.guard import DirectoryGuard
from appliance.auth.kerberos import linked_account
from appliance.auth.ldap_directory import LDAPDirectoryClient
from appliance.auth.local_system import LocalSystemClient
from appliance.auth.passwords import MATCH, check_password, hash_password
from appliance.auth.revocation import Revocations
from appliance.auth.sasl import Principal
from appliance.auth.user_states import StateFollower, UserState
from appliance.auth.verdict import Outcome, Reason, Verdict, accepted, rejected, unavailable
from appliance.manifest.models import ActiveDirectory, LDAPDirectory, LocalSystem

if TYPE_CHECKING:
    from appliance.metrics import Metrics
    from appliance.security import AutoBan
    from appliance.snapshot import AccountEntry, DirectoryModel, Snapshot, SnapshotHolder

__all__ = ["AuthResult", "AuthService", "Outcome"]

log = logging.getLogger("appliance.auth")
T = TypeVar("T")

MAX_PASSWORD_LENGTH = 1024  # characters; AD's own limit is 256
HASH_TIMES_KEPT = 32  # recent password-hash verifications whose time the refusal floor follows


@dataclass(frozen=True)
class AuthResult:
    outcome: Outcome
    account: AccountEntry | None  # set when accepted
    cause: str  # words for the log, never shown to the client
    detail: str = ""  # more key=value fields for the log, e.g. "ad_code=52e"
    directory: str | None = None  # the directory asked, if any
    server: str | None = None  # the server that answered (or those tried)
    milliseconds: float = 0.0
    password_set: int | None = None  # AD pwdLastSet at this login (for session revocation)
    reason: Reason | None = None  # REJECTED although the password was right: the client may know why

    @property
    def log_cause(self) -> str:
        """The cause and its detail, as they go after `cause=` in a log line."""
        return f"{self.cause} {self.detail}" if self.detail else self.cause


class DirectoryClient(Protocol):
    def authenticate(self, user: str, password: str) -> Verdict: ...
    def close(self) -> None: ...


def password_problem(password: str) -> str | None:
    """Why a password is refused before any directory sees it, or None."""
    if not password:
        return "empty_password"
    if len(password) > MAX_PASSWORD_LENGTH:
        return "password_too_long"
    if password.isprintable():
        return None  # no character of categories C* or Z* but the space: the common case, fast
    if any(unicodedata.category(character) == "Cc" for character in password):
        return "control_character_in_password"  # NUL, C0, DEL, C1
    if any(unicodedata.category(character) == "Cs" for character in password):
        return "password_not_utf8"  # bytes that were not UTF-8, kept as surrogates by the decoder
    return None


_PLAIN_FIELD = re.compile(r"^[!#-~]{1,320}$")  # printable ASCII without space and '"'


def log_field(value: str) -> str:
    """A value safe for a key=value log line: as is when plain, JSON-quoted otherwise."""
    return value if _PLAIN_FIELD.match(value) else json.dumps(value[:320])


class AuthService:
    def __init__(
        self,
        holder: SnapshotHolder,
        *,
        max_workers: int = 8,
        autoban: AutoBan | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._holder = holder
        self.metrics = metrics  # logins and directory latency, counted by the login path (attempts.py)
        self._autoban = autoban
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="auth")
        self._clients: dict[str, tuple[DirectoryModel, Path, DirectoryClient]] = {}
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()
        self._closed = False
        self.guard = DirectoryGuard(self._guard_settings)
        # Logged-in sessions, ended when the manifest or the directory no longer allows them.
        self.revocations = Revocations(self, holder)
        self.credentials = VerifiedCredentials()
        self._credentials_snapshot: Snapshot | None = None
        self._hash_seconds: deque[float] = deque(maxlen=HASH_TIMES_KEPT)

    def slowest_recent_hash(self) -> float:
        """Seconds the slowest recent password-hash verification took (a real one or the dummy
        for an unknown address, waiting for a worker included). The login path answers no
        refusal sooner, so that on a loaded machine an argon2 check does not stand out from an
        AD bind (appliance.auth.attempts)."""
        return max(self._hash_seconds, default=0.0)

    async def _timed_check(self, stored: str, password: str) -> str:
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, check_password, stored, password
            )
        finally:
            self._hash_seconds.append(time.perf_counter() - started)

    def _retain_credentials(self, snapshot: Snapshot) -> None:
        """After a reload, forget verified passwords of accounts whose hash changed."""
        if self._credentials_snapshot is not snapshot:
            if self._credentials_snapshot is not None:
                self.credentials.retain(lambda address: _stored_hash(snapshot, address))
            self._credentials_snapshot = snapshot

    def _guard_settings(self) -> tuple[int, float]:
        settings = self._holder.current.manifest.security.auto_ban
        return settings.max_failures_per_account, float(settings.window)

    async def authenticate(self, login: str, password: str, *, protocol: str, client: str) -> AuthResult:
        """`check`, then one log line for the attempt."""
        result = await self.check(login, password, client=client)
        level = logging.WARNING if result.outcome is Outcome.UNAVAILABLE else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "auth result=%s login=%s protocol=%s client=%s cause=%s directory=%s server=%s ms=%.1f",
                result.outcome.value,
                log_field(login),
                log_field(protocol),
                log_field(client),
                result.log_cause,
                result.directory or "-",
                result.server or "-",
                result.milliseconds,
            )
        return result

    async def check(self, login: str, password: str, *, client: str) -> AuthResult:
        """Whether `password` logs `login` in, asked of the account's directory; logs nothing
        but an internal error. Failures and successes are counted for auto-ban."""
        started = time.perf_counter()
        snapshot = self._holder.current
        entry = snapshot.account_by_address(login) if login else None
        directory_name: str | None = None
        autoban = self._autoban
        try:
            if autoban is not None and autoban.is_banned(client):
                verdict = rejected("client_banned")
            else:
                verdict, directory_name = await self._decide(snapshot, entry, password, client)
        except Exception:
            log.exception("auth internal error login=%s client=%s", log_field(login), log_field(client))
            verdict = unavailable("internal_error")
        if autoban is not None:
            if verdict.outcome is Outcome.REJECTED:
                autoban.failed(client, entry.address if entry else None)
            elif verdict.outcome is Outcome.ACCEPTED and entry is not None:
                autoban.succeeded(client, entry.address)
        return AuthResult(
            verdict.outcome,
            entry if verdict.outcome is Outcome.ACCEPTED else None,
            verdict.cause,
            verdict.detail,
            directory_name,
            verdict.server,
            (time.perf_counter() - started) * 1000,
            verdict.password_set,
            verdict.reason if verdict.outcome is Outcome.REJECTED else None,
        )

    async def check_principal(self, principal: Principal, *, client: str) -> AuthResult:
        """Which account a Kerberos principal proven by GSSAPI logs in to (auth/kerberos.py);
        logs nothing. Counted for auto-ban as password logins are."""
        started = time.perf_counter()
        autoban = self._autoban
        entry: AccountEntry | None = None
        directory: str | None = None
        if autoban is not None and autoban.is_banned(client):
            verdict = rejected("client_banned")
        else:
            verdict, entry, directory = linked_account(self._holder.current, principal)
        if autoban is not None:
            if verdict.outcome is Outcome.REJECTED:
                autoban.failed(client, None)
            elif entry is not None:
                autoban.succeeded(client, entry.address)
        return AuthResult(
            verdict.outcome,
            entry,
            verdict.cause,
            verdict.detail,
            directory,
            verdict.server,
            (time.perf_counter() - started) * 1000,
        )

    async def run_blocking(self, call: Callable[[], T]) -> T:
        """`call()` in the service's bounded thread pool (GSS-API steps)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _decide(
        self, snapshot: Snapshot, entry: AccountEntry | None, password: str, client: str
    ) -> tuple[Verdict, str | None]:
        problem = password_problem(password)
        if problem is not None:
            return rejected(problem), None
        if entry is None:
            await self._dummy_verify(password)
            return rejected("unknown_address"), None
        if not entry.enabled:
            await self._dummy_verify(password)
            return rejected("disabled_in_manifest"), None
        loop = asyncio.get_running_loop()
        link = entry.account.active_directory
        if link is not None:
            model = snapshot.directory(link.domain)
            if model is None:
                return unavailable("unknown_directory"), link.domain
            directory = self._client(link.domain, model, snapshot.base_dir)
            # At most the guard's budget of unproven binds reaches the directory for this user.
            slot = await self.guard.admit(link.domain, link.user, client, password)
            if slot is None:
                return rejected("directory_user_guarded"), link.domain
            verdict = None
            try:
                verdict = await loop.run_in_executor(
                    self._executor, directory.authenticate, link.user, password
                )
            finally:
                slot.release(verdict)
            policy = getattr(directory, "policy", None)
            if policy is not None:
                self.guard.set_policy(link.domain, policy)
            return verdict, link.domain
        stored = entry.account.password_hash
        if stored is not None:
            self._retain_credentials(snapshot)
            if self.credentials.known(entry.address, stored, password):
                return Verdict(Outcome.ACCEPTED, "ok", "local-hash", "cache=hit"), None
            slot = await self.guard.admit("local", entry.address, client, password, local=True)
            if slot is None:
                return rejected("account_guarded", "local-hash"), None
            verdict = None
            try:
                checked = await self._timed_check(stored, password)
                ok = checked == MATCH
                # A malformed stored hash is a refused login with its cause, never a traceback.
                verdict = accepted("local-hash") if ok else rejected(checked, "local-hash")
                if ok:
                    self.credentials.remember(entry.address, stored, password)
            finally:
                slot.release(verdict)
            return verdict, None
        await self._dummy_verify(password)
        return rejected("no_credentials"), None

    async def user_states(
        self, directory: str, users: list[str], *, follow: bool = False
    ) -> dict[str, UserState]:
        """The state of `users` in an active-directory `directory`, read as its service account
        (keys: user names case-folded; a user missing no longer exists). Raises when it cannot.
        `follow`: the periodic recheck, which reads again only what changed since its last read."""
        snapshot = self._holder.current
        model = snapshot.directory(directory)
        if not isinstance(model, ActiveDirectory):
            raise TypeError(f"{directory} is not an active-directory directory")
        client = self._client(directory, model, snapshot.base_dir)
        assert isinstance(client, ActiveDirectoryClient)
        read = client.follow_states if follow else client.read_states
        return await asyncio.get_running_loop().run_in_executor(self._executor, read, users)

    def follower(self, directory: str) -> StateFollower | None:
        """What the periodic recheck of an active-directory `directory` has read (benchmarks)."""
        known = self._clients.get(directory)
        return (
            known[2].follower if known is not None and isinstance(known[2], ActiveDirectoryClient) else None
        )

    def _client(self, name: str, model: DirectoryModel, base_dir: Path) -> DirectoryClient:
        """The client (and its connection pools) for a directory, rebuilt when a reload changed it."""
        known = self._clients.get(name)
        if known is not None and (known[0] is model or known[0] == model) and known[1] == base_dir:
            return known[2]
        client: DirectoryClient
        if isinstance(model, ActiveDirectory):
            client = ActiveDirectoryClient(name, model, base_dir)
        elif isinstance(model, LDAPDirectory):
            client = LDAPDirectoryClient(name, model, base_dir)
        elif isinstance(model, LocalSystem):
            client = LocalSystemClient(name, model)
        else:  # pragma: no cover - the manifest's union has no other member
            raise TypeError(f"unknown directory type {type(model).__name__}")
        self._clients[name] = (model, base_dir, client)
        if known is not None:
            self._executor.submit(known[2].close)  # in-flight logins finish on it, then it is gone
        return client

    async def _dummy_verify(self, password: str) -> None:
        """An argon2 verification whose result is thrown away: unknown addresses cost time too."""
        if self._dummy_hash is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._make_dummy_hash)
        assert self._dummy_hash is not None
        await self._timed_check(self._dummy_hash, password)

    def _make_dummy_hash(self) -> None:
        with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = hash_password("dummy password that no login matches")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        clients = [client for _, _, client in self._clients.values()]
        self._clients.clear()
        loop = asyncio.get_running_loop()
        for client in clients:
            await loop.run_in_executor(self._executor, client.close)
        self._executor.shutdown(wait=False, cancel_futures=True)


def _stored_hash(snapshot: Snapshot, address: str) -> str | None:
    entry = snapshot.account_by_address(address)
    return entry.account.password_hash if entry is not None and entry.enabled else None
