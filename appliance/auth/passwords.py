"""Local password hashes: argon2id for new ones; bcrypt and SHA-512-crypt verify for migrations.

These calls are CPU-bound (argon2id takes tens of milliseconds by design): callers on the event
loop run them in an executor.
"""

from __future__ import annotations

import hmac
import re

import argon2
import bcrypt
import crypt_r

from appliance.manifest.hashes import SCHEME_PATTERNS

_ARGON2 = argon2.PasswordHasher()  # argon2id, RFC 9106 "low memory" defaults of argon2-cffi


# The schemes we verify; their formats are the manifest's (a hash there is checked against them).
_SCHEMES = tuple((scheme, re.compile(f"^{pattern}$")) for scheme, pattern in SCHEME_PATTERNS)


def hash_scheme(encoded: str) -> str | None:
    """The scheme of an encoded hash, or None when it is not one we verify."""
    for scheme, pattern in _SCHEMES:
        if pattern.match(encoded):
            return scheme
    return None


def hash_password(password: str) -> str:
    return _ARGON2.hash(password)


def verify_password(encoded: str, password: str) -> bool:
    """True only when `password` matches `encoded`. Never raises for a wrong password."""
    scheme = hash_scheme(encoded)
    if scheme == "argon2id":
        try:
            return _ARGON2.verify(encoded, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
    if scheme == "bcrypt":
        secret = password.encode()
        if len(secret) > 72:  # bcrypt only reads 72 bytes; refuse rather than truncate silently
            return False
        return bcrypt.checkpw(secret, encoded.encode())
    if scheme == "sha512-crypt":
        computed = crypt_r.crypt(password, encoded)
        return computed is not None and hmac.compare_digest(computed, encoded)
    return False
