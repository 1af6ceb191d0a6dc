"""Lesson 07, exercise 3's check: a single-flight cache, judged by the upstream's exact call
counts under a stampede, a clock the check moves by hand, shared errors and cancelled callers.
"""

from __future__ import annotations

import asyncio
import random

import httpx

from ..harness import describe_exception, serve
from ..observe import json_body, show_response, status_hint
from ..runner import check
from ..services import UpstreamError
from ..tasks import started_tasks
from .judge_common import _wait_until
from .world import CURRENCIES, RatesUpstream, stampede


class FakeClock:
    """A clock the check moves by hand: `clock()` is the time now, `clock.advance(s)` moves it on."""

    def __init__(self) -> None:
        self.now = random.uniform(1_000, 100_000)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


STILL_WAITING = object()


async def _gather_within(coroutines, timeout_s: float) -> list:
    """Run them all at once; each result is a value, an exception, or STILL_WAITING (then cancelled)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=0.5)
    return [STILL_WAITING if task in pending else (task.exception() or task.result()) for task in tasks]


def _currency_key() -> str:
    return random.choice(CURRENCIES) + f"-{random.randint(1000, 9999)}"


@check("Lesson 07 · a single-flight cache: one upstream call per cold key, errors shared, entries expire", limit_s=15)
async def check_single_flight(report, make_app, cache_class):
    with started_tasks() as started:  # the cache's tasks only, never the kernel's queued cells
        await _judge_single_flight(report, make_app, cache_class, started)


async def _judge_single_flight(report, make_app, cache_class, started):
    upstream = RatesUpstream(latency_s=(random.uniform(0.03, 0.05), random.uniform(0.06, 0.09)))
    wait_s = 10 * upstream.latency_s[1] + 0.5
    ttl = float(random.randint(30, 600))
    clock = FakeClock()
    key = _currency_key()
    cache_class(upstream.get, ttl_s=ttl, clock=clock)  # a cache that cannot be made says so here, in its own words
    async with serve(make_app(cache_class, upstream.get, ttl, clock), raise_app_exceptions=False) as client:
        herd = await stampede(client, upstream, key)
        bad = [r for r in herd.responses if not isinstance(r, httpx.Response) or r.status_code != 200]
        if bad:
            sample = bad[0]
            report.fail(f"50 × GET /rates/{{currency}} at once answer 200",
                        observed=f"{len(bad)} failed, e.g. " + (show_response(sample, client) if isinstance(sample, httpx.Response)
                                                                 else describe_exception(sample)),
                        expected="all 200", hint=status_hint(sample, "GET", "/rates/{currency}", client)
                        if isinstance(sample, httpx.Response) else "Look at the error above.")
            return
        rates = {(json_body(r) or {}).get("rate") for r in herd.responses}
        calls = upstream.calls_for(key)
        report.figure("50 requests for one cold key: each grey bar a request, each blue bar an upstream call",
                      herd.picture(f"50 requests, {calls} upstream call{'s' if calls != 1 else ''}"))
        if not report.add("50 requests at once for one cold key: one upstream call", calls == 1,
                          observed=f"{calls} calls to the upstream for {key}",
                          expected="1, whose value all 50 get",
                          hint="Between 'not cached' and 'stored' the fetch awaits, and every request that arrives "
                               "meanwhile starts its own: let the first start the fill and the others await that one."):
            return
        report.add("all 50 get the value of that call", rates == {upstream.last(key)},
                   observed=f"values returned: {sorted(rates, key=str)[:4]}", expected=str(upstream.last(key)),
                   hint="Return what the upstream answered.")
        hits = await asyncio.gather(*(client.get(f"/rates/{key}") for _ in range(5)))
        report.add("a cached value is served without a call", upstream.calls_for(key) == 1
                   and all((json_body(r) or {}).get("rate") == upstream.last(key) for r in hits),
                   observed=f"5 more requests: {upstream.calls_for(key) - 1} more call(s)", expected="0",
                   hint="Store the value when the fill succeeds, and serve it while it is fresh.")
    cache = cache_class(upstream.get, ttl_s=ttl, clock=clock)
    await _judge_expiry(report, cache, upstream, clock, ttl)
    await _judge_keys_apart(report, cache, upstream, wait_s)
    await _judge_failure(report, cache, upstream, wait_s)
    await _judge_cancel(report, cache, upstream, wait_s)
    settled = await _wait_until(lambda: not started.pending(), wait_s, 0.01)
    left = started.pending()
    report.add("no task left running", settled,
               observed=f"{len(left)} task(s) still running after every call returned"
                        + (f": {left[0].get_coro().__qualname__}" if left else ""),
               expected="0", hint="Every task the cache starts must end: a loop started in `__init__` runs "
                                  "forever unless something stops it. A fill task ends by itself.")
    for task in left:
        task.cancel()


async def _judge_expiry(report, cache, upstream, clock, ttl) -> None:
    key = _currency_key()
    first = await cache.get(key)
    clock.advance(ttl * 0.5)
    second = await cache.get(key)
    kept = upstream.calls_for(key) == 1 and second == first
    report.add(f"kept for ttl_s ({ttl:g} s by the clock)", kept,
               observed=f"{ttl * 0.5:g} s later by `clock`: {upstream.calls_for(key) - 1} new call(s)",
               expected="0: the value is still fresh",
               hint="A value is fresh while `clock() - stored_at < ttl_s`: compare times of the clock you were given.")
    clock.advance(ttl * 0.5 + 1)
    third = await cache.get(key)
    report.add("fetched again once ttl_s has passed", upstream.calls_for(key) == 2 and third == upstream.last(key),
               observed=f"{ttl + 1:g} s later by `clock`: {upstream.calls_for(key) - 1} new call(s), "
                        f"{'the new value' if third == upstream.last(key) else 'the old value'} returned",
               expected="1 new call, the new value",
               hint="Entries must expire: keep when each value was stored, read the time from the `clock` you were "
                    "given (not `time.monotonic()`), and fetch again once ttl_s has passed.")


async def _judge_keys_apart(report, cache, upstream, wait_s) -> None:
    keys = [_currency_key() for _ in range(6)]
    upstream.in_flight.reset()
    results = await _gather_within([cache.get(k) for k in keys], wait_s)
    report.add("different keys do not wait for each other", upstream.in_flight.peak == len(keys)
               and all(r is not STILL_WAITING and not isinstance(r, BaseException) for r in results),
               observed=f"6 cold keys at once: at most {upstream.in_flight.peak} upstream call(s) at a time",
               expected="6 at once",
               hint="One lock for the whole cache makes every key wait for every other key's fill: keep what is "
                    "in progress per key.")


async def _judge_failure(report, cache, upstream, wait_s) -> None:
    key = _currency_key()
    upstream.down.add(key)
    results = await _gather_within([cache.get(key) for _ in range(12)], wait_s)
    calls = upstream.calls_for(key)
    errors = sum(isinstance(r, UpstreamError) for r in results)
    waiting = sum(r is STILL_WAITING for r in results)
    if waiting:
        hint = "When the fill fails, the callers waiting for it must be woken with its error."
    elif calls > 1:
        hint = ("After the failure each waiter started a fill of its own, one after another: with the upstream "
                "down, the stampede comes back slowly. Hand the fill's outcome, error included, to everyone waiting.")
    else:
        hint = "Everyone waiting for a fill gets its outcome: when it raised, they get that error (re-raise it)."
    report.add("a failing fill: one call, and every waiter gets its error", calls == 1 and errors == 12,
               observed=f"upstream down, 12 callers at once: {calls} call(s); {errors} got the UpstreamError"
                        + (f", {waiting} still waiting after {wait_s:.1f} s" if waiting else ""),
               expected="1 call, 12 errors", hint=hint)
    upstream.down.discard(key)
    after = await _gather_within([cache.get(key)], wait_s)
    report.add("a failure is not cached: the next call tries again",
               upstream.calls_for(key) == calls + 1 and after[0] == upstream.last(key),
               observed=f"the upstream is back: the next get made {upstream.calls_for(key) - calls} call(s) and returned "
                        + (describe_exception(after[0]) if isinstance(after[0], BaseException) else repr(after[0])[:60]),
               expected="1 call and its value",
               hint="Store only values; forget a fill that failed, so the next caller starts a new one.")


async def _judge_cancel(report, cache, upstream, wait_s) -> None:
    """Eight callers of one cold key; one gives up while the fill runs. Tried twice, so both kinds of caller
    are covered: the one that started the fill, and one that only waits for it."""
    for who, index in (("the first caller", 0), ("a caller waiting for the fill", 4)):
        if not await _one_gives_up(report, cache, upstream, wait_s, who, index):
            return


async def _one_gives_up(report, cache, upstream, wait_s, who: str, index: int) -> bool:
    key = _currency_key()
    tasks = []
    for _ in range(8):  # one at a time, each into its get: the first starts the fill, the others find it
        tasks.append(asyncio.ensure_future(cache.get(key)))
        await asyncio.sleep(0)
    await _wait_until(lambda: upstream.calls_for(key) >= 1, wait_s)
    tasks[index].cancel()  # a client disconnects, a timeout
    others = tasks[:index] + tasks[index + 1:]
    done, pending = await asyncio.wait(others, timeout=wait_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=0.5)
    values = [t.result() if not t.cancelled() and t.exception() is None else
              (asyncio.CancelledError() if t.cancelled() else t.exception()) for t in done]
    calls = upstream.calls_for(key)
    good = sum(v == upstream.last(key) for v in values)
    broken = [v for v in values if isinstance(v, BaseException)]
    if calls > 1:
        hint = ("The caller that gave up took the fill with it, and a second fetch started for the others: run "
                "the fill in a task of its own, which no caller's cancellation reaches (`asyncio.shield(task)`).")
    else:
        hint = ("Awaiting a shared task or future directly cancels it when that caller is cancelled, for everyone: "
                "run the fill in a task of its own and await it through `asyncio.shield(...)`.")
    return report.add(f"one caller giving up does not fail the others: {who}",
                      good == 7 and calls == 1,
                      observed=f"cancelled it: {good} of the other 7 got the value, {calls} call(s) to the upstream"
                               + (f", {len(broken)} got {type(broken[0]).__name__}" if broken else "")
                               + (f", {len(pending)} still waiting" if pending else ""),
                      expected="7 of 7, from 1 call",
                      hint=hint)
