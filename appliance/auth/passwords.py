"""Local password hashes: argon2id for new ones; bcrypt and SHA-512-crypt verify for migrations.

These calls are CPU-bound (argon2id takes tens of milliseconds by design): callers on the event
loop run them in an executor.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import argon2
import bcrypt
import crypt_r

from appliance.manifest.hashes import (
    HMAIL_MD5_PREFIX,
    HMAIL_SHA256_PREFIX,
    LEGACY_SCHEME_PATTERNS,
    SCHEME_PATTERNS,
)

_ARGON2 = argon2.PasswordHasher()  # argon2id, RFC 9106 "low memory" defaults of argon2-cffi


# The schemes we verify; their formats are the manifest's (a hash there is checked against them).
_SCHEMES = tuple(
    (scheme, re.compile(f"^{pattern}$")) for scheme, pattern in (*SCHEME_PATTERNS, *LEGACY_SCHEME_PATTERNS)
)


def hash_scheme(encoded: str) -> str | None:
    """The scheme of an encoded hash, or None when it is not one we verify."""
    for scheme, pattern in _SCHEMES:
        if pattern.match(encoded):
            return scheme
    return None


def hash_password(password: str) -> str:
    return _ARGON2.hash(password)


# What checking a password against a stored hash found.
MATCH = "match"
MISMATCH = "bad_credentials"
INVALID_HASH = "stored_hash_invalid"  # the stored hash is not one the schemes can read


def check_password(encoded: str, password: str) -> str:
    """MATCH, MISMATCH, or INVALID_HASH when the stored hash is malformed (a cost bcrypt refuses, a
    bad salt, an unknown scheme). Never raises: a bad hash in the manifest refuses the login."""
    scheme = hash_scheme(encoded)
    try:
        if scheme == "argon2id":
            try:
                return MATCH if _ARGON2.verify(encoded, password) else MISMATCH
            except argon2.exceptions.VerifyMismatchError:
                return MISMATCH
            except argon2.exceptions.VerificationError:  # e.g. "Memory cost is too small"
                return INVALID_HASH
        if scheme == "bcrypt":
            secret = password.encode()
            if len(secret) > 72:  # bcrypt only reads 72 bytes; refuse rather than truncate silently
                return MISMATCH
            return MATCH if bcrypt.checkpw(secret, encoded.encode()) else MISMATCH
        if scheme == "sha512-crypt":
            computed = crypt_r.crypt(password, encoded)
            if computed is None:
                return INVALID_HASH
            return MATCH if hmac.compare_digest(computed, encoded) else MISMATCH
        if scheme in ("hmail-sha256", "hmail-md5"):
            return _check_hmailserver(encoded, password)
    except (ValueError, TypeError, argon2.exceptions.InvalidHashError):
        return INVALID_HASH  # the libraries' word for a hash they cannot read
    return INVALID_HASH


def _check_hmailserver(encoded: str, password: str) -> str:
    """hMailServer's hashes (appliance import hmailserver): salted SHA-256, the salt being the
    first 6 hex digits and the digest hex SHA-256(salt + password); unsalted hex MD5."""
    secret = password.encode("utf-8")
    if encoded.startswith(HMAIL_SHA256_PREFIX):
        stored = encoded[len(HMAIL_SHA256_PREFIX) :]
        salt = stored[:6]
        computed = salt + hashlib.sha256(salt.encode("ascii") + secret).hexdigest()
    else:
        stored = encoded[len(HMAIL_MD5_PREFIX) :]
        computed = hashlib.md5(secret, usedforsecurity=False).hexdigest()
    return MATCH if hmac.compare_digest(computed, stored) else MISMATCH


def verify_password(encoded: str, password: str) -> bool:
    """True only when `password` matches `encoded`. Never raises, whatever `encoded` holds."""
    return check_password(encoded, password) == MATCH
