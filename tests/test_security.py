"""Auto-ban bookkeeping: who gets refused, when, and for how long (settings from the manifest)."""

from __future__ import annotations

from pathlib import Path

from appliance.manifest import parse_manifest
from appliance.security import AutoBan
from appliance.snapshot import SnapshotHolder, build_snapshot
from tests.support.wait import wait_for


def holder(security: str) -> SnapshotHolder:
    text = f'[server]\nhostname = "mail.example.test"\n{security}\n'
    return SnapshotHolder(build_snapshot(parse_manifest(text.encode(), "t.toml", file=Path("/srv/t.toml"))))


def test_an_address_is_banned_after_max_failures_within_the_window() -> None:
    ban = AutoBan(holder("[security.auto_ban]\nmax_failures = 3\nban_time = 60"))
    for _ in range(2):
        ban.failed("192.0.2.1", "john@example.test")
    assert not ban.is_banned("192.0.2.1")
    ban.failed("192.0.2.1", "john@example.test")
    assert ban.is_banned("192.0.2.1")
    assert not ban.is_banned("192.0.2.2")


def test_allowed_networks_are_never_banned() -> None:
    ban = AutoBan(holder('[security.auto_ban]\nmax_failures = 1\nallow_networks = ["192.0.2.0/24"]'))
    for _ in range(5):
        ban.failed("192.0.2.9", None)
    assert not ban.is_banned("192.0.2.9")


def test_a_ban_ends_after_ban_time() -> None:
    ban = AutoBan(holder('[security.auto_ban]\nmax_failures = 1\nban_time = "200ms"'))
    ban.failed("192.0.2.1", None)
    assert ban.is_banned("192.0.2.1")
    wait_for(lambda: not ban.is_banned("192.0.2.1"), 5, "the ban over")


def test_a_success_forgives_only_that_accounts_failures_from_that_address() -> None:
    """One valid login must not launder guesses against other accounts (45 guesses with a
    valid login every 9 got no ban before)."""
    ban = AutoBan(holder("[security.auto_ban]\nmax_failures = 3"))
    ban.failed("192.0.2.1", "john@example.test")
    ban.succeeded("192.0.2.1", "john@example.test")  # john mistyped, then got it right
    ban.failed("192.0.2.1", "anna@example.test")
    ban.failed("192.0.2.1", "anna@example.test")
    ban.succeeded("192.0.2.1", "mallory@example.test")  # someone else's valid login
    assert not ban.is_banned("192.0.2.1")
    ban.failed("192.0.2.1", "bob@example.test")
    assert ban.is_banned("192.0.2.1")


def test_disabling_auto_ban_by_reload_lifts_bans() -> None:
    state = holder("[security.auto_ban]\nmax_failures = 1")
    ban = AutoBan(state)
    ban.failed("192.0.2.1", None)
    assert ban.is_banned("192.0.2.1")
    state.swap(holder("[security.auto_ban]\nenabled = false").current)
    assert not ban.is_banned("192.0.2.1")
