"""`appliance import dovecot` with a Postfix virtual alias map: mail goes where Postfix sent it.

Where Postfix would send each test message is asked of Postfix itself: `postmap -q` looks the
address up in the same map file (texthash:, no database needed), expanded as virtual(5) says
(the address, then its @domain; an address that lists itself is delivered; the others are
looked up again). The appliance, serving the imported manifest, then gets one message per
recipient over SMTP; its mailboxes and the smarthost standing in for the Internet must hold
exactly that.
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.auth import Outcome
from tests.fixtures.appliance import ApplianceFactory
from tests.fixtures.auth_service import AuthServices
from tests.fixtures.samba import SambaDomain
from tests.support.queue import Peer, free_port_on, mailbox_messages, message
from tests.test_dovecot_hashes import doveadm_pw

PASSWORD = "Import!Passw0rd"
VIRTUAL = """\
# Postfix virtual alias map, as admins write it
alias.test              anything
anna@example.test       anna@example.test
bob@example.test        bob@example.test,
                        bob@elsewhere.example
carl@example.test       carl@other.example
info@example.test       anna@example.test, bob@example.test
sales@example.test      info@example.test
team@example.test       carl@example.test, dora@example.test
@example.test           anna@example.test
@alias.test             dora@example.test
postmaster              root
"""
ACCOUNTS = ("anna", "bob", "carl", "dora")
RECIPIENTS = [
    "anna@example.test",
    "bob@example.test",
    "carl@example.test",
    "dora@example.test",
    "info@example.test",
    "sales@example.test",
    "team@example.test",
    "nobody@example.test",
    "someone@alias.test",
]


def postfix_destinations(
    directory: Path, table: Path, address: str, depth: int = 0, final: frozenset[str] = frozenset()
) -> set[str]:
    """Where Postfix's virtual alias rewriting sends `address`, by asking postmap (virtual(5));
    addresses in `final` are taken as delivered to their own mailbox."""
    assert depth < 20, "alias loop"
    if address in final:
        return {address}
    postmap = shutil.which("postmap")
    if postmap is None:  # .ci/apt/smtp.txt installs postfix
        pytest.fail("postmap is not installed (see .ci/apt/smtp.txt)")
    for key in (address, "@" + address.partition("@")[2]):
        done = subprocess.run(
            [postmap, "-c", str(directory), "-q", key, f"texthash:{table}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode == 0:
            targets = [t for t in done.stdout.replace(",", " ").split() if t]
            found: set[str] = set()
            for target in targets:
                if target.lower() == address.lower():
                    found.add(target.lower())
                else:
                    found |= postfix_destinations(directory, table, target.lower(), depth + 1, final)
            return found
        assert done.returncode == 1, done.stderr  # 1: not found
    return {address}


@pytest.fixture
def relay() -> Iterator[Peer]:
    peer = Peer("127.0.0.1", free_port_on("127.0.0.1"))
    try:
        yield peer
    finally:
        peer.stop()


def test_imported_virtual_map_delivers_to_the_mailboxes_postfix_would(
    tmp_path: Path, appliance: ApplianceFactory, relay: Peer
) -> None:
    encoded = doveadm_pw("SHA512-CRYPT", PASSWORD)
    (tmp_path / "users").write_text(
        "".join(f"{name}@example.test:{encoded}:8:8::/var/vmail/example.test/{name}::\n" for name in ACCOUNTS)
    )
    (tmp_path / "virtual").write_text(VIRTUAL)
    postfix = tmp_path / "postfix"
    postfix.mkdir()
    (postfix / "main.cf").write_text("")  # postmap needs one; Postfix's defaults
    expected = {rcpt: postfix_destinations(postfix, tmp_path / "virtual", rcpt) for rcpt in RECIPIENTS}
    # What the map means, as Postfix reads it: the test is only as good as this.
    assert expected["info@example.test"] == {"anna@example.test", "bob@example.test", "bob@elsewhere.example"}
    assert expected["carl@example.test"] == {"carl@other.example"}
    assert expected["nobody@example.test"] == {"anna@example.test"}
    assert expected["dora@example.test"] == {"anna@example.test"}  # the catch-all takes her mail

    done = subprocess.run(
        [sys.executable, "-m", "appliance", "import", "dovecot"]
        + ["--passwd-file", str(tmp_path / "users"), "--postfix-virtual", str(tmp_path / "virtual")]
        + ["--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = done.stdout.splitlines()
    assert [line for line in report if line.startswith("not carried")] == [
        "not carried: virtual:12: postmaster: a key without @domain ($myorigin)"
    ]
    # The one place the appliance means something else, said in the report.
    differs = [line.split(":")[1].strip() for line in report if line.startswith("differs")]
    assert differs == ["dora@example.test"]
    assert "maildir: anna@example.test: move the Maildir under /var/vmail/example.test/anna" in done.stdout
    assert PASSWORD not in done.stdout and encoded not in done.stdout
    manifest = tmp_path / "out" / "appliance.toml"
    validated = subprocess.run(
        [sys.executable, "-m", "appliance", "validate", str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert validated.returncode == 0, validated.stderr
    # As the report says: dora's own mail (and what reaches her through aliases) stays hers.
    expected = {
        rcpt: postfix_destinations(postfix, tmp_path / "virtual", rcpt, final=frozenset(differs))
        for rcpt in RECIPIENTS
    }

    text = manifest.read_text()
    outbound = (
        f'\n[outbound]\nrelay_host = "127.0.0.1:{relay.port}"\nrelay_tls = "none"\nretry_intervals = ["1s"]\n'
    )
    server = appliance.start(text[text.index("\n[d") :] + outbound, listeners=("smtp",))
    for rcpt in RECIPIENTS:
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
            client.sendmail(
                "a@remote.example", [rcpt], message("a@remote.example", rcpt, subject=f"to {rcpt}")
            )

    remote = {rcpt for targets in expected.values() for rcpt in targets if not rcpt.endswith("@example.test")}
    received = relay.wait_for(sum(1 for targets in expected.values() if targets & remote), timeout=30)
    got: dict[str, set[str]] = {rcpt: set() for rcpt in RECIPIENTS}
    for name in ACCOUNTS:
        for found in mailbox_messages(server.data_dir, f"{name}@example.test"):
            got[str(found["Subject"]).removeprefix("to ")].add(f"{name}@example.test")
    for envelope in received:
        subject = next(line for line in envelope.data.split(b"\r\n") if line.startswith(b"Subject: "))
        got[subject.decode().removeprefix("Subject: to ")] |= {r.lower() for r in envelope.recipients}
    assert got == expected


def test_with_a_directory_the_accounts_are_linked_by_user_name_and_no_hash_is_carried(tmp_path: Path) -> None:
    encoded = doveadm_pw("SHA512-CRYPT", PASSWORD)
    (tmp_path / "users").write_text(
        f"anna@example.test:{encoded}:8:8::/home/anna::\nbob@example.test::8:8::::\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "import", "dovecot", "--passwd-file", str(tmp_path / "users")]
        + ["--out", str(tmp_path / "out"), "--directory", "cloudtech.local"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    from appliance.manifest import load_manifest

    manifest = load_manifest(tmp_path / "out" / "appliance.toml").manifest
    accounts = manifest.domains["example.test"].accounts
    assert all(
        a.active_directory is not None
        and (a.active_directory.domain, a.active_directory.user) == ("cloudtech.local", name)
        and a.password_hash is None
        for name, a in accounts.items()
    )
    assert sorted(accounts) == ["anna", "bob"] and "cloudtech.local" in manifest.directories
    assert encoded not in (tmp_path / "out" / "appliance.toml").read_text()


def test_accounts_linked_by_the_import_log_in_with_their_ad_password_on_the_samba_dc(
    tmp_path: Path, samba: SambaDomain, auth_services: AuthServices
) -> None:
    user = f"dv{int(time.time() * 1000) % 10**8}"
    samba.add_user(user, "Ad!Passw0rd-dv")
    # A Dovecot that checked passwords against AD keeps only users (a userdb) in its passwd-file.
    (tmp_path / "users").write_text(f"{user}@example.test::8:8::/var/vmail/{user}::\n")
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "import", "dovecot", "--passwd-file", str(tmp_path / "users")]
        + ["--out", str(tmp_path / "out"), "--directory", "cloudtech.local"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "out" / "appliance.toml").read_text()
    # The DCs are the admin's to fill in (the import declares discover = true): here, the test DC.
    dcs = f'servers = ["{samba.dcs[0].ldaps_url}"]\nca_file = "tls/ca.pem"\nnetbios_name = "CLOUDTECH"'
    body = text[text.index("\n[d") :].replace("discover = true", dcs)
    login = auth_services.start(body, files={"tls/ca.pem": samba.ca_file.read_bytes()})
    assert login(f"{user}@example.test", "Ad!Passw0rd-dv").outcome is Outcome.ACCEPTED
    assert login(f"{user}@example.test", "Ad!Passw0rd-no").cause == "bad_credentials"


def test_import_writes_nothing_over_an_existing_manifest_or_from_nothing(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "appliance.toml").write_text("keep me\n")
    (tmp_path / "users").write_text("anna@example.test::8:8::::\n")
    run = [sys.executable, "-m", "appliance", "import", "dovecot", "--out", str(tmp_path / "out")]
    done = subprocess.run(
        [*run, "--passwd-file", str(tmp_path / "users")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "exists" in done.stderr
    assert (tmp_path / "out" / "appliance.toml").read_text() == "keep me\n"
    done = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
