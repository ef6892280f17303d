"""ManageSieve (RFC 5804) with real clients: `sieve-connect` (Debian) and sievelib's client talk to
the real `appliance serve` over STARTTLS, upload, check, activate; the next delivery over SMTP
follows the script; an account whose manifest pins a script refuses changes."""

from __future__ import annotations

import os
import smtplib
import subprocess
from pathlib import Path

import pytest
from sievelib.managesieve import Client

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import LineClient
from tests.support.queue import message

PASSWORD = "Manage!Sieve0"
HASH = hash_password(PASSWORD)
GOOD = 'require ["fileinto", "mailbox"];\nif header :contains "subject" "invoice" {\n    fileinto :create "Invoices";\n}\n'
BROKEN = (
    'require ["fileinto"];\nif header :contains "subject" "invoice" {\n    fileinto :create "Invoices";\n}\n'
)
# The domain's script runs before the user's: its stop ends the run.
BEFORE = (
    'require ["fileinto", "mailbox"];\n'
    'if header :contains "subject" "[spam]" {\n    fileinto :create "Junk";\n    stop;\n}\n'
)
BODY = """
[domains."example.test"]
sieve_before = "before.sieve"

[domains."example.test".accounts]
anna = {{ password_hash = "{hash}" }}
john = {{ password_hash = "{hash}", sieve = "john.sieve" }}
"""


@pytest.fixture
def server(appliance: ApplianceFactory) -> RunningAppliance:
    directory = appliance.base / "appliance"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "john.sieve").write_text("keep;\n")
    (directory / "before.sieve").write_text(BEFORE)
    return appliance.start(BODY.format(hash=HASH), listeners=("smtp", "managesieve"))


def folder_messages(server: RunningAppliance, account: str, folder: str) -> list[str]:
    local, _, domain = account.partition("@")
    new = server.data_dir / "mail" / domain / local / f".{folder}" / "new"
    return sorted(os.listdir(new)) if new.is_dir() else []


def deliver_invoice(server: RunningAppliance, to: str, subject: str = "invoice 42") -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=15) as client:
        client.sendmail("billing@remote.test", [to], message("billing@remote.test", to, subject))


