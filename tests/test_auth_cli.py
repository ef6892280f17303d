"""`appliance check-auth ADDRESS`, run as the admin would: a subprocess, the password on stdin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance.auth.passwords import hash_password
from tests.fixtures.samba import NETBIOS, SambaDomain

PASSWORD = "Cli!Passw0rd1"


def appliance_command() -> list[str]:
    script = Path(sys.executable).parent / "appliance"
    return [str(script)] if script.exists() else [sys.executable, "-m", "appliance"]


def check_auth(manifest: Path, address: str, password_line: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*appliance_command(), "check-auth", "--manifest", str(manifest), address],
        input=password_line,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_manifest(directory: Path, body: str) -> Path:
    manifest = directory / "appliance.toml"
    manifest.write_text('[server]\nhostname = "mail.example.test"\n' + body)
    return manifest


def test_check_auth_exits_0_1_2_for_accepted_rejected_unavailable(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path,
        f"""
[directories."cloudtech.local"]
type = "active-directory"
servers = ["ldaps://127.0.0.1:9"]
connect_timeout = 1

[domains."example.test".accounts]
anna = {{ password_hash = "{hash_password(PASSWORD)}" }}
linked = {{ active_directory = {{ domain = "cloudtech.local", user = "gt" }} }}
""",
    )
    accepted = check_auth(manifest, "anna@example.test", PASSWORD + "\n")
    assert (accepted.returncode, accepted.stdout) == (0, "accepted: ok (account anna@example.test)\n")
    assert "auth result=accepted login=anna@example.test" in accepted.stderr
    assert PASSWORD not in accepted.stderr + accepted.stdout

    rejected = check_auth(manifest, "anna@example.test", PASSWORD + " \n")  # only the newline goes
    assert (rejected.returncode, rejected.stdout) == (1, "rejected: bad_credentials\n")

    unknown = check_auth(manifest, "who@example.test", PASSWORD + "\n")
    assert (unknown.returncode, unknown.stdout) == (1, "rejected: unknown_address\n")

    unavailable = check_auth(manifest, "linked@example.test", PASSWORD + "\n")
    assert (unavailable.returncode, unavailable.stdout) == (2, "unavailable: unreachable\n")


def test_check_auth_names_the_ad_code_of_a_refused_ad_login(samba: SambaDomain, tmp_path: Path) -> None:
    samba.add_user("cliuser", PASSWORD)
    (tmp_path / "ca.pem").write_bytes(samba.ca_file.read_bytes())
    manifest = write_manifest(
        tmp_path,
        f"""
[directories."cloudtech.local"]
type = "active-directory"
servers = ["{samba.dcs[0].ldaps_url}"]
netbios_name = "{NETBIOS}"
ca_file = "ca.pem"

[domains."example.test".accounts]
gt = {{ active_directory = {{ domain = "cloudtech.local", user = "cliuser" }} }}
""",
    )
    good = check_auth(manifest, "gt@example.test", PASSWORD + "\r\n")
    assert (good.returncode, good.stdout) == (0, "accepted: ok (account gt@example.test)\n"), good.stderr
    # The suite's domain locks a user after 3 wrong passwords; the manifest's default allows 3.
    assert (
        "warning: directory cloudtech.local locks a user after 3 wrong passwords within 60 s, but "
        "[security.auto_ban] allows max_failures_per_account = 3 within 600 s: the server keeps to 2 "
        "within 600 s" in good.stderr
    ), good.stderr
    wrong = check_auth(manifest, "gt@example.test", "Wrong!Passw0rd1\n")
    assert (wrong.returncode, wrong.stdout) == (1, "rejected: bad_credentials\n")
    assert "ad_code=52e" in wrong.stderr


def test_check_auth_with_a_broken_manifest_checks_nothing_and_exits_2(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "[domains.bad]\n")
    broken = check_auth(manifest, "anna@example.test", PASSWORD + "\n")
    assert broken.returncode == 2
    assert "nothing was checked" in broken.stderr
