"""Drive an ASGI app the way a server does, and record when each message left it.

`httpx.ASGITransport` waits for the whole ASGI call (background tasks included) and buffers
the body, so through it "the client had its answer before the task ran" cannot be seen, and
an endless stream hangs it. A `Recorder` talks ASGI to the app itself, like uvicorn does:

    async with record(app) as rec:
        exchange = await rec.post("/signups", json={"email": "ada@example.com"})
        # returns when the client has its whole answer; the app may still be working
        await rec.settle()          # now every ASGI call has returned (background tasks done)
    rec                             # a timeline: when the answer left, when the work ended

Every ASGI message is timestamped (`http.response.start`, each body chunk, the last one with
`more_body=False`), and so is what runs after it: the start and end of every Starlette/FastAPI
background task (traced automatically while a recorder is active) and any `mark("...")` that
lesson code emits, from the loop or from a thread. A mark made while a request is being
handled belongs to that request; marks from elsewhere (a worker task) stand on their own.

Streams: `max_chunks=n` reads n body chunks and then leaves, `disconnect_after_s=t` leaves
after t seconds: the app's `receive()` then returns `http.disconnect`, and what it still
sends is dropped and counted, as uvicorn does. `exchange.finished(timeout)` says whether
the app noticed and stopped.

The lifespan runs as `serve()` runs it (`asgi_lifespan.LifespanManager`; each request gets a
shallow copy of the lifespan state). On exit, ASGI calls still running get `graceful_s` to
end (a server's graceful shutdown), then are cancelled; then the lifespan shuts down; then
any task the app created that is still pending (a worker never stopped) is reported in
`rec.leaked_tasks` and cancelled, so nothing keeps running in the kernel.
"""

from __future__ import annotations

import asyncio
import contextvars
import json as jsonlib
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator
from urllib.parse import urlsplit

from asgi_lifespan import LifespanManager
from starlette.background import BackgroundTask

from . import harness
from .tasks import StartedTasks
from .harness import AppStartupError, DemoStopped, _learner_frame_of, describe_exception
from .waiting import wait_until
from .watchdog import CheckTimeout, limit_active, time_limit

SERVER = ("testserver", 80)
CLIENT = ("127.0.0.1", 50000)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

_active: list["Recorder"] = []
_current: contextvars.ContextVar["Exchange | None"] = contextvars.ContextVar("course_exchange", default=None)


# ---- what is recorded ---------------------------------------------------------------------------

@dataclass
class Event:
    """One thing that happened, in order (`seq`), at `t` seconds after the recorder started."""

    seq: int
    t: float
    kind: str  # request, response.start, response.body, response.end, app.return, app.error,
    #            disconnect, dropped, task.start, task.end, task.error, mark
    what: str
    exchange: "Exchange | None" = None
    data: dict = field(default_factory=dict)
    thread: int = 0
    task: asyncio.Task | None = None  # the asyncio task it happened in (None in a worker thread)

    def __repr__(self) -> str:
        where = f" [{self.exchange.label}]" if self.exchange is not None else ""
        return f"{self.t * 1000:8.1f} ms  {self.kind:<15} {self.what}{where}"


