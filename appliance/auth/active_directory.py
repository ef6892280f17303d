"""Active Directory: a simple bind as the linked user over TLS, AD's `data` code in words.

A failed bind is LDAP result 49 with a message such as
`80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1`;
the `data` code says why (wrong password, disabled, expired, locked...). AD answers 52e both for
a wrong password and an unknown user, and counts every failed bind toward the lockout threshold.

`require_group` is checked with the user's own bind, nested membership included, in one search
with the LDAP_MATCHING_RULE_IN_CHAIN rule (1.2.840.113556.1.4.1941).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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
from appliance.auth.verdict import Verdict, accepted, rejected, unavailable
from appliance.manifest.models import ActiveDirectory

IN_CHAIN = "1.2.840.113556.1.4.1941"  # LDAP_MATCHING_RULE_IN_CHAIN
POLICY_MAX_AGE = 3600.0  # seconds before the domain's lockout policy is read again


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
            if self.model.require_group:
                return self._check_group(connection, user, pool.url)
            return accepted(pool.url)

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