def sieve_connect(
    server: RunningAppliance, user: str, *arguments: str, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    read, write = os.pipe()
    os.write(write, (password + "\n").encode())
    os.close(write)
    try:
        return subprocess.run(
            [
                "sieve-connect",
                "--server", "127.0.0.1",
                "--port", str(server.ports["managesieve"]),
                "--user", user,
                "--passwordfd", str(read),
                "--tlscafile", str(server.cafile),
                "--authmech", "PLAIN",
                *arguments,
            ],
            pass_fds=(read,),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
    finally:
        os.close(read)


def test_sieve_connect_checks_uploads_and_activates_and_delivery_follows(
    server: RunningAppliance, tmp_path: Path
) -> None:
    broken, good = tmp_path / "broken.sieve", tmp_path / "good.sieve"
    broken.write_text(BROKEN)
    good.write_text(GOOD)
    checked = sieve_connect(server, "anna@example.test", "--checkscript", "--localsieve", str(broken))
    assert checked.returncode != 0
    assert "line 3, column 14: tag :create needs require 'mailbox'" in checked.stdout + checked.stderr
    uploaded = sieve_connect(
        server, "anna@example.test", "--upload", "--localsieve", str(good), "--remotesieve", "rules"
    )
    assert uploaded.returncode == 0, uploaded.stderr
    activated = sieve_connect(server, "anna@example.test", "--activate", "--remotesieve", "rules")
    assert activated.returncode == 0, activated.stderr
    listed = sieve_connect(server, "anna@example.test", "--list")
    assert "rules" in listed.stdout and "active" in listed.stdout.lower()
    deliver_invoice(server, "anna@example.test")
    assert len(folder_messages(server, "anna@example.test", "Invoices")) == 1


def test_sievelib_client_manages_scripts_and_a_pinned_account_is_read_only(
    server: RunningAppliance, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sievelib verifies the server against the default store: the appliance's own certificate.
    monkeypatch.setenv("SSL_CERT_FILE", str(server.cafile))
    client = Client("127.0.0.1", server.ports["managesieve"])
    assert client.connect("anna@example.test", PASSWORD, starttls=True, authmech="PLAIN")
    try:
        assert not client.checkscript(BROKEN)
        assert b"line 3" in client.errmsg
        assert client.checkscript(GOOD)
        assert client.havespace("filters", len(GOOD))
        assert client.putscript("filters", GOOD)
        assert client.setactive("filters")
        active, others = client.listscripts()
        assert active == "filters" and others == []
        assert client.getscript("filters").replace("\r\n", "\n").rstrip() == GOOD.rstrip()
        assert not client.deletescript("filters")  # the active one (RFC 5804 §2.10)
        assert client.renamescript("filters", "mine")
        assert client.listscripts()[0] == "mine"
    finally:
        client.logout()
    deliver_invoice(server, "anna@example.test")
    assert len(folder_messages(server, "anna@example.test", "Invoices")) == 1
    deliver_invoice(server, "anna@example.test", "[spam] invoice 43")  # the domain's script first
    assert len(folder_messages(server, "anna@example.test", "Junk")) == 1
    assert len(folder_messages(server, "anna@example.test", "Invoices")) == 1

    pinned = Client("127.0.0.1", server.ports["managesieve"])
    assert pinned.connect("john@example.test", PASSWORD, starttls=True, authmech="PLAIN")
    try:
        assert not pinned.putscript("mine", GOOD)
        assert b"managed by the administrator" in pinned.errmsg
        assert not pinned.setactive("mine")
    finally:
        pinned.logout()
    deliver_invoice(server, "john@example.test")
    assert folder_messages(server, "john@example.test", "Invoices") == []


def test_logins_need_starttls_and_a_wrong_password_is_refused(
    server: RunningAppliance, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = Client("127.0.0.1", server.ports["managesieve"])
    with pytest.warns(UserWarning):  # sievelib warns of a login in clear; the server offers no SASL
        assert not plain.connect("anna@example.test", PASSWORD, authmech="PLAIN")
    monkeypatch.setenv("SSL_CERT_FILE", str(server.cafile))
    wrong = Client("127.0.0.1", server.ports["managesieve"])
    assert not wrong.connect("anna@example.test", "not-the-password", starttls=True, authmech="PLAIN")
    server.wait_for_log(r"auth result=rejected login=anna@example.test protocol=managesieve")


def until_ok(client: LineClient) -> list[bytes]:
    lines = []
    for _ in range(50):
        line = client.line()
        lines.append(line)
        if line.startswith((b"OK", b"NO", b"BYE")):
            return lines
    raise AssertionError(f"no OK/NO/BYE in {lines!r}")


def test_bad_input_gets_no_and_the_session_goes_on_an_oversized_literal_ends_it(
    server: RunningAppliance,
) -> None:
    client = LineClient(server.ports["managesieve"])
    greeting = until_ok(client)
    assert b'"STARTTLS"' in greeting and b'"SASL" ""' in greeting  # no SASL before TLS
    client.send("FROBNICATE\r\n")
    assert until_ok(client)[-1].startswith(b"NO")
    client.send('PUTSCRIPT "x" {5+}\r\nkeep;\r\n')
    assert until_ok(client)[-1].startswith(b"NO")  # not logged in
    client.send('AUTHENTICATE "PLAIN" "AGFubmEAeA=="\r\n')
    assert until_ok(client)[-1].startswith(b"NO (ENCRYPT-NEEDED)")
    client.send('NOOP "a \\"quoted\\" tag"\r\n')
    assert until_ok(client)[-1] == b'OK (TAG "a \\"quoted\\" tag") "Done"'
    client.send("CHECKSCRIPT {99999999+}\r\n")
    assert until_ok(client)[-1].startswith(b"BYE (QUOTA/MAXSIZE)")
    assert client.closed()
