"""Dovecot Pigeonhole's `sieve-test` (Debian dovecot-sieve) as the reference Sieve interpreter.

`Pigeonhole(directory)` writes a Dovecot configuration of its own under `directory` (mail in
a Maildir there, global scripts for `include :global` in `global/`, personal ones in
`personal/`) and runs `sieve-test` on a script and a message twice: once listing the actions it
decided (folders, flags, redirect, reject, vacation), once executing them (`-e`, nothing leaves
the machine: Pigeonhole's test tool prints the mail it would send), which is where its RFC 3834
checks say whether a vacation reply goes out. `outcome()` gives both as the same normalized
lines the tests build from appliance's own interpreter (`normalize`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from appliance.sieve import Outcome

SIEVE_TEST = shutil.which("sieve-test") or "/usr/bin/sieve-test"
TIMEOUT = 30


def normalize(outcome: Outcome, vacation_sent: bool | None) -> list[str]:
    """Actions as sorted lines: `store FOLDER flags...`, `redirect ADDRESS`, `reject`, `vacation sent`."""
    lines = []
    for store in outcome.stores:
        flags = " ".join(sorted(flag.lower() for flag in store.flags))
        mailbox = "INBOX" if store.mailbox.upper() == "INBOX" else store.mailbox
        lines.append(f"store {mailbox} {flags}".rstrip())
    lines += [f"redirect {address.lower()}" for address in outcome.redirects]
    if outcome.reject is not None:
        lines.append(f"reject {outcome.reject.strip()}")
    if outcome.vacation is not None:
        lines.append("vacation sent" if vacation_sent else "vacation not sent")
    if outcome.error is not None:
        lines.append("error")
    return sorted(lines)


class Pigeonhole:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        for sub in ("mail", "global", "personal", "scripts"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        self.config = directory / "dovecot.conf"
        self.config.write_text(
            f"mail_location = maildir:{directory}/mail\n"
            # sieve-test refuses to run mail access as root: it runs as nobody, like a mail user.
            "mail_uid = nobody\nmail_gid = nogroup\n"
            # The -e run stores for real: folders a script names are created, as a delivery would.
            "lda_mailbox_autocreate = yes\n"
            "plugin {\n"
            f"  sieve = file:{directory}/personal;active={directory}/personal/.active.sieve\n"
            f"  sieve_global = {directory}/global\n"
            "  sieve_vacation_min_period = 1d\n"
            "}\n"
        )
        for path in (directory, *directory.rglob("*")):
            path.chmod(0o777 if path.is_dir() else 0o666)

    def add_script(self, where: str, name: str, text: str) -> None:
        path = self.directory / where / f"{name}.sieve"
        path.write_text(text)
        path.chmod(0o666)

    def _run(self, script: Path, message: Path, sender: str, recipient: str, execute: bool) -> str:
        # sieve-test has no way to give the null sender (-f refuses "" and "<>"): no case uses it.
        command = [SIEVE_TEST, "-c", str(self.config), "-f", sender, "-a", recipient, "-r", recipient]
        if execute:
            command.append("-e")
        command += [str(script), str(message)]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={**os.environ, "TZ": "UTC"},
            check=False,
        )
        return result.stdout + "\n" + result.stderr

    def outcome(self, script_text: str, message: bytes, sender: str, recipient: str) -> list[str]:
        scripts = self.directory / "scripts"
        script = scripts / f"case{len(list(scripts.iterdir()))}.sieve"
        script.write_text(script_text)
        mail = script.with_suffix(".eml")
        mail.write_bytes(message)
        for path in (script, mail):
            path.chmod(0o666)
        listing = self._run(script, mail, sender, recipient, execute=False)
        # The -e run stores for real and Pigeonhole will not create a folder without :create:
        # the folders the script names exist, as they would for a user who made them.
        for folder in re.findall(r"^ \* store message in folder: (.+)$", listing, re.MULTILINE):
            if folder.upper() != "INBOX":
                for sub in ("cur", "new", "tmp"):
                    path = self.directory / "mail" / f".{folder}" / sub
                    path.mkdir(parents=True, exist_ok=True)
                    path.chmod(0o777)
                    path.parent.chmod(0o777)
        executed = self._run(script, mail, sender, recipient, execute=True)
        return parse(listing, executed)


_ACTION = re.compile(r"^ \* (.*)$")


def parse(listing: str, executed: str) -> list[str]:
    """The normalized lines of sieve-test's listing and its -e run."""
    if "failed to compile sieve script" in listing:
        return ["compile error"]
    if "final result: failed; resolved with successful implicit keep" in listing:
        return ["error", "store INBOX"]
    if "Performed actions:" not in listing:
        raise AssertionError(f"sieve-test gave no result:\n{listing}")
    lines: list[str] = []
    current: list[str] | None = None
    flags: list[str] = []

    def close() -> None:
        nonlocal current, flags
        if current is not None:
            lines.append(" ".join([*current, *sorted(flags)]).rstrip())
        current, flags = None, []

    for line in listing.splitlines():
        found = _ACTION.match(line)
        if found:
            close()
            action = found.group(1)
            if action.startswith("store message in folder: "):
                mailbox = action.split(": ", 1)[1]
                current = ["store", "INBOX" if mailbox.upper() == "INBOX" else mailbox]
            elif action.startswith("redirect message to: "):
                lines.append(f"redirect {action.split(': ', 1)[1].strip('<>').lower()}")
            elif action.startswith("reject message with reason: "):
                lines.append(f"reject {action.split(': ', 1)[1].strip()}")
            elif action.startswith("send vacation message"):
                sent = "vacation action: sent vacation response" in executed
                lines.append("vacation sent" if sent else "vacation not sent")
            continue
        flag_line = re.match(r"^\s+\+ (?:add IMAP flags|set IMAP flags): (.*)$", line)
        if flag_line and current is not None:
            flags += [flag.lower() for flag in flag_line.group(1).split()]
    close()
    return sorted(set(lines))
