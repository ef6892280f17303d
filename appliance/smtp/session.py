"""One SMTP session (RFC 5321) over the shared transport (`appliance.connection`): a state machine
(INITIAL → GREETED → TRANSACTION) with one method per command, found through a table that also
says in which states the command is valid and what is answered outside them.

Every command asks `services.holder.current` for the snapshot in force, so a reload applies to
the next command. The disk is only touched in the executor (`MailStore.deliver`). Replies come
from replies.py; the mail transaction's rules and delivery are in transaction.py.
"""

from __future__ import annotations

import enum
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from appliance.auth import sasl
from appliance.auth.attempts import Attempts, Refusal, admission
from appliance.auth.service import Outcome, log_field
from appliance.connection import (
    TLS_HANDSHAKE_TIMEOUT,
    Connection,
    ConnectionClosed,
    LineTooLong,
    handshake_failure,
)
from appliance.smtp import replies
from appliance.smtp.data import DataState, read_data
from appliance.smtp.transaction import MAX_HELO_LENGTH, Greeting, Intake, Transaction

if TYPE_CHECKING:
    from appliance.context import ListenerSpec, Services
    from appliance.snapshot import AccountEntry, Snapshot

log = logging.getLogger("appliance.smtp")

SMTP_LISTENERS = ("smtp", "submission", "submissions")
_REFUSALS = {
    Refusal.BANNED: replies.BANNED,
    Refusal.MAX_CONNECTIONS: replies.TOO_MANY_CONNECTIONS,
    Refusal.MAX_CONNECTIONS_PER_CLIENT: replies.TOO_MANY_FROM_CLIENT,
}
MECHANISMS = ("PLAIN", "LOGIN")  # RFC 4954: offered in EHLO as "AUTH PLAIN LOGIN"
_SASL_ERRORS = {  # anything else is a malformed response
    "bad_base64": replies.AUTH_BAD_BASE64,
    "cancelled": replies.AUTH_CANCELLED,
    "line_too_long": replies.LINE_TOO_LONG,
}
MAX_UNRECOGNIZED = 5  # unknown commands per connection; the fifth gets 421 and the connection ends


class State(enum.Enum):
    INITIAL = "initial"  # connected (again, after STARTTLS): HELO or EHLO comes first
    GREETED = "greeted"  # after HELO/EHLO, outside a mail transaction
    TRANSACTION = "transaction"  # after MAIL, until the end of DATA or RSET (RFC 5321 §3.3)


Handler = Callable[["Session", str | None], Awaitable[None]]
COMMANDS: dict[str, tuple[frozenset[State], str, Handler]] = {}
ANY = (State.INITIAL, State.GREETED, State.TRANSACTION)
GREETED, TRANSACTION = State.GREETED, State.TRANSACTION


