"""SRS, the Sender Rewriting Scheme (libsrs2's guarded scheme): mail that an alias or
`forward_to` sends on to another domain leaves with a sender in our own domain
(`SRS0=HHHH=TT=origin.example=alice@srs_domain`), so the destination's SPF check sees a domain
that allows us; a bounce to that address comes back here and is sent on to the original sender.

The hash (HMAC-SHA1 with the secret, 4 characters) and the timestamp (21 days) guard the reverse
step: an address that does not verify is an unknown recipient, so this is never an open relay.

Through srslib (`SRS.forward`, `SRS.reverse`), chosen over pysrs: it is the one of the two
still released (pysrs's last release is from 2018), and it implements the same libsrs2 scheme
Postfix's postsrsd uses. The secret is read from `srs_secret_file` and read again when the file
changes (a reload is not needed to rotate it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import srslib

log = logging.getLogger("appliance.queue")

SRS_PREFIXES = ("srs0=", "srs0-", "srs0+", "srs1=", "srs1-", "srs1+")


class SenderRewriting:
    def __init__(self) -> None:
        self._cached: tuple[Path, int, srslib.SRS] | None = None

    def _scheme(self, secret_file: Path) -> srslib.SRS:
        stat = os.stat(secret_file)
        cached = self._cached
        if cached is not None and cached[0] == secret_file and cached[1] == stat.st_mtime_ns:
            return cached[2]
        secret = secret_file.read_text().strip()
        if not secret:
            raise OSError(f"{secret_file} is empty")
        scheme = srslib.SRS(secret)
        self._cached = (secret_file, stat.st_mtime_ns, scheme)
        return scheme

    def forward(self, sender: str, domain: str, secret_file: Path) -> str:
        """`sender` rewritten into `domain`; the sender unchanged when the secret cannot be read
        (logged: the mail still goes, as it would without SRS)."""
        try:
            return str(self._scheme(secret_file).forward(sender, domain))
        except (OSError, UnicodeDecodeError, srslib.Error) as error:
            log.error("srs rewrite failed sender=%s error=%s", sender, error)
            return sender

    def reverse(self, address: str, secret_file: Path) -> str | None:
        """The original sender an SRS address stands for, or None when it does not verify."""
        try:
            return str(self._scheme(secret_file).reverse(address))
        except (OSError, UnicodeDecodeError, srslib.Error):
            return None


def is_srs(local_part: str) -> bool:
    return local_part[:5].lower() in SRS_PREFIXES


__all__ = ["SenderRewriting", "is_srs"]
