"""`appliance import hmailserver` against a real MariaDB holding hMailServer's tables, and the
result served by the real `appliance serve`: old passwords, AD links, folders, flags and UIDs.

The installation (tests/hmailserver/installation.py) has two domains and a domain alias, local
accounts with each password encoding, AD-linked accounts in two AD domains (one checked against
the suite's Samba DC), a disabled account, an alias, a distribution list, forwarding, a vacation
message, a rule, an IP range, and a folder tree with flagged messages in a data directory laid
out as hMailServer lays it out. The database user may only SELECT: the import cannot write.
"""

from __future__ import annotations

import hashlib
import imaplib
import itertools
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.auth.passwords import MATCH, MISMATCH, check_password
from appliance.imap.uidlist import load_uidlist
from tests.fixtures.appliance import RunningAppliance, free_port
from tests.fixtures.mariadb import MariaDB
from tests.fixtures.samba import SambaDomain
from tests.hmailserver.commands import (
    DB_PASSWORD,
    Source,
    import_command,
    import_from_database,
    run,
    store_files,
)
from tests.hmailserver.installation import (
    AD_PASSWORD,
    AD_USER,
    PASSWORDS,
    SCHEMA,
    build,
    md5_hex,
)
from tests.support.lines import client_context

_databases = itertools.count(1)


@pytest.fixture
def source(mariadb: MariaDB, tmp_path: Path) -> Source:
    """A fresh hMailServer database (its own name) and data directory."""
    ports = {"smtp": free_port(), "imaps": free_port()}
    installation = build(tmp_path / "hmail-data", ports)
    name = f"hmail{os.getpid()}_{next(_databases)}"
    url = mariadb.create_database(name, schema=SCHEMA, reader=("hmreader", DB_PASSWORD))
    for table, rows in installation.tables.items():
        mariadb.insert(name, table, rows)
    password_file = tmp_path / "db-password"
    password_file.write_text(DB_PASSWORD + "\n")
    password_file.chmod(0o600)
    return Source(installation, url, name, password_file, ports)


def checksums(mariadb: MariaDB, database: str, tables: list[str]) -> list[tuple[object, ...]]:
    with mariadb.connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("CHECKSUM TABLE " + ", ".join(f"`{t}`" for t in tables))
        return list(cursor.fetchall())


