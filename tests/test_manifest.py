"""The manifest loader: every broken manifest gets exact, actionable errors; valid ones load whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.manifest import ManifestError, load_manifest, parse_manifest
from appliance.manifest.models import Manifest
from appliance.manifest.schema import schema_json
from appliance.manifest.units import parse_duration, parse_size
from appliance.snapshot import build_snapshot

ROOT = Path(__file__).resolve().parent.parent
BROKEN = sorted((ROOT / "tests" / "manifests" / "broken").glob("*.toml"))
VALID = sorted((ROOT / "tests" / "manifests" / "valid").glob("*.toml")) + [ROOT / "appliance.toml"]


def run_cli(*args: str, stdin: str = "", cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_the_corpus_of_broken_manifests_is_large_enough() -> None:
    assert len(BROKEN) >= 40


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_manifest_reports_exactly_its_problems(path: Path) -> None:
    expected = path.with_suffix(".expected").read_text().splitlines()
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, display_name=path.name)
    assert caught.value.lines() == expected


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_manifest_round_trips_through_its_models(path: Path) -> None:
    loaded = load_manifest(path)
    dumped = loaded.manifest.model_dump(mode="python")
    again = Manifest.model_validate(dumped)
    assert again == loaded.manifest
    # and through JSON (what `plan` and the schema speak)
    assert Manifest.model_validate_json(loaded.manifest.model_dump_json()) == loaded.manifest


def test_every_problem_is_reported_not_just_the_first() -> None:
    path = ROOT / "tests" / "manifests" / "broken" / "53-many-problems-at-once.toml"
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert len(caught.value.problems) == 4


def test_validate_exits_0_for_a_valid_manifest_and_1_for_a_broken_one() -> None:
    good = run_cli("validate", "appliance.toml")
    assert good.returncode == 0, good.stderr
    assert "valid" in good.stdout
    bad = run_cli("validate", "tests/manifests/broken/30-directory-reference-typo.toml")
    assert bad.returncode == 1
    assert (
        "tests/manifests/broken/30-directory-reference-typo.toml:9:40: "
        'domains."example.test".accounts.john.active_directory.domain: '
        'no directory "cloudtech.lcoal" is declared (did you mean "cloudtech.local"?)'
    ) in bad.stderr


def test_validate_exits_2_on_a_usage_error() -> None:
    assert run_cli("validate", "--format", "yaml").returncode == 2
    assert run_cli("no-such-command").returncode == 2


def test_validate_defaults_to_the_manifest_in_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "appliance.toml").write_text('[server]\nhostname = "mail.example.test"\n')
    assert run_cli("validate", cwd=tmp_path).returncode == 0
    assert run_cli("validate", "--manifest", str(tmp_path / "appliance.toml")).returncode == 0


def test_validate_json_output_lists_problems_for_ci() -> None:
    result = run_cli("validate", "--format", "json", "tests/manifests/broken/53-many-problems-at-once.toml")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["problems"][0] == {
        "file": "tests/manifests/broken/53-many-problems-at-once.toml",
        "line": 3,
        "column": 24,
        "path": "server.allow_plaintext_auth",
        "message": "must be true or false, not a string",
        "severity": "error",
    }
    ok = json.loads(run_cli("validate", "--format", "json", "appliance.toml").stdout)
    assert ok["valid"] is True and ok["accounts"] == 3


def test_a_missing_manifest_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "nope.toml"))
    assert result.returncode == 1
    assert "cannot read the manifest: No such file or directory" in result.stderr


def test_checked_in_schema_matches_the_models() -> None:
    checked_in = (ROOT / "schemas" / "appliance.schema.json").read_text()
    assert checked_in == schema_json(), "run: appliance schema > schemas/appliance.schema.json"


def test_schema_command_prints_the_schema() -> None:
    result = run_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert "server" in schema["required"]
    assert schema["properties"]["domains"]["type"] == "object"


def test_hash_password_reads_stdin_and_prints_an_argon2id_hash_that_verifies() -> None:
    from appliance.auth.passwords import verify_password

    result = run_cli("hash-password", stdin="correct horse\n")
    assert result.returncode == 0
    encoded = result.stdout.strip()
    assert encoded.startswith("$argon2id$")
    assert verify_password(encoded, "correct horse")
    assert not verify_password(encoded, "correct horse\n")
    assert "correct horse" not in result.stdout + result.stderr


def test_hash_password_refuses_an_empty_password() -> None:
    result = run_cli("hash-password", stdin="\n")
    assert result.returncode == 1
    assert result.stdout == ""


def test_the_commands_the_readme_says_take_manifest_do_and_the_others_refuse_it(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    takers = ("serve", "status", "reload", "lookup", "plan", "queue", "check-auth")
    listed = " ".join(readme.split())  # the sentence as one line, whatever its wrapping
    assert ", ".join(f"`{c}`" for c in takers) + " and `validate` take `--manifest PATH`" in listed
    manifest = tmp_path / "m.toml"
    manifest.write_text('[server]\nhostname = "mail.example.test"\n')
    assert run_cli("validate", "--manifest", str(manifest)).returncode == 0
    for command in takers:
        assert "--manifest" in run_cli(command, "--help").stdout, command
    refusers = (
        ["schema"],
        ["hash-password"],
        ["import", "dovecot", "--out", "x"],
        ["import", "hmailserver", "--json", "x", "--data-dir", "x", "--out", "x"],
    )
    for command in refusers:
        refused = run_cli(*command, "--manifest", str(manifest), stdin="pw\n")
        assert refused.returncode == 2 and "unrecognized arguments: --manifest" in refused.stderr, command


def test_the_schema_says_nested_groups_count_for_active_directory_only() -> None:
    definitions = json.loads(schema_json())["$defs"]
    assert (
        "nested membership counts"
        in definitions["ActiveDirectory"]["properties"]["require_group"]["description"]
    )
    assert "direct members" in definitions["LDAPDirectory"]["properties"]["require_group"]["description"]


def test_plan_shows_one_line_per_change(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    new = tmp_path / "new.toml"
    base = '[server]\nhostname = "mail.example.test"\n[directories.WORKGROUP]\ntype = "local-system"\n'
    old.write_text(
        base
        + '[domains."example.test".accounts]\njohn = {}\nanna = {}\n'
        + '[domains."example.test".aliases]\nsales = ["john"]\n'
    )
    new.write_text(
        base.replace("mail.example.test", "mx.example.test")
        + '[domains."example.test".accounts]\n'
        + 'john = { active_directory = { domain = "WORKGROUP", user = "john" } }\nlisa = {}\n'
        + '[domains."example.org"]\n'
    )
    result = run_cli("plan", str(old), str(new))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        '~ server: hostname "mail.example.test" → "mx.example.test"  [live]',
        "+ domain example.org  [live]",
        "- account anna@example.test  [live]",
        '~ account john@example.test: active_directory.domain (unset) → "WORKGROUP"; '
        'active_directory.user (unset) → "john"  [live]',
        "+ account lisa@example.test  [live]",
        "- alias sales@example.test  [live]",
        "Plan: 2 to add, 2 to change, 2 to remove; all apply live.",
    ]


def test_plan_of_identical_manifests_says_no_changes() -> None:
    result = run_cli("plan", "appliance.toml", "appliance.toml")
    assert result.stdout.strip() == "No changes."


def test_plan_refuses_a_broken_manifest() -> None:
    result = run_cli("plan", "appliance.toml", "tests/manifests/broken/43-alias-loop.toml")
    assert result.returncode == 1
    assert "loop: a@example.test" in result.stderr


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("25 MB", 25_000_000),
        ("1 GiB", 1 << 30),
        ("512KiB", 524_288),
        ("100", 100),
        (4096, 4096),
        ("1.5 kb", 1500),
    ],
)
def test_sizes_parse_with_units(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10 min", 600), ("1h30m", 5400), ("5 days", 432_000), (90, 90), ("250ms", 0.25)],
)
def test_durations_parse_with_units(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def _snapshot(text: str):  # type: ignore[no-untyped-def]
    return build_snapshot(parse_manifest(text.encode(), "appliance.toml", file=Path("/srv/appliance.toml")))


def test_recipients_resolve_through_aliases_catch_all_and_plus_addressing() -> None:
    snapshot = _snapshot(
        """
