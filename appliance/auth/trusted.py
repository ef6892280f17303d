"""Trusted logins (`[trusted_logins.NAME]`): a service such as webmail logs in *as* a user.

Roundcube authenticates the user itself (Kerberos in the web server), then logs in to IMAP and
SMTP submission with SASL PLAIN: authzid = the user's address, authcid = the service's own
account, password = the service's (RFC 4616 §2). Such a login is allowed only when
- the authcid names an account that a `[trusted_logins]` rule makes a service;
- it comes over IMAP or SMTP submission (never POP3, never the MX listener);
- the client address is in the rule's `networks`;
- the authzid names an account of one of the rule's `domains`, enabled (the account and its
  domain), by any of its own addresses;
and then the service's password is checked as any login's is. Every refusal but the last is
decided before any directory is asked (no lockout counter moves), and looks like a wrong
password to the client; the log line names both identities (`login=` the service, `authzid=`
the user), the rule (`trusted_login=`) and the account opened (`account=`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.snapshot import AccountEntry, Snapshot, TrustedLoginRule

# (protocol, listener) pairs where a service may act as a user: IMAP and SMTP submission.
_ALLOWED = {("imap", "imap"), ("imap", "imaps"), ("smtp", "submission"), ("smtp", "submissions")}


@dataclass(frozen=True)
class Decision:
    rule: TrustedLoginRule | None  # None: the login is no trusted login (the authzid rule applies)
    account: AccountEntry | None  # the user's account, when the rule allows it
    cause: str = "ok"  # why not, for the log


def decide(
    snapshot: Snapshot, authcid: str, authzid: str, *, protocol: str, listener: str, client: str
) -> Decision:
    """Whether `authcid` may act as `authzid` here under a [trusted_logins] rule (see above)."""
    service = snapshot.account_by_address(authcid)
    rule = snapshot.trusted_login(service) if service is not None else None
    if rule is None:
        return Decision(None, None, "authzid_not_authcid")
    if (protocol, listener) not in _ALLOWED:
        return Decision(rule, None, "trusted_login_protocol")
    if not rule.allows_client(client):
        return Decision(rule, None, "trusted_login_network")
    account = snapshot.account_by_address(authzid)
    if account is None:
        return Decision(rule, None, "unknown_address")
    if account.domain not in rule.domains:
        return Decision(rule, None, "trusted_login_domain")
    if not account.enabled:
        return Decision(rule, None, "disabled_in_manifest")
    return Decision(rule, account)
