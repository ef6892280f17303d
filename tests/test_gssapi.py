"""Kerberos single sign-on: SASL GSSAPI (RFC 4752) on IMAP, POP3 and SMTP submission, with tickets
from the suite's Samba AD DC (its KDC) and real clients: the gssapi package under imaplib,
smtplib and a raw POP3 client, and curl (built with GSS-API) with --login-options AUTH=GSSAPI.

Fixtures: `samba` (tests/fixtures/samba.py) and `kerberos` (tests/fixtures/kerberos.py: the
SPNs, the keytab, a krb5.conf of the tests' own, kinit).
"""

from __future__ import annotations

import base64
import imaplib
import itertools
import smtplib
import subprocess
import time
from pathlib import Path

import gssapi
import pytest

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.fixtures.kerberos import HOSTNAME, Kerberos, SASLClient
from tests.fixtures.samba import NETBIOS, REALM, SambaDomain
from tests.support.imap import RawClient as IMAPClient
from tests.support.lines import client_context
from tests.support.pop3 import RawClient as POP3Client
from tests.support.pop3 import message, put_message
from tests.support.smtp import RawClient as SMTPClient

AD_PASSWORD = "Krb!Passw0rd1"
JOHN = "john@example.test"
_numbers = itertools.count(1)


def new_user(samba: SambaDomain, prefix: str = "k") -> str:
    name = f"{prefix}{next(_numbers)}t{int(time.time() * 1000) % 10_000_000}"
    samba.add_user(name, AD_PASSWORD)
    return name


def manifest(
    samba: SambaDomain, kerberos: Kerberos | None, accounts: str, *, keytab: str | None = None
) -> str:
    lines = [
        '[directories."cloudtech.local"]',
        'type = "active-directory"',
        f'servers = ["{samba.dcs[0].ldaps_url}"]',
        f'netbios_name = "{NETBIOS}"',
        'ca_file = "tls/cloudtech-ca.pem"',
    ]
    if kerberos is not None:
        lines.append(f'kerberos_keytab = "{keytab or kerberos.keytab}"')
    return "\n".join(lines) + '\n\n[domains."example.test".accounts]\n' + accounts


def linked(local: str, user: str, extra: str = "") -> str:
    return f'{local} = {{ active_directory = {{ domain = "cloudtech.local", user = "{user}" }}{extra} }}\n'


def start(
    appliance: ApplianceFactory,
    samba: SambaDomain,
    kerberos: Kerberos | None,
    accounts: str,
    tmp_path: Path,
    listeners: tuple[str, ...] = ("imaps", "pop3", "submission"),
    server_extra: str = "",
    name: str = "appliance",
    env: dict[str, str] | None = None,
) -> RunningAppliance:
    ca = tmp_path / name / "tls" / "cloudtech-ca.pem"
    ca.parent.mkdir(parents=True, exist_ok=True)
    ca.write_bytes(samba.ca_file.read_bytes())
    return appliance.start(
        manifest(samba, kerberos, accounts),
        listeners=listeners,
        server_extra=server_extra,
        name=name,
        env=env,
    )


def imap_login(server: RunningAppliance, sasl: SASLClient) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=30
    )
    client.authenticate("GSSAPI", sasl.respond)
    return client


def smtp_gssapi(client: smtplib.SMTP, sasl: SASLClient) -> tuple[int, bytes]:
    """AUTH GSSAPI through smtplib's docmd (its auth() sends only ASCII text responses)."""
    code, text = client.docmd("AUTH", "GSSAPI " + base64.b64encode(sasl.first_token()).decode())
    for _ in range(10):
        if code != 334:
            return code, text
        response = sasl.respond(base64.b64decode(text))
        code, text = client.docmd(base64.b64encode(response).decode())
    raise AssertionError("AUTH GSSAPI did not end")


def pop3_gssapi(client: POP3Client, sasl: SASLClient) -> bytes:
    line = client.command("AUTH GSSAPI")
    for _ in range(10):
        if not line.startswith(b"+ ") and line != b"+":
            return line
        response = sasl.respond(base64.b64decode(line[2:]))
        line = client.command(base64.b64encode(response))
    raise AssertionError("AUTH GSSAPI did not end")


