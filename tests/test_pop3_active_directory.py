"""POP3 logins of an account linked to Active Directory (a real Samba AD DC): STLS, then AUTH PLAIN.

Needs the `samba` fixture (tests/fixtures/samba.py, loaded by tests/conftest.py).
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

from tests.fixtures.appliance import ApplianceFactory
from tests.fixtures.samba import NETBIOS, SambaDomain
from tests.support.pop3 import JOHN, RawClient, message, put_message

AD_PASSWORD = "Pop3!AdPassw0rd"


def plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


def test_stls_then_auth_plain_logs_an_ad_linked_account_in_with_its_ad_password(
    appliance: ApplianceFactory, samba: SambaDomain, tmp_path: Path
) -> None:
    user = f"pop{int(time.time() * 1000) % 100_000_000}"
    samba.add_user(user, AD_PASSWORD)
    # the manifest's directory block names the CA relative to the manifest's own directory
    ca = tmp_path / "appliance" / "tls" / "cloudtech-ca.pem"
    ca.parent.mkdir(parents=True)
    ca.write_bytes(samba.ca_file.read_bytes())
    body = (
        '[directories."cloudtech.local"]\n'
        'type = "active-directory"\n'
        f'servers = ["{samba.dcs[0].ldaps_url}"]\n'
        f'netbios_name = "{NETBIOS}"\n'
        'ca_file = "tls/cloudtech-ca.pem"\n'
        '[domains."example.test".accounts]\n'
        f'john = {{ active_directory = {{ domain = "cloudtech.local", user = "{user}" }} }}\n'
    )
    server = appliance.start(body, listeners=("pop3",))
    put_message(server, message("for the AD user"))

    client = RawClient(server)
    client.starttls()
    assert client.command(f"AUTH PLAIN {plain(JOHN, 'Wrong!Passw0rd')}").startswith(b"-ERR [AUTH]")
    assert client.command(f"AUTH PLAIN {plain(JOHN, AD_PASSWORD)}").startswith(b"+OK")
    assert client.command("RETR 1").startswith(b"+OK")
    assert b"Subject: for the AD user" in client.multiline()
    assert client.command("QUIT").startswith(b"+OK")
    client.close()
    server.wait_for_log(
        r"auth result=accepted login=john@example\.test protocol=pop3 listener=pop3 mechanism=PLAIN tls=yes "
        r".* directory=cloudtech\.local "
    )
    assert AD_PASSWORD not in server.log()
