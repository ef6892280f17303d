"""SASL (RFC 4422) for SMTP AUTH, POP3 AUTH and IMAP AUTHENTICATE: the mechanisms and the exchange.

A mechanism is an object fed the client's responses one at a time; each step returns the next
challenge or, once the exchange is complete, the credentials. That shape fits a multi-step
mechanism: GSSAPI (RFC 4752) returns a Kerberos principal instead of a password. The protocols only
do the wire framing: the continuation prefix ("334 ", "+ "), reading the line, what a "*"
(cancel) or "=" (empty initial response) means there, and the reply to each `SASLError`.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import gssapi
import gssapi.exceptions

# Octets of one base64 response line: a long AD password fits, and so does a Kerberos ticket
# whose PAC lists many groups (Windows' MaxTokenSize is 48,000 octets, 64,000 in base64).
MAX_RESPONSE_LINE = 65536


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

    def step(self, response: bytes | None) -> bytes | Credentials | Principal:
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


@dataclass(frozen=True)
class Principal:
    """What GSSAPI yields: the Kerberos principal the client proved it is (`user@REALM`), as
    whom it asks to act (authzid, "" for the account linked to it), or why the proof failed
    (`failure`: words for the log; the client is told only that the login failed)."""

    name: str
    authzid: str = ""
    failure: str = ""


@dataclass(frozen=True)
class Acceptor:
    """One service principal the server answers for (`imap/mail.example.test@CLOUDTECH.LOCAL`)
    and the keytab that holds its keys."""

    principal: str
    keytab: str
    # Where the authenticators already seen are kept (RFC 4120 §3.2.3: a replayed one is
    # refused); the server's own, not MIT's default in TMPDIR or /var/tmp, which a sandboxed
    # daemon may not write.
    replay_cache: str = ""


# RFC 4752 §3.3: the security layers; only "no security layer" is offered (TLS protects the
# connection), with a maximum buffer size of 0.
_NO_SECURITY_LAYER = 1


class GSSAPI:
    """RFC 4752 (server side): GSS-API context establishment with the client's tokens, then one
    wrapped message offering the security layers, whose wrapped answer names the chosen layer
    and the authzid. `step` makes GSS-API calls that may read the keytab and the replay cache:
    the protocols run it off the event loop (`blocking`)."""

    name: ClassVar[str] = "GSSAPI"
    blocking: ClassVar[bool] = True

    def __init__(self, acceptors: Iterable[Acceptor]) -> None:
        self._acceptors = tuple(acceptors)
        self._context: gssapi.SecurityContext | None = None
        self._layers_sent = False

    def step(self, response: bytes | None) -> bytes | Principal:
        try:
            return self._step(response)
        except gssapi.exceptions.GSSError as error:
            return Principal("", failure=_gss_failure(error))

    def _step(self, response: bytes | None) -> bytes | Principal:
        context = self._context
        if context is None:
            if response is None:
                return b""  # RFC 4422 §5: an empty challenge asks for the first token
            if not response:
                raise SASLError("malformed")
            context, token = self._accept_first(response)
            self._context = context
        elif self._layers_sent:
            return self._chosen_layer(context, response or b"")
        elif not context.complete:
            token = context.step(response or b"")
        else:
            # RFC 4752 §3.1: the client's (empty) answer to the server's last context token.
            token = None
        if not context.complete:
            if not token:
                raise SASLError("malformed")
            return token
        if token:
            return token
        self._layers_sent = True
        # RFC 4752 §3.1: octet 1 the layers the server supports, octets 2-4 the largest buffer.
        offer = bytes((_NO_SECURITY_LAYER, 0, 0, 0))
        return bytes(context.wrap(offer, False).message)

    def _accept_first(self, token: bytes) -> tuple[gssapi.SecurityContext, bytes | None]:
        """A context accepting `token` as one of the acceptors (one per directory's realm)."""
        failure: gssapi.exceptions.GSSError | None = None
        for acceptor in self._acceptors:
            name = gssapi.Name(acceptor.principal, gssapi.NameType.kerberos_principal)
            try:
                store: dict[bytes | str, bytes | str] = {"keytab": acceptor.keytab}
                if acceptor.replay_cache:
                    store["rcache"] = f"file2:{acceptor.replay_cache}"
                credentials = gssapi.Credentials(name=name, usage="accept", store=store)
                context = gssapi.SecurityContext(creds=credentials, usage="accept")
                answer = context.step(token)
            except gssapi.exceptions.GSSError as error:
                failure = error
                continue
            return context, answer
        if failure is None:
            raise SASLError("malformed")  # no acceptor: GSSAPI is not offered then
        raise failure

    def _chosen_layer(self, context: gssapi.SecurityContext, response: bytes) -> Principal:
        message = bytes(context.unwrap(response).message)
        if len(message) < 4:
            raise SASLError("malformed")
        if message[0] != _NO_SECURITY_LAYER:
            raise SASLError("malformed")  # RFC 4752 §3.1: a layer the server did not offer
        return Principal(str(context.initiator_name), _text(message[4:]))


def _gss_failure(error: gssapi.exceptions.GSSError) -> str:
    """The GSS-API error in one line of words, for the log (e.g. "Request is a replay")."""
    words = " ".join(str(error.gen_message()).split()) if hasattr(error, "gen_message") else ""
    return words or type(error).__name__


MECHANISMS: dict[str, type[Plain] | type[Login]] = {"PLAIN": Plain, "LOGIN": Login}


def mechanism(name: str, offered: Iterable[str], acceptors: Iterable[Acceptor] = ()) -> Mechanism | None:
    """A fresh mechanism object for `name` (any case) when the protocol offers it, else None.
    `acceptors`: the service principals GSSAPI answers for (none: GSSAPI is never built)."""
    name = name.upper()
    if name not in offered:
        return None
    if name == GSSAPI.name:
        acceptors = tuple(acceptors)
        return GSSAPI(acceptors) if acceptors else None
    kind = MECHANISMS.get(name)
    return kind() if kind is not None else None


def decode(text: str) -> bytes:
    """A response's octets from its base64 (RFC 4648 §4, no spaces, padding required)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("bad_base64") from None


Blocking = Callable[
    [Callable[[], "bytes | Credentials | Principal"]], Awaitable["bytes | Credentials | Principal"]
]


async def exchange(
    mechanism: Mechanism,
    initial: str | None,
    ask: Callable[[str], Awaitable[str]],
    run_blocking: Blocking | None = None,
) -> Credentials | Principal:
    """Run one exchange to its credentials. `initial` is the initial response as base64 text
    (RFC 4959, RFC 4954 §4, RFC 5034 §4; "" for an empty one, None when none was sent). `ask`
    sends a base64 challenge in the protocol's framing and returns the client's answer line,
    stripped; it may raise SASLError itself (a line over the limit). "*" cancels (RFC 4422 §3.5).
    A mechanism that says it is `blocking` (GSSAPI) has its steps run by `run_blocking`.
    """
    response = None if initial is None else decode(initial)
    blocking = getattr(mechanism, "blocking", False) and run_blocking is not None
    while True:
        if blocking and run_blocking is not None:
            result = await run_blocking(functools.partial(mechanism.step, response))
        else:
            result = mechanism.step(response)
        if isinstance(result, Credentials | Principal):
            return result
        answer = await ask(base64.b64encode(result).decode("ascii"))
        if answer == "*":
            raise SASLError("cancelled")
        response = decode(answer)
