"""ManageSieve login of an account linked to Active Directory (a real Samba AD DC): sieve-connect
logs in with the AD password over STARTTLS, uploads and activates a script, and the next delivery
follows it.

Needs the `samba` fixture (tests/fixtures/samba.py, loaded by tests/conftest.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.fixtures.appliance import ApplianceFactory
from tests.fixtures.samba import NETBIOS, SambaDomain
from tests.test_managesieve import GOOD, deliver_invoice, folder_messages, sieve_connect

AD_PASSWORD = "Sieve!AdPassw0rd"


def test_an_ad_linked_account_manages_its_scripts_with_its_ad_password(
    appliance: ApplianceFactory, samba: SambaDomain, tmp_path: Path
) -> None:
    user = f"sieve{int(time.time() * 1000) % 100_000_000}"
    samba.add_user(user, AD_PASSWORD)
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
    server = appliance.start(body, listeners=("smtp", "managesieve"))
    script = tmp_path / "rules.sieve"
    script.write_text(GOOD)
    wrong = sieve_connect(server, "john@example.test", "--list", password="Wrong!Passw0rd")
    assert wrong.returncode != 0
    uploaded = sieve_connect(
        server, "john@example.test", "--upload", "--localsieve", str(script), "--remotesieve", "rules",
        password=AD_PASSWORD,
    )  # fmt: skip
    assert uploaded.returncode == 0, uploaded.stderr
    activated = sieve_connect(
        server, "john@example.test", "--activate", "--remotesieve", "rules", password=AD_PASSWORD
    )
    assert activated.returncode == 0, activated.stderr
    deliver_invoice(server, "john@example.test")
    assert len(folder_messages(server, "john@example.test", "Invoices")) == 1
    server.wait_for_log(
        r"auth result=accepted login=john@example\.test protocol=managesieve listener=managesieve "
        r"mechanism=PLAIN tls=yes .* directory=cloudtech\.local "
    )
    assert AD_PASSWORD not in server.log()
