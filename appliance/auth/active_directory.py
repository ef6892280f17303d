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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
from appliance.auth.user_states import (
    STATE_ATTRIBUTES,
    StateFollower,
    UserState,
    first_int,
    names_of,
    state_of,
)
from appliance.auth.verdict import Outcome, Verdict, accepted, rejected, unavailable
from appliance.manifest.models import ActiveDirectory

IN_CHAIN = "1.2.840.113556.1.4.1941"  # LDAP_MATCHING_RULE_IN_CHAIN
POLICY_MAX_AGE = 3600.0  # seconds before the domain's lockout policy is read again
STATE_BATCH = 100  # users per search when reading states
T = TypeVar("T")


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
        self.follower = StateFollower(self._domain_dn, self._search_users)

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
                # Sessions end when the password changes: remember which one this login used -
                # as the recheck last read it when the user has sessions open (no search then),
                # else read now.
                stamp = self.follower.password_set(user)
                if stamp is None:
                    entries = self._search_users(connection, [user], ["pwdLastSet"])
                    stamp = first_int(entries[0].get("raw_attributes", {}) if entries else {}, "pwdLastSet")
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
        """The state of `users` (as accounts link them), read now as the service account, a
        search per STATE_BATCH users; a user missing from the answer no longer exists. Keys are
        the user names case-folded. Raises DirectoryUnreachable or ServicePasswordError."""
        wanted = {user.casefold(): user for user in users}

        def search(connection: ldap3.Connection, server: str) -> dict[str, UserState]:
            found: dict[str, UserState] = {}
            names = list(wanted.values())
            for start in range(0, len(names), STATE_BATCH):
                for entry in self._search_users(
                    connection, names[start : start + STATE_BATCH], STATE_ATTRIBUTES
                ):
                    raw = entry.get("raw_attributes", {})
                    state = state_of(raw)
                    found.update((key, state) for key in names_of(raw) if key in wanted)
            return found

        return self._as_service_account(search)

    def follow_states(self, users: list[str]) -> dict[str, UserState]:
        """As read_states, for the periodic recheck: after the first read, only the users whose
        entries changed are read again (see StateFollower)."""
        return self._as_service_account(
            lambda connection, server: self.follower.read(connection, server, users)
        )

    def _as_service_account(self, operation: Callable[[ldap3.Connection, str], T]) -> T:
        secret = self._service_password.read()
        bind_dn = self.model.bind_dn or ""

        def run(pool: ServerPool, connection: ldap3.Connection) -> T:
            result = pool.bind(connection, bind_dn, secret)
            if result.get("result") != 0:
                raise DirectoryUnreachable("service_bind_failed", pool.url, str(result.get("message")))
            return operation(connection, pool.url)

        value, _ = self._servers.run(run)
        return value

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
