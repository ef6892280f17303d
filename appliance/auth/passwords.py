"""Local password hashes: argon2id for new ones; the other schemes of the manifest verify for
migrations (bcrypt, the crypt family, argon2i, Dovecot's salted and unsalted digests).

These calls are CPU-bound (argon2id takes tens of milliseconds by design): callers on the event
loop run them in an executor. One verifier per scheme of `appliance.manifest.hashes.SCHEMES`,
found by the scheme's name; it reads the hash without Dovecot's `{NAME}` prefix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable

import argon2
import bcrypt
import crypt_r

from appliance.manifest.hashes import scheme_of, without_prefix

_ARGON2 = argon2.PasswordHasher()  # argon2id, RFC 9106 "low memory" defaults of argon2-cffi


def hash_scheme(encoded: str) -> str | None:
    """The scheme of an encoded hash, or None when it is not one we verify."""
    scheme = scheme_of(encoded)
    return None if scheme is None else scheme.name


def hash_password(password: str) -> str:
    return _ARGON2.hash(password)


# What checking a password against a stored hash found.
MATCH = "match"
MISMATCH = "bad_credentials"
INVALID_HASH = "stored_hash_invalid"  # the stored hash is not one the schemes can read


def _argon2(encoded: str, password: str) -> str:
    try:
        return MATCH if _ARGON2.verify(encoded, password) else MISMATCH  # the variant is the hash's
    except argon2.exceptions.VerifyMismatchError:
        return MISMATCH
    except argon2.exceptions.VerificationError:  # e.g. "Memory cost is too small"
        return INVALID_HASH


def _bcrypt(encoded: str, password: str) -> str:
    secret = password.encode()
    if len(secret) > 72:  # bcrypt only reads 72 bytes; refuse rather than truncate silently
        return MISMATCH
    return MATCH if bcrypt.checkpw(secret, encoded.encode()) else MISMATCH


def _crypt(encoded: str, password: str) -> str:
    """The crypt(3) family through libxcrypt ($6$, $5$, $1$, DES): the salt is the hash itself."""
    computed = crypt_r.crypt(password, encoded)
    if computed is None or computed.startswith("*"):  # libxcrypt's failure token
        return INVALID_HASH
    return MATCH if hmac.compare_digest(computed, encoded) else MISMATCH


def _digest(algorithm: str, *, salted: bool, encoding: str = "base64") -> Callable[[str, str], str]:
    """Dovecot's digests: base64 (or hex) of digest(password + salt), then the salt when salted."""
    size = hashlib.new(algorithm).digest_size

    def verify(encoded: str, password: str) -> str:
        try:
            raw = bytes.fromhex(encoded) if encoding == "hex" else base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return INVALID_HASH
        if len(raw) < size or (not salted and len(raw) != size):
            return INVALID_HASH
        digest, salt = raw[:size], raw[size:]
        computed = hashlib.new(algorithm, password.encode() + salt).digest()
        return MATCH if hmac.compare_digest(computed, digest) else MISMATCH

    return verify


def _hmailserver_sha256(encoded: str, password: str) -> str:
    """hMailServer's salted SHA-256: the salt is the first 6 hex digits, then hex SHA-256(salt +
    password)."""
    salt = encoded[:6]
    computed = salt + hashlib.sha256(salt.encode("ascii") + password.encode("utf-8")).hexdigest()
    return MATCH if hmac.compare_digest(computed, encoded) else MISMATCH


# scheme name → verifier(hash without prefix, password) → MATCH, MISMATCH or INVALID_HASH
VERIFIERS: dict[str, Callable[[str, str], str]] = {
    "argon2id": _argon2,
    "argon2i": _argon2,
    "bcrypt": _bcrypt,
    "sha512-crypt": _crypt,
    "sha256-crypt": _crypt,
    "md5-crypt": _crypt,
    "des-crypt": _crypt,
    "ssha512": _digest("sha512", salted=True),
    "ssha256": _digest("sha256", salted=True),
    "ssha": _digest("sha1", salted=True),
    "smd5": _digest("md5", salted=True),
    "sha512": _digest("sha512", salted=False),
    "sha256": _digest("sha256", salted=False),
    "sha1": _digest("sha1", salted=False),
    "plain-md5": _digest("md5", salted=False, encoding="hex"),
    "ldap-md5": _digest("md5", salted=False),
    "hmail-sha256": _hmailserver_sha256,
    "hmail-md5": _digest("md5", salted=False, encoding="hex"),
}


def check_password(encoded: str, password: str) -> str:
    """MATCH, MISMATCH, or INVALID_HASH when the stored hash is malformed (a cost bcrypt refuses, a
    bad salt, an unknown scheme). Never raises: a bad hash in the manifest refuses the login."""
    scheme = hash_scheme(encoded)
    verifier = VERIFIERS.get(scheme) if scheme is not None else None
    if verifier is None:
        return INVALID_HASH
    try:
        return verifier(without_prefix(encoded), password)
    except (ValueError, TypeError, argon2.exceptions.InvalidHashError):
        return INVALID_HASH  # the libraries' word for a hash they cannot read


def verify_password(encoded: str, password: str) -> bool:
    """True only when `password` matches `encoded`. Never raises, whatever `encoded` holds."""
    return check_password(encoded, password) == MATCH
