"""Logins checked on this machine (PAM, local hashes), and the rules that hold for every login."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import crypt_r
import pytest

from appliance.auth import Outcome
from appliance.auth.passwords import hash_password
from tests.fixtures.auth_service import AuthServices, Logins
from tests.fixtures.certificates import CertificateAuthority
from tests.fixtures.pam import PamUsers

PASSWORD = "Local!Passw0rd1"
# A directory nobody answers for: any login that reached it would come back UNAVAILABLE.
DEAD_DIRECTORY = """
[directories."cloudtech.local"]
type = "active-directory"
servers = ["ldaps://127.0.0.1:9"]
connect_timeout = 1
"""


@pytest.fixture(autouse=True)
def _auth_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="appliance.auth")


def auth_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "appliance.auth"]


# -- PAM (the WORKGROUP case) -----------------------------------------------------------------


def pam_logins(auth_services: AuthServices, pam_users: PamUsers) -> Logins:
    accounts = "\n".join(
        f'{local} = {{ active_directory = {{ domain = "WORKGROUP", user = "{user}" }} }}'
        for local, user in (
            ("good", pam_users.good),
            ("locked", pam_users.locked),
            ("expired", pam_users.expired),
            ("ghost", "no-such-local-user"),
        )
    )
    return auth_services.start(
        f"""
[directories.WORKGROUP]
type = "local-system"
pam_service = "{pam_users.service}"

[domains."example.test".accounts]
{accounts}
"""
    )


def test_local_user_logs_in_through_pam_and_a_wrong_password_is_rejected(
    pam_users: PamUsers, auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    login = pam_logins(auth_services, pam_users)
    result = login("good@example.test", pam_users.password)
    assert result.outcome is Outcome.ACCEPTED, result
    assert login("good@example.test", "Wrong!Passw0rd1").cause == "bad_credentials"
    assert f"server=pam:{pam_users.service} " in auth_lines(caplog)[0]
    assert pam_users.password not in caplog.text


@pytest.mark.parametrize(
    ("local", "cause"),
    [("locked", "bad_credentials"), ("expired", "account_expired"), ("ghost", "unknown_user")],
)
def test_locked_expired_or_unknown_local_user_is_rejected_with_the_right_password(
    pam_users: PamUsers, auth_services: AuthServices, local: str, cause: str
) -> None:
    login = pam_logins(auth_services, pam_users)
    result = login(f"{local}@example.test", pam_users.password)
    assert (result.outcome, result.cause) == (Outcome.REJECTED, cause)


# -- local password hashes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(hash_password(PASSWORD), id="argon2id"),
        pytest.param(bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode(), id="bcrypt"),
        pytest.param(crypt_r.crypt(PASSWORD, crypt_r.mksalt(crypt_r.METHOD_SHA512)), id="sha512-crypt"),
    ],
)
def test_account_with_a_local_hash_logs_in_with_its_password_only(
    auth_services: AuthServices, encoded: str
) -> None:
    login = auth_services.start(
        f"""
[domains."example.test".accounts]
anna = {{ password_hash = "{encoded}" }}
"""
    )
    result = login("anna@example.test", PASSWORD)
    assert result.outcome is Outcome.ACCEPTED and result.account is not None
    assert result.account.address == "anna@example.test"
    assert login("anna@example.test", PASSWORD + "x").cause == "bad_credentials"


# -- rules that keep people out, before any directory is asked --------------------------------


def rules_logins(auth_services: AuthServices) -> Logins:
    return auth_services.start(
        DEAD_DIRECTORY
        + f"""
[domains."example.test".accounts]
linked = {{ active_directory = {{ domain = "cloudtech.local", user = "gt" }} }}
off = {{ active_directory = {{ domain = "cloudtech.local", user = "gt" }}, enabled = false }}
anna = {{ password_hash = "{hash_password(PASSWORD)}" }}
nothing = {{}}

[domains."closed.test"]
enabled = false

[domains."closed.test".accounts]
kim = {{ active_directory = {{ domain = "cloudtech.local", user = "kim" }} }}
"""
    )


@pytest.mark.parametrize(
    ("password", "cause"),
    [
        ("", "empty_password"),
        ("pass\x00word", "control_character_in_password"),
        ("pass\nword", "control_character_in_password"),
        ("pass\x9bword", "control_character_in_password"),
        ("x" * 1025, "password_too_long"),
    ],
)
def test_empty_or_malformed_password_is_rejected_without_asking_the_directory(
    auth_services: AuthServices, password: str, cause: str
) -> None:
    login = rules_logins(auth_services)
    result = login("linked@example.test", password)
    assert (result.outcome, result.cause) == (Outcome.REJECTED, cause)


@pytest.mark.parametrize("address", ["off@example.test", "kim@closed.test"])
def test_disabled_account_or_domain_is_rejected_without_asking_the_directory(
    auth_services: AuthServices, address: str
) -> None:
    result = rules_logins(auth_services)(address, PASSWORD)
    assert (result.outcome, result.cause) == (Outcome.REJECTED, "disabled_in_manifest")


def test_account_with_neither_link_nor_hash_is_rejected(auth_services: AuthServices) -> None:
    result = rules_logins(auth_services)("nothing@example.test", PASSWORD)
    assert (result.outcome, result.cause) == (Outcome.REJECTED, "no_credentials")


def test_unreachable_directory_makes_the_login_unavailable_not_rejected(
    auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    result = rules_logins(auth_services)("linked@example.test", PASSWORD)
    assert (result.outcome, result.cause) == (Outcome.UNAVAILABLE, "unreachable")
    assert result.account is None
    assert "server=ldaps://127.0.0.1:9 " in auth_lines(caplog)[-1]


def test_unknown_address_is_rejected_after_as_much_work_as_a_hash_check(
    auth_services: AuthServices,
) -> None:
    login = rules_logins(auth_services)
    login("anna@example.test", "warm-up")  # the dummy hash is made on first use

    def duration(address: str) -> float:
        started = time.perf_counter()
        result = login(address, "Wrong!Passw0rd1")
        assert result.outcome is Outcome.REJECTED
        return time.perf_counter() - started

    login("nobody@example.test", "warm-up")
    wrong = min(duration("anna@example.test") for _ in range(3))
    unknown = min(duration("nobody@example.test") for _ in range(3))
    assert login("nobody@example.test", PASSWORD).cause == "unknown_address"
    assert unknown > wrong / 2, (unknown, wrong)


def test_log_line_quotes_a_login_with_spaces_or_line_breaks_and_never_holds_the_password(
    auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    login = rules_logins(auth_services)
    login("evil@example.test result=accepted\nauth result=accepted", "Secret!Passw0rd9")
    (line,) = auth_lines(caplog)
    assert "\n" not in line
    assert 'login="evil@example.test result=accepted\\nauth result=accepted"' in line
    assert "Secret!Passw0rd9" not in caplog.text


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung DC)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_hung_directory_times_out_as_unavailable_while_the_event_loop_keeps_running(
    auth_services: AuthServices, silent_server: int
) -> None:
    login = auth_services.start(
        f"""
