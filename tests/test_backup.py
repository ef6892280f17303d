"""The README's backup and restore, done as it says while the server takes mail, then restored
into a new data_dir: every message there before the copy began is found, with its UID, its
flags and its folder's UIDVALIDITY."""

from __future__ import annotations

import imaplib
import re
import smtplib
import subprocess
import threading
from pathlib import Path

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support import smtp
from tests.support.lines import client_context

BODY = f"""
[domains."example.test".accounts]
john = {{ password_hash = "{smtp.HASH}" }}
mary = {{ password_hash = "{smtp.HASH}" }}
"""
BEFORE = 12  # messages per account before the copy
MAX_DURING = 300  # a bound on the messages sent while the copy runs


def send(server: RunningAppliance, to: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.sendmail("a@remote.example", [to], smtp.message(subject))


def imap(server: RunningAppliance, address: str) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=30
    )
    client.login(address, smtp.PASSWORD)
    return client


def folder(client: imaplib.IMAP4_SSL, name: str) -> tuple[int, dict[str, tuple[int, str]]]:
    """UIDVALIDITY, and subject → (UID, flags) of every message in the folder."""
    status, _ = client.select(name)
    assert status == "OK"
    uidvalidity = int(client.untagged_responses["UIDVALIDITY"][0])
    _, data = client.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    messages: dict[str, tuple[int, str]] = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        head, header = item[0].decode(), item[1].decode()
        uid = int(re.search(r"UID (\d+)", head).group(1))  # type: ignore[union-attr]
        flags = re.search(r"FLAGS \(([^)]*)\)", head).group(1)  # type: ignore[union-attr]
        subject = header.split(":", 1)[1].strip()
        assert subject not in messages, f"{subject} twice in {name}"
        messages[subject] = (uid, " ".join(sorted(flags.replace("\\Recent", "").split())))
    return uidvalidity, messages


def mailboxes(server: RunningAppliance) -> dict[tuple[str, str], tuple[int, dict[str, tuple[int, str]]]]:
    found = {}
    for address in ("john@example.test", "mary@example.test"):
        client = imap(server, address)
        try:
            for name in ("INBOX", "Archive"):
                found[(address, name)] = folder(client, name)
        finally:
            client.logout()
    return found


def backup(data_dir: Path, target: Path) -> None:
    """The README's commands, word for word (Operations: Backup). rsync exits 24 when a file
    vanished between its listing and its copy: a message moved or renamed meanwhile. The
    `--delete` pass runs again until it ends with 0: in a pass that exited 24, a message renamed
    after the listing had its old name deleted and its new one not copied."""
    target.mkdir(parents=True)
    mail = ["rsync", "-a", "--exclude=tmp/", f"{data_dir}/mail/", f"{target}/mail/"]
    uid_files = ["--include=*/", "--include=appliance-uidlist", "--include=dovecot-keywords", "--exclude=*"]

    def run(command: list[str]) -> int:
        done = subprocess.run(command, timeout=120, capture_output=True, text=True, check=False)
        assert done.returncode in (0, 24), done.stderr
        return done.returncode

    run(mail)
    for _ in range(5):
        if run([*mail[:2], "--delete", *mail[2:]]) == 0:
            break
    run(["rsync", "-a", *uid_files, f"{data_dir}/mail/", f"{target}/mail/"])
    run(["rsync", "-a", f"{data_dir}/queue/", f"{target}/queue/"])


def test_a_copy_made_while_serving_restores_every_message_with_its_uid(
    appliance: ApplianceFactory, tmp_path: Path
) -> None:
    server = appliance.start(BODY, listeners=("smtp", "imaps"))
    for address in ("john@example.test", "mary@example.test"):
        for number in range(BEFORE):
            send(server, address, f"before {address} {number}")
        client = imap(server, address)
        try:
            client.create("Archive")
            client.select("INBOX")
            client.uid("COPY", "1:4", "Archive")
            client.uid("STORE", "2:6", "+FLAGS", "(\\Seen \\Flagged)")
        finally:
            client.logout()
    original = mailboxes(server)
    assert len(original[("john@example.test", "INBOX")][1]) == BEFORE
    assert len(original[("mary@example.test", "Archive")][1]) == 4

    # Mail keeps arriving, and an IMAP client keeps changing flags, while the copy is made.
    copying = threading.Event()
    during: list[str] = []

    def traffic() -> None:
        client = imap(server, "john@example.test")
        try:
            client.select("INBOX")
            for number in range(MAX_DURING):
                if not copying.is_set():
                    break
                send(server, "john@example.test", f"during {number}")
                during.append(f"during {number}")
                client.uid("STORE", str(7 + number % 5), "+FLAGS" if number % 2 else "-FLAGS", "(\\Answered)")
        finally:
            client.logout()

    copying.set()
    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        backup(server.data_dir, tmp_path / "backup")
    finally:
        copying.clear()
        worker.join(60)
    assert during, "no mail arrived while the copy was made"

    # Restore: the copy into an empty data_dir of a new server, as the README says.
    restored_data = tmp_path / "restored" / "data"
    restored_data.mkdir(parents=True)
    subprocess.run(["rsync", "-a", f"{tmp_path / 'backup'}/", f"{restored_data}/"], check=True, timeout=120)
    restored = appliance.start(
        BODY, listeners=("smtp", "imaps"), name="restored", data_dir=str(restored_data)
    )
    after = mailboxes(restored)
    for key, (uidvalidity, messages) in original.items():
        assert after[key][0] == uidvalidity, key
        for subject, (uid, flags) in messages.items():
            got = after[key][1].get(subject)
            assert got is not None, f"{subject} missing from {key} after the restore"
            if key == ("john@example.test", "INBOX") and 7 <= uid <= 11:
                assert got[0] == uid  # these had \Answered changed during the copy: UID kept
            else:
                assert got == (uid, flags), (key, subject)
    # What arrived during the copy is there at most once (folder() refuses duplicates), some of it.
    extra = set(after[("john@example.test", "INBOX")][1]) - set(original[("john@example.test", "INBOX")][1])
    assert extra <= set(during)
    # The restored server takes new mail (tmp/ was not copied) and gives it the next UID.
    send(restored, "john@example.test", "after the restore")
    _, inbox = folder_of(restored, "john@example.test", "INBOX")
    assert inbox["after the restore"][0] == max(uid for uid, _flags in inbox.values())


def folder_of(server: RunningAppliance, address: str, name: str) -> tuple[int, dict[str, tuple[int, str]]]:
    client = imap(server, address)
    try:
        return folder(client, name)
    finally:
        client.logout()
