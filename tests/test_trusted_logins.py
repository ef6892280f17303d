"""Trusted logins (`[trusted_logins]`, the Roundcube case): a webmail service account logs in to
IMAP and SMTP submission as a user, with SASL PLAIN and the user as authzid (RFC 4616), from the
networks and for the domains its rule lists, never for a disabled account. Real server, real
clients (imaplib, smtplib, raw POP3 and IMAP clients from another loopback address)."""

from __future__ import annotations

import base64
import imaplib
import smtplib
from pathlib import Path

import pytest

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.imap import RawClient as IMAPClient
from tests.support.lines import client_context
from tests.support.pop3 import RawClient as POP3Client
from tests.support.pop3 import message, put_message
from tests.test_manifest import run_cli

SERVICE = "webmail@example.test"
SERVICE_PASSWORD = "Webmail!Passw0rd"
USER_PASSWORD = "User!Passw0rd1"
HASHES = {SERVICE_PASSWORD: hash_password(SERVICE_PASSWORD), USER_PASSWORD: hash_password(USER_PASSWORD)}


def body(networks: str = '["127.0.0.1/32"]') -> str:
    user, service = HASHES[USER_PASSWORD], HASHES[SERVICE_PASSWORD]
    return f"""
[domains."example.test".accounts]
john = {{ password_hash = "{user}" }}
gone = {{ password_hash = "{user}", enabled = false }}
webmail = {{ password_hash = "{service}" }}

[domains."other.test".accounts]
olga = {{ password_hash = "{user}" }}

[trusted_logins.roundcube]
service = "{SERVICE}"
domains = ["example.test"]
networks = {networks}
"""


def plain(authzid: str, authcid: str = SERVICE, password: str = SERVICE_PASSWORD) -> bytes:
    return f"{authzid}\0{authcid}\0{password}".encode()


@pytest.fixture
def server(appliance: ApplianceFactory) -> RunningAppliance:
    return appliance.start(body(), listeners=("imaps", "pop3s", "submission"))


def test_the_webmail_service_logs_in_as_a_user_and_reads_that_users_mailbox(server: RunningAppliance) -> None:
    put_message(server, message("for john only"))
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=30
    )
    client.authenticate("PLAIN", lambda _: plain("john@example.test"))
    assert client.select("INBOX")[1] == [b"1"]
    _, data = client.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
    assert b"for john only" in data[0][1]
    client.logout()
    server.wait_for_log(
        r"auth result=accepted login=webmail@example\.test protocol=imap listener=imaps mechanism=PLAIN .*"
        r"authzid=john@example\.test account=john@example\.test trusted_login=roundcube"
    )
    assert SERVICE_PASSWORD not in server.log()


def test_the_webmail_service_submits_as_the_user_over_smtp(server: RunningAppliance) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as client:
        client.starttls(context=client_context(server))
        client.ehlo("webmail.example")
        code, _ = client.auth("PLAIN", lambda challenge=None: plain("john@example.test").decode())
        assert code == 235
        client.sendmail("john@example.test", ["john@example.test"], b"Subject: from webmail\r\n\r\nHi.\r\n")
    new = server.data_dir / "mail" / "example.test" / "john" / "new"
    assert any(b"from webmail" in p.read_bytes() for p in new.iterdir())
    server.wait_for_log(
        r"auth result=accepted login=webmail@example\.test protocol=smtp .*trusted_login=roundcube"
    )


def authenticate(client: IMAPClient, credentials: bytes) -> bytes:
    return client.command(f"AUTHENTICATE PLAIN {base64.b64encode(credentials).decode()}")[1]


def test_refused_from_another_network_for_another_domain_for_a_disabled_account_and_over_pop3(
    server: RunningAppliance,
) -> None:
    elsewhere = IMAPClient(server, source="127.0.0.2")
    assert b"NO [AUTHENTICATIONFAILED]" in authenticate(elsewhere, plain("john@example.test"))
    elsewhere.close()
    server.wait_for_log(r"auth result=rejected login=webmail@example\.test .*cause=trusted_login_network")

    client = IMAPClient(server)
    assert b"NO [AUTHENTICATIONFAILED]" in authenticate(client, plain("olga@other.test"))
    server.wait_for_log(r"cause=trusted_login_domain .*authzid=olga@other\.test trusted_login=roundcube")
    assert b"NO [AUTHENTICATIONFAILED]" in authenticate(client, plain("gone@example.test"))
    server.wait_for_log(r"cause=disabled_in_manifest .*authzid=gone@example\.test")
    client.close()

    pop3 = POP3Client(server, "pop3s")
    credentials = base64.b64encode(plain("john@example.test")).decode()
    assert pop3.command(f"AUTH PLAIN {credentials}").startswith(b"-ERR [AUTH]")
    pop3.close()
    server.wait_for_log(r"protocol=pop3 .*cause=trusted_login_protocol")


def test_a_wrong_service_password_or_a_user_who_is_no_service_gets_nothing(server: RunningAppliance) -> None:
    client = IMAPClient(server)
    assert b"NO [AUTHENTICATIONFAILED]" in authenticate(client, plain("john@example.test", password="wrong"))
    server.wait_for_log(r"cause=bad_credentials .*trusted_login=roundcube")
    # john is no service: he may not act as the webmail account, nor as anybody else.
    assert b"NO [AUTHENTICATIONFAILED]" in authenticate(
        client, plain("webmail@example.test", "john@example.test", USER_PASSWORD)
    )
    server.wait_for_log(r"login=john@example\.test .*cause=authzid_not_authcid")
    client.close()


def test_validate_reports_a_service_that_is_no_account_and_a_domain_that_is_not_local(tmp_path: Path) -> None:
    manifest = tmp_path / "appliance.toml"
    manifest.write_text(
        '[server]\nhostname = "mail.example.test"\n'
        + body()
        .replace(f'service = "{SERVICE}"', 'service = "nobody@example.test"')
        .replace('domains = ["example.test"]', 'domains = ["example.test", "elsewhere.test"]')
    )
    result = run_cli("validate", str(manifest))
    assert result.returncode == 1
    assert 'trusted_logins.roundcube.service: "nobody@example.test" is not an account of this manifest' in (
        result.stderr
    )
    assert 'trusted_logins.roundcube.domains[1]: "elsewhere.test" is not a local domain' in result.stderr


def test_plan_shows_a_trusted_login_added_and_changed(tmp_path: Path) -> None:
    old, new, newer = tmp_path / "old.toml", tmp_path / "new.toml", tmp_path / "newer.toml"
    server = '[server]\nhostname = "mail.example.test"\n'
    old.write_text(server + body().split("[trusted_logins.roundcube]")[0])
    new.write_text(server + body())
    newer.write_text(server + body('["127.0.0.1/32", "192.0.2.10/32"]'))
    assert run_cli("plan", str(old), str(new)).stdout.splitlines()[0] == "+ trusted_login roundcube  [live]"
    assert (
        run_cli("plan", str(new), str(newer))
        .stdout.splitlines()[0]
        .startswith("~ trusted_login roundcube: networks")
    )
