"""Judging helpers more than one of lesson 07's checks use."""

from __future__ import annotations

import asyncio
import time


def _skipped_on_event(report, app) -> bool:
    """`@app.on_event` handlers next to `lifespan=` never run: say so instead of blaming a 500."""
    router = getattr(app, "router", None)
    handlers = list(getattr(router, "on_startup", []) or []) + list(getattr(router, "on_shutdown", []) or [])
    if not handlers:
        return False
    names = ", ".join(getattr(handler, "__name__", "?") for handler in handlers)
    report.fail("no `on_event` handlers beside `lifespan=`",
                observed=f"{len(handlers)} startup/shutdown handler(s) registered with on_event ({names}): "
                         "with `lifespan=` they are skipped, never run",
                hint="`@app.on_event` is deprecated and ignored when the app has a lifespan: put that code in "
                     "the lifespan, before (startup) or after (shutdown) its `yield`.")
    return True


async def _wait_until(predicate, timeout_s: float, step_s: float = 0.005) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passed (bounded, never a fixed sleep)."""
    deadline = time.perf_counter() + timeout_s
    while not predicate():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(step_s)
    return True
