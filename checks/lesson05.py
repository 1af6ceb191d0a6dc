"""Lesson 05, middleware: headers on every response (errors included), request ids, a guard
that answers 401 instead of raising, and CORS.

The checks take an app built by the lesson's `lesson_app(...)` around the learner's
middleware, and send it ordinary, missing, invalid and failing requests.
"""

from __future__ import annotations

import asyncio
import random
import time

from .harness import serve
from .observe import json_body, show_response, status_hint
from .runner import check

API_KEY = "course-admin-key"
ALLOWED_ORIGIN = "https://app.example.com"
SLOW_S = 0.1
CASES = [("/items/7", 200, "a normal request"), ("/items/500", 404, "a 404"),
         ("/items/abc", 422, "a 422"), ("/boom", 500, "a route that raises")]


def _process_time_ms(response) -> float | None:
    try:
        return float(response.headers.get("x-process-time", ""))
    except ValueError:
        return None


@check("Lesson 05 · X-Process-Time and X-Request-ID on every response", limit_s=15)
async def check_request_headers(report, app):
    async with serve(app, raise_app_exceptions=False) as client:
        missing = []
        for path, status, what in CASES:
            response = await client.get(path)
            if response.status_code != status:
                report.fail(f"GET {path} answers {status}", observed=show_response(response, client), expected=str(status),
                            hint=status_hint(response, "GET", path, client) if status != 500 else
                            "The lesson's /boom raises on purpose; the app should still answer 500.")
                return
            absent = [h for h in ("X-Process-Time", "X-Request-ID") if h.lower() not in response.headers]
            if absent or _process_time_ms(response) is None:
                missing.append(f"{what} ({status}): " + (", ".join(absent) if absent else "X-Process-Time is not a number"))
        report.add(
            "both headers on 200, 404, 422 and 500", not missing,
            observed="; ".join(missing), expected="X-Process-Time (a number of ms) and X-Request-ID on each",
            hint=("A route that raises never hands your middleware a response: `call_next` raises. Catch it, "
                  "build the 500 yourself, and add the headers to that too."
                  if any("(500)" in m for m in missing) else "Set the headers on whatever response comes back."),
        )

        theirs = f"client-{random.randint(10**5, 10**6)}"
        response = await client.get("/items/7", headers={"X-Request-ID": theirs})
        seen = (json_body(response) or {}).get("request_id")
        report.add(
            "the client's X-Request-ID is kept, and the route sees it",
            response.headers.get("x-request-id") == theirs and seen == theirs,
            observed=f"sent {theirs}; header back {response.headers.get('x-request-id')!r}; the route saw {seen!r}",
            expected=f"{theirs} in both",
            hint="Use the incoming header when there is one; put the id on `request.state.request_id` before the route runs.",
        )

        responses = await asyncio.gather(*(client.get("/items/7") for _ in range(5)))
        ids = [r.headers.get("x-request-id") for r in responses]
        seen = [(json_body(r) or {}).get("request_id") for r in responses]
        report.add(
            "a new id for each request without one", len(set(ids)) == 5 and all(ids) and ids == seen,
            observed=f"ids: {ids}", expected="5 different ids, each the one the route saw",
            hint="Generate the id inside the middleware, per request (`uuid.uuid4().hex`), not once at import.",
        )

        start = time.perf_counter()
        response = await client.get("/slow")
        took_ms = (time.perf_counter() - start) * 1000
        measured = _process_time_ms(response)
        report.add(
            "X-Process-Time measures the request, in milliseconds",
            measured is not None and SLOW_S * 1000 * 0.9 <= measured <= took_ms + 50,
            observed=f"/slow sleeps {SLOW_S * 1000:.0f} ms; header {response.headers.get('x-process-time')!r}; "
                     f"the client measured {took_ms:.0f} ms",
            expected=f"between {SLOW_S * 900:.0f} and {took_ms + 50:.0f}",
            hint="Read `time.perf_counter()` before and after the call that runs the route; report the difference × 1000.",
        )

        start = time.perf_counter()
        await asyncio.gather(*(client.get("/slow") for _ in range(5)))
        ratio = (time.perf_counter() - start) / (took_ms / 1000)
        report.add(
            "concurrent requests are not serialised", ratio < 2.5,
            observed=f"5 requests to /slow at once took {ratio:.1f}× one", expected="under 2.5×",
            hint="Middleware must not hold a lock or block while the route runs.",
        )


