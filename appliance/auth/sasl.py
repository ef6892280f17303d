"""SASL PLAIN (RFC 4616), shared by the POP3 and IMAP AUTHENTICATE commands."""

from __future__ import annotations

import base64
import binascii


def decode_plain(response: str) -> tuple[str, str] | None:
    """RFC 4616: [authzid] NUL authcid NUL passwd, base64-encoded. (login, password) or None."""
    try:
        raw = base64.b64decode(response, validate=True)
        parts = raw.decode("utf-8").split("\0")
    except (binascii.Error, ValueError):
        return None
    if len(parts) != 3 or not parts[1]:
        return None
    authzid, login, password = parts
    if authzid and authzid.lower() != login.lower():
        return None  # acting as another user is not offered
    return login, password