# -- the manifest and the report -----------------------------------------------------------------
def test_import_writes_a_manifest_validate_accepts_and_reports_what_it_left_out(
    mariadb: MariaDB, source: Source, tmp_path: Path
) -> None:
    tables = sorted(source.installation.tables)
    before = checksums(mariadb, source.database, tables)
    report = import_from_database(source, tmp_path / "out")
    assert checksums(mariadb, source.database, tables) == before

    manifest_path = tmp_path / "out" / "appliance.toml"
    validated = run("validate", manifest_path, "--format", "json")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    problems = json.loads(validated.stdout)["problems"]
    legacy = {p["path"] for p in problems if p["severity"] == "warning" and "hMailServer" in p["message"]}
    assert legacy == {
        f'domains."example.test".accounts.{local}.password_hash' for local in ("alice", "bob", "erin")
    }

    manifest = tomllib.loads(manifest_path.read_text())
    assert manifest["server"]["hostname"] == "mail.example.test"
    assert manifest["server"]["listeners"] == {
        "smtp": f"127.0.0.1:{source.ports['smtp']}",
        "imaps": f"127.0.0.1:{source.ports['imaps']}",
    }
    assert manifest["server"]["limits"] == {"max_message_size": 40960 * 1024}
    assert manifest["directories"] == {
        "cloudtech.local": {"type": "active-directory", "discover": True},
        "other.test": {"type": "active-directory", "discover": True, "netbios_name": "OTHERAD"},
    }
    example = manifest["domains"]["example.test"]
    second = manifest["domains"]["second.test"]
    accounts = example["accounts"]
    assert example["max_message_size"] == 20480 * 1024
    assert accounts["alice"]["password_hash"].startswith("{HMAIL-SHA256}a1b2c3")
    assert accounts["alice"]["quota"] == "100 MiB"
    assert accounts["alice"]["display_name"] == "Alice Liddell"
    assert accounts["alice"]["addresses"] == ["alice@example.org"]
    assert accounts["bob"]["password_hash"] == "{HMAIL-MD5}" + md5_hex(PASSWORDS["bob@example.test"])
    assert accounts["bob"]["forward_to"] == ["carol@second.test"] and accounts["bob"]["keep_copy"] is True
    assert accounts["erin"]["enabled"] is False
    assert accounts["gt"]["active_directory"] == {"domain": "cloudtech.local", "user": AD_USER}
    assert second["accounts"]["frank"]["active_directory"] == {"domain": "other.test", "user": "frank"}
    # Plain-text and Blowfish passwords are never carried over: those users get a new one.
    assert second["accounts"]["carol"] == {} and second["accounts"]["dave"] == {}
    assert "plain-text-pw" not in manifest_path.read_text()
    assert example["aliases"] == {
        "info": ["alice@example.test"],
        "team": ["alice@example.test", "bob@example.test"],
    }
    assert manifest["domains"]["example.org"]["aliases"] == {
        "info": ["info@example.test"],
        "team": ["team@example.test"],
    }

    assert report["counts"] == {
        "domains": 2,
        "domain aliases": 1,
        "accounts": 7,
        "local accounts": 5,
        "accounts linked to AD": 2,
        "disabled accounts": 1,
        "aliases": 2,
        "distribution lists": 1,
        "aliases left out": 1,
    }
    notes = {(n["kind"], n["object"], n["detail"]) for n in report["notes"]}  # type: ignore[union-attr]
    assert ("must reset", "carol@second.test", "password stored as plain text: not carried over") in notes
    assert (
        "must reset",
        "dave@second.test",
        "password stored as Blowfish (reversible): not carried over",
    ) in notes
    assert (
        "not imported",
        "bob@example.test",
        'vacation: auto-reply "Away until Monday" (no Sieve in this server yet)',
    ) in notes
    assert ("not imported", "alice@example.test", 'rule "Move newsletters"') in notes
    assert (
        "not imported",
        "old@example.test",
        'alias: no account or alias "gone" in example.test',
    ) in notes
    assert ("not imported", "server", 'IP range "Internet"') in notes
    assert ("not imported", "example.test", "domain size limit of 5000 MB") in notes
    assert ("not imported", "alice@example.test", "hMailServer administration rights") in notes
    assert (
        "to complete",
        "example.test",
        'DKIM selector "hm2024": copy its private key (C:\\hMailServer\\dkim\\example.pem) '
        'and add dkim = { selector = "hm2024", key_file = "..." }',
    ) in notes
    assert ("not imported", "server", "greylisting (setting usegreylisting)") in notes
    assert ("not imported", "server", "1 message(s) in hMailServer's delivery queue") in notes
    assert report["mail"] == {
        "folders": 7,
        "messages_copied": 9,
        "bytes_copied": report["mail"]["bytes_copied"],  # type: ignore[index]
        "messages_already_there": 0,
    }


def test_hmailserver_hashes_verify_the_old_password_and_nothing_else() -> None:
    salted = "{HMAIL-SHA256}" + "a1b2c3" + hashlib.sha256(b"a1b2c3" + b"Alice-0ld-Passw0rd").hexdigest()
    assert check_password(salted, "Alice-0ld-Passw0rd") == MATCH
    assert check_password(salted, "Alice-0ld-Passw0rd ") == MISMATCH
    assert check_password("{HMAIL-MD5}" + md5_hex("B0b-md5-secret"), "B0b-md5-secret") == MATCH
    assert check_password("{HMAIL-MD5}" + md5_hex("B0b-md5-secret"), "b0b-md5-secret") == MISMATCH


# -- the mail store --------------------------------------------------------------------------------
def test_mail_keeps_folders_flags_dates_and_hmailserver_uid_order(source: Source, tmp_path: Path) -> None:
    out = tmp_path / "out"
    import_from_database(source, out)
    alice = out / "var" / "mail" / "example.test" / "alice"
    inbox = sorted(os.listdir(alice / "cur"))
    assert len(inbox) == 3
    uids = load_uidlist(alice, 1)
    by_uid = sorted(uids.records.items(), key=lambda item: item[1].uid)
    bodies = [(alice / "cur" / next(n for n in inbox if n.startswith(key))).read_bytes() for key, _ in by_uid]
    assert [re.search(rb"\n\n(.*)\n", body).group(1) for body in bodies] == [  # type: ignore[union-attr]
        b"first by uid",
        b"second by uid",
        b"third by uid",
    ]
    assert [record.uid for _, record in by_uid] == [1, 2, 3]
    assert all(b"\r" not in body for body in bodies)  # stored with LF line ends
    flags = {re.search(rb"\n\n(.*)\n", b).group(1): n.rpartition(":2,")[2] for n, b in zip(  # type: ignore[union-attr]
        (next(n for n in inbox if n.startswith(key)) for key, _ in by_uid), bodies, strict=True)}  # fmt: skip
    assert flags == {b"first by uid": "RS", b"second by uid": "F", b"third by uid": "S"}
    first = next(n for n in inbox if n.startswith(by_uid[0][0]))
    assert (
        os.stat(alice / "cur" / first).st_mtime == by_uid[0][1].internaldate == 1709284500.0
    )  # 2024-03-01 09:15
    assert sorted(p.name for p in alice.iterdir() if p.name.startswith(".")) == [
        ".&ANw-ber",
        ".Projects",
        ".Projects.2024",
        ".Sent Items",
    ]
    assert sorted(n.rpartition(":2,")[2] for n in os.listdir(alice / ".Projects.2024" / "cur")) == ["D", "ST"]
    assert (alice / "subscriptions").read_text().splitlines() == [
        "INBOX",
        "Projects",
        "Projects.2024",
        "Sent Items",
    ]


