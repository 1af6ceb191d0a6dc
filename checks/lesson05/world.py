"""Lesson 05's stand-in world: the API key and the allowed origin, the slow backend behind /slow, the
log book that keeps the app's log records, and the course's own middleware (`RequestContext`,
`ApiKeyGuard`) for the exercises that build on an earlier one. No judging here (one
`judge_<exercise>.py` per check).
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

from ..timing import InFlight


# A new key in each kernel: the guard must read API_KEY, not a copy of it typed in.
API_KEY = "key-" + secrets.token_hex(12)
ALLOWED_ORIGIN = "https://app.example.com"
# What /boom's error message carries: none of it may reach the client.
BOOM_SECRET = "swordfish"
BOOM_MESSAGE = f"database connection failed (password={BOOM_SECRET})"

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
