"""Warnings about password hashes kept from another server: for `appliance validate`.

`appliance import hmailserver` keeps hMailServer's hashes ({HMAIL-SHA256}, {HMAIL-MD5}) so that
users keep their passwords. They verify, but they are fast unsalted or short-salted digests:
`validate` names each account that still has one (a warning, exit 0) until the admin moves it to
argon2id (README: "Moving from hMailServer").
"""

from __future__ import annotations

import re

from appliance.manifest.hashes import LEGACY_SCHEME_PATTERNS
from appliance.manifest.loader import LoadedManifest, Problem, place_problems

_LEGACY = tuple((scheme, re.compile(f"^{pattern}$")) for scheme, pattern in LEGACY_SCHEME_PATTERNS)


def legacy_hash_problems(loaded: LoadedManifest) -> list[Problem]:
    problems: list[Problem] = []
    for domain_name, domain in loaded.manifest.domains.items():
        for local_part, account in domain.accounts.items():
            stored = account.password_hash
            if stored is None or stored.startswith("$"):
                continue
            for scheme, pattern in _LEGACY:
                if pattern.match(stored):
                    problems.append(
                        Problem(
                            ("domains", domain_name, "accounts", local_part, "password_hash"),
                            f"a legacy {scheme} hash (kept from hMailServer); it verifies, but set an "
                            "argon2id hash from `appliance hash-password` when the user next changes it",
                            warning=True,
                        )
                    )
    if not problems:
        return problems
    try:
        text = loaded.path.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return problems
    return place_problems(problems, text)
