"""What every protocol server is handed: the services it needs, wired by `serve`."""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from appliance.snapshot import SnapshotHolder
from appliance.tls import TLSProvider

if TYPE_CHECKING:
    from appliance.auth.service import AuthService
    from appliance.security import AutoBan
    from appliance.store.maildir import MailStore


class SessionCounter:
    """Live sessions per protocol, for status and for draining on shutdown."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def opened(self, protocol: str) -> None:
        self._counts[protocol] += 1

    def closed(self, protocol: str) -> None:
        self._counts[protocol] -= 1

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in self._counts.items() if v}

    def total(self) -> int:
        return sum(self._counts.values())


@dataclass
class Services:
    holder: SnapshotHolder
    auth: AuthService
    store: MailStore
    tls: TLSProvider
    executor: concurrent.futures.ThreadPoolExecutor
    sessions: SessionCounter = field(default_factory=SessionCounter)
    queue: Any = None  # the outbound queue, once there is one
    autoban: AutoBan | None = None  # refuse clients (and stop asking directories) after failed logins


@dataclass(frozen=True)
class ListenerSpec:
    name: str  # smtp | submission | submissions | pop3 | pop3s | imap | imaps
    host: str
    port: int
    implicit_tls: bool

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


IMPLICIT_TLS = frozenset({"submissions", "pop3s", "imaps"})


def listener_specs(listeners: Any) -> dict[str, ListenerSpec]:
    """The manifest's [server.listeners] as specs, keyed by listener name."""
    specs: dict[str, ListenerSpec] = {}
    for name in type(listeners).model_fields:
        value = getattr(listeners, name)
        if value is None:
            continue
        host, _, port = value.rpartition(":")
        specs[name] = ListenerSpec(name, host.strip("[]"), int(port), name in IMPLICIT_TLS)
    return specs
