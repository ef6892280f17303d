"""What the SMTP tests share: a manifest, clients over real sockets, the Maildirs to look into."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from pathlib import Path

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance

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


def client_context(server: RunningAppliance) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server.cafile))
    context.check_hostname = False  # the generated certificate names mail.example.test
    return context


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


class RawClient:
    """A bare socket speaking SMTP line by line, for what smtplib will not send."""

    def __init__(self, server: RunningAppliance, listener: str = "smtp", timeout: float = 15.0) -> None:
        sock = socket.create_connection(("127.0.0.1", server.ports[listener]), timeout=timeout)
        if listener == "submissions":
            sock = client_context(server).wrap_socket(sock)
        self.sock: socket.socket = sock
        self.file = sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One whole reply, continuation lines joined with newlines."""
        lines = []
        for _ in range(1000):
            line = self.file.readline(65536)
            if not line:
                raise ConnectionError("connection closed")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)
        raise AssertionError("no end of multi-line reply")

    def command(self, text: str | bytes) -> str:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.reply()

    def closed(self, timeout: float = 10.0) -> bool:
        """True once the server has closed the connection (within `timeout`)."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while time.monotonic() < deadline:
            try:
                if self.file.readline(65536) == b"":
                    return True
            except (ConnectionError, OSError):
                return True
        return False

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
