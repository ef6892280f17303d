"""The IMAP server against the clients Debian ships: mbsync (isync) and curl, over IMAPS.

One appliance serves the module; each test logs in as an account of its own. mbsync keeps a local
Maildir (LF line ends, flags in the file names) in step with the server; what it did is checked on
both sides, the server's over imaplib. Both clients verify the server with the test certificate.
"""

from __future__ import annotations

import imaplib
import itertools
import os
import re
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import client_context

PASSWORD = "Sync!Passw0rd"
HASH = hash_password(PASSWORD)
ACCOUNTS = [f"client{n:02d}" for n in range(1, 21)]
_accounts = iter(ACCOUNTS)
_unique = itertools.count(1)
DOMAINS = (
    '[domains."example.test"]\n[domains."example.test".accounts]\n'
    + "".join(f'{name} = {{ password_hash = "{HASH}" }}\n' for name in ACCOUNTS)
    + "\n[security.auto_ban]\nenabled = false\n"
)
SPECIAL_USE = ("Sent", "Drafts", "Trash", "Junk", "Archive")


def message(subject: str, body: str = "Hello.\n", *, newline: str = "\n") -> bytes:
    text = (
        f"From: Ann Example <ann@remote.example>\nTo: someone@example.test\nSubject: {subject}\n"
        f"Date: Tue, 24 Nov 2026 09:00:00 +0000\nMessage-ID: <{subject.replace(' ', '.')}@remote.example>\n"
        f"\n{body}"
    )
    return text.replace("\n", newline).encode()


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def without_tuid(data: bytes) -> bytes:
    """mbsync writes an `X-TUID:` header into every message it copies (to find it again after a
    crash); everything else must arrive as it was."""
    return re.sub(rb"^X-TUID: [^\r\n]*\r?\n", b"", data, count=1, flags=re.M)


# -- fixtures and clients ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    factory = ApplianceFactory(tmp_path_factory.mktemp("imap-clients"))
    try:
        yield factory.start(DOMAINS, listeners=("smtp", "imaps"))
    finally:
        factory.close()


@pytest.fixture
def user() -> str:
    """An account no other test uses."""
    return f"{next(_accounts)}@example.test"


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:  # .ci/apt/imap.txt installs it; missing means the machine is not set up
        pytest.fail(f"{program} is not installed (see .ci/apt/imap.txt)")
    return path


def imaps(server: RunningAppliance, address: str) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=30
    )
    client.login(address, PASSWORD)
    return client


def on_server(server: RunningAppliance, address: str, folder: str) -> dict[bytes, tuple[set[str], bytes]]:
    """The folder's messages over IMAP (EXAMINE: nothing changes): Subject → (flags, bytes).

    \\Recent is left out: it only says whether this session is the first to see the message.
    """
    client = imaps(server, address)
    try:
        status, _ = client.select(f'"{folder}"', readonly=True)
        assert status == "OK", folder
        status, data = client.fetch("1:*", "(FLAGS BODY.PEEK[])")
        found = {}
        for item in data:
            if isinstance(item, tuple):
                subject = re.search(rb"^Subject: (.*?)\r$", item[1], re.M)
                assert subject, item[1]
                flags = re.search(rb"FLAGS \((.*?)\)", item[0])
                assert flags, item[0]
                names = set(flags.group(1).decode().split()) - {"\\Recent"}
                found[subject.group(1)] = (names, without_tuid(item[1]))
        return found
    finally:
        client.logout()


