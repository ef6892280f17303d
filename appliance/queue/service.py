"""The outbound queue: durable intake, scheduled attempts, retries, bounces.

`enqueue` returns once the message is on disk (so SMTP may answer 250). One asyncio task picks the
messages that are due, at most `max_deliveries` at a time and `connections_per_destination` per
domain (or smarthost); the settings are read from the current snapshot at each attempt, so a reload
applies to the next one. Disk work runs in the executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import functools
import heapq
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.queue.bounce import Failure, report
from appliance.queue.client import canonical_line_ends
from appliance.queue.delivery import Destination, Outcome, RemoteDelivery, Timeouts
from appliance.queue.routing import Resolver
from appliance.queue.signing import Signer, from_domain
from appliance.queue.spool import DeliveryState, Envelope, RecipientState, Spool

if TYPE_CHECKING:
    from appliance.manifest.models import Outbound
    from appliance.metrics import Metrics
    from appliance.snapshot import Snapshot, SnapshotHolder
    from appliance.store.mailstore import MailStore

log = logging.getLogger("appliance.queue")

FLUSH_CHECK_SECONDS = 1.0
STOP_GRACE_SECONDS = 5.0
ERROR_RETRY_SECONDS = 60.0
_CLIENT = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")


@dataclass
class _Item:
    envelope: Envelope
    state: DeliveryState
    busy: bool = False


class OutboundQueue:
    def __init__(
        self,
        holder: SnapshotHolder,
        store: MailStore,
        executor: concurrent.futures.Executor,
        data_dir: Path,
        metrics: Metrics | None = None,
    ) -> None:
        self.holder = holder
        self.metrics = metrics
        self.store = store
        self.executor = executor
        self.spool = Spool(data_dir / "queue")
        self._items: dict[str, _Item] = {}
        self._held: dict[str, Envelope] = {}  # written, waiting for release() or withdraw()
        self._due: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._limits: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._resolver: tuple[str | None, Resolver] | None = None
        self._remote = RemoteDelivery(holder.current.hostname)
        self._signer = Signer()
        self._stopping = False

    @property
    def size(self) -> int:
        return len(self._items)

    # -- start and stop ----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self._wake = asyncio.Event()
        await loop.run_in_executor(self.executor, self.spool.ensure)
        waiting = await loop.run_in_executor(self.executor, functools.partial(self.spool.load, clean=True))
        for envelope, state in waiting:
            self._add(envelope, state)
        await loop.run_in_executor(self.executor, self.spool.take_flush_request)
        log.info(
            "queue started messages=%d ms=%.0f directory=%s",
            len(self._items),
            (time.perf_counter() - started) * 1000,
            self.spool.directory,
        )
        self._runner = loop.create_task(self._run())

    async def stop(self) -> None:
        """Stop picking messages; give attempts in progress a moment, then cancel them (a
        cancelled attempt is made again after the restart)."""
        self._stopping = True
        self._poke()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._attempts:
            _done, pending = await asyncio.wait(set(self._attempts), timeout=STOP_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        log.info("queue stopped messages=%d", len(self._items))

    def figures(self) -> tuple[int, float]:
        """Messages waiting and the age in seconds of the oldest (0 when none), for the metrics."""
        if not self._items:
            return 0, 0.0
        return len(self._items), max(0.0, time.time() - min(i.envelope.arrived for i in self._items.values()))

    # -- intake --------------------------------------------------------------------------------
    async def enqueue(
        self,
        message: bytes,
        sender: str,
        recipients: Sequence[str],
        *,
        received_from: str = "",
        received: str = "",
        hold: bool = False,
        sign: bool = False,
    ) -> str:
        """Store `message` for `recipients` (none of them local) durably; return its queue id.

        `received` is the value of the Received field to add in front (RFC 5321 §4.4);
        `received_from` says who handed the message in. Raises OSError when the disk fails, so
        SMTP answers 451 and the client keeps the message. With `hold`, delivery waits for
        `release(id)`; `withdraw(id)` takes the message back instead (SMTP: the local part of the
        same message failed, the client will send it again, and remote recipients must not get
        it twice). With `sign`, the message leaves DKIM-signed when its From domain has a key;
        the caller vouches that the From is the sender's own (never so for mail that arrived
        from outside and is forwarded on).
        """
        if not recipients:
            raise ValueError("a message needs at least one recipient")
        # Line ends made canonical before anything signs the message (DKIM) or sends it on.
        message = canonical_line_ends(message)
        if received:
            value = received.replace("\r\n", "\n").strip("\n").replace("\n", "\r\n")
            message = b"Received: " + value.encode("utf-8", "surrogateescape") + b"\r\n" + message
        if not received_from:
            match = _CLIENT.search(received)
            received_from = match.group(1) if match else "local"
        queue_id = self.spool.new_id()
        envelope = Envelope(
            queue_id,
            sender,
            tuple(dict.fromkeys(recipients)),
            time.time(),
            received_from,
            len(message),
            sign=sign,
        )
        await asyncio.get_running_loop().run_in_executor(self.executor, self.spool.write, envelope, message)
        if hold:
            self._held[queue_id] = envelope
        else:
            self._add(envelope, None)
        log.info(
            "queued id=%s from=%s to=%s size=%d client=%s dkim=%s",
            queue_id,
            _field(sender or "<>"),
            _field(",".join(envelope.recipients)),
            len(message),
            _field(received_from),
            "sign" if sign else "no",
        )
        return queue_id

    def release(self, queue_id: str) -> None:
        """Start delivering a message enqueued with `hold`."""
        envelope = self._held.pop(queue_id, None)
        if envelope is not None:
            self._add(envelope, None)

    async def withdraw(self, queue_id: str) -> None:
        """Remove a message enqueued with `hold` before anything was tried."""
        if self._held.pop(queue_id, None) is not None:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.spool.remove, queue_id)
            log.info("queue withdrawn id=%s reason=local_delivery_failed", queue_id)

    def _add(self, envelope: Envelope, state: DeliveryState | None) -> None:
        if state is None:
            state = DeliveryState(
                next_try=envelope.arrived, recipients={r: RecipientState() for r in envelope.recipients}
            )
        item = _Item(envelope, state)
        self._items[envelope.id] = item
        self._schedule(item, state.next_try)

    def _schedule(self, item: _Item, when: float) -> None:
        item.state.next_try = when
        heapq.heappush(self._due, (when, next(self._order), item.envelope.id))
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def flush(self) -> int:
        """Make every waiting message due now (`appliance queue flush`, SIGUSR1)."""
        now = time.time()
        count = 0
        for item in self._items.values():
            if not item.busy:
                self._schedule(item, now)
                count += 1
        log.info("queue flush messages=%d", count)
        return count

    # -- the scheduler -------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        next_flush_check = 0.0
        while not self._stopping:
            self._wake.clear()
            now = time.time()
            limit = self.holder.current.manifest.outbound.max_deliveries
            while self._due and self._due[0][0] <= now and len(self._attempts) < limit:
                when, _order, queue_id = heapq.heappop(self._due)
                item = self._items.get(queue_id)
                if item is None or item.busy or item.state.next_try != when:
                    continue  # stale: delivered, rescheduled, or already being tried
                item.busy = True
                task = loop.create_task(self._attempt(item))
                self._attempts.add(task)
                task.add_done_callback(self._attempt_done)
            delay = FLUSH_CHECK_SECONDS
            if self._due and len(self._attempts) < limit:
                delay = min(delay, max(0.0, self._due[0][0] - time.time()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            if time.monotonic() >= next_flush_check:
                next_flush_check = time.monotonic() + FLUSH_CHECK_SECONDS
                if await loop.run_in_executor(self.executor, self.spool.take_flush_request):
                    await loop.run_in_executor(self.executor, self._forget_deleted)
                    self.flush()

    def _forget_deleted(self) -> None:
        """Drop messages `appliance queue delete` removed from the disk (runs in the executor)."""
        for queue_id in [i for i, item in list(self._items.items()) if not item.busy]:
            if not self.spool.exists(queue_id):
                self._items.pop(queue_id, None)
                log.info("queue removed id=%s reason=deleted", queue_id)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._attempts.discard(task)
        self._poke()

    # -- one attempt -----------------------------------------------------------------------------
    async def _attempt(self, item: _Item) -> None:
        try:
            await self._try(item)
        except asyncio.CancelledError:
            item.busy = False
            raise
        except Exception as error:  # a bug must not stop the queue; the message waits and retries
            log.exception("queue attempt crashed id=%s error=%s", item.envelope.id, _field(repr(error)))
            item.busy = False
            if item.envelope.id in self._items:
                self._schedule(item, time.time() + ERROR_RETRY_SECONDS)

    async def _try(self, item: _Item) -> None:
        loop = asyncio.get_running_loop()
        envelope, state = item.envelope, item.state
        message = await loop.run_in_executor(self.executor, self.spool.read_message, envelope.id)
        if message is None:
            self._items.pop(envelope.id, None)
            log.info("queue removed id=%s reason=deleted", envelope.id)
            return
        snapshot = self.holder.current
        settings = snapshot.manifest.outbound
        self._remote.helo_name = snapshot.hostname
        pending = [r for r, s in state.recipients.items() if s.result == "pending"]
        groups = await self._destinations(pending, settings, snapshot)
        message = await self._sign(message, envelope, snapshot)
        resolver = self._resolver_for(settings.resolver)
        timeouts = Timeouts(settings.connect_timeout, settings.command_timeout)
        attempt = state.attempts + 1
        results = await asyncio.gather(
            *(
                self._deliver(message, envelope, destination, recipients, resolver, timeouts, settings)
                for destination, recipients in groups
            )
        )
        now = time.time()
        state.attempts = attempt
        failed: list[Failure] = []
        errors: list[str] = []
        for outcome in itertools.chain.from_iterable(results):
            self._log_outcome(envelope, outcome, attempt, now)
            recipient = state.recipients[outcome.recipient]
            recipient.status, recipient.diagnostic = outcome.status, outcome.diagnostic
            recipient.remote, recipient.smtp = outcome.remote, outcome.smtp
            if outcome.result == "delivered":
                recipient.result = "delivered"
            elif outcome.result == "failed":
                recipient.result = "failed"
                failed.append(_failure(outcome.recipient, recipient))
            else:
                errors.append(f"{outcome.recipient}: {outcome.diagnostic}")
        pending = [r for r, s in state.recipients.items() if s.result == "pending"]
        if pending and now - envelope.arrived >= settings.max_queue_lifetime:
            for address in pending:
                recipient = state.recipients[address]
                recipient.result = "failed"
                recipient.diagnostic = (
                    f"delivery time expired after {_age(now - envelope.arrived)} and {attempt} attempts; "
                    f"last error: {recipient.diagnostic}"
                )
                recipient.status = "4.4.7"  # RFC 3463: delivery time expired
                failed.append(_failure(address, recipient))
                if self.metrics is not None:
                    self.metrics.outbound.labels("expired").inc()
                log.info(
                    "delivery id=%s to=%s result=expired attempts=%d age=%.0f",
                    envelope.id,
                    _field(address),
                    attempt,
                    now - envelope.arrived,
                )
            pending = []
        if failed:
            await self._bounce(envelope, message, failed, "failed")
            for failure in failed:
                state.recipients[failure.recipient].reported = True
        if not pending:
            await loop.run_in_executor(self.executor, self.spool.remove, envelope.id)
            self._items.pop(envelope.id, None)
            delivered = sum(1 for s in state.recipients.values() if s.result == "delivered")
            log.info(
                "queue done id=%s delivered=%d failed=%d attempts=%d age=%.1f",
                envelope.id,
                delivered,
                len(state.recipients) - delivered,
                attempt,
                now - envelope.arrived,
            )
            return
        warn_after = settings.delay_warning_after
        if warn_after is not None and not state.warned and now - envelope.arrived >= warn_after:
            delayed = [_failure(r, state.recipients[r]) for r in pending]
            await self._bounce(
                envelope,
                message,
                delayed,
                "delayed",
                retry_until=envelope.arrived + settings.max_queue_lifetime,
            )
            state.warned = True
        intervals = settings.retry_intervals
        wait = intervals[min(attempt - 1, len(intervals) - 1)]
        next_try = min(now + wait, envelope.arrived + settings.max_queue_lifetime)
        state.next_try = next_try
        state.last_error = errors[-1] if errors else ""
        kept = await loop.run_in_executor(self.executor, self.spool.write_state, envelope.id, state)
        item.busy = False
        if not kept:
            self._items.pop(envelope.id, None)
            log.info("queue removed id=%s reason=deleted", envelope.id)
            return
        log.info(
            "queue deferred id=%s pending=%d attempts=%d next_try_in=%.1f",
            envelope.id,
            len(pending),
            attempt,
            next_try - now,
        )
        self._schedule(item, next_try)

    async def _deliver(
        self,
        message: bytes,
        envelope: Envelope,
        destination: Destination,
        recipients: list[str],
        resolver: Resolver,
        timeouts: Timeouts,
        settings: Outbound,
    ) -> list[Outcome]:
        limit = settings.connections_per_destination
        held = self._limits.get(destination.key)
        if held is None or (held[0] != limit and not held[1].locked()):
            held = self._limits[destination.key] = (limit, asyncio.Semaphore(limit))
        async with held[1]:
            return await self._remote.deliver(
                message, envelope.sender, recipients, destination, resolver, timeouts
            )

    async def _destinations(
        self, recipients: list[str], settings: Outbound, snapshot: Snapshot
    ) -> list[tuple[Destination, list[str]]]:
        ca_file = str(snapshot.base_dir / settings.tls_ca_file) if settings.tls_ca_file else None
        if settings.relay_host:
            host, _, port = settings.relay_host.rpartition(":")
            credentials = None
            if settings.relay_user:
                password = await asyncio.get_running_loop().run_in_executor(
                    self.executor, _relay_password, settings, snapshot.base_dir
                )
                credentials = (settings.relay_user, password)
            relay = Destination(
                key=f"relay:{settings.relay_host}",
                domain=None,
                relay=(host.strip("[]"), int(port)),
                port=int(port),
                tls=settings.relay_tls,
                ca_file=ca_file,
                credentials=credentials,
            )
            return [(relay, recipients)]
        by_domain: dict[str, list[str]] = {}
        for recipient in recipients:
            by_domain.setdefault(recipient.rpartition("@")[2].lower(), []).append(recipient)
        required = set(settings.require_tls_domains)
        return [
            (
                Destination(
                    key=domain,
                    domain=domain,
                    relay=None,
                    port=settings.smtp_port,
                    tls="required" if domain in required else "opportunistic",
                    ca_file=ca_file,
                ),
                addresses,
            )
            for domain, addresses in by_domain.items()
        ]

    def _resolver_for(self, server: str | None) -> Resolver:
        if self._resolver is None or self._resolver[0] != server:
            self._resolver = (server, Resolver(server))
        return self._resolver[1]

    async def _sign(self, message: bytes, envelope: Envelope, snapshot: Snapshot) -> bytes:
        if not envelope.sign:
            return message  # inbound mail forwarded on, or an old spool file: never signed here
        domain = from_domain(message)
        model = snapshot.manifest.domains.get(domain) if domain else None
        if domain is None or model is None or model.dkim is None:
            return message
        key_file = snapshot.base_dir / model.dkim.key_file
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, self._signer.sign, message, domain, model.dkim.selector, key_file
            )
        except Exception as error:  # an unsigned message beats an undelivered one
            log.error("dkim failed domain=%s key=%s error=%s", domain, key_file, _field(str(error)))
            return message

    # -- bounces -------------------------------------------------------------------------------
    async def _bounce(
        self,
        envelope: Envelope,
        message: bytes,
        failures: list[Failure],
        action: str,
        *,
        retry_until: float | None = None,
    ) -> None:
        sender = envelope.sender
        if not sender:
            # RFC 5321 §4.5.5 / RFC 3464: never a DSN about a message with the null sender.
            log.info("bounce skipped id=%s action=%s reason=null_sender", envelope.id, action)
            return
        snapshot = self.holder.current
        dsn = report(
            hostname=snapshot.hostname,
            sender=sender,
            queue_id=envelope.id,
            arrived=envelope.arrived,
            original=message,
            failures=failures,
            action=action,
            retry_until=retry_until,
        )
        where = "remote"
        try:
            if snapshot.is_local_domain(sender.rpartition("@")[2]):
                resolution = snapshot.resolve_recipient(sender)
                if resolution is None:
                    log.warning(
                        "bounce undeliverable id=%s to=%s reason=unknown_local_sender",
                        envelope.id,
                        _field(sender),
                    )
                    return
                where = "local"
                if resolution.mailboxes:
                    received = (
                        f"by {snapshot.hostname} (appliance) id {envelope.id}-dsn;\n\t"
                        + email.utils.formatdate(localtime=True)
                    )
                    await self.store.deliver(dsn, resolution.mailboxes, return_path="", received=received)
                if resolution.forwards:
                    await self.enqueue(dsn, "", resolution.forwards, received_from="bounce", sign=True)
            else:
                await self.enqueue(dsn, "", [sender], received_from="bounce", sign=True)
        except Exception as error:
            log.error(
                "bounce failed id=%s to=%s action=%s error=%s",
                envelope.id,
                _field(sender),
                action,
                _field(repr(error)),
            )
            return
        if self.metrics is not None:
            self.metrics.bounces.inc()
        log.info(
            "bounce sent id=%s to=%s action=%s recipients=%s delivery=%s",
            envelope.id,
            _field(sender),
            action,
            _field(",".join(f.recipient for f in failures)),
            where,
        )

    def _log_outcome(self, envelope: Envelope, outcome: Outcome, attempt: int, now: float) -> None:
        if self.metrics is not None:
            self.metrics.outbound.labels(outcome.result).inc()
        log.info(
            "delivery id=%s to=%s result=%s status=%s remote=%s attempt=%d delay=%.1f diagnostic=%s",
            envelope.id,
            _field(outcome.recipient),
            outcome.result,
            outcome.status,
            _field(outcome.remote or "-"),
            attempt,
            now - envelope.arrived,
            _field(outcome.diagnostic),
        )


def _failure(address: str, recipient: RecipientState) -> Failure:
    return Failure(address, recipient.status, recipient.diagnostic, recipient.remote, recipient.smtp)


def _relay_password(settings: Outbound, base_dir: Path) -> str:
    if settings.relay_password_env:
        value = os.environ.get(settings.relay_password_env)
        if value is None:
            raise OSError(f"environment variable {settings.relay_password_env} is not set")
        return value
    assert settings.relay_password_file is not None
    return (base_dir / settings.relay_password_file).read_text().strip("\r\n")


def _age(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:.0f} seconds"


def _field(value: Any) -> str:
    """A log value: bare when it is one word, else quoted (JSON string rules)."""
    text = str(value)
    if text and not any(c in text for c in ' "=\\') and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)