class Exchange:
    """One request as the client saw it, and what the app did with it until its ASGI call returned."""

    def __init__(self, label: str, method: str, path: str) -> None:
        self.label, self.method, self.path = label, method, path
        self.sent_at: float = 0.0
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[tuple[float, bytes]] = []
        self.started_at: float | None = None  # http.response.start
        self.ended_at: float | None = None  # the body message with more_body=False
        self.returned_at: float | None = None  # the ASGI call returned (or raised)
        self.disconnected_at: float | None = None  # the client left (max_chunks, disconnect_after_s)
        self.error: BaseException | None = None  # what the app raised, before or after answering
        self.protocol_errors: list[str] = []
        self.dropped = 0  # messages sent after the client had left
        self.cancelled = False  # still running at exit after the graceful period
        self.emulated_500 = False  # the app raised before answering: the server's own 500
        self.task: asyncio.Task | None = None
        self._answered = asyncio.Event()  # the client stops waiting: answer complete, or it left
        self._gone = asyncio.Event()  # receive() returns http.disconnect from now on
        self._returned = asyncio.Event()

    # what the client got
    @property
    def body(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return jsonlib.loads(self.body)

    def json_or_none(self):
        try:
            return self.json()
        except ValueError:
            return None

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)

    @property
    def answered(self) -> bool:
        """The client has the complete response."""
        return self.ended_at is not None

    @property
    def wait_s(self) -> float | None:
        """How long the client waited for its complete answer."""
        return None if self.ended_at is None else self.ended_at - self.sent_at

    @property
    def work_after_s(self) -> float | None:
        """How long the ASGI call went on after the answer was complete (background tasks)."""
        if self.ended_at is None or self.returned_at is None:
            return None
        return self.returned_at - self.ended_at

    @property
    def done(self) -> bool:
        return self.returned_at is not None

    async def finished(self, timeout: float | None = None) -> bool:
        """Wait (at most `timeout` s) for the ASGI call to return; True if it did."""
        try:
            async with asyncio.timeout(timeout):
                await self._returned.wait()
        except TimeoutError:
            return False
        return True

    def show(self) -> str:
        """`201 {"id": 3}` — one line, for a report."""
        if self.status is None:
            return "no response" + (f": the app raised {describe_exception(self.error)}" if self.error else "")
        body = self.text
        if len(body) > 160:
            body = body[:157] + "..."
        if self.status >= 500 and self.error is not None:
            return f"500: the app raised {describe_exception(self.error)}"
        return f"{self.status} {body}".rstrip()

    def __repr__(self) -> str:
        def ms(value):
            return "—" if value is None else f"{value * 1000:.0f} ms"

        return (f"<{self.label}: {self.status} answered at {ms(self.ended_at)}, "
                f"ASGI call returned at {ms(self.returned_at)}>")


# ---- marks --------------------------------------------------------------------------------------

def mark(what: str, *, kind: str = "mark", **data) -> None:
    """Record `what` now in every active recorder (callable from any thread)."""
    for recorder in list(_active):
        recorder.mark(what, kind=kind, **data)


def current_exchange() -> "Exchange | None":
    """The request being handled here (None in a worker, or outside any recorder)."""
    return _current.get()


# Starlette runs each background task through BackgroundTask.__call__: traced while a recorder
# is active, so a timeline shows when each task started and ended without any help.
_original_task_call = BackgroundTask.__call__


async def _traced_task_call(self) -> None:
    if not _active:
        return await _original_task_call(self)
    name = getattr(self.func, "__name__", None) or type(self.func).__name__
    mark(name, kind="task.start")
    try:
        await _original_task_call(self)
    except BaseException as exc:
        mark(name, kind="task.error", error=exc)
        raise
    mark(name, kind="task.end")


if not getattr(BackgroundTask.__call__, "_course_traced", False):  # once, even if reloaded
    _traced_task_call._course_traced = True
    BackgroundTask.__call__ = _traced_task_call


# ---- the recorder -------------------------------------------------------------------------------

