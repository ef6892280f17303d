"""The password hash formats a manifest may hold in `password_hash`, as one table of schemes.

The manifest's models check a hash's form with `HASH_PATTERN`; `appliance.auth.passwords` tells
the schemes apart with `scheme_of` and verifies each by its name. The formats live here, below
both, so that the manifest needs nothing from the auth service.

A scheme is an encoded form (`pattern`), the `{NAME}` prefixes Dovecot writes before it (a
passwd-file carries them: `{SHA512-CRYPT}$6$…`), and whether it may also stand bare. To accept
another format, add a `Scheme` to `SCHEMES` and a verifier of the same name in
`appliance.auth.passwords` (a test checks that every scheme has one).

A plaintext "hash" (Dovecot's `{PLAIN}`, `{CLEAR}`) is never accepted: no plaintext is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Scheme:
    name: str  # the name the auth service verifies by
    pattern: str  # the encoded hash after any prefix, as a regular expression
    prefixes: tuple[str, ...] = ()  # Dovecot's scheme names that may stand before it, as `{NAME}`
    bare: bool = True  # may it stand without a prefix
    weakness: str | None = None  # why `validate` warns about it; None when it is sound


_B64 = "[A-Za-z0-9+/]"
_CRYPT64 = "[./A-Za-z0-9]"
_FAST = "fast to guess offline"

SCHEMES: tuple[Scheme, ...] = (
    # The PHC strings of argon2 (argon2-cffi reads both variants).
    Scheme("argon2id", rf"\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\${_B64}+\${_B64}+", ("ARGON2ID",)),
    Scheme("argon2i", rf"\$argon2i\$v=\d+\$m=\d+,t=\d+,p=\d+\${_B64}+\${_B64}+", ("ARGON2I",)),
    # bcrypt: a cost of 04-31 (2^cost rounds), a 22-character salt whose last character carries
    # only 2 bits (one of .Oeu), then the 31-character checksum; anything else makes bcrypt raise.
    Scheme(
        "bcrypt",
        rf"\$2[aby]\$(?:0[4-9]|[12]\d|3[01])\${_CRYPT64}{{21}}[.Oeu]{_CRYPT64}{{31}}",
        ("BLF-CRYPT", "CRYPT"),
    ),
    Scheme(
        "sha512-crypt", rf"\$6\$(?:rounds=\d+\$)?[^$:\n]{{1,16}}\${_CRYPT64}{{86}}", ("SHA512-CRYPT", "CRYPT")
    ),
    Scheme(
        "sha256-crypt", rf"\$5\$(?:rounds=\d+\$)?[^$:\n]{{1,16}}\${_CRYPT64}{{43}}", ("SHA256-CRYPT", "CRYPT")
    ),
    Scheme(
        "md5-crypt",
        rf"\$1\$[^$:\n]{{1,8}}\${_CRYPT64}{{22}}",
        ("MD5-CRYPT", "MD5", "CRYPT"),
        weakness="MD5-crypt (1,000 MD5 rounds) is " + _FAST,
    ),
    # Traditional DES crypt: 13 characters, only after {CRYPT} (bare, it could be anything).
    Scheme(
        "des-crypt",
        f"{_CRYPT64}{{13}}",
        ("CRYPT",),
        bare=False,
        weakness="DES crypt reads only 8 characters of the password and is " + _FAST,
    ),
    # Dovecot's salted digests: base64 of digest(password + salt) + salt.
    Scheme("ssha512", f"{_B64}{{88,}}={{0,2}}", ("SSHA512",), False, "one salted SHA-512 round is " + _FAST),
    Scheme("ssha256", f"{_B64}{{44,}}={{0,2}}", ("SSHA256",), False, "one salted SHA-256 round is " + _FAST),
    Scheme("ssha", f"{_B64}{{28,}}={{0,2}}", ("SSHA",), False, "one salted SHA-1 round is " + _FAST),
    Scheme("smd5", f"{_B64}{{24,}}={{0,2}}", ("SMD5",), False, "one salted MD5 round is " + _FAST),
    # Unsalted digests: one password, one hash, the same on every server that ever held it.
    Scheme("sha512", f"{_B64}{{86}}==", ("SHA512",), False, "an unsalted SHA-512 is " + _FAST),
    Scheme("sha256", f"{_B64}{{43}}=", ("SHA256",), False, "an unsalted SHA-256 is " + _FAST),
    Scheme("sha1", f"{_B64}{{27}}=", ("SHA1", "SHA"), False, "an unsalted SHA-1 is " + _FAST),
    Scheme("plain-md5", "[0-9a-fA-F]{32}", ("PLAIN-MD5",), False, "an unsalted MD5 is " + _FAST),
    Scheme("ldap-md5", f"{_B64}{{22}}==", ("LDAP-MD5",), False, "an unsalted MD5 is " + _FAST),
    # hMailServer's, kept by `appliance import hmailserver` (hm_accounts.accountpwencryption 3 and
    # 2): a 6-hex-digit salt then hex SHA-256(salt + password); hex MD5(password).
    Scheme(
        "hmail-sha256",
        "[0-9a-f]{70}",
        ("HMAIL-SHA256",),
        False,
        "hMailServer's salted SHA-256 (one round) is " + _FAST,
    ),
    Scheme("hmail-md5", "[0-9a-f]{32}", ("HMAIL-MD5",), False, "hMailServer's unsalted MD5 is " + _FAST),
)
HMAIL_SHA256_PREFIX = "{HMAIL-SHA256}"  # what `appliance import hmailserver` writes before them
HMAIL_MD5_PREFIX = "{HMAIL-MD5}"


def _full_pattern(scheme: Scheme) -> str:
    """The scheme's whole encoded form: prefix (one of its names, or none when bare), then hash."""
    if not scheme.prefixes:
        return scheme.pattern
    names = "|".join(re.escape(name) for name in scheme.prefixes)
    prefix = rf"\{{(?:{names})\}}"
    return f"(?:{prefix})?{scheme.pattern}" if scheme.bare else f"{prefix}{scheme.pattern}"


# (name, whole pattern) per scheme, in table order: the first that matches is the hash's scheme.
SCHEME_PATTERNS = tuple((scheme.name, _full_pattern(scheme)) for scheme in SCHEMES)
HASH_PATTERN = "^(?:" + "|".join(p for _, p in SCHEME_PATTERNS) + ")$"  # the models' and the schema's
_COMPILED = tuple((scheme, re.compile(f"^{_full_pattern(scheme)}$")) for scheme in SCHEMES)


def scheme_of(encoded: str) -> Scheme | None:
    """The scheme an encoded hash is written in, or None when it is none of ours."""
    for scheme, pattern in _COMPILED:
        if pattern.match(encoded):
            return scheme
    return None


def without_prefix(encoded: str) -> str:
    """The hash itself, without Dovecot's `{NAME}` before it (the verifiers read only this)."""
    if encoded.startswith("{"):
        return encoded.partition("}")[2]
    return encoded
