"""What a directory (or a local hash) says about one login, before the service attaches the account."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"  # wrong password, unknown user, disabled, not in the group...
    UNAVAILABLE = "unavailable"  # the directory could not answer: a temporary failure, never a "no"


class Reason(enum.Enum):
    """Why a login with the right password is still refused, safe to tell the client: the
    directory says it only after checking the password (AD: 532, 773, 701 come only with the
    right one; a wrong password gets 52e whatever the account's state), so telling it reveals
    nothing to someone who guesses. Wrong password, unknown user, disabled and locked-out
    accounts never get a reason: they stay indistinguishable."""

    PASSWORD_EXPIRED = "password_expired"
    MUST_CHANGE_PASSWORD = "must_change_password"
    ACCOUNT_EXPIRED = "account_expired"

    @property
    def text(self) -> str:
        """Short words for the user; each protocol adds its code (IMAP [EXPIRED], POP3 [AUTH]...)."""
        return _REASON_TEXTS[self]


_REASON_TEXTS = {
    Reason.PASSWORD_EXPIRED: "Your password has expired; change it and log in again",
    Reason.MUST_CHANGE_PASSWORD: "Your password must be changed; change it and log in again",
    Reason.ACCOUNT_EXPIRED: "Your account has expired; ask your administrator to renew it",
}


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    cause: str  # words for the log: "ok", "bad_credentials", "locked_out", "unreachable"...
    server: str | None = None  # the server that answered (or those tried, when none did)
    detail: str = ""  # extra key=value fields for the log line, e.g. "ad_code=52e"
    # AD's pwdLastSet when the login was accepted (directories with a service account): a later
    # value means the password changed, and the sessions of this login end.
    password_set: int | None = None
    # Set only when the directory said the password was right but the login cannot go on now:
    # the one thing about a refusal that the client may be told (RFC 5530).
    reason: Reason | None = None


def accepted(server: str | None = None) -> Verdict:
    return Verdict(Outcome.ACCEPTED, "ok", server)


def rejected(
    cause: str, server: str | None = None, detail: str = "", reason: Reason | None = None
) -> Verdict:
    return Verdict(Outcome.REJECTED, cause, server, detail, reason=reason)


def unavailable(cause: str, server: str | None = None, detail: str = "") -> Verdict:
    return Verdict(Outcome.UNAVAILABLE, cause, server, detail)
