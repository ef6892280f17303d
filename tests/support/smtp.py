"""What the SMTP tests share: a manifest, clients over real sockets, the Maildirs to look into."""

from __future__ import annotations

import smtplib
from pathlib import Path

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import ListenerClient, client_context

PASSWORD = "Smtp!Passw0rd"
HASH = hash_password(PASSWORD)
JOHN = "john@example.test"
MARY = "mary@example.test"
SMTP_LISTENERS = ("smtp", "submission", "submissions")

DOMAINS = f"""
[domains."example.test"]
aliases = {{ team = ["john", "mary"], sales = ["john"] }}
[domains."example.test".accounts]
john = {{ password_hash = "{HASH}", addresses = ["j.doe"] }}
mary = {{ password_hash = "{HASH}" }}
gone = {{ password_hash = "{HASH}", enabled = false }}
small = {{ password_hash = "{HASH}", quota = "2 KB" }}

[domains."catchall.test"]
catch_all = "john@example.test"

[domains."off.test"]
enabled = false
[domains."off.test".accounts]
bob = {{ password_hash = "{HASH}" }}

[domains."tiny.test"]
max_message_size = "1 KB"
[domains."tiny.test".accounts]
ann = {{ password_hash = "{HASH}" }}
"""


def start(
    appliance: ApplianceFactory,
    *,
    listeners: tuple[str, ...] = SMTP_LISTENERS,
    server_extra: str = "",
    limits: str = "",
    body: str = DOMAINS,
) -> RunningAppliance:
    return appliance.start(body, listeners=listeners, server_extra=server_extra, limits=limits)


def maildir(server: RunningAppliance, address: str = JOHN) -> Path:
    local, _, domain = address.partition("@")
    return server.data_dir / "mail" / domain / local


def stored(server: RunningAppliance, address: str = JOHN) -> list[Path]:
    """Files in new/ of the account's Maildir, oldest first."""
    new = maildir(server, address) / "new"
    return sorted(new.iterdir(), key=lambda p: p.name) if new.is_dir() else []


def all_stored(server: RunningAppliance) -> list[Path]:
    root = server.data_dir / "mail"
    return sorted(p for p in root.glob("*/*/*/*") if p.is_file()) if root.is_dir() else []


def connect(server: RunningAppliance, listener: str = "smtp") -> smtplib.SMTP:
    """smtplib on a listener: EHLO done, STARTTLS done on "submission"."""
    port = server.ports[listener]
    client: smtplib.SMTP
    if listener == "submissions":
        client = smtplib.SMTP_SSL("127.0.0.1", port, context=client_context(server), timeout=30)
    else:
        client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("client.example")
    if listener == "submission":
        client.starttls(context=client_context(server))
        client.ehlo("client.example")
    return client


def login(server: RunningAppliance, listener: str = "submission", user: str = JOHN) -> smtplib.SMTP:
    client = connect(server, listener)
    client.login(user, PASSWORD)
    return client


def message(subject: str = "hello", body: str = "Hello.\r\n", sender: str = "a@remote.example") -> bytes:
    return f"From: {sender}\r\nTo: {JOHN}\r\nSubject: {subject}\r\n\r\n{body}".encode()


class RawClient(ListenerClient):
    """A bare socket speaking SMTP line by line, for what smtplib will not send."""

    def __init__(
        self,
        server: RunningAppliance,
        listener: str = "smtp",
        timeout: float = 15.0,
        source: str | None = None,
    ) -> None:
        super().__init__(server, listener, source=source, timeout=timeout)
        self.greeting = self.reply()

    def reply(self) -> str:
        """One whole reply, continuation lines joined with newlines."""
        lines = []
        for _ in range(1000):
            text = self.line().decode("utf-8", "replace")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)
        raise AssertionError("no end of multi-line reply")

    def command(self, text: str | bytes) -> str:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.reply()
