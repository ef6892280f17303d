"""One POP3 session: a state machine (AUTHORIZATION → TRANSACTION → UPDATE, RFC 1939 §3) with one
method per command, found through a table that also says in which states the command is valid.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

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
from appliance.pop3 import replies
from appliance.pop3.maildrop import Maildrop, MaildropInUse
from appliance.pop3.readahead import SMALL_MESSAGE, ReadAhead
from appliance.pop3.wire import MessageStream, read_top

if TYPE_CHECKING:
    from appliance.context import ListenerSpec, Services
    from appliance.snapshot import AccountEntry
    from appliance.store.maildir import MessageFile

log = logging.getLogger("appliance.pop3")

# RFC 2449 §4: a command line is at most 255 octets. Be tolerant (some clients send long USER
# lines) but bounded; a SASL response may be longer (RFC 5034 §4), e.g. a long AD password.
MAX_COMMAND_LINE = 512
MECHANISMS = ("PLAIN",)  # RFC 5034: SASL mechanisms offered by AUTH (CAPA "SASL PLAIN")


class State(enum.Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"


Handler = Callable[["Session", str], Awaitable[None]]
COMMANDS: dict[str, tuple[frozenset[State], Handler]] = {}


def command(name: str, *states: State) -> Callable[[Handler], Handler]:
    """Register a method as the handler of `name` in `states`."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = (frozenset(states), handler)
        return handler

    return register


AUTHORIZATION, TRANSACTION = State.AUTHORIZATION, State.TRANSACTION


