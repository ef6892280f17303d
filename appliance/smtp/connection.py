"""One SMTP connection: aiosmtpd's protocol (line reading, DATA, STARTTLS) with this server's
policy in the commands it overrides: EHLO, HELO, STARTTLS, AUTH, MAIL, RCPT and DATA.

Every command asks `services.holder.current` for the snapshot in force, so a reload applies to
the next command. The disk is only touched in the executor (`MailStore.deliver`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import email.utils
import errno
import itertools
import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from aiosmtpd.smtp import SMTP, Envelope

from appliance.auth.service import Outcome, log_field
from appliance.smtp import replies
from appliance.smtp.addresses import AddressError, Mailbox, parse_mailbox, parse_parameters, split_path
from appliance.smtp.data import Data, DataState, read_data
from appliance.smtp.outbound import hand_to_queue, queue_available
from appliance.store.mailstore import QuotaExceeded

if TYPE_CHECKING:
    from appliance.context import ListenerSpec, Services
    from appliance.snapshot import AccountEntry, Snapshot

log = logging.getLogger("appliance.smtp")

SMTP_LISTENERS = ("smtp", "submission", "submissions")
_REFUSALS = {
    "max_connections": replies.TOO_MANY_CONNECTIONS,
    "max_connections_per_client": replies.TOO_MANY_FROM_CLIENT,
}
FAILED_LOGIN_DELAY = 0.75  # seconds before 535: slows guessing, never blocks the loop
MAX_LOGIN_FAILURES = 3  # per connection; then it is closed
MAX_HELO_LENGTH = 255
_message_ids = itertools.count(1)
_ID_PREFIX = f"{os.getpid():x}"


@dataclass
class Transaction:
    """RFC 5321 §3.3: one mail transaction, from MAIL to the end of DATA (or RSET)."""

    sender: str  # "" for the null reverse-path
    declared_size: int  # the SIZE parameter, 0 when absent
    smtputf8: bool
    size_limit: int
    recipients: list[str] = field(default_factory=list)  # as accepted, normalised
    mailboxes: dict[str, AccountEntry] = field(default_factory=dict)  # mailbox path → account
    remote: list[str] = field(default_factory=list)  # for the outbound queue


class _DeliveryHook:
    """aiosmtpd's handler: after DATA it calls `handle_DATA`, which delivers."""

    async def handle_DATA(self, server: SMTPConnection, session: Any, envelope: Envelope) -> str:
        return await server.deliver(envelope)

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp internal error error=%s", log_field(repr(error)))
        return replies.LOCAL_ERROR

    def __dir__(self) -> list[str]:
        # aiosmtpd looks for handle_* and auth_* hooks on the handler at every connection.
        return ["handle_DATA", "handle_exception"]


_HOOK = _DeliveryHook()


_PROTOCOL_NAMES: dict[type, list[str]] = {}


