"""The directory guard's rule, on the event loop with binds that take real time: no more than the
budget of unproven binds ever reaches a directory for one user, however the guesses arrive, and the
user's own devices keep a way in. The same rule against a real Samba DC is in
tests/test_lockout_active_directory.py."""

from __future__ import annotations

import asyncio

import pytest

from appliance.auth import guard as guard_module
from appliance.auth.guard import DirectoryGuard, Policy
from appliance.auth.verdict import Verdict, accepted, rejected
from tests.support.wait import wait_for_async

DIRECTORY = "cloudtech.local"


def make_guard(limit: int = 3, window: float = 600.0) -> DirectoryGuard:
    return DirectoryGuard(lambda: (limit, window))


class Directory:
    """Counts the binds that reach it; each takes `delay` seconds."""

    def __init__(self, password: str = "right", delay: float = 0.05) -> None:
        self.password, self.delay = password, delay
        self.binds = self.wrong = 0

    async def bind(self, guard: DirectoryGuard, user: str, client: str, password: str) -> str:
        slot = await guard.admit(DIRECTORY, user, client, password)
        if slot is None:
            return "refused"
        self.binds += 1
        await asyncio.sleep(self.delay)
        verdict: Verdict = accepted() if password == self.password else rejected("bad_credentials")
        self.wrong += password != self.password
        slot.release(verdict)
        return verdict.outcome.value


@pytest.fixture(autouse=True)
def short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard_module, "MAX_WAIT", 1.0)


def test_twenty_parallel_guesses_send_at_most_the_budget_of_binds() -> None:
    async def run() -> list[str]:
        guard, directory = make_guard(limit=3), Directory()
        results = await asyncio.gather(
            *(directory.bind(guard, "gt", f"192.0.2.{n}", f"guess{n}") for n in range(20))
        )
        assert directory.binds == 2  # the last of the 3 is kept for the user's own devices
        return list(results)

    results = asyncio.run(run())
    assert results.count("refused") == 18


def test_accounts_linked_to_one_user_share_its_budget_whatever_the_case() -> None:
    async def run() -> None:
        guard, directory = make_guard(limit=3), Directory()
        for user in ("gt", "GT", "Gt", "gT"):
            await directory.bind(guard, user, "192.0.2.1", "wrong")
        assert directory.wrong == 2

    asyncio.run(run())


def test_a_known_device_gets_in_while_strangers_hold_the_budget() -> None:
    async def run() -> None:
        guard, directory = make_guard(limit=3), Directory()
        assert await directory.bind(guard, "gt", "198.51.100.7", "right") == "accepted"  # the phone
        for n in range(10):
            await directory.bind(guard, "gt", f"192.0.2.{n}", "wrong")
        assert directory.wrong == 2
        assert await directory.bind(guard, "gt", "192.0.2.99", "guess") == "refused"  # a stranger
        assert await directory.bind(guard, "gt", "198.51.100.7", "right") == "accepted"  # the phone
        # ... and the success reset the count, as it does in AD.
        assert await directory.bind(guard, "gt", "192.0.2.99", "guess") == "rejected"

    asyncio.run(run())


def test_the_password_that_last_worked_gets_the_kept_slot_from_a_new_address() -> None:
    async def run() -> None:
        guard, directory = make_guard(limit=3), Directory()
        assert await directory.bind(guard, "gt", "198.51.100.7", "right") == "accepted"
        for n in range(5):
            await directory.bind(guard, "gt", f"192.0.2.{n}", "wrong")
        assert await directory.bind(guard, "gt", "203.0.113.5", "right") == "accepted"

    asyncio.run(run())


def test_even_known_devices_never_exceed_the_budget() -> None:
    async def run() -> None:
        guard, directory = make_guard(limit=3), Directory()
        assert await directory.bind(guard, "gt", "198.51.100.7", "right") == "accepted"
        for _ in range(10):
            await directory.bind(guard, "gt", "198.51.100.7", "old password")
        assert directory.wrong == 3

    asyncio.run(run())


def test_waiting_logins_go_once_a_right_password_answers() -> None:
    async def run() -> list[str]:
        guard, directory = make_guard(limit=2), Directory(delay=0.2)
        first = asyncio.ensure_future(directory.bind(guard, "gt", "198.51.100.7", "right"))
        await wait_for_async(lambda: directory.binds == 1, 2, "the first login binding")
        rest = [directory.bind(guard, "gt", "198.51.100.7", "right") for _ in range(3)]
        return [await first, *await asyncio.gather(*rest)]

    assert asyncio.run(run()) == ["accepted"] * 4


def test_a_guess_waits_for_the_oldest_failure_to_age_out_when_that_is_soon() -> None:
    async def run() -> float:
        guard, directory = make_guard(limit=2, window=0.3), Directory()
        started = asyncio.get_running_loop().time()
        for _ in range(3):
            assert await directory.bind(guard, "gt", "192.0.2.1", "wrong") == "rejected"
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(run()) >= 0.6  # one unproven bind per window: slowed, not refused


def test_a_guess_is_refused_when_the_window_outlasts_the_wait() -> None:
    async def run() -> None:
        guard, directory = make_guard(limit=2, window=600.0), Directory()
        assert await directory.bind(guard, "gt", "192.0.2.1", "wrong") == "rejected"
        assert await directory.bind(guard, "gt", "192.0.2.1", "wrong") == "refused"
        assert directory.wrong == 1

    asyncio.run(run())


def test_the_directory_policy_keeps_the_budget_below_its_threshold() -> None:
    guard = make_guard(limit=10, window=60.0)
    assert guard.budget(DIRECTORY) == (10, 60.0)
    guard.set_policy(DIRECTORY, Policy(threshold=5, window=1800.0))
    assert guard.budget(DIRECTORY) == (4, 1800.0)
    guard.set_policy(DIRECTORY, Policy(threshold=0, window=1800.0))  # AD never locks
    assert guard.budget(DIRECTORY) == (10, 60.0)


def test_refusals_that_need_the_right_password_do_not_count() -> None:
    async def run() -> None:
        guard = make_guard(limit=2)
        for _ in range(5):
            slot = await guard.admit(DIRECTORY, "dis", "192.0.2.1", "right")
            assert slot is not None
            slot.release(rejected("account_disabled"))

    asyncio.run(run())


def test_a_local_account_past_its_budget_is_paced_not_refused() -> None:
    async def run() -> tuple[list[str], float]:
        guard, directory = make_guard(limit=2, window=600.0), Directory(delay=0.01)

        async def login(client: str, password: str) -> str:
            slot = await guard.admit("local", "john@example.test", client, password, local=True)
            if slot is None:
                return "refused"
            directory.binds += 1
            await asyncio.sleep(directory.delay)
            verdict = accepted() if password == "right" else rejected("bad_credentials")
            slot.release(verdict)
            return verdict.outcome.value

        for n in range(3):
            await login(f"192.0.2.{n}", "wrong")
        started = asyncio.get_running_loop().time()
        guesses = await asyncio.gather(*(login(f"192.0.2.{n}", "wrong") for n in range(3)))
        owner = await login("203.0.113.9", "right")  # from an address never seen
        return [*guesses, owner], asyncio.get_running_loop().time() - started

    results, took = asyncio.run(run())
    assert results[-1] == "accepted"
    assert took >= 0.5 + 1.0  # paused after each failure past the budget, doubling
