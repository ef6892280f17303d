"""Password hashes carried over from Dovecot: the formats `doveadm pw` writes log in over IMAP.

Every hash here is made by Dovecot's own `doveadm pw` (dovecot-core, .ci/apt/imap.txt) in the
test, with a password that is not ASCII, written into a passwd-file, and carried into the
manifest by `appliance import dovecot`.
"""

from __future__ import annotations

import imaplib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.auth.passwords import VERIFIERS, check_password
from appliance.manifest.hashes import SCHEMES
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support.lines import client_context

PASSWORD = "Grüße-aus-Köln 42"
# Dovecot's scheme names → our scheme, and whether `validate` calls it weak.
DOVECOT_SCHEMES = {
    "SHA512-CRYPT": ("sha512-crypt", False),
    "SHA256-CRYPT": ("sha256-crypt", False),
    "BLF-CRYPT": ("bcrypt", False),
    "ARGON2ID": ("argon2id", False),
    "ARGON2I": ("argon2i", False),
    "CRYPT": ("bcrypt", False),  # Dovecot 2.3's CRYPT makes bcrypt
    "MD5-CRYPT": ("md5-crypt", True),
    "SSHA512": ("ssha512", True),
    "SSHA256": ("ssha256", True),
    "SSHA": ("ssha", True),
    "SMD5": ("smd5", True),
    "SHA512": ("sha512", True),
    "SHA256": ("sha256", True),
    "SHA1": ("sha1", True),
    "PLAIN-MD5": ("plain-md5", True),
    "LDAP-MD5": ("ldap-md5", True),
}
NO_AUTOBAN = "\n[security.auto_ban]\nenabled = false\n"


def doveadm_pw(scheme: str, password: str = PASSWORD) -> str:
    doveadm = shutil.which("doveadm")
    if doveadm is None:  # .ci/apt/imap.txt installs dovecot-core; missing means the machine is not set up
        pytest.fail("doveadm is not installed (see .ci/apt/imap.txt)")
    done = subprocess.run(
        [doveadm, "pw", "-s", scheme, "-p", password], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def bare_crypt(scheme: str) -> str:
    """A crypt hash as /etc/shadow and many passwd-files hold it: no {SCHEME} before it."""
    return doveadm_pw(scheme).partition("}")[2]


def account_name(scheme: str) -> str:
    return scheme.lower().replace("-", "")


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    made = {account_name(scheme): doveadm_pw(scheme) for scheme in DOVECOT_SCHEMES}
    made |= {f"bare{account_name(s)}": bare_crypt(s) for s in ("SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT")}
    made["bareargon2id"] = bare_crypt("ARGON2ID")
    made["barebcrypt"] = bare_crypt("BLF-CRYPT")
    return made


def imported_body(directory: Path, passwd_lines: list[str], *extra: str) -> tuple[str, str]:
    """Run `appliance import dovecot` on a passwd-file of these lines (and `extra` arguments):
    the manifest it wrote without its [server] table (the fixture writes its own), and its report."""
    (directory / "users").write_text("".join(line + "\n" for line in passwd_lines))
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "import", "dovecot", "--passwd-file", str(directory / "users")]
        + ["--out", str(directory / "imported"), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = (directory / "imported" / "appliance.toml").read_text()
    return text[text.index("\n[d") :], done.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hashes: dict[str, str]) -> Iterator[RunningAppliance]:
    base = tmp_path_factory.mktemp("dovecot-hashes")
    passwd = [f"{name}@example.test:{encoded}:8:8::/var/vmail/{name}::" for name, encoded in hashes.items()]
    body, report = imported_body(base, passwd)
    assert "not carried:" not in report and "0 entries not carried" in report
    factory = ApplianceFactory(base)
    try:
        yield factory.start(body + NO_AUTOBAN, listeners=("imaps",))
    finally:
        factory.close()


def imap_login(server: RunningAppliance, user: str, password: str) -> bool:
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=client_context(server), timeout=30
    )
    try:
        # AUTHENTICATE PLAIN carries the UTF-8 password as it is (imaplib's LOGIN is ASCII only).
        credentials = f"\0{user}@example.test\0{password}".encode()
        client.authenticate("PLAIN", lambda _challenge: credentials)
    except imaplib.IMAP4.error:
        return False
    finally:
        client.shutdown()
    return True


def test_every_hash_doveadm_makes_logs_in_over_imap_with_the_original_password_only(
    server: RunningAppliance, hashes: dict[str, str]
) -> None:
    refused = [user for user in hashes if not imap_login(server, user, PASSWORD)]
    assert refused == []
    wrong = [user for user in hashes if imap_login(server, user, PASSWORD + "!")]
    assert wrong == []


def test_each_dovecot_prefix_is_read_as_its_scheme(hashes: dict[str, str]) -> None:
    from appliance.auth.passwords import hash_scheme

    found = {scheme: hash_scheme(hashes[account_name(scheme)]) for scheme in DOVECOT_SCHEMES}
    assert found == {scheme: expected for scheme, (expected, _) in DOVECOT_SCHEMES.items()}


def test_every_scheme_of_the_manifest_has_a_verifier() -> None:
    assert sorted(scheme.name for scheme in SCHEMES) == sorted(VERIFIERS)


def test_des_crypt_verifies_after_the_crypt_prefix_only() -> None:
    # Dovecot 2.3's doveadm makes no DES; libxcrypt does, through the same crypt(3) Dovecot calls.
    import crypt_r

    des = crypt_r.crypt("secret12", "ab")
    assert des is not None and len(des) == 13
    assert check_password("{CRYPT}" + des, "secret12") == "match"
    assert check_password("{CRYPT}" + des, "secret13") == "bad_credentials"
    assert check_password(des, "secret12") == "stored_hash_invalid"  # bare, 13 characters say nothing


def test_plaintext_and_unknown_schemes_are_refused_by_the_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "appliance.toml"
    manifest.write_text(
        '[server]\nhostname = "mail.example.test"\n\n[domains."example.test".accounts]\n'
        f'plain = {{ password_hash = "{doveadm_pw("PLAIN")}" }}\n'
        f'cram = {{ password_hash = "{doveadm_pw("CRAM-MD5")}" }}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "validate", str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "accounts.plain.password_hash" in done.stderr and "accounts.cram.password_hash" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


def test_validate_accepts_the_carried_hashes_and_warns_on_the_weak_ones(
    tmp_path: Path, hashes: dict[str, str]
) -> None:
    manifest = tmp_path / "appliance.toml"
    manifest.write_text(
        '[server]\nhostname = "mail.example.test"\n\n[domains."example.test".accounts]\n'
        + "".join(f'{name} = {{ password_hash = "{encoded}" }}\n' for name, encoded in hashes.items())
    )
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "validate", str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    warned = {
        line.split("accounts.")[1].split(".")[0] for line in done.stderr.splitlines() if "warning:" in line
    }
    weak = {account_name(s) for s, (_, is_weak) in DOVECOT_SCHEMES.items() if is_weak} | {"baremd5crypt"}
    assert warned == weak
    placed = [
        line for line in done.stderr.splitlines() if line.startswith(f"{manifest}:") and "warning:" in line
    ]
    assert all(line.split(":")[1].isdigit() for line in placed) and len(placed) == len(weak)  # file:line:col