class SMTPConnection(SMTP):
    def __dir__(self) -> list[str]:
        """Only the command methods (`smtp_*`): aiosmtpd finds them per connection with dir(),
        and its AUTH mechanisms (`auth_*`) with inspect.getmembers(), both calling getattr on
        every name listed; with the full list that was 0.4 ms of CPU per connection (a third of
        a message's cost with one connection per message). AUTH is ours (`smtp_AUTH`), so
        aiosmtpd's mechanisms are left out. Computed once per class."""
        cls = type(self)
        names = _PROTOCOL_NAMES.get(cls)
        if names is None:
            names = _PROTOCOL_NAMES[cls] = [name for name in object.__dir__(self) if name.startswith("smtp_")]
        return list(names)

    def __init__(self, services: Services, listener: ListenerSpec) -> None:
        snapshot = services.holder.current
        limits = snapshot.manifest.server.limits
        self.services = services
        self.listener = listener
        self.tls_active = listener.implicit_tls
        self.account: AccountEntry | None = None
        self.auth_failures = 0
        self.peer_ip = "unknown"
        self.refusal: str | None = None
        self.counted = False
        self.greeted = False
        self.delivered = 0
        self.tx: Transaction | None = None
        self.last_reply = ""
        self._deadline = 0.0  # see _reset_timeout
        # aiosmtpd reads lines with this limit (the StreamReader's) and checks DATA lines against it.
        self.line_length_limit = limits.max_line_length
        super().__init__(
            _HOOK,
            data_size_limit=snapshot.max_message_size(),
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=snapshot.hostname,
            ident="ESMTP appliance",
            timeout=limits.command_timeout,
            auth_required=False,
            auth_require_tls=True,
            loop=asyncio.get_running_loop(),
        )
        # aiosmtpd keeps these on the class (shared by every connection); ours are per connection.
        self.command_size_limit = limits.max_line_length
        self.command_size_limits = collections.defaultdict(lambda: limits.max_line_length)

    # -- connection life ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if not first:
            # RFC 3207 §4.2: after the handshake, forget everything learnt before it (AUTH too).
            self.tls_active = True
            self.account = None
            self.tx = None
            return
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if peer else "unknown"
        snapshot = self.services.holder.current
        limits = snapshot.manifest.server.limits
        autoban = self.services.autoban
        sessions = self.services.sessions
        if autoban is not None and autoban.is_banned(self.peer_ip):
            self.refusal, reason = replies.BANNED, "banned"
        else:
            refused = sessions.refusal(
                self.listener.name,
                self.peer_ip,
                limits.max_connections,
                limits.max_connections_per_client,
                family=SMTP_LISTENERS,
            )
            if refused is not None:
                self.refusal, reason = _REFUSALS[refused], refused
        if self.refusal is not None:
            self.refusal = self.refusal.format(host=snapshot.hostname)
            log.info("refused client=%s listener=%s reason=%s", self.peer_ip, self.listener.name, reason)
            return
        self.counted = True
        sessions.opened(self.listener.name, self.peer_ip)
        log.info("connect client=%s listener=%s", self.peer_ip, self.listener.name)

    def connection_lost(self, error: Exception | None) -> None:
        if self.counted:
            self.counted = False
            self.services.sessions.closed(self.listener.name, self.peer_ip)
            log.info(
                "disconnect client=%s listener=%s messages=%d",
                self.peer_ip,
                self.listener.name,
                self.delivered,
            )
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self.refusal is not None:
            self.greeted = True
            await self.push(self.refusal)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd re-arms its idle timer at every command (a cancel and a new timer); this
        moves a deadline instead, and the one timer re-arms itself when it fires early."""
        loop = self.loop
        self._deadline = loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > self._deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = loop.call_at(self._deadline, self._timeout_due)

    def _timeout_due(self) -> None:
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_due)
            return
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        # RFC 5321 §4.5.3.2: the server may close an idle connection; say why first.
        transport = cast(asyncio.Transport | None, self.transport)  # uvloop's are not subclasses
        if transport is not None and not transport.is_closing():
            host = self.services.holder.current.hostname
            transport.write(replies.TIMEOUT.format(host=host).encode() + b"\r\n")
            log.info("timeout client=%s listener=%s", self.peer_ip, self.listener.name)
        super()._timeout_cb()

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()
        self.tx = None

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = replies.printable(status)
            if status.startswith(replies.AIOSMTPD_UNRECOGNIZED_LIMIT):
                # RFC 5321 §3.8: the server closes the connection only after QUIT or with a 421.
                status = replies.TOO_MANY_UNRECOGNIZED.format(host=self.services.holder.current.hostname)
            if self.greeted:
                status = replies.with_enhanced_code(status)
            else:
                self.greeted = True  # the greeting carries no enhanced code (RFC 2034 §3)
            self.last_reply = status
        await super().push(status)

    async def _write_lines(self, lines: list[str]) -> None:
        """A multi-line reply ("250-a", "250 b") in one write."""
        text = "".join(f"{line}\r\n" for line in lines)
        self._writer.write(text.encode("utf-8"))
        await self._writer.drain()

    # -- greetings ------------------------------------------------------------------------------
    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        snapshot = self.services.holder.current
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname[:MAX_HELO_LENGTH]
        # RFC 5321 §4.1.1.1, RFC 1870 (SIZE), RFC 6152, RFC 6531, RFC 2034, RFC 2920, RFC 3207.
        keywords = [
            "PIPELINING",
            f"SIZE {snapshot.max_message_size()}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        if not self.tls_active:
            keywords.append("STARTTLS")
        if self._auth_allowed(snapshot):
            keywords.append("AUTH PLAIN LOGIN")  # RFC 4954 §4: offered only when it may be used
        lines = [snapshot.hostname, *keywords]
        await self._write_lines([f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"])

    async def smtp_HELO(self, hostname: str | None) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = False
        self.session.host_name = hostname[:MAX_HELO_LENGTH]
        await self._write_lines([f"250 {self.services.holder.current.hostname}"])

    # -- STARTTLS (RFC 3207) ---------------------------------------------------------------------
    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
            return
        if self.tls_active:
            await self.push(replies.TLS_ACTIVE)
            return
        try:
            # The certificate in force now, so a renewed certificate applies to new handshakes.
            self.tls_context = self.services.tls.server_context()
        except (OSError, ValueError, ssl.SSLError) as error:
            log.error("starttls unavailable client=%s error=%s", self.peer_ip, log_field(str(error)))
            await self.push(replies.TLS_UNAVAILABLE)
            return
        await super().smtp_STARTTLS(arg)

    # -- AUTH (RFC 4954, PLAIN RFC 4616, LOGIN) -------------------------------------------------------
    def _auth_allowed(self, snapshot: Snapshot) -> bool:
        return self.tls_active or snapshot.manifest.server.allow_plaintext_auth

    async def smtp_AUTH(self, arg: str | None) -> None:
        if await self.check_helo_needed("EHLO"):
            return
        snapshot = self.services.holder.current
        if not self._auth_allowed(snapshot):
            await self.push(replies.AUTH_NEEDS_TLS)
            return
        if self.account is not None:
            await self.push(replies.AUTH_ALREADY)
            return
        if self.tx is not None:
            await self.push(replies.AUTH_IN_TRANSACTION)
            return
        parts = (arg or "").split()
        if not 1 <= len(parts) <= 2:
            await self.push(replies.AUTH_SYNTAX)
            return
        mechanism = parts[0].upper()
        initial = parts[1] if len(parts) == 2 else None
        if mechanism == "PLAIN":
            credentials = await self._read_plain(initial)
        elif mechanism == "LOGIN":
            credentials = await self._read_login(initial)
        else:
            await self.push(replies.AUTH_UNKNOWN_MECHANISM)
            return
        if credentials is None:
            return  # the reply is already sent
        login, password = credentials
        result = await self.services.auth.authenticate(login, password, protocol="smtp", client=self.peer_ip)
        del password
        fields = (self.peer_ip, self.listener.name, mechanism, log_field(login), log_field(result.cause))
        if result.outcome is Outcome.ACCEPTED and result.account is not None:
            self.account = result.account
            log.info("auth result=accepted client=%s listener=%s mechanism=%s login=%s cause=%s", *fields)
            await self.push(replies.AUTH_OK)
            return
        if result.outcome is Outcome.UNAVAILABLE:
            log.warning(
                "auth result=unavailable client=%s listener=%s mechanism=%s login=%s cause=%s", *fields
            )
            await self.push(replies.AUTH_UNAVAILABLE)
            return
        await self._auth_failed(fields)

    async def _auth_failed(self, fields: tuple[str, ...]) -> None:
        self.auth_failures += 1
        log.info("auth result=rejected client=%s listener=%s mechanism=%s login=%s cause=%s", *fields)
        await asyncio.sleep(FAILED_LOGIN_DELAY)
        if self.auth_failures >= MAX_LOGIN_FAILURES:
            await self.push(replies.AUTH_TOO_MANY_FAILURES.format(host=self.services.holder.current.hostname))
            if self.transport is not None:
                self.transport.close()
            return
        await self.push(replies.AUTH_FAILED)  # RFC 4954 §6: the same reply whatever the cause

    async def _read_plain(self, initial: str | None) -> tuple[str, str] | None:
        if initial is None:
            response = await self._challenge(b"")
        else:
            response = self._decode(initial)  # RFC 4954 §4: "=" is an empty initial response
            if response is None:
                await self.push(replies.AUTH_BAD_BASE64)
        if response is None:
            return None
        parts = response.split(b"\0")
        if len(parts) != 3:
            await self.push(replies.AUTH_BAD_PLAIN)
            return None
        try:
            authzid, login, password = (part.decode("utf-8") for part in parts)
        except UnicodeDecodeError:
            await self.push(replies.AUTH_BAD_PLAIN)
            return None
        if authzid and authzid != login:
            # RFC 4616 §2: acting as another user is not supported: a failed login like any other.
            await self._auth_failed((self.peer_ip, self.listener.name, "PLAIN", log_field(login), "authzid"))
            return None
        return login, password

    async def _read_login(self, initial: str | None) -> tuple[str, str] | None:
        if initial is None:
            login_bytes = await self._challenge(b"Username:")
        else:
            login_bytes = self._decode(initial)
            if login_bytes is None:
                await self.push(replies.AUTH_BAD_BASE64)
        if login_bytes is None:
            return None
        password_bytes = await self._challenge(b"Password:")
        if password_bytes is None:
            return None
        try:
            return login_bytes.decode("utf-8"), password_bytes.decode("utf-8")
        except UnicodeDecodeError:
            await self.push(replies.AUTH_BAD_PLAIN)
            return None

    async def _challenge(self, text: bytes) -> bytes | None:
        """Send "334 <base64 text>", read the client's base64 answer (None: reply already sent)."""
        await self._write_lines([f"334 {base64.b64encode(text).decode()}"])
        try:
            line = await self._reader.readline()
        except ValueError:  # longer than the line limit
            await self.push(replies.LINE_TOO_LONG)
            return None
        blob = line.strip()
        if blob == b"*":
            await self.push(replies.AUTH_CANCELLED)
            return None
        decoded = self._decode(blob.decode("ascii", "replace"))
        if decoded is None:
            await self.push(replies.AUTH_BAD_BASE64)
        return decoded

    @staticmethod
    def _decode(text: str) -> bytes | None:
        if text == "=":
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None

    # -- the mail transaction (RFC 5321 §3.3) ----------------------------------------------------
    def _reject(self, stage: str, reason: str, reply: str, **fields: str) -> str:
        extra = "".join(f" {key}={log_field(value)}" for key, value in fields.items())
        log.info(
            "rejected stage=%s reason=%s code=%s client=%s listener=%s%s",
            stage,
            reason,
            reply[:3],
            self.peer_ip,
            self.listener.name,
            extra,
        )
        return reply

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        await self.push(self._mail(arg))

    def _mail(self, arg: str | None) -> str:
        snapshot = self.services.holder.current
        assert self.session is not None and self.envelope is not None
        if self.listener.name != "smtp" and self.account is None:
            # Submission (RFC 6409 §4.3, RFC 8314): only authenticated clients send here.
            return self._reject("mail", "auth_required", replies.AUTH_REQUIRED)
        if self.tx is not None:
            return replies.NESTED_MAIL
        rest = _after_keyword(arg, "FROM:")
        if rest is None:
            return replies.MAIL_SYNTAX
        try:
            path, parameter_text = split_path(rest)
            parameters = parse_parameters(parameter_text)
        except AddressError:
            return replies.MAIL_SYNTAX
        if parameters and not self.session.extended_smtp:
            return replies.MAIL_SYNTAX
        smtputf8 = "SMTPUTF8" in parameters
        if smtputf8 and parameters.pop("SMTPUTF8") is not None:
            return replies.BAD_PARAMETER.format(name="SMTPUTF8")
        body = parameters.pop("BODY", "7BIT")
        if body is None or body.upper() not in ("7BIT", "8BITMIME"):  # RFC 6152
            return replies.BAD_PARAMETER.format(name="BODY")
        size_text = parameters.pop("SIZE", "0")
        if size_text is None or not size_text.isdigit() or len(size_text) > 20:
            return replies.BAD_PARAMETER.format(name="SIZE")
        declared = int(size_text)
        limit = snapshot.max_message_size()
        if declared > limit:  # RFC 1870 §6.2
            return self._reject("mail", "too_big", replies.MESSAGE_TOO_BIG, size=str(declared))
        if parameters:
            return replies.UNKNOWN_PARAMETER.format(name=next(iter(parameters)))
        if path == "":
            sender = ""  # the null reverse-path: bounces (RFC 5321 §4.5.5)
        else:
            try:
                sender = parse_mailbox(path, utf8=smtputf8).address
            except AddressError:
                if not smtputf8 and not path.isascii():
                    return replies.NON_ASCII_WITHOUT_SMTPUTF8
                return self._reject("mail", "bad_sender", replies.BAD_SENDER, sender=path)
        if self.account is not None:
            account = snapshot.account_by_address(self.account.address)
            if account is None or not account.enabled or not snapshot.may_send_as(account, sender):
                return self._reject(
                    "mail",
                    "sender_not_owned",
                    replies.SENDER_NOT_OWNED.format(address=sender),
                    login=self.account.address,
                    sender=sender,
                )
        self.tx = Transaction(sender, declared, smtputf8, limit)
        self.envelope.mail_from = sender
        self.envelope.smtp_utf8 = smtputf8
        return replies.SENDER_OK

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        await self.push(await self._rcpt(arg))

    async def _rcpt(self, arg: str | None) -> str:
        tx = self.tx
        if tx is None:
            return replies.NEED_MAIL
        rest = _after_keyword(arg, "TO:")
        if rest is None:
            return replies.RCPT_SYNTAX
        try:
            path, parameter_text = split_path(rest)
            parameters = parse_parameters(parameter_text)
        except AddressError:
            return replies.RCPT_SYNTAX
        if parameters:
            return replies.UNKNOWN_PARAMETER.format(name=next(iter(parameters)))
        snapshot = self.services.holder.current
        if len(tx.recipients) >= snapshot.manifest.server.limits.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452 and the client sends the rest in another transaction.
            return self._reject("rcpt", "too_many_recipients", replies.TOO_MANY_RECIPIENTS, sender=tx.sender)
        try:
            mailbox = self._recipient(path, snapshot, tx.smtputf8)
        except AddressError:
            if not tx.smtputf8 and not path.isascii():
                return replies.NON_ASCII_WITHOUT_SMTPUTF8
            return self._reject("rcpt", "bad_recipient", replies.BAD_RECIPIENT, to=path)
        address = mailbox.address
        fields = {"sender": tx.sender, "to": address}
        if not mailbox.is_literal and snapshot.is_local_domain(mailbox.domain):
            resolution = None if mailbox.quoted else snapshot.resolve_recipient(address)
            if resolution is None:
                return self._reject(
                    "rcpt", "unknown_recipient", replies.UNKNOWN_RECIPIENT.format(address=address), **fields
                )
            if resolution.forwards and not queue_available(self.services.queue):
                reply = replies.OUTBOUND_NOT_CONFIGURED.format(address=address)
                return self._reject("rcpt", "forward_without_queue", reply, **fields)
            domain_limit = snapshot.max_message_size(mailbox.domain)
            if tx.declared_size > domain_limit:
                return self._reject("rcpt", "too_big", replies.MESSAGE_TOO_BIG, **fields)
            for entry in resolution.mailboxes:
                if await self.services.store.over_quota(entry, tx.declared_size):
                    reply = replies.MAILBOX_FULL.format(address=address)
                    return self._reject("rcpt", "mailbox_full", reply, mailbox=entry.address, **fields)
            tx.size_limit = min(tx.size_limit, domain_limit)
            for entry in resolution.mailboxes:
                tx.mailboxes.setdefault(entry.mailbox, entry)
            tx.remote.extend(resolution.forwards)
        else:
            # Never an open relay: another domain only for a client that logged in or is trusted.
            if self.account is None and not snapshot.is_trusted(self.peer_ip):
                return self._reject(
                    "rcpt", "relay_denied", replies.RELAY_DENIED.format(address=address), **fields
                )
            if not queue_available(self.services.queue):
                reply = replies.OUTBOUND_NOT_CONFIGURED.format(address=address)
                return self._reject("rcpt", "no_outbound_queue", reply, **fields)
            tx.remote.append(address)
        tx.recipients.append(address)
        assert self.envelope is not None
        self.envelope.rcpt_tos.append(address)
        return replies.RECIPIENT_OK

    def _recipient(self, path: str, snapshot: Snapshot, utf8: bool) -> Mailbox:
        if path.lower() == "postmaster":
            # RFC 5321 §4.5.1: <postmaster> without a domain must be accepted.
            for domain in _postmaster_domains(snapshot):
                if snapshot.resolve_recipient(f"postmaster@{domain}") is not None:
                    return Mailbox("postmaster", domain, False)
            raise AddressError("no postmaster")
        return parse_mailbox(path, utf8=utf8)

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        tx = self.tx
        if tx is None:
            await self.push(replies.NEED_MAIL)
            return
        if not tx.recipients:
            await self.push(replies.NEED_RCPT)
            return
        if arg:
            await self.push(replies.DATA_SYNTAX)
            return
        snapshot = self.services.holder.current
        self._reset_timeout(snapshot.manifest.server.limits.data_timeout)
        await self.push(replies.START_DATA)
        data: Data | None = None
        try:
            data = await read_data(self._reader, tx.size_limit, self.line_length_limit)
        except asyncio.CancelledError:
            self._writer.close()
            raise
        finally:
            if data is None:  # the client went away before the end of the message
                log.info("data aborted client=%s listener=%s", self.peer_ip, self.listener.name)
        if data is None:
            return
        if data.state is not DataState.NOMINAL:
            too_long = data.state is DataState.TOO_LONG
            reply = replies.LINE_TOO_LONG if too_long else replies.MESSAGE_TOO_BIG
            self._reject("data", "line_too_long" if too_long else "too_big", reply, sender=tx.sender)
            self._set_post_data_state()
            await self.push(reply)
            return
        assert self.envelope is not None
        self.envelope.content = self.envelope.original_content = data.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _store(self, tx: Transaction, message: bytes, received: str) -> None:
        """Queue the remote part (held), deliver the local part, then let the queue go on.

        Both or neither: when local delivery fails the queued copy is withdrawn, since the
        client gets a 4xx and will send the whole message again.
        """
        queue_id: str | None = None
        if tx.remote:
            queue_id = await hand_to_queue(
                self.services.queue, message, sender=tx.sender, recipients=tx.remote, received=received
            )
        try:
            if tx.mailboxes:
                await self.services.store.deliver(
                    message, list(tx.mailboxes.values()), return_path=tx.sender, received=received
                )
        except BaseException:
            if queue_id is not None:
                await self.services.queue.withdraw(queue_id)
            raise
        if queue_id is not None:
            self.services.queue.release(queue_id)

    async def deliver(self, envelope: Envelope) -> str:
        """Store the message in every local mailbox (and hand remote ones on); the 250 follows."""
        tx = self.tx
        assert tx is not None and self.session is not None
        message = envelope.original_content or b""
        started = time.perf_counter()
        message_id = f"{_ID_PREFIX}{next(_message_ids):06X}"
        snapshot = self.services.holder.current
        # Delivery may wait for the disk; give it the DATA timeout rather than the idle one.
        self._reset_timeout(snapshot.manifest.server.limits.data_timeout)
        received = self._received(snapshot, tx, message_id)
        try:
            await self._store(tx, message, received)
        except QuotaExceeded as full:
            entry = next(e for e in tx.mailboxes.values() if e.mailbox == full.mailbox)
            reply = replies.MAILBOX_FULL.format(address=entry.address)
            return self._reject("data", "mailbox_full", reply, sender=tx.sender, mailbox=entry.address)
        except OSError as error:
            log.error(
                "delivery failed id=%s client=%s sender=%s error=%s",
                message_id,
                self.peer_ip,
                log_field(tx.sender),
                log_field(error.strerror or repr(error)),
            )
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                return replies.STORAGE_FULL  # RFC 3463 X.3.1: mail system full
            return replies.LOCAL_ERROR
        self.delivered += 1
        log.info(
            "delivered id=%s from=%s to=%s size=%d ms=%.1f client=%s listener=%s",
            message_id,
            log_field(tx.sender or "<>"),
            log_field(",".join(tx.recipients)),
            len(message),
            (time.perf_counter() - started) * 1000,
            self.peer_ip,
            self.listener.name,
        )
        return replies.DELIVERED.format(id=message_id)

    def _received(self, snapshot: Snapshot, tx: Transaction, message_id: str) -> str:
        """The Received field's value: RFC 5321 §4.4, protocol names from RFC 3848 / RFC 6531."""
        assert self.session is not None
        extended = self.session.extended_smtp
        protocol = ("UTF8SMTP" if tx.smtputf8 else "ESMTP") if extended else "SMTP"
        if self.tls_active:
            protocol += "S"
        if self.account is not None:
            protocol += "A"
        helo = _printable(self.session.host_name or "unknown")
        ip = self.peer_ip
        literal = f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"
        parts = [
            f"from {helo} ({literal})",
            f"by {snapshot.hostname} (appliance) with {protocol} id {message_id}",
        ]
        tls = self._tls_description()
        if tls:
            parts.append(tls)
        if len(tx.recipients) == 1:
            parts.append(f"for <{tx.recipients[0]}>;")
        else:
            parts[-1] += ";"
        parts.append(_date_now())
        return "\n\t".join(parts)

    def _tls_description(self) -> str:
        transport = self.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            return ""
        cipher = ssl_object.cipher()
        name = cipher[0] if cipher else "unknown"
        return f"(using {ssl_object.version()} with cipher {name})"


_date_cache: tuple[int, str] = (0, "")


def _date_now() -> str:
    """RFC 5322 date-time of this second in local time, formatted once per second."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(second, localtime=True))
    return _date_cache[1]


def _after_keyword(arg: str | None, keyword: str) -> str | None:
    if arg is None or arg[: len(keyword)].upper() != keyword:
        return None
    return arg[len(keyword) :]


def _postmaster_domains(snapshot: Snapshot) -> list[str]:
    """Where <postmaster> is looked for: the server's own name, its parent, then every domain."""
    hostname = snapshot.hostname
    candidates = [hostname, hostname.partition(".")[2], *snapshot.manifest.domains]
    return [domain for domain in dict.fromkeys(candidates) if domain and snapshot.is_local_domain(domain)]


def _printable(text: str) -> str:
    return "".join(c if "!" <= c <= "~" else "?" for c in text)[:MAX_HELO_LENGTH]


__all__ = ["SMTPConnection"]
