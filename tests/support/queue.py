"""What the outbound-queue tests share: SMTP peers of their own, on loopback (and the DNS server
of `tests.support.dns_server` that names them).

The peers are real SMTP servers (aiosmtpd) on 127.0.0.2, 127.0.0.3, ... — all loopback — sharing
one port, so that MX hosts can differ by address while `[outbound] smtp_port` names one port.
"""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.dns_server import DNSServer
from tests.support.wait import wait_for

# -- SMTP peers ----------------------------------------------------------------------------------


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool
    login: str | None
    peer: str


@dataclass
class Behaviour:
    """How a peer answers. `rcpt` maps an address to its reply; `data` replies are used up in
    order, then 250; `delay` holds each DATA that long (a slow peer)."""

    rcpt: dict[str, str] = field(default_factory=dict)
    data: list[str] = field(default_factory=list)
    delay: float = 0.0


class Peer:
    """An aiosmtpd server that keeps what it accepts, in a thread of its own."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        behaviour: Behaviour | None = None,
        tls_context: ssl.SSLContext | None = None,
        logins: dict[str, str] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.behaviour = behaviour or Behaviour()
        self.received: list[Received] = []
        self.sessions = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self._lock = threading.Lock()
        self._logins = logins
        parameters: dict[str, Any] = {}
        if tls_context is not None:
            parameters["tls_context"] = tls_context
        if logins is not None:
            parameters["authenticator"] = self._authenticate
            parameters["auth_require_tls"] = True
        self.controller = Controller(self, hostname=host, port=port, ready_timeout=10, **parameters)
        self.controller.start()

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword) and self._logins is not None:
            login, password = data.login.decode(), data.password.decode()
            if self._logins.get(login) == password:
                return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        reply = self.behaviour.rcpt.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.behaviour.delay:
                await asyncio.sleep(self.behaviour.delay)
            with self._lock:
                if self.behaviour.data:
                    return self.behaviour.data.pop(0)
                self.received.append(
                    Received(
                        sender=envelope.mail_from,
                        recipients=list(envelope.rcpt_tos),
                        data=envelope.original_content,
                        tls=session.ssl is not None,
                        login=session.auth_data if session.authenticated else None,
                        peer=session.peer[0],
                    )
                )
            return "250 2.0.0 OK queued"
        finally:
            with self._lock:
                self.concurrent -= 1

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """What the peer has received, once that is at least `count` messages."""

        def enough() -> list[Received]:
            with self._lock:
                return list(self.received) if len(self.received) >= count else []

        return wait_for(enough, timeout, f"{count} messages at {self.host}:{self.port}")

    def stop(self) -> None:
        self.controller.stop()


def free_port_on(*hosts: str) -> int:
    """A port free on every one of `hosts` (bounded tries)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        sockets = []
        try:
            for host in hosts:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError("no common free port")


# -- certificates and keys -----------------------------------------------------------------------


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for `name` (usable as its own CA file) and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


# -- messages and mailboxes ----------------------------------------------------------------------


def message(sender: str, to: str, subject: str = "hello", body: str = "Hello out there.\r\n") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{time.time_ns()}@example.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n{body}"
    ).encode()


def mailbox_messages(data_dir: Path, address: str) -> list[EmailMessage]:
    local, _, domain = address.partition("@")
    new = data_dir / "mail" / domain / local / "new"
    if not new.is_dir():
        return []
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for path in sorted(new.iterdir())
    ]


def delivery_status(dsn: EmailMessage) -> list[dict[str, str]]:
    """The DSN's per-message and per-recipient field groups (RFC 3464), as dicts."""
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    part = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    groups = []
    for block in part.get_payload():  # type: ignore[union-attr]
        groups.append({k.lower(): str(v) for k, v in block.items()})
    return groups


def dkim_key(dns_server: DNSServer, key_file: Path, selector: str, domain: str = "example.test") -> None:
    """A fresh RSA key written to `key_file` (PEM) and its public half published in DNS as
    SELECTOR._domainkey.DOMAIN (TXT, in 200-character strings), for the signer and dkimpy."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    dns_server.add(
        f"{selector}._domainkey.{domain}",
        "TXT",
        " ".join(f'"{record[i : i + 200]}"' for i in range(0, len(record), 200)),
    )
