"""Live reload: the running server follows the manifest within a second, and never applies a bad one."""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance, free_port
from tests.support.lines import client_context
from tests.support.wait import wait_for

PASSWORD = "Reload!Passw0rd"
HASH = hash_password(PASSWORD)


def domains(*accounts: str, domain_extra: str = "") -> str:
    lines = [f'[domains."example.test"]\n{domain_extra}', '[domains."example.test".accounts]']
    lines += [f'{name} = {{ password_hash = "{HASH}" }}' for name in accounts]
    return "\n".join(lines) + "\n"


def rcpt_code(server: RunningAppliance, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as client:
        client.ehlo("client.example")
        client.mail("sender@remote.example")
        code, _ = client.rcpt(address)
        client.rset()
        return code


def pop3_login(server: RunningAppliance, user: str, password: str = PASSWORD) -> bool:
    client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
    try:
        client.stls(client_context(server))
        client.user(user)
        client.pass_(password)
        return True
    except poplib.error_proto:
        return False
    finally:
        try:
            client.quit()
        except (poplib.error_proto, OSError):
            client.close()


def imap_login(server: RunningAppliance, user: str, password: str = PASSWORD) -> bool:
    """LOGIN over IMAPS, then SELECT INBOX: True when both succeed."""
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=10
    )
    try:
        client.login(user, password)
        return client.select("INBOX")[0] == "OK"
    except imaplib.IMAP4.error:
        return False
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            client.shutdown()


def eventually(check: Callable[[], bool], within: float) -> float:
    """Seconds until `check()` holds; fails if it does not within `within` seconds."""
    start = time.monotonic()
    wait_for(check, within)
    return time.monotonic() - start


@pytest.fixture
def server(appliance: ApplianceFactory) -> RunningAppliance:
    return appliance.start(domains("john"), listeners=("smtp", "pop3", "imaps"))


def test_an_added_account_receives_mail_and_logs_in_within_a_second(server: RunningAppliance) -> None:
    assert rcpt_code(server, "anna@example.test") == 550
    server.write_manifest(domains("john", "anna"))
    took = eventually(lambda: rcpt_code(server, "anna@example.test") == 250, within=1.0)
    assert pop3_login(server, "anna@example.test")
    assert took < 1.0


def test_a_removed_account_is_refused_at_rcpt_and_at_login(server: RunningAppliance) -> None:
    assert pop3_login(server, "john@example.test")
    server.write_manifest(domains("anna"))
    eventually(lambda: rcpt_code(server, "john@example.test") == 550, within=1.0)
    assert not pop3_login(server, "john@example.test")


def test_a_disabled_domain_receives_nothing_and_nobody_logs_in(server: RunningAppliance) -> None:
    server.write_manifest(domains("john", domain_extra="enabled = false"))
    eventually(lambda: rcpt_code(server, "john@example.test") == 550, within=1.0)
    assert not pop3_login(server, "john@example.test")