def _with_state_copy(app):
    async def copy_state(scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            scope["state"] = dict(scope.get("state") or {})  # one copy per request, as uvicorn makes
        await app(scope, receive, send)

    return copy_state


class Recorder:
    """Sends requests to an ASGI app and records every message and mark, in order."""

    def __init__(self, app, title: str = "what the client saw, and what ran after") -> None:
        self.app = app
        self.title = title
        self.t0 = time.perf_counter()
        self.events: list[Event] = []
        self.exchanges: list[Exchange] = []
        self.leaked_tasks: list[str] = []
        self.shutdown_error: BaseException | None = None  # what the lifespan raised while shutting down
        self._lock = threading.Lock()
        self._own_tasks: set[asyncio.Task] = set()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _record(self, kind: str, what: str, exchange=None, **data) -> Event:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # a thread without an event loop
            task = None
        with self._lock:
            event = Event(len(self.events), self.now(), kind, what, exchange, data, threading.get_ident(), task)
            self.events.append(event)
        return event

    def mark(self, what: str, *, kind: str = "mark", exchange=None, **data) -> Event:
        """Record `what` now; it belongs to the request being handled, if any."""
        return self._record(kind, what, exchange if exchange is not None else _current.get(), **data)

    # ---- sending --------------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        url: str,
        *,
        json=None,
        content: bytes | str | None = None,
        headers: dict | None = None,
        label: str | None = None,
        max_chunks: int | None = None,
        disconnect_after_s: float | None = None,
    ) -> Exchange:
        """Send one request; return when the client has its whole answer (or has left).

        The app's ASGI call may go on (background tasks): `settle()` or
        `exchange.finished()` wait for it.
        """
        parts = urlsplit(url)
        body = b""
        header_list = [("host", SERVER[0])]
        if json is not None:
            body = jsonlib.dumps(json).encode()
            header_list.append(("content-type", "application/json"))
        elif content is not None:
            body = content.encode() if isinstance(content, str) else bytes(content)
        if body:
            header_list.append(("content-length", str(len(body))))
        for name, value in (headers or {}).items():
            header_list.append((name.lower(), str(value)))
        exchange = Exchange(label or f"{method} {parts.path}", method.upper(), parts.path)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},  # what uvicorn says
            "http_version": "1.1",
            "method": method.upper(),
            "scheme": "http",
            "path": parts.path,
            "raw_path": parts.path.encode(),
            "query_string": parts.query.encode(),
            "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in header_list],
            "client": CLIENT,
            "server": SERVER,
            "extensions": {},
        }
        self.exchanges.append(exchange)
        exchange.sent_at = self.now()
        self._record("request", f"{method.upper()} {url}", exchange)
        task = asyncio.create_task(self._call(exchange, scope, body, max_chunks), name=f"asgi {exchange.label}")
        exchange.task = task
        self._own_tasks.add(task)
        timer = None
        if disconnect_after_s is not None:
            timer = asyncio.get_running_loop().call_later(disconnect_after_s, self.disconnect, exchange)
        try:
            await exchange._answered.wait()
        finally:
            if timer is not None:
                timer.cancel()
        return exchange

    async def get(self, url: str, **kwargs) -> Exchange:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs) -> Exchange:
        return await self.request("POST", url, **kwargs)

    def disconnect(self, exchange: Exchange) -> None:
        """The client leaves: `receive()` returns http.disconnect, later messages are dropped."""
        if exchange.disconnected_at is not None or exchange.answered:
            return
        exchange.disconnected_at = self.now()
        self._record("disconnect", "the client left", exchange)
        exchange._gone.set()
        exchange._answered.set()

    async def _call(self, exchange: Exchange, scope: dict, body: bytes, max_chunks: int | None) -> None:
        body_given = False

        async def receive():
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await exchange._gone.wait()  # like uvicorn: wait until the client leaves or the answer is done
            return {"type": "http.disconnect"}

        async def send(message):
            if exchange.disconnected_at is not None:
                exchange.dropped += 1
                if exchange.dropped == 1:
                    self._record("dropped", "sent after the client had left (dropped)", exchange)
                await asyncio.sleep(0)  # a server's write would yield too; an endless sender cannot spin
                return
            kind = message.get("type")
            if kind == "http.response.start":
                if exchange.started_at is not None:
                    return self._protocol_error(exchange, "http.response.start sent twice")
                exchange.status = int(message["status"])
                exchange.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
                exchange.started_at = self._record("response.start", str(exchange.status), exchange).t
            elif kind == "http.response.body":
                if exchange.started_at is None:
                    return self._protocol_error(exchange, "http.response.body before http.response.start")
                if exchange.answered:
                    return self._protocol_error(exchange, "http.response.body after the response was complete")
                chunk = bytes(message.get("body", b""))
                more = bool(message.get("more_body", False))
                event = self._record("response.body" if more else "response.end", f"{len(chunk)} bytes", exchange)
                if chunk or not more:
                    exchange.chunks.append((event.t, chunk))
                if not more:
                    exchange.ended_at = event.t
                    exchange._gone.set()
                    exchange._answered.set()
                elif max_chunks is not None and sum(1 for _, c in exchange.chunks if c) >= max_chunks:
                    self.disconnect(exchange)
            else:
                return self._protocol_error(exchange, f"unexpected ASGI message {kind!r}")

        token = _current.set(exchange)
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            exchange.cancelled = True
            self._record("app.error", "cancelled", exchange)
        except BaseException as exc:  # recorded; a server logs it and the client keeps what it got
            exchange.error = exc
            self._record("app.error", describe_exception(exc), exchange, error=exc)
            if exchange.started_at is None and exchange.disconnected_at is None:
                await self._server_500(exchange)
        else:
            if exchange.started_at is None and exchange.disconnected_at is None:
                self._protocol_error(exchange, "the ASGI call returned without starting a response")
                await self._server_500(exchange)
            elif not exchange.answered and exchange.disconnected_at is None:
                self._protocol_error(exchange, "the ASGI call returned without completing the response")
        finally:
            _current.reset(token)
            exchange.returned_at = self._record("app.return", "ASGI call returned", exchange).t
            exchange._gone.set()
            exchange._answered.set()
            exchange._returned.set()

    def _protocol_error(self, exchange: Exchange, text: str) -> None:
        exchange.protocol_errors.append(text)
        self._record("app.error", text, exchange)
        raise RuntimeError(text)  # the app gets the error a server would raise

    async def _server_500(self, exchange: Exchange) -> None:
        """What uvicorn answers when the app raised before starting a response."""
        exchange.status = 500
        exchange.emulated_500 = True
        exchange.headers = [("content-type", "text/plain; charset=utf-8"), ("content-length", "21")]
        exchange.started_at = self._record("response.start", "500 (the server's own)", exchange).t
        event = self._record("response.end", "21 bytes", exchange)
        exchange.chunks.append((event.t, b"Internal Server Error"))
        exchange.ended_at = event.t

    # ---- waiting ----------------------------------------------------------------------------------
    async def settle(self, timeout: float | None = None) -> bool:
        """Wait until every ASGI call has returned (background tasks done); False on timeout."""
        pending = [e._returned.wait() for e in self.exchanges if not e.done]
        if not pending:
            return True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*pending)
        except TimeoutError:
            return False
        return True

    async def wait_for(self, predicate, timeout: float, poll_s: float = 0.005) -> bool:
        """Wait until `predicate()` holds (checked every `poll_s`), at most `timeout` s."""
        return await wait_until(predicate, timeout, poll_s)

    # ---- reading ----------------------------------------------------------------------------------
    def find(self, kind: str | None = None, what: str | None = None, exchange: Exchange | None = None) -> list[Event]:
        """Events of that kind, whose `what` starts with `what`, of that exchange (each optional)."""
        return [
            e for e in self.events
            if (kind is None or e.kind == kind)
            and (what is None or e.what.startswith(what))
            and (exchange is None or e.exchange is exchange)
        ]

    def event(self, kind: str, exchange: Exchange) -> Event | None:
        found = self.find(kind, exchange=exchange)
        return found[0] if found else None

    @property
    def app_errors(self) -> list[tuple[Exchange, BaseException]]:
        return [(e, e.error) for e in self.exchanges if e.error is not None]

    # ---- showing ----------------------------------------------------------------------------------
    def text(self) -> str:
        lines = [f"{self.title}:"]
        for exchange in self.exchanges:
            answer = (f"client left at {_ms(exchange.disconnected_at)}" if exchange.disconnected_at is not None
                      else f"answer complete at {_ms(exchange.ended_at)}")
            lines.append(f"  {exchange.label:<26} {exchange.status if exchange.status is not None else '—'}  sent at "
                         f"{_ms(exchange.sent_at)}, {answer}, ASGI call returned at {_ms(exchange.returned_at)}")
            for start, end, name, failed in _task_spans(self, exchange):
                lines.append(f"      task {name}: {_ms(start)} → {_ms(end)}" + ("  raised" if failed else ""))
        loose = [e for e in self.events if e.exchange is None]
        for event in loose[:12]:
            lines.append(f"  {event.what:<26} {_ms(event.t)}  (outside any request)")
        if len(loose) > 12:
            lines.append(f"  ... and {len(loose) - 12} more marks outside requests")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(self.text())

    def _repr_png_(self) -> bytes:
        from .plots import render_png

        rows = len(self.exchanges) + (1 if any(e.exchange is None for e in self.events) else 0)
        return render_png(lambda ax: draw_recording(ax, self), height=1.3 + 0.62 * max(rows, 1))


