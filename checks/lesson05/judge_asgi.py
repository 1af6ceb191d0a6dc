"""Lesson 05, exercise 2's check: RequestContextMiddleware is pure ASGI that keeps the spec,
driven through `checks.asgi_spec`'s spec-checking `send`/`receive`.
"""

from __future__ import annotations

import secrets

from ..asgi_spec import ScriptedApp, exchange, http_scope
from ..runner import check
from .judge_common import _Records, _cause_hint, _client_id, short_error
from .judge_headers import _judge_request_context


# ---- exercise 2: pure ASGI, against the spec --------------------------------------------------

SPEC_HINTS = [
    ("not lowercase", "ASGI header names are lowercase bytes (`b\"x-request-id\"`); Starlette's own middleware looks "
                      "headers up by lowercase name."),
    ("not bytes", "In ASGI, header names and values are bytes: `request_id.encode()`."),
    ("a second http.response.start", "Once `http.response.start` went out it cannot be taken back: when the app "
                                     "fails after that, re-raise instead of sending a 500. (Is your flag really "
                                     "set? Assigning it inside your `send` needs `nonlocal`.)"),
    ("as if complete", "Do not end the body for a failed app: re-raise, so the server drops the connection and the "
                       "client knows the body was cut."),
    ("without ending the body", "Every response needs a last `http.response.body` with `more_body` False; when the "
                                "app failed after the start, re-raise instead of returning."),
    ("without sending http.response.start", "Send something for every request: call the app, or send a whole "
                                            "response (start, then body)."),
    ("after the response had ended", "Nothing may follow the body with `more_body` False."),
    ("still not finished", "Something waits forever: does your middleware read `receive` itself, leaving the app "
                           "waiting for a body that already went?"),
]


def _spec_hint(violations: list[str]) -> str:
    for marker, hint in SPEC_HINTS:
        if any(marker in v for v in violations):
            return hint
    return "Pass each message on as the app sends it, changing only the start message's headers."


def _inner_headers(marker: str):
    return [(b"content-type", b"text/plain; charset=utf-8"), (b"x-inner", marker.encode())]


