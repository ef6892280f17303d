"""Which senders a vacation reply already went to: once per `:days` per sender (RFC 5230 §4.1).

One small file per account under `<data_dir>/sieve/responses/<domain>/<local>`: a line
"<sha256 of handle and sender> <until, epoch seconds>" per reply, replaced whole (durable.py) when
a reply is recorded, so the record survives restarts and crashes. No address is stored in clear.
Entries past their time are dropped on the next write. Everything here blocks: run it in an
executor; one lock serialises the read-check-write of all accounts (replies are rare).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from appliance.store import durable

MAX_ENTRIES = 10_000  # per account: the oldest go first beyond this


class ResponseRecord:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "sieve" / "responses"
        self._lock = threading.Lock()

    def _path(self, account: str) -> Path:
        local, _, domain = account.rpartition("@")
        return self.root / domain / local

    def claim(self, account: str, sender: str, handle: str, period: float, now: float | None = None) -> bool:
        """True (and recorded) when no reply with this handle went to `sender` within `period`."""
        now = time.time() if now is None else now
        key = hashlib.sha256(f"{handle}\0{sender.lower()}".encode("utf-8", "surrogateescape")).hexdigest()
        path = self._path(account)
        with self._lock:
            entries = self._read(path, now)
            if entries.get(key, 0) > now:
                return False
            entries[key] = now + period
            if len(entries) > MAX_ENTRIES:
                entries = dict(sorted(entries.items(), key=lambda item: item[1])[-MAX_ENTRIES:])
            path.parent.mkdir(parents=True, exist_ok=True)
            data = "".join(f"{k} {int(until)}\n" for k, until in entries.items())
            durable.replace_file(path, data.encode())
            return True

    @staticmethod
    def _read(path: Path, now: float) -> dict[str, float]:
        entries: dict[str, float] = {}
        try:
            with open(path, "rb") as file:
                text = file.read(MAX_ENTRIES * 100).decode("ascii", "replace")
        except FileNotFoundError:
            return entries
        for line in text.splitlines():
            key, _, until = line.partition(" ")
            if until.isdigit() and int(until) > now and len(key) == 64:
                entries[key] = float(until)
        return entries

    def forget(self, account: str) -> None:
        try:
            os.unlink(self._path(account))
        except FileNotFoundError:
            pass
