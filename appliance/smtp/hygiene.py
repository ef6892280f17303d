"""Inbound mail hygiene at the end of DATA: the message asked about at rspamd (appliance/filter)
before the 250, so that a refusal is an SMTP reply, never a bounce.

What is scanned: mail from the MX listener (`smtp`) from a client that did not log in and is not
in `trusted_networks`, when [filter] is declared and a local recipient's domain does not turn it
off (`filter = false`; with several domains, one that filters is enough: the DATA reply is one
for all). Submissions and trusted networks are skipped: they are our users' own mail, which the
queue DKIM-signs, and SPF or DMARC have nothing to say about them.

rspamd's action decides (RFC 5321 §4.2.5, RFC 3463): `reject` → 550 5.7.1 with rspamd's message;
`soft reject` / `greylist` → 451 4.7.1; `add header` / `rewrite subject` → stored with
`X-Spam: Yes` (and the new Subject) in the account's Junk folder when it has one; `no action` →
as before. Every scanned message gets an Authentication-Results field (RFC 8601) with rspamd's
SPF, DKIM, DMARC and ARC results, and loses any that claimed our name.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.auth.service import log_field
from appliance.filter import Envelope, ScanError, authentication_results, edit_header
from appliance.filter.verdict import REJECT, REWRITE_SUBJECT, SPAM_ACTIONS, TEMPFAIL_ACTIONS
from appliance.queue.signing import from_addresses
from appliance.smtp import replies

if TYPE_CHECKING:
    from appliance.context import Services
    from appliance.smtp.transaction import Greeting, Transaction

log = logging.getLogger("appliance.smtp")

MAX_REASON = 200  # characters of rspamd's message passed on in a reply
# Fields a sender could set to pass for our verdict; ours replace them.
_OURS = frozenset({"x-spam", "x-spam-score", "x-spam-action"})


@dataclass(frozen=True)
class Scanned:
    """The message to store, and whether it goes to the Junk folder."""

    message: bytes
    junk: bool


def wants_scan(services: Services, listener: str, tx: Transaction, submission: bool) -> bool:
    snapshot = services.holder.current
    if snapshot.filter is None or listener != "smtp" or submission:
        return False
    domains = {entry.domain for entry in tx.mailboxes.values()}
    return not domains or any(snapshot.filters(domain) for domain in domains)


async def scan(
    services: Services,
    tx: Transaction,
    message: bytes,
    greeting: Greeting,
    client_ip: str,
    queue_id: str,
) -> Scanned | str:
    """The message as it is to be stored, or the reply that refuses it."""
    snapshot = services.holder.current
    settings = snapshot.filter
    assert settings is not None  # wants_scan said so
    tls = greeting.tls
    lifetime = min(2.0, settings.timeout / 3)
    reverse = await services.reverse_names.lookup(client_ip, settings.resolver, lifetime)
    envelope = Envelope(
        client_ip=client_ip,
        helo=greeting.helo,
        sender=tx.sender,
        recipients=tuple(tx.recipients),
        queue_id=queue_id,
        hostname=snapshot.hostname,
        tls_version=tls.version() if tls is not None else None,
        tls_cipher=(tls.cipher() or ("",))[0] if tls is not None else None,
        client_name=reverse.name,
    )
    started = time.perf_counter()
    try:
        verdict = await services.scanner.check(settings, message, envelope)
    except ScanError as error:
        services.metrics.verdicts.labels("failed").inc()
        log.warning(
            "scan failed id=%s client=%s error=%s on_failure=%s",
            queue_id,
            client_ip,
            log_field(str(error)),
            "tempfail" if settings.tempfail else "accept",
        )
        if settings.tempfail:
            return replies.SCANNER_UNAVAILABLE
        # Accepted unscanned: a forged verdict of ours still goes.
        return Scanned(edit_header(message, snapshot.hostname, [], drop=_OURS), junk=False)
    services.metrics.verdicts.labels(verdict.action.replace(" ", "_")).inc()
    log.info(
        "scanned id=%s action=%s score=%.2f symbols=%d ms=%.1f client=%s sender=%s",
        queue_id,
        log_field(verdict.action.replace(" ", "_")),
        verdict.score,
        len(verdict.symbols),
        (time.perf_counter() - started) * 1000,
        client_ip,
        log_field(tx.sender or "<>"),
    )
    reason = replies.printable(verdict.message or "")[:MAX_REASON]
    if verdict.action == REJECT:
        return replies.SPAM_REJECTED.format(reason=reason or "Message rejected as spam")
    if verdict.action in TEMPFAIL_ACTIONS:
        return replies.SPAM_DEFERRED.format(reason=reason or "Try again later")
    senders = from_addresses(message)
    fields = [
        (
            "Authentication-Results",
            authentication_results(
                snapshot.hostname,
                verdict,
                tx.sender,
                senders[0] if senders else None,
                (reverse.result, client_ip, reverse.name),
            ),
        )
    ]
    spam = verdict.action in SPAM_ACTIONS
    if spam:
        fields += [
            ("X-Spam", "Yes"),
            ("X-Spam-Score", f"{verdict.score:.2f}"),
            ("X-Spam-Action", verdict.action),
        ]
    subject = verdict.subject if verdict.action == REWRITE_SUBJECT else None
    edited = edit_header(message, snapshot.hostname, fields, subject=subject, drop=_OURS)
    return Scanned(edited, junk=spam)


__all__ = ["Scanned", "scan", "wants_scan"]
