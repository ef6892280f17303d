"""Waiting on a condition, bounded in time: the one way tests wait for something to happen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None], timeout: float = 15.0, what: str = "condition", every: float = 0.02
) -> T:
    """Call `condition` until it returns something true, and return that; AssertionError naming
    `what` when `timeout` seconds pass first. The condition is tried once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(min(every, left))


async def wait_for_async(
    condition: Callable[[], T | None], timeout: float = 15.0, what: str = "condition", every: float = 0.01
) -> T:
    """`wait_for` inside an event loop: the loop runs on while the condition is false."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(min(every, left))