def test_rerun_changes_nothing_and_one_new_source_message_adds_exactly_one(
    mariadb: MariaDB, source: Source, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    import_from_database(source, out)
    manifest = (out / "appliance.toml").read_bytes()
    first = store_files(out)
    inbox = out / "var" / "mail" / "example.test" / "alice"
    uidvalidity = load_uidlist(inbox, 1).uidvalidity

    again = import_from_database(source, out, password_env=True)
    assert again["mail"]["messages_copied"] == 0 and again["mail"]["messages_already_there"] == 9  # type: ignore[index]
    assert (out / "appliance.toml").read_bytes() == manifest
    assert not (out / "appliance.imported.toml").exists()
    assert store_files(out) == first

    row = source.installation.add_message(1, "alice@example.test", 1, 8, 0, 11, "arrived after the import")
    mariadb.insert(source.database, "hm_messages", [row])
    third = import_from_database(source, out)
    assert third["mail"]["messages_copied"] == 1  # type: ignore[index]
    after = store_files(out)
    added = set(after) - set(first)
    assert len(added) == 1, added  # the new message file only
    (new_file,) = added
    assert after[new_file].endswith(b"arrived after the import\n")
    uids = load_uidlist(inbox, 1)
    assert uids.uidvalidity == uidvalidity
    assert max(record.uid for record in uids.records.values()) == 4


def test_json_export_gives_the_same_manifest_and_store(source: Source, tmp_path: Path) -> None:
    from_database = tmp_path / "from-database"
    import_from_database(source, from_database)
    export = tmp_path / "export.json"
    source.installation.export_json(export)
    from_json = tmp_path / "from-json"
    result = run(
        "import", "hmailserver", "--json", export, "--data-dir", source.installation.data_dir,
        "--out", from_json, "--ad-domain", "OTHERAD=other.test",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "not imported: vacation" in result.stdout
    assert (from_json / "appliance.toml").read_text() == (from_database / "appliance.toml").read_text()
    assert store_files(from_json) == store_files(from_database)


# -- served ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ad_domain(samba_domain: SambaDomain) -> SambaDomain:
    """The suite's Samba DC, with the AD user hMailServer linked gt@example.test to."""
    samba_domain.add_user(AD_USER, AD_PASSWORD)
    return samba_domain


@pytest.fixture
def served(source: Source, ad_domain: SambaDomain, tmp_path: Path) -> Iterator[RunningAppliance]:
    """The import served by `appliance serve`, its AD directory completed with the suite's DC."""
    samba_domain = ad_domain
    out = tmp_path / "out"
    import_from_database(source, out)
    manifest = out / "appliance.toml"
    (out / "tls").mkdir()
    (out / "tls" / "cloudtech-ca.pem").write_bytes(samba_domain.ca_file.read_bytes())
    text = manifest.read_text().replace(
        '[directories."cloudtech.local"]\ntype = "active-directory"\ndiscover = true',
        f'[directories."cloudtech.local"]\ntype = "active-directory"\nservers = ["{samba_domain.dcs[0].ldaps_url}"]\n'
        'ca_file = "tls/cloudtech-ca.pem"',
    )
    assert "servers = " in text
    manifest.write_text(text)
    log_path = out / "serve.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve", "--manifest", str(manifest)],
            cwd=out,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = RunningAppliance(out, manifest, dict(source.ports), process, log_path)
    try:
        server.wait_until_serving(("smtp", "imaps"))
        yield server
    finally:
        server.stop()


def login(server: RunningAppliance, address: str, password: str) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=30
    )
    client.login(address, password)
    return client


