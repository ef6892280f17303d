"""Users are told why when AD says their password was right but they cannot log in now (issue 22,
RFC 5530 EXPIRED, RFC 3206 AUTH / SYS/PERM, RFC 4954 535 5.7.8), over IMAP, POP3 and SMTP, against
the real Samba AD DC of tests/fixtures/samba.py; a wrong password for the same users gets the one
answer every refusal gets.
"""

from __future__ import annotations

import base64
import imaplib
import itertools
import poplib
import time

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.fixtures.samba import NETBIOS, SambaDomain, filetime
from tests.support.lines import client_context
from tests.support.smtp import connect

PASSWORD = "Right!Passw0rd1"
WRONG = "Wrong!Passw0rd1"
_numbers = itertools.count(1)

EXPIRED_TEXT = "Your password has expired; change it and log in again"
MUST_CHANGE_TEXT = "Your password must be changed; change it and log in again"
ACCOUNT_EXPIRED_TEXT = "Your account has expired; ask your administrator to renew it"


def _name(prefix: str) -> str:
    return f"{prefix}{next(_numbers)}r{int(time.time()) % 100000}"


def _start(appliance: ApplianceFactory, samba: SambaDomain, users: dict[str, str]) -> RunningAppliance:
    directory = appliance.base / "appliance"
    (directory / "tls").mkdir(parents=True, exist_ok=True)
    (directory / "tls" / "cloudtech-ca.pem").write_bytes(samba.ca_file.read_bytes())
    accounts = "\n".join(
        f'{local} = {{ active_directory = {{ domain = "cloudtech.local", user = "{user}" }} }}'
        for local, user in users.items()
    )
    # Only the first DC: samba-tool under faketime writes the expired password there alone.
    body = f"""
[security.auto_ban]
max_failures = 1000

[directories."cloudtech.local"]
type = "active-directory"
servers = ["{samba.dcs[0].ldaps_url}"]
netbios_name = "{NETBIOS}"
ca_file = "tls/cloudtech-ca.pem"

[domains."example.test".accounts]
{accounts}
"""
    return appliance.start(body, listeners=("imaps", "pop3s", "submissions"))


def _imap(server: RunningAppliance, login: str, password: str) -> str:
    """The text of the tagged answer to LOGIN (imaplib raises on NO)."""
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=30
    )
    try:
        client.login(login, password)
    except imaplib.IMAP4.error as error:
        return str(error)
    finally:
        client.shutdown()
    return "OK"


def _pop3(server: RunningAppliance, login: str, password: str) -> str:
    client = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=client_context(server), timeout=30)
    try:
        client.user(login)
        client.pass_(password)
    except poplib.error_proto as error:
        return error.args[0].decode()
    finally:
        client.close()
    return "+OK"


def _smtp(server: RunningAppliance, login: str, password: str) -> str:
    with connect(server, "submissions") as client:
        plain = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {plain}")
        return f"{code} {text.decode()}"


def test_expired_or_must_change_ad_password_and_expired_account_are_told_to_the_user_on_every_protocol(
    appliance: ApplianceFactory, samba: SambaDomain
) -> None:
    expired = _name("exp")
    # pwdLastSet cannot be backdated through LDAP: samba-tool sets it 50 days ago (max age 42 days).
    samba.samba_tool("user", "create", expired, PASSWORD, faketime="-50 days")
    must_change = _name("mcp")
    samba.add_user(must_change, PASSWORD)
    samba.modify(samba.user_dn(must_change), {"pwdLastSet": 0})
    account_expired = _name("acx")
    samba.add_user(account_expired, PASSWORD, accountExpires=filetime(-86400))
    server = _start(appliance, samba, {"exp": expired, "mcp": must_change, "acx": account_expired})

    cases = [
        ("exp@example.test", EXPIRED_TEXT, "[AUTH]", "532"),
        ("mcp@example.test", MUST_CHANGE_TEXT, "[AUTH]", "773"),
        ("acx@example.test", ACCOUNT_EXPIRED_TEXT, "[SYS/PERM]", "701"),
    ]
    for login, text, pop3_code, ad_code in cases:
        assert f"[EXPIRED] {text}" in _imap(server, login, PASSWORD)
        assert _pop3(server, login, PASSWORD) == f"-ERR {pop3_code} {text}"
        assert _smtp(server, login, PASSWORD) == f"535 5.7.8 {text}"
        server.wait_for_log(rf"auth result=rejected login={login} protocol=smtp .*ad_code={ad_code} ")

    # The same users with a wrong password: the answer of every refusal, nothing about expiry.
    for login, _text, _code, _ad_code in cases:
        answer = _imap(server, login, WRONG)
        assert "[AUTHENTICATIONFAILED] Authentication failed" in answer
        # AD answers 52e, not 532/773/701, when the password is wrong (checked, not assumed).
        server.wait_for_log(
            rf"auth result=rejected login={login} protocol=imap .*cause=bad_credentials ad_code=52e"
        )
        assert _pop3(server, login, WRONG) == "-ERR [AUTH] Authentication failed"
        assert _smtp(server, login, WRONG) == "535 5.7.8 Authentication credentials invalid"
    assert PASSWORD not in server.log()


def test_disabled_ad_user_with_the_right_password_gets_the_answer_of_an_unknown_address(
    appliance: ApplianceFactory, samba: SambaDomain
) -> None:
    disabled = _name("dis")
    samba.add_user(disabled, PASSWORD, userAccountControl=514)
    server = _start(appliance, samba, {"dis": disabled})
    for login in ("dis@example.test", "nobody@example.test"):
        assert "[AUTHENTICATIONFAILED] Authentication failed" in _imap(server, login, PASSWORD)
        assert _pop3(server, login, PASSWORD) == "-ERR [AUTH] Authentication failed"
        assert _smtp(server, login, PASSWORD) == "535 5.7.8 Authentication credentials invalid"
    server.wait_for_log(
        r"auth result=rejected login=dis@example\.test protocol=smtp .*cause=account_disabled"
    )
