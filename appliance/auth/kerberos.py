"""Kerberos single sign-on (SASL GSSAPI, RFC 4752): which account a proven principal logs in to.

The GSSAPI mechanism (auth/sasl.py) proves that the client holds a service ticket for
`imap/<hostname>`, `pop/<hostname>` or `smtp/<hostname>` issued to `user@REALM`. Here that
principal becomes an account: the realm names an active-directory directory with a keytab
(`kerberos_realm`, default its key upper-cased), and the user part names the AD user that
accounts link to (`active_directory = { domain, user }`, compared without case, as AD compares
sAMAccountName). The KDC has already refused a disabled, locked or expired AD user; sessions
then follow the directory as any AD login's do (auth/revocation.py).

- no linked account → rejected (`principal_not_linked`);
- an authzid must name one of the accounts linked to that user (any of its addresses, as logins
  are compared), else rejected (`authzid_not_principal`); without one, the first linked account
  in manifest order;
- a disabled account or domain → rejected (`disabled_in_manifest`), as for a password login.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.auth.sasl import Acceptor, Principal
from appliance.auth.verdict import Verdict, accepted, rejected

if TYPE_CHECKING:
    from appliance.snapshot import AccountEntry, Snapshot

# The GSS-API service name of each protocol's principal (IANA "GSSAPI/Kerberos/SASL Service
# Names": imap, pop, smtp).
SERVICE_NAMES = {"imap": "imap", "pop3": "pop", "smtp": "smtp"}


def acceptors(snapshot: Snapshot, protocol: str) -> tuple[Acceptor, ...]:
    """The service principals a `protocol` session answers for: one per directory with a keytab."""
    service = SERVICE_NAMES[protocol]
    replay_cache = str(snapshot.data_dir / "state" / "kerberos.rcache2")
    return tuple(
        Acceptor(f"{service}/{snapshot.hostname}@{entry.realm}", str(entry.keytab), replay_cache)
        for entry in snapshot.kerberos
    )


def linked_account(
    snapshot: Snapshot, principal: Principal
) -> tuple[Verdict, AccountEntry | None, str | None]:
    """(the verdict, the account when accepted, the directory asked) for a GSSAPI exchange's end."""
    if principal.failure:
        return rejected("kerberos_failed", "kerberos", f"gss={_quoted(principal.failure)}"), None, None
    user, _, realm = principal.name.rpartition("@")
    kerberos = snapshot.kerberos_realm(realm)
    if kerberos is None or not user:
        return rejected("unknown_realm", "kerberos"), None, None
    directory = kerberos.directory
    linked = snapshot.accounts_linked_to(directory, user)
    if not linked:
        return rejected("principal_not_linked", "kerberos"), None, directory
    entry: AccountEntry | None = linked[0]
    if principal.authzid:
        wanted = snapshot.account_by_address(principal.authzid)
        entry = next((e for e in linked if wanted is not None and e.address == wanted.address), None)
        if entry is None:
            return rejected("authzid_not_principal", "kerberos"), None, directory
    assert entry is not None
    if not entry.enabled:
        return rejected("disabled_in_manifest", "kerberos"), None, directory
    return accepted("kerberos"), entry, directory


def _quoted(words: str) -> str:
    return '"' + words.replace('"', "'")[:200] + '"'
