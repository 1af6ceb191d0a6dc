"""Lesson 04, exercise 2's check: /ads gives up after 0.3 s and leaves nothing running. The check
injects an ads service that never answers and counts the calls left running, then stops them.
"""

from __future__ import annotations

import asyncio
import random
import time

from ..blocking import BlockingWatch
from ..harness import serve
from ..observe import json_body, show_response
from ..runner import check
from .judge_common import USERS, _fail_status, _judge_loop_free, _short, _timed_get, same_json
from .world import ads_api, stop_leftovers, until


ADS_DEADLINE_S = 0.3
ADS_EARLIEST_S = 0.25  # giving up before this is not "about 0.3 s"
ADS_LATEST_S = 2 * ADS_DEADLINE_S


# ---- exercise 2: a deadline -----------------------------------------------------------------------

ADS_HANG_S = 30.0  # "never answers": far beyond any check; the check stops what is left of it
ADS_GIVE_UP_S = 1.2  # the check stops waiting for an answer here (a route without a deadline)


async def _timed_get_within(client, url, limit_s: float):
    """Like `_timed_get`, but gives up on the request after `limit_s` (response None)."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            response = await client.get(url)
    except TimeoutError:
        response = None
    return response, start, time.perf_counter()


@check("Lesson 04 · /ads gives up after 0.3 s and leaves nothing running", limit_s=10)
async def check_deadline(report, app):
    quick_user, slow_user = random.sample(USERS, 2)
    ads_api.reset()
    ads_api.latency_for[quick_user] = quick = random.uniform(0.12, 0.2)
    ads_api.latency_for[slow_user] = ADS_HANG_S
    try:
        async with serve(app, raise_app_exceptions=False) as client, BlockingWatch() as watch:
            (fast, _, _), (late, late_start, late_end) = await asyncio.gather(
                _timed_get(client, f"/ads/{quick_user}"), _timed_get_within(client, f"/ads/{slow_user}", ADS_GIVE_UP_S))
            # A cancelled call ends at its next step: give it a moment, then count what still runs.
            await until(lambda: not ads_api.running(), 0.2)
            slow_calls = ads_api.calls_for(slow_user)
            outcomes = [c.outcome for c in slow_calls]
    finally:
        left = await stop_leftovers(ads_api)
    if late is None:
        return report.fail("a service that never answers: the answer comes at about 0.3 s, without ads",
                           observed=f"no answer after {ADS_GIVE_UP_S * 1000:.0f} ms (the check then gave up)",
                           expected=f'{{"ads": null}} at about {ADS_DEADLINE_S * 1000:.0f} ms',
                           hint="A service that never answers makes the page wait for ever, unless the route "
                                "sets itself a deadline.")
    for response, user in ((fast, quick_user), (late, slow_user)):
        if response.status_code != 200:
            return _fail_status(report, response, client, f"/ads/{user}", "GET /ads/{user} answers 200")
    if not _judge_loop_free(report, watch):
        return
    expected = {"ads": ads_api.answer(quick_user)}
    if not report.add(f"an ads service that answers in {quick * 1000:.0f} ms: its ads are returned",
                      same_json(json_body(fast), expected),
                      observed=show_response(fast), expected=_short(expected),
                      hint=("Gave up too early: the deadline is 0.3 s, and this call needed less."
                            if same_json(json_body(fast), {"ads": None}) else
                            'Within the deadline, return what the ads service answered, under "ads".')):
        return
    took = late_end - late_start
    body_ok = same_json(json_body(late), {"ads": None})
    on_time = ADS_EARLIEST_S <= took <= ADS_LATEST_S
    report.add(
        "a service that never answers: the answer comes at about 0.3 s, without ads", body_ok and on_time,
        observed=f"{show_response(late)} after {took * 1000:.0f} ms",
        expected=f'{{"ads": null}} between {ADS_EARLIEST_S * 1000:.0f} and {ADS_LATEST_S * 1000:.0f} ms '
                 f"(deadline {ADS_DEADLINE_S * 1000:.0f} ms)",
        hint=("`null` means no ads: not [], {} or a string." if on_time and not body_ok else
              f"Gave up after {took * 1000:.0f} ms: the deadline is 0.3 s." if took < ADS_EARLIEST_S else
              "The page waited past its deadline: give up at 0.3 s."),
    )
    report.add(
        "the late call is cancelled, not left running", outcomes == ["cancelled"],
        observed=f"the call to the service that never answers: {', '.join(outcomes) or 'never made'}"
                 + (f"; {left} call(s) still running after the response (the check stopped them)" if left else ""),
        expected="one call, cancelled when the deadline passed",
        hint=("A call in a thread (`get_blocking`) cannot be cancelled: it holds its thread until it ends."
              if any(c.blocking for c in slow_calls) else
              "Stopping to wait is not stopping the call: it ran on after the response, holding a connection, "
              "and a service that never answers holds it for ever. Which tools cancel what they wait for?"
              if left else
              "Call the ads service once per request." if len(outcomes) > 1 else
              "Ask the ads service (once) for every request."),
    )
