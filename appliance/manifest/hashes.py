"""The password hash formats a manifest may hold in `password_hash`, as regular expressions.

The manifest's models check a hash's form with `HASH_PATTERN`; `appliance.auth.passwords` tells
the schemes apart with `SCHEME_PATTERNS` and verifies against them. The formats live here, below
both, so that the manifest needs nothing from the auth service.
"""

from __future__ import annotations

# The PHC string of argon2id, bcrypt's modular crypt format, and SHA-512-crypt (with rounds=).
ARGON2ID = r"\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
# bcrypt: a cost of 04-31 (2^cost rounds), a 22-character salt whose last character carries only
# 2 bits (one of .Oeu), then the 31-character checksum; anything else makes the library raise.
BCRYPT = r"\$2[aby]\$(?:0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}"
SHA512_CRYPT = r"\$6\$(?:rounds=\d+\$)?[^$:\n]{1,16}\$[./A-Za-z0-9]{86}"

SCHEME_PATTERNS = (("argon2id", ARGON2ID), ("bcrypt", BCRYPT), ("sha512-crypt", SHA512_CRYPT))
HASH_PATTERN = f"^(?:{ARGON2ID}|{BCRYPT}|{SHA512_CRYPT})$"  # for the models and the manifest's schema

# hMailServer's own hashes, kept as they are by `appliance import hmailserver` so that users keep
# their passwords (hm_accounts.accountpwencryption 3 and 2): "{HMAIL-SHA256}" then a 6-hex-digit
# salt and hex SHA-256 of salt + password; "{HMAIL-MD5}" then hex MD5 of the password (unsalted).
# They verify, and `validate` warns about them: move those users to argon2id (README).
HMAIL_SHA256_PREFIX = "{HMAIL-SHA256}"
HMAIL_MD5_PREFIX = "{HMAIL-MD5}"
HMAIL_SHA256 = r"\{HMAIL-SHA256\}[0-9a-f]{70}"
HMAIL_MD5 = r"\{HMAIL-MD5\}[0-9a-f]{32}"
LEGACY_SCHEME_PATTERNS = (("hmail-sha256", HMAIL_SHA256), ("hmail-md5", HMAIL_MD5))
ACCEPTED_HASH_PATTERN = f"{HASH_PATTERN}|^(?:{HMAIL_SHA256}|{HMAIL_MD5})$"  # HASH_PATTERN or a legacy one