@check("Lesson 05 · RequestContextMiddleware is pure ASGI that keeps the spec", limit_s=20)
async def check_asgi_middleware(report, lesson_app, middleware):
    if not isinstance(middleware, type) or not callable(getattr(middleware, "__call__", None)):
        report.fail("a middleware class", observed=f"got {type(middleware).__name__} {middleware!r:.60}",
                    expected="a class whose __init__ takes the app and whose __call__ takes scope, receive, send",
                    hint="Pure ASGI middleware is a class: `__init__(self, app)` and `async __call__(self, scope, receive, send)`.")
        return

    # 0. The lifespan (and any other scope) passes straight through.
    inner = ScriptedApp()
    lifespan = await exchange(middleware(inner), {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                              inner=inner, limit_s=1.0)
    passed = lifespan.error is None and not lifespan.timed_out and inner.calls == 1 and \
        lifespan.spec.count("lifespan.startup.complete") == 1
    if not report.add(
        "the lifespan scope passes through untouched", passed,
        observed=(f"your middleware raised {short_error(lifespan.error)} on a lifespan scope" if lifespan.error
                  else "the app never got the lifespan scope" if inner.calls == 0 else "; ".join(lifespan.violations)),
        expected="the app gets the lifespan scope, and its startup completes",
        hint=_cause_hint(lifespan.error) if isinstance(lifespan.error, NotImplementedError) else
        "Your middleware is called for every scope, the lifespan's too: when `scope[\"type\"] != \"http\"`, "
        "`await self.app(scope, receive, send)` and return.",
    ):
        return

    # 1. Through the lesson's app: the same promises as exercise 1.
    try:
        app = lesson_app(asgi_middleware=middleware)
    except Exception as exc:  # noqa: BLE001
        report.fail("the app builds with your middleware", observed=short_error(exc), expected="no error",
                    hint="`app.add_middleware(RequestContextMiddleware)` calls your `__init__(app)` with the app only.")
        return
    if not await _judge_request_context(report, app, pure_asgi=True):
        return

    # 2. Straight from ASGI: a streamed response, a request body, the lifespan's state.
    marker = secrets.token_hex(4)
    settings = object()
    chunks = [f"row {i}\n".encode() for i in range(3)]
    inner = ScriptedApp(headers=_inner_headers(marker), chunks=chunks)
    rid = _client_id()
    body = [b'{"name": ', b'"lamp"}']
    result = await exchange(middleware(inner), http_scope("POST", "/upload", [("x-request-id", rid)],
                                                          state={"settings": settings}), body=body, inner=inner,
                            limit_s=1.0)
    problems = list(result.violations)
    if result.error is not None:
        problems.append(f"raised {short_error(result.error)}")
    reported = set(problems)
    if not report.add("a streamed response keeps the ASGI spec", not problems, observed="; ".join(problems[:2]),
                      expected="one start with lowercase bytes headers, bodies of bytes, one end",
                      hint=_spec_hint(problems)) and result.timed_out:
        return
    lost = [name for name in ("content-type", "x-inner") if name not in result.headers] if result.status is not None else []
    tags = [name for name in ("x-request-id", "x-process-time") if name not in result.headers]
    report.add(
        "the app's own headers stay, and yours are added", result.status == 200 and not lost and not tags
        and result.headers.get("x-request-id") == rid,
        observed=(f"status {result.status}; lost the app's {', '.join(lost)}" if lost else
                  f"status {result.status}; headers {sorted(result.headers)}") if lost or tags or result.status != 200
        or result.headers.get("x-request-id") != rid else "",
        expected=f"content-type and x-inner kept; x-request-id {rid} and x-process-time added",
        hint=("Add to `message[\"headers\"]` (a list of pairs); replacing it drops the app's own headers, "
              "content-type included." if lost else "Add both headers to the `http.response.start` message."),
    )
    report.add(
        "the chunks pass one by one, not held back", inner.buffered == 0 and result.spec.body_chunks == chunks,
        observed=(f"the first chunk had not reached the server {inner.ack_s * 1000:.0f} ms after the app sent it "
                  f"(timeline: {result.spec.timeline()})" if inner.buffered else
                  f"the server got {result.spec.body_chunks!r:.80}" if result.spec.body_chunks != chunks else ""),
        expected=f"each of the {len(chunks)} chunks sent on as it comes",
        hint="Await `send(message)` for every message as it arrives; keeping them until the end turns a stream "
             "(server-sent events, a download) into one late response.",
    )
    state = inner.scope.get("state") if isinstance(inner.scope, dict) else None
    kept = isinstance(state, dict) and state.get("settings") is settings and state.get("request_id") == rid
    report.add(
        "the lifespan's state and the request body reach the app", kept and inner.received == b"".join(body),
        observed="" if kept and inner.received == b"".join(body) else (f"the app got state {sorted(state) if isinstance(state, dict) else state!r}"
                  + ("" if inner.received == b"".join(body) else f"; body {inner.received!r}, not {b''.join(body)!r}")),
        expected="state with the lifespan's 'settings' and your 'request_id'; the whole body",
        hint=("`scope[\"state\"]` already holds what the lifespan yielded: add the id to it; a new dict throws "
              "that away." if not kept else "Leave `receive` to the app: a body your middleware reads is gone "
                                               "for the app."),
    )

    # 3. Errors: before the start, a 500 with the headers; after it, the error goes on to the server.
    rid = _client_id()
    with _Records():
        inner = ScriptedApp(fail_before_start=True)
        before = await exchange(middleware(inner), http_scope("GET", "/x", [("x-request-id", rid)]), inner=inner,
                                limit_s=1.0)
    problems = [v for v in before.violations if v not in reported]
    reported.update(problems)
    ok = not problems and not before.timed_out and before.status == 500 and before.headers.get("x-request-id") == rid \
        and "x-process-time" in before.headers and before.spec.ended
    report.add(
        "an error before the response: one whole 500, tagged", ok,
        observed="" if ok else "; ".join(problems[:2]) or (
            "nothing was sent: the error went on to the server" if before.status is None else
            f"status {before.status}, headers {sorted(before.headers)}"),
        expected=f"start 500 with x-request-id {rid} and x-process-time, then the body",
        hint=_spec_hint(problems) if problems else
        "Catch the app's error while nothing was sent, log it, and send the 500 through your tagging `send`.",
    )
    with _Records():
        inner = ScriptedApp(chunks=[b"row 1\n", b"row 2\n", b"row 3\n"], fail_after_chunks=1)
        midway = await exchange(middleware(inner), http_scope(), inner=inner, limit_s=1.0)
    problems = [v for v in midway.violations if v not in reported]
    if midway.error is None and not problems and not midway.timed_out:
        problems.append("the error was swallowed")
    report.add(
        "an error in the middle of the body goes on to the server", not problems and midway.error is not None
        and not midway.timed_out,
        observed=("; ".join(problems[:2]) + f" (timeline: {midway.spec.timeline()})") if problems else "",
        expected="start, the first chunk, then the error raised out of your middleware",
        hint=_spec_hint(problems) if problems and problems[0] != "the error was swallowed" else
        "After `http.response.start` went out, re-raise: the server then drops the connection, and the client "
        "knows the body is incomplete.",
    )
