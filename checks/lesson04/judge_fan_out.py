"""Lesson 04, exercise 3's check: /prices and /price make at most 4 calls at a time from the whole
app, judged by the price service's exact in-flight count across concurrent requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from ..blocking import BlockingWatch
from ..harness import serve
from ..observe import json_body, show_response
from ..runner import check
from .judge_common import _fail_status, _judge_loop_free, _short, _timed_get, same_json
from .world import GATHER_S, Upstream, _changed, prices_api, until


MAX_PRICES_IN_FLIGHT = 4


# ---- exercise 3: an app-wide bounded fan-out -------------------------------------------------------


def _skus(n: int, prefix: str) -> list[str]:
    return [f"{prefix}-{random.randint(100, 999)}-{i}" for i in range(n)]


@check("Lesson 04 · /prices and /price: at most 4 calls at a time from the whole app", limit_s=15)
async def check_fan_out(report, app):
    prices_api.reset()
    first = _skus(12, "sku")
    for i in range(3):  # three discontinued items first: a place a failure never gives back shows at once
        first[i] = "gone-" + first[i]
    second = _skus(10, "item")
    singles = _skus(6, "one")
    gone_single = f"gone-one-{random.randint(100, 999)}"  # asked alone afterwards: 3 failures at once are enough
    for sku in first + second + singles + [gone_single]:
        prices_api.latency_for[sku] = random.uniform(0.03, 0.07)
    paths = ["/prices?skus=" + ",".join(first), "/prices?skus=" + ",".join(second)] + [f"/price/{s}" for s in singles]
    async with serve(app, raise_app_exceptions=False) as client, BlockingWatch() as watch:
        batch = asyncio.ensure_future(asyncio.gather(*(_timed_get(client, path) for path in paths)))
        stuck = await _stuck(batch, prices_api)
        if stuck:
            return report.fail(
                "every request finishes", observed=stuck,
                expected="each call's place is given back when it ends",
                hint="Requests wait while no call runs: places taken and never given back? Every `acquire()` needs "
                     "its `release()`, even when the call fails; `async with limit:` does both.")
        results = batch.result()
        await until(lambda: all(c.end is not None for c in prices_api.calls), 2.0)
        calls = list(prices_api.calls)
        peak = prices_api.in_flight.peak
        paths.append(f"/price/{gone_single}")
        singles.append(gone_single)
        results.append(await _timed_get(client, paths[-1]))
        again = await _places_after_failures(client)
    for path, (response, _, _) in zip(paths, results):
        if response.status_code != 200:
            route = "/prices" if path.startswith("/prices") else "/price/{sku}"
            return _fail_status(report, response, client, path.split("?")[0], f"GET {route} answers 200")

    def price(sku):
        return None if sku.startswith("gone-") else prices_api.answer(sku)

    if not _judge_loop_free(report, watch):
        return
    for skus, (response, _, _) in zip((first, second), results):
        if not same_json(json_body(response), {"prices": [price(s) for s in skus]}):
            return report.fail(
                "GET /prices: every price in the order asked, null for the discontinued", observed=show_response(response),
                expected=f'{{"prices": [<{len(skus)} results, in the order of the skus, null where the lookup failed>]}}',
                hint="gather returns results in the order of its arguments (as_completed does not); catch UpstreamError "
                     "around one call and return None in its place.")
    for sku, (response, _, _) in zip(singles, results[2:]):
        if not same_json(json_body(response), {"price": price(sku)}):
            return report.fail(f"GET /price/{{sku}}: {{\"price\": ...}}, null for a discontinued item",
                               observed=f"GET /price/{sku}: {show_response(response)}", expected=_short({"price": price(sku)}),
                               hint="Return what prices_api.get(sku) returned under \"price\", or null when it raised UpstreamError.")
    report.add("both routes answer every sku in order, null for the discontinued", True)
    if not report.add(
        f"never more than {MAX_PRICES_IN_FLIGHT} calls at once, across all requests", peak <= MAX_PRICES_IN_FLIGHT,
        observed=f"{peak} calls to prices_api in flight at once while 2 × /prices and {len(singles) - 1} × /price/{{sku}} ran together",
        expected=f"at most {MAX_PRICES_IN_FLIGHT}: the limit is the app's, not each request's or each route's",
        hint=("Requests run at once, and each one counted only its own calls: a limit made inside a request "
              "(or one per route), or none, does not bound the app. Make one limit for the whole app when it "
              "starts (lifespan state) and take a place from it around every call of both routes."),
    ):
        return
    if not report.add(
        f"{MAX_PRICES_IN_FLIGHT} calls at once when there is enough to do", peak == MAX_PRICES_IN_FLIGHT,
        observed=f"at most {peak} calls in flight at once, with {len(calls)} to make",
        expected=f"{MAX_PRICES_IN_FLIGHT} at once: the upstream allows it",
        hint="The calls wait for each other more than they must: a Lock lets one through; a Semaphore(4) lets four.",
    ):
        return
    if isinstance(again, str):
        return report.fail(f"a failed call gives its place back: {MAX_PRICES_IN_FLIGHT} at once again after failures",
                           observed=again, expected=f"{MAX_PRICES_IN_FLIGHT} calls at once", hint=LOST_PLACE)
    report.add(
        f"a failed call gives its place back: {MAX_PRICES_IN_FLIGHT} at once again after failures",
        again == MAX_PRICES_IN_FLIGHT,
        observed=f"after 4 lookups of discontinued items failed, at most {again} calls ran at once "
                 f"(each call waited up to {GATHER_S:g} s for the others)",
        expected=f"{MAX_PRICES_IN_FLIGHT}", hint=LOST_PLACE,
    )
    report.metrics["in_requests_s"] = max(end for _, _, end in results) - min(start for _, start, _ in results)


LOST_PLACE = ("Does a call that fails give its place back? `async with limit:` releases it whatever happens; "
              "an `acquire()` whose `release()` is skipped by the exception loses the place for good.")


async def _places_after_failures(client) -> int | str:
    """After the failures: how many calls run at once when each waits for the others (an exact count,
    not an overlap of timings). A string says what was seen when no call could start at all."""
    prices_api.in_flight.reset()
    prices_api.gather_to = MAX_PRICES_IN_FLIGHT
    try:
        skus = _skus(MAX_PRICES_IN_FLIGHT, "again")  # exactly as many as may run: none waits out GATHER_S
        for sku in skus:
            prices_api.latency_for[sku] = 0.01
        request = asyncio.ensure_future(_timed_get(client, "/prices?skus=" + ",".join(skus)))
        stuck = await _stuck(request, prices_api)
        if stuck:
            return "after 4 lookups of discontinued items failed, " + stuck
        return prices_api.in_flight.peak
    finally:
        prices_api.gather_to = 0


async def _stuck(batch: asyncio.Future, service: Upstream, quiet_s: float = 1.0) -> str:
    """Wait for `batch`; "" when it finishes, or what was seen when no call of `service` started
    or ended for `quiet_s` (far above its latencies) while none was in flight: nothing can move."""
    batch.add_done_callback(lambda _: _changed())

    def events():
        return len(service.calls), sum(c.end is not None for c in service.calls)

    while not batch.done():
        seen = events()
        moved = await until(lambda: batch.done() or events() != seen, quiet_s)
        if not moved and not batch.done() and service.in_flight.current == 0 and seen[0] > 0:
            batch.cancel()
            with contextlib.suppress(BaseException):
                await batch
            return (f"after {seen[0]} calls, none started for {quiet_s:g} s, none was running, and requests were "
                    "still waiting")
    return ""
