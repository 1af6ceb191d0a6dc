"""Lesson 05, exercise 1's check: X-Request-ID and X-Process-Time on every response, errors
included. Exercise 2's check judges the same behaviour again (`_judge_request_context`). The one
clock, X-Process-Time, is judged by enclosure: it must cover the backend call it timed and fit
inside the client's time.
"""

from __future__ import annotations

import asyncio
import time

from ..harness import serve
from ..runner import check
from .judge_common import (
    _Records, _app_error, _cause_hint, _client_id, _field, _mentions, _process_ms, _timing_hint, observed,
    short_error,
)
from .world import BOOM_SECRET, backend


# ---- exercises 1 and 2: a request id and a timing header on every response ----------------------

# What /boom's error message carries (see world.BOOM_MESSAGE): none of it may reach the client.
INTERNALS = (BOOM_SECRET, "database connection failed", "RuntimeError", "Traceback")

CASES = [("GET", "/items/7", 200, "a 200"), ("GET", "/items/500", 404, "a 404"), ("GET", "/items/abc", 422, "a 422"),
         ("POST", "/items/7", 405, "a 405"), ("GET", "/boom", 500, "a 500 (the route raised)"),
         ("GET", "/stream", 200, "a streamed 200")]


FRESH = "without a client id, a new one per request"


def _build(lesson_app, middleware):
    """The lesson's app around the learner's middleware: a class is added as ASGI middleware,
    a function as `@app.middleware("http")`."""
    if isinstance(middleware, type):
        return lesson_app(asgi_middleware=middleware)
    return lesson_app(http_middleware=middleware)


