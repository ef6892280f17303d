"""The one login path of SMTP, POP3 and IMAP: who may connect, and what a login attempt costs.

- `admission()`: at connect time, refuse a banned client (auto-ban) or one over the manifest's
  connection limits; each protocol renders the refusal in its own words.
- `Attempts`: one connection's logins. It applies the authorization-identity rule, asks the auth
  service, lets the protocol open the account (POP3's maildrop, IMAP's folders), writes the one
  log line of the attempt, answers a refusal no sooner than FAILED_LOGIN_FLOOR after the attempt
  began, and says whether the connection is to be closed (the MAX_LOGIN_FAILURES-th refusal
  closes it).

A refusal takes the same time whatever was asked (issue 21 item 9: account enumeration by
timing). A wrong password for an unknown address costs a dummy argon2 verification, for a local
account a real one, for an AD-linked account one bind of a few milliseconds; a fixed pause after
the check (as before) let the three be told apart (median 1,143 / 1,002 / 752 ms). The refusal is
now sent at a fixed time after the attempt began, chosen to cover a normal check, so the check's
own cost no longer shows. When password hashing is slow (a loaded machine), the floor follows
the slowest recent hash verification (HASH_MARGIN times it), for every refusal alike. Only a
check slower than that (a DC that is slow to answer, the guard pacing an account under attack)
makes a refusal later, and that says nothing about whether the address exists. The dummy
verification stays: it keeps an unknown address's cost to the server (a worker thread, CPU) the
same as a real account's, so load does not tell them apart either, and its time feeds the floor.

A refusal says why only when the directory said the password was right (`Attempt.reason`: AD's
532, 773, 701; RFC 5530 EXPIRED and its kin); every other refusal has the one answer.

The log line, on logger "appliance.auth", never with the password:
  `auth result=rejected login=john@example.test protocol=smtp listener=submissions mechanism=PLAIN
  tls=yes client=192.0.2.7 cause=bad_credentials directory=- server=local-hash ms=31.2`
`result` is accepted, rejected or unavailable (the directory could not answer), or what the
protocol says after a good password (POP3: in_use); `authzid=` is added when one was given, and
for a service acting as a user (auth/trusted.py) `account=` and `trusted_login=` too.
A GSSAPI login (auth/kerberos.py) logs the Kerberos principal as `login=` and, once accepted,
the account it opened as `account=`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from appliance.auth import kerberos, sasl, trusted
from appliance.auth.sasl import Credentials, Principal
from appliance.auth.service import AuthResult, log_field
from appliance.auth.verdict import Outcome, Reason

if TYPE_CHECKING:
    from appliance.auth.revocation import LoggedIn
    from appliance.auth.service import AuthService
    from appliance.security import AutoBan
    from appliance.snapshot import AccountEntry, Snapshot, SnapshotHolder

log = logging.getLogger("appliance.auth")

# Seconds from the start of an attempt to its refusal: covers a normal check (an argon2id
# verification with argon2-cffi's defaults takes 0.05-0.4 s on a loaded 2-core machine, an AD bind
# a few ms), slows guessing, never blocks the loop (the wait is an asyncio sleep).
FAILED_LOGIN_FLOOR = 1.0
# On a loaded machine argon2 may take longer than that (0.95 s measured here with the test suite
# running): the floor then rises to this many times the slowest recent hash verification.
HASH_MARGIN = 1.25
MAX_LOGIN_FAILURES = 3  # refused logins per connection; the last refusal closes it


# -- connect time -----------------------------------------------------------------------------------
class Refusal(enum.Enum):
    """Why a new connection is turned away (the value is the log's reason=)."""

    BANNED = "banned"
    MAX_CONNECTIONS = "max_connections"
    MAX_CONNECTIONS_PER_CLIENT = "max_connections_per_client"


class ConnectionCounts(Protocol):
    """The live connections (appliance.context.SessionCounter)."""

    def refusal(
        self,
        protocol: str,
        client: str,
        max_connections: int,
        max_per_client: int,
        family: tuple[str, ...] = (),
    ) -> str | None: ...


def admission(
    snapshot: Snapshot,
    sessions: ConnectionCounts,
    autoban: AutoBan | None,
    *,
    name: str,
    client: str,
    family: tuple[str, ...] = (),
) -> Refusal | None:
    """None to serve a new connection from `client` on `name` (a protocol, or an SMTP listener
    whose `family` of listeners shares the total), else why it is refused: a banned client
    first, then `max_connections` over the family, then `max_connections_per_client`."""
    if autoban is not None and autoban.is_banned(client):
        return Refusal.BANNED
    refused = sessions.refusal(
        name, client, snapshot.max_connections, snapshot.max_connections_per_client, family=family
    )
    return Refusal(refused) if refused is not None else None


# -- the authorization identity ---------------------------------------------------------------------
def may_act_as(snapshot: Snapshot, authcid: str, authzid: str) -> bool:
    """RFC 4422 §3.4.1, RFC 4616 §2: whether a client that logs in as `authcid` may act as
    `authzid`. Nobody may act as somebody else here, so an authzid is accepted only when it is
    empty or names the same account, compared as logins are (Snapshot.account_by_address):
    - case does not matter, in the local part or the domain (`John@Example.TEST`);
    - any of the account's own addresses counts (its `addresses`, e.g. `j.doe@example.test`);
    - an address with a recipient delimiter (`john+news@`), an alias (even one that reaches only
      this account) or a catch-all is a delivery address, not a login: refused.
    When `authcid` names no account, an authzid equal to it (case aside) is accepted, so that the
    auth service rejects the login as for any unknown address."""
    if not authzid:
        return True
    account = snapshot.account_by_address(authcid)
    if account is None:
        return authzid.lower() == authcid.lower()
    other = snapshot.account_by_address(authzid)
    return other is not None and other.address == account.address


# -- one connection's logins -------------------------------------------------------------------------
@dataclass(frozen=True)
class Opened:
    """What the protocol says once a good password gave it the account to open."""

    result: str = "accepted"  # or why the login still fails: "in_use", "unavailable"
    cause: str = "ok"
    fields: str = ""  # more " key=value" pairs for the log line (e.g. " messages=3 octets=120")

    @property
    def ok(self) -> bool:
        return self.result == "accepted"


OpenAccount = Callable[["AccountEntry"], Awaitable[Opened]]


@dataclass(frozen=True)
class Attempt:
    """The outcome of one login, for the protocol's reply."""

    outcome: Outcome  # ACCEPTED also when `opened` then failed
    account: AccountEntry | None  # set when ACCEPTED
    opened: Opened | None  # what open_account said, when it was called
    close: bool  # refused once too often: say so and close the connection
    # REJECTED although the password was right (expired, must change): the client may be told.
    reason: Reason | None = None

    @property
    def logged_in(self) -> bool:
        return self.outcome is Outcome.ACCEPTED and (self.opened is None or self.opened.ok)


class Attempts:
    """The login attempts of one connection."""

    def __init__(
        self,
        auth: AuthService,
        holder: SnapshotHolder,
        *,
        protocol: str,
        listener: str,
        client: str,
        revoke: Callable[[str], None] | None = None,
    ) -> None:
        """`revoke(reason)`: how the protocol ends its session once the login it made is no
        longer allowed (auth/revocation.py); called on the event loop."""
        self._auth = auth
        self._holder = holder
        self.protocol = protocol
        self.listener = listener
        self.client = client
        self.failures = 0
        self._revoke = revoke
        self._registration: LoggedIn | None = None

    @property
    def revoked(self) -> str | None:
        """Why the session's login was revoked, or None."""
        return self._registration.revoked if self._registration is not None else None

    async def still_allowed(self) -> str | None:
        """Asks the directory again now (SMTP, at each MAIL FROM): why the login no longer
        holds, or None."""
        if self._registration is None:
            return None
        return await self._auth.revocations.check_now(self._registration)

    def close(self) -> None:
        """The session ends: it is no longer followed."""
        if self._registration is not None:
            self._auth.revocations.unregister(self._registration)
            self._registration = None

    def offered(self, mechanisms: tuple[str, ...]) -> tuple[str, ...]:
        """The protocol's password mechanisms, and GSSAPI when a directory has a keytab (the
        protocol asks only where its TLS rules allow AUTH)."""
        return (*mechanisms, sasl.GSSAPI.name) if self._holder.current.kerberos else mechanisms

    def mechanism(self, name: str, offered: tuple[str, ...]) -> sasl.Mechanism | None:
        """A fresh mechanism object for `name` when it is `offered` (GSSAPI answering for this
        protocol's service principals), else None."""
        return sasl.mechanism(name, offered, kerberos.acceptors(self._holder.current, self.protocol))

    async def exchange(
        self, mechanism: sasl.Mechanism, initial: str | None, ask: Callable[[str], Awaitable[str]]
    ) -> Credentials | Principal:
        """sasl.exchange, with GSS-API steps run off the event loop by the auth service."""
        return await sasl.exchange(mechanism, initial, ask, self._auth.run_blocking)

    async def login(
        self,
        credentials: Credentials | Principal,
        mechanism: str,
        *,
        tls: bool,
        open_account: OpenAccount | None = None,
    ) -> Attempt:
        """Check `credentials` (from SASL `mechanism`, or "USER"/"LOGIN" for the protocols' own
        commands); call `open_account` after a good password. One log line, whatever happens."""
        started = time.monotonic()
        extra = ""
        if isinstance(credentials, Principal):
            result = await self._auth.check_principal(credentials, client=self.client)
        elif may_act_as(self._holder.current, credentials.authcid, credentials.authzid):
            result = await self._auth.check(credentials.authcid, credentials.password, client=self.client)
        else:
            result, extra = await self._trusted_login(credentials)
        account = result.account  # set exactly when ACCEPTED
        opened: Opened | None = None
        if account is not None and open_account is not None:
            try:
                opened = await open_account(account)
            except BaseException:
                self._log(credentials, mechanism, tls, result, Opened("unavailable", "internal_error"), extra)
                raise
        self._log(credentials, mechanism, tls, result, opened, extra)
        if account is not None and (opened is None or opened.ok) and self._revoke is not None:
            self.close()
            self._registration = self._auth.revocations.register(
                account, self.protocol, self.client, self._revoke, result.password_set
            )
        close = False
        if result.outcome is Outcome.REJECTED:
            self.failures += 1
            # Issue 21 item 9: at the floor after the start, not a fixed pause after the check.
            floor = max(FAILED_LOGIN_FLOOR, HASH_MARGIN * self._auth.slowest_recent_hash())
            await asyncio.sleep(max(0.0, started + floor - time.monotonic()))
            close = self.failures >= MAX_LOGIN_FAILURES
        return Attempt(result.outcome, account, opened, close, result.reason)

    async def _trusted_login(self, credentials: Credentials) -> tuple[AuthResult, str]:
        """An authzid naming another account: allowed only under a [trusted_logins] rule
        (auth/trusted.py). Refused before any directory is asked otherwise (its lockout counter
        does not move), with the answer a wrong password gets (RFC 4954 §6, RFC 5530, RFC 3206).
        Also returns more fields for the log line."""
        decision = trusted.decide(
            self._holder.current,
            credentials.authcid,
            credentials.authzid,
            protocol=self.protocol,
            listener=self.listener,
            client=self.client,
        )
        if decision.rule is None or decision.account is None:
            extra = f" trusted_login={decision.rule.name}" if decision.rule is not None else ""
            return AuthResult(Outcome.REJECTED, None, decision.cause), extra
        extra = f" trusted_login={decision.rule.name}"
        checked = await self._auth.check(credentials.authcid, credentials.password, client=self.client)
        if checked.account is None:
            return checked, extra
        # The session is the user's; what the directory says later about the service's own
        # password (pwdLastSet) does not end it.
        account = decision.account
        return dataclasses.replace(checked, account=account, password_set=None), (
            f" account={log_field(account.address)}{extra}"
        )

    def _log(
        self,
        credentials: Credentials | Principal,
        mechanism: str,
        tls: bool,
        result: AuthResult,
        opened: Opened | None,
        extra: str = "",
    ) -> None:
        word, cause, fields = result.outcome.value, result.log_cause, ""
        if opened is not None:
            word, fields = opened.result, opened.fields
            if not opened.ok:
                cause = opened.cause
        metrics = self._auth.metrics
        if metrics is not None:
            metrics.logins.labels(self.protocol, word, cause).inc()
            if result.directory:
                server = result.server or "-"
                metrics.directory_seconds.labels(result.directory, server).observe(result.milliseconds / 1000)
        level = logging.WARNING if word == Outcome.UNAVAILABLE.value else logging.INFO
        if not log.isEnabledFor(level):
            return
        if credentials.authzid:
            fields = f" authzid={log_field(credentials.authzid)}{extra}{fields}"
        if isinstance(credentials, Principal):
            login = credentials.name or "-"
            if result.account is not None:  # GSSAPI: the principal, and the account it opened
                fields = f" account={log_field(result.account.address)}{fields}"
        else:
            login = credentials.authcid
        log.log(
            level,
            "auth result=%s login=%s protocol=%s listener=%s mechanism=%s tls=%s client=%s cause=%s "
            "directory=%s server=%s ms=%.1f%s",
            word,
            log_field(login),
            self.protocol,
            self.listener,
            mechanism,
            "yes" if tls else "no",
            log_field(self.client),
            cause,
            result.directory or "-",
            result.server or "-",
            result.milliseconds,
            fields,
        )