def _ms(value: float | None) -> str:
    return "     —   " if value is None else f"{value * 1000:6.0f} ms"


def _task_spans(recorder: Recorder, exchange: Exchange | None):
    """(start, end, name, raised) for each background task of `exchange`."""
    spans, open_ = [], {}
    for event in recorder.events:
        if event.exchange is not exchange or not event.kind.startswith("task."):
            continue
        if event.kind == "task.start":
            open_.setdefault(event.what, []).append(event.t)
        elif open_.get(event.what):
            spans.append((open_[event.what].pop(0), event.t, event.what, event.kind == "task.error"))
    for name, starts in open_.items():
        end = exchange.returned_at if exchange is not None and exchange.returned_at is not None else recorder.now()
        spans += [(start, end, name, False) for start in starts]
    return spans


WAIT_COLOR, AFTER_COLOR, TASK_COLOR, ERROR_COLOR, MARK_COLOR = "#2f81f7", "#d0d7de", "#bf8700", "#cf222e", "#57606a"


def draw_recording(ax, recorder: Recorder) -> None:
    """One row per request: the client's wait (blue), the ASGI call going on after the answer
    (grey), its background tasks (amber, red if one raised), body chunks (ticks), marks (dots)."""
    from .plots import LABEL_PT, MIN_BAR, TICK_PT, TITLE_PT, spaced

    rows = list(recorder.exchanges)
    loose = [e for e in recorder.events if e.exchange is None and e.kind in ("mark", "task.start", "task.end")]
    labels = [e.label for e in rows] + (["outside requests"] if loose else [])
    right = max([recorder.events[-1].t if recorder.events else 0.0] + [e.returned_at or 0 for e in rows]) * 1000
    span = right * 1.35 + 1
    shortest = span * MIN_BAR  # a 1 ms bar is still a few pixels wide
    for row, exchange in enumerate(rows):
        sent = exchange.sent_at * 1000
        end = (exchange.ended_at or exchange.disconnected_at or exchange.returned_at or recorder.now()) * 1000
        color = ERROR_COLOR if (exchange.status or 0) >= 500 else WAIT_COLOR
        ax.barh(row, max(end - sent, shortest), left=sent, height=0.5, color=color)
        tag = "answer" if exchange.answered else ("left" if exchange.disconnected_at is not None else "no answer")
        ax.text(max(end, sent + shortest), row - 0.28, f" {tag} {end:.0f} ms", fontsize=LABEL_PT, color=color,
                va="bottom")
        if exchange.returned_at is not None and exchange.returned_at * 1000 > end + 0.1:
            ax.barh(row, exchange.returned_at * 1000 - end, left=end, height=0.2, color=AFTER_COLOR)
        for start, stop, name, failed in _task_spans(recorder, exchange):
            ax.barh(row + 0.2, max((stop - start) * 1000, shortest), left=start * 1000, height=0.2,
                    color=ERROR_COLOR if failed else TASK_COLOR)
            ax.text(max(stop * 1000, start * 1000 + shortest), row + 0.2,
                    f" {name} {'raised' if failed else 'ended'} {stop * 1000:.0f} ms",
                    fontsize=LABEL_PT, color=ERROR_COLOR if failed else TASK_COLOR, va="center")
        for t, chunk in exchange.chunks:
            if chunk and end - sent > 4 * shortest:  # a tick would cut a short bar in two
                ax.plot([t * 1000, t * 1000], [row - 0.25, row + 0.25], color="white", linewidth=1)
        for event in recorder.find("mark", exchange=exchange):
            ax.plot(event.t * 1000, row - 0.05, "o", color=MARK_COLOR, markersize=4)
    if loose:
        row = len(rows)
        xs = [event.t * 1000 for event in loose]
        ax.plot(xs, [row] * len(xs), "o", color=MARK_COLOR, markersize=4, alpha=0.6)
        # a few labels, far enough apart not to overlap; the rest are counted
        shown = spaced(xs, span * 0.3)[:4]
        for index in shown:
            what = loose[index].what
            ax.text(xs[index], row - 0.2, what if len(what) <= 34 else what[:33] + "…", fontsize=LABEL_PT - 1,
                    color=MARK_COLOR, va="bottom")
        if len(loose) > len(shown):
            ax.text(span, row + 0.3, f"{len(loose)} events", fontsize=LABEL_PT - 1, color=MARK_COLOR,
                    ha="right", va="center")
    ax.set_yticks(range(len(labels)), labels, fontsize=TICK_PT)
    ax.tick_params(axis="x", labelsize=TICK_PT)
    ax.set_ylim(len(labels) - 0.4, -0.75)  # top row first, room for its label
    ax.set_xlabel("ms since the recorder started (blue: the client waits; grey: the app still works; "
                  "amber: background tasks)", fontsize=LABEL_PT)
    ax.set_title(recorder.title, fontsize=TITLE_PT)
    ax.set_xlim(0, span)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


