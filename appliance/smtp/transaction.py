"""The mail transaction (RFC 5321 §3.3): MAIL and RCPT checked against the snapshot in force,
then delivery of the message DATA brought: into the local Maildirs, and to the outbound queue
for other domains, with the `Received:` field (RFC 5321 §4.4) the server adds.

DKIM (queue/signing.py) vouches for the From field, so the queue signs only what the end of
DATA marks as a submission: from a client that logged in, every From address one the account
may send as (the rules MAIL FROM follows), or from a trusted network. Mail from anyone else —
inbound mail an alias or `forward_to` sends on — leaves unsigned. A logged-in client whose From
names an address of a local domain it may not use (a colleague) is refused with 550 5.7.1
(RFC 6409 §8 allows it); a From of another domain is let through unsigned, as no key of ours
covers it and the envelope sender was already checked at MAIL.

`Intake` holds what one connection's transactions need (the services, the listener, the client's
address); the session holds the state (its `Transaction`, the account logged in) and passes it.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance.auth.service import log_field
from appliance.queue.signing import from_addresses
from appliance.queue.srs import is_srs
from appliance.smtp import filtering, hygiene, replies
from appliance.smtp.addresses import AddressError, Mailbox, parse_mailbox, parse_parameters, split_path
from appliance.smtp.filtering import Plan
from appliance.smtp.outbound import hand_to_queue, queue_available
from appliance.store.mailstore import QuotaExceeded

if TYPE_CHECKING:
    import ssl
    from pathlib import Path

    from appliance.context import ListenerSpec, Services
    from appliance.snapshot import AccountEntry, Snapshot

log = logging.getLogger("appliance.smtp")

MAX_HELO_LENGTH = 255
JUNK_FOLDER = "Junk"  # where spam goes in a mailbox that has it (IMAP creates it: RFC 6154 \Junk)
_SCAN_REFUSALS = {"550 5.7.1": "spam_rejected", "451 4.7.1": "spam_deferred"}
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


@dataclass(frozen=True)
class Greeting:
    """What the client said of itself, for the `Received:` field."""

    helo: str  # as given in HELO/EHLO (cut to MAX_HELO_LENGTH)
    extended: bool  # EHLO rather than HELO
    tls: ssl.SSLObject | None
    authenticated: bool


class Intake:
    def __init__(self, services: Services, listener: ListenerSpec, peer_ip: str) -> None:
        self.services = services
        self.listener = listener
        self.peer_ip = peer_ip

    def reject(self, stage: str, reason: str, reply: str, **fields: str) -> str:
        """Log one refusal (one line, key=value) and return its reply."""
        extra = "".join(f" {key}={log_field(value)}" for key, value in fields.items())
        self.services.metrics.rejections.labels(stage, reason).inc()
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

    # -- MAIL (RFC 5321 §4.1.1.2) ------------------------------------------------------------------
    def mail(self, arg: str | None, account: AccountEntry | None, extended: bool) -> Transaction | str:
        """The transaction MAIL opens, or the reply that refuses it."""
        snapshot = self.services.holder.current
        rest = _after_keyword(arg, "FROM:")
        if rest is None:
            return replies.MAIL_SYNTAX
        try:
            path, parameter_text = split_path(rest)
            parameters = parse_parameters(parameter_text)
        except AddressError:
            return replies.MAIL_SYNTAX
        if parameters and not extended:
            return replies.MAIL_SYNTAX  # RFC 5321 §4.1.1.2: parameters are ESMTP's
        smtputf8 = "SMTPUTF8" in parameters
        if smtputf8 and parameters.pop("SMTPUTF8") is not None:  # RFC 6531 §3.4
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
            return self.reject("mail", "too_big", replies.MESSAGE_TOO_BIG, size=str(declared))
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
                return self.reject("mail", "bad_sender", replies.BAD_SENDER, sender=path)
        if account is not None:
            current = snapshot.account_by_address(account.address)
            if current is None or not current.enabled or not snapshot.may_send_as(current, sender):
                return self.reject(
                    "mail",
                    "sender_not_owned",
                    replies.SENDER_NOT_OWNED.format(address=sender),
                    login=account.address,
                    sender=sender,
                )
        return Transaction(sender, declared, smtputf8, limit)

    # -- RCPT (RFC 5321 §4.1.1.3) ------------------------------------------------------------------
    async def rcpt(self, tx: Transaction, arg: str | None, account: AccountEntry | None) -> str:
        """Add one recipient to `tx`; the reply."""
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
        if len(tx.recipients) >= snapshot.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452 and the client sends the rest in another transaction.
            return self.reject("rcpt", "too_many_recipients", replies.TOO_MANY_RECIPIENTS, sender=tx.sender)
        try:
            mailbox = _recipient(path, snapshot, tx.smtputf8)
        except AddressError:
            if not tx.smtputf8 and not path.isascii():
                return replies.NON_ASCII_WITHOUT_SMTPUTF8
            return self.reject("rcpt", "bad_recipient", replies.BAD_RECIPIENT, to=path)
        address = mailbox.address
        fields = {"sender": tx.sender, "to": address}
        if (
            snapshot.srs_secret_file is not None
            and mailbox.domain == snapshot.srs_domain
            and is_srs(mailbox.local_part)
        ):
            return self._srs_bounce(tx, address, snapshot.srs_secret_file, fields)
        if not mailbox.is_literal and snapshot.is_local_domain(mailbox.domain):
            resolution = None if mailbox.quoted else snapshot.resolve_recipient(address)
            if resolution is None:
                return self.reject(
                    "rcpt", "unknown_recipient", replies.UNKNOWN_RECIPIENT.format(address=address), **fields
                )
            if resolution.forwards and not queue_available(self.services.queue):
                reply = replies.OUTBOUND_NOT_CONFIGURED.format(address=address)
                return self.reject("rcpt", "forward_without_queue", reply, **fields)
            domain_limit = snapshot.max_message_size(mailbox.domain)
            if tx.declared_size > domain_limit:
                return self.reject("rcpt", "too_big", replies.MESSAGE_TOO_BIG, **fields)
            for entry in resolution.mailboxes:
                if await self.services.store.over_quota(entry, tx.declared_size):
                    reply = replies.MAILBOX_FULL.format(address=address)
                    return self.reject("rcpt", "mailbox_full", reply, mailbox=entry.address, **fields)
            tx.size_limit = min(tx.size_limit, domain_limit)
            for entry in resolution.mailboxes:
                tx.mailboxes.setdefault(entry.mailbox, entry)
            tx.remote.extend(resolution.forwards)
        else:
            # Never an open relay: another domain only for a client that logged in or is trusted.
            if account is None and not snapshot.is_trusted(self.peer_ip):
                return self.reject(
                    "rcpt", "relay_denied", replies.RELAY_DENIED.format(address=address), **fields
                )
            if not queue_available(self.services.queue):
                reply = replies.OUTBOUND_NOT_CONFIGURED.format(address=address)
                return self.reject("rcpt", "no_outbound_queue", reply, **fields)
            tx.remote.append(address)
        tx.recipients.append(address)
        return replies.RECIPIENT_OK

    def _srs_bounce(self, tx: Transaction, address: str, secret_file: Path, fields: dict[str, str]) -> str:
        """RCPT of an SRS address of ours (queue/srs.py): sent on to the original sender when
        its hash and timestamp verify, an unknown recipient otherwise (never an open relay)."""
        snapshot = self.services.holder.current
        original = self.services.srs.reverse(address, secret_file)
        if original is None or snapshot.is_local_domain(original.rpartition("@")[2]):
            reply = replies.UNKNOWN_RECIPIENT.format(address=address)
            return self.reject("rcpt", "srs_invalid", reply, **fields)
        if not queue_available(self.services.queue):
            reply = replies.OUTBOUND_NOT_CONFIGURED.format(address=address)
            return self.reject("rcpt", "no_outbound_queue", reply, **fields)
        tx.remote.append(original)
        tx.recipients.append(address)
        return replies.RECIPIENT_OK

    def _queue_sender(self, tx: Transaction, submitted: bool) -> str:
        """The envelope sender of the queued copy: SRS-rewritten when mail from another domain is
        sent on (an alias or forward_to), so the destination's SPF check sees our domain."""
        snapshot = self.services.holder.current
        domain = tx.sender.rpartition("@")[2]
        if submitted or not tx.sender or snapshot.srs_secret_file is None or snapshot.srs_domain is None:
            return tx.sender
        if snapshot.is_local_domain(domain):
            return tx.sender
        return self.services.srs.forward(tx.sender, snapshot.srs_domain, snapshot.srs_secret_file)

    # -- delivery (after DATA, RFC 5321 §4.1.1.4) --------------------------------------------------
    def submission(self, message: bytes, account: AccountEntry | None) -> bool | str:
        """Whether the queue may DKIM-sign the message (see the module doc), or the reply that
        refuses it: a logged-in client's From naming a local address the account may not use."""
        snapshot = self.services.holder.current
        if account is None:
            return snapshot.is_trusted(self.peer_ip)
        current = snapshot.account_by_address(account.address)
        senders = from_addresses(message)
        for address in senders:
            if current is not None and current.enabled and snapshot.may_send_as(current, address):
                continue
            if snapshot.is_local_domain(address.rpartition("@")[2]):
                reply = replies.printable(replies.FROM_NOT_OWNED.format(address=address))
                return self.reject(
                    "data", "from_not_owned", reply, login=account.address, header_from=address
                )
            return False  # another domain's address: no key of ours may vouch for it
        return bool(senders)

    async def _store(
        self,
        tx: Transaction,
        message: bytes,
        received: str,
        sign: bool,
        junk: bool,
        queue_sender: str,
        plan: Plan | None = None,
    ) -> str | None:
        """Queue the remote part (held), deliver the local part, then let the queue go on; the
        queue id, when there was a remote part.

        Both or neither: when local delivery fails the queued copy is withdrawn, since the
        client gets a 4xx and will send the whole message again. With a Sieve `plan`, the local
        copies go where the scripts said (filtering.py).
        """
        queue_id: str | None = None
        if tx.remote:
            queue_id = await hand_to_queue(
                self.services.queue,
                message,
                sender=queue_sender,
                recipients=tx.remote,
                received=received,
                sign=sign,
            )
        try:
            if plan is not None:
                if plan.placements:
                    await self.services.store.deliver_placed(
                        message, plan.placements, return_path=tx.sender, received=received
                    )
            elif tx.mailboxes:
                await self.services.store.deliver(
                    message,
                    list(tx.mailboxes.values()),
                    return_path=tx.sender,
                    received=received,
                    folder=JUNK_FOLDER if junk else None,
                )
        except BaseException:
            if queue_id is not None:
                await self.services.queue.withdraw(queue_id)
            raise
        if queue_id is not None:
            self.services.queue.release(queue_id)
        return queue_id

    async def deliver(
        self, tx: Transaction, message: bytes, greeting: Greeting, account: AccountEntry | None
    ) -> tuple[str, bool]:
        """Store the message in every local mailbox (and hand remote ones on): the reply, and
        whether the message was taken (the 250 follows)."""
        sign = self.submission(message, account)
        if isinstance(sign, str):
            return sign, False
        started = time.perf_counter()
        message_id = f"{_ID_PREFIX}{next(_message_ids):06X}"
        junk = False
        submitted = account is not None or sign
        if hygiene.wants_scan(self.services, self.listener.name, tx, submitted):
            scanned = await hygiene.scan(self.services, tx, message, greeting, self.peer_ip, message_id)
            if isinstance(scanned, str):
                reason = _SCAN_REFUSALS.get(scanned[:9], "scanner_unavailable")
                return self.reject("data", reason, scanned, id=message_id, sender=tx.sender), False
            message, junk = scanned.message, scanned.junk
        snapshot = self.services.holder.current
        received = self._received(snapshot, tx, message_id, greeting)
        plan = await self._filter(snapshot, tx, message)
        if plan is not None and plan.rejected and not plan.placements and not tx.remote:
            # RFC 5429 §2.1.1: every recipient's script rejects: refuse the message at DATA.
            reason = replies.printable(plan.rejected[0][1])
            reply = replies.SIEVE_REJECTED.format(reason=reason)
            return self.reject("data", "sieve_reject", reply, sender=tx.sender), False
        try:
            queue_id = await self._store(
                tx, message, received, sign, junk, self._queue_sender(tx, submitted), plan
            )
        except QuotaExceeded as full:
            entry = next(e for e in tx.mailboxes.values() if e.mailbox == full.mailbox)
            reply = replies.MAILBOX_FULL.format(address=entry.address)
            return self.reject("data", "mailbox_full", reply, sender=tx.sender, mailbox=entry.address), False
        except OSError as error:
            log.error(
                "delivery failed id=%s client=%s sender=%s error=%s",
                message_id,
                self.peer_ip,
                log_field(tx.sender),
                log_field(error.strerror or repr(error)),
            )
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                return replies.STORAGE_FULL, False  # RFC 3463 X.3.1: mail system full
            return replies.LOCAL_ERROR, False
        if plan is not None:
            try:
                await filtering.carry_out(
                    plan,
                    queue=self.services.queue,
                    store=self.services.store,
                    responses=self.services.responses,
                    snapshot=snapshot,
                    message=message,
                    sender=tx.sender,
                    queue_id=message_id,
                )
            except OSError as error:  # the message is delivered: the 250 stands
                log.error("sieve actions failed id=%s error=%s", message_id, log_field(str(error)))
        # The accept line: `queue=` is the id the outbound queue's lines carry to the final
        # delivered/bounced, so one grep follows the message from here to its end.
        log.info(
            "delivered id=%s queue=%s from=%s to=%s size=%d ms=%.1f client=%s listener=%s%s",
            message_id,
            queue_id or "-",
            log_field(tx.sender or "<>"),
            log_field(",".join(tx.recipients)),
            len(message),
            (time.perf_counter() - started) * 1000,
            self.peer_ip,
            self.listener.name,
            f" folder={JUNK_FOLDER}" if junk else "",
        )
        self.services.metrics.messages.labels(self.listener.name).inc()
        return replies.DELIVERED.format(id=message_id), True

    async def _filter(self, snapshot: Snapshot, tx: Transaction, message: bytes) -> Plan | None:
        """The Sieve plan for the local mailboxes, or None when no script applies to any."""
        mailboxes = list(tx.mailboxes.values())
        userscripts = self.services.userscripts
        if not any(filtering.applies(snapshot, entry, userscripts) for entry in mailboxes):
            return None
        loop = asyncio.get_running_loop()
        arguments = (snapshot, mailboxes, message, tx.sender, tx.recipients, userscripts)
        return await loop.run_in_executor(self.services.executor, filtering.decide, *arguments)

    def _received(self, snapshot: Snapshot, tx: Transaction, message_id: str, greeting: Greeting) -> str:
        """The Received field's value: RFC 5321 §4.4, protocol names from RFC 3848 / RFC 6531."""
        protocol = ("UTF8SMTP" if tx.smtputf8 else "ESMTP") if greeting.extended else "SMTP"
        if greeting.tls is not None:
            protocol += "S"
        if greeting.authenticated:
            protocol += "A"
        helo = _printable(greeting.helo or "unknown")
        ip = self.peer_ip
        literal = f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"
        parts = [
            f"from {helo} ({literal})",
            f"by {snapshot.hostname} (appliance) with {protocol} id {message_id}",
        ]
        if greeting.tls is not None:
            cipher = greeting.tls.cipher()
            parts.append(f"(using {greeting.tls.version()} with cipher {cipher[0] if cipher else 'unknown'})")
        if len(tx.recipients) == 1:
            parts.append(f"for <{tx.recipients[0]}>;")
        else:
            parts[-1] += ";"
        parts.append(_date_now())
        return "\n\t".join(parts)


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


def _recipient(path: str, snapshot: Snapshot, utf8: bool) -> Mailbox:
    if path.lower() == "postmaster":
        # RFC 5321 §4.5.1: <postmaster> without a domain must be accepted.
        for domain in _postmaster_domains(snapshot):
            if snapshot.resolve_recipient(f"postmaster@{domain}") is not None:
                return Mailbox("postmaster", domain, False)
        raise AddressError("no postmaster")
    return parse_mailbox(path, utf8=utf8)


def _postmaster_domains(snapshot: Snapshot) -> list[str]:
    """Where <postmaster> is looked for: the server's own name, its parent, then every domain."""
    hostname = snapshot.hostname
    candidates = [hostname, hostname.partition(".")[2], *snapshot.domain_names]
    return [domain for domain in dict.fromkeys(candidates) if domain and snapshot.is_local_domain(domain)]


def _printable(text: str) -> str:
    return "".join(c if "!" <= c <= "~" else "?" for c in text)[:MAX_HELO_LENGTH]


__all__ = ["MAX_HELO_LENGTH", "Greeting", "Intake", "Transaction"]