async def _judge_request_context(report, app, pure_asgi: bool = False) -> bool:
    backend.reset()
    async with serve(app, raise_app_exceptions=False) as client:
        # 1. Each kind of response, with a client id: it answers as the route does, tagged.
        untagged = []
        sent_ids = {}
        with _Records() as records:
            for method, path, status, what in CASES:
                sent_ids[path] = _client_id()
                try:
                    response = await client.request(method, path, headers={"X-Request-ID": sent_ids[path]})
                except AssertionError:  # httpx's ASGITransport asserts what the spec requires
                    report.fail(f"{method} {path} answers {status}",
                                observed="the client got no complete response: a second http.response.start, a "
                                         "body after the end, or no end at all", expected=f"one whole {status}",
                                hint="Each response is one `http.response.start`, then bodies up to one with "
                                     "`more_body` False — once.")
                    return False
                if response.status_code != status:
                    raised = _app_error(client, path, records)
                    report.fail(f"{method} {path} answers {status}", observed=observed(response, client),
                                expected=str(status),
                                hint=_cause_hint(raised) if status != 500 and raised is not None else
                                "/boom raises on purpose: the client must still get a 500 response."
                                if status == 500 else "Your middleware changed what the route answered: pass the "
                                                      "response from `call_next` on, only add headers to it.")
                    return False
                missing = [h for h in ("X-Request-ID", "X-Process-Time") if h.lower() not in response.headers]
                if missing:
                    untagged.append(f"{what}: no {' or '.join(missing)}")
                elif response.headers["x-request-id"] != sent_ids[path]:
                    untagged.append(f"{what}: X-Request-ID {response.headers['x-request-id']!r}, not the client's")
                elif _process_ms(response) is None or _process_ms(response) < 0:
                    untagged.append(f"{what}: X-Process-Time {response.headers['x-process-time']!r} is not a number of ms")
                if status == 500:
                    boom = response
        if any("not the client's" in item for item in untagged):
            hint = ("Use the client's id when it sent one (`request.headers.get(\"x-request-id\")`), and make a "
                    "new one only when it did not.")
        elif untagged and all(item.startswith("a 500") for item in untagged) and pure_asgi:
            hint = ("When the app raises before its start message, nothing passed your tagging `send`: catch the "
                    "error, log it, and send the 500 yourself — through that same `send`, so it is tagged too.")
        elif untagged and all(item.startswith("a 500") for item in untagged):
            hint = ("When the route raises, `call_next` raises too: nothing reaches your header code. Catch the "
                    "error, log it, and build the 500 yourself — then tag it like any other response.")
        else:
            hint = "Set both headers on whatever response goes back, after the app answered."
        report.add(
            "X-Request-ID and X-Process-Time on 200, 404, 405, 422, 500 and a stream", not untagged,
            observed="; ".join(untagged[:3]), expected="both on every response; X-Request-ID the client's", hint=hint,
        )
        leaked = [text for text in INTERNALS if text in boom.text or text in str(dict(boom.headers))]
        report.add("the 500 says nothing about the error", not leaked,
                   observed=f"the 500's body: {boom.text[:100]!r}" if leaked else "", expected="no exception type, message or traceback",
                   hint="Build the 500 with a fixed message: the exception's text is for the log, not the client.")
        boom_id = sent_ids["/boom"]
        with_error = [r for r in records.records if r.exc_info and r.exc_info[0] is not None]
        with_id = [r for r in with_error if _mentions(r, boom_id)]
        report.add(
            "the error is logged, with its traceback and the request id", bool(with_id),
            observed="" if with_id else (f"{len(records.records)} log records; {len(with_error)} with a traceback; "
                                         f"none names the request id {boom_id}") if records.records
            else "nothing was logged for /boom",
            expected=f"a record with the exception and {boom_id}",
            hint=("Put the id in the message: `logger.exception(\"request %s failed\", request_id)`."
                  if with_error else "Log the error where you catch it: `logger.exception(...)` keeps the "
                                     "traceback (inside a plain `def`, pass `exc_info=exc`)."),
        )

        # 2. Concurrent requests: each keeps its own id (different, random latencies each run).
        theirs = [_client_id() for _ in range(5)]
        backend.reset()
        backend.hold_until(5)
        with _Records() as records:
            responses = await asyncio.gather(*(client.get("/slow", headers={"X-Request-ID": rid}) for rid in theirs))
        peak = backend.in_flight.peak
        backend.reset()
        broken = next((r for r in responses if r.status_code != 200), None)
        if broken is not None:
            raised = _app_error(client, "/slow", records)
            report.fail("5 requests at once answer 200", observed=f"GET /slow → {broken.status_code}"
                        + (f": the route raised {short_error(raised)}" if raised is not None else f" {broken.text[:80]}"),
                        expected="200 each", hint=_cause_hint(raised))
            return False
        mixed = [f"sent {rid}: header {r.headers.get('x-request-id')!r}, route saw {_field(r, 'request_id')!r}"
                 for rid, r in zip(theirs, responses)
                 if r.headers.get("x-request-id") != rid or _field(r, "request_id") != rid]
        report.add(
            "5 requests at once: each keeps its own X-Request-ID, and its route sees it", not mixed,
            observed="; ".join(mixed[:2]) + (f" (and {len(mixed) - 2} more)" if len(mixed) > 2 else ""),
            expected="each response and route: the id its client sent",
            hint="One variable for all requests (a global, an attribute of the middleware) is overwritten by the "
                 "next request: keep the id in a local variable and on `request.state`.",
        )
        report.add(
            "those 5 requests ran at once", peak == 5,
            observed="" if peak == 5 else f"at most {peak} of 5 calls of /slow's backend were in flight at once "
                                          "(each waited up to 1 s for the others)", expected="all 5 at once",
            hint="Middleware must not hold a lock, or block, while the route runs.",
        )
        with _Records() as records:
            responses = await asyncio.gather(*(client.get("/slow") for _ in range(5)))
        broken = next((r for r in responses if r.status_code != 200), None)
        if broken is not None:
            raised = _app_error(client, "/slow", records)
            report.fail(FRESH, observed=f"GET /slow without X-Request-ID → {broken.status_code}"
                        + (f": the route raised {short_error(raised)}" if raised is not None else f" {broken.text[:80]}"),
                        expected="200, with a new id", hint=_cause_hint(raised))
            return False
        ids = [r.headers.get("x-request-id") for r in responses]
        seen = [_field(r, "request_id") for r in responses]
        fresh_ok = all(isinstance(i, str) and len(i) >= 8 for i in ids) and len(set(ids)) == 5 and ids == seen
        report.add(
            FRESH, fresh_ok,
            observed="" if fresh_ok else f"ids {ids[:3]}...; the routes saw {seen[:3]}...",
            expected="5 different ids, each the route's",
            hint=("Make the id inside the middleware, for each request (`uuid.uuid4().hex`), not once at import."
                  if len(set(ids)) < 5 else "Put the same id on `request.state.request_id` and on the response."),
        )

        # 3. X-Process-Time covers the route: at least the backend call it made, at most the client's wait.
        backend.reset()
        start = time.perf_counter()
        response = await client.get("/slow")
        client_ms = (time.perf_counter() - start) * 1000
        durations = backend.in_flight.durations
        backend_ms = durations[-1] * 1000 if durations else 0.0
        measured = _process_ms(response)
        fits = measured is not None and backend_ms - 1 <= measured <= client_ms + 1
        report.add(
            "X-Process-Time is the request's time, in milliseconds", fits,
            observed=f"X-Process-Time {response.headers.get('x-process-time')!r}; /slow's backend call took "
                     f"{backend_ms:.1f} ms; the client waited {client_ms:.1f} ms",
            expected=f"between {backend_ms:.1f} and {client_ms:.1f}",
            hint=_timing_hint(measured, backend_ms, client_ms),
        )
        report.metrics["process_time_slack_low_ms"] = (measured - backend_ms) if measured is not None else -1.0
        report.metrics["process_time_slack_high_ms"] = (client_ms - measured) if measured is not None else -1.0
    return report.passed


@check("Lesson 05 · X-Request-ID and X-Process-Time on every response, errors included", limit_s=15)
async def check_request_headers(report, lesson_app, middleware):
    app = _build(lesson_app, middleware)
    await _judge_request_context(report, app)
