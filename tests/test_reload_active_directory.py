"""Live reload of the link between an account and its Active Directory user (a real Samba AD DC):
relinked to another AD user, unlinked to a local password, linked again — each takes effect at the
next login, over IMAP and SMTP AUTH alike, with no restart.
"""

from __future__ import annotations

import imaplib
import smtplib
import time
from pathlib import Path

from appliance.auth.passwords import hash_password
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.fixtures.samba import NETBIOS, SambaDomain
from tests.support.lines import client_context

FIRST_PASSWORD = "Relink!First0ne"
SECOND_PASSWORD = "Relink!Sec0ndOne"
LOCAL_PASSWORD = "Local!Passw0rd"
JOHN = "john@example.test"


def manifest(samba: SambaDomain, link: str) -> str:
    return (
        '[directories."cloudtech.local"]\n'
        'type = "active-directory"\n'
        f'servers = ["{samba.dcs[0].ldaps_url}"]\n'
        f'netbios_name = "{NETBIOS}"\n'
        'ca_file = "tls/cloudtech-ca.pem"\n'
        '[domains."example.test".accounts]\n'
        f"john = {link}\n"
    )


def ad_link(user: str) -> str:
    return f'{{ active_directory = {{ domain = "cloudtech.local", user = "{user}" }} }}'


def imap_accepts(server: RunningAppliance, password: str) -> bool:
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=15
    )
    try:
        client.login(JOHN, password)
        return True
    except imaplib.IMAP4.error:
        return False
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            client.shutdown()


def smtp_accepts(server: RunningAppliance, password: str) -> bool:
    """One AUTH PLAIN (smtplib's login() would try every mechanism: each failure counts in AD)."""
    with smtplib.SMTP_SSL(
        "127.0.0.1", server.ports["submissions"], context=client_context(server), timeout=15
    ) as client:
        client.ehlo()
        client.user, client.password = JOHN, password
        try:
            client.auth("PLAIN", client.auth_plain)
            return True
        except smtplib.SMTPAuthenticationError:
            return False


def relink(server: RunningAppliance, text: str) -> None:
    """Write the manifest and wait until it is applied: polling with the new password meanwhile
    would send wrong passwords to the old AD user, and the test domain locks users out after 3."""
    offset = server.log_size()
    server.write_manifest(text)
    server.wait_for_log(r"reloaded trigger=", timeout=2.0, after=offset)


def test_relinking_unlinking_and_linking_again_take_effect_at_the_next_login(
    appliance: ApplianceFactory, samba: SambaDomain, tmp_path: Path
) -> None:
    stamp = int(time.time() * 1000) % 100_000_000
    first, second = f"rl1{stamp}", f"rl2{stamp}"
    samba.add_user(first, FIRST_PASSWORD)
    samba.add_user(second, SECOND_PASSWORD)
    ca = tmp_path / "appliance" / "tls" / "cloudtech-ca.pem"
    ca.parent.mkdir(parents=True)
    ca.write_bytes(samba.ca_file.read_bytes())
    server = appliance.start(
        manifest(samba, ad_link(first)) + "\n[security.auto_ban]\nenabled = false\n",
        listeners=("submissions", "imaps"),
    )
    no_ban = "\n[security.auto_ban]\nenabled = false\n"
    assert imap_accepts(server, FIRST_PASSWORD) and smtp_accepts(server, FIRST_PASSWORD)

    # Relinked to another AD user: the new user's password opens the account, the old one not.
    relink(server, manifest(samba, ad_link(second)) + no_ban)
    assert imap_accepts(server, SECOND_PASSWORD) and smtp_accepts(server, SECOND_PASSWORD)
    assert not imap_accepts(server, FIRST_PASSWORD)

    # Unlinked: a local password hash; no AD password opens the account any more.
    local = f'{{ password_hash = "{hash_password(LOCAL_PASSWORD)}" }}'
    relink(server, manifest(samba, local) + no_ban)
    assert imap_accepts(server, LOCAL_PASSWORD) and smtp_accepts(server, LOCAL_PASSWORD)
    assert not imap_accepts(server, SECOND_PASSWORD) and not smtp_accepts(server, FIRST_PASSWORD)

    # Linked again to the first AD user.
    relink(server, manifest(samba, ad_link(first)) + no_ban)
    assert imap_accepts(server, FIRST_PASSWORD)
    assert not imap_accepts(server, LOCAL_PASSWORD)
    log = server.log()
    assert log.count("cause=locked_out") == 0
    for password in (FIRST_PASSWORD, SECOND_PASSWORD, LOCAL_PASSWORD):
        assert password not in log