# -- the gssapi package under the standard library's clients --------------------------------------
def test_imaplib_logs_in_with_a_kerberos_ticket_to_the_account_linked_to_its_ad_user(
    appliance: ApplianceFactory, samba: SambaDomain, kerberos: Kerberos, tmp_path: Path
) -> None:
    user = new_user(samba)
    # MIT's replay cache would go to TMPDIR (or /var/tmp), which a sandboxed daemon may not
    # write: the server keeps its own under data_dir/state.
    server = start(appliance, samba, kerberos, linked("john", user), tmp_path, env={"TMPDIR": "/nonexistent"})
    put_message(server, message("single sign-on"))
    ccache = kerberos.kinit(user, AD_PASSWORD)

    client = imap_login(server, SASLClient(ccache, "imap"))
    assert client.select("INBOX")[1] == [b"1"]
    _, data = client.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
    assert b"Subject: single sign-on" in data[0][1]
    client.logout()
    assert (server.data_dir / "state" / "kerberos.rcache2").exists()
    server.wait_for_log(
        rf"auth result=accepted login={user}@{REALM} protocol=imap listener=imaps mechanism=GSSAPI tls=yes "
        r".* directory=cloudtech\.local server=kerberos .*account=john@example\.test"
    )


def test_pop3_auth_gssapi_after_stls_opens_the_linked_maildrop(
    appliance: ApplianceFactory, samba: SambaDomain, kerberos: Kerberos, tmp_path: Path
) -> None:
    user = new_user(samba)
    server = start(appliance, samba, kerberos, linked("john", user), tmp_path)
    put_message(server, message("pop by ticket"))
    ccache = kerberos.kinit(user, AD_PASSWORD)

    client = POP3Client(server)
    client.starttls()
    assert client.command("CAPA").startswith(b"+OK")
    assert b"SASL PLAIN GSSAPI" in client.multiline()
    assert pop3_gssapi(client, SASLClient(ccache, "pop")).startswith(b"+OK")
    assert client.command("RETR 1").startswith(b"+OK")
    assert b"Subject: pop by ticket" in b"\n".join(client.multiline())
    client.command("QUIT")
    client.close()
    server.wait_for_log(rf"auth result=accepted login={user}@{REALM} protocol=pop3 .*mechanism=GSSAPI")


def test_smtp_submission_auth_gssapi_lets_the_linked_account_send(
    appliance: ApplianceFactory, samba: SambaDomain, kerberos: Kerberos, tmp_path: Path
) -> None:
    user = new_user(samba)
    server = start(appliance, samba, kerberos, linked("john", user), tmp_path)
    ccache = kerberos.kinit(user, AD_PASSWORD)

    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as client:
        client.ehlo("client.example")
        assert "GSSAPI" not in client.esmtp_features.get("auth", "")  # before STARTTLS: not offered
        client.starttls(context=client_context(server))
        client.ehlo("client.example")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN", "GSSAPI"]
        assert smtp_gssapi(client, SASLClient(ccache, "smtp"))[0] == 235
        client.sendmail(JOHN, [JOHN], b"Subject: sent by ticket\r\n\r\nHi.\r\n")
    new = server.data_dir / "mail" / "example.test" / "john" / "new"
    assert any(b"sent by ticket" in p.read_bytes() for p in new.iterdir())


