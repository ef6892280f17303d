"""An LDAP simple bind (RFC 4511 §4.2) written and read directly on a pooled connection's socket.

A login is one simple bind on a warm connection. ldap3 builds and parses each bind with pyasn1
and its own bookkeeping: about 0.25 ms of CPU per bind, as much as the rest of a login together,
all of it holding the GIL while other logins wait. The bind request and response are small fixed
BER structures, so they are encoded and decoded here (about 20 µs); ldap3 still opens the
connection, does TLS and StartTLS, and runs every search.

Only what a bind needs is decoded: the message id, the result code, the matched DN and the
diagnostic message (where AD puts its `data 52e` code). Anything else on the wire (a notice of
disconnection, another message id, broken BER) means the connection cannot be trusted:
`BindProtocolError`, and the pool drops it.
"""

from __future__ import annotations

import itertools
import threading
from typing import Protocol

MAX_RESPONSE = 64 * 1024  # a bind response is ~100 bytes; a referral list could be longer
_SEQUENCE = 0x30
_INTEGER = 0x02
_ENUMERATED = 0x0A
_OCTET_STRING = 0x04
_BIND_REQUEST = 0x60  # [APPLICATION 0], constructed
_BIND_RESPONSE = 0x61  # [APPLICATION 1], constructed
_SIMPLE = 0x80  # [0] primitive: the simple authentication choice
_MAX_MESSAGE_ID = 2**31 - 1

_ids = itertools.count(1)
_ids_lock = threading.Lock()


class BindProtocolError(Exception):
    """The server's answer was not a bind response for our request: drop the connection."""


class _Socket(Protocol):
    def sendall(self, data: bytes, /) -> None: ...
    def recv(self, size: int, /) -> bytes: ...


def next_message_id() -> int:
    with _ids_lock:
        value = next(_ids)
    return value % _MAX_MESSAGE_ID or 1


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes((size,))
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def _element(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def _integer(tag: int, value: int) -> bytes:
    return _element(tag, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def encode_bind_request(message_id: int, name: str, password: str) -> bytes:
    """LDAPMessage { messageID, bindRequest { version 3, name, simple password } }."""
    request = (
        _integer(_INTEGER, 3)
        + _element(_OCTET_STRING, name.encode("utf-8"))
        + _element(_SIMPLE, password.encode("utf-8"))
    )
    return _element(_SEQUENCE, _integer(_INTEGER, message_id) + _element(_BIND_REQUEST, request))


def _header(data: bytes | memoryview, offset: int) -> tuple[int, int, int] | None:
    """(tag, content start, content length) of the element at `offset`; None if not all here."""
    if offset + 2 > len(data):
        return None
    tag, first = data[offset], data[offset + 1]
    if first < 0x80:
        return tag, offset + 2, first
    count = first & 0x7F
    if count == 0 or count > 4:
        raise BindProtocolError(f"unsupported BER length form 0x{first:02x}")
    if offset + 2 + count > len(data):
        return None
    return tag, offset + 2 + count, int.from_bytes(data[offset + 2 : offset + 2 + count], "big")


def _take(data: bytes, offset: int, end: int, tag: int) -> tuple[bytes, int]:
    """The content of the element with `tag` at `offset` (which must end by `end`) and what follows."""
    header = _header(data, offset)
    if header is None or header[0] != tag or header[1] + header[2] > end:
        raise BindProtocolError(f"expected BER tag 0x{tag:02x} at byte {offset}")
    start, size = header[1], header[2]
    return data[start : start + size], start + size


def decode_bind_response(message: bytes) -> tuple[int, dict[str, object]]:
    """(message id, ldap3-style result dict) of one complete LDAPMessage holding a BindResponse."""
    body, end = _take(message, 0, len(message), _SEQUENCE)
    if end != len(message):
        raise BindProtocolError("bytes after the LDAP message")
    raw_id, offset = _take(body, 0, len(body), _INTEGER)
    message_id = int.from_bytes(raw_id, "big", signed=True)
    header = _header(body, offset)
    if header is None or header[0] != _BIND_RESPONSE:
        kind = "none" if header is None else f"0x{header[0]:02x}"
        raise BindProtocolError(f"not a bind response (message id {message_id}, operation {kind})")
    stop = header[1] + header[2]
    if stop > len(body):
        raise BindProtocolError("truncated bind response")
    raw_code, offset = _take(body, header[1], stop, _ENUMERATED)
    matched, offset = _take(body, offset, stop, _OCTET_STRING)
    diagnostic, offset = _take(body, offset, stop, _OCTET_STRING)
    result: dict[str, object] = {
        "result": int.from_bytes(raw_code, "big", signed=True),
        "dn": matched.decode("utf-8", "replace"),
        "message": diagnostic.decode("utf-8", "replace"),
        "type": "bindResponse",
    }
    return message_id, result


def read_message(sock: _Socket) -> bytes:
    """One whole BER element (an LDAPMessage) from the socket."""
    data = b""
    while True:
        header = _header(data, 0) if data else None
        if header is not None:
            total = header[1] + header[2]
            if total > MAX_RESPONSE:
                raise BindProtocolError(f"response of {total} bytes")
            if len(data) >= total:
                if len(data) > total:
                    raise BindProtocolError("more than one message in answer to a bind")
                return data
        chunk = sock.recv(MAX_RESPONSE)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        data += chunk


def simple_bind(sock: _Socket, name: str, password: str) -> dict[str, object]:
    """Bind as `name`; the result as ldap3 gives it (`result`, `message`, `dn`).

    An empty name or password raises ValueError before anything is sent. Socket errors
    (OSError, ssl.SSLError, a timeout) propagate; a reply that is not our bind
    response raises BindProtocolError. Either way the connection must not be used again.
    """
    if not name or not password:
        # RFC 4513 §5.1.2: a simple bind with an empty password is an "unauthenticated" bind,
        # which some servers answer with success. It must never reach the wire.
        raise ValueError("a simple bind needs a name and a password")
    message_id = next_message_id()
    sock.sendall(encode_bind_request(message_id, name, password))
    answered_id, result = decode_bind_response(read_message(sock))
    if answered_id != message_id:
        raise BindProtocolError(f"answer to message {answered_id}, expected {message_id}")
    return result
