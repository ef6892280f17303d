"""TLS for every listener: one server context per certificate, rebuilt when the files change.

`server_context()` is asked at each handshake (STARTTLS, STLS, or the accept of an implicit-TLS
listener), so a new certificate or key applies to the next handshake without a restart.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.snapshot import SnapshotHolder

log = logging.getLogger("appliance.tls")

# Modern AEAD suites only for TLS 1.2 (TLS 1.3 suites are not set through this list).
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def generate_self_signed(certificate: Path, key: Path, hostname: str) -> None:
    """An EC P-256 key and a self-signed certificate for `hostname`, valid for two years."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=730))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    key.parent.mkdir(parents=True, exist_ok=True)
    certificate.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key_bytes)
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class TLSProvider:
    def __init__(self, holder: SnapshotHolder) -> None:
        self._holder = holder
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._context: ssl.SSLContext | None = None

    def paths(self) -> tuple[Path, Path]:
        snapshot = self._holder.current
        tls = snapshot.manifest.server.tls
        return snapshot.base_dir / tls.certificate, snapshot.base_dir / tls.key

    def ensure_files(self) -> None:
        """Create a self-signed certificate and key when neither exists yet."""
        certificate, key = self.paths()
        if not certificate.exists() and not key.exists():
            generate_self_signed(certificate, key, self._holder.current.hostname)
            log.info("tls generated=self-signed certificate=%s key=%s", certificate, key)

    def server_context(self) -> ssl.SSLContext:
        """The context for the certificate in force now (raises OSError/ssl.SSLError when unusable)."""
        snapshot = self._holder.current
        tls = snapshot.manifest.server.tls
        certificate, key = self.paths()
        with self._lock:
            cert_stat, key_stat = certificate.stat(), key.stat()
            cache_key = (
                str(certificate),
                str(key),
                cert_stat.st_mtime_ns,
                cert_stat.st_size,
                cert_stat.st_ino,
                key_stat.st_mtime_ns,
                key_stat.st_size,
                key_stat.st_ino,
                tls.min_version,
                tls.ciphers,
            )
            if self._context is not None and cache_key == self._key:
                return self._context
            context = build_server_context(certificate, key, tls.min_version, tls.ciphers)
            if self._context is not None:
                log.info("tls reloaded certificate=%s", certificate)
            self._context, self._key = context, cache_key
            return context

    def listener_context(self) -> ssl.SSLContext:
        """The context for an implicit-TLS listener; each handshake switches to the certificate
        in force then.

        `create_server` keeps one context for the listener's life; the SNI callback (called for
        every ClientHello, with or without a server name) hands the connection to
        `server_context()`, so a renewed certificate applies without reopening the port.
        """
        current = self.server_context()
        certificate, key = self.paths()
        tls = self._holder.current.manifest.server.tls
        context = build_server_context(certificate, key, tls.min_version, tls.ciphers)

        def use_current(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            try:
                ssl_object.context = self.server_context()
            except (OSError, ValueError):
                ssl_object.context = current  # keep serving the last good certificate
            return None

        context.sni_callback = use_current
        return context


def build_server_context(
    certificate: Path, key: Path, min_version: str, ciphers: str | None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers or DEFAULT_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(certificate, key)
    return context
