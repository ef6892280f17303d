"""Nobody locks an AD user out through us, and nobody cuts one off mail through us: guesses over
IMAP, POP3 and SMTP at once, from many addresses, against a real Samba AD DC whose domain locks a
user after 3 wrong passwords (tests/fixtures/samba.py). What reached the DC is read back from the
user's badPwdCount; the right password must still work."""

from __future__ import annotations

import base64
import concurrent.futures
import smtplib
import time
from pathlib import Path

from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.fixtures.samba import NETBIOS, SambaDomain
from tests.support.imap import RawClient as IMAPClient
from tests.support.pop3 import RawClient as POP3Client

AD_PASSWORD = "Lock!AdPassw0rd1"
THRESHOLD = 3  # the suite's domain policy
WAVE = 20


def new_user(samba: SambaDomain, prefix: str) -> str:
    user = f"{prefix}{int(time.time() * 1000) % 100_000_000}"
    samba.add_user(user, AD_PASSWORD)
    return user


def start(appliance: ApplianceFactory, samba: SambaDomain, tmp_path: Path, accounts: str) -> RunningAppliance:
    ca = tmp_path / "appliance" / "tls" / "cloudtech-ca.pem"
    ca.parent.mkdir(parents=True, exist_ok=True)
    ca.write_bytes(samba.ca_file.read_bytes())
    body = (
        '[directories."cloudtech.local"]\n'
        'type = "active-directory"\n'
        f'servers = ["{samba.dcs[0].ldaps_url}"]\n'
        f'netbios_name = "{NETBIOS}"\n'
        'ca_file = "tls/cloudtech-ca.pem"\n'
        '[domains."example.test".accounts]\n' + accounts
    )
    return appliance.start(
        body, listeners=("imap", "pop3", "submission"), server_extra="allow_plaintext_auth = true"
    )


def bad_pwd_count(samba: SambaDomain, user: str) -> int:
    return int(samba.read(samba.user_dn(user), "badPwdCount") or 0)


def login(server: RunningAppliance, protocol: str, source: str, address: str, password: str) -> bool:
    """One login from `source` (a loopback address) with real clients; True when accepted."""
    if protocol == "imap":
        with IMAPClient(server, "imap", source=source, timeout=30) as imap:
            try:
                _, done = imap.command(f'LOGIN "{address}" "{password}"')
            except ConnectionError:
                return False  # closed: not let in
            return done.split(b" ", 2)[1] == b"OK"
    if protocol == "pop3":
        with POP3Client(server, "pop3", source=source, timeout=30) as pop3:
            plain = base64.b64encode(f"\0{address}\0{password}".encode()).decode()
            try:
                return pop3.command(f"AUTH PLAIN {plain}").startswith(b"+OK")
            except ConnectionError:
                return False  # closed: not let in
    with smtplib.SMTP(timeout=30, source_address=(source, 0)) as client:
        client.connect("127.0.0.1", server.ports["submission"])
        client.ehlo("client.example")
        try:
            client.login(address, password)
            return True
        except smtplib.SMTPAuthenticationError:
            return False


def wave(server: RunningAppliance, addresses: list[str]) -> list[bool]:
    """WAVE wrong guesses sent at once over IMAP, POP3 and SMTP, from WAVE addresses."""
    protocols = ("imap", "pop3", "smtp")
    with concurrent.futures.ThreadPoolExecutor(WAVE) as pool:
        futures = [
            pool.submit(
                login,
                server,
                protocols[n % 3],
                f"127.0.1.{n + 1}",
                addresses[n % len(addresses)],
                f"Guess!{n}Passw0rd",
            )
            for n in range(WAVE)
        ]
        return [future.result(timeout=120) for future in futures]


def test_twenty_parallel_guesses_over_three_protocols_never_lock_the_ad_user(
    appliance: ApplianceFactory, samba: SambaDomain, tmp_path: Path
) -> None:
    victim = new_user(samba, "wave")
    server = start(
        appliance,
        samba,
        tmp_path,
        f'john = {{ active_directory = {{ domain = "cloudtech.local", user = "{victim}" }} }}\n',
    )
    # The user's phone logged in earlier (and the server learnt the domain's lockout policy).
    assert login(server, "imap", "127.0.0.1", "john@example.test", AD_PASSWORD)
    assert not any(wave(server, ["john@example.test"]))
    reached = bad_pwd_count(samba, victim)
    print(f"wrong-password binds that reached the DC in a wave of {WAVE}: {reached}")
    assert reached < THRESHOLD
    # Not locked, and not cut off: the phone, and the same password from an address never seen.
    assert login(server, "imap", "127.0.0.1", "john@example.test", AD_PASSWORD)
    assert login(server, "pop3", "127.0.2.1", "john@example.test", AD_PASSWORD)
    assert login(server, "smtp", "127.0.2.2", "john@example.test", AD_PASSWORD)
    server.wait_for_log(r"directory lockout policy directory=cloudtech\.local threshold=3 .*budget=2")
    assert AD_PASSWORD not in server.log()


def test_two_accounts_linked_to_one_ad_user_share_one_budget(
    appliance: ApplianceFactory, samba: SambaDomain, tmp_path: Path
) -> None:
    victim = new_user(samba, "twin")
    link = f'{{ active_directory = {{ domain = "cloudtech.local", user = "{victim}" }} }}'
    server = start(appliance, samba, tmp_path, f"john = {link}\njohn-admin = {link}\n")
    assert login(server, "pop3", "127.0.0.1", "john@example.test", AD_PASSWORD)
    assert not any(wave(server, ["john@example.test", "john-admin@example.test"]))
    assert bad_pwd_count(samba, victim) < THRESHOLD
    assert login(server, "imap", "127.0.0.1", "john-admin@example.test", AD_PASSWORD)


def test_a_slow_spray_never_adds_up_to_the_threshold(
    appliance: ApplianceFactory, samba: SambaDomain, tmp_path: Path
) -> None:
    """Guesses one after another, from new addresses, over the DC's observation window: the
    guard's window is at least the DC's, so they never add up."""
    victim = new_user(samba, "spray")
    server = start(
        appliance,
        samba,
        tmp_path,
        f'john = {{ active_directory = {{ domain = "cloudtech.local", user = "{victim}" }} }}\n',
    )
    assert login(server, "smtp", "127.0.0.1", "john@example.test", AD_PASSWORD)
    for n in range(8):
        assert not login(
            server, ("imap", "pop3", "smtp")[n % 3], f"127.0.3.{n + 1}", "john@example.test", "x!Wrong1"
        )
    assert bad_pwd_count(samba, victim) < THRESHOLD
    assert login(server, "smtp", "127.0.0.1", "john@example.test", AD_PASSWORD)
