"""Lesson 05, middleware: a request id and a timing header on every response (the 500 too),
the same as pure ASGI middleware checked against the ASGI spec, an API-key guard placed so its
401 is tagged too, and CORS probed with hostile origins, methods and headers.

Every check builds its app INSIDE the check from the learner's parts (`lesson_app` and the
learner's middleware), so a middleware that hangs or blocks is stopped by the check's limit.
Verdicts come from exact signals: what came back, what the ASGI messages were, how many calls
of /slow's backend overlapped (`backend.in_flight.peak`). The one clock is X-Process-Time,
judged by enclosure: it must cover the backend call it timed and fit inside the client's time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
import uuid

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from .asgi_spec import ScriptedApp, ScriptedError, exchange, http_scope
from .harness import AppStartupError, describe_exception, serve
from .observe import json_body
from .runner import check
from .timing import InFlight

# A new key in each kernel: the guard must read API_KEY, not a copy of it typed in.
API_KEY = "key-" + secrets.token_hex(12)
ALLOWED_ORIGIN = "https://app.example.com"
# What /boom's error message carries: none of it may reach the client.
BOOM_SECRET = "swordfish"
BOOM_MESSAGE = f"database connection failed (password={BOOM_SECRET})"
INTERNALS = (BOOM_SECRET, "database connection failed", "RuntimeError", "Traceback")

logger = logging.getLogger("course.lesson05")


# ---- what the lesson's app uses ----------------------------------------------------------------

class Backend:
    """/slow's upstream. Each call waits a new random 30–80 ms, so no order or duration can be
    assumed; `in_flight` counts exactly how many calls overlapped and how long each took."""

    def __init__(self, low_s: float = 0.03, high_s: float = 0.08):
        self.low_s, self.high_s = low_s, high_s
        self.in_flight = InFlight()
        self._gate: tuple[int, asyncio.Event, float] | None = None

    def reset(self) -> None:
        self.in_flight.reset()
        self._gate = None

    def hold_until(self, calls: int, timeout_s: float = 1.0) -> None:
        """Make the next calls wait until `calls` of them are in flight together (or `timeout_s`
        passed): overlap is then a fact however slow the machine, and serialised code is seen
        exactly (its calls never meet), at the cost of one timeout."""
        self._gate = (calls, asyncio.Event(), timeout_s)

    async def get(self) -> dict:
        with self.in_flight.call():
            if self._gate is not None:
                calls, opened, timeout_s = self._gate
                if self.in_flight.current >= calls:
                    opened.set()
                try:
                    async with asyncio.timeout(timeout_s):
                        await opened.wait()
                except TimeoutError:
                    opened.set()  # they are not coming together: let every call through now
            await asyncio.sleep(random.uniform(self.low_s, self.high_s))
        return {"rows": 3}


backend = Backend()


class LogBook(logging.Handler):
    """Keeps a logger's records, traceback and all, and prints nothing: `lines()` shows them.

    A logger with no handler anywhere sends each record, traceback included, to stderr
    (Python's "last resort" handler): a wall of text under every passing check.
    """

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        del self.records[:-200]

    def lines(self, last: int = 5) -> list[str]:
        out = []
        for record in self.records[-last:]:
            line = f"{record.levelname} {record.name}: {record.getMessage()}"
            if record.exc_info and record.exc_info[0] is not None:
                line += f"  [{record.exc_info[0].__name__}, traceback kept]"
            out.append(line)
        return out

    @classmethod
    def attach(cls, log: logging.Logger) -> "LogBook":
        """Give `log` one LogBook (a cell run twice does not add a second)."""
        for handler in list(log.handlers):
            if isinstance(handler, LogBook):
                log.removeHandler(handler)
        book = cls()
        log.addHandler(book)
        return book


course_log = LogBook.attach(logger)


def in_admin_section(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


class RequestContext:
    """The course's own request-context middleware (pure ASGI), for the exercises that build on it.

    Sets `request.state.request_id` (the client's X-Request-ID, else a new one) and adds
    X-Request-ID and X-Process-Time to the response. With `handle_errors=True` it logs an error
    raised before the response started and sends the 500 itself; with False it leaves the error
    to the app's catch-all handler (lesson 06). An error after the start always goes on to the
    server, which then drops the connection.
    """

    def __init__(self, app, handle_errors: bool = True):
        self.app = app
        self.handle_errors = handle_errors

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        sent_id = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"")
        request_id = sent_id.decode("latin-1") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_tagged(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                elapsed_ms = (time.perf_counter() - start) * 1000
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1")),
                                      (b"x-process-time", f"{elapsed_ms:.1f}".encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_tagged)
        except Exception:
            if started or not self.handle_errors:
                raise
            logger.exception("request %s failed", request_id)
            await JSONResponse({"detail": "Internal Server Error"}, status_code=500)(scope, receive, send_tagged)


class ApiKeyGuard:
    """The course's own guard (pure ASGI): the /admin section needs X-API-Key == API_KEY."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and in_admin_section(scope["path"]):
            sent = next((value for name, value in scope["headers"] if name == b"x-api-key"), b"")
            if not secrets.compare_digest(sent, API_KEY.encode()):
                await JSONResponse({"detail": "missing or invalid API key"}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def course_admin_app(lesson_app) -> FastAPI:
    """Exercise 3 done the course's way: the guard inside, RequestContext around it."""
    app = lesson_app()
    app.add_middleware(ApiKeyGuard)
    app.add_middleware(RequestContext)
    return app


# ---- saying what happened, shortly -------------------------------------------------------------

def short_error(exc: BaseException) -> str:
    """One line for an exception; a validation error gives its first field, not its whole text."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            items = list(errors())
        except Exception:  # noqa: BLE001
            items = []
        if items and isinstance(items[0], dict):
            first = items[0]
            loc = ".".join(str(part) for part in first.get("loc", ()) if part not in ("response", "body")) or "value"
            more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
            got = type(first.get("input")).__name__
            return f"{type(exc).__name__}: {loc}: {first.get('msg')} (got a {got}){more}"
    return describe_exception(exc)


def observed(response, client=None) -> str:
    """`404 {"detail":"Not Found"}`; for a 5xx, what the app raised, in one line."""
    if client is not None and response.status_code >= 500:
        errors = client.errors_for(response.request.url.path)
        if errors:
            return f"{response.status_code}: the app raised {short_error(errors[-1].exception)}"
    body = response.text if len(response.text) <= 120 else response.text[:117] + "..."
    return f"{response.status_code} {body}".rstrip()


def _app_error(client, path: str, records=None):
    """What raised while `path` was served: an error that reached the server, else one a
    middleware caught and logged (it is in a log record's exc_info)."""
    errors = client.errors_for(path)
    if errors:
        return errors[-1].exception
    logged = [r.exc_info[1] for r in (records.records if records else []) if r.exc_info and r.exc_info[1] is not None]
    return logged[-1] if logged else None


def _cause_hint(exc) -> str:
    """A hint for a 500 the lesson's routes would not give, by what raised."""
    name = type(exc).__name__ if exc is not None else ""
    if name in ("ResponseValidationError", "ValidationError"):
        return ("The route's return type says `request_id` is a str: store the id as a string "
                "(`uuid.uuid4().hex`, or the header's value), not a UUID object.")
    if name == "NotImplementedError":
        return "The exercise is not written yet: replace `raise NotImplementedError` with your code."
    if name == "KeyError":
        return ("A header that is not there raises KeyError with `headers[...]`: use `headers.get(...)` and "
                "fall back to a new id.")
    if isinstance(exc, TypeError) and "'NoneType' object is not callable" in str(exc):
        return ("Something returned None where a response was due: a middleware (or a handler) must end with "
                "`return` the response — `call_next`'s or one you built.")
    if isinstance(exc, (AttributeError, TypeError)) and "encode" in str(exc):
        return "Header values are strings (or bytes in ASGI): convert the id and the time before setting them."
    return f"Your middleware raised {name}: it runs on every request, so it breaks every request. Fix it first."


class _Records(logging.Handler):
    """Collects every record (on the root logger, so any logger the learner uses is seen)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc_info):
        logging.getLogger().removeHandler(self)


def _mentions(record: logging.LogRecord, text: str) -> bool:
    try:
        if text in record.getMessage():
            return True
    except Exception:  # noqa: BLE001 - a bad format string is the learner's; look at the raw parts
        if text in str(record.msg) or text in str(record.args):
            return True
    return any(text in str(value) for key, value in vars(record).items() if key not in ("msg", "args", "message"))


def _process_ms(response) -> float | None:
    try:
        value = float(response.headers.get("x-process-time", ""))
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _timing_hint(measured, backend_ms: float, client_ms: float) -> str:
    if measured is None:
        return "Write the time as a plain number of milliseconds, e.g. `f\"{elapsed_ms:.1f}\"`."
    if backend_ms - 1 <= measured * 1000 <= client_ms + 1:
        return "That is the time in seconds: the header is in milliseconds (× 1000)."
    if measured < backend_ms:
        return ("It is shorter than the route's own wait: take wall-clock time (`time.perf_counter()`) before "
                "`call_next` and after it (`time.process_time()` counts CPU only, not waiting).")
    return "It is longer than the whole request took: time only the call that runs the route, in milliseconds."


def _field(response, name: str):
    body = json_body(response)
    return body.get(name) if isinstance(body, dict) else None


def _detail(response):
    return _field(response, "detail")


def _client_id() -> str:
    return f"client-{random.randint(10**6, 10**7)}"


# ---- exercises 1 and 2: a request id and a timing header on every response ----------------------

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


# ---- exercise 3: the guard, and where it sits -------------------------------------------------

def _key_probes() -> list[tuple[str, dict, str]]:
    """(what, request kwargs, hint when it got in) for keys that must not open /admin."""
    wrong = "key-" + secrets.token_hex(12)
    return [
        ("no key", {}, "A request without the header must get 401 too."),
        ("an empty key", {"headers": {"X-API-Key": ""}},
         "An empty header is still a wrong key: compare the value with API_KEY, do not just test that it is there."),
        ("another key", {"headers": {"X-API-Key": wrong}},
         "Any value but API_KEY must fail: compare the header's value with API_KEY."),
        ("the key in upper case", {"headers": {"X-API-Key": API_KEY.upper()}},
         "Keys are case-sensitive: compare exactly, without `.lower()`."),
        ("the key's first half", {"headers": {"X-API-Key": API_KEY[: len(API_KEY) // 2]}},
         "Compare the whole value: a prefix of the key is not the key."),
        ("the key plus more", {"headers": {"X-API-Key": API_KEY + "0"}},
         "Compare the whole value: `in` or `startswith` lets longer values through."),
        ("bytes that are not ASCII", {"headers": {"X-API-Key": b"\xff\xfe" + secrets.token_hex(4).encode()}},
         "Compare the whole value with API_KEY."),
        ("the key as a bearer token", {"headers": {"Authorization": f"Bearer {API_KEY}"}},
         "Only the X-API-Key header counts."),
        ("the key in the query string", {"params": {"api_key": API_KEY, "x-api-key": API_KEY}},
         "Only the X-API-Key header counts: a key in the URL ends up in logs and browser history."),
    ]


def _guard_500_hint(exc) -> str:
    name = type(exc).__name__ if exc is not None else ""
    if "HTTPException" in name:
        return ("Exception handlers sit inside the middleware stack, around the routes: an HTTPException raised "
                "in middleware reaches no handler. Return a `JSONResponse(status_code=401, ...)` instead.")
    if isinstance(exc, TypeError) and "non-ASCII" in str(exc):
        return ("`secrets.compare_digest` refuses str with non-ASCII characters, and a client chooses what it "
                "sends: compare bytes (`.encode()` both sides).")
    if isinstance(exc, TypeError) and "NoneType" in str(exc) and "not callable" not in str(exc):
        return "With no header, `.get()` gives None: compare a default (`\"\"`) instead, so a missing key is a 401."
    return _cause_hint(exc)


@check("Lesson 05 · /admin is guarded: 401 for every wrong key, tagged like any response", limit_s=15)
async def check_guard(report, admin_api):
    try:
        app = admin_api()
    except Exception as exc:  # noqa: BLE001
        report.fail("admin_api() builds the app", observed=short_error(exc), expected="an app",
                    hint=_cause_hint(exc))
        return
    if app is None or not callable(app):
        report.fail("admin_api() builds the app", observed=f"it returned {app!r:.60}", expected="the app",
                    hint="End with `return app`.")
        return
    async with serve(app, raise_app_exceptions=False) as client:
        # 1. Wrong keys on /admin/stats.
        let_in, bad_401 = [], []
        for what, kwargs, hint in _key_probes():
            with _Records() as records:
                response = await client.get("/admin/stats", **kwargs)
            if response.status_code >= 500:
                exc = _app_error(client, "/admin/stats", records)
                report.fail(f"GET /admin/stats with {what} → 401", observed=observed(response, client),
                            expected="401", hint=_guard_500_hint(exc))
                return
            if response.status_code != 401:
                let_in.append((what, response, hint))
            elif not isinstance(_detail(response), str) or not _detail(response):
                bad_401.append((what, response))
            elif API_KEY in response.text:
                bad_401.append((what, response))
        if let_in:
            what, response, hint = let_in[0]
            report.fail(
                "every wrong key gets 401", observed="; ".join(f"{w} → {r.status_code}" for w, r, _ in let_in[:3]),
                expected="401 for each of: " + ", ".join(w for w, _, _ in _key_probes()),
                hint=("403 means \"known, but not allowed\"; no key or a wrong key is 401 (not authenticated)."
                      if response.status_code == 403 else hint))
        else:
            report.add("every wrong key gets 401", True, observed=f"{len(_key_probes())} kinds of wrong key")
        if not bad_401:
            report.add("the 401 is JSON with a `detail` message, and does not show the key", True)
        else:
            what, response = bad_401[0]
            report.fail("the 401 is JSON with a `detail` message, and does not show the key",
                        observed=f"{what} → {observed(response)}", expected='{"detail": "..."}',
                        hint=("Never echo the expected key." if API_KEY in response.text else
                              "Answer like FastAPI does: `JSONResponse({\"detail\": ...}, status_code=401)`."))

        # 2. The whole section, and nothing else.
        unknown = f"/admin/reports-{random.randint(100, 999)}"
        section = ["/admin", "/admin/stats", unknown, "/%61dmin/stats"]
        open_doors = []
        for path in section:
            response = await client.get(path)
            if response.status_code < 400 or response.status_code == 404:
                open_doors.append((path, response.status_code))
        hint = "Guard the section by path, before any route runs: `/admin` and everything under `/admin/`."
        if any(p == "/admin/stats" for p, _ in open_doors):
            hint = "Without any key the guard let the request through: see the first item."
        elif any(p == "/admin" for p, _ in open_doors):
            hint = "`/admin` itself is in the section: a test for `startswith(\"/admin/\")` misses it."
        elif any(p == unknown and s == 404 for p, s in open_doors):
            hint = ("A path no route has answered 404 without a key: so a scan learns which admin pages exist. "
                    "The guard goes by path, for every request, found or not.")
        elif any(p.startswith("/%") for p, _ in open_doors):
            hint = ("The route matched the decoded path (`scope[\"path\"]`, `request.url.path`); your guard "
                    "looked at another form of it. Guard the path the router uses.")
        report.add("the whole /admin section needs the key", not open_doors,
                   observed="; ".join(f"{p} → {s}" for p, s in open_doors), expected=f"401 for {', '.join(section)}",
                   hint=hint)
        right = {"X-API-Key": API_KEY}
        checks = [("/admin/stats", right, 200), ("/admin", right, 200), (unknown, right, 404),
                  ("/items/7", {}, 200), ("/admin-guide", {}, 200), ("/items/7", {"X-API-Key": "nope"}, 200)]
        wrong, crashed = [], None
        for path, headers, status in checks:
            with _Records() as records:
                response = await client.get(path, headers=headers)
            if response.status_code != status:
                wrong.append(f"{path} {'with the key' if headers == right else 'with a wrong key' if headers else 'without a key'} "
                             f"→ {response.status_code}")
                if response.status_code >= 500 and crashed is None:
                    crashed = _app_error(client, path, records)
        report.add(
            "the right key opens the section; other paths pass untouched", not wrong, observed="; ".join(wrong[:3]),
            expected="the key: /admin/stats 200, /admin 200, unknown 404; no key: /items/7 and /admin-guide 200",
            hint=(_guard_500_hint(crashed) if crashed is not None else
                  "`startswith(\"/admin\")` also matches /admin-guide: compare whole path segments."
                  if any(w.startswith("/admin-guide") for w in wrong) else
                  "Only the /admin section needs the key; everywhere else, call the app as it is."
                  if any(w.startswith("/items") for w in wrong) else "With the right key, call the app unchanged."),
        )

        # 3. Order: the 401 is an answer like any other, tagged by RequestContext.
        rid = _client_id()
        denied = await client.get("/admin/stats", headers={"X-Request-ID": rid})
        if not 400 <= denied.status_code < 500:
            return  # the guard let it in: the first item says so
        tagged = denied.headers.get("x-request-id") == rid and _process_ms(denied) is not None
        report.add(
            "the 401 carries X-Request-ID and X-Process-Time", tagged,
            observed="" if tagged else f"{denied.status_code}; X-Request-ID {denied.headers.get('x-request-id')!r}, "
                                       f"X-Process-Time {denied.headers.get('x-process-time')!r}",
            expected=f"the 401 with X-Request-ID {rid} and a process time",
            hint="The middleware added last runs first: your guard answered before RequestContext saw the request. "
                 "Add the guard first, RequestContext after it.",
        )


# ---- exercise 4: CORS ------------------------------------------------------------------------

def lookalike_origins() -> list[tuple[str, str]]:
    """(origin, why it is another site) — each differs from ALLOWED_ORIGIN in one way."""
    return [
        ("https://app.example.com.evil.io", "the allowed origin is only its prefix"),
        ("https://app.example.co", "it is only the start of the allowed origin"),
        ("https://evilapp.example.com", "it only ends like the allowed host"),
        ("http://app.example.com", "another scheme is another origin"),
        ("https://app.example.com:8443", "another port is another origin"),
        ("https://sub.app.example.com", "a subdomain is another origin"),
        ("https://appxexample.com", "a regex with unescaped dots matches it"),
        ("null", "'null' is what sandboxed iframes and file:// pages send: anyone can"),
        (f"https://evil{random.randint(10, 99)}.example", "an unrelated site"),
    ]


def _cors_config(app) -> dict:
    """The CORSMiddleware options the learner used (for hints only; verdicts come from responses)."""
    for entry in getattr(app, "user_middleware", []):
        if getattr(entry, "cls", None).__name__ == "CORSMiddleware":
            return dict(entry.kwargs)
    return {}


def _preflight(origin: str, method: str = "GET", headers: str | None = "X-API-Key") -> dict:
    out = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        out["Access-Control-Request-Headers"] = headers
    return out


def _listed(header_value: str, wanted: str) -> bool:
    items = [part.strip().lower() for part in (header_value or "").split(",")]
    return wanted.lower() in items or "*" in items


@check("Lesson 05 · CORS lets app.example.com in with credentials, and nothing else", limit_s=15)
async def check_cors(report, lesson_app, add_cors):
    app = course_admin_app(lesson_app)
    try:
        returned = add_cors(app)
    except Exception as exc:  # noqa: BLE001
        report.fail("add_cors(app) runs", observed=short_error(exc), expected="no error", hint=_cause_hint(exc))
        return
    app = returned if returned is not None else app
    config = _cors_config(app)
    async with serve(app, raise_app_exceptions=False) as client:
        # 1. The allowed origin: preflights for GET and POST, with X-API-Key, with credentials.
        failures = []
        for method, headers in (("GET", "X-API-Key"), ("POST", "X-API-Key, Content-Type")):
            r = await client.options("/items/7", headers=_preflight(ALLOWED_ORIGIN, method, headers))
            ok = (200 <= r.status_code < 300 and r.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
                  and r.headers.get("access-control-allow-credentials") == "true"
                  and _listed(r.headers.get("access-control-allow-methods", ""), method)
                  and all(_listed(r.headers.get("access-control-allow-headers", ""), h.strip()) or h.strip() == "Content-Type"
                          for h in headers.split(",")))
            if not ok:
                failures.append(f"{method}: {r.status_code} {r.text[:40]!r}; allow-origin "
                                f"{r.headers.get('access-control-allow-origin')!r}, credentials "
                                f"{r.headers.get('access-control-allow-credentials')!r}")
        origins = config.get("allow_origins", ())
        one_string = isinstance(origins, str)  # `origin in "https://..."` is a substring test
        origins = [origins] if one_string else list(origins)
        if any(isinstance(o, str) and o.rstrip("/") != o for o in origins):
            hint = "An origin has no path: 'https://app.example.com', without the trailing slash."
        elif config and not config.get("allow_credentials"):
            hint = ("The browser sends cookies only when the answer says `Access-Control-Allow-Credentials: true`: "
                    "`allow_credentials=True`.")
        elif failures and all(f.startswith("POST") for f in failures):
            hint = "Allow both methods the app uses: `allow_methods=[\"GET\", \"POST\"]`."
        else:
            hint = ("`CORSMiddleware(allow_origins=[ALLOWED_ORIGIN], allow_credentials=True, allow_methods=[...], "
                    "allow_headers=[\"X-API-Key\"])`; an origin is scheme + host (+ port), exactly.")
        if not report.add("app.example.com: preflights for GET and POST with X-API-Key pass, with credentials",
                          not failures, observed="; ".join(failures[:2]),
                          expected=f"2xx, Access-Control-Allow-Origin {ALLOWED_ORIGIN}, credentials true, "
                                   "the method and X-API-Key allowed", hint=hint):
            return
        simple = await client.get("/items/7", headers={"Origin": ALLOWED_ORIGIN})
        vary = simple.headers.get("vary", "")
        ok = simple.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN \
            and simple.headers.get("access-control-allow-credentials") == "true" and _listed(vary, "origin")
        report.add(
            "app.example.com: responses carry its origin, credentials, and Vary: Origin", ok,
            observed="" if ok else f"allow-origin {simple.headers.get('access-control-allow-origin')!r}, credentials "
                     f"{simple.headers.get('access-control-allow-credentials')!r}, vary {vary!r}",
            expected=f"{ALLOWED_ORIGIN}, true, Vary listing Origin",
            hint="The same CORSMiddleware answers ordinary requests; `Vary: Origin` tells caches the answer "
                 "depends on the origin.",
        )

        # 2. Lookalike origins: no Access-Control-Allow-Origin, preflight or not.
        leaks = []
        for origin, why in lookalike_origins():
            pre = await client.options("/items/7", headers=_preflight(origin))
            get = await client.get("/items/7", headers={"Origin": origin})
            for kind, r in (("preflight", pre), ("GET", get)):
                allowed = r.headers.get("access-control-allow-origin")
                if allowed and (kind == "GET" or 200 <= r.status_code < 300):
                    leaks.append((origin, why, kind, allowed))
                    break
        if leaks:
            origin, why, kind, allowed = leaks[0]
            if one_string:
                hint = (f"`allow_origins` takes a list of origins. Given one string, CORSMiddleware tests "
                        f"`origin in \"{ALLOWED_ORIGIN}\"`, a search in the text: any piece of it passes, "
                        f"{origin} too.")
            elif "*" in origins and config.get("allow_credentials"):
                hint = ("With `allow_credentials=True`, `allow_origins=[\"*\"]` makes Starlette echo ANY origin back, "
                        "so any site can read your users' data with their cookies. List the one origin.")
            elif config.get("allow_origin_regex"):
                hint = (f"Your allow_origin_regex also matches {origin} ({why}): escape the dots and spell out "
                        "scheme and port — or list the origin exactly.")
            else:
                hint = f"{origin} is not {ALLOWED_ORIGIN}: {why}. Allow exactly one origin."
        else:
            hint = ""
        report.add(
            "lookalike origins get no Access-Control-Allow-Origin", not leaks,
            observed="; ".join(f"{o} ({k}) got {a!r}" for o, _, k, a in leaks[:2]),
            expected="no such header for: " + ", ".join(o for o, _ in lookalike_origins()[:7]), hint=hint,
        )

        # 3. Methods and headers beyond GET/POST and X-API-Key are refused.
        widened = []
        for method, headers in (("DELETE", "X-API-Key"), ("PUT", None), ("GET", "X-Admin-Override")):
            r = await client.options("/items/7", headers=_preflight(ALLOWED_ORIGIN, method, headers))
            granted = 200 <= r.status_code < 300 and _listed(r.headers.get("access-control-allow-methods", ""), method) \
                and (headers is None or all(_listed(r.headers.get("access-control-allow-headers", ""), h.strip())
                                            for h in headers.split(",")))
            if granted:
                widened.append(f"{method}" + (f" with {headers}" if headers else "") + f" → {r.status_code}")
        report.add(
            "other methods and headers are refused", not widened, observed="; ".join(widened),
            expected="preflights for DELETE, PUT, or an X-Admin-Override header refused",
            hint=("`[\"*\"]` opens every method or header to the allowed site's scripts: list GET and POST, and "
                  "X-API-Key." if "*" in config.get("allow_methods", ()) or "*" in config.get("allow_headers", ())
                  else "List only the methods (GET, POST) and headers (X-API-Key) the app needs."),
        )

        # 4. CORS answers before the guard: a preflight carries no key, and the 401 must be readable.
        pre = await client.options("/admin/stats", headers=_preflight(ALLOWED_ORIGIN))
        denied = await client.get("/admin/stats", headers={"Origin": ALLOWED_ORIGIN})
        ok = 200 <= pre.status_code < 300 and denied.status_code == 401 \
            and denied.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
        report.add(
            "a preflight to /admin needs no key, and the 401 is readable by app.example.com", ok,
            observed="" if ok else f"preflight {pre.status_code}; GET without key {denied.status_code}, allow-origin "
                     f"{denied.headers.get('access-control-allow-origin')!r}",
            expected=f"preflight 2xx; 401 with allow-origin {ALLOWED_ORIGIN}",
            hint="Browsers send preflights without keys or cookies: CORS must run before the guard — added last.",
        )
