"""What AD says of the users with open sessions, and how to keep knowing it cheaply.

A `UserState` is read from a user's entry: disabled, locked, must change the password, when the
password was set, and two moments (the account's expiry, the password's expiry) that pass without
any change to the entry - so they are kept as times and compared with the clock when asked.

`StateFollower` keeps the states of the users with sessions between rechecks. A DC numbers every
change it writes (an entry's `uSNChanged`; the DC's latest number is `highestCommittedUSN` in its
root DSE), so after one full read a recheck asks the DC's latest number; when it moved, "which
entries changed since?" and "which known users are still there?" (deleted entries are visible to
administrators only), and reads again just the users among the answers. A user is read in full
again when:
- it changed (disabled, locked, password set or reset, renamed, moved), or it is no longer found
  by its GUID (deleted: a service account does not see deleted entries among the changes);
- a domain or password-settings object changed (a policy may have moved every expiry);
- the read goes to another DC than the last one (change numbers are each DC's own), the DC's
  number went backwards (a restore), too many entries changed, or FULL_READ_EVERY has passed;
- it is new (a session opened since the last read), or its last state would end sessions (such a
  state is not kept: a user unlocked by time or by an admin is read afresh at the next login).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import ldap3
from ldap3.utils.conv import escape_bytes

# userAccountControl and msDS-User-Account-Control-Computed bits ([MS-ADTS] 2.2.16)
UF_ACCOUNTDISABLE = 0x2
UF_LOCKOUT = 0x10
UF_PASSWORD_EXPIRED = 0x800000
NEVER = (0, 0x7FFFFFFFFFFFFFFF)  # accountExpires values that mean "never"
STATE_ATTRIBUTES = [
    "objectGUID",
    "sAMAccountName",
    "userPrincipalName",
    "userAccountControl",
    "msDS-User-Account-Control-Computed",
    "msDS-UserPasswordExpiryTimeComputed",
    "accountExpires",
    "pwdLastSet",
]
FULL_READ_EVERY = 3600.0  # seconds: a full read now and then, whatever the change numbers say
EXISTENCE_BATCH = 200  # users looked for per search
MAX_CHANGES = 1000  # changed entries past which a full read is cheaper than following them
_POLICY_CLASSES = (b"domaindns", b"mspasswordsettings", b"msds-passwordsettings")


def filetime_now() -> int:
    """Now as a Windows FILETIME (100 ns since 1601), the unit of AD's times."""
    return int((time.time() + 11_644_473_600) * 10_000_000)


@dataclass(frozen=True)
class UserState:
    """What AD says of one user, for the sessions it has open."""

    disabled: bool
    locked: bool
    must_change: bool  # the password must be changed (pwdLastSet 0) or had expired when read
    password_set: int  # pwdLastSet (FILETIME)
    expires_at: int | None = None  # accountExpires (FILETIME); None: never
    password_expires_at: int | None = None  # msDS-UserPasswordExpiryTimeComputed; None: never

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= filetime_now()

    @property
    def password_expired(self) -> bool:
        return self.must_change or (
            self.password_expires_at is not None and self.password_expires_at <= filetime_now()
        )

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


def first_int(raw: dict[str, list[bytes]], name: str) -> int:
    values = raw.get(name) or [b"0"]
    try:
        return int(values[0])
    except ValueError:
        return 0


def state_of(raw: dict[str, list[bytes]]) -> UserState:
    """The state in an entry's raw attributes (STATE_ATTRIBUTES)."""
    control = first_int(raw, "userAccountControl")
    computed = first_int(raw, "msDS-User-Account-Control-Computed")
    expires = first_int(raw, "accountExpires")
    password_expires = first_int(raw, "msDS-UserPasswordExpiryTimeComputed")
    password_set = first_int(raw, "pwdLastSet")
    return UserState(
        disabled=bool(control & UF_ACCOUNTDISABLE),
        locked=bool(computed & UF_LOCKOUT),
        must_change=bool(computed & UF_PASSWORD_EXPIRED) or password_set == 0,
        password_set=password_set,
        expires_at=None if expires in NEVER else expires,
        password_expires_at=None if password_expires in NEVER else password_expires,
    )


def names_of(raw: dict[str, list[bytes]]) -> Iterable[str]:
    """The names (case-folded) an entry is known by: sAMAccountName and userPrincipalName."""
    for attribute in ("sAMAccountName", "userPrincipalName"):
        for value in raw.get(attribute, ()):
            yield value.decode("utf-8", "replace").casefold()


# Reads the entries of the given users (as accounts link them) on a bound connection.
SearchUsers = Callable[[ldap3.Connection, list[str], list[str]], list[dict[str, Any]]]


@dataclass
class _Known:
    guid: bytes
    dn: str  # case-folded
    state: UserState


