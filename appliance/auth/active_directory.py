"""Active Directory: a simple bind as the linked user over TLS, AD's `data` code in words.

A failed bind is LDAP result 49 with a message such as
`80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1`;
the `data` code says why (wrong password, disabled, expired, locked...). AD answers 52e both for
a wrong password and an unknown user, and counts every failed bind toward the lockout threshold.

`require_group` is checked with the user's own bind, nested membership included, in one search
with the LDAP_MATCHING_RULE_IN_CHAIN rule (1.2.840.113556.1.4.1941).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap3
from ldap3.utils.conv import escape_filter_chars

from appliance.auth.bind_results import bind_failure
from appliance.auth.connections import (
    DirectoryServers,
    DirectoryUnreachable,
    ServerPool,
    ServerSettings,
    tls_context,
)
from appliance.auth.discovery import DomainControllers
from appliance.auth.guard import Policy
from appliance.auth.service_account import ServicePassword
from appliance.auth.verdict import Outcome, Verdict, accepted, rejected, unavailable
from appliance.manifest.models import ActiveDirectory

IN_CHAIN = "1.2.840.113556.1.4.1941"  # LDAP_MATCHING_RULE_IN_CHAIN
POLICY_MAX_AGE = 3600.0  # seconds before the domain's lockout policy is read again
STATE_BATCH = 100  # users per search when reading states
# userAccountControl and msDS-User-Account-Control-Computed bits ([MS-ADTS] 2.2.16)
UF_ACCOUNTDISABLE = 0x2
UF_LOCKOUT = 0x10
UF_PASSWORD_EXPIRED = 0x800000
NEVER = (0, 0x7FFFFFFFFFFFFFFF)  # accountExpires values that mean "never"
_STATE_ATTRIBUTES = [
    "sAMAccountName",
    "userPrincipalName",
    "userAccountControl",
    "msDS-User-Account-Control-Computed",
    "accountExpires",
    "pwdLastSet",
]


@dataclass(frozen=True)
class UserState:
    """What AD says of one user now, for the sessions it has open."""

    disabled: bool
    locked: bool
    expired: bool  # the account (accountExpires)
    password_expired: bool  # expired, or must be changed at next logon
    password_set: int  # pwdLastSet (FILETIME)

    def why_revoked(self, password_set_at_login: int | None) -> str | None:
        """Why sessions opened with `password_set_at_login` must end now, or None."""
        if self.disabled:
            return "disabled_in_directory"
        if self.locked:
            return "locked_out"
        if self.expired:
            return "account_expired"
        if self.password_expired:
            return "password_expired"
        if password_set_at_login is not None and self.password_set != password_set_at_login:
            return "password_changed"
        return None


def _filetime_now() -> int:
    return int((time.time() + 11_644_473_600) * 10_000_000)


def domain_dn(dns_name: str) -> str:
    return ",".join(f"DC={label}" for label in dns_name.split("."))


class ActiveDirectoryClient:
    def __init__(self, name: str, model: ActiveDirectory, base_dir: Path) -> None:
        self.model = model
        self.base_dir = base_dir
        context = tls_context(base_dir / model.ca_file if model.ca_file else None)
        self._servers = DirectoryServers(
            list(model.servers),
            ServerSettings(
                context=context,
                tls_server_name=model.tls_server_name,
                allow_plaintext=model.allow_plaintext,
                connect_timeout=model.connect_timeout,
                response_timeout=model.response_timeout,
                pool_size=model.pool_size,
            ),
            DomainControllers(name, site=model.site, resolver=model.resolver, timeout=model.connect_timeout)
            if model.discover
            else None,
        )
        dns_name = model.upn_suffix or name
        self._upn_suffix = dns_name
        self._base_dn = model.base_dn or domain_dn(name if "." in name else dns_name)
        self._group_dn: str | None = None  # require_group resolved to a DN (not a login result)
        self._domain_dn = domain_dn(name if "." in name else dns_name)
        # The domain's lockout policy, read with the first user bind that succeeds (an anonymous
        # search is refused), then hourly: the auth service keeps its guard below it.
        self.policy: Policy | None = None
        self._policy_read = -POLICY_MAX_AGE
        self._service_password = ServicePassword(
            base_dir / model.bind_password_file if model.bind_password_file else None, model.bind_password_env
        )

    def bind_name(self, user: str) -> str:
        """`user@suffix` (a user written with "@" is taken as a whole UPN), or `NETBIOS\\user`."""
        if self.model.login_format == "down-level":
            return f"{self.model.netbios_name}\\{user}"
        return user if "@" in user else f"{user}@{self._upn_suffix}"

    def authenticate(self, user: str, password: str) -> Verdict:
        name = self.bind_name(user)

        def attempt(pool: ServerPool, connection: ldap3.Connection) -> Verdict:
            result = pool.bind(connection, name, password)
            if result.get("result") != 0:
                return bind_failure(result, pool.url)
            if time.monotonic() - self._policy_read >= POLICY_MAX_AGE:
                self._read_policy(connection)
            verdict = accepted(pool.url)
            if self.model.require_group:
                verdict = self._check_group(connection, user, pool.url)
            if self.model.bind_dn and verdict.outcome is Outcome.ACCEPTED:
                # Sessions end when the password changes: remember which one this login used.
                entries = self._search_users(connection, [user], ["pwdLastSet"])
                raw = entries[0].get("raw_attributes", {}) if entries else {}
                stamp = _first_int(raw, "pwdLastSet")
                verdict = dataclasses.replace(verdict, password_set=stamp)
            return verdict

        try:
            verdict, _ = self._servers.run(attempt)
        except DirectoryUnreachable as error:
            return unavailable(error.cause, error.servers, f"error={json.dumps(error.detail)}")
        return verdict

    def _read_policy(self, connection: ldap3.Connection) -> None:
        """lockoutThreshold and lockOutObservationWindow (a negative count of 100 ns) of the
        domain object ([MS-ADTS] 2.2.15); left as it was when the search fails."""
        self._policy_read = time.monotonic()
        connection.search(
            self._domain_dn,
            "(objectClass=domain)",
            ldap3.BASE,
            attributes=["lockoutThreshold", "lockOutObservationWindow"],
        )
        for entry in connection.response or ():
            raw = entry.get("raw_attributes") or {}
            try:
                threshold = int(raw["lockoutThreshold"][0])
                window = abs(int(raw["lockOutObservationWindow"][0])) / 10_000_000
            except (KeyError, IndexError, ValueError):
                continue
            self.policy = Policy(threshold, window)

    def read_states(self, users: list[str]) -> dict[str, UserState]:
        """The state of `users` (as accounts link them), read as the service account, a search
        per STATE_BATCH users; a user missing from the answer no longer exists. Keys are the
        user names case-folded. Raises DirectoryUnreachable or ServicePasswordError."""
        secret = self._service_password.read()
        bind_dn = self.model.bind_dn or ""
        wanted = {user.casefold(): user for user in users}

        def search(pool: ServerPool, connection: ldap3.Connection) -> dict[str, UserState]:
            result = pool.bind(connection, bind_dn, secret)
            if result.get("result") != 0:
                raise DirectoryUnreachable("service_bind_failed", pool.url, str(result.get("message")))
            found: dict[str, UserState] = {}
            names = list(wanted.values())
            for start in range(0, len(names), STATE_BATCH):
                for entry in self._search_users(
                    connection, names[start : start + STATE_BATCH], _STATE_ATTRIBUTES
                ):
                    raw = entry.get("raw_attributes", {})
                    state = _state(raw)
                    for attribute in ("sAMAccountName", "userPrincipalName"):
                        for value in raw.get(attribute, ()):
                            key = value.decode("utf-8", "replace").casefold()
                            if key in wanted:
                                found[key] = state
            return found

        states, _ = self._servers.run(search)
        return states

    def _search_users(
        self, connection: ldap3.Connection, users: list[str], attributes: list[str]
    ) -> list[dict[str, Any]]:
        terms = "".join(
            f"(userPrincipalName={escape_filter_chars(user)})"
            if "@" in user
            else f"(sAMAccountName={escape_filter_chars(user)})"
            for user in users
        )
        connection.search(
            self._base_dn,
            f"(&(objectClass=user)(|{terms}))",
            ldap3.SUBTREE,
            attributes=attributes,
            size_limit=len(users) * 2,
        )
        code = (connection.result or {}).get("result")
        if code not in (0, 4):
            raise DirectoryUnreachable("search_failed", "-", f"ldap_result={code}")
        return [r for r in connection.response or () if r.get("type") == "searchResEntry"]

    def _check_group(self, connection: ldap3.Connection, user: str, server: str) -> Verdict:
        group = self._group_dn or self._resolve_group(connection)
        if group is None:
            return unavailable("group_not_found", server, f"group={self.model.require_group}")
        if "@" in user:
            who = f"(userPrincipalName={escape_filter_chars(user)})"
        else:
            who = f"(sAMAccountName={escape_filter_chars(user)})"
        search = f"(&(objectClass=user){who}(memberOf:{IN_CHAIN}:={escape_filter_chars(group)}))"
        connection.search(
            self._base_dn, search, ldap3.SUBTREE, attributes=[ldap3.NO_ATTRIBUTES], size_limit=1
        )
        code = (connection.result or {}).get("result")
        if code not in (0, 4):  # 4: sizeLimitExceeded (found, and more)
            return unavailable("group_check_failed", server, f"ldap_result={code}")
        found = [r for r in connection.response or () if r.get("type") == "searchResEntry"]
        return accepted(server) if found else rejected("not_in_group", server)

    def _resolve_group(self, connection: ldap3.Connection) -> str | None:
        group = self.model.require_group or ""
        if "=" in group:
            self._group_dn = group
            return group
        search = f"(&(objectClass=group)(sAMAccountName={escape_filter_chars(group)}))"
        connection.search(
            self._base_dn, search, ldap3.SUBTREE, attributes=[ldap3.NO_ATTRIBUTES], size_limit=2
        )
        found = [r for r in connection.response or () if r.get("type") == "searchResEntry"]
        if len(found) != 1:
            return None
        self._group_dn = str(found[0]["dn"])
        return self._group_dn

    def close(self) -> None:
        self._servers.close()


def _first_int(raw: dict[str, list[bytes]], name: str) -> int:
    values = raw.get(name) or [b"0"]
    try:
        return int(values[0])
    except ValueError:
        return 0


def _state(raw: dict[str, list[bytes]]) -> UserState:
    control = _first_int(raw, "userAccountControl")
    computed = _first_int(raw, "msDS-User-Account-Control-Computed")
    expires = _first_int(raw, "accountExpires")
    password_set = _first_int(raw, "pwdLastSet")
    return UserState(
        disabled=bool(control & UF_ACCOUNTDISABLE),
        locked=bool(computed & UF_LOCKOUT),
        expired=expires not in NEVER and expires < _filetime_now(),
        password_expired=bool(computed & UF_PASSWORD_EXPIRED) or password_set == 0,
        password_set=password_set,
    )
