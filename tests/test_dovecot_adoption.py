"""Taking over a Maildir Dovecot served: its IMAP and POP3 clients see the same mailbox after the move.

A real Dovecot (tests/fixtures/dovecot.py) serves a Maildir first; imapclient records what its
clients would have cached (UIDVALIDITY, UIDNEXT, each UID's flags, size and date, the
subscriptions) and poplib the UIDLs. Then the appliance serves the same Maildir: all equal, and
the next message gets the UID Dovecot would have given. Dovecot's own files are never written.
"""

from __future__ import annotations

import hashlib
import poplib
import shutil
import smtplib
import subprocess
from pathlib import Path
from typing import Any

import imapclient
import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.fixtures.dovecot import Dovecot
from tests.support.lines import client_context

PASSWORD = "Dovecot!Passw0rd"
FOLDERS = ("INBOX", "Work", "Work.Sub", "Archive")


def sha512_crypt(password: str) -> str:
    done = subprocess.run(
        ["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def message(subject: str) -> bytes:
    return f"From: a@remote.example\r\nTo: anna@example.test\r\nSubject: {subject}\r\n\r\nHello {subject}.\r\n".encode()


def record(client: imapclient.IMAPClient) -> dict[str, Any]:
    """What a caching client keeps: per folder UIDVALIDITY, UIDNEXT and each UID's data."""
    seen: dict[str, Any] = {"subscribed": sorted(name for _, _, name in client.list_sub_folders())}
    for folder in FOLDERS:
        status = client.folder_status(folder, ["UIDVALIDITY", "UIDNEXT"])
        client.select_folder(folder, readonly=True)
        uids = client.search(["ALL"])
        fetched = client.fetch(uids, ["FLAGS", "RFC822.SIZE", "INTERNALDATE", "BODY.PEEK[]"]) if uids else {}
        seen[folder] = {
            "uidvalidity": status[b"UIDVALIDITY"],
            "uidnext": status[b"UIDNEXT"],
            "messages": {
                uid: (
                    sorted(flag for flag in data[b"FLAGS"] if flag != b"\\Recent"),
                    data[b"RFC822.SIZE"],
                    data[b"INTERNALDATE"].timestamp(),
                    hashlib.sha256(data[b"BODY[]"]).hexdigest(),
                )
                for uid, data in fetched.items()
            },
        }
        client.unselect_folder()
    return seen


def dovecot_fill(dovecot: Dovecot) -> None:
    """Folders, messages with flags and keywords, an expunge (a gap in the UIDs), subscriptions."""
    with imapclient.IMAPClient("127.0.0.1", port=dovecot.imap_port, ssl=False, timeout=30) as client:
        client.login("anna", PASSWORD)
        for folder in FOLDERS[1:]:
            client.create_folder(folder)
        for folder in ("INBOX", "Work", "Work.Sub"):
            client.subscribe_folder(folder)
        for n in range(6):
            client.append("INBOX", message(f"inbox {n}"), flags=[b"\\Seen"] if n % 2 else [])
        client.append("Work", message("work 1"), flags=[b"\\Seen", b"$Label1"])
        client.append("Work", message("work 2"), flags=[b"\\Answered", b"Important"])
        client.append("Archive", message("old"), flags=[b"\\Seen"])
        client.select_folder("INBOX")
        client.add_flags([2], [b"\\Flagged"], silent=True)
        client.delete_messages([3])
        client.expunge()
        client.logout()


def pop3_uidls(host_port: int, *, tls: RunningAppliance | None = None, user: str) -> list[bytes]:
    if tls is None:
        client = poplib.POP3("127.0.0.1", host_port, timeout=30)
    else:
        client = poplib.POP3_SSL("127.0.0.1", host_port, context=client_context(tls), timeout=30)
    client.user(user)
    client.pass_(PASSWORD)
    _, lines, _ = client.uidl()
    client.quit()
    return lines


def dovecot_files(maildir: Path) -> dict[str, bytes]:
    """Every file Dovecot wrote beside the messages (uidlists, keywords, indexes, subscriptions)."""
    return {
        str(path.relative_to(maildir)): path.read_bytes()
        for path in sorted(maildir.rglob("*"))
        if path.is_file() and (path.name.startswith("dovecot") or path.name == "subscriptions")
    }


def test_appliance_serves_a_dovecot_maildir_with_the_same_uids_flags_subscriptions_and_uidls(
    dovecot: Dovecot, appliance: ApplianceFactory
) -> None:
    encoded = sha512_crypt(PASSWORD)
    dovecot.start({"anna": encoded})
    dovecot_fill(dovecot)
    with imapclient.IMAPClient("127.0.0.1", port=dovecot.imap_port, ssl=False, timeout=30) as client:
        client.login("anna", PASSWORD)
        before = record(client)
        client.logout()
    uidls_before = pop3_uidls(dovecot.pop3_port, user="anna")
    dovecot.stop()
    assert len(uidls_before) == 5 and len(before["INBOX"]["messages"]) == 5

    # The admin moves the Maildir to where the appliance keeps anna's mail.
    target = appliance.base / "appliance" / "var" / "mail" / "example.test" / "anna"
    shutil.copytree(dovecot.maildir("anna"), target, symlinks=True)
    untouched = dovecot_files(target)
    # Mail Postfix delivered after Dovecot stopped: in a folder Dovecot knew empty, unknown to it.
    late = target / ".Work.Sub" / "new" / "1700000000.M1P1.postfix"
    late.write_bytes(message("late"))
    server = appliance.start(
        f'[domains."example.test".accounts]\nanna = {{ password_hash = "{encoded}" }}\n',
        listeners=("smtp", "imaps", "pop3s"),
    )
    # POP3 first: a POP3 client of Dovecot's must not see new UIDLs, whatever IMAP did before.
    assert pop3_uidls(server.ports["pop3s"], tls=server, user="anna@example.test") == uidls_before
    with imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=client_context(server), timeout=30
    ) as client:
        client.login("anna@example.test", PASSWORD)
        after = record(client)
        assert {f: after[f] for f in after if f != "Work.Sub"} == {
            f: before[f] for f in before if f != "Work.Sub"
        }
        # Work.Sub, empty under Dovecot: the late message has the UID Dovecot would have given.
        assert before["Work.Sub"]["messages"] == {}
        assert list(after["Work.Sub"]["messages"]) == [before["Work.Sub"]["uidnext"]]
        assert after["Work.Sub"]["uidvalidity"] == before["Work.Sub"]["uidvalidity"]
        assert after["Work.Sub"]["uidnext"] == before["Work.Sub"]["uidnext"] + 1

        # New mail gets the UIDs Dovecot would have given: its UIDNEXT, same UIDVALIDITY.
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as smtp:
            smtp.sendmail("a@remote.example", ["anna@example.test"], message("after the move"))
        client.append("Work", message("appended"))
        client.select_folder("INBOX", readonly=True)
        assert max(client.search(["ALL"])) == before["INBOX"]["uidnext"]
        client.unselect_folder()
        client.select_folder("Work", readonly=True)
        assert max(client.search(["ALL"])) == before["Work"]["uidnext"]
        client.unselect_folder()
        status = client.folder_status("INBOX", ["UIDVALIDITY", "UIDNEXT"])
        assert status[b"UIDVALIDITY"] == before["INBOX"]["uidvalidity"]
        assert status[b"UIDNEXT"] == before["INBOX"]["uidnext"] + 1
        client.logout()
    # And after a restart, from our own list now.
    server.stop()
    server = appliance.start(
        f'[domains."example.test".accounts]\nanna = {{ password_hash = "{encoded}" }}\n',
        listeners=("smtp", "imaps", "pop3s"),
    )
    with imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=client_context(server), timeout=30
    ) as client:
        client.login("anna@example.test", PASSWORD)
        again = record(client)
        client.logout()
    for folder in FOLDERS:
        assert again[folder]["uidvalidity"] == before[folder]["uidvalidity"]
        assert {
            uid: data for uid, data in again[folder]["messages"].items() if uid in before[folder]["messages"]
        } == (before[folder]["messages"])
    assert again["INBOX"]["uidnext"] == before["INBOX"]["uidnext"] + 1
    assert dovecot_files(target) == untouched  # Dovecot's files only read

    # Our list lost: a new UIDVALIDITY, as for any folder, not Dovecot's again (UIDs given since
    # the move would be given to other messages).
    server.stop()
    (target / "appliance-uidlist").unlink()
    server = appliance.start(
        f'[domains."example.test".accounts]\nanna = {{ password_hash = "{encoded}" }}\n',
        listeners=("imaps",),
    )
    with imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=client_context(server), timeout=30
    ) as client:
        client.login("anna@example.test", PASSWORD)
        status = client.folder_status("INBOX", ["UIDVALIDITY"])
        assert status[b"UIDVALIDITY"] != before["INBOX"]["uidvalidity"]
        assert client.folder_status("Work", ["UIDVALIDITY"])[b"UIDVALIDITY"] == before["Work"]["uidvalidity"]
        client.logout()


