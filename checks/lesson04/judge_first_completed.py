"""Lesson 04, exercise 4's check: /download takes the fastest mirror and cancels the others,
judged by which mirror calls ended cancelled.
"""

from __future__ import annotations

import asyncio
import random

from ..blocking import BlockingWatch
from ..harness import serve
from ..observe import json_body, show_response, status_hint
from ..runner import check
from .judge_common import _cancel_mid_wait, _judge_loop_free, _short, _timed_get, same_json
from .world import mirrors, until


# ---- exercise 4: first completed ------------------------------------------------------------------------


@check("Lesson 04 · /download takes the fastest mirror and cancels the others", limit_s=15)
async def check_first_completed(report, app):
    names = [f"file-{random.randint(100, 999)}-{i}.zip" for i in range(3)]
    fastest_of = dict(zip(names, random.sample(range(len(mirrors)), len(mirrors))))  # each mirror fastest once
    second = {}
    for mirror in mirrors:
        mirror.reset()
    for name in names:
        slow = sorted(random.uniform(0.25, 0.4) for _ in range(len(mirrors) - 1))
        second[name] = slow[0]
        others = iter(random.sample(slow, len(slow)))
        for index, mirror in enumerate(mirrors):
            mirror.latency_for[name] = random.uniform(0.03, 0.06) if index == fastest_of[name] else next(others)
    cancelled_name = f"file-{random.randint(100, 999)}-cancelled.zip"
    for mirror in mirrors:
        mirror.latency_for[cancelled_name] = random.uniform(0.6, 0.9)

    def calls(name):
        return [c for m in mirrors for c in m.calls_for(name)]

    async with serve(app, raise_app_exceptions=False) as client, BlockingWatch() as watch:
        results = await asyncio.gather(*(_timed_get(client, f"/download/{name}") for name in names))
        # Cancelled tasks end at their next step: wait until every call has ended, one way or the other.
        await until(lambda: all(c.end is not None for n in names for c in calls(n)), 1.5)
        answered = _all_ok(report, client, names, results)
        if answered:
            cancelled_request = await _cancel_mid_wait(client, f"/download/{cancelled_name}", lambda: calls(cancelled_name))
    if not answered or not _judge_loop_free(report, watch):
        return
    index = max(range(len(names)), key=lambda i: (results[i][2] - results[i][1]) / second[names[i]])
    name, (_, start, end) = names[index], results[index]
    took = end - start
    finished_before = [c for c in calls(name) if c.outcome == "ok" and c.end <= end]
    # Mirror calls in threads queue for the default executor's few threads: late for that reason.
    in_threads = any(c.blocking for n in names for c in calls(n))
    fastest = mirrors[fastest_of[name]].latency_for[name]
    report.add(
        "answers as soon as the first mirror does", took < second[name] and len(finished_before) == 1,
        observed=f"slowest answer {took * 1000:.0f} ms; its fastest mirror took {fastest * 1000:.0f} ms "
                 f"(the next {second[name] * 1000:.0f} ms), and {len(finished_before)} mirror(s) had answered",
        expected=f"the answer before the second mirror's {second[name] * 1000:.0f} ms, after exactly one mirror answered",
        hint=(THREADS_HINT if in_threads else
              "`asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)` returns when one is done; "
              "`gather` waits for all of them."),
    )
    outcomes = {name: sorted(c.outcome for c in calls(name)) for name in names}
    left = sum(o.count("ok") - 1 for o in outcomes.values())
    report.add(
        "the other mirrors are cancelled", all(o == ["cancelled", "cancelled", "ok"] for o in outcomes.values()),
        observed=f"per download: {'; '.join(', '.join(o) for o in outcomes.values())}",
        expected="one ok and two cancelled calls per download",
        hint=("A call running in a thread (`get_blocking`) cannot be cancelled: await the async client in tasks."
              if in_threads else
              "Tasks you no longer need keep running until you `.cancel()` them." if left > 0 else
              "Each download asks each mirror once, takes the first answer and cancels the others."),
    )
    ended, outcomes_cancelled = cancelled_request
    report.add(
        "a download cancelled while it waits cancels its mirror calls",
        ended and outcomes_cancelled == ["cancelled"] * len(mirrors),
        observed=(f"the request was cancelled with its {len(mirrors)} mirror calls running; they then ended: "
                  f"{', '.join(outcomes_cancelled) or 'never started'}" if ended else
                  "the request never had its 3 mirror calls running at once"),
        expected=f"{len(mirrors)} cancelled",
        hint="The request itself can be cancelled (a deadline around it, a server shutting down): clean-up that "
             "runs only after `wait` returns is skipped. Cancel in a `finally:`, or let a TaskGroup do it.",
    )
    report.metrics["in_requests_s"] = max(end for _, _, end in results) - min(start for _, start, _ in results)


THREADS_HINT = ("Calls in threads (`get_blocking`) wait for a free thread and cannot be cancelled: "
                "await the async client in tasks.")


def _all_ok(report, client, names, results) -> bool:
    for name, (response, _, _) in zip(names, results):
        if response.status_code != 200:
            errors = client.errors_for(f"/download/{name}")
            text = str(errors[-1].exception) if errors else ""
            hint = ("`asyncio.wait` takes tasks, not coroutines: wrap each call in `asyncio.create_task(...)`."
                    if "coroutines is forbidden" in text else
                    "Only the tasks in `done` have a result yet: take it from there." if "Result is not set" in text else
                    status_hint(response, "GET", "/download/{name}", client))
            report.fail("GET /download/{name} answers 200", observed=show_response(response, client), expected="200",
                        hint=hint)
            return False
    for index, (name, (response, _, _)) in enumerate(zip(names, results)):
        fastest = min(mirrors, key=lambda m: m.latency_for[name])
        if not same_json(json_body(response), fastest.answer(name)):
            first_listed = same_json(json_body(response), mirrors[0].answer(name))
            in_threads = any(c.blocking for m in mirrors for c in m.calls_for(name))
            report.fail("answers with the fastest mirror's result",
                        observed=f"GET /download/{name}: {show_response(response)}; the fastest was {fastest.name}",
                        expected=_short(fastest.answer(name)),
                        hint=(THREADS_HINT if in_threads else
                              "That is the first mirror in the list, not the first to answer." if first_listed else
                              "Return the result of the first call to finish, as the mirror returned it."))
            return False
    return report.add("answers with the fastest mirror's result", True, observed=f"{len(names)} downloads at once")