def command(name: str, *states: State, refusal: str = replies.NEED_HELO) -> Callable[[Handler], Handler]:
    """Register a method as the handler of `name` in `states`; in other states `refusal` is
    the reply."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = (frozenset(states), refusal, handler)
        return handler

    return register


class Session:
    def __init__(self, services: Services, listener: ListenerSpec, connection: Connection) -> None:
        self.services = services
        self.listener = listener
        self.connection = connection
        self.peer_ip = connection.peer
        self.intake = Intake(services, listener, connection.peer)
        self.state = State.INITIAL
        self.helo = ""  # what HELO/EHLO named
        self.extended = False  # EHLO rather than HELO
        self.account: AccountEntry | None = None
        # Revoked logins are noticed at the next command (`dispatch`), and asked about at MAIL.
        self.logins = Attempts(
            services.auth,
            services.holder,
            protocol="smtp",
            listener=listener.name,
            client=connection.peer,
            revoke=lambda reason: None,
        )
        self.unrecognized = 0
        self.delivered = 0
        self.tx: Transaction | None = None
        self.closing = False

    # -- replies ---------------------------------------------------------------------------------
    def reply(self, text: str) -> None:
        """One reply line; RFC 5321 §4.2: printable text only, whatever the client sent."""
        self.connection.write(replies.printable(text).encode("utf-8", "replace") + b"\r\n")

    def _reply_lines(self, code: str, lines: list[str]) -> None:
        """A multi-line reply ("250-a", "250 b", RFC 5321 §4.2.1) in one write."""
        last = len(lines) - 1
        text = "".join(f"{code}{' ' if n == last else '-'}{line}\r\n" for n, line in enumerate(lines))
        self.connection.write(text.encode("utf-8", "replace"))

    def _hostname(self) -> str:
        return self.services.holder.current.hostname

    # -- the session's life ------------------------------------------------------------------------
    async def run(self) -> None:
        snapshot = self.services.holder.current
        if not self._admit(snapshot):
            return
        try:
            # RFC 5321 §4.2: the greeting; RFC 2034 §3: it carries no enhanced code.
            self.reply(replies.GREETING.format(host=snapshot.hostname))
            await self._serve()
        except TimeoutError:
            # RFC 5321 §4.5.3.2: the server may close an idle connection; say why first.
            log.info("timeout client=%s listener=%s", self.peer_ip, self.listener.name)
            try:
                self.reply(replies.TIMEOUT.format(host=self._hostname()))
            except ConnectionClosed:
                pass
        except ConnectionClosed:
            pass  # the client went away (or the session closed the connection)
        finally:
            self.logins.close()
            self.connection.close()
            self.services.sessions.closed(self.listener.name, self.peer_ip)
            log.info(
                "disconnect client=%s listener=%s messages=%d",
                self.peer_ip,
                self.listener.name,
                self.delivered,
            )

    def _admit(self, snapshot: Snapshot) -> bool:
        """Connection admission (the login path's rule): a banned address or one over a
        connection limit gets 421."""
        services, name = self.services, self.listener.name
        refused = admission(
            snapshot,
            services.sessions,
            services.autoban,
            name=name,
            client=self.peer_ip,
            family=SMTP_LISTENERS,
        )
        if refused is not None:
            log.info("refused client=%s listener=%s reason=%s", self.peer_ip, name, refused.value)
            try:
                self.reply(_REFUSALS[refused].format(host=snapshot.hostname))
            except ConnectionClosed:
                pass
            self.connection.close()
            return False
        services.sessions.opened(name, self.peer_ip)
        log.info("connect client=%s listener=%s", self.peer_ip, name)
        return True

    async def _serve(self) -> None:
        connection = self.connection
        while not self.closing:
            snapshot = self.services.holder.current
            try:
                # RFC 5321 §4.5.3.1.4: bounded; `max_line_length` counts the line with its CR.
                line = await connection.readline(snapshot.max_line_length, snapshot.command_timeout)
            except LineTooLong:
                self.reply(replies.COMMAND_TOO_LONG)  # the next line reads cleanly
                continue
            try:
                await self.dispatch(line.rstrip(b"\r"))
            except (ConnectionClosed, TimeoutError):
                raise
            except Exception as error:
                log.error("smtp internal error error=%s", log_field(repr(error)))
                self.reply(replies.LOCAL_ERROR)
            await connection.drain()

    async def dispatch(self, line: bytes) -> None:
        if self.logins.revoked is not None:
            self._revoked(self.logins.revoked)
            return
        if not line:
            self.reply(replies.BAD_SYNTAX)
            return
        keyword, _, argument = line.partition(b" ")
        try:
            name = keyword.upper().decode("ascii")
        except UnicodeDecodeError:
            self.reply(replies.BAD_SYNTAX)
            return
        entry = COMMANDS.get(name)
        if entry is None:
            self.unrecognized += 1
            if self.unrecognized >= MAX_UNRECOGNIZED:
                # RFC 5321 §3.8: the server closes the connection only after QUIT or with a 421.
                log.info(
                    "closed client=%s listener=%s reason=too_many_unrecognized",
                    self.peer_ip,
                    self.listener.name,
                )
                self.reply(replies.TOO_MANY_UNRECOGNIZED.format(host=self._hostname()))
                self._close()
                return
            self.reply(replies.UNRECOGNIZED.format(command=name))
            return
        states, refusal, handler = entry
        if self.state not in states:
            self.reply(refusal)
            return
        # Arguments may be UTF-8 (RFC 6531) or anything else: kept byte for byte as surrogates.
        arg = argument.strip().decode("utf-8", "surrogateescape") if argument else None
        await handler(self, arg)

    def _close(self) -> None:
        self.closing = True
        self.connection.close()

    def _revoked(self, reason: str) -> None:
        """The login no longer holds (auth/revocation.py): nothing more is accepted; 421 and close."""
        log.info("closed client=%s listener=%s reason=revoked:%s", self.peer_ip, self.listener.name, reason)
        self.reply(replies.LOGIN_REVOKED.format(host=self._hostname()))
        self._close()

    def _reset(self, state: State) -> None:
        self.tx = None
        self.state = state

    # -- greetings (RFC 5321 §4.1.1.1) -------------------------------------------------------------
    @command("EHLO", *ANY)
    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not hostname:
            self.reply(replies.EHLO_SYNTAX)
            return
        snapshot = self.services.holder.current
        self._reset(State.GREETED)
        self.extended = True
        self.helo = hostname[:MAX_HELO_LENGTH]
        # RFC 1870 (SIZE), RFC 6152, RFC 6531, RFC 2034, RFC 2920, RFC 3207.
        keywords = [
            snapshot.hostname,
            "PIPELINING",
            f"SIZE {snapshot.max_message_size()}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        if not self.connection.is_tls:
            keywords.append("STARTTLS")
        if self._auth_allowed(snapshot):
            # RFC 4954 §4: only when it may be used (GSSAPI too, RFC 4752: only with a keytab)
            keywords.append(" ".join(("AUTH", *self.logins.offered(MECHANISMS))))
        self._reply_lines("250", keywords)

    @command("HELO", *ANY)
    async def smtp_HELO(self, hostname: str | None) -> None:
        if not hostname:
            self.reply(replies.HELO_SYNTAX)
            return
        self._reset(State.GREETED)
        self.extended = False
        self.helo = hostname[:MAX_HELO_LENGTH]
        self.reply(f"250 {self._hostname()}")

    # -- commands valid in any state (RFC 5321 §4.1.1.5-§4.1.1.10) ----------------------------------
    @command("RSET", *ANY)
    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            self.reply(replies.RSET_SYNTAX)
            return
        self._reset(State.INITIAL if self.state is State.INITIAL else State.GREETED)
        self.reply(replies.OK)

    @command("NOOP", *ANY)
    async def smtp_NOOP(self, arg: str | None) -> None:
        self.reply(replies.OK)  # RFC 5321 §4.1.1.9: any argument is ignored

    @command("QUIT", *ANY)
    async def smtp_QUIT(self, arg: str | None) -> None:
        if arg:
            self.reply(replies.QUIT_SYNTAX)
            return
        self.reply(replies.BYE)
        self._close()

    @command("VRFY", *ANY)
    async def smtp_VRFY(self, arg: str | None) -> None:
        # RFC 5321 §3.5.3: 252, neither confirming nor denying that the user exists.
        if not arg:
            self.reply(replies.VRFY_SYNTAX)
        elif _looks_like_address(arg):
            self.reply(replies.CANNOT_VRFY)
        else:
            self.reply(replies.VRFY_UNPARSED.format(argument=arg))

    @command("EXPN", *ANY)
    async def smtp_EXPN(self, arg: str | None) -> None:
        self.reply(replies.EXPN_NOT_IMPLEMENTED)  # RFC 5321 §3.5.2: mailing lists stay private

    @command("HELP", *ANY)
    async def smtp_HELP(self, arg: str | None) -> None:
        if not arg:
            self.reply(replies.HELP)
            return
        syntax = replies.HELP_SYNTAX.get(arg.upper())
        self.reply(f"250 2.0.0 Syntax: {syntax}" if syntax else replies.HELP_UNKNOWN)

    # -- STARTTLS (RFC 3207) ---------------------------------------------------------------------
    @command("STARTTLS", *ANY)
    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if arg:
            self.reply(replies.STARTTLS_SYNTAX)
            return
        if self.connection.is_tls:
            self.reply(replies.TLS_ACTIVE)
            return
        try:
            # The certificate in force now, so a renewed certificate applies to new handshakes.
            context = self.services.tls.server_context()
        except (OSError, ValueError, ssl.SSLError) as error:
            log.error("starttls unavailable client=%s error=%s", self.peer_ip, log_field(str(error)))
            self.reply(replies.TLS_UNAVAILABLE)
            return
        self.reply(replies.STARTTLS_READY)
        try:
            # RFC 3207 §4.2 / CVE-2011-0411: what the client sent after STARTTLS, before the
            # handshake, is thrown away by the transport.
            await self.connection.start_tls(context, TLS_HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
            log.info("tls handshake failed client=%s %s", self.peer_ip, handshake_failure(error))
            self.connection.abort()
            raise ConnectionClosed() from None
        # RFC 3207 §4.2: after the handshake, forget everything learnt before it (AUTH too).
        self._reset(State.INITIAL)
        self.helo, self.extended, self.account = "", False, None
        self.logins.close()  # the next AUTH is a new login

    # -- AUTH (RFC 4954, PLAIN RFC 4616, LOGIN, GSSAPI RFC 4752) -------------------------------------------------------
    def _auth_allowed(self, snapshot: Snapshot) -> bool:
        return self.connection.is_tls or snapshot.allow_plaintext_auth

    @command("AUTH", GREETED, TRANSACTION, refusal=replies.NEED_EHLO)
    async def smtp_AUTH(self, arg: str | None) -> None:
        snapshot = self.services.holder.current
        if not self._auth_allowed(snapshot):
            self.reply(replies.AUTH_NEEDS_TLS)
            return
        if self.account is not None:
            self.reply(replies.AUTH_ALREADY)
            return
        if self.tx is not None:
            self.reply(replies.AUTH_IN_TRANSACTION)
            return
        parts = (arg or "").split()
        if not 1 <= len(parts) <= 2:
            self.reply(replies.AUTH_SYNTAX)
            return
        mechanism = self.logins.mechanism(parts[0], self.logins.offered(MECHANISMS))
        if mechanism is None:
            self.reply(replies.AUTH_UNKNOWN_MECHANISM)
            return
        # RFC 4954 §4: "=" is an empty initial response.
        initial = None if len(parts) == 1 else "" if parts[1] == "=" else parts[1]
        try:
            credentials = await self.logins.exchange(mechanism, initial, self._sasl_answer)
        except sasl.SASLError as error:
            self.reply(_SASL_ERRORS.get(error.cause, replies.AUTH_BAD_PLAIN))
            return
        attempt = await self.logins.login(credentials, mechanism.name, tls=self.connection.is_tls)
        del credentials
        if attempt.outcome is Outcome.ACCEPTED:
            self.account = attempt.account
            self.reply(replies.AUTH_OK)
        elif attempt.outcome is Outcome.UNAVAILABLE:
            self.reply(replies.AUTH_UNAVAILABLE)
        elif attempt.close:
            self.reply(replies.AUTH_TOO_MANY_FAILURES.format(host=self._hostname()))
            self._close()
        elif attempt.reason is not None:  # the password was right: say why
            self.reply(replies.AUTH_REFUSED_BECAUSE[attempt.reason])
        else:
            self.reply(replies.AUTH_FAILED)  # RFC 4954 §6: the same reply whatever the cause

    async def _sasl_answer(self, challenge: str) -> str:
        """RFC 4954 §4: "334 " and the base64 challenge; the client's line back ("=" is empty)."""
        self.reply(f"334 {challenge}")
        snapshot = self.services.holder.current
        try:
            # A Kerberos ticket with a large PAC is longer than a command line may be.
            limit = max(snapshot.max_line_length, sasl.MAX_RESPONSE_LINE)
            line = await self.connection.readline(limit, snapshot.command_timeout)
        except LineTooLong:
            raise sasl.SASLError("line_too_long") from None
        answer = line.strip().decode("ascii", "replace")
        return "" if answer == "=" else answer

    # -- the mail transaction (RFC 5321 §3.3; rules in transaction.py) -------------------------------
    @command("MAIL", GREETED, TRANSACTION)
    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.listener.name != "smtp" and self.account is None:
            # Submission (RFC 6409 §4.3, RFC 8314): only authenticated clients send here.
            self.reply(self.intake.reject("mail", "auth_required", replies.AUTH_REQUIRED))
            return
        if self.tx is not None:
            self.reply(replies.NESTED_MAIL)
            return
        if self.account is not None:
            # As hMailServer does: each new message asks whether the login still holds.
            reason = await self.logins.still_allowed()
            if reason is not None:
                self._revoked(reason)
                return
        opened = self.intake.mail(arg, self.account, self.extended)
        if isinstance(opened, str):
            self.reply(opened)
            return
        self.tx, self.state = opened, State.TRANSACTION
        self.reply(replies.SENDER_OK)

    @command("RCPT", GREETED, TRANSACTION)
    async def smtp_RCPT(self, arg: str | None) -> None:
        if self.tx is None:
            self.reply(replies.NEED_MAIL)
            return
        self.reply(await self.intake.rcpt(self.tx, arg, self.account))

    @command("DATA", GREETED, TRANSACTION)
    async def smtp_DATA(self, arg: str | None) -> None:
        tx = self.tx
        if tx is None:
            self.reply(replies.NEED_MAIL)
            return
        if not tx.recipients:
            self.reply(replies.NEED_RCPT)
            return
        if arg:
            self.reply(replies.DATA_SYNTAX)
            return
        snapshot = self.services.holder.current
        self.reply(replies.START_DATA)
        try:
            # RFC 5321 §4.5.3.2.5/6: the DATA timeout applies to each piece of the message.
            data = await read_data(
                self.connection, tx.size_limit, snapshot.max_line_length, snapshot.data_timeout
            )
        except ConnectionClosed:
            log.info("data aborted client=%s listener=%s", self.peer_ip, self.listener.name)
            raise
        self._reset(State.GREETED)  # RFC 5321 §4.1.1.4: the transaction ends with the data
        if data.state is not DataState.NOMINAL:
            too_long = data.state is DataState.TOO_LONG
            reply = replies.LINE_TOO_LONG if too_long else replies.MESSAGE_TOO_BIG
            self.reply(
                self.intake.reject(
                    "data", "line_too_long" if too_long else "too_big", reply, sender=tx.sender
                )
            )
            return
        greeting = Greeting(self.helo, self.extended, self.connection.ssl_object, self.account is not None)
        reply, taken = await self.intake.deliver(tx, data.content, greeting, self.account)
        if taken:
            self.delivered += 1
        self.reply(reply)


_SPECIALS = frozenset("()<>[]:;@,")  # RFC 5322 §3.2.3 specials that cannot start a local part


def _looks_like_address(text: str) -> bool:
    """Whether VRFY's argument reads as an address (RFC 5321 §3.5.3), as leniently as clients
    were answered before: `<>`, a local part alone or with a domain, angle brackets optional,
    a source route (RFC 5321 §4.1.2) skipped; not one that starts with a special or has an
    empty domain."""
    text = text.strip()
    if text.startswith("<"):
        text = text[1:]
        if text.startswith("@") and ":" in text:
            text = text.partition(":")[2]
        if text.startswith(">"):
            return True  # the null path
        text = text.partition(">")[0]
    return bool(text) and text[0] not in _SPECIALS and not text.endswith("@")


__all__ = ["COMMANDS", "Session", "State"]
