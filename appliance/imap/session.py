"""One IMAP session: the state machine of RFC 3501 §3 (not authenticated → authenticated →
selected → logout), the command loop, and the commands valid in any state or before login.

The loop reads a command (syntax.py), finds its handler in the command table (commands.py),
runs it, then tells the client what changed in the selected folder meanwhile (RFC 3501 §7:
EXISTS, RECENT, EXPUNGE, FETCH FLAGS) and sends the tagged result. A handler's failure is a
`NO [SERVERBUG]` with the traceback in the log, never the end of the session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.auth import sasl
from appliance.auth.attempts import Attempts, Opened, Refusal, admission
from appliance.auth.service import log_field
from appliance.auth.verdict import Outcome
from appliance.connection import (
    TLS_HANDSHAKE_TIMEOUT,
    Connection,
    ConnectionClosed,
    LineTooLong,
    handshake_failure,
)
from appliance.imap import responses
from appliance.imap.commands import ANY, COMMANDS, NOT_AUTHENTICATED, State, command
from appliance.imap.index import MailboxError
from appliance.imap.mailboxes import AccountMailboxes, Mailboxes
from appliance.imap.responses import Bad, No
from appliance.imap.sequence import SequenceSetError
from appliance.imap.syntax import (
    Command,
    CommandReader,
    CommandRefused,
    CommandSyntaxError,
    Limits,
)
from appliance.imap.tokens import Atom, Token, as_text
from appliance.imap.updates import FlagsChanged
from appliance.imap.view import FolderView

if TYPE_CHECKING:
    from appliance.context import ListenerSpec, Services
    from appliance.imap.sender import Senders
    from appliance.snapshot import AccountEntry

log = logging.getLogger("appliance.imap")

MECHANISMS = ("PLAIN",)  # RFC 3501 §6.2.2: AUTHENTICATE mechanisms (capability AUTH=PLAIN)
FLUSH_ABOVE = 256 * 1024  # bytes of responses gathered before they are written out


class Session:
    def __init__(
        self,
        services: Services,
        listener: ListenerSpec,
        connection: Connection,
        mailboxes: Mailboxes,
        senders: Senders | None = None,
    ) -> None:
        self.services = services
        self.listener = listener
        self.connection = connection
        self.mailboxes = mailboxes
        self.senders = senders  # FETCH responses written by processes of their own (sender.py)
        self.state = State.NOT_AUTHENTICATED
        self.account: AccountEntry | None = None
        self.folders: AccountMailboxes | None = None  # the account's folders, once logged in
        self.view: FolderView | None = None  # the selected folder
        self.login: str | None = None
        self.logins = Attempts(
            services.auth,
            services.holder,
            protocol="imap",
            listener=listener.name,
            client=connection.peer,
            revoke=self._revoked,
        )
        self.closing = False
        self.end_reason = "logout"  # what the log says when the command loop ends the session
        self.commands = 0
        self.bytes_out = 0
        self.started = time.monotonic()
        self.reader = CommandReader(connection, self._spool_dir, services.executor)
        self.after_command: Callable[[], Awaitable[None]] | None = None  # e.g. the TLS handshake
        self._out: list[bytes] = []
        self._out_size = 0

    # -- output ------------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue response bytes; they go out at the next flush (one write per batch)."""
        self._out.append(data)
        self._out_size += len(data)

    def send_pieces(self, pieces: list[bytes]) -> None:
        """Queue a response given in pieces (fetch.render_pieces)."""
        self._out += pieces
        for piece in pieces:
            self._out_size += len(piece)

    @property
    def unflushed(self) -> int:
        return self._out_size

    async def flush(self) -> None:
        """Write what is queued and wait while the client is slow to read (back-pressure)."""
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self._out_size = 0
            self.bytes_out += len(data)
            self.connection.write(data)
        await self.connection.drain()

    # -- settings from the snapshot in force -------------------------------------------------------
    def _limits(self) -> Limits:
        snapshot = self.services.holder.current
        timeout = snapshot.imap_idle_timeout
        if self.state is State.NOT_AUTHENTICATED:
            timeout = min(timeout, snapshot.command_timeout)  # RFC 3501 §5.4 is for logged-in users
        domain = self.account.domain if self.account is not None else None
        pre_auth = self._refusal if self.state is State.NOT_AUTHENTICATED else None
        return Limits(snapshot.imap_max_line_length, snapshot.max_message_size(domain), timeout, pre_auth)

    def _refusal(self, name: str) -> str | None:
        """Why command `name` cannot run in this state (the BAD text execute() would give), or None."""
        entry = COMMANDS.get(name)
        if entry is None:
            return "Unknown command"
        return None if self.state in entry.states else _wrong_state(self.state, entry.states)

    def idle_timeout(self) -> float:
        return self._limits().timeout

    def _spool_dir(self) -> Path:
        return self.services.holder.current.data_dir / "tmp" / "imap-append"

    def plaintext_allowed(self) -> bool:
        # RFC 3501 §6.2.3 / RFC 8314: no password in clear unless the manifest says so.
        return self.connection.is_tls or self.services.holder.current.allow_plaintext_auth

    def capabilities(self) -> str:
        """RFC 3501 §6.1.1: what the client may use in the current state."""
        if self.state is not State.NOT_AUTHENTICATED:
            return " ".join(responses.AUTHENTICATED_CAPABILITIES)
        words = list(responses.BASE_CAPABILITIES)
        if self.listener.name == "imap" and not self.connection.is_tls:
            words.append("STARTTLS")  # RFC 3501 §6.2.1
        if self.plaintext_allowed():
            words += [f"AUTH={name}" for name in self.logins.offered(MECHANISMS)]
        else:
            words.append("LOGINDISABLED")
        return " ".join(words)

    # -- the session's life ------------------------------------------------------------------------
    async def run(self) -> None:
        peer = self.connection.peer
        services = self.services
        refused = admission(
            services.holder.current, services.sessions, services.autoban, name="imap", client=peer
        )
        services.sessions.opened("imap", peer)
        reason = "logout"
        try:
            if refused is not None:
                why = "Too many failed logins" if refused is Refusal.BANNED else "Too many connections"
                self.send(responses.untagged(f"BYE [UNAVAILABLE] {why}; try again later"))
                await self.flush()
                reason = refused.value
                return
            hostname = self.services.holder.current.hostname
            self.send(responses.untagged(f"OK [CAPABILITY {self.capabilities()}] {hostname} IMAP4rev1 ready"))
            await self.flush()
            while not self.closing:
                await self._one_command()
                await self.flush()
                if self.logins.revoked is not None:  # revoked while the command ran
                    self._revoked(self.logins.revoked, now=True)
                    break
                if self.after_command is not None:
                    step, self.after_command = self.after_command, None
                    await step()
            reason = self.end_reason
        except TimeoutError:
            reason = "idle_timeout"  # RFC 3501 §5.4: autologout
            self._try_write(responses.untagged("BYE Autologout; idle for too long"))
        except ConnectionClosed:
            reason = "dropped" if self.logins.revoked is None else self.end_reason
        except Exception:
            reason = "internal_error"
            log.exception(
                "imap internal error client=%s login=%s", self.connection.peer, log_field(self.login or "-")
            )
            self._try_write(responses.untagged("BYE Internal error; closing"))
        finally:
            self._end(reason)

    def _revoked(self, reason: str, *, now: bool = False) -> None:
        """The login no longer holds (auth/revocation.py): BYE at once when the session waits for
        the client (between commands, in IDLE), else once the running command is answered (the
        command loop calls again with `now`)."""
        if not (now or self.connection.waiting_for_client):
            return
        self.end_reason = f"revoked:{reason}"
        self.closing = True
        # RFC 3501 §7.1.5: BYE, then the server closes the connection.
        self._try_write(responses.untagged("BYE Your login is no longer valid; log in again"))
        self.connection.close()

    def _try_write(self, data: bytes) -> None:
        try:
            self.connection.write(b"".join(self._out) + data)
        except ConnectionClosed:
            pass
        self._out.clear()

    def _end(self, reason: str) -> None:
        self.logins.close()
        try:
            if self.view is not None:
                self.view.close()
                self.view = None
        finally:
            log.info(
                "imap closed login=%s client=%s reason=%s commands=%d bytes_in=%d bytes_out=%d seconds=%.1f",
                log_field(self.login or "-"),
                self.connection.peer,
                reason,
                self.commands,
                self.reader.bytes_in,
                self.bytes_out,
                time.monotonic() - self.started,
            )
            self.connection.close()
            self.services.sessions.closed("imap", self.connection.peer)

    async def _one_command(self) -> None:
        limits = self._limits()
        try:
            if limits.pre_auth is None:
                found = await self.reader.read(limits)
            else:
                # Before login the whole command, literals and all, must arrive within the
                # timeout: a literal trickled a byte at a time keeps no connection open.
                async with asyncio.timeout(limits.timeout):
                    found = await self.reader.read(limits)
        except LineTooLong as error:
            tag = error.head.partition(b" ")[0].decode("ascii", "replace")
            tag = tag if tag and tag.isascii() and tag.isprintable() and "+" not in tag else "*"
            self.send(responses.tagged(tag, "BAD", "Command line too long"))
            return
        except CommandSyntaxError as error:
            self.commands += 1
            self.send(responses.tagged(error.tag or "*", "BAD", error.text))
            if error.fatal:  # the rest of the command was not read: the stream is out of step
                self.send(responses.untagged("BYE Closing the connection"))
                self.closing = True
                self.end_reason = "command_refused"
            return
        except CommandRefused as error:
            self.commands += 1
            self.send(responses.tagged(error.tag, "NO", error.text, error.code))
            return
        try:
            await self.execute(found)
        finally:
            for path in found.files:
                path.unlink(missing_ok=True)

    async def execute(self, found: Command) -> None:
        self.commands += 1
        name, args, uid = found.name, found.args, False
        if name == "UID" and args and isinstance(args[0], Atom):
            name, args, uid = args[0].upper(), args[1:], True
        entry = COMMANDS.get(name)
        status, code = "OK", None
        try:
            if entry is None or (uid and not entry.uid) or (found.name == "UID" and not uid):
                raise Bad("Unknown command")
            if self.state not in entry.states:
                raise Bad(_wrong_state(self.state, entry.states))
            text = await entry.handler(self, found.tag, args, uid)
        except Bad as error:
            status, text = "BAD", error.text
        except No as error:
            status, code, text = "NO", error.code, error.text
        except MailboxError as error:
            status, code, text = "NO", error.code, error.text
        except SequenceSetError as error:
            status, text = "BAD", str(error)
        except (ConnectionClosed, TimeoutError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception(
                "imap command failed command=%s client=%s login=%s",
                name,
                self.connection.peer,
                log_field(self.login or "-"),
            )
            status, code, text = "NO", "SERVERBUG", "Internal error; the command was not completed"
        if self.view is not None and self.state is State.SELECTED:
            holds = entry is not None and entry.holds_expunges and not uid
            await self.send_updates(expunges=not holds)
        self.send(responses.tagged(found.tag, status, text, code))

    async def send_updates(self, *, expunges: bool, refresh: bool = True) -> None:
        """What changed in the selected folder, as untagged responses (RFC 3501 §7.3.1, §7.4.1)."""
        view = self.view
        if view is None:
            return
        if refresh:
            try:
                await view.refresh()
            except (MailboxError, OSError) as error:
                log.warning("imap refresh failed folder=%s error=%s", log_field(view.name), error)
            except Exception:
                log.exception("imap refresh failed folder=%s", log_field(view.name))
        for item in view.pending(expunges=expunges):
            recent = isinstance(item, FlagsChanged) and view.is_recent(item.info.uid)
            self.send(responses.update(item, recent=recent))

    def deselect(self) -> None:
        if self.view is not None:
            self.view.close()
            self.view = None
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    # -- login -------------------------------------------------------------------------------------
    async def authenticate(self, credentials: sasl.Credentials | sasl.Principal, mechanism: str) -> str:
        attempt = await self.logins.login(
            credentials, mechanism, tls=self.connection.is_tls, open_account=self._open_folders
        )
        if attempt.outcome is Outcome.UNAVAILABLE:
            raise No("Authentication is temporarily unavailable; try again later", "UNAVAILABLE")
        if attempt.outcome is Outcome.REJECTED:
            if attempt.close:
                self.closing = True
                self.after_command = self._too_many_failures
            if attempt.reason is not None:  # the password was right: say why (RFC 5530 EXPIRED)
                code, text = responses.LOGIN_REFUSED_BECAUSE[attempt.reason]
                raise No(text, code)
            # RFC 5530: one answer whatever the cause (unknown user, wrong password, disabled).
            raise No("Authentication failed", "AUTHENTICATIONFAILED")
        if not attempt.logged_in:
            raise No("Your mailbox cannot be opened now; try again later", "UNAVAILABLE")
        return f"[CAPABILITY {self.capabilities()}] Logged in"

    async def _open_folders(self, account: AccountEntry) -> Opened:
        folders = self.mailboxes.account(account)
        try:
            await folders.prepare()  # RFC 6154: the special-use folders exist from the first login
        except (MailboxError, OSError) as error:
            return Opened("unavailable", f"mailbox_error error={log_field(str(error))}")
        self.account, self.folders, self.login = account, folders, account.address
        self.state = State.AUTHENTICATED
        return Opened()

    async def _too_many_failures(self) -> None:
        self.send(responses.untagged("BYE Too many failed logins; closing"))
        await self.flush()

    async def sasl_answer(self, challenge: str) -> str:
        """RFC 3501 §6.2.2: "+ " and the base64 challenge; the client's line back."""
        self.send(responses.continuation(challenge))
        await self.flush()
        try:
            line = await self.connection.readline(sasl.MAX_RESPONSE_LINE, self.idle_timeout())
        except LineTooLong:
            raise sasl.SASLError("line_too_long") from None
        self.reader.bytes_in += len(line) + 2
        return line.decode("ascii", "replace").strip()


def _wrong_state(state: State, wanted: frozenset[State]) -> str:
    if state is State.NOT_AUTHENTICATED:
        return "Log in first"
    if State.NOT_AUTHENTICATED in wanted:
        return "Already logged in"
    if state is State.AUTHENTICATED:
        return "No mailbox selected"
    return "Command not valid in this state"


def text_argument(token: Token, what: str) -> str:
    """An astring argument as text (RFC 3501 §9), or Bad."""
    text = as_text(token)
    if text is None:
        raise Bad(f"{what} expected")
    return text


# -- any state (RFC 3501 §6.1) ----------------------------------------------------------------------
@command("CAPABILITY", ANY)
async def capability(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    session.send(responses.untagged(f"CAPABILITY {session.capabilities()}"))
    return "CAPABILITY completed"


@command("NOOP", ANY)
async def noop(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    return "NOOP completed"  # the updates follow from the command loop (RFC 3501 §6.1.2)


@command("LOGOUT", ANY)
async def logout(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    session.send(responses.untagged("BYE Logging out"))  # RFC 3501 §6.1.3: BYE before the OK
    session.deselect()
    session.state = State.LOGOUT
    session.closing = True
    return "LOGOUT completed"


@command("ID", ANY)
async def id_command(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    """RFC 2971: the server says who it is; what the client says about itself is not needed."""
    nil = isinstance(args[0], Atom) and args[0].upper() == "NIL" if args else False
    if len(args) != 1 or not (nil or isinstance(args[0], list)):
        raise Bad("ID takes a parameter list or NIL")
    fields = args[0]
    if isinstance(fields, list) and (len(fields) % 2 or len(fields) > 60):
        raise Bad("ID takes field-value pairs")
    session.send(b'* ID ("name" "appliance" "vendor" "appliance")\r\n')
    return "ID completed"


# -- not authenticated (RFC 3501 §6.2) --------------------------------------------------------------
@command("STARTTLS", NOT_AUTHENTICATED)
async def starttls(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    if session.connection.is_tls or session.listener.name != "imap":
        raise Bad("TLS is already active")
    try:
        context = session.services.tls.server_context()  # the certificate in force now
    except (OSError, ValueError) as error:
        log.error("imap starttls unavailable client=%s error=%s", session.connection.peer, error)
        raise No("TLS is not available now", "UNAVAILABLE") from None

    async def handshake() -> None:
        # RFC 3501 §6.2.1: after the OK; whatever the client pipelined is dropped (CVE-2011-0411).
        try:
            await session.connection.start_tls(context, TLS_HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
            log.info(
                "imap tls handshake failed client=%s %s", session.connection.peer, handshake_failure(error)
            )
            session.connection.abort()
            raise ConnectionClosed() from None

    session.after_command = handshake
    return "Begin TLS negotiation now"


@command("LOGIN", NOT_AUTHENTICATED)
async def login_command(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    if len(args) != 2:
        raise Bad("LOGIN takes a user name and a password")
    login, password = text_argument(args[0], "User name"), text_argument(args[1], "Password")
    if not session.plaintext_allowed():
        raise No("Use STARTTLS first: no passwords in clear", "PRIVACYREQUIRED")  # RFC 3501 §6.2.3
    return await session.authenticate(sasl.Credentials(login, password), "LOGIN")


@command("AUTHENTICATE", NOT_AUTHENTICATED)
async def authenticate_command(session: Session, tag: str, args: list[Token], uid: bool) -> str:
    """RFC 3501 §6.2.2; the initial response may come along (SASL-IR, RFC 4959: "=" stands for
    an empty one)."""
    if not 1 <= len(args) <= 2 or not isinstance(args[0], Atom):
        raise Bad("AUTHENTICATE takes a mechanism and an optional initial response")
    mechanism = session.logins.mechanism(args[0].upper(), session.logins.offered(MECHANISMS))
    if mechanism is None:
        raise No("Unsupported authentication mechanism", "CANNOT")
    if not session.plaintext_allowed():
        raise No("Use STARTTLS first: no passwords in clear", "PRIVACYREQUIRED")
    initial: str | None = None
    if len(args) == 2:
        initial = text_argument(args[1], "Initial response")
        initial = "" if initial == "=" else initial
    try:
        credentials = await session.logins.exchange(mechanism, initial, session.sasl_answer)
    except sasl.SASLError as error:
        if error.cause == "cancelled":
            raise Bad("Authentication cancelled") from None  # RFC 3501 §6.2.2
        if error.cause == "line_too_long":
            raise Bad("SASL response too long") from None
        raise Bad(f"Malformed SASL {mechanism.name} response") from None
    return await session.authenticate(credentials, mechanism.name)
