"""Judging helpers more than one of lesson 04's checks use."""

from __future__ import annotations

import asyncio
import time

from ..blocking import BlockingWatch
from ..observe import show_response, status_hint
from .world import until


USERS = ["ada", "grace", "linus", "guido", "barbara", "edsger", "margaret", "ken"]


# ---- shared helpers --------------------------------------------------------------------------------


def same_json(got, want) -> bool:
    """Equal values of equal JSON types (1 is not 1.0, True, "1"; null is not [] or {})."""
    if type(got) is not type(want):
        return False
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(same_json(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return len(got) == len(want) and all(map(same_json, got, want))
    return got == want


def _short(value, limit: int = 160) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _timed_get(client, url):
    start = time.perf_counter()
    response = await client.get(url)
    return response, start, time.perf_counter()


def _fail_status(report, response, client, path, name: str | None = None):
    report.fail(name or f"GET {path} answers 200", observed=show_response(response, client), expected="200",
                hint=status_hint(response, "GET", path, client))


def _judge_loop_free(report, watch: BlockingWatch) -> bool:
    """The exact signal: blocking calls made on the event loop's thread while the check ran."""
    # A blocking client's own wait shows as a `time.sleep` at the same line: it is not the learner's sleep.
    clients = {c.where for c in watch.on_loop if c.what.endswith("get_blocking()")}
    calls = [str(c) for c in watch.on_loop if not (c.what.startswith("time.sleep") and c.where in clients)]
    if not calls:
        return report.add("keeps the event loop free", True, observed="no blocking call on the event loop's thread")
    if any(c.startswith("time.sleep") for c in calls):
        hint = ("`time.sleep` inside `async def` stops every request of the app while it sleeps: "
                "`await asyncio.sleep(...)` waits without holding the loop.")
    else:
        hint = ("`get_blocking` holds its thread while it waits, and in `async def` that thread runs the event "
                "loop: await the async client (`await api.get(...)`).")
    return report.fail("keeps the event loop free", observed=f"blocking calls on the event loop's thread: {_summary(calls)}",
                       expected="none: every wait is awaited", hint=hint)


def _summary(calls: list[str], limit: int = 2) -> str:
    seen = list(dict.fromkeys(calls))
    more = len(calls) - sum(calls.count(c) for c in seen[:limit])
    return "; ".join(seen[:limit]) + (f" (and {more} more)" if more > 0 else "")


def _flat(exc) -> list[BaseException]:
    """The exceptions inside an exception (group), flattened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _flat(inner)]
    return [exc] if exc is not None else []


async def _cancel_mid_wait(client, path: str, calls, count: int = 3) -> tuple[bool, list[str]]:
    """Start a request whose `count` upstream calls are all slow, cancel it while it waits, then
    wait until those calls have ended (cancelled now, or finished later)."""
    request = asyncio.create_task(client.get(path))
    started = await until(lambda: len(calls()) >= count or request.done(), 2.0)
    started = started and len(calls()) >= count
    request.cancel()
    try:
        await request
    except BaseException:  # noqa: BLE001  (cancelled, as asked, or whatever the app did instead)
        pass
    if not started:
        return False, []
    await until(lambda: all(c.end is not None for c in calls()), 1.5)
    return True, sorted(c.outcome for c in calls())
