"""Dovecot's own answers to IMAP commands over a copy of a Maildir, for tests that compare ours
with the reference server's byte for byte.

Dovecot's `imap` program runs as one pre-authenticated session on stdin/stdout (no listener, no
login process), with a configuration of its own in a temporary directory: /etc/dovecot is not
used. It runs as uid `mail` (Dovecot refuses root), so the copy is handed to that user. Needs
root and the packages in .ci/apt/imap.txt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

MAIL_UID = MAIL_GID = 8  # Debian's "mail"
IMAP_PROGRAM = Path("/usr/lib/dovecot/imap")
TIMEOUT = 120.0


def _chown_tree(root: Path) -> None:
    os.chown(root, MAIL_UID, MAIL_GID)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(directory, name), MAIL_UID, MAIL_GID)


def dovecot_session(maildir: Path, commands: list[bytes]) -> bytes:
    """Everything Dovecot writes for `commands` (each a whole tagged command with its CRLF) run in
    one session over a copy of `maildir`: its message files, and the appliance's UIDs given to
    Dovecot as a dovecot-uidlist, so that both number the messages alike."""
    if not IMAP_PROGRAM.exists():  # .ci/apt/imap.txt installs it; missing means the machine is not set up
        pytest.fail("dovecot-imapd is not installed (see .ci/apt/imap.txt)")
    if os.geteuid() != 0:
        pytest.fail("comparing with Dovecot needs root (its imap process runs as uid mail)")
    with tempfile.TemporaryDirectory(prefix="dovecot-") as work:
        base = Path(work)
        copy = base / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (copy / sub).mkdir(parents=True)
            source = maildir / sub
            if sub != "tmp" and source.is_dir():
                for path in sorted(source.iterdir()):
                    shutil.copy2(path, copy / sub / path.name)  # the mtime is the internal date
        uids = _uidlist(maildir)
        if uids:
            (copy / "dovecot-uidlist").write_text(uids)
        config = base / "dovecot.conf"
        config.write_text(
            f"mail_location = maildir:{copy}:INDEX={base}/index\n"
            f"mail_uid = {MAIL_UID}\nmail_gid = {MAIL_GID}\n"
            f"first_valid_uid = {MAIL_UID}\nfirst_valid_gid = {MAIL_GID}\n"
            f"base_dir = {base}/run\nlog_path = {base}/dovecot.log\n"
        )
        (base / "index").mkdir()
        _chown_tree(base)
        os.chmod(base, 0o755)
        done = subprocess.run(
            [str(IMAP_PROGRAM), "-c", str(config)],
            input=b"".join(commands) + b"zz LOGOUT\r\n",
            capture_output=True,
            env={"HOME": str(base), "USER": "tester", "PATH": "/usr/bin:/bin"},
            timeout=TIMEOUT,
            check=False,
        )
        assert b"zz OK" in done.stdout, (done.stdout[-500:], done.stderr[-500:])
        return done.stdout


def _uidlist(maildir: Path) -> str:
    """The appliance's UID list (appliance-uidlist: "+<uid> <date> <size> <key>" lines) as a
    dovecot-uidlist version 3 ("<uid> :<key>"); a dovecot-uidlist already there as it is."""
    theirs = maildir / "dovecot-uidlist"
    if theirs.exists():
        return theirs.read_text()
    ours = maildir / "appliance-uidlist"
    if not ours.exists():
        return ""
    lines = ours.read_text().splitlines()
    validity = lines[0].split()[-1]
    records = {}
    for line in lines[1:]:
        if line.startswith("+"):
            uid, _, _, key = line[1:].split(" ", 3)
            records[int(uid)] = key
    if not records:
        return ""
    body = "".join(f"{uid} :{key}\n" for uid, key in sorted(records.items()))
    return f"3 V{validity} N{max(records) + 1}\n" + body


def untagged_answers(output: bytes, prefix: bytes) -> list[bytes]:
    """The untagged lines of a session's output that start with `prefix` (e.g. b"* SORT")."""
    return [line for line in output.split(b"\r\n") if line.startswith(prefix)]
