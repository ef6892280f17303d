"""The day-to-day commands, through the installed `appliance` entry point: finding the manifest,
`--version`, `status` with a broken manifest, `lookup`, `reload`, `plan` against what serves."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import locate
from tests.fixtures.appliance import ApplianceFactory, RunningAppliance
from tests.support import smtp
from tests.support.wait import wait_for

APPLIANCE = Path(sys.executable).parent / "appliance"  # the console script pyproject.toml installs

BODY = f"""
[directories.WORKGROUP]
type = "local-system"

[domains."example.test"]
catch_all = "postmaster"

[domains."example.test".accounts]
john = {{ password_hash = "{smtp.HASH}", quota = "1 MB", addresses = ["j.doe"] }}
anna = {{ active_directory = {{ domain = "WORKGROUP", user = "anna" }} }}
bob = {{ enabled = false }}
postmaster = {{}}

[domains."example.test".aliases]
sales = ["john", "someone@remote.example"]
"""


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != locate.MANIFEST_ENV}
    return subprocess.run(
        [str(APPLIANCE), *args],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
        cwd=cwd,
        env={**environment, **(env or {})},
    )


def test_version_names_the_installed_package() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "appliance 0.1.0"


def test_the_manifest_is_the_option_then_the_environment_then_the_working_directory(tmp_path: Path) -> None:
    here, elsewhere, chosen = tmp_path / "here", tmp_path / "elsewhere", tmp_path / "chosen"
    for directory, hostname in ((here, "here"), (elsewhere, "elsewhere"), (chosen, "chosen")):
        directory.mkdir()
        (directory / "appliance.toml").write_text(f'[server]\nhostname = "{hostname}.example.test"\n')
    env = {locate.MANIFEST_ENV: str(elsewhere / "appliance.toml")}
    option = cli("validate", "--manifest", str(chosen / "appliance.toml"), cwd=here, env=env)
    assert option.stdout.startswith(f"{chosen / 'appliance.toml'}: valid"), option
    environment = cli("validate", cwd=here, env=env)
    assert environment.stdout.startswith(f"{elsewhere / 'appliance.toml'}: valid"), environment
    working = cli("validate", cwd=here)
    assert working.stdout.startswith("appliance.toml: valid"), working


def test_without_a_local_manifest_the_system_one_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /etc/appliance/appliance.toml belongs to the host: the test points the constant elsewhere.
    system = tmp_path / "etc" / "appliance.toml"
    system.parent.mkdir()
    system.write_text("")
    monkeypatch.setattr(locate, "SYSTEM_MANIFEST", system)
    monkeypatch.chdir(tmp_path)
    assert locate.find_manifest(None, environ={}) == system
    (tmp_path / "appliance.toml").write_text("")
    assert locate.find_manifest(None, environ={}) == Path("appliance.toml")
    assert locate.find_manifest(None, environ={locate.MANIFEST_ENV: "/x.toml"}) == Path("/x.toml")
    assert locate.find_manifest("given.toml", environ={locate.MANIFEST_ENV: "/x.toml"}) == Path("given.toml")


def test_status_finds_a_server_with_an_absolute_data_dir_while_the_manifest_is_broken(
    appliance: ApplianceFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "srv" / "var" / "lib" / "appliance"
    server = appliance.start(BODY, listeners=("pop3",), data_dir=str(data_dir))
    assert (data_dir / "state" / "status.json").is_file()
    good = server.manifest.read_text()
    # Valid TOML, invalid manifest: data_dir is read as TOML.
    offset = server.log_size()
    server.manifest.write_text(good + '\n[domains."example.test".accounts.eve]\nenabeld = true\n')
    server.wait_for_log(r"reload rejected .*problems=", after=offset)
    result = cli("status", "--manifest", str(server.manifest))
    assert result.returncode == 0, result
    assert "state:      serving" in result.stdout
    assert "the manifest on disk is broken" in result.stderr and str(data_dir) in result.stderr
    # Not even TOML: data_dir is found in the [server] table's text.
    offset = server.log_size()
    server.manifest.write_text(good + "\n[[[ not toml\n")
    server.wait_for_log(r"reload rejected .*problems=", after=offset)
    result = cli("status", "--manifest", str(server.manifest), "--format", "json")
    assert result.returncode == 0, result
    status = json.loads(result.stdout)
    assert status["running"] is True and status["manifest_problems"]
    assert status["listeners"]["pop3"]["address"] == f"127.0.0.1:{server.ports['pop3']}"


def lookup(server: RunningAppliance, address: str) -> tuple[int, dict[str, object]]:
    result = cli("lookup", address, "--manifest", str(server.manifest), "--format", "json")
    return result.returncode, json.loads(result.stdout)


def test_lookup_says_what_an_address_is_and_where_its_mail_lies(appliance: ApplianceFactory) -> None:
    server = appliance.start(BODY, listeners=("smtp",))
    with smtp.connect(server) as client:
        client.sendmail("a@remote.example", ["john+news@example.test"], smtp.message())
    stored = wait_for(lambda: smtp.stored(server), 10, "the message in john's Maildir")

    code, found = lookup(server, "John+News@example.test")
    assert code == 0
    assert found["kind"] == "account" and found["matched"] == "john@example.test"
    assert found["matched_by"] == "recipient-delimiter" and found["receives_mail"] is True
    account = found["account"]
    assert isinstance(account, dict)
    assert account["addresses"] == ["john@example.test", "j.doe@example.test"]
    assert account["login"] == "password" and account["directory_link"] is None
    assert account["mailbox"] == str(server.data_dir.resolve() / "mail" / "example.test" / "john")
    assert account["mailbox_bytes"] == sum(p.stat().st_size for p in stored)
    assert account["quota"] == 1_000_000 and account["enabled"] is True

    code, found = lookup(server, "anna@example.test")
    account = found["account"]
    assert isinstance(account, dict)
    assert account["directory_link"] == {"directory": "WORKGROUP", "type": "local-system", "user": "anna"}

    code, found = lookup(server, "bob@example.test")
    assert code == 0 and found["receives_mail"] is False
    assert isinstance(found["account"], dict) and found["account"]["enabled"] is False

    code, found = lookup(server, "sales@example.test")
    assert found["kind"] == "alias" and found["forwards"] == ["someone@remote.example"]
    assert [m["address"] for m in found["mailboxes"]] == ["john@example.test"]  # type: ignore[attr-defined]

    code, found = lookup(server, "nobody@example.test")
    assert found["matched_by"] == "catch-all" and found["matched"] == "postmaster@example.test"

    code, found = lookup(server, "john@elsewhere.example")
    assert code == 1 and found["found"] is False and found["domain_enabled"] is None
    text = cli("lookup", "sales@example.test", "--manifest", str(server.manifest))
    assert "alias sales@example.test" in text.stdout and "forwards to someone@remote.example" in text.stdout


def test_reload_waits_for_the_new_revision_and_fails_with_the_error_when_refused(
    appliance: ApplianceFactory, tmp_path: Path
) -> None:
    server = appliance.start(BODY, listeners=("pop3",))
    server.write_manifest(BODY.replace("bob = { enabled = false }", "bob = {}"))
    result = cli("reload", "--manifest", str(server.manifest))
    assert result.returncode == 0, result
    revision = hashlib.sha256(server.manifest.read_bytes()).hexdigest()
    assert result.stdout.startswith(f"serving revision {revision[:12]}")
    assert server.status()["revision"] == revision  # already, when reload returned

    # Nothing changed on disk: still a successful reload.
    assert cli("reload", "--manifest", str(server.manifest)).returncode == 0

    server.write_manifest(BODY + 'ghost = ["nobody-here"]\n')
    refused = cli("reload", "--manifest", str(server.manifest))
    assert refused.returncode == 1
    assert "reload REFUSED" in refused.stderr and "nobody-here" in refused.stderr
    assert server.status()["revision"] == revision

    empty = tmp_path / "none"
    empty.mkdir()
    (empty / "appliance.toml").write_text('[server]\nhostname = "mail.example.test"\n')
    assert cli("reload", cwd=empty).returncode == 3


def test_plan_compares_a_manifest_with_what_serves_and_marks_live_and_restart(
    appliance: ApplianceFactory, tmp_path: Path
) -> None:
    server = appliance.start(BODY, listeners=("pop3",))
    new = tmp_path / "new.toml"
    new.write_text(
        server.manifest_text(BODY + "\n").replace('data_dir = "var"', 'data_dir = "/srv/mail"')
        + '[domains."example.org".accounts]\nlisa = {}\n'
    )
    # The file on disk changes too, and is refused: plan still compares with what serves.
    offset = server.log_size()
    server.manifest.write_text(server.manifest.read_text() + "[[[ broken\n")
    server.wait_for_log(r"reload rejected .*problems=", after=offset)
    result = cli("plan", str(new), "--manifest", str(server.manifest))
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [
        '~ server: data_dir "var" → "/srv/mail"  [restart]',
        "+ domain example.org  [live]",
        "+ account lisa@example.org  [live]",
        "Plan: 2 to add, 1 to change, 0 to remove; 1 only at the next restart.",
    ]
    same = cli(
        "plan", str(server.directory / "var" / "state" / "serving.toml"), "--manifest", str(server.manifest)
    )
    assert same.stdout.strip() == "No changes."
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "appliance.toml").write_text('[server]\nhostname = "mail.example.test"\n')
    missing = cli("plan", str(new), cwd=nothing)
    assert missing.returncode == 3 and "is `appliance serve` running" in missing.stderr


def test_the_role_sizes_the_units_open_files_from_the_manifests_connection_limits() -> None:
    # The role's filter runs on the Ansible controller; it is plain Python, read here as such.
    path = Path(__file__).resolve().parent.parent / "roles/appliance/filter_plugins/appliance_manifest.py"
    spec = importlib.util.spec_from_file_location("appliance_manifest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    facts = module.appliance_manifest_facts
    every = '[server.listeners]\nsmtp = ":25"\nsubmission = ":587"\npop3s = ":995"\nimaps = ":993"\n'
    assert facts(every, "/etc/appliance")["open_files"] == 1024 + 2 * 1000 * 3 + 2 * 100  # > 1024
    limited = every + "[server.limits]\nmax_connections = 50\n[outbound]\nmax_deliveries = 10\n"
    assert facts(limited, "/etc/appliance")["open_files"] == 1024 + 2 * 50 * 3 + 2 * 10
    pop3_only = '[server.listeners]\npop3 = ":110"\n'
    assert facts(pop3_only, "/etc/appliance")["open_files"] == 1024 + 2 * 1000 + 2 * 100
