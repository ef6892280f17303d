"""The queue on disk, under `<data_dir>/queue/`: one file per message, one per delivery state.

`<id>.msg` holds one line of JSON (the envelope: sender, recipients, arrival, who handed it in,
whether it may be DKIM-signed) followed by the message with CRLF line ends. It is written to `tmp/`, fsynced, renamed into place
and the directory fsynced before `enqueue` returns, so an SMTP 250 is only ever given for mail that
survives a crash. `<id>.state` (attempts, next try, each recipient's result) appears after the
first attempt that leaves work to do, replaced atomically the same way. A message is done when its
`.msg` is removed; a `.state` without its `.msg` is left over and is cleaned up at start.

Every method blocks on the disk: call them in an executor.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.store.durable import replace_file

FLUSH_REQUEST = "flush"  # a file the CLI creates: retry everything now


@dataclass(frozen=True)
class Envelope:
    id: str
    sender: str  # "" for the null sender (bounces)
    recipients: tuple[str, ...]
    arrived: float  # Unix time the message was accepted
    received_from: str  # who handed it in (client address, or "bounce"), for the listing and logs
    size: int = 0
    # Whether the message may leave DKIM-signed: decided at intake (an authenticated submission
    # whose From the user may send as, a trusted network, a bounce of ours), since signing
    # happens at delivery time. A file written before this field existed reads as False.
    sign: bool = False


@dataclass
class RecipientState:
    result: str = "pending"  # pending | delivered | failed
    status: str = ""
    diagnostic: str = ""
    remote: str | None = None
    smtp: bool = False
    reported: bool = False  # a DSN for its failure was sent


@dataclass
class DeliveryState:
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""
    warned: bool = False  # the delay warning went out
    recipients: dict[str, RecipientState] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DeliveryState:
        data: dict[str, Any] = json.loads(text)
        recipients = {k: RecipientState(**v) for k, v in data.pop("recipients", {}).items()}
        return cls(**data, recipients=recipients)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.tmp = directory / "tmp"
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def ensure(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o700)

    def new_id(self) -> str:
        """Sortable by arrival: microseconds, then the process and a counter."""
        with self._lock:
            number = next(self._counter)
        return f"{time.time_ns() // 1000:014X}{os.getpid() & 0xFFFF:04X}{number & 0xFFFFF:05X}"

    # -- writing ---------------------------------------------------------------------------------
    def write(self, envelope: Envelope, message: bytes) -> None:
        header = json.dumps(
            {
                "id": envelope.id,
                "sender": envelope.sender,
                "recipients": list(envelope.recipients),
                "arrived": envelope.arrived,
                "received_from": envelope.received_from,
                "size": len(message),
                "sign": envelope.sign,
            },
            separators=(",", ":"),
        )
        self._place(f"{envelope.id}.msg", header.encode("utf-8", "surrogateescape") + b"\n" + message)

    def write_state(self, queue_id: str, state: DeliveryState) -> bool:
        """Record the state; False when the message is gone (delivered, or deleted meanwhile)."""
        if not (self.directory / f"{queue_id}.msg").exists():
            return False
        self._place(f"{queue_id}.state", state.to_json().encode())
        return True

    def _place(self, name: str, data: bytes) -> None:
        """Durable before it returns: file and directory fsynced (store/durable.py)."""
        replace_file(self.directory / name, data, temporary=self.tmp / f"{name}.{threading.get_ident()}")

    def remove(self, queue_id: str) -> bool:
        """Remove the message (then its state). True when there was one."""
        try:
            os.unlink(self.directory / f"{queue_id}.msg")
        except FileNotFoundError:
            found = False
        else:
            found = True
        try:
            os.unlink(self.directory / f"{queue_id}.state")
        except FileNotFoundError:
            pass
        return found

    # -- reading ---------------------------------------------------------------------------------
    def read_message(self, queue_id: str) -> bytes | None:
        try:
            with open(self.directory / f"{queue_id}.msg", "rb") as file:
                file.readline()
                return file.read()
        except FileNotFoundError:
            return None

    def exists(self, queue_id: str) -> bool:
        return (self.directory / f"{queue_id}.msg").exists()

    def load(self, *, clean: bool = False) -> list[tuple[Envelope, DeliveryState | None]]:
        """Every message waiting, oldest first, with its state when it has one."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        messages = sorted(name[:-4] for name in names if name.endswith(".msg"))
        states = {name[:-6] for name in names if name.endswith(".state")}
        found: list[tuple[Envelope, DeliveryState | None]] = []
        for queue_id in messages:
            envelope = self.read_envelope(queue_id)
            if envelope is None:
                continue
            state = None
            if queue_id in states:
                try:
                    state = DeliveryState.from_json((self.directory / f"{queue_id}.state").read_text())
                except (OSError, ValueError, TypeError):
                    state = None  # a torn state: start the message over (a duplicate, never a loss)
            found.append((envelope, state))
        if clean:
            for queue_id in states - set(messages):
                try:
                    os.unlink(self.directory / f"{queue_id}.state")
                except OSError:
                    pass
            for name in os.listdir(self.tmp):
                try:
                    os.unlink(self.tmp / name)  # a write a crash interrupted: never acknowledged
                except OSError:
                    pass
        return found

    def read_envelope(self, queue_id: str) -> Envelope | None:
        try:
            with open(self.directory / f"{queue_id}.msg", "rb") as file:
                line = file.readline(1_000_000)
        except FileNotFoundError:
            return None
        try:
            data = json.loads(line)
            return Envelope(
                id=str(data["id"]),
                sender=str(data["sender"]),
                recipients=tuple(str(r) for r in data["recipients"]),
                arrived=float(data["arrived"]),
                received_from=str(data.get("received_from", "")),
                size=int(data.get("size", 0)),
                sign=data.get("sign") is True,
            )
        except (ValueError, KeyError, TypeError):
            return None

    # -- requests from `appliance queue` ----------------------------------------------------------
    def request_flush(self) -> None:
        (self.directory / FLUSH_REQUEST).touch()

    def take_flush_request(self) -> bool:
        try:
            os.unlink(self.directory / FLUSH_REQUEST)
        except FileNotFoundError:
            return False
        return True