class StateFollower:
    """The states of the users with sessions on one directory, followed by change numbers.
    `read` runs in one thread at a time (the revocation loop's); `password_set` in any."""

    def __init__(self, domain_dn: str, search_users: SearchUsers) -> None:
        self._domain_dn = domain_dn
        self._search_users = search_users
        self._known: dict[str, _Known] = {}
        self._since: tuple[str, int] | None = None  # (DC's URL, first change number not yet seen)
        self._full_at = -FULL_READ_EVERY
        self.full_reads = 0  # (tests, benchmarks)
        self.entries_read = 0

    def password_set(self, user: str) -> int | None:
        """The user's pwdLastSet as the last recheck read it, if it follows the user (any thread).

        A session opened with it ends at the next recheck if the password changed since that
        read: after the login (as it must), or also between that read and the login - then the
        login used the new password and the client has to log in once more (with it, as it
        just did). No session keeps a password older than its login."""
        known = self._known.get(user.casefold())
        return known.state.password_set if known is not None else None

    def read(self, connection: ldap3.Connection, server: str, users: list[str]) -> dict[str, UserState]:
        """The states of `users` (keys case-folded; a user missing no longer exists), on a
        connection bound as the service account to the DC at `server`."""
        wanted = {user.casefold(): user for user in users}
        highest = self._highest(connection)  # before any search: what changes after it, next time
        now = time.monotonic()
        follows = (
            self._since is not None
            and self._since[0] == server
            and highest is not None
            and highest + 1 >= self._since[1]
            and now - self._full_at < FULL_READ_EVERY
        )
        if not follows:
            self._known.clear()
            self._full_at = now
            self.full_reads += 1
        elif self._since is not None and highest is not None and highest + 1 > self._since[1]:
            # Something changed on this DC since the last read (if nothing did, nothing to do).
            changed = self._changed(connection, self._since[1])
            gone = self._missing(connection) if changed is not None else set()
            for key, known in list(self._known.items()):
                if changed is None or known.guid in changed or known.dn in gone:
                    del self._known[key]
            if changed is None:
                self._full_at = now
                self.full_reads += 1
        for key in [key for key in self._known if key not in wanted]:
            del self._known[key]  # no session needs it any more
        self._read([user for key, user in wanted.items() if key not in self._known], connection, wanted)
        self._since = (server, highest + 1) if highest is not None else None
        states = {key: self._known[key].state for key in wanted if key in self._known}
        for key, state in states.items():
            if state.why_revoked(None) is not None:
                del self._known[key]  # not kept: see the module's text
        return states

    def _read(self, users: list[str], connection: ldap3.Connection, wanted: dict[str, str]) -> None:
        for start in range(0, len(users), 100):
            for entry in self._search_users(connection, users[start : start + 100], STATE_ATTRIBUTES):
                raw = entry.get("raw_attributes", {})
                self.entries_read += 1
                known = _Known(
                    (raw.get("objectGUID") or [b""])[0], str(entry.get("dn", "")).casefold(), state_of(raw)
                )
                for key in names_of(raw):
                    if key in wanted:
                        self._known[key] = known

    def _missing(self, connection: ldap3.Connection) -> set[str]:
        """The DNs of known users that are no longer there. A deletion is the one change that a
        service account's change search does not show (deleted entries are visible to
        administrators only), so the known entries are looked for by GUID, asking for no
        attribute: the answer is their DNs, the least there is to decode."""
        known = {entry.guid: entry.dn for entry in self._known.values() if entry.guid}
        found: set[str] = set()
        guids = list(known)
        for start in range(0, len(guids), EXISTENCE_BATCH):
            batch = guids[start : start + EXISTENCE_BATCH]
            terms = "".join(f"(objectGUID={escape_bytes(guid)})" for guid in batch)
            connection.search(
                self._domain_dn,
                f"(|{terms})",
                ldap3.SUBTREE,
                attributes=[ldap3.NO_ATTRIBUTES],
                size_limit=len(batch),
            )
            code = (connection.result or {}).get("result")
            if code not in (0, 4):
                return set(known.values())  # unsure: read them all again
            for entry in connection.response or ():
                if entry.get("type") == "searchResEntry":
                    self.entries_read += 1
                    found.add(str(entry.get("dn", "")).casefold())
        return set(known.values()) - found

    @staticmethod
    def _highest(connection: ldap3.Connection) -> int | None:
        connection.search("", "(objectClass=*)", ldap3.BASE, attributes=["highestCommittedUSN"])
        for entry in connection.response or ():
            value = first_int(entry.get("raw_attributes") or {}, "highestCommittedUSN")
            if value > 0:
                return value
        return None

    def _changed(self, connection: ldap3.Connection, since: int) -> set[bytes] | None:
        """The GUIDs of the users changed since change number `since`;
        None when a full read is due instead (a policy object changed, too many changes, an error)."""
        connection.search(
            self._domain_dn,
            f"(&(uSNChanged>={since})(|(objectClass=user)(objectClass=domainDNS)"
            "(objectClass=msDS-PasswordSettings)))",
            ldap3.SUBTREE,
            attributes=["objectGUID", "objectClass"],
            size_limit=MAX_CHANGES,
        )
        if (connection.result or {}).get("result") != 0:
            return None  # size limit exceeded, or the search failed
        guids: set[bytes] = set()
        for entry in connection.response or ():
            if entry.get("type") != "searchResEntry":
                continue
            raw = entry.get("raw_attributes") or {}
            self.entries_read += 1
            if any(value.lower() in _POLICY_CLASSES for value in raw.get("objectClass", ())):
                return None
            guids.update(raw.get("objectGUID") or ())
        return guids