def test_imported_accounts_log_in_with_their_old_and_ad_passwords(served: RunningAppliance) -> None:
    for address in ("alice@example.test", "bob@example.test"):
        login(served, address, PASSWORDS[address]).logout()
    login(served, "alice@example.org", PASSWORDS["alice@example.test"]).logout()  # the domain alias
    login(served, "gt@example.test", AD_PASSWORD).logout()  # against the Samba DC
    for address, password in (
        ("erin@example.test", PASSWORDS["erin@example.test"]),  # disabled in hMailServer
        ("alice@example.test", PASSWORDS["bob@example.test"]),
        ("carol@second.test", "plain-text-pw"),  # must be reset
    ):
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            login(served, address, password)


def test_mbsync_sees_the_imported_folders_messages_flags_and_bytes(
    served: RunningAppliance, source: Source, tmp_path: Path
) -> None:
    home = tmp_path / "mbsync"
    mail = home / "mail"
    mail.mkdir(parents=True)
    config = home / "mbsyncrc"
    config.write_text(
        f"IMAPAccount appliance\nHost localhost\nPort {served.ports['imaps']}\n"
        f'User alice@example.test\nPass "{PASSWORDS["alice@example.test"]}"\nSSLType IMAPS\n'
        f"SystemCertificates no\nCertificateFile {served.cafile}\nAuthMechs PLAIN LOGIN\nTimeout 30\n\n"
        "IMAPStore far\nAccount appliance\n\n"
        f"MaildirStore near\nPath {mail}/\nInbox {mail}/INBOX\nSubFolders Verbatim\n\n"
        "Channel sync\nFar :far:\nNear :near:\nPatterns *\nCreate Near\nSync Pull\nSyncState *\n"
    )
    config.chmod(0o600)
    result = subprocess.run(
        ["mbsync", "--config", str(config), "sync"],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    store = served.data_dir / "mail" / "example.test" / "alice"

    def listing(path: Path) -> list[tuple[str, bytes]]:
        found = []
        for sub in ("cur", "new"):
            for entry in (path / sub).iterdir():
                data = re.sub(rb"^X-TUID: [^\n]*\n", b"", entry.read_bytes(), count=1, flags=re.M)
                found.append((entry.name.rpartition(":2,")[2], data))
        return sorted(found)

    for folder, local, count in (
        ("INBOX", "INBOX", 3),
        ("Sent Items", "Sent Items", 1),
        ("Projects", "Projects", 0),
        ("Projects.2024", "Projects/2024", 2),
        ("&ANw-ber", "&ANw-ber", 1),  # mbsync keeps the modified UTF-7 name
    ):
        imported = listing(store if folder == "INBOX" else store / f".{folder}")
        assert len(imported) == count, folder
        assert listing(mail / local) == imported, folder


def test_rerun_refuses_while_serving_and_leaves_an_edited_manifest_alone(
    served: RunningAppliance, source: Source
) -> None:
    edited = served.manifest.read_text()
    refused = run(*import_command(source, served.directory))
    assert refused.returncode == 1
    assert "stop it before copying mail" in refused.stderr
    assert not (served.directory / "appliance.imported.toml").exists()  # it wrote nothing
    assert served.stop() == 0

    again = run(*import_command(source, served.directory))
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["manifest"] == str(served.directory / "appliance.imported.toml")
    assert report["mail"]["messages_copied"] == 0
    assert served.manifest.read_text() == edited  # the admin's DCs are still there
    assert "discover = true" in (served.directory / "appliance.imported.toml").read_text()


def test_dates_are_read_in_the_hmailserver_machines_time_zone(source: Source, tmp_path: Path) -> None:
    export = tmp_path / "export.json"
    source.installation.export_json(export)
    out = tmp_path / "out"
    result = run(
        "import", "hmailserver", "--json", export, "--data-dir", source.installation.data_dir,
        "--out", out, "--ad-domain", "OTHERAD=other.test", "--timezone", "Europe/Berlin",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    alice = out / "var" / "mail" / "example.test" / "alice"
    dates = sorted(record.internaldate for record in load_uidlist(alice, 1).records.values())
    assert dates[0] == 1709284500.0 - 3600  # 2024-03-01 09:15 in Berlin (CET) is 08:15 UTC
    assert sorted(os.stat(alice / "cur" / name).st_mtime for name in os.listdir(alice / "cur")) == dates