[server]
hostname = "mail.example.test"
[domains."example.test"]
catch_all = "postmaster"
[domains."example.test".accounts]
john = { addresses = ["j.doe"] }
anna = {}
postmaster = {}
gone = { enabled = false }
fwd = { forward_to = ["someone@remote.example", "anna"], keep_copy = false }
[domains."example.test".aliases]
sales = ["john", "Anna@Example.test", "partner@remote.example"]
team = ["sales", "john"]
[domains."off.example"]
enabled = false
[domains."off.example".accounts]
x = {}
"""
    )

    def boxes(address: str) -> list[str]:
        resolution = snapshot.resolve_recipient(address)
        assert resolution is not None, address
        return [m.address for m in resolution.mailboxes]

    assert boxes("John@Example.Test") == ["john@example.test"]
    assert boxes("j.doe@example.test") == ["john@example.test"]
    assert boxes("john+news@example.test") == ["john@example.test"]
    assert boxes("team@example.test") == ["john@example.test", "anna@example.test"]
    assert snapshot.resolve_recipient("sales@example.test").forwards == ("partner@remote.example",)  # type: ignore[union-attr]
    assert boxes("whoever@example.test") == ["postmaster@example.test"]  # catch-all
    assert snapshot.resolve_recipient("gone@example.test") is None  # disabled: refused, not caught
    assert snapshot.resolve_recipient("x@off.example") is None  # disabled domain
    assert snapshot.resolve_recipient("john@remote.example") is None
    forwarded = snapshot.resolve_recipient("fwd@example.test")
    assert forwarded is not None
    assert [m.address for m in forwarded.mailboxes] == ["anna@example.test"]
    assert forwarded.forwards == ("someone@remote.example",)


def test_send_as_allows_own_addresses_and_aliases_only() -> None:
    snapshot = _snapshot(
        """
