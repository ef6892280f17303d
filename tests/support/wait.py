"""Waiting on a condition, bounded in time: the one way tests wait for something to happen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def _pauses(timeout: float, what: str | Callable[[], str], every: float) -> Iterator[float]:
    """The pauses between tries until `timeout` seconds have passed (one last try at the deadline),
    then AssertionError naming `what` (text, or a function that describes the state at that time)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        yield min(every, left)
    yield 0.0
    raise AssertionError(f"{what if isinstance(what, str) else what()} not met within {timeout}s")


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 15.0,
    what: str | Callable[[], str] = "condition",
    every: float = 0.02,
) -> T:
    """Call `condition` until it returns something true, and return that."""
    for pause in _pauses(timeout, what, every):
        value = condition()
        if value:
            return value
        time.sleep(pause)
    raise AssertionError("unreachable")  # _pauses raises at the deadline


async def wait_for_async(
    condition: Callable[[], T | None],
    timeout: float = 15.0,
    what: str | Callable[[], str] = "condition",
    every: float = 0.01,
) -> T:
    """`wait_for` inside an event loop: the loop runs on while the condition is false."""
    for pause in _pauses(timeout, what, every):
        value = condition()
        if value:
            return value
        await asyncio.sleep(pause)
    raise AssertionError("unreachable")  # _pauses raises at the deadline