# -- curl, built with GSS-API ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scheme", "listener", "service"),
    [("imaps", "imaps", "imap"), ("pop3s", "pop3s", "pop"), ("smtps", "submissions", "smtp")],
)
def test_curl_logs_in_with_auth_gssapi(
    appliance: ApplianceFactory,
    samba: SambaDomain,
    kerberos: Kerberos,
    tmp_path: Path,
    scheme: str,
    listener: str,
    service: str,
) -> None:
    user = new_user(samba)
    server = start(appliance, samba, kerberos, linked("john", user), tmp_path, listeners=(listener,))
    put_message(server, message("read by curl"))
    ccache = kerberos.kinit(user, AD_PASSWORD)
    port = server.ports[listener]
    command = [
        "curl", "--silent", "--show-error", "--max-time", "30",
        "--resolve", f"{HOSTNAME}:{port}:127.0.0.1", "--cacert", str(server.cafile),
        "--login-options", "AUTH=GSSAPI", "--user", f"{user}@{REALM}:",
    ]  # fmt: skip
    if scheme == "smtps":
        mail = tmp_path / "mail.eml"
        mail.write_bytes(b"Subject: curl by ticket\r\n\r\nHi.\r\n")
        command += ["--mail-from", JOHN, "--mail-rcpt", JOHN, "--upload-file", str(mail)]
        command.append(f"smtps://{HOSTNAME}:{port}")
    else:
        command.append(f"{scheme}://{HOSTNAME}:{port}/" + ("INBOX/;UID=1" if scheme == "imaps" else "1"))
    done = subprocess.run(command, capture_output=True, timeout=60, env=kerberos.client_env(ccache))
    assert done.returncode == 0, (done.stderr, server.log()[-2000:])
    if scheme != "smtps":
        assert b"Subject: read by curl" in done.stdout
    server.wait_for_log(
        rf"auth result=accepted login={user}@{REALM} protocol=\w+ listener={listener} mechanism=GSSAPI"
    )


# -- refusals -------------------------------------------------------------------------------------
def test_a_principal_with_no_linked_account_is_refused(
    appliance: ApplianceFactory, samba: SambaDomain, kerberos: Kerberos, tmp_path: Path
) -> None:
    john, stranger = new_user(samba), new_user(samba, "s")
    server = start(appliance, samba, kerberos, linked("john", john), tmp_path)
    ccache = kerberos.kinit(stranger, AD_PASSWORD)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_login(server, SASLClient(ccache, "imap"))
    server.wait_for_log(
        rf"auth result=rejected login={stranger}@{REALM} protocol=imap .*mechanism=GSSAPI .*cause=principal_not_linked"
    )


def test_an_authzid_must_name_the_account_linked_to_the_principal(
    appliance: ApplianceFactory, samba: SambaDomain, kerberos: Kerberos, tmp_path: Path
) -> None:
    john, mary = new_user(samba), new_user(samba)
    accounts = linked("john", john, ', addresses = ["j.doe"]') + linked("mary", mary)
    server = start(appliance, samba, kerberos, accounts, tmp_path)
    ccache = kerberos.kinit(john, AD_PASSWORD)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_login(server, SASLClient(ccache, "imap", authzid="mary@example.test"))
    server.wait_for_log(r"auth result=rejected .*cause=authzid_not_principal .*authzid=mary@example\.test")
    # Its own account, by any of its addresses, is fine.
    imap_login(server, SASLClient(ccache, "imap", authzid="J.Doe@example.test")).logout()
    server.wait_for_log(r"auth result=accepted .*account=john@example\.test authzid=J\.Doe@example\.test")


def test_a_disabled_account_is_refused_even_with_a_good_ticket(
    appliance: ApplianceFactory, samba: SambaDomain, kerberos: Kerberos, tmp_path: Path
) -> None:
    user = new_user(samba)
    server = start(appliance, samba, kerberos, linked("john", user, ", enabled = false"), tmp_path)
    ccache = kerberos.kinit(user, AD_PASSWORD)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_login(server, SASLClient(ccache, "imap"))
    server.wait_for_log(r"auth result=rejected .*mechanism=GSSAPI .*cause=disabled_in_manifest")


