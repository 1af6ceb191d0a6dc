"""Bounded waiting on a condition, for checks and drivers: every wait ends, met or not."""

from __future__ import annotations

import asyncio
import time


async def wait_until(predicate, timeout: float, poll_s: float = 0.005) -> bool:
    """Wait until `predicate()` holds (checked every `poll_s`), at most `timeout` s; say whether it did."""
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True
