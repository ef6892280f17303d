"""The Sieve interpreter where the reference cannot speak (tests/test_sieve_reference.py covers the
rest): the null sender, `ereject` (not in Debian 12's Pigeonhole), and where errors are reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.manifest import ManifestError, load_manifest
from appliance.sieve import Envelope, SieveError, Store, compile_script, run
from appliance.sieve.vacation import refusal, reply
from appliance.snapshot import build_snapshot

MESSAGE = (
    b"From: Alice <alice@remote.test>\r\nTo: john@example.test\r\nSubject: Hello\r\n"
    b"Message-ID: <m1@remote.test>\r\n\r\nHi John.\r\n"
)


def test_null_sender_matches_the_empty_envelope_from() -> None:
    script = compile_script('require "envelope";\nif envelope :is "from" "" { discard; }\n')
    outcome = run([script], MESSAGE, Envelope("", "john@example.test"))
    assert outcome.stores == [] and outcome.discarded


def test_no_vacation_reply_to_the_null_sender() -> None:
    script = compile_script('require "vacation";\nvacation "Away.";\n')
    outcome = run([script], MESSAGE, Envelope("", "john@example.test"))
    assert outcome.vacation is not None
    assert refusal(outcome.vacation, MESSAGE, Envelope("", "john@example.test")) == "null sender"


def test_vacation_reply_is_auto_submitted_and_threads_to_the_original() -> None:
    script = compile_script(
        'require "vacation";\nvacation :subject "Away" :from "john@example.test" "Back Monday.";\n'
    )
    envelope = Envelope("alice@remote.test", "john@example.test")
    outcome = run([script], MESSAGE, envelope)
    assert outcome.vacation is not None and refusal(outcome.vacation, MESSAGE, envelope) is None
    message = reply(outcome.vacation, MESSAGE, envelope, "mail.example.test")
    assert message["Auto-Submitted"].startswith("auto-replied")
    assert message["To"] == "alice@remote.test" and message["In-Reply-To"] == "<m1@remote.test>"
    assert message["Subject"] == "Away" and "Back Monday." in message.get_content()


def test_ereject_is_a_reject_that_asks_for_an_smtp_refusal() -> None:
    script = compile_script('require "ereject";\nereject "No thanks.";\n')
    outcome = run([script], MESSAGE, Envelope("alice@remote.test", "john@example.test"))
    assert outcome.reject == "No thanks." and outcome.extended_reject and outcome.stores == []


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ('require "fileinto";\n\nfileinto :bogus "x";\n', 3, 10),
        ("if true {\n  keep;\n  keep\n}\n", 4, 1),
        ('require "fileinto";\nfileinto "a";\n/* never\nends', 3, 1),
        ('if header :is "subject" "x" {\n  fileinto "x";\n}\n', 2, 3),
        ('require ["vacation"];\nvacation :days "x" "r";\n', 2, 16),
        ('set "a" text:\nline\n.\n;\nfrob;\n', 1, 1),
    ],
)
def test_compile_errors_name_the_line_and_column(text: str, line: int, column: int) -> None:
    with pytest.raises(SieveError) as raised:
        compile_script(text)
    assert (raised.value.line, raised.value.column) == (line, column), raised.value.message


def test_multiline_strings_keep_line_numbers_right() -> None:
    text = 'require ["variables"];\nset "a" text:\nline one\n..dot\n.\n;\nfrob;\n'
    with pytest.raises(SieveError) as raised:
        compile_script(text)
    assert (raised.value.line, raised.value.column) == (7, 1)
    script = compile_script(
        'require ["variables", "fileinto"];\nset "a" text:\nx\n..y\n.\n;\nfileinto "${a}";\n'
    )
    outcome = run([script], MESSAGE, Envelope("alice@remote.test", "john@example.test"))
    assert [store.mailbox for store in outcome.stores] == ["x\r\n.y\r\n"]


def test_a_runtime_error_falls_back_to_the_implicit_keep() -> None:
    script = compile_script('require "include";\ninclude "missing";\ndiscard;\n')
    outcome = run([script], MESSAGE, Envelope("alice@remote.test", "john@example.test"))
    assert outcome.error is not None and [store.mailbox for store in outcome.stores] == ["INBOX"]


def test_manifest_scripts_include_personal_beside_them_and_global_from_sieve_global(tmp_path: Path) -> None:
    (tmp_path / "domain").mkdir()
    (tmp_path / "users").mkdir()
    (tmp_path / "sieve" / "global").mkdir(parents=True)
    (tmp_path / "domain" / "before.sieve").write_text('require "include";\ninclude :personal "tag";\n')
    (tmp_path / "domain" / "tag.sieve").write_text(
        'require ["fileinto", "copy"];\nfileinto :copy "Tagged";\n'
    )
    (tmp_path / "users" / "john.sieve").write_text('require "include";\ninclude :global "file";\n')
    (tmp_path / "sieve" / "global" / "file.sieve").write_text('require "fileinto";\nfileinto "Filed";\n')
    manifest = tmp_path / "appliance.toml"
    manifest.write_text(
        '[server]\nhostname = "mail.example.test"\n[domains."example.test"]\n'
        'sieve_before = "domain/before.sieve"\n[domains."example.test".accounts]\n'
        'john = { sieve = "users/john.sieve" }\n'
    )
    snapshot = build_snapshot(load_manifest(manifest))
    entry = snapshot.account_by_address("john@example.test")
    assert entry is not None
    scripts, resolver = snapshot.sieve_scripts(entry)
    outcome = run(scripts, MESSAGE, Envelope("alice@remote.test", entry.address), resolver=resolver)
    assert outcome.stores == [Store("Tagged", ()), Store("Filed", ())]


def test_a_script_that_does_not_compile_makes_the_manifest_unusable(tmp_path: Path) -> None:
    (tmp_path / "john.sieve").write_text('require "fileinto";\n\nfileinto;\n')
    manifest = tmp_path / "appliance.toml"
    manifest.write_text(
        '[server]\nhostname = "mail.example.test"\n[domains."example.test".accounts]\n'
        'john = { sieve = "john.sieve" }\n'
    )
    with pytest.raises(ManifestError) as raised:
        load_manifest(manifest)
    [line] = raised.value.lines()
    assert line.startswith(f'{manifest}:4:18: domains."example.test".accounts.john.sieve: john.sieve:3:1: ')
