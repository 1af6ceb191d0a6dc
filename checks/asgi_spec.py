"""ASGI conformance, observed: what an app or a middleware sent, and which rules of the ASGI
HTTP spec it broke, as facts a report can show ("a second http.response.start, status 500").

    spec = SpecSend(send)                     # wrap the server's `send`
    await middleware(scope, receive, spec)    # ...run...
    spec.finish(error)                        # the app returned (or raised `error`)
    spec.violations                           # ["header name b'X-Request-ID' is not lowercase", ...]

`exchange(app, scope)` drives an ASGI app directly — no httpx, so nothing is buffered and
every message is timestamped — with a scripted request body and a time limit. `ScriptedApp`
is an inner app for judging middleware: it records the scope and body it got, streams its
chunks one at a time (each waits until the previous one reached the server, so a middleware
that buffers is seen, without a clock), and raises before or after the response started.

The rules (ASGI HTTP spec, "Response Start" and "Response Body"):
- exactly one `http.response.start`, before any `http.response.body`;
- its `status` an int, its headers an iterable of [name, value] pairs of bytes, names lowercase;
- a body's `body` is bytes and `more_body` a bool; after `more_body=False` nothing more is sent
  (the server ignores it);
- a response that started must end with `more_body=False`, unless the app raised: then the error
  must reach the server, which aborts the connection so the client knows the body is cut.
And for middleware: other scope types pass through untouched; the lifespan's `state` stays in
the scope the app gets; the request body reaches the app.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from . import harness
from .harness import DemoStopped
from .watchdog import CheckTimeout, limit_active, time_limit

CHECK_LIMIT_S = 2.0  # inside a check: how long one exchange may await (the check's own limit still holds)

RESPONSE_TYPES = {"http.response.start", "http.response.body", "http.response.trailers", "http.response.pathsend",
                  "http.response.zerocopysend", "http.response.early_hint", "http.response.debug"}


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Sent:
    """One message as it reached the server: when (seconds since the exchange began) and what."""

    at: float
    message: dict

    @property
    def type(self) -> str:
        return str(self.message.get("type"))


class SpecSend:
    """A `send` that records each message with its time and checks it against the spec.

    `violations` lists what broke a rule, in words; `status`, `headers` (lowercased names,
    as str), `body` and `ended` say what the client would have received.
    """

    def __init__(self, send=None, *, scope_type: str = "http", clock=time.perf_counter):
        self._send = send
        self.scope_type = scope_type
        self.clock = clock
        self.t0 = clock()
        self.sent: list[Sent] = []
        self.violations: list[str] = []
        self.status: int | None = None
        self.raw_headers: list[tuple[Any, Any]] = []
        self.body = b""
        self.ended = False  # a body with more_body=False arrived
        self.error: BaseException | None = None  # what the app raised, once finish() knows
        self._changed = asyncio.Event()

    # ---- what the client would see ----------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.status is not None

    @property
    def headers(self) -> dict[str, str]:
        """Response headers by lowercased name (the last value wins), decoded as latin-1."""
        out = {}
        for name, value in self.raw_headers:
            try:
                key = name.decode("latin-1").lower() if isinstance(name, (bytes, bytearray)) else str(name).lower()
                out[key] = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
            except Exception:  # noqa: BLE001 - a malformed pair is already a violation
                continue
        return out

    @property
    def body_chunks(self) -> list[bytes]:
        """The non-empty bodies, one per message, in order."""
        return [m.message.get("body") for m in self.sent
                if m.type == "http.response.body" and isinstance(m.message.get("body"), (bytes, bytearray))
                and m.message.get("body")]

    def count(self, message_type: str) -> int:
        return sum(1 for m in self.sent if m.type == message_type)

    async def wait_for(self, predicate, timeout_s: float) -> bool:
        """Wait (bounded) until `predicate(self)` holds; True if it did. Event-driven, no polling."""
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate(self):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return predicate(self)
        return True

    # ---- the spec ---------------------------------------------------------------------------------
    def _violate(self, text: str) -> None:
        if text not in self.violations:
            self.violations.append(text)

    async def __call__(self, message) -> None:
        if not isinstance(message, dict):
            self._violate(f"sent a {type(message).__name__}, not a message dict")
        else:
            self.sent.append(Sent(self.clock() - self.t0, dict(message)))
            if self.scope_type == "http":
                self._check_http(message)
        self._changed.set()
        if self._send is not None:
            await self._send(message)

    def _check_http(self, message: dict) -> None:
        kind = message.get("type")
        if self.ended:
            self._violate(f"sent {kind} after the response had ended (more_body=False): the server ignores it")
            return
        if kind == "http.response.start":
            if self.started:
                self._violate(f"a second http.response.start (status {message.get('status')!r}) after the "
                              f"response had started with {self.status}")
                return
            status = message.get("status")
            if type(status) is not int or not 100 <= status <= 599:
                self._violate(f"http.response.start has status {_short(status)}: an int from 100 to 599")
            self.status = status if isinstance(status, int) else -1
            self.raw_headers = self._check_headers(message.get("headers", []))
        elif kind == "http.response.body":
            if not self.started:
                self._violate("http.response.body before http.response.start")
            body = message.get("body", b"")
            if not isinstance(body, bytes):
                self._violate(f"a body of type {type(body).__name__} ({_short(body, 30)}): bodies are bytes")
            else:
                self.body += body
            more = message.get("more_body", False)
            if not isinstance(more, bool):
                self._violate(f"more_body is {_short(more)}: a bool")
            if not more:
                self.ended = True
        elif kind not in RESPONSE_TYPES:
            self._violate(f"a message of type {kind!r}, which an HTTP response does not have")

    def _check_headers(self, headers) -> list:
        try:
            pairs = list(headers)
        except TypeError:
            self._violate(f"headers is {_short(headers)}: an iterable of [name, value] pairs")
            return []
        kept = []
        for pair in pairs:
            try:
                name, value = pair
            except (TypeError, ValueError):
                self._violate(f"header {_short(pair)} is not a [name, value] pair")
                continue
            if not isinstance(name, bytes):
                self._violate(f"header name {_short(name)} is {type(name).__name__}, not bytes")
            elif name != name.lower():
                self._violate(f"header name {_short(name)} is not lowercase")
            elif not name or any(c in name for c in b" :\r\n"):
                self._violate(f"header name {_short(name)} is not a valid name")
            if not isinstance(value, bytes):
                self._violate(f"the value of header {_short(name)} is {type(value).__name__}, not bytes")
            elif b"\r" in value or b"\n" in value:
                self._violate(f"the value of header {_short(name)} holds a line break")
            kept.append((name, value))
        return kept

    def finish(self, error: BaseException | None = None) -> None:
        """The app returned (error None) or raised `error`: judge how the response ended.

        An error is the server's to handle (before the start it sends a 500, after it aborts the
        connection), so raising is no violation by itself; `exchange` judges a body that was
        ended although the app under the middleware failed midway."""
        self.error = error
        if self.scope_type != "http":
            return
        if error is None:
            if not self.started:
                self._violate("the app returned without sending http.response.start")
            elif not self.ended:
                self._violate("the app returned without ending the body (no http.response.body with more_body=False)")

    def timeline(self) -> str:
        """`start 200 @0 ms, body 8 B @0 ms, body 8 B @201 ms, end @402 ms` — for demos and reports."""
        parts = []
        for m in self.sent:
            if m.type == "http.response.start":
                parts.append(f"start {m.message.get('status')} @{m.at * 1000:.0f} ms")
            elif m.type == "http.response.body":
                size = len(m.message.get("body") or b"")
                end = "" if m.message.get("more_body", False) else " (end)"
                parts.append(f"body {size} B{end} @{m.at * 1000:.0f} ms")
            else:
                parts.append(f"{m.type} @{m.at * 1000:.0f} ms")
        return ", ".join(parts)


class ScriptedReceive:
    """A `receive` that hands out the request body in `chunks`, then waits until the response
    has ended (or the exchange is over) and says `http.disconnect`, as a server does."""

    def __init__(self, chunks=(b"",), *, done: asyncio.Event | None = None, scope_type: str = "http"):
        self.chunks = list(chunks) or [b""]
        self.given = 0
        self.done = done or asyncio.Event()
        self.scope_type = scope_type

    async def __call__(self) -> dict:
        if self.scope_type == "lifespan":
            # The app asks again only once it answered the startup: then it is time to shut down.
            self.given += 1
            return {"type": "lifespan.startup" if self.given == 1 else "lifespan.shutdown"}
        if self.given < len(self.chunks):
            index = self.given
            self.given += 1
            return {"type": "http.request", "body": self.chunks[index], "more_body": index < len(self.chunks) - 1}
        await self.done.wait()
        return {"type": "http.disconnect"}


class ScriptedApp:
    """An inner ASGI app that reports what a middleware around it did.

    - reads the whole request body (`received`) and records the scope it was given (`scope`);
    - answers `status` with `headers` (bytes pairs) and streams `chunks`: after each chunk but
      the last it waits (at most `ack_s`) until that chunk reached the server; `buffered` counts
      the chunks that did not arrive in time (a middleware that holds them back);
    - `fail_before_start` / `fail_after_chunks=N` (N < len(chunks)) raise `ScriptedError` before
      anything is sent, or after N chunks went out (`failed_midway` is then True).
    """

    def __init__(self, *, status: int = 200, headers=(), chunks=(b"ok",), fail_before_start: bool = False,
                 fail_after_chunks: int | None = None, ack_s: float = 0.3, read_body: bool = True):
        self.status = status
        self.headers = [tuple(pair) for pair in headers]
        self.chunks = list(chunks)
        self.fail_before_start = fail_before_start
        self.fail_after_chunks = fail_after_chunks
        self.ack_s = ack_s
        self.read_body = read_body
        self.server: SpecSend | None = None  # set by `exchange`: the outer send, to see what arrived
        self.scope: dict | None = None
        self.received = b""
        self.body_complete = False
        self.buffered = 0
        self.calls = 0
        self.failed_midway = False

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        self.scope = scope
        if scope.get("type") == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if self.read_body:
            while True:
                message = await receive()
                if message.get("type") != "http.request":
                    break
                self.received += message.get("body", b"")
                if not message.get("more_body", False):
                    self.body_complete = True
                    break
        if self.fail_before_start:
            raise ScriptedError("the app failed before the response started")
        await send({"type": "http.response.start", "status": self.status, "headers": list(self.headers)})
        for index, chunk in enumerate(self.chunks):
            if self.fail_after_chunks is not None and index == self.fail_after_chunks:
                self.failed_midway = True
                raise ScriptedError("the app failed in the middle of the body")
            last = index == len(self.chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if not last and self.server is not None and self.buffered == 0:
                seen = index + 1
                arrived = await self.server.wait_for(lambda s: len(s.body_chunks) >= seen, self.ack_s)
                if not arrived:
                    self.buffered += 1


class ScriptedError(Exception):
    """What a ScriptedApp raises on purpose."""


def http_scope(method: str = "GET", path: str = "/", headers=(), *, state: dict | None = None,
               query: bytes = b"") -> dict:
    """A complete HTTP scope as a server builds it (headers: (str, str) or bytes pairs)."""
    raw = [(k.lower().encode("latin-1") if isinstance(k, str) else k, v.encode("latin-1") if isinstance(v, str) else v)
           for k, v in headers]
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
            "root_path": "", "headers": raw, "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
            "state": {} if state is None else state}


@dataclass
class Exchange:
    """One request driven through an ASGI app: what reached the server, and what broke the spec."""

    spec: SpecSend
    error: BaseException | None = None  # what the app raised to the server
    timed_out: bool = False
    violations: list[str] = field(default_factory=list)

    @property
    def status(self) -> int | None:
        return self.spec.status

    @property
    def headers(self) -> dict[str, str]:
        return self.spec.headers

    @property
    def body(self) -> bytes:
        return self.spec.body


async def exchange(app, scope: dict, *, body=(b"",), limit_s: float | None = None,
                   inner: ScriptedApp | None = None) -> Exchange:
    """Send one request (or a lifespan cycle) through `app` directly and record every message.

    Inside a check, `limit_s` (default `CHECK_LIMIT_S`) bounds the awaiting and a call that runs
    past it comes back with `timed_out`; the check's own watchdog handles a blocked loop. Outside
    a check (a demo) the call runs under the watchdog for `limit_s` (default: the demos' limit,
    `harness.DEMO_LIMIT_S`) and is stopped with `DemoStopped`.
    """
    spec = SpecSend(scope_type=scope["type"])
    if inner is not None:
        inner.server = spec
    done = asyncio.Event()
    receive = ScriptedReceive(body, done=done, scope_type=scope["type"])
    result = Exchange(spec)

    async def run():
        try:
            await app(scope, receive, spec)
        except Exception as exc:  # the app's error reaches the server: that is data here
            result.error = exc
        finally:
            done.set()

    if limit_active():
        limit_s = CHECK_LIMIT_S if limit_s is None else limit_s
        try:
            async with asyncio.timeout(limit_s):
                await run()
        except TimeoutError:
            result.timed_out = True
    else:
        await _demo_guard(run(), harness.DEMO_LIMIT_S if limit_s is None else limit_s)
    if result.timed_out:
        spec._violate(f"still not finished after {limit_s:g} s")
    else:
        spec.finish(result.error)
        if inner is not None and inner.failed_midway and spec.ended:
            spec._violate("the app failed in the middle of the body, yet the response was ended (more_body=False) "
                          "as if complete: the client cannot tell it was cut")
    result.violations = list(spec.violations)
    return result


async def _demo_guard(coroutine, limit_s: float):
    """Run a demo's coroutine under the watchdog; past `limit_s`, stop it with `DemoStopped`."""
    try:
        async with time_limit(limit_s):
            return await coroutine
    except CheckTimeout as exc:
        raise DemoStopped(f"stopped after {limit_s:g} s: " + (
            "the event loop was blocked (a busy loop or a blocking call in `async def`?)" if exc.blocked else
            "a request never finished (does every part of the app return?)")) from None


async def time_per_request(app, scope: dict, *, n: int = 200, warmup: int = 20, limit_s: float | None = None) -> float:
    """Seconds per request when `app` answers `scope` `n` times in a row, driven straight through
    ASGI: no client, whose own cost would hide the app's. Guarded like `exchange`: past the limit
    it raises (`DemoStopped` outside a check, TimeoutError inside one)."""

    async def one() -> None:
        given = False

        async def receive():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message):
            pass

        await app(dict(scope, state=dict(scope.get("state") or {})), receive, send)

    async def run() -> float:
        for _ in range(warmup):
            await one()
        start = time.perf_counter()
        for _ in range(n):
            await one()
        return (time.perf_counter() - start) / n

    if limit_active():
        async with asyncio.timeout(CHECK_LIMIT_S * 5 if limit_s is None else limit_s):
            return await run()
    return await _demo_guard(run(), harness.DEMO_LIMIT_S if limit_s is None else limit_s)
