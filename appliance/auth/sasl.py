"""SASL (RFC 4422) for SMTP AUTH, POP3 AUTH and IMAP AUTHENTICATE: the mechanisms and the exchange.

A mechanism is an object fed the client's responses one at a time; each step returns the next
challenge or, once the exchange is complete, the credentials. That shape fits a multi-step
mechanism (GSSAPI, RFC 4752, will return a principal instead of a password). The protocols only
do the wire framing: the continuation prefix ("334 ", "+ "), reading the line, what a "*"
(cancel) or "=" (empty initial response) means there, and the reply to each `SASLError`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

MAX_RESPONSE_LINE = 8192  # octets of one base64 response line (a long AD password fits)


class SASLError(Exception):
    """The exchange ends without credentials; `cause` says why in a word for the protocol's reply:
    bad_base64, malformed, not_utf8, empty_authcid, cancelled, line_too_long."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


@dataclass(frozen=True)
class Credentials:
    """What a password mechanism yields: who logs in (authcid), as whom (authzid, "" for
    themselves) and the password, which never appears in a repr or a log."""

    authcid: str
    password: str = field(repr=False)
    authzid: str = ""


class Mechanism(Protocol):
    name: ClassVar[str]

    def step(self, response: bytes | None) -> bytes | Credentials:
        """Feed the client's next response (None: the client sent no initial response) and get
        the next challenge (raw octets; the protocol base64-encodes them) or the credentials.
        Raises SASLError for a response that cannot be understood."""
        ...


def _text(octets: bytes) -> str:
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("not_utf8") from None


class Plain:
    """RFC 4616: one message, [authzid] NUL authcid NUL passwd, in UTF-8."""

    name: ClassVar[str] = "PLAIN"

    def step(self, response: bytes | None) -> bytes | Credentials:
        if response is None:
            return b""  # RFC 4422 §5: an empty challenge asks for the message
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise SASLError("malformed")
        authzid, authcid, password = (_text(part) for part in parts)
        if not authcid:
            raise SASLError("empty_authcid")  # RFC 4616 §2: authcid = 1*SAFE
        # An empty password is not refused here: the auth service rejects it (empty_password) and
        # counts the failure like any wrong password.
        return Credentials(authcid, password, authzid)


class Login:
    """The LOGIN mechanism (draft-murchison-sasl-login): "Username:", then "Password:". The two
    answers are decoded once both are in, so a bad user name is still asked for its password."""

    name: ClassVar[str] = "LOGIN"

    def __init__(self) -> None:
        self._user: bytes | None = None

    def step(self, response: bytes | None) -> bytes | Credentials:
        if self._user is None:
            if response is None:
                return b"Username:"
            self._user = response
            return b"Password:"
        if response is None:
            raise SASLError("malformed")
        authcid, password = _text(self._user), _text(response)
        if not authcid:
            raise SASLError("empty_authcid")
        return Credentials(authcid, password)


MECHANISMS: dict[str, type[Plain] | type[Login]] = {"PLAIN": Plain, "LOGIN": Login}


def mechanism(name: str, offered: Iterable[str]) -> Mechanism | None:
    """A fresh mechanism object for `name` (any case) when the protocol offers it, else None."""
    name = name.upper()
    if name not in offered:
        return None
    kind = MECHANISMS.get(name)
    return kind() if kind is not None else None


def decode(text: str) -> bytes:
    """A response's octets from its base64 (RFC 4648 §4, no spaces, padding required)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("bad_base64") from None


async def exchange(
    mechanism: Mechanism, initial: str | None, ask: Callable[[str], Awaitable[str]]
) -> Credentials:
    """Run one exchange to its credentials. `initial` is the initial response as base64 text
    (RFC 4959, RFC 4954 §4, RFC 5034 §4; "" for an empty one, None when none was sent). `ask`
    sends a base64 challenge in the protocol's framing and returns the client's answer line,
    stripped; it may raise SASLError itself (a line over the limit). "*" cancels (RFC 4422 §3.5).
    """
    response = None if initial is None else decode(initial)
    while True:
        result = mechanism.step(response)
        if isinstance(result, Credentials):
            return result
        answer = await ask(base64.b64encode(result).decode("ascii"))
        if answer == "*":
            raise SASLError("cancelled")
        response = decode(answer)