# ---- running an app -----------------------------------------------------------------------------

def _task_where(task: asyncio.Task) -> str:
    """`outbox_worker() at line 7 of its cell`: where a pending task waits, in the learner's terms."""
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or getattr(coro, "__name__", None) or repr(coro)
    frame = getattr(coro, "cr_frame", None)
    inner = coro
    while getattr(inner, "cr_await", None) is not None and getattr(inner.cr_await, "cr_frame", None) is not None:
        inner = inner.cr_await
        frame = inner.cr_frame
    found = _learner_frame_of(frame) if frame is not None else None
    if found:
        func, line, filename = found
        in_cell = "ipykernel_" in filename or filename.startswith("<ipython")
        return f"{name}() waiting in {func}(), line {line}" + (" of its cell" if in_cell else "")
    return f"{name}()"


_MACHINERY = {"recorder.py", "timing.py", "harness.py", "watchdog.py", "runner.py", "blocking.py"}


def _from_package(task: asyncio.Task) -> bool:
    """A task of the checks' own machinery (a heartbeat, a gather of requests), not of the app.
    Stand-in services (lessonNN.py, services.py) count as the app's: a task the app started
    around `mailer.send(...)` is the app's task."""
    code = getattr(task.get_coro(), "cr_code", None)
    if code is None:
        return False
    filename = os.path.abspath(code.co_filename)
    return filename.startswith(_PACKAGE_DIR) and os.path.basename(filename) in _MACHINERY