def test_a_broken_edit_keeps_the_old_config_serving_and_status_names_the_line(
    server: RunningAppliance,
) -> None:
    revision = server.status()["revision"]
    offset = server.log_size()
    broken = domains("john", "anna").replace("anna = { password_hash", "anna = { pasword_hash")
    server.write_manifest(broken)
    server.wait_for_log(r"reload rejected trigger=file-change problems=1", after=offset)
    status = server.status()
    assert status["revision"] == revision
    errors = status["last_reload_error"]
    assert isinstance(errors, list) and len(errors) == 1
    assert (
        'domains."example.test".accounts.anna.pasword_hash: unknown key (did you mean "password_hash"?)'
        in errors[0]
    )
    assert ":1" in errors[0].split(": ")[0]  # file:line:col
    assert rcpt_code(server, "john@example.test") == 250  # still serving
    assert rcpt_code(server, "anna@example.test") == 550  # the broken edit was not applied
    # the CLI shows it too
    import subprocess
    import sys

    shown = subprocess.run(
        [sys.executable, "-m", "appliance", "status", "--manifest", str(server.manifest)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shown.returncode == 0
    assert "last reload REJECTED" in shown.stdout and "pasword_hash" in shown.stdout
    server.write_manifest(domains("john", "anna"))
    eventually(lambda: rcpt_code(server, "anna@example.test") == 250, within=1.0)
    assert server.status()["last_reload_error"] == []


def test_an_in_place_write_is_picked_up(server: RunningAppliance) -> None:
    with open(server.manifest, "r+") as handle:  # same inode, truncated and rewritten
        handle.seek(0)
        handle.truncate()
        handle.write(server.manifest_text(domains("john", "lisa")))
    eventually(lambda: rcpt_code(server, "lisa@example.test") == 250, within=1.0)


def test_a_symlink_swap_is_picked_up(appliance: ApplianceFactory, tmp_path: Path) -> None:
    server = appliance.start(domains("john"), listeners=("smtp",), name="linked")
    releases = server.directory / "releases"
    releases.mkdir()
    first = releases / "v1.toml"
    first.write_text(server.manifest_text(domains("john")))
    # make appliance.toml a symlink to a release, the way a deploy tool switches versions
    link = server.manifest.with_name(".appliance.toml.link")
    link.symlink_to(first)
    os.replace(link, server.manifest)
    second = releases / "v2.toml"
    second.write_text(server.manifest_text(domains("john", "mia")))
    link.symlink_to(second)
    os.replace(link, server.manifest)
    eventually(lambda: rcpt_code(server, "mia@example.test") == 250, within=1.0)


def test_sighup_reloads(server: RunningAppliance) -> None:
    offset = server.log_size()
    server.reload()
    server.wait_for_log(r"SIGHUP|manifest", after=offset, timeout=5)
    # an unchanged file is not re-applied, but a changed one is, on SIGHUP alone
    text = server.manifest_text(domains("john", "zoe"))
    server.manifest.write_text(text)
    server.reload()
    eventually(lambda: rcpt_code(server, "zoe@example.test") == 250, within=1.0)


def test_a_moved_listener_and_a_new_certificate_apply_while_a_session_stays_open(
    server: RunningAppliance,
) -> None:
    old_port = server.ports["pop3"]
    session = poplib.POP3("127.0.0.1", old_port, timeout=10)
    session.stls(client_context(server))
    session.user("john@example.test")
    session.pass_(PASSWORD)
    old_certificate = server.cafile.read_bytes()
    # a new certificate and key, then a new port for pop3
    from appliance.tls import generate_self_signed

    generate_self_signed(server.cafile, server.data_dir / "tls" / "key.pem", "mail.example.test")
    new_ports = {**server.ports, "pop3": free_port()}
    offset = server.log_size()
    server.write_manifest(domains("john"), ports=new_ports)
    server.wait_for_log(rf"listening name=pop3 address=127\.0\.0\.1:{new_ports['pop3']}", after=offset)
    # the old session keeps working on the old port
    assert session.stat()[0] == 0
    session.quit()
    # the old port no longer accepts
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", old_port), timeout=2):
        pass
    # the new port serves with the new certificate
    assert server.cafile.read_bytes() != old_certificate
    assert pop3_login(server, "john@example.test")  # verifies against the new cafile


def test_a_hundred_reloads_under_load_lose_nothing_and_leak_nothing(server: RunningAppliance) -> None:
    before = server.status()["process"]
    stop = threading.Event()
    sent: list[str] = []
    failures: list[str] = []
    logins = {"ok": 0, "bad": 0, "imap_ok": 0, "imap_bad": 0}

    def send_mail() -> None:
        deadline = time.monotonic() + 60
        index = 0
        while not stop.is_set() and time.monotonic() < deadline and index < 2000:
            index += 1
            subject = f"load-{index}"
            try:
                with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as client:
                    client.sendmail(
                        "sender@remote.example", ["john@example.test"], f"Subject: {subject}\r\n\r\nbody\r\n"
                    )
                sent.append(subject)
            except (smtplib.SMTPException, OSError) as error:
                failures.append(f"smtp {subject}: {error!r}")

    def log_in() -> None:
        deadline = time.monotonic() + 60
        count = 0
        while not stop.is_set() and time.monotonic() < deadline and count < 500:
            count += 1
            if pop3_login(server, "anna@example.test"):
                logins["ok"] += 1
            else:
                logins["bad"] += 1

    def log_in_imap() -> None:
        deadline = time.monotonic() + 60
        count = 0
        while not stop.is_set() and time.monotonic() < deadline and count < 500:
            count += 1
            if imap_login(server, "anna@example.test"):
                logins["imap_ok"] += 1
            else:
                logins["imap_bad"] += 1

    server.write_manifest(domains("john", "anna"))
    eventually(lambda: rcpt_code(server, "anna@example.test") == 250, within=1.0)
    workers = [threading.Thread(target=target) for target in (send_mail, log_in, log_in_imap)]
    for worker in workers:
        worker.start()
    applied_before = server.status()["reloads"]["applied"]  # type: ignore[index]
    for index in range(100):
        extra = "\n".join(f'r{index}x{k} = {{ password_hash = "{HASH}" }}' for k in range(3))
        server.write_manifest(domains("john", "anna") + extra + "\n")
        time.sleep(0.12)  # the pace of the rewrites under load: what is tested, not a wait
    stop.set()
    for worker in workers:
        worker.join(90)
    eventually(lambda: server.status()["reloads"]["applied"] > applied_before + 20, within=5)  # type: ignore[index]
    assert failures == []
    assert logins["bad"] == 0 and logins["ok"] > 0, logins
    assert logins["imap_bad"] == 0 and logins["imap_ok"] > 0, logins
    # every message that got 250 is in the mailbox, exactly once
    maildir = server.data_dir / "mail" / "example.test" / "john"
    subjects: list[str] = []
    for folder in ("new", "cur"):
        for path in (maildir / folder).iterdir():
            for line in path.read_bytes().splitlines():
                if line.startswith(b"Subject: "):
                    subjects.append(line[9:].decode())
                    break
    assert sorted(subjects) == sorted(sent)
    # no leaked descriptors or tasks once the load is gone
    # The status file is rewritten every 2 s: the figures of one written after the load ended.
    ended = time.time()
    status_file = server.data_dir / "state" / "status.json"
    wait_for(lambda: status_file.stat().st_mtime > ended, 10, "a status file written after the load")

    def settled() -> bool:
        after = server.status()["process"]
        assert isinstance(after, dict) and isinstance(before, dict)
        return bool(after["fds"] <= before["fds"] + 5 and after["tasks"] <= before["tasks"] + 2)

    wait_for(settled, 10, f"fds and tasks back to at most 5 and 2 over {before}", every=0.5)