def test_pop3_uidls_of_another_dovecot_format_are_kept_with_the_manifest_setting(
    dovecot: Dovecot, appliance: ApplianceFactory
) -> None:
    uidl_format = "%v.%u-%f"  # UW-IMAP's %v.%u and the Maildir file name, in one
    encoded = sha512_crypt(PASSWORD)
    dovecot.start({"anna": encoded}, extra=f"pop3_uidl_format = {uidl_format}\n")
    with imapclient.IMAPClient("127.0.0.1", port=dovecot.imap_port, ssl=False, timeout=30) as client:
        client.login("anna", PASSWORD)
        for n in range(3):
            client.append("INBOX", message(f"inbox {n}"))
        client.logout()
    uidls_before = pop3_uidls(dovecot.pop3_port, user="anna")
    dovecot.stop()
    assert len(uidls_before) == 3 and b"-" in uidls_before[0]

    target = appliance.base / "appliance" / "var" / "mail" / "example.test" / "anna"
    shutil.copytree(dovecot.maildir("anna"), target, symlinks=True)
    server = appliance.start(
        f'[domains."example.test".accounts]\nanna = {{ password_hash = "{encoded}" }}\n',
        listeners=("pop3s",),
        server_extra=f'dovecot_pop3_uidl_format = "{uidl_format}"',
    )
    assert pop3_uidls(server.ports["pop3s"], tls=server, user="anna@example.test") == uidls_before


