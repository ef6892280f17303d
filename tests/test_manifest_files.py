"""`appliance validate` looks at the files a manifest names and at the form of its hashes
(issue 21, item 12): real files, real modes, the real command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import bcrypt

from tests.test_manifest import run_cli

SERVER = '[server]\nhostname = "mail.example.test"\n'
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def ldap_directory(ca_file: str, password_file: str | None = None) -> str:
    table = (
        '[directories.corp]\ntype = "ldap"\nservers = ["ldaps://ldap.example.test"]\n'
        'base_dn = "dc=example,dc=test"\n'
        f'ca_file = "{ca_file}"\n'
    )
    if password_file is not None:
        table += f'bind_dn = "cn=reader,dc=example,dc=test"\nbind_password_file = "{password_file}"\n'
    return table


def write(tmp_path: Path, body: str) -> Path:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    manifest = site / "appliance.toml"
    manifest.write_text(SERVER + body)
    return manifest


def test_a_ca_file_that_holds_no_certificate_is_a_warning_with_its_line(tmp_path: Path) -> None:
    manifest = write(tmp_path, ldap_directory("/etc/shadow"))
    result = run_cli("validate", str(manifest))
    assert result.returncode == 0, result.stderr
    assert f'{manifest}:7:11: directories.corp.ca_file: warning: "/etc/shadow" holds no PEM certificate' in (
        result.stderr
    )
    report = json.loads(run_cli("validate", "--format", "json", str(manifest)).stdout)
    assert report["valid"] is True
    assert [(p["path"], p["severity"]) for p in report["problems"]] == [
        ("directories.corp.ca_file", "warning")
    ]


def test_paths_that_leave_the_manifests_directory_are_warnings(tmp_path: Path) -> None:
    (tmp_path / "outside.pem").write_text(PEM)
    manifest = write(tmp_path, ldap_directory("../outside.pem"))
    (manifest.parent / "linked.pem").symlink_to(tmp_path / "outside.pem")
    (manifest.parent / "inside.pem").write_text(PEM)
    result = run_cli("validate", str(manifest))
    assert result.returncode == 0
    assert (
        'directories.corp.ca_file: warning: "../outside.pem" leaves the manifest\'s directory'
        in result.stderr
    )

    manifest.write_text(SERVER + ldap_directory("linked.pem"))
    result = run_cli("validate", str(manifest))
    assert result.returncode == 0
    assert 'warning: "linked.pem" leaves the manifest\'s directory' in result.stderr

    manifest.write_text(SERVER + ldap_directory("inside.pem"))
    result = run_cli("validate", str(manifest))
    assert result.returncode == 0 and "warning" not in result.stderr


def test_key_material_that_others_may_read_is_an_error(tmp_path: Path) -> None:
    manifest = write(tmp_path, ldap_directory("ca.pem", "reader.secret"))
    (manifest.parent / "ca.pem").write_text(PEM)
    secret = manifest.parent / "reader.secret"
    secret.write_text("service-account-password\n")
    dkim_key = manifest.parent / "dkim.pem"
    dkim_key.write_text("-----BEGIN PRIVATE KEY-----\n")
    manifest.write_text(
        manifest.read_text() + '[domains."example.test".dkim]\nselector = "s1"\nkey_file = "dkim.pem"\n'
    )
    os.chmod(secret, 0o644)
    os.chmod(dkim_key, 0o640)
    os.chown(dkim_key, -1, manifest.stat().st_gid + 1)  # a group that is not the daemon's
    result = run_cli("validate", str(manifest))
    assert result.returncode == 1
    assert 'directories.corp.bind_password_file: "reader.secret" holds key material and others' in (
        result.stderr
    )
    assert "(mode 0644)" in result.stderr
    assert 'domains."example.test".dkim.key_file: warning: "dkim.pem" holds key material that its group' in (
        result.stderr
    )
    report = json.loads(run_cli("validate", "--format", "json", str(manifest)).stdout)
    assert report["valid"] is False and {p["severity"] for p in report["problems"]} == {"error", "warning"}

    os.chmod(secret, 0o600)
    os.chown(dkim_key, -1, manifest.stat().st_gid)  # 0640 with the manifest's (the daemon's) group
    result = run_cli("validate", str(manifest))
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


def test_a_bcrypt_hash_the_library_cannot_read_is_refused(tmp_path: Path) -> None:
    good = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
    for bad in (
        good.replace("$04$", "$99$", 1),  # cost out of 04-31
        good.replace("$04$", "$03$", 1),
        good[:28] + "Z" + good[29:],  # the salt's last character carries bits it cannot hold
    ):
        manifest = write(
            tmp_path, f'[domains."example.test".accounts]\nann = {{ password_hash = "{bad}" }}\n'
        )
        result = run_cli("validate", str(manifest))
        assert result.returncode == 1, bad
        assert "password_hash" in result.stderr
    manifest = write(tmp_path, f'[domains."example.test".accounts]\nann = {{ password_hash = "{good}" }}\n')
    assert run_cli("validate", str(manifest)).returncode == 0


def ad_directory_with_keytab(keytab: str) -> str:
    return (
        '[directories."cloudtech.local"]\ntype = "active-directory"\n'
        'servers = ["ldaps://dc1.cloudtech.local"]\n'
        f'kerberos_keytab = "{keytab}"\n'
    )


def test_a_missing_unreadable_or_exposed_kerberos_keytab_is_an_error_at_its_line(tmp_path: Path) -> None:
    manifest = write(tmp_path, ad_directory_with_keytab("mail.keytab"))
    result = run_cli("validate", str(manifest))
    assert result.returncode == 1
    assert (
        f'{manifest}:6:19: directories."cloudtech.local".kerberos_keytab: "mail.keytab" cannot be read: '
        "No such file or directory (GSSAPI needs it)"
    ) in result.stderr
    keytab = manifest.parent / "mail.keytab"
    keytab.write_bytes(b"not a keytab")
    keytab.chmod(0o600)
    result = run_cli("validate", str(manifest))
    assert result.returncode == 1
    assert '"mail.keytab" is not a keytab' in result.stderr
    keytab.write_bytes(b"\x05\x02")  # the file format's magic (MIT), then no entry: a valid empty keytab
    keytab.chmod(0o644)
    result = run_cli("validate", str(manifest))
    assert result.returncode == 1
    assert '"mail.keytab" holds key material and others may read or write it (mode 0644)' in result.stderr
    keytab.chmod(0o600)
    assert run_cli("validate", str(manifest)).returncode == 0
