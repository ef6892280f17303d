"""DKIM signatures (RFC 6376) on mail leaving for other servers, per sending domain.

The domain is the one in the From field (what DMARC aligns with), when it is a local domain with
`dkim = { selector, key_file }` in the manifest. Signing is CPU work: call `sign` in an executor.

Written here on `cryptography` rather than taken from a DKIM library, so that the tests can verify
the signatures with an independent implementation (dkimpy) — a signer checked only by its own
verifier proves little. rsa-sha256 (RFC 6376) and ed25519-sha256 (RFC 8463), relaxed/relaxed.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import re
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

_FROM = re.compile(rb"^From:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
# RFC 6376 §5.4.1: the fields worth signing (From is required), once each; plus an extra "from"
# so a From field added later breaks the signature.
_HEADERS = [
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
]


def from_addresses(message: bytes) -> list[str]:
    """The addresses of every From field of the header (RFC 5322 §3.6.2: one or more in one
    field; a second field is malformed but must not hide an address), lower-case, in order."""
    end = re.search(rb"\r?\n\r?\n", message)
    header = message if end is None else message[: end.start()]
    values = [match.group(1).decode("utf-8", "replace") for match in _FROM.finditer(header)]
    return [address.lower() for _name, address in email.utils.getaddresses(values) if address]


def from_domain(message: bytes) -> str | None:
    """The domain of the first address in the From field, lower-case."""
    addresses = from_addresses(message)
    if not addresses:
        return None
    _, at, domain = addresses[0].rpartition("@")
    return domain if at and domain else None


class Signer:
    """Signs with the key files the manifest names; keys are read once per file change."""

    def __init__(self) -> None:
        self._keys: dict[Path, tuple[int, _Key]] = {}
        self._lock = threading.Lock()

    def sign(self, message: bytes, domain: str, selector: str, key_file: Path) -> bytes:
        """The message (CRLF line ends) with a DKIM-Signature field in front."""
        key = self._key(key_file)
        message = _CRLF.sub(b"\r\n", message)
        end = message.find(b"\r\n\r\n")
        header, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 4 :])
        fields = _fields(header)
        present = {name for name, _ in fields}
        # Each field once, plus one more "from": a From added in transit then breaks the
        # signature (RFC 6376 §8.15, "over-signing").
        signed = [name for name in _HEADERS if name in present] + [b"from"]
        algorithm = "ed25519-sha256" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa-sha256"
        body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest()).decode()
        value = (
            f" v=1; a={algorithm}; c=relaxed/relaxed; d={domain}; s={selector};\r\n"
            f" t={int(time.time())}; h={':'.join(n.decode() for n in signed)};\r\n"
            f" bh={body_hash};\r\n b="
        ).encode("ascii")
        # RFC 6376 §5.4.2: the selected fields bottom-up, then this field with an empty b=,
        # without its final CRLF.
        data = b"".join(_relaxed_field(name, field) for name, field in _select(fields, signed))
        data += _relaxed_field(b"dkim-signature", b"DKIM-Signature:" + value)[:-2]
        if isinstance(key, ed25519.Ed25519PrivateKey):
            signature = key.sign(hashlib.sha256(data).digest())  # RFC 8463 §3
        else:
            signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return b"DKIM-Signature:" + value + base64.b64encode(signature) + b"\r\n" + message

    def _key(self, path: Path) -> _Key:
        stamp = os.stat(path).st_mtime_ns
        with self._lock:
            cached = self._keys.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
            raise ValueError(f"{path}: a DKIM key must be RSA or Ed25519")
        with self._lock:
            self._keys[path] = (stamp, key)
        return key


_Key = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_CRLF = re.compile(rb"\r?\n")
_FIELD_START = re.compile(rb"^([^\s:]+)[ \t]*:", re.MULTILINE)
_WSP = re.compile(rb"[ \t]+")


def _fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, whole field with its folded lines and final CRLF), in order."""
    starts = [
        m
        for m in _FIELD_START.finditer(header)
        if m.start() == 0 or header[m.start() - 1 : m.start()] == b"\n"
    ]
    fields = []
    for index, match in enumerate(starts):
        stop = starts[index + 1].start() if index + 1 < len(starts) else len(header)
        fields.append((match.group(1).lower(), header[match.start() : stop]))
    return fields


def _select(fields: list[tuple[bytes, bytes]], names: list[bytes]) -> list[tuple[bytes, bytes]]:
    """RFC 6376 §5.4.2: for a name listed n times, its last n instances, bottom-up; none left → nothing."""
    remaining: dict[bytes, list[bytes]] = {}
    for name, field in fields:
        remaining.setdefault(name, []).append(field)
    chosen = []
    for name in names:
        instances = remaining.get(name)
        if instances:
            chosen.append((name, instances.pop()))
    return chosen


def _relaxed_field(name: bytes, field: bytes) -> bytes:
    """RFC 6376 §3.4.2: lower-case name, unfolded, runs of WSP as one space, none around the colon."""
    value = field.split(b":", 1)[1] if b":" in field else field
    value = _WSP.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name + b":" + value + b"\r\n"


def _relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4: WSP runs as one space, none at line ends, no empty lines at the end."""
    lines = [_WSP.sub(b" ", line).rstrip(b" ") for line in body.split(b"\r\n")]
    while lines and not lines[-1]:
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)
