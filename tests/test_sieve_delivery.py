"""Sieve at delivery, through the real `appliance serve`: mail sent over SMTP lands where the
account's script (named by the manifest) says, with its flags; a vacation reply reaches the
sender once per :days (an SMTP peer on loopback is the smarthost and counts them), never for a
list message or an auto-reply, and not again after a restart; a reject is refused at DATA when
every recipient rejects, else reported in a DSN; a broken script is refused by `validate` and
by a reload, which keeps the old one serving."""

from __future__ import annotations

import email
import email.policy
import imaplib
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import client_context
from tests.support.queue import Peer, free_port_on, message
from tests.support.wait import wait_for

PASSWORD = "Sieve!Passw0rd"
HASH = hash_password(PASSWORD)
FILING = """require ["fileinto", "imap4flags", "mailbox"];
if header :contains "subject" "report" {
    addflag "\\\\Flagged";
    fileinto :create :flags ["\\\\Seen", "\\\\Flagged"] "Reports";
    stop;
}
"""
VACATION = """require ["vacation"];
vacation :days 3 :subject "Out of office" "I am away until Monday.";
"""
REJECT = """require ["reject"];
if header :contains "subject" "offer" {
    reject "No offers, thank you.";
}
"""


@pytest.fixture
def relay() -> Iterator[Peer]:
    peer = Peer("127.0.0.1", free_port_on("127.0.0.1"))
    yield peer
    peer.stop()


def manifest(relay: Peer) -> str:
    return f"""
[outbound]
relay_host = "127.0.0.1:{relay.port}"
relay_tls = "none"
retry_intervals = ["1s"]

[domains."example.test".accounts]
john = {{ password_hash = "{HASH}", sieve = "sieve/john.sieve" }}
anna = {{ password_hash = "{HASH}" }}
"""


def start(appliance: ApplianceFactory, relay: Peer, script: str, name: str = "appliance") -> RunningAppliance:
    directory = appliance.base / name / "sieve"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "john.sieve").write_text(script)
    return appliance.start(manifest(relay), listeners=("smtp", "imaps"), name=name)


def send(server: RunningAppliance, sender: str, recipients: list[str], data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=15) as client:
        client.sendmail(sender, recipients, data)


def maildir(server: RunningAppliance, folder: str = "") -> Path:
    root = server.data_dir / "mail" / "example.test" / "john"
    return root / f".{folder}" if folder else root


def files(directory: Path) -> list[str]:
    return sorted(
        p.name for sub in ("new", "cur") if (directory / sub).is_dir() for p in (directory / sub).iterdir()
    )


def test_mail_lands_in_the_folder_the_script_names_with_its_flags(
    appliance: ApplianceFactory, relay: Peer
) -> None:
    server = start(appliance, relay, FILING)
    send(
        server,
        "alice@remote.test",
        ["john@example.test"],
        message("alice@remote.test", "john@example.test", "Q4 report"),
    )
    send(
        server,
        "alice@remote.test",
        ["john@example.test"],
        message("alice@remote.test", "john@example.test", "lunch?"),
    )
    [filed] = files(maildir(server, "Reports"))
    assert filed.endswith(":2,FS")
    assert len(files(maildir(server))) == 1  # the other one, in INBOX
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=10
    )
    try:
        client.login("john@example.test", PASSWORD)
        assert client.select("Reports")[0] == "OK"
        _, data = client.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"\\Seen" in data[0][0] and b"\\Flagged" in data[0][0]  # type: ignore[index]
        assert b"Q4 report" in data[0][1]  # type: ignore[index]
    finally:
        client.logout()


UNICODE_FOLDERS = """require ["fileinto", "mailbox"];
if header :contains "subject" "invoice" { fileinto :create "Büro"; stop; }
if header :contains "subject" "summer" { fileinto "Été"; stop; }
if header :contains "subject" "research" { fileinto :create "R&D"; stop; }
"""


def test_fileinto_a_non_ascii_folder_files_into_the_folder_imap_names_in_modified_utf7(
    appliance: ApplianceFactory, relay: Peer
) -> None:
    server = start(appliance, relay, UNICODE_FOLDERS)
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=10
    )
    try:
        client.login("john@example.test", PASSWORD)
        # A folder the user made in a mail client ("Été", RFC 3501 §5.1.3): fileinto without
        # :create finds it by its Unicode name.
        assert client.create('"&AMk-t&AOk-"')[0] == "OK"
        for subject in ("invoice 42", "summer plans", "research notes"):
            send(
                server,
                "alice@remote.test",
                ["john@example.test"],
                message("alice@remote.test", "john@example.test", subject),
            )
        _, listed = client.list()
        names = b"\n".join(line for line in listed if isinstance(line, bytes))
        for folder, subject in (
            ("B&APw-ro", "invoice 42"),
            ("&AMk-t&AOk-", "summer plans"),
            ("R&-D", "research notes"),
        ):
            assert f'"{folder}"'.encode() in names or f" {folder}".encode() in names, names
            typ, data = client.select(f'"{folder}"', readonly=True)
            assert (typ, data) == ("OK", [b"1"]), (folder, typ, data)
            _, fetched = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert subject.encode() in fetched[0][1]  # type: ignore[index]
        assert client.select("INBOX", readonly=True) == ("OK", [b"0"])
    finally:
        client.logout()
    assert files(maildir(server)) == []