@check("Lesson 05 · /admin is guarded by an API key: 401, not a 500", limit_s=10)
async def check_guard(report, app):
    cases = [("/admin/stats", {}, 401, "no key"), ("/admin/stats", {"X-API-Key": "wrong"}, 401, "a wrong key"),
             ("/admin/stats", {"X-API-Key": API_KEY}, 200, "the right key"), ("/items/7", {}, 200, "a public path")]
    async with serve(app, raise_app_exceptions=False) as client:
        for path, headers, status, what in cases:
            response = await client.get(path, headers=headers)
            name = f"GET {path} with {what} → {status}"
            errors = [str(e.exception) for e in client.errors_for(path)]
            if response.status_code == 500 and any("HTTPException" in type(e.exception).__name__ for e in client.errors_for(path)):
                report.fail(name, observed=f"500: an HTTPException escaped from the middleware ({errors[-1]})", expected=str(status),
                            hint="Exception handlers work inside the app, around the routes; middleware runs outside "
                                 "them. Return a `JSONResponse(status_code=401, ...)` instead of raising.")
                return
            if response.status_code != status:
                report.fail(name, observed=show_response(response, client), expected=str(status),
                            hint="Only paths under /admin need the key; compare `X-API-Key` with API_KEY.")
                continue
            if status == 401 and not isinstance((json_body(response) or {}).get("detail"), str):
                report.fail(name + " as JSON", observed=show_response(response), expected='{"detail": "..."}',
                            hint="Answer like FastAPI does: a JSON body with a `detail` message.")
                continue
            report.add(name, True)


@check("Lesson 05 · CORS lets app.example.com in with credentials, and no one else", limit_s=10)
async def check_cors(report, lesson_app, add_cors):
    app = add_cors(lesson_app())
    evil = f"https://evil{random.randint(10, 99)}.example"
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "X-API-Key"}
    async with serve(app, raise_app_exceptions=False) as client:
        ok = await client.options("/items/7", headers={"Origin": ALLOWED_ORIGIN, **preflight})
        bad = await client.options("/items/7", headers={"Origin": evil, **preflight})
        simple_ok = await client.get("/items/7", headers={"Origin": ALLOWED_ORIGIN})
        simple_bad = await client.get("/items/7", headers={"Origin": evil})
    report.add(
        "a preflight from app.example.com is allowed, with credentials",
        ok.status_code == 200 and ok.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
        and ok.headers.get("access-control-allow-credentials") == "true"
        and "x-api-key" in ok.headers.get("access-control-allow-headers", "").lower(),
        observed=f"{ok.status_code}; allow-origin {ok.headers.get('access-control-allow-origin')!r}, "
                 f"allow-credentials {ok.headers.get('access-control-allow-credentials')!r}, "
                 f"allow-headers {ok.headers.get('access-control-allow-headers')!r}",
        expected=f"200; {ALLOWED_ORIGIN}, true, and X-API-Key allowed",
        hint="CORSMiddleware(allow_origins=[...], allow_credentials=True, allow_methods=[...], allow_headers=[...]).",
    )
    leaked = [r for r in (bad, simple_bad) if r.headers.get("access-control-allow-origin")]
    report.add(
        "another origin gets no Access-Control-Allow-Origin", not leaked,
        observed=f"{evil} got allow-origin {leaked[0].headers.get('access-control-allow-origin')!r}" if leaked else "",
        expected="no such header for it",
        hint="With credentials, '*' is not a wildcard you want: Starlette then echoes any origin. List the allowed origins.",
    )
    report.add(
        "a simple request from app.example.com gets its header", simple_ok.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN,
        observed=f"allow-origin {simple_ok.headers.get('access-control-allow-origin')!r}", expected=ALLOWED_ORIGIN,
        hint="The same middleware answers both preflights and ordinary requests.",
    )