class Mbsync:
    """One mbsync set-up: a config file, a local Maildir++ tree under `home`, one channel."""

    def __init__(self, server: RunningAppliance, address: str, home: Path) -> None:
        self.home = home
        self.mail = home / "mail"
        self.inbox = self.mail / "INBOX"
        self.mail.mkdir(parents=True)
        self.config = home / "mbsyncrc"
        # mbsync 1.4 matches the host only against the certificate's DNS names, never its IP
        # addresses: it connects to "localhost" (127.0.0.1), a name the generated certificate holds.
        self.config.write_text(
            f"IMAPAccount appliance\nHost localhost\nPort {server.ports['imaps']}\n"
            f'User {address}\nPass "{PASSWORD}"\nSSLType IMAPS\nSSLVersions TLSv1.2 TLSv1.3\n'
            f"SystemCertificates no\nCertificateFile {server.cafile}\nAuthMechs PLAIN LOGIN\nTimeout 30\n\n"
            "IMAPStore far\nAccount appliance\n\n"
            f"MaildirStore near\nPath {self.mail}/\nInbox {self.inbox}\nSubFolders Verbatim\n\n"
            "Channel sync\nFar :far:\nNear :near:\nPatterns *\nCreate Both\nExpunge Both\n"
            "SyncState *\nSync All\n"
        )
        self.config.chmod(0o600)

    def run(self) -> str:
        result = subprocess.run(
            [need("mbsync"), "--config", str(self.config), "--verbose", "sync"],
            env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        # e.g. "Warning: lost track of 1 pushed message(s)" when APPENDUID or UIDNEXT were wrong
        assert not re.search(r"^(Warning|Error)", output, re.M), output
        return output

    def folder(self, name: str) -> Path:
        return self.inbox if name == "INBOX" else self.mail / name

    def put(self, folder: str, data: bytes, flags: str | None) -> Path:
        """A message written by a local mail reader: new/ without flags, cur/ with `:2,<flags>`."""
        root = self.folder(folder)
        for sub in ("cur", "new", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        unique = f"1764000000.M{next(_unique)}P{os.getpid()}.client"
        path = root / "new" / unique if flags is None else root / "cur" / f"{unique}:2,{flags}"
        path.write_bytes(data)
        return path

    def messages(self, folder: str) -> dict[bytes, tuple[str, bytes]]:
        """The local folder: Subject → (Maildir flags, bytes)."""
        found = {}
        root = self.folder(folder)
        for sub in ("new", "cur"):
            for path in (root / sub).iterdir():
                data = path.read_bytes()
                subject = re.search(rb"^Subject: (.*?)\r?$", data, re.M)
                assert subject, data
                flags = path.name.split(":2,")[1] if ":2," in path.name else ""
                found[subject.group(1)] = (flags, without_tuid(data))
        return found

    def path_of(self, folder: str, subject: bytes) -> Path:
        root = self.folder(folder)
        for sub in ("new", "cur"):
            for path in (root / sub).iterdir():
                if re.search(rb"^Subject: " + re.escape(subject) + rb"\r?$", path.read_bytes(), re.M):
                    return path
        raise AssertionError(f"no local message with Subject {subject!r} in {folder}")


def run_curl(
    server: RunningAppliance, address: str, path: str, *extra: str, host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[bytes]:
    """curl on imaps://HOST:PORT/PATH, verifying the server with the test certificate; a HOST other
    than 127.0.0.1 is resolved to 127.0.0.1 (so the certificate is checked for that name)."""
    port = server.ports["imaps"]
    return subprocess.run(
        [
            need("curl"),
            "--silent",
            "--show-error",
            "--max-time",
            "50",
            "--cacert",
            str(server.cafile),
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            "--user",
            f"{address}:{PASSWORD}",
            *extra,
            f"imaps://{host}:{port}/{path}",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )


def curl(server: RunningAppliance, address: str, path: str, *extra: str) -> bytes:
    result = run_curl(server, address, path, *extra)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def deliver(server: RunningAppliance, address: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.sendmail("ann@remote.example", [address], data)


# -- mbsync ------------------------------------------------------------------------------------------
def test_mbsync_pushes_a_local_maildir_with_its_flags_and_folders_to_the_server(
    server: RunningAppliance, user: str, tmp_path: Path
) -> None:
    sync = Mbsync(server, user, tmp_path)
    unread = message("unread here", "First line.\n\n.a line with a dot\nlast\n")
    read = message("read here")
    flagged = message("flagged and answered")
    filed = message("filed away", "In a folder.\n")
    sync.put("INBOX", unread, None)
    sync.put("INBOX", read, "S")
    sync.put("INBOX", flagged, "FRS")
    sync.put("Projects", filed, "S")
    sync.run()

    inbox = on_server(server, user, "INBOX")
    assert sorted(inbox) == [b"flagged and answered", b"read here", b"unread here"]
    assert inbox[b"unread here"] == (set(), crlf(unread))  # the same bytes, CRLF on the wire
    assert inbox[b"read here"] == ({"\\Seen"}, crlf(read))
    assert inbox[b"flagged and answered"] == ({"\\Flagged", "\\Answered", "\\Seen"}, crlf(flagged))
    assert on_server(server, user, "Projects") == {b"filed away": ({"\\Seen"}, crlf(filed))}

    sync.run()  # nothing changed: a second sync copies nothing again, on either side
    assert len(on_server(server, user, "INBOX")) == 3
    assert len(sync.messages("INBOX")) == 3
    assert len(on_server(server, user, "Projects")) == 1


def test_mbsync_pulls_mail_delivered_over_smtp_and_appended_into_folders(
    server: RunningAppliance, user: str, tmp_path: Path
) -> None:
    sync = Mbsync(server, user, tmp_path)
    delivered = message("came over smtp", "Delivered.\n", newline="\r\n")
    appended = message("appended flagged", "Appended.\n", newline="\r\n")
    sent = message("a sent one", "Kept in Sent.\n", newline="\r\n")
    deliver(server, user, delivered)
    client = imaps(server, user)
    assert client.append("INBOX", "(\\Flagged)", None, appended)[0] == "OK"
    assert client.append("Sent", "(\\Seen)", None, sent)[0] == "OK"
    assert client.create("Lists.Debian")[0] == "OK"
    client.logout()
    sync.run()

    inbox = sync.messages("INBOX")
    assert sorted(inbox) == [b"appended flagged", b"came over smtp"]
    assert inbox[b"appended flagged"] == ("F", lf(appended))
    flags, data = inbox[b"came over smtp"]
    assert flags == ""  # unread stays unread
    assert data.endswith(lf(delivered)) and b"Received: " in data  # the server's trace header first
    assert sync.messages("Sent") == {b"a sent one": ("S", lf(sent))}
    for name in SPECIAL_USE:  # every server folder got a local Maildir, even the empty ones
        assert (sync.mail / name / "cur").is_dir(), name
    assert (sync.mail / "Lists" / "Debian" / "cur").is_dir()  # "Lists.Debian" with "." as delimiter

    deliver(server, user, message("a later one"))
    sync.run()
    assert sorted(sync.messages("INBOX")) == [b"a later one", b"appended flagged", b"came over smtp"]


def test_mbsync_carries_flag_changes_and_deletions_both_ways(
    server: RunningAppliance, user: str, tmp_path: Path
) -> None:
    sync = Mbsync(server, user, tmp_path)
    for subject in ("read on the server", "flagged locally", "deleted locally", "deleted on the server"):
        deliver(server, user, message(subject))
    sync.run()
    assert len(sync.messages("INBOX")) == 4

    client = imaps(server, user)
    client.select("INBOX")
    uids = {}
    _, data = client.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    for item in data:
        if isinstance(item, tuple):
            uid = re.search(rb"UID (\d+)", item[0])
            assert uid
            uids[item[1].strip().removeprefix(b"Subject: ")] = uid.group(1).decode()
    assert client.uid("STORE", uids[b"read on the server"], "+FLAGS", "(\\Seen)")[0] == "OK"
    assert client.uid("STORE", uids[b"deleted on the server"], "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert client.expunge()[0] == "OK"
    client.logout()
    local = sync.path_of("INBOX", b"flagged locally")
    local.rename(sync.inbox / "cur" / (local.name.split(":2,")[0] + ":2,F"))
    sync.path_of("INBOX", b"deleted locally").unlink()
    sync.run()

    assert {subject: flags for subject, (flags, _) in sync.messages("INBOX").items()} == {
        b"read on the server": "S",
        b"flagged locally": "F",
    }
    remote = on_server(server, user, "INBOX")
    assert {subject: flags for subject, (flags, _) in remote.items()} == {
        b"read on the server": {"\\Seen"},
        b"flagged locally": {"\\Flagged"},
    }


# -- curl --------------------------------------------------------------------------------------------
def test_curl_lists_the_folders_and_checks_the_certificate_name(server: RunningAppliance, user: str) -> None:
    listing = curl(server, user, "")
    names = {line.rsplit(" ", 1)[1].strip('"') for line in listing.decode().splitlines()}
    assert {"INBOX", *SPECIAL_USE} <= names
    assert all(line.startswith("* LIST (") for line in listing.decode().splitlines()), listing
    by_name = run_curl(server, user, "", host="mail.example.test")
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout == listing
    wrong_name = run_curl(server, user, "", host="other.example.test")
    assert wrong_name.returncode == 60, wrong_name.stderr  # the certificate does not name that host


def test_curl_fetches_a_message_by_uid_byte_for_byte(server: RunningAppliance, user: str) -> None:
    first = message("first", "One.\n", newline="\r\n")
    second = message("second", "Two lines.\n.\n..\nEnd without a newline", newline="\r\n")
    client = imaps(server, user)
    client.append("INBOX", None, None, first)
    _, data = client.append("INBOX", None, None, second)
    appenduid = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0])
    assert appenduid, data
    uidvalidity, uid = appenduid.group(1).decode(), appenduid.group(2).decode()
    client.logout()

    assert curl(server, user, f"INBOX;UIDVALIDITY={uidvalidity}/;UID={uid}") == second
    assert curl(server, user, "INBOX/;UID=1") == first
    assert (
        curl(server, user, f"INBOX/;UID={uid}/;SECTION=TEXT")
        == b"Two lines.\r\n.\r\n..\r\nEnd without a newline"
    )
    header = curl(server, user, f"INBOX/;UID={uid}/;SECTION=HEADER.FIELDS%20(SUBJECT)")
    assert header == b"Subject: second\r\n\r\n"
    stale = run_curl(server, user, f"INBOX;UIDVALIDITY={int(uidvalidity) + 1}/;UID={uid}")
    assert stale.returncode == 78 and b"UIDVALIDITY" in stale.stderr, stale.stderr  # checked against SELECT
    # curl fetches BODY[], not BODY.PEEK[]: RFC 3501 §6.4.5 sets \Seen, so nothing is unseen now
    searched = curl(server, user, "INBOX", "--request", "UID SEARCH UNSEEN")
    assert searched.strip() == b"* SEARCH"
    searched = curl(server, user, "INBOX", "--request", "UID SEARCH SUBJECT second")
    assert searched.strip() == f"* SEARCH {uid}".encode()


def test_curl_uploads_a_message_with_append(server: RunningAppliance, user: str, tmp_path: Path) -> None:
    upload = tmp_path / "upload.eml"
    data = message("uploaded by curl", "Uploaded.\n", newline="\r\n")
    upload.write_bytes(data)
    curl(server, user, "Drafts", "--upload-file", str(upload))
    # curl sends APPEND Drafts (\\Seen) {n}: the message is stored as sent, marked read
    assert on_server(server, user, "Drafts") == {b"uploaded by curl": ({"\\Seen"}, data)}