[directories."cloudtech.local"]
type = "active-directory"
servers = ["ldaps://127.0.0.1:{silent_server}"]
connect_timeout = 1
response_timeout = 1

[domains."example.test".accounts]
linked = {{ active_directory = {{ domain = "cloudtech.local", user = "gt" }} }}
"""
    )

    async def login_while_ticking() -> tuple[Outcome, str, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        result = await login.service.authenticate(
            "linked@example.test", PASSWORD, protocol="smtp", client="t"
        )
        ticker.cancel()
        return result.outcome, result.cause, ticks

    started = time.monotonic()
    outcome, cause, ticks = asyncio.run(login_while_ticking())
    assert (outcome, cause) == (Outcome.UNAVAILABLE, "timeout")
    assert time.monotonic() - started < 5
    assert ticks >= 30  # about 1 s of 10 ms ticks: the loop was never blocked by the login


@pytest.fixture
def mute_ldaps_server(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """(port, CA PEM) of an LDAPS server that completes TLS, reads requests and never answers."""
    ca = CertificateAuthority(tmp_path / "mute-ca", name="mute DC CA")
    issued = ca.issue("mute", ips=["127.0.0.1"], dns=[])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.certificate, issued.key)
    stop = threading.Event()
    held: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            client.settimeout(5)
            try:
                held.append(context.wrap_socket(client, server_side=True))
            except OSError:
                client.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), ca.certificate.read_bytes()
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for connection in held:
            connection.close()


def test_a_directory_that_never_answers_the_bind_times_out_as_unavailable(
    auth_services: AuthServices, mute_ldaps_server: tuple[int, bytes]
) -> None:
    port, ca = mute_ldaps_server
    login = auth_services.start(
        f"""
[directories."cloudtech.local"]
type = "active-directory"
servers = ["ldaps://127.0.0.1:{port}"]
ca_file = "ca.pem"
connect_timeout = 1
response_timeout = 1

[domains."example.test".accounts]
linked = {{ active_directory = {{ domain = "cloudtech.local", user = "gt" }} }}
""",
        files={"ca.pem": ca},
    )
    started = time.monotonic()
    result = login("linked@example.test", PASSWORD)
    assert (result.outcome, result.cause) == (Outcome.UNAVAILABLE, "timeout")
    assert time.monotonic() - started < 6  # one bind, one retry on a new connection: ~2 s


# -- verified local passwords are cached (never the password) ---------------------------------


def test_a_verified_local_password_is_not_verified_again_until_its_hash_changes(
    auth_services: AuthServices, caplog: pytest.LogCaptureFixture
) -> None:
    accounts = '[domains."example.test".accounts]\nanna = {{ password_hash = "{}" }}\n'
    login = auth_services.start(accounts.format(hash_password(PASSWORD)))
    assert login("anna@example.test", PASSWORD).outcome is Outcome.ACCEPTED
    assert "cache=hit" not in auth_lines(caplog)[-1]
    started = time.perf_counter()
    for _ in range(20):
        assert login("anna@example.test", PASSWORD).outcome is Outcome.ACCEPTED
        assert "cache=hit" in auth_lines(caplog)[-1]
    print(f"20 cached logins in {(time.perf_counter() - started) * 1000:.0f} ms")
    assert login("anna@example.test", "Wrong!Passw0rd").cause == "bad_credentials"  # never cached
    assert login("anna@example.test", PASSWORD).outcome is Outcome.ACCEPTED  # still known
    # An admin sets a new hash: the old password stops working at once, the new one works.
    login.reload(accounts.format(hash_password("New!Passw0rd2")))
    assert login("anna@example.test", PASSWORD).cause == "bad_credentials"
    assert login("anna@example.test", "New!Passw0rd2").outcome is Outcome.ACCEPTED
    assert "cache=hit" not in auth_lines(caplog)[-1]
    assert len(login.service.credentials) == 1
    assert all(PASSWORD not in line for line in auth_lines(caplog))