class Session:
    def __init__(self, services: Services, listener: ListenerSpec, connection: Connection) -> None:
        self.services = services
        self.listener = listener
        self.connection = connection
        self.state = State.AUTHORIZATION
        self.user: str | None = None  # from USER, waiting for PASS
        self.login: str | None = None  # once authenticated
        self.logins = Attempts(
            services.auth,
            services.holder,
            protocol="pop3",
            listener=listener.name,
            client=connection.peer,
            revoke=self._revoked,
        )
        self.maildrop: Maildrop | None = None
        self.readahead: ReadAhead | None = None
        self.retrieved_octets = 0
        self.closing = False
        self.started = time.monotonic()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        self.connection.write(data)

    def _hostname(self) -> str:
        return self.services.holder.current.hostname

    def _idle_timeout(self) -> float:
        return self.services.holder.current.pop3_idle_timeout

    def _plaintext_allowed(self) -> bool:
        # RFC 2595 §2.2 / RFC 8314: no password in clear unless the manifest says so.
        return self.connection.is_tls or self.services.holder.current.allow_plaintext_auth

    # -- the session's life ------------------------------------------------------------------------
    async def run(self) -> None:
        peer = self.connection.peer
        services = self.services
        refused = admission(
            services.holder.current, services.sessions, services.autoban, name="pop3", client=peer
        )
        services.sessions.opened("pop3", peer)
        reason = "quit"
        try:
            if refused is not None:
                # RFC 2449 §8.1.2: [SYS/PERM] for a banned client, [SYS/TEMP] over a limit.
                self.write(replies.BANNED if refused is Refusal.BANNED else replies.TOO_MANY_CONNECTIONS)
                reason = refused.value
                return
            self.write(replies.ok(replies.GREETING.format(hostname=self._hostname())))
            while not self.closing:
                try:
                    line = await self.connection.readline(MAX_COMMAND_LINE, self._idle_timeout())
                except LineTooLong:
                    self.write(replies.LINE_TOO_LONG)  # RFC 2449 §4; the next line reads cleanly
                    continue
                await self.dispatch(line)
                await self.connection.drain()
                if self.logins.revoked is not None:  # revoked while the command ran
                    self._revoked(self.logins.revoked, now=True)
            if self.logins.revoked is not None:
                reason = f"revoked:{self.logins.revoked}"
        except TimeoutError:
            # RFC 1939 §3: an idle client may be dropped without entering UPDATE (also while
            # the server waits for a SASL response).
            reason = "idle_timeout"
            try:
                self.write(replies.IDLE_TIMEOUT)
            except ConnectionClosed:
                pass
        except ConnectionClosed:
            reason = "dropped" if self.logins.revoked is None else f"revoked:{self.logins.revoked}"
        except Exception:
            reason = "internal_error"
            log.exception("pop3 internal error client=%s login=%s", peer, log_field(self.login or "-"))
            try:
                self.write(replies.INTERNAL_ERROR)
            except ConnectionClosed:
                pass
        finally:
            await self._end(reason)

    def _revoked(self, reason: str, *, now: bool = False) -> None:
        """The login no longer holds (auth/revocation.py): -ERR and the connection closes, at
        once when the session waits for the client, else after the running command. Never
        through UPDATE: nothing marked is deleted (RFC 1939 §6)."""
        if not (now or self.connection.waiting_for_client):
            return
        self.closing = True
        try:
            self.write(replies.REVOKED)
        except ConnectionClosed:
            pass
        self.connection.close()

    async def _end(self, reason: str) -> None:
        self.logins.close()
        try:
            if self.readahead is not None:
                await self.readahead.close()
        finally:
            # Runs even when the task is cancelled (shutdown). Not through QUIT: RFC 1939 §6,
            # nothing marked is deleted. Releasing is one close(2) of the lock file: done here.
            maildrop = self.maildrop
            if maildrop is not None and not maildrop.released:
                maildrop.release()
                log.info(
                    "pop3 closed login=%s client=%s reason=%s retrieved=%d octets=%d deleted=0 seconds=%.1f",
                    log_field(self.login or "-"),
                    self.connection.peer,
                    reason,
                    len(maildrop.retrieved),
                    self.retrieved_octets,
                    time.monotonic() - self.started,
                )
            elif maildrop is None and reason not in ("quit", "dropped"):
                log.info(
                    "pop3 closed login=%s client=%s reason=%s",
                    log_field(self.user or "-"),
                    self.connection.peer,
                    reason,
                )
            self.connection.close()
            self.services.sessions.closed("pop3", self.connection.peer)

    async def dispatch(self, line: bytes) -> None:
        keyword, _, argument = line.partition(b" ")
        name = keyword.decode("ascii", "replace").upper()
        entry = COMMANDS.get(name)
        if entry is None:
            self.write(replies.UNKNOWN_COMMAND)
            return
        states, handler = entry
        if self.state not in states:
            self.write(replies.WRONG_STATE)
            return
        try:
            text = argument.decode("utf-8")
        except UnicodeDecodeError:
            self.write(replies.NOT_UTF8)
            return
        await handler(self, text)

    # -- commands valid in any state ---------------------------------------------------------------
    @command("CAPA", AUTHORIZATION, TRANSACTION)
    async def capa(self, argument: str) -> None:
        """RFC 2449 §5: the capabilities, as they stand in this state."""
        lines = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.state is State.AUTHORIZATION:
            if self._plaintext_allowed():
                lines += [b"USER", " ".join(("SASL", *self.logins.offered(MECHANISMS))).encode()]
            if self.listener.name == "pop3" and not self.connection.is_tls:
                lines.append(b"STLS")  # RFC 2595 §4
        lines.append(b"IMPLEMENTATION appliance")
        self.write(replies.multiline(replies.ok("Capability list follows"), lines))

    @command("NOOP", TRANSACTION)
    async def noop(self, argument: str) -> None:
        self.write(replies.ok())

    @command("QUIT", AUTHORIZATION, TRANSACTION)
    async def quit(self, argument: str) -> None:
        self.closing = True
        if self.state is State.AUTHORIZATION or self.maildrop is None:
            self.write(replies.ok(replies.BYE.format(hostname=self._hostname())))
            return
        # RFC 1939 §6: QUIT from TRANSACTION enters UPDATE; only now are messages removed.
        self.state = State.UPDATE
        maildrop = self.maildrop
        removed, failed = await self.loop.run_in_executor(self.services.executor, maildrop.update)
        count, _ = maildrop.totals()
        log.info(
            "pop3 quit login=%s client=%s retrieved=%d octets=%d deleted=%d delete_failed=%d kept=%d "
            "seconds=%.1f",
            log_field(self.login or "-"),
            self.connection.peer,
            len(maildrop.retrieved),
            self.retrieved_octets,
            removed,
            failed,
            count,
            time.monotonic() - self.started,
        )
        # The maildrop is free before the client hears +OK: a client that logs in again at once
        # (a cached password answers in microseconds) must not find it still locked.
        maildrop.release()
        if failed:
            self.write(replies.UPDATE_FAILED)
        else:
            bye = replies.BYE.format(hostname=self._hostname())
            self.write(replies.ok(f"{bye} ({count} messages left)"))

    # -- AUTHORIZATION -----------------------------------------------------------------------------
    @command("STLS", AUTHORIZATION)
    async def stls(self, argument: str) -> None:
        """RFC 2595 §4: upgrade to TLS; the session then starts over (USER is forgotten)."""
        if self.connection.is_tls or self.listener.name != "pop3":
            self.write(replies.STLS_ALREADY)
            return
        try:
            context = self.services.tls.server_context()  # the certificate in force now
        except (OSError, ValueError) as error:
            log.error("pop3 stls unavailable client=%s error=%s", self.connection.peer, error)
            self.write(replies.STLS_UNAVAILABLE)
            return
        self.write(replies.STLS_BEGIN)
        try:
            await self.connection.start_tls(context, TLS_HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
            log.info("pop3 tls handshake failed client=%s %s", self.connection.peer, handshake_failure(error))
            self.connection.abort()
            raise ConnectionClosed() from None
        self.user = None

    @command("USER", AUTHORIZATION)
    async def user_command(self, argument: str) -> None:
        if not self._plaintext_allowed():
            self.write(replies.PLAINTEXT_REFUSED)
            return
        if not argument.strip():
            self.write(replies.BAD_ARGUMENTS)
            return
        self.user = argument.strip()
        self.write(replies.USER_OK)

    @command("PASS", AUTHORIZATION)
    async def pass_command(self, argument: str) -> None:
        # RFC 1939 §7: the password is the rest of the line, spaces included.
        if not self._plaintext_allowed():
            self.write(replies.PLAINTEXT_REFUSED)
            return
        if self.user is None:
            self.write(replies.PASS_WITHOUT_USER)
            return
        login, self.user = self.user, None
        await self._authenticate(sasl.Credentials(login, argument), "USER")

    @command("AUTH", AUTHORIZATION)
    async def auth(self, argument: str) -> None:
        """RFC 5034: SASL, with or without the initial response."""
        name, _, initial = argument.strip().partition(" ")
        if not name:
            # not in RFC 5034; Outlook and others ask so
            self.write(replies.mechanisms(self.logins.offered(MECHANISMS)))
            return
        mechanism = self.logins.mechanism(name, self.logins.offered(MECHANISMS))
        if mechanism is None:
            self.write(replies.UNKNOWN_MECHANISM)
            return
        if not self._plaintext_allowed():
            self.write(replies.PLAINTEXT_REFUSED)  # before any response is read
            return
        response = initial.strip()
        try:
            if response == "*":
                raise sasl.SASLError("cancelled")
            # RFC 5034 §4: "=" is an empty initial response; none at all is asked for with "+ ".
            first = None if not response else "" if response == "=" else response
            credentials = await self.logins.exchange(mechanism, first, self._sasl_answer)
        except sasl.SASLError as error:
            self.write(replies.AUTH_CANCELLED if error.cause == "cancelled" else replies.AUTH_MALFORMED)
            return
        await self._authenticate(credentials, mechanism.name)

    async def _sasl_answer(self, challenge: str) -> str:
        """RFC 5034 §4: "+ " and the base64 challenge; the client's line back."""
        self.write(replies.continuation(challenge))
        await self.connection.drain()
        try:
            line = await self.connection.readline(sasl.MAX_RESPONSE_LINE, self._idle_timeout())
        except LineTooLong:
            raise sasl.SASLError("line_too_long") from None
        return line.decode("ascii", "replace").strip()

    async def _authenticate(self, credentials: sasl.Credentials | sasl.Principal, mechanism: str) -> None:
        attempt = await self.logins.login(
            credentials, mechanism, tls=self.connection.is_tls, open_account=self._open_maildrop
        )
        if attempt.outcome is Outcome.UNAVAILABLE:
            self.write(replies.DIRECTORY_UNAVAILABLE)
        elif attempt.outcome is Outcome.REJECTED:
            if attempt.close:
                self.write(replies.TOO_MANY_FAILURES)
            elif attempt.reason is not None:  # the password was right: say why (RFC 3206)
                self.write(replies.LOGIN_REFUSED_BECAUSE[attempt.reason])
            else:
                self.write(replies.LOGIN_FAILED)
            if attempt.close:
                self.closing = True
        # accepted: _open_maildrop has answered

    async def _open_maildrop(self, account: AccountEntry) -> Opened:
        maildir = self.services.store.maildir(account)
        try:
            uidl_format = self.services.holder.current.dovecot_pop3_uidl_format
            maildrop = await self.loop.run_in_executor(
                self.services.executor, Maildrop.open, maildir, uidl_format
            )
        except MaildropInUse:
            self.write(replies.IN_USE)  # RFC 2449 §8.1.1
            return Opened("in_use", "maildrop_locked")
        except OSError as error:
            self.write(replies.MAILDROP_UNAVAILABLE)
            return Opened("unavailable", f"maildir_error error={log_field(error.strerror or repr(error))}")
        self.maildrop, self.login, self.state = maildrop, account.address, State.TRANSACTION
        self.readahead = ReadAhead(maildrop, self.services.reader_process or self.services.readers)
        self.connection.on_line = self.answer_now
        count, octets = maildrop.totals()
        self.write(replies.ok(f"Logged in; {count} messages ({octets} octets)"))
        return Opened(fields=f" messages={count} octets={octets}")

    # -- TRANSACTION -------------------------------------------------------------------------------
    def _index(self, argument: str) -> int | bytes:
        """The index a message-number argument names, or the -ERR reply it deserves."""
        assert self.maildrop is not None
        text = argument.strip()
        if not text.isdigit() or not text.isascii() or len(text) > 10:
            return replies.BAD_ARGUMENTS
        index = int(text) - 1
        if not 0 <= index < len(self.maildrop.messages):
            return replies.NO_SUCH_MESSAGE
        if index in self.maildrop.deleted:
            return replies.ALREADY_DELETED  # RFC 1939 §5: a deleted message may not be named
        return index

    def _message(self, argument: str) -> tuple[int, MessageFile] | None:
        """The (index, message) a message-number argument names, or None after an -ERR."""
        assert self.maildrop is not None
        index = self._index(argument)
        if isinstance(index, bytes):
            self.write(index)
            return None
        return index, self.maildrop.messages[index]

    @command("STAT", TRANSACTION)
    async def stat(self, argument: str) -> None:
        assert self.maildrop is not None
        count, octets = self.maildrop.totals()
        self.write(replies.ok(f"{count} {octets}"))  # RFC 1939 §5 drop listing

    @command("LIST", TRANSACTION)
    async def list_command(self, argument: str) -> None:
        assert self.maildrop is not None
        if argument.strip():
            found = self._message(argument)
            if found is not None:
                self.write(replies.ok(f"{found[0] + 1} {found[1].size}"))
            return
        messages = self.maildrop.messages
        count, octets = self.maildrop.totals()
        lines = [b"%d %d" % (i + 1, messages[i].size) for i in self.maildrop.visible()]
        self.write(replies.multiline(replies.ok(f"{count} messages ({octets} octets)"), lines))

    @command("UIDL", TRANSACTION)
    async def uidl(self, argument: str) -> None:
        """RFC 1939 §7: unique-ids stay the same across sessions and are never reused."""
        assert self.maildrop is not None
        uids = self.maildrop.uids
        if argument.strip():
            found = self._message(argument)
            if found is not None:
                self.write(replies.ok(f"{found[0] + 1} {uids[found[0]]}"))
            return
        lines = [b"%d %s" % (i + 1, uids[i].encode()) for i in self.maildrop.visible()]
        self.write(replies.multiline(replies.ok("Unique-id listing follows"), lines))

    @command("DELE", TRANSACTION)
    async def dele(self, argument: str) -> None:
        assert self.maildrop is not None
        found = self._message(argument)
        if found is not None:
            self.maildrop.deleted.add(found[0])  # only marked: removed in UPDATE (RFC 1939 §6)
            if self.readahead is not None:
                self.readahead.forget(found[0])
            self.write(replies.ok(f"Message {found[0] + 1} deleted"))

    @command("RSET", TRANSACTION)
    async def rset(self, argument: str) -> None:
        assert self.maildrop is not None
        self.maildrop.deleted.clear()
        count, octets = self.maildrop.totals()
        self.write(replies.ok(f"{count} messages ({octets} octets)"))

    def answer_now(self, line: bytes) -> bool:
        """Answer a RETR of the next message in order, already read ahead, from the connection's
        data callback (Connection.on_line): no task switch, no wait. False leaves the line, and
        every other command, to `dispatch`, which also writes any error."""
        if self.state is not State.TRANSACTION or self.closing or self.readahead is None:
            return False
        keyword, _, argument = line.partition(b" ")
        if keyword.upper() != b"RETR":
            return False
        assert self.maildrop is not None
        index = self._index(argument.decode("latin-1"))
        if isinstance(index, bytes):
            return False
        body = self.readahead.take(index)  # only small messages are ever read ahead
        if body is None:
            return False
        self._send(index, self.maildrop.messages[index], body)
        return True

    def _send(self, index: int, message: MessageFile, body: bytes) -> None:
        """RETR's reply for a message read whole (RFC 1939 §7: +OK, the dot-stuffed text, ".")."""
        assert self.maildrop is not None
        self.write(replies.message_follows(message.size) + body)
        self._retrieved(index, message)
        if self.readahead is not None:
            self.readahead.refill()

    def _retrieved(self, index: int, message: MessageFile) -> None:
        assert self.maildrop is not None
        self.maildrop.retrieved.add(index)  # moved new/ → cur/ in UPDATE
        self.retrieved_octets += message.size

    @command("RETR", TRANSACTION)
    async def retr(self, argument: str) -> None:
        assert self.maildrop is not None
        found = self._message(argument)
        if found is None:
            return
        index, message = found
        if message.size <= SMALL_MESSAGE and self.readahead is not None:
            try:
                body = await self.readahead.message(index)
            except FileNotFoundError:
                self.write(replies.MESSAGE_VANISHED)
                return
            except OSError as error:  # the disk, or the reader process gone: worth a retry
                log.error("pop3 read failed key=%s error=%s", message.key, error)
                self.write(replies.READ_FAILED)
                return
            self._send(index, message, body)
            return
        maildir = self.maildrop.maildir
        executor = self.services.executor
        try:
            stream = await self.loop.run_in_executor(executor, _open_stream, maildir, message)
        except OSError:
            self.write(replies.MESSAGE_VANISHED)
            return
        self.write(replies.message_follows(message.size))
        try:
            while not stream.done:
                try:
                    chunk = await self.loop.run_in_executor(executor, stream.next_chunk)
                except OSError as error:
                    # After "+OK" an error cannot be reported: end the connection instead,
                    # so the client sees a failed download, not a short message.
                    log.error("pop3 read failed key=%s error=%s", message.key, error)
                    self.connection.abort()
                    raise ConnectionClosed() from None
                self.write(chunk)
                await self.connection.drain()
        finally:
            if not stream.done:
                await self.loop.run_in_executor(executor, stream.close)
        self._retrieved(index, message)

    @command("TOP", TRANSACTION)
    async def top(self, argument: str) -> None:
        assert self.maildrop is not None
        number, _, lines = argument.strip().partition(" ")
        lines = lines.strip()
        if not lines.isdigit() or not lines.isascii() or len(lines) > 10:
            self.write(replies.BAD_ARGUMENTS)
            return
        found = self._message(number)
        if found is None:
            return
        maildir = self.maildrop.maildir
        try:
            excerpt = await self.loop.run_in_executor(
                self.services.executor, _read_top, maildir, found[1], int(lines)
            )
        except OSError:
            self.write(replies.MESSAGE_VANISHED)
            return
        self.write(replies.ok("Top of message follows") + excerpt)


def _open_stream(maildir: Any, message: MessageFile) -> MessageStream:
    return MessageStream(maildir.open(message))


def _read_top(maildir: Any, message: MessageFile, lines: int) -> bytes:
    return read_top(maildir.open(message), lines)