[server]
hostname = "mail.example.test"
trusted_networks = ["192.0.2.0/24"]
[domains."example.test".accounts]
john = { addresses = ["j.doe"] }
anna = {}
desk = { send_as_any = true }
[domains."example.test".aliases]
sales = ["john"]
"""
    )
    john = snapshot.account_by_address("JOHN@example.test")
    desk = snapshot.account_by_address("desk@example.test")
    assert john is not None and desk is not None
    assert snapshot.may_send_as(john, "j.doe@example.test")
    assert snapshot.may_send_as(john, "sales@example.test")
    assert not snapshot.may_send_as(john, "anna@example.test")
    assert not snapshot.may_send_as(john, "john@remote.example")
    assert snapshot.may_send_as(desk, "anna@example.test")
    assert not snapshot.may_send_as(desk, "ceo@remote.example")
    assert snapshot.is_trusted("192.0.2.7") and snapshot.is_trusted("::ffff:192.0.2.7")
    assert not snapshot.is_trusted("198.51.100.1") and not snapshot.is_trusted("garbage")


# TOML 1.1 additions that TOML 1.0 (the standard library, the Ansible role's reading) refuses.
TOML_1_1_ONLY = {
    "newline in an inline table": 'account = { password_hash = "x",\n  enabled = true }',
    "trailing comma in an inline table": "account = { enabled = true, }",
    "escape \\e": 'account = { display_name = "\\e[31m" }',
    "escape \\xHH": 'account = { display_name = "\\x41" }',
    "time without seconds": "account = { display_name = 07:32 }",
}


@pytest.mark.parametrize("line", TOML_1_1_ONLY.values(), ids=TOML_1_1_ONLY.keys())
def test_manifest_is_read_as_toml_1_0_as_the_role_reads_it(tmp_path: Path, line: str) -> None:
    import tomllib

    text = f'[server]\nhostname = "mail.example.test"\n\n[domains."example.test".accounts]\n{line}\n'
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(text)  # what the role's filter on the controller reads
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.problems[0].message.startswith("TOML syntax error")
    assert run_cli("validate", str(path)).returncode == 1
