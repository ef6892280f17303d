"""Auto-ban bookkeeping: who gets refused, when, and for how long (settings from the manifest)."""

from __future__ import annotations

import time
from pathlib import Path

from appliance.manifest import parse_manifest
from appliance.security import AutoBan
from appliance.snapshot import SnapshotHolder, build_snapshot


def holder(security: str) -> SnapshotHolder:
    text = f'[server]\nhostname = "mail.example.test"\n{security}\n'
    return SnapshotHolder(build_snapshot(parse_manifest(text.encode(), "t.toml", file=Path("/srv/t.toml"))))


def test_an_address_is_banned_after_max_failures_within_the_window() -> None:
    ban = AutoBan(holder("[security.auto_ban]\nmax_failures = 3\nban_time = 60"))
    for _ in range(2):
        ban.failed("192.0.2.1", "john@example.test", linked=False)
    assert not ban.is_banned("192.0.2.1")
    ban.failed("192.0.2.1", "john@example.test", linked=False)
    assert ban.is_banned("192.0.2.1")
    assert not ban.is_banned("192.0.2.2")


def test_allowed_networks_are_never_banned() -> None:
    ban = AutoBan(holder('[security.auto_ban]\nmax_failures = 1\nallow_networks = ["192.0.2.0/24"]'))
    for _ in range(5):
        ban.failed("192.0.2.9", None, linked=False)
    assert not ban.is_banned("192.0.2.9")


def test_a_ban_ends_after_ban_time() -> None:
    ban = AutoBan(holder('[security.auto_ban]\nmax_failures = 1\nban_time = "200ms"'))
    ban.failed("192.0.2.1", None, linked=False)
    assert ban.is_banned("192.0.2.1")
    deadline = time.monotonic() + 5
    while ban.is_banned("192.0.2.1") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not ban.is_banned("192.0.2.1")


def test_a_spray_against_one_linked_account_blocks_it_here_before_the_directory_counts_more() -> None:
    ban = AutoBan(holder("[security.auto_ban]\nmax_failures = 100\nmax_failures_per_account = 3"))
    for index in range(3):  # three different addresses: no address reaches its own limit
        ban.failed(f"198.51.100.{index}", "john@example.test", linked=True)
    assert ban.account_blocked("john@example.test")
    assert not ban.account_blocked("anna@example.test")
    assert not any(ban.is_banned(f"198.51.100.{index}") for index in range(3))


def test_failures_on_unlinked_accounts_do_not_block_the_account() -> None:
    ban = AutoBan(holder("[security.auto_ban]\nmax_failures = 100\nmax_failures_per_account = 2"))
    for index in range(5):
        ban.failed(f"198.51.100.{index}", "anna@example.test", linked=False)
    assert not ban.account_blocked("anna@example.test")


def test_a_success_forgives_earlier_failures() -> None:
    ban = AutoBan(holder("[security.auto_ban]\nmax_failures = 2\nmax_failures_per_account = 2"))
    ban.failed("192.0.2.1", "john@example.test", linked=True)
    ban.succeeded("192.0.2.1", "john@example.test")
    ban.failed("192.0.2.1", "john@example.test", linked=True)
    assert not ban.is_banned("192.0.2.1")
    assert not ban.account_blocked("john@example.test")


def test_disabling_auto_ban_by_reload_lifts_bans() -> None:
    state = holder("[security.auto_ban]\nmax_failures = 1")
    ban = AutoBan(state)
    ban.failed("192.0.2.1", None, linked=False)
    assert ban.is_banned("192.0.2.1")
    state.swap(holder("[security.auto_ban]\nenabled = false").current)
    assert not ban.is_banned("192.0.2.1")
