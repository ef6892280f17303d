"""One ManageSieve (RFC 5804) connection: NONAUTHENTICATED -> AUTHENTICATED, a method per command.

Logins go through the shared path (auth/attempts.py: the same checks, timing, log line and
revocation as POP3 and IMAP), after STARTTLS unless the manifest allows plaintext logins. A
user's scripts live in the store (store/userscripts.py); an account whose manifest entry names a
script (`sieve = ...`) is read-only here: Git is the source of truth for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TYPE_CHECKING

from appliance.auth import sasl
from appliance.auth.attempts import Attempts, Opened, Refusal, admission
from appliance.auth.service import log_field
from appliance.auth.verdict import Outcome
from appliance.connection import TLS_HANDSHAKE_TIMEOUT, ConnectionClosed, LineTooLong
from appliance.managesieve.wire import (
    MAX_LINE,
    Argument,
    CommandError,
    LiteralTooLarge,
    read_command,
    response,
    string,
)
from appliance.sieve import SieveError, compile_script
from appliance.sieve.grammar import EXTENSIONS
from appliance.store.userscripts import MAX_SCRIPT_BYTES, ScriptStoreError, UserScripts

if TYPE_CHECKING:
    from appliance.connection import Connection
    from appliance.context import ListenerSpec, Services
    from appliance.snapshot import AccountEntry

log = logging.getLogger("appliance.managesieve")

MECHANISMS = ("PLAIN",)
SIEVE_CAPABILITY = " ".join(sorted(e for e in EXTENSIONS if not e.startswith("comparator-i;ascii-c")))
PINNED = "This account's Sieve script is managed by the administrator; it cannot be changed here"


class State(Enum):
    NONAUTH = "nonauth"
    AUTH = "auth"


Handler = Callable[["Session", list[Argument]], Awaitable[None]]
COMMANDS: dict[str, tuple[tuple[State, ...], Handler]] = {}


def command(name: str, *states: State) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = (states, handler)
        return handler

    return register


BOTH = (State.NONAUTH, State.AUTH)


def _text(argument: Argument) -> str:
    if isinstance(argument, bytes):
        return argument.decode("utf-8", "replace")
    return str(argument)


def _compile_error(data: bytes) -> str | None:
    try:
        compile_script(data.decode("utf-8").replace("\r\n", "\n"))
    except UnicodeDecodeError:
        return "the script is not UTF-8"
    except SieveError as error:
        return f"line {error.line}, column {error.column}: {error.message}"
    return None


class Session:
    def __init__(self, services: Services, listener: ListenerSpec, connection: Connection) -> None:
        self.services = services
        self.listener = listener
        self.connection = connection
        self.state = State.NONAUTH
        self.account: AccountEntry | None = None
        self.scripts = services.userscripts or UserScripts(services.holder.current.data_dir)
        self.logins = Attempts(
            services.auth,
            services.holder,
            protocol="managesieve",
            listener=listener.name,
            client=connection.peer,
            revoke=self._revoked,
        )
        self.closing = False
        self.started = time.monotonic()

    def write(self, data: bytes) -> None:
        self.connection.write(data)

    def _timeout(self) -> float:
        return self.services.holder.current.command_timeout

    def _plaintext_allowed(self) -> bool:
        return self.connection.is_tls or self.services.holder.current.allow_plaintext_auth

    async def _blocking(self, function: Callable[..., object], *arguments: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self.services.executor, function, *arguments)

    # -- the session's life ---------------------------------------------------------------------
    async def run(self) -> None:
        peer = self.connection.peer
        services = self.services
        refused = admission(
            services.holder.current, services.sessions, services.autoban, name="managesieve", client=peer
        )
        services.sessions.opened("managesieve", peer)
        reason = "logout"
        try:
            if refused is not None:
                self.write(
                    response("BYE", "Too many connections" if refused is not Refusal.BANNED else "Refused")
                )
                reason = refused.value
                return
            self.capabilities()
            while not self.closing:
                try:
                    name, arguments = await read_command(self._readline, self._read_exactly)
                except LineTooLong:
                    self.write(response("NO", "Line too long"))
                    continue
                except CommandError as error:
                    self.write(response("NO", str(error)))
                    continue
                except LiteralTooLarge:
                    # The client sends the octets whatever we say ({n+}, RFC 5804 §4): end here.
                    self.write(response("BYE", "Literal too large", code="QUOTA/MAXSIZE"))
                    reason = "literal_too_large"
                    break
                await self.dispatch(name, arguments)
                await self.connection.drain()
        except TimeoutError:
            reason = "idle_timeout"
            try:
                self.write(response("BYE", "Idle for too long"))
            except ConnectionClosed:
                pass
        except ConnectionClosed:
            reason = "dropped" if self.logins.revoked is None else f"revoked:{self.logins.revoked}"
        except Exception:
            reason = "internal_error"
            log.exception("managesieve internal error client=%s", peer)
            try:
                self.write(response("BYE", "Internal error"))
            except ConnectionClosed:
                pass
        finally:
            self.logins.close()
            log.info(
                "managesieve closed login=%s client=%s reason=%s seconds=%.1f",
                log_field(self.account.address if self.account else "-"),
                peer,
                reason,
                time.monotonic() - self.started,
            )
            self.connection.close()
            services.sessions.closed("managesieve", peer)

    async def _readline(self) -> bytes:
        return await self.connection.readline(MAX_LINE, self._timeout())

    async def _read_exactly(self, count: int) -> bytes:
        return await self.connection.read_exactly(count, self._timeout())

    def _revoked(self, reason: str) -> None:
        self.closing = True
        try:
            self.write(response("BYE", "Your login is no longer valid"))
        except ConnectionClosed:
            pass
        self.connection.close()

    async def dispatch(self, name: str, arguments: list[Argument]) -> None:
        entry = COMMANDS.get(name)
        if entry is None:
            self.write(response("NO", f"Unknown command {name[:40]}"))
            return
        states, handler = entry
        if self.state not in states:
            self.write(response("NO", "Log in first" if self.state is State.NONAUTH else "Already logged in"))
            return
        await handler(self, arguments)

    def capabilities(self) -> None:
        """RFC 5804 §1.7: the capability lines, then OK."""
        lines = [
            f'"IMPLEMENTATION" {string("appliance").decode()}',
            f'"SIEVE" "{SIEVE_CAPABILITY}"',
            '"SASL" "{}"'.format(" ".join(MECHANISMS) if self._plaintext_allowed() else ""),
            '"VERSION" "1.0"',
        ]
        if not self.connection.is_tls and self.listener.name == "managesieve":
            lines.append('"STARTTLS"')
        if self.account is not None:
            lines.append(f'"OWNER" {string(self.account.address).decode()}')
        self.write(("\r\n".join(lines) + "\r\n").encode() + response("OK"))

    # -- any state ------------------------------------------------------------------------------
    @command("CAPABILITY", *BOTH)
    async def capability(self, arguments: list[Argument]) -> None:
        self.capabilities()

    @command("NOOP", *BOTH)
    async def noop(self, arguments: list[Argument]) -> None:
        # RFC 5804 §2.13: a tag given is echoed in a TAG response code (clients resync with it).
        tag = f"TAG {string(_text(arguments[0])).decode()}" if arguments else ""
        self.write(response("OK", "Done", code=tag))

    @command("LOGOUT", *BOTH)
    async def logout(self, arguments: list[Argument]) -> None:
        self.write(response("OK", "Bye"))
        self.closing = True

    @command("STARTTLS", State.NONAUTH)
    async def starttls(self, arguments: list[Argument]) -> None:
        if self.connection.is_tls:
            self.write(response("NO", "TLS already active"))
            return
        try:
            context = self.services.tls.server_context()
        except (OSError, ValueError) as error:
            log.error("managesieve starttls unavailable client=%s error=%s", self.connection.peer, error)
            self.write(response("NO", "TLS not available"))
            return
        self.write(response("OK", "Begin TLS negotiation now"))
        try:
            await self.connection.start_tls(context, TLS_HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError) as error:
            log.info("managesieve tls handshake failed client=%s error=%s", self.connection.peer, error)
            self.connection.abort()
            raise ConnectionClosed() from None
        self.capabilities()  # RFC 5804 §2.2: the capabilities again, after the handshake

    @command("AUTHENTICATE", State.NONAUTH)
    async def authenticate(self, arguments: list[Argument]) -> None:
        if not arguments:
            self.write(response("NO", "Which mechanism?"))
            return
        mechanism = sasl.mechanism(_text(arguments[0]), MECHANISMS)
        if mechanism is None:
            self.write(response("NO", "Unsupported mechanism"))
            return
        if not self._plaintext_allowed():
            self.write(response("NO", "Issue STARTTLS first", code="ENCRYPT-NEEDED"))
            return
        initial = _text(arguments[1]) if len(arguments) > 1 else None
        try:
            credentials = await sasl.exchange(mechanism, initial, self._sasl_answer)
        except sasl.SASLError as error:
            self.write(
                response("NO", "Authentication cancelled" if error.cause == "cancelled" else "Bad response")
            )
            return
        attempt = await self.logins.login(
            credentials, mechanism.name, tls=self.connection.is_tls, open_account=self._opened
        )
        if attempt.outcome is Outcome.UNAVAILABLE:
            self.write(response("NO", "Authentication temporarily unavailable", code="TRYLATER"))
        elif attempt.outcome is Outcome.REJECTED:
            self.write(response("NO", "Authentication failed"))
            if attempt.close:
                self.write(response("BYE", "Too many failed logins"))
                self.closing = True

    async def _opened(self, account: AccountEntry) -> Opened:
        self.account, self.state = account, State.AUTH
        self.write(response("OK", "Logged in"))
        return Opened()

    async def _sasl_answer(self, challenge: str) -> str:
        # RFC 5804 §2.1: the challenge as a string; the client's answer is a string too.
        self.write(string(challenge))
        self.write(b"\r\n")
        await self.connection.drain()
        try:
            _, arguments = await read_command(self._readline_as_string, self._read_exactly)
        except (LineTooLong, CommandError):
            raise sasl.SASLError("malformed") from None
        return _text(arguments[0]).strip() if arguments else "*"

    async def _readline_as_string(self) -> bytes:
        # The answer is a bare string; give the parser a command name to hang it on.
        return b"ANSWER " + await self._readline()

    # -- authenticated --------------------------------------------------------------------------
    def _pinned(self) -> bool:
        account = self.account
        if account is None:
            return True
        current = self.services.holder.current.account_by_address(account.address)
        return current is None or current.account.sieve is not None

    async def _store(self, action: Callable[..., object], *arguments: object) -> bool:
        try:
            await self._blocking(action, *arguments)
        except ScriptStoreError as error:
            self.write(response("NO", error.text, code=error.code))
            return False
        return True

    @command("UNAUTHENTICATE", State.AUTH)
    async def unauthenticate(self, arguments: list[Argument]) -> None:
        self.logins.close()
        self.account, self.state = None, State.NONAUTH
        self.write(response("OK"))

    @command("HAVESPACE", State.AUTH)
    async def havespace(self, arguments: list[Argument]) -> None:
        if len(arguments) != 2 or not isinstance(arguments[1], int):
            self.write(response("NO", "HAVESPACE name size"))
        elif self._pinned():
            self.write(response("NO", PINNED))
        elif arguments[1] > MAX_SCRIPT_BYTES:
            self.write(response("NO", "The script is too large", code="QUOTA/MAXSIZE"))
        else:
            self.write(response("OK"))

    @command("CHECKSCRIPT", State.AUTH)
    async def checkscript(self, arguments: list[Argument]) -> None:
        if len(arguments) != 1:
            self.write(response("NO", "CHECKSCRIPT script"))
            return
        problem = _compile_error(
            arguments[0] if isinstance(arguments[0], bytes) else _text(arguments[0]).encode()
        )
        self.write(response("NO", problem) if problem else response("OK"))

    @command("PUTSCRIPT", State.AUTH)
    async def putscript(self, arguments: list[Argument]) -> None:
        if len(arguments) != 2:
            self.write(response("NO", "PUTSCRIPT name script"))
            return
        if self._pinned():
            self.write(response("NO", PINNED))
            return
        data = arguments[1] if isinstance(arguments[1], bytes) else _text(arguments[1]).encode()
        problem = _compile_error(data)
        if problem:  # RFC 5804 §2.6: a script with errors is not stored
            self.write(response("NO", problem))
            return
        assert self.account is not None
        if await self._store(self.scripts.put, self.account.address, _text(arguments[0]), data):
            log.info(
                "managesieve putscript login=%s name=%s", self.account.address, log_field(_text(arguments[0]))
            )
            self.write(response("OK"))

    @command("LISTSCRIPTS", State.AUTH)
    async def listscripts(self, arguments: list[Argument]) -> None:
        assert self.account is not None
        found = await self._blocking(self.scripts.list, self.account.address)
        lines = [string(name) + (b" ACTIVE" if active else b"") + b"\r\n" for name, active in found]  # type: ignore[attr-defined]
        self.write(b"".join(lines) + response("OK"))

    @command("GETSCRIPT", State.AUTH)
    async def getscript(self, arguments: list[Argument]) -> None:
        assert self.account is not None
        if len(arguments) != 1:
            self.write(response("NO", "GETSCRIPT name"))
            return
        try:
            data = await self._blocking(self.scripts.get, self.account.address, _text(arguments[0]))
        except ScriptStoreError as error:
            self.write(response("NO", error.text, code=error.code))
            return
        assert isinstance(data, bytes)
        self.write(b"{%d}\r\n" % len(data) + data + b"\r\n" + response("OK"))

    async def _change(
        self, arguments: list[Argument], count: int, usage: str, action: Callable[..., object]
    ) -> None:
        if len(arguments) != count:
            self.write(response("NO", usage))
            return
        if self._pinned():
            self.write(response("NO", PINNED))
            return
        assert self.account is not None
        if await self._store(action, self.account.address, *(_text(a) for a in arguments)):
            self.write(response("OK"))

    @command("SETACTIVE", State.AUTH)
    async def setactive(self, arguments: list[Argument]) -> None:
        await self._change(arguments, 1, "SETACTIVE name", self.scripts.set_active)

    @command("DELETESCRIPT", State.AUTH)
    async def deletescript(self, arguments: list[Argument]) -> None:
        await self._change(arguments, 1, "DELETESCRIPT name", self.scripts.delete)

    @command("RENAMESCRIPT", State.AUTH)
    async def renamescript(self, arguments: list[Argument]) -> None:
        await self._change(arguments, 2, "RENAMESCRIPT old new", self.scripts.rename)