def test_no_ticket_means_no_login(
    appliance: ApplianceFactory, samba: SambaDomain, kerberos: Kerberos, tmp_path: Path
) -> None:
    user = new_user(samba)
    server = start(appliance, samba, kerberos, linked("john", user), tmp_path, listeners=("imaps",))
    empty = kerberos.empty_cache()
    with pytest.raises(gssapi.exceptions.GSSError):
        imap_login(server, SASLClient(empty, "imap"))
    port = server.ports["imaps"]
    done = subprocess.run(
        [
            "curl", "--silent", "--max-time", "30", "--resolve", f"{HOSTNAME}:{port}:127.0.0.1",
            "--cacert", str(server.cafile), "--login-options", "AUTH=GSSAPI",
            "--user", f"{user}@{REALM}:", f"imaps://{HOSTNAME}:{port}/INBOX",
        ],
        capture_output=True, timeout=60, env=kerberos.client_env(empty),
    )  # fmt: skip
    assert done.returncode == 94, done  # CURLE_AUTH_ERROR: curl has no ticket to offer
    assert "auth result=accepted" not in server.log()


def test_a_token_that_is_not_a_valid_ticket_or_is_replayed_or_a_layer_not_offered_is_refused(
    appliance: ApplianceFactory, samba: SambaDomain, kerberos: Kerberos, tmp_path: Path
) -> None:
    user = new_user(samba)
    server = start(appliance, samba, kerberos, linked("john", user), tmp_path, listeners=("imaps",))
    ccache = kerberos.kinit(user, AD_PASSWORD)
    client = IMAPClient(server)
    junk = base64.b64encode(b"\x60\x82\x01\x00not a kerberos token").decode()
    assert b"NO [AUTHENTICATIONFAILED]" in client.command(f"AUTHENTICATE GSSAPI {junk}")[1]
    server.wait_for_log(
        r"auth result=rejected login=- protocol=imap .*mechanism=GSSAPI .*cause=kerberos_failed gss="
    )
    # A token captured from a good login, sent again: the replay cache refuses it.
    sasl = SASLClient(ccache, "imap")
    imap_login(server, sasl).logout()
    replay = base64.b64encode(sasl.tokens[0]).decode()
    assert b"NO [AUTHENTICATIONFAILED]" in client.command(f"AUTHENTICATE GSSAPI {replay}")[1]
    server.wait_for_log(r"cause=kerberos_failed gss=\S*.*replay", timeout=10)
    # RFC 4752 §3.1: a security layer the server did not offer (privacy) ends the exchange.
    with pytest.raises(imaplib.IMAP4.error, match="Malformed SASL GSSAPI response"):
        imap_login(server, SASLClient(ccache, "imap", layer=4))


# -- where it is offered --------------------------------------------------------------------------
def test_gssapi_is_offered_only_after_tls_when_plaintext_auth_is_off_and_only_with_a_keytab(
    appliance: ApplianceFactory, samba: SambaDomain, kerberos: Kerberos, tmp_path: Path
) -> None:
    user = new_user(samba)
    server = start(
        appliance, samba, kerberos, linked("john", user), tmp_path, listeners=("imap", "pop3", "submission")
    )
    imap = IMAPClient(server, "imap")
    capabilities = imap.ok("CAPABILITY")[0]
    assert b"AUTH=GSSAPI" not in capabilities and b"LOGINDISABLED" in capabilities
    assert b"PRIVACYREQUIRED" in imap.command("AUTHENTICATE GSSAPI")[1]
    imap.starttls()
    assert b"AUTH=PLAIN AUTH=GSSAPI" in imap.ok("CAPABILITY")[0]
    pop3 = POP3Client(server)
    assert pop3.command("CAPA").startswith(b"+OK")
    assert not any(line.startswith(b"SASL") for line in pop3.multiline())
    assert pop3.command("AUTH GSSAPI").startswith(b"-ERR")
    smtp = SMTPClient(server, "submission")
    assert "GSSAPI" not in smtp.command("EHLO client.example")
    assert smtp.command("AUTH GSSAPI").startswith("538 ")
    for client in (imap, pop3, smtp):
        client.close()

    without = start(appliance, samba, None, linked("john", user), tmp_path, listeners=("imaps",), name="b")
    plain = IMAPClient(without)
    capabilities = plain.ok("CAPABILITY")[0]
    assert b"AUTH=PLAIN" in capabilities and b"GSSAPI" not in capabilities
    assert b"NO [CANNOT]" in plain.command("AUTHENTICATE GSSAPI")[1]
    plain.close()
