"""What the POP3 tests share: a manifest, messages put straight into a Maildir, clients."""

from __future__ import annotations

import itertools
import os
import poplib
import time
from pathlib import Path

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import ListenerClient, client_context

PASSWORD = "Pop3!Passw0rd"
HASH = hash_password(PASSWORD)
JOHN = "john@example.test"
MARY = "mary@example.test"

_counter = itertools.count(1)


def domains(*accounts: str) -> str:
    lines = ['[domains."example.test"]', '[domains."example.test".accounts]']
    lines += [f'{name} = {{ password_hash = "{HASH}" }}' for name in accounts]
    return "\n".join(lines) + "\n"


def start(
    appliance: ApplianceFactory,
    *,
    listeners: tuple[str, ...] = ("pop3", "pop3s"),
    server_extra: str = "",
    limits: str = "",
    body: str | None = None,
) -> RunningAppliance:
    return appliance.start(
        body if body is not None else domains("john", "mary"),
        listeners=listeners,
        server_extra=server_extra,
        limits=limits,
    )


def maildir(server: RunningAppliance, local: str = "john") -> Path:
    return server.data_dir / "mail" / "example.test" / local


def put_message(server: RunningAppliance, body: bytes, local: str = "john") -> str:
    """Write a message into new/ as a delivery would (LF line ends, S= and W= in the name)."""
    root = maildir(server, local)
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    unique = f"{int(time.time())}.M{time.time_ns() // 1000 % 1_000_000}P{os.getpid()}Q{next(_counter)}.test"
    crlf_size = len(body) + body.count(b"\n") - body.count(b"\r\n")
    name = f"{unique},S={len(body)},W={crlf_size}"
    temporary = root / "tmp" / name
    temporary.write_bytes(body)
    os.rename(temporary, root / "new" / name)
    return unique


def message(subject: str, body: str = "Hello.\n") -> bytes:
    return f"From: a@remote.example\nTo: {JOHN}\nSubject: {subject}\n\n{body}".encode()


def files(server: RunningAppliance, local: str = "john") -> list[str]:
    root = maildir(server, local)
    return sorted(p.name for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir())


def login(server: RunningAppliance, user: str = JOHN, password: str = PASSWORD) -> poplib.POP3:
    """A poplib client over STLS, logged in with USER/PASS."""
    client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=30)
    client.stls(client_context(server))
    client.user(user)
    client.pass_(password)
    return client


class RawClient(ListenerClient):
    """A bare socket speaking POP3 line by line, for what poplib will not send."""

    def __init__(
        self,
        server: RunningAppliance,
        listener: str = "pop3",
        source: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        super().__init__(server, listener, source=source, timeout=timeout)
        self.greeting = self.line()

    def command(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line()

    def multiline(self) -> list[bytes]:
        lines: list[bytes] = []
        for _ in range(1_000_000):
            line = self.line()
            if line == b".":
                return lines
            lines.append(line)
        raise AssertionError("no end of multi-line reply")

    def starttls(self) -> None:
        assert self.command("STLS").startswith(b"+OK")
        self.wrap(client_context(self.server))
