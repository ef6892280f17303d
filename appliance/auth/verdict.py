"""What a directory (or a local hash) says about one login, before the service attaches the account."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"  # wrong password, unknown user, disabled, not in the group...
    UNAVAILABLE = "unavailable"  # the directory could not answer: a temporary failure, never a "no"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    cause: str  # words for the log: "ok", "bad_credentials", "locked_out", "unreachable"...
    server: str | None = None  # the server that answered (or those tried, when none did)
    detail: str = ""  # extra key=value fields for the log line, e.g. "ad_code=52e"
    # AD's pwdLastSet when the login was accepted (directories with a service account): a later
    # value means the password changed, and the sessions of this login end.
    password_set: int | None = None


def accepted(server: str | None = None) -> Verdict:
    return Verdict(Outcome.ACCEPTED, "ok", server)


def rejected(cause: str, server: str | None = None, detail: str = "") -> Verdict:
    return Verdict(Outcome.REJECTED, cause, server, detail)


def unavailable(cause: str, server: str | None = None, detail: str = "") -> Verdict:
    return Verdict(Outcome.UNAVAILABLE, cause, server, detail)