@asynccontextmanager
async def record(app, *, title: str | None = None, limit_s: float | None = None, **kwargs) -> AsyncIterator[Recorder]:
    """Run `app`'s lifespan and yield a `Recorder` wired to it; shut it down on exit.

    Keyword arguments are `_record`'s. Outside a check the whole block has a time limit
    (`limit_s`, default `harness.DEMO_LIMIT_S`), as `serve()` has.
    """
    if limit_active():
        async with _record(app, title=title, **kwargs) as recorder:
            yield recorder
        return
    limit = harness.DEMO_LIMIT_S if limit_s is None else limit_s  # read now: graders shorten it
    try:
        async with time_limit(limit):
            async with _record(app, title=title, **kwargs) as recorder:
                yield recorder
    except CheckTimeout as exc:
        what = exc.what
        raise DemoStopped(f"stopped after {limit:g} s: {what}. Code run by this cell (yours, from an exercise "
                          "above?) never finished.") from None


@asynccontextmanager
async def _record(
    app,
    *,
    title: str | None = None,
    lifespan: bool = True,
    lifespan_timeout: float = 3.0,
    graceful_s: float = 10.0,
    leak_grace_s: float = 0.5,
    cancel_leaks: bool = True,
    raise_shutdown_errors: bool = True,
) -> AsyncIterator[Recorder]:
    if not callable(app):
        raise TypeError(f"record() needs an ASGI app such as FastAPI(), got {type(app).__name__}")
    manager = None
    target = _with_state_copy(app)
    if lifespan:
        manager = LifespanManager(target, startup_timeout=lifespan_timeout, shutdown_timeout=lifespan_timeout)
    recorder = Recorder(manager.app if manager else target, title or "what the client saw, and what ran after")
    started = StartedTasks().__enter__()  # only what the app starts is the app's (not the kernel's)
    _active.append(recorder)
    try:
        if manager is not None:
            try:
                await manager.__aenter__()
            except TimeoutError as exc:
                raise AppStartupError(f"its lifespan did not finish starting within {lifespan_timeout:g} s") from exc
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError() from exc
                cause = (exc.__cause__ or exc.__context__) if type(exc).__name__ == "LifespanNotSupported" else None
                raise AppStartupError(f"its lifespan raised {describe_exception(cause or exc)} while starting") from exc
        body_error: BaseException | None = None
        try:
            yield recorder
        except BaseException as exc:
            body_error = exc
        # Shutdown, as a server does it: running calls get a graceful period, then are cancelled.
        if body_error is None or isinstance(body_error, Exception):
            if not await recorder.settle(graceful_s):
                for exchange in recorder.exchanges:
                    if exchange.task is not None and not exchange.done:
                        exchange.task.cancel()
                await recorder.settle(1.0)
        else:
            for exchange in recorder.exchanges:
                if exchange.task is not None and not exchange.done:
                    exchange.task.cancel()
        blocked = [e.error for e in recorder.exchanges if e.error is not None and not isinstance(e.error, Exception)]
        if manager is not None:
            if body_error is None or isinstance(body_error, Exception):
                try:
                    await manager.__aexit__(None, None, None)
                except TimeoutError as exc:
                    recorder.shutdown_error = TimeoutError(
                        f"its lifespan did not finish shutting down within {lifespan_timeout:g} s")
                    recorder.shutdown_error.__cause__ = exc
                except Exception as exc:
                    recorder.shutdown_error = exc
                if recorder.shutdown_error is not None:
                    recorder._record("app.error", f"shutdown: {describe_exception(recorder.shutdown_error)}")
                    if raise_shutdown_errors and body_error is None:
                        body_error = recorder.shutdown_error
            else:
                await manager.__aexit__(type(body_error), body_error, body_error.__traceback__)
        if blocked:
            raise blocked[0]
        clean = body_error is None or isinstance(body_error, Exception)
        await _collect_leaks(recorder, started, leak_grace_s if clean else 0.0, cancel_leaks)
        if body_error is not None:
            raise body_error
    finally:
        started.__exit__(None, None, None)
        if recorder in _active:
            _active.remove(recorder)


async def _collect_leaks(recorder: Recorder, started: StartedTasks, grace_s: float, cancel: bool) -> None:
    """Tasks the app created that are still pending after its lifespan ended."""
    new = [t for t in started.pending() if t not in recorder._own_tasks and not _from_package(t)]
    if new:
        await asyncio.wait(new, timeout=grace_s)  # returns as soon as they are all done
    pending = [t for t in new if not t.done()]
    recorder.leaked_tasks = [_task_where(t) for t in pending]
    for name in recorder.leaked_tasks:
        recorder._record("mark", f"still running after shutdown: {name}")
    if cancel and pending:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)
