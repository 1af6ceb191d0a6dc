"""Drive an app's WebSocket endpoints in process, the way a server does, and record every message.

`httpx.ASGITransport` speaks HTTP only. A `Sockets` session talks the ASGI `websocket` protocol
to the app itself, as uvicorn does, with as many clients as a check wants:

    async with sockets(app) as session:
        ws = await session.connect("/chat?token=t1")   # returns once the handshake is decided
        ws.accepted, ws.close_code                        # accepted, or refused (and with what code)
        await ws.send_json({"text": "hi"})
        reply = await ws.receive_json(timeout=1)          # None if nothing came in time
        ws.die()                                          # the network drops: sends fail from now on
        ws.stall()                                        # stops reading: after `STALL_BUFFER`
                                                          # messages the app's send() waits
        await ws.leave()                                  # a clean close (1000)

Every wait is bounded. Each client records what it received and when (`ws.received`), the
sends the app attempted after the client had gone (`ws.sends_after_gone`), what the app raised,
and which tasks its connection started and left running when the handler returned
(`ws.tasks_left`: tracked with `checks.tasks.StartedTasks`, so only the app's own tasks count).
The lifespan runs as `serve()` runs it (through `checks.recorder.record`); on exit every client
still connected leaves, handlers get `graceful_s` to return, then are cancelled, and tasks the
app left running are listed in `session.leaked_tasks` and cancelled.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator
from urllib.parse import urlsplit

from .harness import describe_exception
from .recorder import CLIENT, SERVER, _task_where, record
from .waiting import wait_until
from .tasks import StartedTasks

STALL_BUFFER = 4  # messages a client that stopped reading still takes (its socket buffers) before send() waits

try:  # what uvicorn raises from send() once the client is gone (Starlette turns it into WebSocketDisconnect 1006)
    from uvicorn.protocols.utils import ClientDisconnected
except ImportError:  # pragma: no cover
    class ClientDisconnected(OSError):
        pass


class _HeldTasks(StartedTasks):
    """`StartedTasks` that also holds its tasks (a plain set, not a weak one) until the session ends,
    so the errors of tasks a handler forgot can be taken before asyncio complains about them."""

    def __init__(self) -> None:
        super().__init__()
        self._tasks = set()


class WSClient:
    """One client connection as the client saw it, and what the app did with it."""

    def __init__(self, session: "Sockets", label: str, path: str) -> None:
        self.session, self.label, self.path = session, label, path
        self.connected_at = session.now()
        self.accepted_at: float | None = None
        self.closed_at: float | None = None  # the server sent websocket.close
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.refused = False  # closed before accepting: the handshake was refused
        self.http_status: int | None = None  # refused with an HTTP response (Starlette does it for HTTPException)
        self.left_at: float | None = None  # the client left (leave, die)
        self.died = False
        self.stalled = False
        self.ever_stalled = False  # stopped reading at some point (pictures: resume() clears `stalled`)
        self.received: list[tuple[float, str | bytes]] = []  # what the client read, in order
        self.backlog: list[str | bytes] = []  # sent by the app, not yet read (stalled)
        self.sent: list[tuple[float, str]] = []  # what the client sent
        self.sends_after_gone = 0  # send() the app attempted after the client was gone
        self.error: BaseException | None = None  # what the handler raised
        self.protocol_errors: list[str] = []
        self.returned_at: float | None = None  # the handler's ASGI call returned
        self.cancelled = False  # still running at exit after the graceful period
        self.tasks_left: list[str] = []  # tasks the connection started, running (not cancelled) when it returned
        self.task: asyncio.Task | None = None
        self._tracked: StartedTasks | None = None
        self._to_app: asyncio.Queue = asyncio.Queue()
        self._decided = asyncio.Event()  # accepted or closed: connect() returns
        self._changed = asyncio.Event()  # something arrived, or the state changed
        self._returned = asyncio.Event()
        self._cursor = 0  # received messages already handed to receive()

    # ---- state --------------------------------------------------------------------------------
    @property
    def accepted(self) -> bool:
        return self.accepted_at is not None

    @property
    def gone(self) -> bool:
        """No more messages reach this client: it left, died, or the server closed it."""
        return self.left_at is not None or self.closed_at is not None

    @property
    def done(self) -> bool:
        return self.returned_at is not None

    @property
    def texts(self) -> list[str]:
        return [m if isinstance(m, str) else m.decode("utf-8", "replace") for _, m in self.received]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, deadline: float) -> bool:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return False
        try:
            async with asyncio.timeout(remaining):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True

    # ---- what the client does -------------------------------------------------------------------
    async def send_text(self, text: str) -> None:
        if self.gone:
            raise RuntimeError(f"{self.label} is no longer connected")
        self.sent.append((self.session.now(), text))
        self._to_app.put_nowait({"type": "websocket.receive", "text": text})
        await asyncio.sleep(0)  # let the app run, as a network round trip would

    async def send_json(self, data) -> None:
        await self.send_text(jsonlib.dumps(data))

    async def receive(self, timeout: float = 1.0) -> str | bytes | None:
        """The next message the server sent (in order), or None if none came within `timeout`."""
        deadline = time.perf_counter() + timeout
        while self._cursor >= len(self.received):
            if self.gone and not self.backlog:
                return None
            if not await self._wait_change(deadline):
                return None
        self._cursor += 1
        return self.received[self._cursor - 1][1]

    async def receive_json(self, timeout: float = 1.0):
        """The next message parsed as JSON (text that is not JSON comes back as the str), or None."""
        message = await self.receive(timeout)
        if message is None:
            return None
        try:
            return jsonlib.loads(message)
        except ValueError:
            return message if isinstance(message, str) else message.decode("utf-8", "replace")

    async def wait_for(self, predicate, timeout: float) -> bool:
        """Wait (at most `timeout` s) until `predicate(self)` holds; True if it did."""
        deadline = time.perf_counter() + timeout
        while not predicate(self):
            if not await self._wait_change(deadline):
                return predicate(self)
        return True

    async def leave(self, code: int = 1000) -> None:
        """A clean close from the client."""
        self._go(code)
        await asyncio.sleep(0)

    def die(self) -> None:
        """The connection drops (a phone loses its network): sends fail from now on and the
        handler's next receive() says 1006. Nothing is awaited: the app has not run yet."""
        self.died = True
        self._go(1006)

    def stall(self) -> None:
        """The client stops reading: up to `STALL_BUFFER` messages wait in its buffer, then send() waits."""
        self.stalled = self.ever_stalled = True

    def resume(self) -> None:
        """The client reads again: its buffer is read and the app's waiting sends go through."""
        self.stalled = False
        now = self.session.now()
        self.received += [(now, message) for message in self.backlog]
        self.backlog.clear()
        self._notify()

    def _go(self, code: int) -> None:
        if self.left_at is not None:
            return
        self.left_at = self.session.now()
        self.session._event(self, "died" if code == 1006 else "left", f"code {code}")
        self._to_app.put_nowait({"type": "websocket.disconnect", "code": code, "reason": ""})
        self._notify()

    async def finished(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) for the handler to return; True if it did."""
        try:
            async with asyncio.timeout(timeout):
                await self._returned.wait()
        except TimeoutError:
            return False
        return True

    # ---- the server side --------------------------------------------------------------------------
    async def _run(self, scope: dict) -> None:
        connect_given = False
        gone_message: dict | None = None

        async def receive():
            nonlocal connect_given, gone_message
            if not connect_given:
                connect_given = True
                return {"type": "websocket.connect"}
            if gone_message is not None:
                return gone_message  # uvicorn keeps answering disconnect
            message = await self._to_app.get()
            if message["type"] == "websocket.disconnect":
                gone_message = message
            return message

        async def send(message):
            kind = message.get("type")
            now = self.session.now()
            if kind == "websocket.accept":
                if self.accepted or self.closed_at is not None:
                    return self._protocol_error("websocket.accept sent twice, or after close")
                self.accepted_at = now
                self.session._event(self, "accepted", "")
                self._decided.set()
            elif kind == "websocket.close":
                if self.left_at is not None:
                    self.sends_after_gone += 1
                    raise ClientDisconnected()
                if self.closed_at is not None:
                    return self._protocol_error("websocket.close sent twice")
                self.closed_at, self.close_code = now, message.get("code", 1000)
                self.close_reason = message.get("reason") or ""
                self.refused = not self.accepted
                self.session._event(self, "refused" if self.refused else "closed", f"code {self.close_code}")
                self._to_app.put_nowait({"type": "websocket.disconnect", "code": self.close_code, "reason": ""})
                self._decided.set()
                self._notify()
            elif kind == "websocket.send":
                if not self.accepted:
                    return self._protocol_error("websocket.send before websocket.accept")
                data = message.get("text") if message.get("text") is not None else message.get("bytes")
                while True:
                    if self.gone:
                        self.sends_after_gone += 1
                        raise ClientDisconnected()
                    if not self.stalled:
                        self.received.append((now, data))
                        self._notify()
                        return
                    if len(self.backlog) < STALL_BUFFER:
                        self.backlog.append(data)
                        return
                    await self._changed.wait()  # a stalled client: the send waits (or fails when it leaves)
            elif kind == "websocket.http.response.start":  # a denial response (uvicorn offers the extension)
                if self.accepted or self.closed_at is not None or self.http_status is not None:
                    return self._protocol_error("an HTTP response after the handshake was decided")
                self.http_status = message.get("status")
                self.closed_at, self.refused = now, True
                self.session._event(self, "refused", f"HTTP {self.http_status}")
                self._decided.set()
                self._notify()
            elif kind == "websocket.http.response.body":
                if self.http_status is None:
                    return self._protocol_error("websocket.http.response.body before its start")
            else:
                return self._protocol_error(f"unexpected ASGI message {kind!r}")

        tracked = _HeldTasks().__enter__()  # the tasks this connection starts, and theirs
        try:
            await self.session.app(scope, receive, send)
        except asyncio.CancelledError:
            self.cancelled = True
        except BaseException as exc:  # a server logs it and drops the connection
            self.error = exc
            self.session._event(self, "app.error", describe_exception(exc))
        else:
            if not self.accepted and self.closed_at is None:
                self._protocol_error_quiet("the handler returned without accepting or closing")
        finally:
            tracked.__exit__(None, None, None)
            self._tracked = tracked
            # still running and not even cancelled: nothing will end them (a cancelled one ends at the next turn)
            self.tasks_left = [_task_where(t) for t in tracked.pending() if not t.cancelling()]
            self.returned_at = self.session.now()
            if self.accepted and self.closed_at is None and self.left_at is None:
                self.closed_at, self.close_code = self.returned_at, 1011 if self.error else 1000
            elif not self.accepted and self.closed_at is None:
                self.closed_at, self.close_code, self.refused = self.returned_at, None, True  # HTTP 500/403
            self.session._event(self, "returned", "")
            self._decided.set()
            self._returned.set()
            self._notify()

    async def tasks_alive(self, grace_s: float = 0.1) -> list[str]:
        """Tasks this connection started that still run `grace_s` after its handler returned
        (a task cancelled in a `finally` ends at the loop's next turn: that one is not counted)."""
        pending = self._tracked.pending() if self._tracked is not None else []
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        return [_task_where(t) for t in pending if not t.done()]

    def _protocol_error_quiet(self, text: str) -> None:
        self.protocol_errors.append(text)
        self.session._event(self, "app.error", text)

    def _protocol_error(self, text: str) -> None:
        self._protocol_error_quiet(text)
        raise RuntimeError(text)  # the app gets the error a server would raise

    def summary(self) -> str:
        """`accepted, 12 messages received, left at 40 ms` — one line for a report."""
        if not self.accepted:
            if self.error is not None:
                return f"refused: the handler raised {describe_exception(self.error)} before accepting"
            if self.http_status is not None:
                return f"refused with HTTP {self.http_status} (no close code)"
            return f"refused with close code {self.close_code}" if self.close_code else "refused"
        parts = [f"accepted, {len(self.received)} messages received"]
        if self.closed_at is not None and self.left_at is None:
            parts.append(f"closed by the server with code {self.close_code}")
        if self.error is not None:
            parts.append(f"the handler raised {describe_exception(self.error)}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"<{self.label}: {self.summary()}>"


class Sockets:
    """A session of WebSocket clients against one app (see the module's docstring)."""

    def __init__(self, app) -> None:
        self.app = app
        self.t0 = time.perf_counter()
        self.clients: list[WSClient] = []
        self.events: list[tuple[float, str, str, str]] = []  # (t, client, kind, what)
        self.leaked_tasks: list[str] = []
        self._own: set[asyncio.Task] = set()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _event(self, client: WSClient, kind: str, what: str) -> None:
        self.events.append((self.now(), client.label, kind, what))

    async def connect(self, url: str, *, headers: dict | None = None, label: str | None = None,
                      timeout: float | None = 1.0) -> WSClient:
        """Open a connection; return once the handler accepted or refused it (or `timeout` passed;
        None: no timeout of its own, for a check whose time limit ends a handler that hangs)."""
        client = self.start(url, headers=headers, label=label)
        try:
            async with asyncio.timeout(timeout):
                await client._decided.wait()
        except TimeoutError:
            pass
        return client

    def start(self, url: str, *, headers: dict | None = None, label: str | None = None) -> WSClient:
        """Open a connection without waiting for the handshake."""
        parts = urlsplit(url)
        header_list = [("host", SERVER[0]), ("connection", "upgrade"), ("upgrade", "websocket"),
                       ("sec-websocket-version", "13"), ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")]
        header_list += [(k.lower(), str(v)) for k, v in (headers or {}).items()]
        client = WSClient(self, label or f"client {len(self.clients) + 1}", parts.path)
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": parts.path,
            "raw_path": parts.path.encode(),
            "query_string": parts.query.encode(),
            "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in header_list],
            "client": CLIENT,
            "server": SERVER,
            "subprotocols": [],
            "extensions": {"websocket.http.response": {}},  # as uvicorn offers
            "course.client": client,  # lets a lesson's own handler tell which client it serves
        }
        self.clients.append(client)
        self._event(client, "connect", url)
        client.task = asyncio.create_task(client._run(scope), name=f"websocket {client.label}")
        self._own.add(client.task)
        return client

    async def wait_for(self, predicate, timeout: float, poll_s: float = 0.002) -> bool:
        """Wait until `predicate()` holds (checked every `poll_s`), at most `timeout` s."""
        return await wait_until(predicate, timeout, poll_s)

    async def close_all(self, graceful_s: float) -> None:
        """Every client still connected leaves; handlers get `graceful_s`, then are cancelled."""
        for client in self.clients:
            if client.left_at is None and client.closed_at is None:
                client._go(1001)  # going away
            client.resume() if client.stalled else None
        running = [c.task for c in self.clients if c.task is not None and not c.task.done()]
        if running:
            await asyncio.wait(running, timeout=graceful_s)
        late = [t for t in running if not t.done()]
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=0.5)
        # Tasks the handlers started and forgot: give them a moment, and take their errors (a send to a
        # client that left), so asyncio does not print "Task exception was never retrieved" later.
        started = [t for c in self.clients if c._tracked is not None for t in c._tracked.all()]
        pending = [t for t in started if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=0.1)
        for task in started:
            if task.done() and not task.cancelled():
                task.exception()


@asynccontextmanager
async def sockets(app, *, graceful_s: float = 0.5, limit_s: float | None = None, **kwargs) -> AsyncIterator[Sockets]:
    """Run `app`'s lifespan and yield a `Sockets` session; every connection ends on exit.

    Outside a check the block has a time limit, as `serve()` has (`limit_s`).
    """
    async with record(app, limit_s=limit_s, graceful_s=graceful_s, **kwargs) as rec:
        session = Sockets(rec.app)
        session._own = rec._own_tasks  # the session's connection tasks are not leaks
        try:
            yield session
        finally:
            if _not_blocked():
                await session.close_all(graceful_s)
            else:
                for client in session.clients:
                    if client.task is not None:
                        client.task.cancel()
            blocked = next((c.error for c in session.clients
                            if c.error is not None and not isinstance(c.error, Exception)), None)
            if blocked is not None:
                raise blocked  # the watchdog's LoopBlocked, caught in a connection: pass it on
    session.leaked_tasks = list(rec.leaked_tasks)


def _not_blocked() -> bool:
    task = asyncio.current_task()
    return task is None or not task.cancelling()
