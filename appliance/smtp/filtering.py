"""Sieve at local delivery: what the manifest's scripts decide for each local mailbox of a message.

`decide` runs each recipient account's scripts (domain `sieve_before`, the account's `sieve`,
domain `sieve_after`; snapshot.sieve_scripts) and returns a `Plan`: where each copy goes (folder,
flags), who rejects it, where it is redirected, which vacation replies to consider. `carry_out`
sends what goes out through the outbound queue: redirects (the original envelope sender, RFC
5228 §4.2), vacation replies and reject notices (null sender, `Auto-Submitted`, RFC 3834 §3.1.7
and RFC 5429 §2.1.2). A vacation reply goes once per `:days` per sender (store/responses.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from appliance.auth.service import log_field
from appliance.queue.bounce import Failure, report
from appliance.sieve import Envelope, Outcome, Vacation, run
from appliance.sieve.vacation import refusal, reply
from appliance.snapshot import AccountEntry, Snapshot
from appliance.store.folders import encode_folder_name, folder_directory_fits
from appliance.store.mailstore import MailStore, Placement
from appliance.store.userscripts import UserScripts

log = logging.getLogger("appliance.sieve")

# RFC 5232 §3 flags that have a Maildir letter; keywords are not stored at delivery.
_LETTERS = {"\\draft": "D", "\\flagged": "F", "\\answered": "R", "\\seen": "S", "\\deleted": "T"}


@dataclass
class Plan:
    placements: list[Placement] = field(default_factory=list)
    rejected: list[tuple[AccountEntry, str]] = field(default_factory=list)
    redirects: list[tuple[AccountEntry, str]] = field(default_factory=list)
    vacations: list[tuple[AccountEntry, Vacation, Envelope]] = field(default_factory=list)

    @property
    def delivers(self) -> bool:
        return bool(self.placements)


def _folder(name: str) -> str | None:
    """The Maildir++ folder for a Sieve mailbox name (None: INBOX or a name it cannot hold).
    Sieve names are Unicode (RFC 5228 §2.4.2); the folder is named as IMAP names it, in modified
    UTF-7 (RFC 3501 §5.1.3), so that "Büro" is the folder an IMAP client shows as "Büro"."""
    if name.upper() == "INBOX":
        return None
    if name.upper().startswith("INBOX."):
        name = name[6:]
    if (
        not name
        or not name.isprintable()
        or "/" in name
        or name.startswith(".")
        or name.endswith(".")
        or ".." in name
    ):
        return None
    encoded = encode_folder_name(name)
    return encoded if folder_directory_fits(encoded) else None


def _recipient(entry: AccountEntry, recipients: Sequence[str], delimiter: str) -> str:
    """The RCPT address that reached this account (its +detail kept for subaddress tests)."""
    for address in recipients:
        local, _, domain = address.rpartition("@")
        base = local.split(delimiter, 1)[0] if delimiter else local
        if f"{base}@{domain}".lower() in entry.addresses or address.lower() in entry.addresses:
            return address
    return entry.address


def _decide_one(
    snapshot: Snapshot,
    entry: AccountEntry,
    message: bytes,
    sender: str,
    recipients: Sequence[str],
    userscripts: UserScripts | None,
) -> tuple[Outcome | None, Envelope]:
    personal = None
    if (
        userscripts is not None
        and not snapshot.sieve_pinned(entry)
        and userscripts.may_have_active(entry.address)
    ):
        personal = userscripts.compiled_active(entry.address)
    scripts, resolver = snapshot.sieve_scripts(entry, personal)
    delimiter = snapshot.recipient_delimiter
    envelope = Envelope(sender, _recipient(entry, recipients, delimiter), entry.address, entry.addresses)
    if not scripts:
        return None, envelope
    return run(scripts, message, envelope, delimiter=delimiter or "+", resolver=resolver), envelope


def applies(snapshot: Snapshot, entry: AccountEntry, userscripts: UserScripts | None) -> bool:
    """Whether a script may run for the account (no disk access)."""
    if snapshot.sieve_scripts(entry)[0]:
        return True
    pinned = snapshot.sieve_pinned(entry)
    return userscripts is not None and not pinned and userscripts.may_have_active(entry.address)


def decide(
    snapshot: Snapshot,
    mailboxes: Sequence[AccountEntry],
    message: bytes,
    sender: str,
    recipients: Sequence[str],
    userscripts: UserScripts | None = None,
) -> Plan:
    """What the scripts say for every local mailbox (blocking: run it in an executor)."""
    plan = Plan()
    for entry in mailboxes:
        outcome, envelope = _decide_one(snapshot, entry, message, sender, recipients, userscripts)
        if outcome is None:
            plan.placements.append(Placement(entry))
            continue
        if outcome.error is not None:
            log.warning(
                "sieve error account=%s error=%s: kept in INBOX", entry.address, log_field(outcome.error)
            )
        if outcome.reject is not None:
            plan.rejected.append((entry, outcome.reject))
        for store in outcome.stores:
            letters = "".join(sorted({_LETTERS[f.lower()] for f in store.flags if f.lower() in _LETTERS}))
            plan.placements.append(Placement(entry, _folder(store.mailbox), letters, store.create))
        plan.redirects += [(entry, address) for address in outcome.redirects]
        if outcome.vacation is not None:
            plan.vacations.append((entry, outcome.vacation, envelope))
        log.info(
            "sieve account=%s stores=%s redirects=%d reject=%s vacation=%s",
            entry.address,
            log_field(",".join(store.mailbox for store in outcome.stores) or "-"),
            len(outcome.redirects),
            "yes" if outcome.reject is not None else "no",
            "yes" if outcome.vacation is not None else "no",
        )
    return plan


async def carry_out(
    plan: Plan,
    *,
    queue: object,
    store: MailStore,
    responses: object,
    snapshot: Snapshot,
    message: bytes,
    sender: str,
    queue_id: str,
) -> None:
    """Send the redirects, reject notices and vacation replies a delivered message led to:
    through the outbound queue, or straight into the mailboxes of local addresses."""
    now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    received = f"by {snapshot.hostname} (appliance sieve); {now}"

    async def send(data: bytes, envelope_sender: str, recipient: str) -> bool:
        resolution = snapshot.resolve_recipient(recipient)
        if resolution is not None:
            if resolution.mailboxes:
                mailboxes = list(resolution.mailboxes)
                await store.deliver(data, mailboxes, return_path=envelope_sender, received=received)
            remote = list(resolution.forwards)
        elif snapshot.is_local_domain(recipient.rpartition("@")[2]):
            log.info(
                "sieve message dropped id=%s to=%s: no such local address", queue_id, log_field(recipient)
            )
            return False
        else:
            remote = [recipient]
        if remote:
            if queue is None:
                log.warning(
                    "sieve message dropped id=%s to=%s: no outbound queue", queue_id, log_field(recipient)
                )
                return False
            enqueue = queue.enqueue  # type: ignore[attr-defined]
            await enqueue(
                data, sender=envelope_sender, recipients=remote, received=received, hold=False, sign=False
            )
        return True

    for entry, address in plan.redirects:
        if await send(message, sender, address):
            log.info("sieve redirect id=%s account=%s to=%s", queue_id, entry.address, log_field(address))
    if plan.rejected and sender:
        failures = [Failure(entry.address, "5.7.1", reason, None, False) for entry, reason in plan.rejected]
        notice = report(
            hostname=snapshot.hostname,
            sender=sender,
            queue_id=queue_id,
            arrived=time.time(),
            original=message,
            failures=failures,
            action="failed",
        )
        await send(notice, "", sender)
    loop = asyncio.get_running_loop()
    for entry, vacation, envelope in plan.vacations:
        why_not = refusal(vacation, message, envelope)
        if why_not is None and responses is not None:
            claim = responses.claim  # type: ignore[attr-defined]
            fresh = await loop.run_in_executor(
                None, claim, entry.address, sender, vacation.handle, vacation.seconds
            )
            why_not = None if fresh else "already replied within the period"
        if why_not is not None:
            log.info(
                "vacation not sent id=%s account=%s reason=%s", queue_id, entry.address, log_field(why_not)
            )
            continue
        answer = reply(vacation, message, envelope, snapshot.hostname).as_bytes()
        # RFC 3834 §3.3: the reply's envelope sender is null, so nothing answers it back.
        if await send(answer, "", sender):
            log.info("vacation sent id=%s account=%s to=%s", queue_id, entry.address, log_field(sender))
