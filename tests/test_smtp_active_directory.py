"""SMTP AUTH of an AD-linked account, against the real Samba AD DC of tests/fixtures/samba.py."""

from __future__ import annotations

import itertools
import time

from tests.fixtures.appliance import ApplianceFactory
from tests.fixtures.samba import NETBIOS, SambaDomain
from tests.support.smtp import MARY, connect, message, stored

AD_PASSWORD = "Smtp!AdPassw0rd1"
_numbers = itertools.count(1)


def test_an_ad_linked_account_submits_mail_with_its_ad_password_and_is_refused_with_a_wrong_one(
    appliance: ApplianceFactory, samba: SambaDomain
) -> None:
    user = f"smtp{next(_numbers)}t{int(time.time()) % 100000}"
    samba.add_user(user, AD_PASSWORD)
    directory = appliance.base / "appliance"
    (directory / "tls").mkdir(parents=True, exist_ok=True)
    (directory / "tls" / "cloudtech-ca.pem").write_bytes(samba.ca_file.read_bytes())
    body = f"""
[directories."cloudtech.local"]
type = "active-directory"
servers = ["{samba.dcs[0].ldaps_url}"]
netbios_name = "{NETBIOS}"
ca_file = "tls/cloudtech-ca.pem"

[domains."example.test".accounts]
john = {{ active_directory = {{ domain = "cloudtech.local", user = "{user}" }} }}
mary = {{}}
"""
    server = appliance.start(body, listeners=("submission",))
    with connect(server, "submission") as client:
        code, text = client.docmd("AUTH", "PLAIN " + _plain("john@example.test", "Wrong!Passw0rd1"))
        assert (code, text[:5]) == (535, b"5.7.8")
    with connect(server, "submission") as client:
        client.login("john@example.test", AD_PASSWORD)
        client.sendmail("john@example.test", [MARY], message("via AD"))
    assert b" with ESMTPSA id " in stored(server, MARY)[0].read_bytes()
    assert AD_PASSWORD not in server.log()
    server.wait_for_log(r"auth result=accepted .*login=john@example.test .*directory=cloudtech.local")


def _plain(user: str, password: str) -> str:
    import base64

    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()
