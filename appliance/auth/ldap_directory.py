"""A generic LDAP directory (OpenLDAP...): bind with a DN template, or search then bind.

Template: `uid={user},ou=people,dc=example,dc=test` with the user name escaped as an RDN value
(RFC 4514), then a bind as that DN. Search then bind: bind as the service account (bind_dn, its
password from bind_password_file or bind_password_env; anonymously without bind_dn), search
base_dn with user_filter, the name escaped for a filter (RFC 4515), and bind as the one entry
found; none or several found is a rejection. require_group: the group's member attribute must
hold the user's DN (memberUid: the user name); direct membership only.
"""

from __future__ import annotations

import json
from pathlib import Path

import ldap3
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

from appliance.auth.bind_results import bind_failure
from appliance.auth.connections import (
    DirectoryServers,
    DirectoryUnreachable,
    ServerPool,
    ServerSettings,
    tls_context,
)
from appliance.auth.service_account import ServicePassword, ServicePasswordError
from appliance.auth.verdict import Verdict, accepted, rejected, unavailable
from appliance.manifest.models import LDAPDirectory

_GROUP_CLASSES = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))"


def directory_root(dn: str) -> str:
    """The trailing dc= part of a DN ("ou=people,dc=example,dc=test" → "dc=example,dc=test")."""
    parts = parse_dn(dn, escape=False)
    index = len(parts)
    while index > 0 and parts[index - 1][0].lower() == "dc":
        index -= 1
    return ",".join(f"{attribute}={value}" for attribute, value, _ in parts[index:]) or dn


class LDAPDirectoryClient:
    def __init__(self, name: str, model: LDAPDirectory, base_dir: Path) -> None:
        self.model = model
        self.base_dir = base_dir
        settings = ServerSettings(
            context=tls_context(base_dir / model.ca_file if model.ca_file else None),
            tls_server_name=model.tls_server_name,
            allow_plaintext=model.allow_plaintext,
            connect_timeout=model.connect_timeout,
            response_timeout=model.response_timeout,
            pool_size=model.pool_size,
        )
        self._servers = DirectoryServers(list(model.servers), settings)
        self._service_password = ServicePassword(
            base_dir / model.bind_password_file if model.bind_password_file else None, model.bind_password_env
        )
        self._group_dn: str | None = None

    def authenticate(self, user: str, password: str) -> Verdict:
        try:
            if self.model.bind_dn_template is not None:
                dn = self.model.bind_dn_template.replace("{user}", escape_rdn(user))
                verdict, _ = self._servers.run(
                    lambda pool, conn: self._bind_as(pool, conn, dn, user, password)
                )
                return verdict
            secret = self._service_password.read() if self.model.bind_dn else None
            verdict, _ = self._servers.run(
                lambda pool, conn: self._search_then_bind(pool, conn, user, password, secret)
            )
            return verdict
        except ServicePasswordError as error:
            return unavailable("service_password_unreadable", None, f"error={json.dumps(str(error))}")
        except DirectoryUnreachable as error:
            return unavailable(error.cause, error.servers, f"error={json.dumps(error.detail)}")

    def _search_then_bind(
        self, pool: ServerPool, connection: ldap3.Connection, user: str, password: str, secret: str | None
    ) -> Verdict:
        if self.model.bind_dn is not None and secret is not None:
            result = pool.bind(connection, self.model.bind_dn, secret)
        else:
            result = pool.bind_anonymously(connection)
        if result.get("result") != 0:
            return unavailable("service_bind_failed", pool.url, f"ldap_result={result.get('result')}")
        search = self.model.user_filter.replace("{user}", escape_filter_chars(user))
        connection.search(
            self.model.base_dn, search, ldap3.SUBTREE, attributes=[ldap3.NO_ATTRIBUTES], size_limit=2
        )
        code = (connection.result or {}).get("result")
        found = [r for r in connection.response or () if r.get("type") == "searchResEntry"]
        if code not in (0, 4):  # 4: sizeLimitExceeded, i.e. more than one
            return unavailable("user_search_failed", pool.url, f"ldap_result={code}")
        if not found:
            return rejected("unknown_user", pool.url)
        if len(found) > 1 or code == 4:
            return rejected("ambiguous_user", pool.url, f"entries={len(found)}")
        return self._bind_as(pool, connection, str(found[0]["dn"]), user, password)

    def _bind_as(
        self, pool: ServerPool, connection: ldap3.Connection, dn: str, user: str, password: str
    ) -> Verdict:
        result = pool.bind(connection, dn, password)
        if result.get("result") != 0:
            return bind_failure(result, pool.url)
        if self.model.require_group:
            return self._check_group(connection, dn, user, pool.url)
        return accepted(pool.url)

    def _check_group(self, connection: ldap3.Connection, dn: str, user: str, server: str) -> Verdict:
        group = self._group_dn or self._resolve_group(connection)
        if group is None:
            return unavailable("group_not_found", server, f"group={self.model.require_group}")
        attribute = self.model.group_member_attribute
        value = user if attribute.lower() == "memberuid" else dn
        connection.compare(group, attribute, value)
        code = (connection.result or {}).get("result")
        if code == 6:  # compareTrue
            return accepted(server)
        if code in (5, 16):  # compareFalse, noSuchAttribute
            return rejected("not_in_group", server)
        return unavailable("group_check_failed", server, f"ldap_result={code}")

    def _resolve_group(self, connection: ldap3.Connection) -> str | None:
        group = self.model.require_group or ""
        if "=" in group:
            self._group_dn = group
            return group
        root = directory_root(self.model.base_dn or (self.model.bind_dn_template or "").split(",", 1)[-1])
        search = f"(&{_GROUP_CLASSES}(cn={escape_filter_chars(group)}))"
        connection.search(root, search, ldap3.SUBTREE, attributes=[ldap3.NO_ATTRIBUTES], size_limit=2)
        found = [r for r in connection.response or () if r.get("type") == "searchResEntry"]
        if len(found) != 1:
            return None
        self._group_dn = str(found[0]["dn"])
        return self._group_dn

    def close(self) -> None:
        self._servers.close()
