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

_ARGON2 = argon2.PasswordHasher()  # argon2id, RFC 9106 "low memory" defaults of argon2-cffi


# The PHC string of argon2id, bcrypt's modular crypt format, and SHA-512-crypt (with rounds=).
_ARGON2ID = r"\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
_BCRYPT = r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}"
_SHA512_CRYPT = r"\$6\$(?:rounds=\d+\$)?[^$:\n]{1,16}\$[./A-Za-z0-9]{86}"
_SCHEMES = (
    ("argon2id", re.compile(f"^{_ARGON2ID}$")),
    ("bcrypt", re.compile(f"^{_BCRYPT}$")),
    ("sha512-crypt", re.compile(f"^{_SHA512_CRYPT}$")),
)
HASH_PATTERN = f"^(?:{_ARGON2ID}|{_BCRYPT}|{_SHA512_CRYPT})$"  # for the manifest's schema


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
