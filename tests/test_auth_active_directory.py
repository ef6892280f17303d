"""Logins of AD-linked accounts, against a real Samba AD DC (two DCs for failover)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import threading
import time

import pytest

from appliance.auth import AuthResult, Outcome
from tests.fixtures.auth_service import AuthServices, Logins
from tests.fixtures.certificates import CertificateAuthority
from tests.fixtures.samba import NETBIOS, USERS_DN, SambaDomain, filetime
from tests.support.wait import wait_for

PASSWORD = "Good!Passw0rd1"
_numbers = itertools.count(1)


def new_user(samba: SambaDomain, prefix: str = "u", password: str = PASSWORD, **attributes: object) -> str:
    """A fresh AD user (on every running DC), so no test shares a badPwdCount with another."""
    name = f"{prefix}{next(_numbers)}t{int(time.time()) % 10000}"
    samba.add_user(name, password, **attributes)
    return name


def directory_toml(urls: list[str], **options: object) -> str:
    lines = [
        '[directories."cloudtech.local"]',
        'type = "active-directory"',
        "servers = [" + ", ".join(f'"{url}"' for url in urls) + "]",
        f'netbios_name = "{NETBIOS}"',
        'ca_file = "tls/cloudtech-ca.pem"',
        "connect_timeout = 2",
        "response_timeout = 3",
    ]
    for key, value in options.items():
        lines.append(f"{key} = " + (f'"{value}"' if isinstance(value, str) else str(value).lower()))
    return "\n".join(lines) + "\n"


def account_toml(user: str, *, local: str = "john", extra: str = "") -> str:
    return (
        '\n[domains."example.test".accounts]\n'
        f'{local} = {{ active_directory = {{ domain = "cloudtech.local", user = "{user}" }}{extra} }}\n'
    )


def start(
    auth_services: AuthServices,
    samba: SambaDomain,
    user: str,
    *,
    urls: list[str] | None = None,
    ca: bytes | None = None,
    extra: str = "",
    **options: object,
) -> Logins:
    body = directory_toml(urls or [samba.dcs[0].ldaps_url], **options) + account_toml(user, extra=extra)
    return auth_services.start(body, files={"tls/cloudtech-ca.pem": ca or samba.ca_file.read_bytes()})


def auth_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "appliance.auth"]


def bad_pwd_count(samba: SambaDomain, user: str) -> int:
    return int(samba.read(samba.user_dn(user), "badPwdCount") or 0)


@pytest.fixture(autouse=True)
def _auth_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="appliance.auth")


# -- the good password ------------------------------------------------------------------------


def test_ad_user_logs_in_by_upn_bind_with_any_of_the_accounts_addresses(
    samba: SambaDomain, auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(samba)
    login = start(auth_services, samba, user, extra=', addresses = ["j.doe"]')
    result = login("john@example.test", PASSWORD, protocol="pop3", client="192.0.2.7")
    assert result.outcome is Outcome.ACCEPTED, result
    assert result.account is not None and result.account.address == "john@example.test"
    assert login("J.Doe@Example.Test", PASSWORD).outcome is Outcome.ACCEPTED
    line = auth_lines(caplog)[0]
    assert re.fullmatch(
        rf"auth result=accepted login=john@example.test protocol=pop3 client=192.0.2.7 cause=ok "
        rf"directory=cloudtech.local server={re.escape(samba.dcs[0].ldaps_url)} ms=\d+\.\d",
        line,
    ), line
    assert PASSWORD not in caplog.text


def test_ad_user_logs_in_by_down_level_bind_over_starttls(
    samba: SambaDomain, auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(samba)
    login = start(auth_services, samba, user, urls=[samba.dcs[0].ldap_url], login_format="down-level")
    assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED
    assert login("john@example.test", "Wrong!Passw0rd1").cause == "bad_credentials"
    assert f"server={samba.dcs[0].ldap_url} " in auth_lines(caplog)[0]


# -- the refusals, with AD's data codes -------------------------------------------------------


def assert_rejected(result: AuthResult, cause: str, caplog: pytest.LogCaptureFixture, ad_code: str) -> None:
    assert result.outcome is Outcome.REJECTED, result
    assert result.cause == cause
    assert result.account is None
    assert f"cause={cause} ad_code={ad_code} directory=cloudtech.local" in auth_lines(caplog)[-1]


def test_wrong_ad_password_is_rejected_as_bad_credentials_52e(
    samba: SambaDomain, auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    login = start(auth_services, samba, new_user(samba))
    assert_rejected(login("john@example.test", "Wrong!Passw0rd1"), "bad_credentials", caplog, "52e")


def test_link_to_a_user_ad_does_not_know_is_rejected(
    samba: SambaDomain, auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    login = start(auth_services, samba, "nobody-here")
    assert_rejected(login("john@example.test", PASSWORD), "bad_credentials", caplog, "52e")


def test_disabled_ad_account_is_rejected_as_account_disabled_533(
    samba: SambaDomain, auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(samba, "dis", userAccountControl=514)
    login = start(auth_services, samba, user)
    assert_rejected(login("john@example.test", PASSWORD), "account_disabled", caplog, "533")


def test_ad_user_who_must_change_the_password_is_rejected_773(
    samba: SambaDomain, auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(samba, "mcp")
    samba.modify(samba.user_dn(user), {"pwdLastSet": 0})
    login = start(auth_services, samba, user)
    assert_rejected(login("john@example.test", PASSWORD), "must_change_password", caplog, "773")


def test_expired_ad_password_is_rejected_532(
    samba: SambaDomain, auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    user = f"exp{next(_numbers)}t{int(time.time()) % 10000}"
    # Set 50 days ago (the domain's maximum password age is 42 days): pwdLastSet cannot be
    # backdated through LDAP, so samba-tool writes it under faketime, on the first DC only.
    samba.samba_tool("user", "create", user, PASSWORD, faketime="-50 days")
    login = start(auth_services, samba, user)
    assert_rejected(login("john@example.test", PASSWORD), "password_expired", caplog, "532")


def test_expired_ad_account_is_rejected_701(
    samba: SambaDomain, auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(samba, "acx", accountExpires=filetime(-86400))
    login = start(auth_services, samba, user)
    assert_rejected(login("john@example.test", PASSWORD), "account_expired", caplog, "701")


def test_locked_out_ad_user_is_rejected_775_even_with_the_right_password(
    samba: SambaDomain, auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    victim = new_user(samba, "lck")  # the domain locks an account after 3 failures
    login = start(auth_services, samba, victim)
    for _ in range(3):  # straight to the DC: the appliance itself never sends that many
        assert not samba.dcs[0].bind(victim, "Wrong!Passw0rd1")
    assert_rejected(login("john@example.test", PASSWORD), "locked_out", caplog, "775")


def test_old_ad_password_is_refused_right_after_a_change_and_the_new_one_works(
    samba: SambaDomain, auth_services: AuthServices
) -> None:
    user = new_user(samba)
    login = start(auth_services, samba, user)
    assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED
    samba.set_password(user, "Changed!Passw0rd2")
    assert login("john@example.test", PASSWORD).cause == "bad_credentials"
    assert login("john@example.test", "Changed!Passw0rd2").outcome is Outcome.ACCEPTED


@pytest.mark.parametrize("password", ["", "Good!Pass\x00word1", "Good!Pass\tword1", "Good!Pass\x7fword1"])
def test_empty_or_control_character_password_never_reaches_the_dc(
    samba: SambaDomain, auth_services: AuthServices, password: str
) -> None:
    user = new_user(samba)
    login = start(auth_services, samba, user)
    assert bad_pwd_count(samba, user) == 0
    result = login("john@example.test", password)
    assert result.outcome is Outcome.REJECTED
    assert result.cause in ("empty_password", "control_character_in_password")
    assert bad_pwd_count(samba, user) == 0
    # The counter is what the DC keeps: a wrong password that does reach it moves it.
    assert login("john@example.test", "Wrong!Passw0rd1").cause == "bad_credentials"
    assert bad_pwd_count(samba, user) == 1


def test_password_is_sent_as_typed_not_saslprepped_so_the_dc_compares_what_was_set(
    samba: SambaDomain, auth_services: AuthServices
) -> None:
    # ldap3 applied SASLprep (RFC 4013) to simple-bind passwords; the bind we encode ourselves
    # (auth/simple_bind.py) sends the UTF-8 as typed, as Windows clients do. A no-break space, a
    # soft hyphen and the "fi" ligature are all changed by SASLprep; AD stored them as set.
    typed = "Gut\u00a0Pass\u00adwort\ufb011!"
    saslprepped = "Gut Passwortfi1!"  # what ldap3's sasl_prep(typed) gives
    user = new_user(samba, password=typed)
    login = start(auth_services, samba, user)
    assert login("john@example.test", typed).outcome is Outcome.ACCEPTED
    assert login("john@example.test", saslprepped).cause == "bad_credentials"


# -- require_group ----------------------------------------------------------------------------


def test_require_group_admits_nested_members_and_rejects_others(
    samba: SambaDomain, auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    member = new_user(samba, "mem")
    outsider = new_user(samba, "out")
    suffix = f"{next(_numbers)}t{int(time.time()) % 10000}"
    team = samba.add_group(f"team{suffix}", [samba.user_dn(member)])
    mailusers = samba.add_group(f"mailusers{suffix}", [team])  # member is in it through team only
    for group in (mailusers, f"mailusers{suffix}"):  # by DN, and by name
        body = directory_toml([samba.dcs[0].ldaps_url], require_group=group)
        body += (
            account_toml(member)
            + f'out = {{ active_directory = {{ domain = "cloudtech.local", user = "{outsider}" }} }}\n'
        )
        login = auth_services.start(body, files={"tls/cloudtech-ca.pem": samba.ca_file.read_bytes()})
        assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED
        result = login("out@example.test", PASSWORD)
        assert (result.outcome, result.cause) == (Outcome.REJECTED, "not_in_group")
        assert login("john@example.test", "Wrong!Passw0rd1").cause == "bad_credentials"
    assert mailusers.startswith("CN=") and USERS_DN in mailusers


# -- TLS and availability ---------------------------------------------------------------------


def test_dc_certificate_from_another_ca_makes_logins_unavailable(
    samba: SambaDomain, auth_services: AuthServices, tmp_path_factory: pytest.TempPathFactory
) -> None:
    user = new_user(samba)
    other = CertificateAuthority(tmp_path_factory.mktemp("other-ca"), name="some other CA")
    for url in (samba.dcs[0].ldaps_url, samba.dcs[0].ldap_url):  # LDAPS and StartTLS
        login = start(auth_services, samba, user, urls=[url], ca=other.certificate.read_bytes())
        result = login("john@example.test", PASSWORD)
        assert (result.outcome, result.cause) == (Outcome.UNAVAILABLE, "tls_error"), url
    assert bad_pwd_count(samba, user) == 0


def test_pooled_connection_dead_after_a_dc_restart_is_replaced_transparently(
    samba: SambaDomain, auth_services: AuthServices
) -> None:
    user = new_user(samba)
    login = start(auth_services, samba, user)  # one server: no failover to hide a failure
    assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED
    samba.dcs[0].stop()
    samba.dcs[0].start()
    assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED


def test_logins_fail_over_to_the_second_dc_and_are_unavailable_only_when_both_are_down(
    samba: SambaDomain, auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = samba.dcs
    user = new_user(samba)  # created on both DCs
    login = start(auth_services, samba, user, urls=[first.ldaps_url, second.ldaps_url], pool_size=2)
    try:
        assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED
        assert f"server={first.ldaps_url} " in auth_lines(caplog)[-1]

        # Logins keep going (8 at a time) while the first DC is stopped under them.
        outcomes: list[AuthResult] = []
        stop = threading.Event()

        def keep_logging_in() -> None:
            async def batch() -> list[AuthResult]:
                return await asyncio.gather(
                    *(
                        login.service.authenticate("john@example.test", PASSWORD, protocol="imap", client="t")
                        for _ in range(8)
                    )
                )

            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline and len(outcomes) < 5000:
                outcomes.extend(asyncio.run(batch()))

        worker = threading.Thread(target=keep_logging_in)
        worker.start()
        try:
            wait_for(lambda: len(outcomes) >= 16)  # some logins ran on the first DC before it goes
            first.stop()
            count = len(outcomes)
            wait_for(lambda: len(outcomes) >= count + 40)
        finally:
            stop.set()
            worker.join(30)
        assert outcomes and all(r.outcome is Outcome.ACCEPTED for r in outcomes), {r.cause for r in outcomes}
        assert f"server={second.ldaps_url} " in auth_lines(caplog)[-1]

        second.stop()
        result = login("john@example.test", PASSWORD)
        assert (result.outcome, result.cause) == (Outcome.UNAVAILABLE, "unreachable")

        first.start()
        assert login("john@example.test", PASSWORD).outcome is Outcome.ACCEPTED
        assert f"server={first.ldaps_url} " in auth_lines(caplog)[-1]
    finally:
        samba.ensure_running()