def test_a_uidl_format_the_server_cannot_expand_is_refused_by_the_manifest() -> None:
    from appliance.manifest import ManifestError, parse_manifest

    for text in ("%m", "%Lu", "constant"):
        manifest = f'[server]\nhostname = "mail.example.test"\ndovecot_pop3_uidl_format = "{text}"\n'
        with pytest.raises(ManifestError) as raised:
            parse_manifest(manifest.encode(), "m.toml")
        assert "dovecot_pop3_uidl_format" in "\n".join(raised.value.lines())


@pytest.mark.parametrize(
    ("text", "first", "uidl"),
    [
        pytest.param(
            "3 V1234 N9 G0123abc X\n3 W120 P0badUIDL :100.M1P1.host,S=10,W=12\n5 :200.M2P2.host:2,S\n"
            "x :junk\n3 :the.same.uid\n",
            "100.M1P1.host,S=10,W=12",
            "0badUIDL",  # a UIDL Dovecot saved (pop3_save_uidl) wins over the format
            id="version 3",
        ),
        pytest.param(
            "1 1234 9\n3 100.M1P1.host\n5 200.M2P2.host\nnot a line\n3 the.same.uid\n",
            "100.M1P1.host",
            f"{3:08x}{1234:08x}",
            id="version 1",
        ),
    ],
)
def test_a_dovecot_uidlist_of_either_version_is_read_and_bad_lines_skipped(
    tmp_path: Path, text: str, first: str, uidl: str
) -> None:
    from appliance.store.dovecot import read_dovecot_uidlist

    (tmp_path / "dovecot-uidlist").write_text(text)
    found = read_dovecot_uidlist(tmp_path)
    assert found is not None
    assert (found.uidvalidity, found.next_uid) == (1234, 9)
    assert found.uids == {first: 3, "200.M2P2.host": 5}
    assert found.pop3_uidl(first) == uidl
    assert found.pop3_uidl("200.M2P2.host") == f"{5:08x}{1234:08x}"


def test_a_file_that_is_no_dovecot_uidlist_is_ignored(tmp_path: Path) -> None:
    from appliance.store.dovecot import read_dovecot_uidlist

    for text in ("", "2 V1 N2\n", "3 N5\n", "3 V0 N5\n", "1 x 2\n"):
        (tmp_path / "dovecot-uidlist").write_text(text)
        assert read_dovecot_uidlist(tmp_path) is None, text
    (tmp_path / "dovecot-uidlist").unlink()
    assert read_dovecot_uidlist(tmp_path) is None