def vacation_replies(relay: Peer, count: int) -> list[str]:
    """The recipients of the first `count` mails the relay got, once it has that many."""
    got = relay.wait_for(count)
    for item in got:
        reply = email.message_from_bytes(item.data, policy=email.policy.default)
        assert item.sender in ("", "<>") and reply["Auto-Submitted"].startswith("auto-replied")
        assert reply["Subject"] == "Out of office"
    return [item.recipients[0] for item in got]


def test_vacation_replies_once_per_days_per_sender_never_to_lists_or_auto_replies(
    appliance: ApplianceFactory, relay: Peer
) -> None:
    server = start(appliance, relay, VACATION)
    to = "john@example.test"
    send(server, "alice@remote.test", [to], message("alice@remote.test", to, "one"))
    assert vacation_replies(relay, 1) == ["alice@remote.test"]
    send(server, "alice@remote.test", [to], message("alice@remote.test", to, "two"))  # within :days
    listed = message("list@lists.test", to, "digest").replace(
        b"\r\n\r\n", b"\r\nList-Id: <dev.lists.test>\r\n\r\n", 1
    )
    send(server, "dev-bounces@lists.test", [to], listed)
    automatic = message("bob@remote.test", to, "Auto: hi").replace(
        b"\r\n\r\n", b"\r\nAuto-Submitted: auto-replied\r\n\r\n", 1
    )
    send(server, "bob@remote.test", [to], automatic)
    send(server, "carol@remote.test", [to], message("carol@remote.test", to, "three"))  # the marker
    assert vacation_replies(relay, 2) == ["alice@remote.test", "carol@remote.test"]
    server.wait_for_log(r"vacation not sent [^\n]*reason=\"?mailing list message")
    server.wait_for_log(r"vacation not sent [^\n]*reason=\"?auto-submitted message")
    # The record survives a restart: alice still gets nothing, dave (new) gets a reply.
    server.stop()
    again = appliance.start(manifest(relay), listeners=("smtp", "imaps"))
    send(again, "alice@remote.test", [to], message("alice@remote.test", to, "four"))
    send(again, "dave@remote.test", [to], message("dave@remote.test", to, "five"))
    assert vacation_replies(relay, 3)[2] == "dave@remote.test"
    assert len(files(maildir(again))) == 7  # every message was kept as well


def test_reject_refuses_at_data_when_every_recipient_rejects_else_sends_a_dsn(
    appliance: ApplianceFactory, relay: Peer
) -> None:
    server = start(appliance, relay, REJECT)
    offer = message("shop@remote.test", "john@example.test", "special offer")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, "shop@remote.test", ["john@example.test"], offer)
    assert refused.value.smtp_code == 550 and b"No offers, thank you." in refused.value.smtp_error
    assert files(maildir(server)) == []
    send(server, "shop@remote.test", ["john@example.test", "anna@example.test"], offer)
    anna = server.data_dir / "mail" / "example.test" / "anna" / "new"
    wait_for(lambda: len(list(anna.iterdir())) == 1 if anna.is_dir() else False, 10, "anna's copy")
    [notice] = relay.wait_for(1)
    assert notice.sender in ("", "<>") and notice.recipients == ["shop@remote.test"]
    dsn = email.message_from_bytes(notice.data, policy=email.policy.default)
    assert dsn.get_param("report-type") == "delivery-status"
    assert b"john@example.test" in notice.data and b"No offers, thank you." in notice.data
    assert files(maildir(server)) == []


def test_a_broken_script_fails_validate_at_its_line_and_a_reload_keeps_the_old(
    appliance: ApplianceFactory, relay: Peer
) -> None:
    server = start(appliance, relay, FILING)
    script = server.manifest.parent / "sieve" / "john.sieve"
    script.write_text(FILING.replace("fileinto :create", "fileinto :create :bogus"))
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "validate", str(server.manifest)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    line = next(
        n for n, text in enumerate(server.manifest.read_text().splitlines(), 1) if "john.sieve" in text
    )
    assert f"appliance.toml:{line}:" in result.stderr
    assert "sieve/john.sieve:4:22: fileinto takes no tag :bogus" in result.stderr
    offset = server.log_size()
    server.reload()
    server.wait_for_log(r"reload rejected [^\n]*sieve/john.sieve:4:22", after=offset)
    send(
        server,
        "alice@remote.test",
        ["john@example.test"],
        message("alice@remote.test", "john@example.test", "report"),
    )
    assert len(files(maildir(server, "Reports"))) == 1  # the old script still files
    # A script change alone (the manifest untouched) is picked up: the file is watched.
    offset = server.log_size()
    script.write_text('require ["fileinto", "mailbox"];\nfileinto :create "Everything";\n')
    server.wait_for_log(r"manifest reloaded trigger=file-change", after=offset)
    send(
        server,
        "alice@remote.test",
        ["john@example.test"],
        message("alice@remote.test", "john@example.test", "report"),
    )
    wait_for(
        lambda: len(files(maildir(server))) == 0 and (maildir(server, "Everything")).is_dir(), 10, "filed"
    )


def test_a_vacation_reply_to_a_local_sender_lands_in_its_mailbox(
    appliance: ApplianceFactory, relay: Peer
) -> None:
    server = start(appliance, relay, VACATION)
    send(
        server,
        "anna@example.test",
        ["john@example.test"],
        message("anna@example.test", "john@example.test", "hi"),
    )
    anna = server.data_dir / "mail" / "example.test" / "anna" / "new"
    wait_for(lambda: anna.is_dir() and len(list(anna.iterdir())) == 1, 10, "the reply in anna's INBOX")
    [path] = list(anna.iterdir())
    reply = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert reply["Subject"] == "Out of office" and reply["Auto-Submitted"].startswith("auto-replied")
    assert relay.received == []
