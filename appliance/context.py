"""What every protocol server is handed: the services it needs, wired by `serve`."""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance.filter import Scanner
from appliance.filter.iprev import ReverseResolver
from appliance.metrics import Metrics
from appliance.queue.srs import SenderRewriting
from appliance.snapshot import SnapshotHolder
from appliance.store.reader import Readers, ThreadReaders
from appliance.tls import TLSProvider

if TYPE_CHECKING:
    from appliance.auth.service import AuthService
    from appliance.manifest.models import Listeners
    from appliance.queue import OutboundQueue
    from appliance.security import AutoBan
    from appliance.store.mailstore import MailStore
    from appliance.store.responses import ResponseRecord
    from appliance.store.userscripts import UserScripts


class SessionCounter:
    """Live sessions per protocol, for status and for draining on shutdown."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._clients: Counter[tuple[str, str]] = Counter()  # (protocol, client address) → open

    def opened(self, protocol: str, client: str | None = None) -> None:
        self._counts[protocol] += 1
        if client is not None:
            self._clients[(protocol, client)] += 1

    def closed(self, protocol: str, client: str | None = None) -> None:
        self._counts[protocol] -= 1
        if client is not None:
            key = (protocol, client)
            self._clients[key] -= 1
            if self._clients[key] <= 0:
                del self._clients[key]

    def refusal(
        self,
        protocol: str,
        client: str,
        max_connections: int,
        max_per_client: int,
        family: tuple[str, ...] = (),
    ) -> str | None:
        """Why one more `protocol` connection from `client` is refused, or None: the manifest's
        `max_connections` over `family` (the protocols counted together; SMTP's three
        listeners) or `protocol` alone, and `max_connections_per_client` for `protocol`."""
        if sum(self._counts[name] for name in family or (protocol,)) >= max_connections:
            return "max_connections"
        if self._clients[(protocol, client)] >= max_per_client:
            return "max_connections_per_client"
        return None

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in self._counts.items() if v}

    def total(self) -> int:
        return sum(self._counts.values())


@dataclass(frozen=True, eq=False)
class Services:
    """Built whole by `serve` before the first listener opens; nothing is filled in later."""

    holder: SnapshotHolder
    auth: AuthService
    store: MailStore
    tls: TLSProvider
    executor: concurrent.futures.ThreadPoolExecutor
    queue: OutboundQueue  # mail for other domains
    sessions: SessionCounter = field(default_factory=SessionCounter)
    # Message reads for IMAP FETCH/SEARCH, a batch of up to 200 messages at a time: one thread.
    # Its work is mostly Python under the GIL; with one thread per busy session they spent more
    # time passing the GIL around than reading (bench/imap.py, 20 clients: 81 us a message against
    # 19 us with one thread). The reader process costs more per message for batches this large
    # (bench/imap.py FETCH 1:*: 19-21 us of CPU a message against 14-17).
    readers: Readers = field(default_factory=ThreadReaders)
    # Message reads for POP3 RETR (read-ahead windows of a few messages, one round trip per
    # message): the reader process when the server started one (store/reader.py says why),
    # else `readers`.
    reader_process: Readers | None = None
    autoban: AutoBan | None = None  # refuse clients (and stop asking directories) after failed logins
    scanner: Scanner = field(default_factory=Scanner)  # rspamd, for [filter]
    reverse_names: ReverseResolver = field(default_factory=ReverseResolver)  # the client's, for [filter]
    srs: SenderRewriting = field(default_factory=SenderRewriting)  # [outbound] srs_domain
    metrics: Metrics = field(default_factory=Metrics)  # counted where things happen (metrics.py)
    responses: ResponseRecord | None = None  # vacation replies sent, per account and sender
    userscripts: UserScripts | None = None  # users' own Sieve scripts (ManageSieve)


@dataclass(frozen=True)
class ListenerSpec:
    name: str  # smtp | submission | submissions | pop3 | pop3s | imap | imaps | managesieve | metrics
    host: str
    port: int
    implicit_tls: bool

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


IMPLICIT_TLS = frozenset({"submissions", "pop3s", "imaps"})


def listener_specs(listeners: Listeners) -> dict[str, ListenerSpec]:
    """The manifest's [server.listeners] as specs, keyed by listener name."""
    specs: dict[str, ListenerSpec] = {}
    for name in type(listeners).model_fields:
        value = getattr(listeners, name)
        if value is None:
            continue
        host, _, port = value.rpartition(":")
        specs[name] = ListenerSpec(name, host.strip("[]"), int(port), name in IMPLICIT_TLS)
    return specs
