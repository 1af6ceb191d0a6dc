"""Lesson 07, lifespan and shared resources: what an app opens once, shares, and closes.

Everything here is counted exactly, never guessed from a clock:
- the rates service is a real HTTP server on a loopback port, run by a thread of its own;
  it counts the TCP connections it accepts and how many are open at once;
- `ResourceWatch` records every `httpx.AsyncClient` and every SQLAlchemy `AsyncEngine`
  created while it is active (and when: at startup, while serving, at shutdown), and every
  database connection opened, closed, checked out and returned;
- the reports service and the cache's upstream are in-process stand-ins with exact in-flight
  counters and random latencies.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import random
import string
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

import anyio.to_thread
import h11
from asgi_lifespan import LifespanManager
import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import String, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import Pool
from sqlalchemy.util import greenlet_spawn

from .harness import AppClient, describe_exception, serve
from .observe import json_body, show_response, status_hint
from .runner import check
from .services import UpstreamError
from .tasks import started_tasks
from .timing import InFlight, Span, Timeline

# ---- the rates service: a real HTTP server on loopback ---------------------------------------

CURRENCIES = ["USD", "GBP", "JPY", "CHF", "SEK", "NOK", "PLN", "CZK", "DKK", "CAD", "AUD", "HUF"]


class RatesServer:
    """An HTTP/1.1 server (h11 on asyncio) in a daemon thread: `GET /rates/{currency}`.

    It answers after `latency_s` and counts what a client does to it: connections accepted,
    open now, the most open at once, requests served. `reset()` starts a new generation, so
    a connection left open by an earlier run does not count in the next one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.latency_s = (0.01, 0.02)
        self.salt = random.random()
        self.port = 0
        self._generation = 0
        self._holding = threading.Event()
        self._hold_until = 0.0
        self.connections = self.open_now = self.peak_open = self.requests = self.in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "RatesServer":
        thread = threading.Thread(target=self._run, name="course-rates-server", daemon=True)
        thread.start()
        self._ready.wait(10)
        return self

    def reset(self, latency_s: tuple[float, float] | None = None) -> None:
        self.release()
        with self._lock:
            self._generation += 1
            self.connections = self.open_now = self.peak_open = self.requests = self.in_flight = 0
            self.salt = random.random()
            if latency_s is not None:
                self.latency_s = latency_s

    def hold(self, at_most_s: float = 5.0) -> None:
        """Answer nothing until `release()` (or `at_most_s`): requests pile up, so a check can count
        how many a client sends at once without racing the server's latency."""
        self._hold_until = time.monotonic() + at_most_s
        self._holding.set()

    def release(self) -> None:
        self._holding.clear()

    def rate(self, currency: str) -> float:
        """What the service answers for `currency` in this generation (checks compare with it)."""
        seed = sum(map(ord, currency)) * 7919 + int(self.salt * 1e6)
        return round(0.5 + (seed % 100_000) / 50_000, 4)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            generation = self._generation
            self.connections += 1
            self.open_now += 1
            self.peak_open = max(self.peak_open, self.open_now)
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await reader.read(65536))
                    continue
                if isinstance(event, h11.Request):
                    target = event.target.decode()
                    continue
                if isinstance(event, h11.EndOfMessage):
                    with self._lock:
                        if generation == self._generation:
                            self.in_flight += 1
                    while self._holding.is_set() and time.monotonic() < self._hold_until:
                        await asyncio.sleep(0.002)
                    await asyncio.sleep(random.uniform(*self.latency_s))
                    with self._lock:  # counted before the answer leaves, so a client never sees it first
                        if generation == self._generation:
                            self.in_flight -= 1
                            self.requests += 1
                    status, body = self._answer(target)
                    writer.write(connection.send(h11.Response(status_code=status, headers=[
                        ("content-type", "application/json"), ("content-length", str(len(body)))])))
                    writer.write(connection.send(h11.Data(data=body)))
                    writer.write(connection.send(h11.EndOfMessage()))
                    await writer.drain()
                    if connection.our_state is h11.MUST_CLOSE:
                        break
                    connection.start_next_cycle()
                    continue
                break  # ConnectionClosed, or anything a client should not send
        except (h11.RemoteProtocolError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with self._lock:
                if generation == self._generation:
                    self.open_now -= 1

    def _answer(self, target: str) -> tuple[int, bytes]:
        import json

        currency = target.rsplit("/", 1)[-1].upper()
        if not target.startswith("/rates/") or currency not in CURRENCIES:
            return 404, b'{"detail": "unknown currency"}'
        return 200, json.dumps({"currency": currency, "rate": self.rate(currency)}).encode()


rates_server = RatesServer().start()
RATES_URL = rates_server.url


# ---- the database --------------------------------------------------------------------------------

DATABASE_PATH = os.path.join(tempfile.mkdtemp(prefix="course-lesson07-"), "shop.db")
DATABASE_URL = f"sqlite+aiosqlite:///{DATABASE_PATH}"


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(20), primary_key=True)
    price_eur: Mapped[float]


async def reset_database(count: int = 8) -> dict[str, float]:
    """A fresh database file with `count` products at random prices; returns {sku: price}."""
    products = {f"sku-{random.randint(100, 999)}{letter}": round(random.uniform(2, 500), 2)
                for letter in string.ascii_lowercase[:count]}
    for suffix in ("", "-journal", "-wal"):
        try:
            os.remove(DATABASE_PATH + suffix)
        except FileNotFoundError:
            pass
    engine = create_async_engine(DATABASE_URL)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
            await connection.execute(Product.__table__.insert(),
                                     [{"sku": sku, "price_eur": price} for sku, price in products.items()])
    finally:
        await engine.dispose()
    return products


# ---- counting what an app opens ------------------------------------------------------------------

@dataclass
class Made:
    """One resource created while a watch was active, and the phase it was created in."""

    thing: object
    phase: str


class ResourceWatch:
    """Records the clients and engines created, and database connections used, while active.

        with ResourceWatch() as seen:
            seen.phase = "startup"
            ...
        seen.clients_in("serving")  # httpx clients made while requests were served

    The check's own client (`serve`'s) is not counted. Database connections are counted for
    every pool: `connects - closes` are still open, `checkouts - checkins` are held by sessions.
    """

    _active: list["ResourceWatch"] = []
    _originals: dict = {}

    def __init__(self) -> None:
        self.phase = "before"
        self.clients: list[Made] = []
        self.engines: list[Made] = []
        self.connects = self.closes = self.checkouts = self.checkins = 0
        self._out: dict = {}  # connections checked out and not yet returned (record id -> proxy)

    # -- what was made
    def clients_in(self, phase: str) -> list:
        return [made.thing for made in self.clients if made.phase == phase]

    def engines_in(self, phase: str) -> list:
        return [made.thing for made in self.engines if made.phase == phase]

    @property
    def open_clients(self) -> list:
        return [made.thing for made in self.clients if not made.thing.is_closed]

    @property
    def connections_open(self) -> int:
        return self.connects - self.closes

    @property
    def connections_held(self) -> int:
        return self.checkouts - self.checkins

    def summary(self) -> str:
        return (f"httpx clients made: {len(self.clients)} ({len(self.open_clients)} still open); "
                f"database engines made: {len(self.engines)}; database connections opened: {self.connects}, "
                f"still open: {self.connections_open}")

    async def close_leftovers(self) -> None:
        """Close what the code under test left open, so nothing leaks into the next run: connections
        a session never gave back are returned to their pool, clients closed, engines disposed."""
        for proxy in list(self._out.values()):
            try:
                await greenlet_spawn(proxy.close)
            except Exception:
                pass
        self._out.clear()
        for client in self.open_clients:
            try:
                await client.aclose()
            except Exception:
                pass
        for engine in [made.thing for made in self.engines]:
            try:
                await engine.dispose()
            except Exception:
                pass

    # -- recording
    def __enter__(self) -> "ResourceWatch":
        if not ResourceWatch._active:
            self._install()
        ResourceWatch._active.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        if self in ResourceWatch._active:
            ResourceWatch._active.remove(self)
        if not ResourceWatch._active:
            self._uninstall()

    async def __aenter__(self) -> "ResourceWatch":
        return self.__enter__()

    async def __aexit__(self, *exc_info) -> None:
        self.__exit__()

    @classmethod
    def _install(cls) -> None:
        client_init, engine_init = httpx.AsyncClient.__init__, AsyncEngine.__init__

        def watched_client_init(client, *args, **kwargs):
            client_init(client, *args, **kwargs)
            if not isinstance(client, AppClient):
                for watch in cls._active:
                    watch.clients.append(Made(client, watch.phase))

        def watched_engine_init(engine, *args, **kwargs):
            engine_init(engine, *args, **kwargs)
            for watch in cls._active:  # one proxy per sync engine: a proxy made again is not a new engine
                if not any(made.thing.sync_engine is engine.sync_engine for made in watch.engines):
                    watch.engines.append(Made(engine, watch.phase))

        cls._originals = {"client": client_init, "engine": engine_init}
        httpx.AsyncClient.__init__ = watched_client_init
        AsyncEngine.__init__ = watched_engine_init
        for name in ("connect", "close", "checkout", "checkin"):
            event.listen(Pool, name, _POOL_LISTENERS[name])

    @classmethod
    def _uninstall(cls) -> None:
        httpx.AsyncClient.__init__ = cls._originals["client"]
        AsyncEngine.__init__ = cls._originals["engine"]
        for name in ("connect", "close", "checkout", "checkin"):
            event.remove(Pool, name, _POOL_LISTENERS[name])


def _pool_listener(counter: str):
    def listener(dbapi_connection, record, proxy=None) -> None:
        for watch in ResourceWatch._active:
            setattr(watch, counter, getattr(watch, counter) + 1)
            if counter == "checkouts":
                watch._out[id(record)] = proxy
            elif counter == "checkins":
                watch._out.pop(id(record), None)

    return listener


_POOL_LISTENERS = {"connect": _pool_listener("connects"), "close": _pool_listener("closes"),
                   "checkout": _pool_listener("checkouts"), "checkin": _pool_listener("checkins")}


# ---- exercise 1: one client, one engine, from the lifespan -----------------------------------------

MAX_RATES_CONNECTIONS = 10
BURST = 30  # concurrent requests: more than the connections the rates service allows
CLOSE_WAIT_S = 1.0  # how long a closed client's connections may take to reach the server


async def _lifespan_without_yield(report, app, lifespan) -> bool:
    """A lifespan function with no `yield` cannot start an app: run it to say what it does."""
    original = inspect.unwrap(lifespan) if callable(lifespan) else None
    if original is lifespan or not inspect.iscoroutinefunction(original):
        return False
    try:
        await original(app)
    except Exception as exc:
        report.fail("the app starts", observed=f"the app could not start: its lifespan raised {describe_exception(exc)}",
                    hint="The lifespan runs before the first request: the code before its `yield` must finish "
                         "without raising.")
        return True
    report.fail("the lifespan yields", observed="lifespan() returned without ever reaching a `yield`",
                expected="one `yield` between startup and shutdown",
                hint="An `@asynccontextmanager` lifespan yields once: the code before `yield` runs at startup, "
                     "the code after it at shutdown; what it yields becomes `request.state`.")
    return True


def _skipped_on_event(report, app) -> bool:
    """`@app.on_event` handlers next to `lifespan=` never run: say so instead of blaming a 500."""
    router = getattr(app, "router", None)
    handlers = list(getattr(router, "on_startup", []) or []) + list(getattr(router, "on_shutdown", []) or [])
    if not handlers:
        return False
    names = ", ".join(getattr(handler, "__name__", "?") for handler in handlers)
    report.fail("no `on_event` handlers beside `lifespan=`",
                observed=f"{len(handlers)} startup/shutdown handler(s) registered with on_event ({names}): "
                         "with `lifespan=` they are skipped, never run",
                hint="`@app.on_event` is deprecated and ignored when the app has a lifespan: put that code in "
                     "the lifespan, before (startup) or after (shutdown) its `yield`.")
    return True


STALL_S = 3.0  # no response at all for this long, with requests waiting: they are stuck


async def _until_done_or_stalled(coroutines, stall_s: float, progress) -> tuple[list, int]:
    """Run them at once until all are done, or until nothing moved for `stall_s`: no request
    finished and `progress()` (counts of what the requests do) did not change. The rest are then
    cancelled. Returns (results, how many were still waiting)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    pending = set(tasks)
    last, still_since = None, time.perf_counter()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.05)
        now = (len(pending), progress())
        if now != last:
            last, still_since = now, time.perf_counter()
        elif time.perf_counter() - still_since > stall_s:
            break
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)
    results = [task.exception() or task.result() if task.done() and not task.cancelled() else None for task in tasks]
    return results, len(pending)


QUIET_S = 0.3


async def _until_quiet(state, quiet_s: float, done, limit_s: float = 5.0) -> None:
    """Wait until `done()`, or until `state()` has not changed for `quiet_s` (bounded by `limit_s`)."""
    last, since, started = state(), time.perf_counter(), time.perf_counter()
    while not done() and time.perf_counter() - started < limit_s:
        await asyncio.sleep(0.01)
        now = state()
        if now != last:
            last, since = now, time.perf_counter()
        elif time.perf_counter() - since > quiet_s:
            return


async def _wait_until(predicate, timeout_s: float, step_s: float = 0.005) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passed (bounded, never a fixed sleep)."""
    deadline = time.perf_counter() + timeout_s
    while not predicate():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(step_s)
    return True


def _price_hint(response, client, path) -> str:
    errors = client.errors_for(response.request.url.path) if client is not None else []
    text = str(errors[-1].exception) if errors else ""
    if "has been closed" in text:
        return ("The client was closed before the requests came. Everything between startup and shutdown "
                "happens at the `yield`: keep the client open across it (yield inside the `async with`).")
    if "State" in text and "has no attribute" in text:
        return ("`request.state` has only what the lifespan yielded (a dict): yield the client and the "
                "session factory, and read them back under the same names.")
    return status_hint(response, "GET", path, client)


@check("Lesson 07 · one client and one engine for the whole app, closed at shutdown", limit_s=20)
async def check_lifespan(report, make_app, lifespan, get_http, get_session):
    products = await reset_database()
    rates_server.reset(latency_s=(random.uniform(0.005, 0.015), random.uniform(0.02, 0.04)))
    watch = ResourceWatch()
    try:
        with watch:
            await _judge_lifespan(report, watch, products, make_app, lifespan, get_http, get_session)
    finally:
        await watch.close_leftovers()


async def _judge_lifespan(report, watch, products, make_app, lifespan, get_http, get_session) -> None:
    app = make_app(lifespan, get_http, get_session)
    if await _lifespan_without_yield(report, app, lifespan):
        return
    skus = list(products)
    sku, currency = random.choice(skus), random.choice(CURRENCIES)
    path = f"/prices/{sku}?currency={currency}"
    watch.phase = "startup"
    async with serve(app, raise_app_exceptions=False) as client:
        watch.phase = "serving"
        first = await client.get(path)
        expected = {"sku": sku, "currency": currency, "price": round(products[sku] * rates_server.rate(currency), 2)}
        if first.status_code != 200 or json_body(first) != expected:
            _skipped_on_event(report, app)
            report.fail("GET /prices/{sku} answers with the converted price",
                        observed=show_response(first, client), expected=f"200 {expected}",
                        hint=_price_hint(first, client, "/prices/{sku}"))
            watch.phase = "shutdown"
            return
        report.add("GET /prices/{sku} answers with the converted price", True, observed=f"{sku} in {currency}")
        for _ in range(4):  # one after the other: a shared client reuses its connection
            await client.get(f"/prices/{random.choice(skus)}?currency={random.choice(CURRENCIES)}")
        paths = [f"/prices/{random.choice(skus)}?currency={random.choice(CURRENCIES)}" for _ in range(BURST)]
        progress = lambda: (len(watch.clients), len(watch.engines), watch.checkouts, watch.checkins,  # noqa: E731
                            rates_server.requests, rates_server.in_flight)
        # The rates service holds its answers until the requests stop piling up: how many connections
        # the client opens at once is then counted exactly, whatever the machine's speed.
        rates_server.hold()
        try:
            tasks = [asyncio.ensure_future(client.get(p)) for p in paths]
            await _until_quiet(lambda: (rates_server.in_flight, progress()), QUIET_S,
                               done=lambda: rates_server.in_flight >= BURST or all(t.done() for t in tasks))
        finally:
            rates_server.release()
        burst, waiting = await _until_done_or_stalled(tasks, STALL_S, progress)
        held = watch.connections_held
        watch.phase = "shutdown"
    watch.phase = "after"
    if waiting:
        report.fail("every session gives its connection back" if held else f"{BURST} requests at once all answer",
                    observed=f"{waiting} of {BURST} requests still waiting, nothing moving for {STALL_S:g} s; "
                             f"{held} database connection(s) checked out and not given back",
                    expected="every request answered",
                    hint=("A session that is never closed keeps its connection, and once the pool has none left the "
                          "other requests wait for one: open it with `async with sessions() as session:` around the "
                          "`yield`." if held else "Something the requests share never lets them finish: a lock or "
                                                   "a resource never given back."))
        return
    failed = [r for r in burst if not isinstance(r, httpx.Response) or r.status_code != 200]
    if failed:
        sample = failed[0]
        report.fail(f"{BURST} requests at once all answer 200", observed=f"{len(failed)} failed, e.g. "
                    + (show_response(sample, client) if isinstance(sample, httpx.Response) else describe_exception(sample)),
                    expected="all 200", hint="Shared resources must serve concurrent requests: look at the error.")
        return
    startup_clients, serving_clients = watch.clients_in("startup"), watch.clients_in("serving")
    made = f"{len(startup_clients)} httpx client(s) made at startup, {len(serving_clients)} while serving {BURST + 5} requests"
    if serving_clients:
        hint = (f"A client per request pays its setup on every request (SSL certificates loaded on the event "
                f"loop) and opens new connections: create one client in the lifespan and yield it.")
    elif not startup_clients:
        hint = ("No client was made when the app started: one made at import (a module global) belongs to no "
                "app, outlives it and is shared by every app of the process. Create it in the lifespan.")
    else:
        hint = "Create exactly one client in the lifespan and share it through the dependency."
    one_client = report.add("one httpx client, made when the app starts",
                            len(startup_clients) == 1 and not serving_clients, observed=made,
                            expected="1 at startup, 0 while serving", hint=hint)
    if one_client:
        report.add(f"at most {MAX_RATES_CONNECTIONS} connections to the rates service at once",
                   rates_server.peak_open <= MAX_RATES_CONNECTIONS,
                   observed=f"{BURST} requests at once opened {rates_server.peak_open} connections at the same time "
                            f"({rates_server.connections} in all)",
                   expected=f"at most {MAX_RATES_CONNECTIONS}",
                   hint="A client's pool opens as many connections as requests in flight unless told otherwise: "
                        "give the client `limits=httpx.Limits(...)`.")
    startup_engines, serving_engines = watch.engines_in("startup"), watch.engines_in("serving")
    report.add("one database engine, made when the app starts", len(startup_engines) == 1 and not serving_engines,
               observed=f"{len(startup_engines)} engine(s) made at startup, {len(serving_engines)} while serving",
               expected="1 at startup, 0 while serving",
               hint=("An engine is a connection pool: one per request pools nothing and leaves connections behind. "
                     "Create it once in the lifespan and yield a session factory." if serving_engines else
                     "Create the engine in the lifespan (an engine made at import belongs to no app)."))
    report.add("every session gives its connection back", held == 0,
               observed=f"{held} database connection(s) still checked out after all responses were sent",
               expected="0", hint="A session that is never closed keeps its connection: open it with "
                                  "`async with sessions() as session:` around the `yield`.")
    closed = await _wait_until(lambda: rates_server.open_now == 0 and not watch.open_clients, CLOSE_WAIT_S)
    if watch.clients or not closed:
        report.add("shutdown closes the client", closed,
                   observed=f"after shutdown: {len(watch.open_clients)} client(s) not closed, "
                            f"{rates_server.open_now} connection(s) to the rates service still open",
                   expected="0 and 0",
                   hint="After the lifespan's `yield`, close what it opened: `await client.aclose()`, or yield "
                        "inside `async with httpx.AsyncClient(...) as client:`.")
    idle_open = watch.connections_open - watch.connections_held  # a session's connection is not the pool's to close
    report.add("shutdown disposes of the engine", idle_open == 0,
               observed=f"{idle_open} of {watch.connects} database connection(s) still open after shutdown",
               expected="0", hint="After the `yield`: `await engine.dispose()` closes the pool's connections.")
    # A second app, as a test suite or a restart makes: it must get resources of its own.
    before = len(watch.clients)
    second = make_app(lifespan, get_http, get_session)
    async with serve(second, raise_app_exceptions=False) as client:
        again = await client.get(path)
    own = len(watch.clients) > before
    report.add("a second app, started after the first stopped, works too", again.status_code == 200 and own,
               observed=show_response(again, client) + ("" if own else "; it made no client of its own"),
               expected="200, with a client of its own",
               hint="Whatever the first app closed at shutdown is gone: a resource made at import is shared by "
                    "every app of the process. Make everything in the lifespan, once per app.")


# ---- exercise 2: one limit for a scarce upstream, shared by several routes --------------------------

REPORTS_LIMIT = 3


class ReportNotFound(Exception):
    """The reports server has no report of that name."""


class ReportsClient:
    """The reports server's client. The server is slow and takes at most 3 calls at a time.

    `in_flight` counts every call, `by_kind` fetches and exports apart; `log` holds
    (time, +1 or -1) for each call's start and end, to draw how many ran at once.
    """

    def __init__(self, latency_s: tuple[float, float] = (0.05, 0.1)):
        self.latency_s = latency_s
        self.in_flight = InFlight()
        self.by_kind = {"fetch": InFlight(), "export": InFlight()}
        self.finished = 0
        self.t0 = time.perf_counter()
        self.log: list[tuple[float, int]] = []
        self.gate: asyncio.Event | None = None  # while set to a closed Event, calls wait at the server

    @staticmethod
    def rows(name: str) -> list[dict]:
        """What `fetch(name)` returns."""
        return [{"line": i, "total": (sum(map(ord, name)) * (i + 3)) % 1000} for i in range(3)]

    @staticmethod
    def csv(name: str) -> str:
        """What `export(name)` returns."""
        return "line,total\n" + "".join(f"{row['line']},{row['total']}\n" for row in ReportsClient.rows(name))

    async def _call(self, kind: str, name: str) -> None:
        with self.in_flight.call(), self.by_kind[kind].call():
            self.log.append((time.perf_counter() - self.t0, 1))
            try:
                if self.gate is not None:
                    await self.gate.wait()
                if name.startswith("missing-"):
                    await asyncio.sleep(0.01)
                    raise ReportNotFound(f"no report called {name!r}")
                await asyncio.sleep(random.uniform(*self.latency_s))
            finally:
                self.log.append((time.perf_counter() - self.t0, -1))
                self.finished += 1

    async def fetch(self, name: str) -> list[dict]:
        await self._call("fetch", name)
        return self.rows(name)

    async def export(self, name: str) -> str:
        await self._call("export", name)
        return self.csv(name)


@asynccontextmanager
async def reports_lifespan(app: FastAPI):
    """The lesson's lifespan for the reports app: one client, in `request.state.reports`."""
    yield {"reports": ReportsClient()}


def reports_app(add_routes, reports: ReportsClient | None = None) -> FastAPI:
    """The app of exercise 2: its lifespan yields one `ReportsClient` as "reports"; `ReportNotFound`
    becomes a 404; `add_routes(app)` adds the routes; GET /ping calls nothing."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield {"reports": reports if reports is not None else ReportsClient()}

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(ReportNotFound)
    async def not_found(request: Request, exc: ReportNotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    add_routes(app)

    @app.get("/ping")
    async def ping():
        return {"ok": True}

    return app


def _report_name() -> str:
    return random.choice(["sales", "stock", "returns", "payroll", "visits"]) + f"-{random.randint(100, 999)}"


async def _burst(client, reports: ReportsClient, count: int):
    """`count` requests, half to each route, in random order; samples the thread pool meanwhile.
    Returns (responses, most worker threads busy at once)."""
    paths = [f"/reports/{_report_name()}" for _ in range(count // 2)] + \
            [f"/exports/{_report_name()}" for _ in range(count - count // 2)]
    random.shuffle(paths)
    threads = []
    limiter = anyio.to_thread.current_default_thread_limiter()

    async def sample():
        while True:
            threads.append(limiter.borrowed_tokens)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        responses = await asyncio.gather(*(client.get(path) for path in paths))
    finally:
        sampler.cancel()
    return responses, max(threads, default=0)


PING_WAIT_S = 2.0


async def _ping_while_busy(client, reports: ReportsClient):
    """With every call to the reports server held at the server, does GET /ping still answer?
    Returns (response or None if it had to wait, calls that were running)."""
    reports.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(client.get(f"/reports/{_report_name()}")) for _ in range(REPORTS_LIMIT + 1)]
    try:
        await _wait_until(lambda: reports.in_flight.current >= REPORTS_LIMIT, 1.0)
        busy = reports.in_flight.current
        try:
            async with asyncio.timeout(PING_WAIT_S):
                ping = await client.get("/ping")
        except TimeoutError:
            ping = None
    finally:
        reports.gate.set()
        reports.gate = None
    await asyncio.gather(*tasks, return_exceptions=True)
    return ping, busy


def _draw_in_flight(reports: ReportsClient, limit: int):
    def draw(ax):
        log = sorted(reports.log)
        times, counts, current = [0.0], [0], 0
        for when, step in log:
            current += step
            times.append(when * 1000)
            counts.append(current)
        t0 = times[1] if len(times) > 1 else 0.0
        ax.step([t - t0 if i else 0.0 for i, t in enumerate(times)], counts, where="post", color="#2f81f7")
        ax.axhline(limit, color="#cf222e", linestyle="--", linewidth=1)
        ax.text(0, limit, f" the server's limit: {limit}", color="#cf222e", va="bottom", fontsize=8)
        ax.set_xlabel("time (ms)")
        ax.set_ylabel("calls in flight")
        ax.set_ylim(0, max(max(counts), limit) + 1)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)

    def png():
        from .plots import render_png

        return render_png(draw, height=2.2)

    return png


SECOND_LOOP_S = 5.0


async def on_another_loop(app, paths: list[str], timeout_s: float = SECOND_LOOP_S) -> list:
    """Start `app` and send `paths` at once from a new event loop in a thread of its own, as the next
    test of a suite (a loop per test) or a second worker does. Returns each response, or the error the
    app raised. A daemon thread, bounded by `timeout_s`: code that hangs there cannot hold the kernel."""

    async def run() -> list:
        async with asyncio.timeout(timeout_s), LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await asyncio.gather(*(client.get(path) for path in paths), return_exceptions=True)

    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def settle(result, error) -> None:
        if not done.done():
            done.set_exception(error) if error is not None else done.set_result(result)

    def thread() -> None:
        try:
            result, error = asyncio.run(run()), None
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller, whatever it is
            result, error = None, exc
        if not loop.is_closed():
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=thread, name="course-second-loop", daemon=True).start()
    async with asyncio.timeout(timeout_s + 1):
        return await done


class _SemaphoresMade:
    """Counts the `asyncio.Semaphore`s created while active (per-request semaphores show up here)."""

    def __enter__(self) -> "_SemaphoresMade":
        self.count, self._init = 0, asyncio.Semaphore.__init__
        watch, original = self, self._init

        def counted(semaphore, *args, **kwargs):
            watch.count += 1
            original(semaphore, *args, **kwargs)

        asyncio.Semaphore.__init__ = counted
        return self

    def __exit__(self, *exc_info) -> None:
        asyncio.Semaphore.__init__ = self._init


def _limits_on(app, paths: tuple[str, ...]) -> list:
    """The dependencies with `max_concurrency` on these routes: (function, does it yield)."""
    found = []

    def walk(dependant) -> None:
        for sub in getattr(dependant, "dependencies", []) or []:
            if getattr(sub, "concurrency", None) is not None:
                call = getattr(sub, "call", None)
                found.append((call, inspect.isasyncgenfunction(call) or inspect.isgeneratorfunction(call)))
            walk(sub)

    for route in getattr(getattr(app, "router", None), "routes", []) or []:
        if getattr(route, "path", None) in paths:
            walk(getattr(route, "dependant", None))
    return found


def _unlimited_hint(app, per_request_semaphores: int) -> str:
    """Why nothing held the calls back, from what the app holds (exact), not from a guess."""
    limits = _limits_on(app, ("/reports/{name}", "/exports/{name}"))
    returning = [call for call, yields in limits if not yields]
    if returning:
        name = getattr(returning[0], "__name__", "the dependency")
        return (f"`{name}` has `max_concurrency` but returns instead of yielding: a dependency without `yield` "
                f"gives its place back when it returns, before the route calls the server. Yield the client, so "
                f"the place is held until the request is over.")
    if per_request_semaphores:
        return (f"{per_request_semaphores} semaphores were made while those 12 requests ran: a semaphore made inside "
                f"the request limits that request only. One limit for every request: `Depends(..., "
                f"max_concurrency=3)` on the dependency that gives the routes the client.")
    if not limits:
        return ("Nothing on these routes limits the calls: put `max_concurrency` on the dependency that gives the "
                "routes the reports client (FastAPI's guidance: on the dependency that owns the resource).")
    return "The routes' limit did not hold the calls back: the place must be held while the route calls the server."


LOOP_BOUND_HINT = ("A semaphore made once (at import, or when the app is built) belongs to the first event loop that "
                   "waited on it, and raises on any other: each test of a suite runs on a loop of its own, and so "
                   "does each worker. `Depends(..., max_concurrency=N)` keeps one semaphore per event loop.")


async def _judge_second_loop(report, app, reports: ReportsClient) -> None:
    """The same app, started again on a new event loop (the next test of a suite): the limit still holds."""
    reports.in_flight.reset()
    paths = [f"/reports/{_report_name()}" for _ in range(6)] + [f"/exports/{_report_name()}" for _ in range(6)]
    try:
        results = await on_another_loop(app, paths)
    except TimeoutError:
        report.fail("the limit works on another event loop too", observed=f"12 requests from a second event loop: "
                    f"not all answered within {SECOND_LOOP_S:g} s", expected="12 × 200",
                    hint="Something the routes wait for belongs to the first event loop: make the limit with "
                         "`Depends(..., max_concurrency=N)`, which keeps one per loop.")
        return
    errors = [r for r in results if isinstance(r, BaseException)]
    failed = [r for r in results if not isinstance(r, BaseException) and r.status_code != 200]
    if errors or failed:
        text = describe_exception(errors[0]) if errors else f"{failed[0].status_code} {failed[0].text[:100]}"
        bound = bool(errors) and "different event loop" in str(errors[0])
        report.fail("the limit works on another event loop too",
                    observed=f"12 requests from a second event loop (as the next test of a suite makes): "
                             f"{len(errors) + len(failed)} failed, e.g. {text}",
                    expected="12 × 200, at most 3 calls at once",
                    hint=LOOP_BOUND_HINT if bound else "Look at the error: the app must work on any event loop.")
        return
    report.add("the limit works on another event loop too", reports.in_flight.peak == REPORTS_LIMIT,
               observed=f"12 requests from a second event loop: at most {reports.in_flight.peak} calls at once",
               expected=f"{REPORTS_LIMIT}", hint=LOOP_BOUND_HINT)


@check("Lesson 07 · one limit of 3 calls to the reports server, shared by every route", limit_s=15)
async def check_shared_limit(report, make_app, add_report_routes):
    reports = ReportsClient(latency_s=(random.uniform(0.05, 0.06), random.uniform(0.08, 0.1)))
    app = make_app(add_report_routes, reports)
    async with serve(app, raise_app_exceptions=False) as client:
        for route, key, expected in (("reports", "rows", ReportsClient.rows), ("exports", "csv", ReportsClient.csv)):
            name = _report_name()
            response = await client.get(f"/{route}/{name}")
            want = {"name": name, key: expected(name)}
            if response.status_code != 200 or json_body(response) != want:
                _skipped_on_event(report, app)
                report.fail(f"GET /{route}/{{name}} answers", observed=show_response(response, client),
                            expected=f"200 {str(want)[:120]}", hint=status_hint(response, "GET", f"/{route}/{{name}}", client))
                return
        report.add("GET /reports/{name} and GET /exports/{name} answer", True)
        reports.in_flight.reset()
        for kind in reports.by_kind.values():
            kind.reset()
        reports.log.clear()
        responses, threads = await _burst(client, reports, 12)
        peak = reports.in_flight.peak
        failed = [r for r in responses if r.status_code != 200]
        picture = _draw_in_flight(reports, REPORTS_LIMIT)
        # after two failed calls, is every place still there?
        for _ in range(2):
            await client.get(f"/reports/missing-{random.randint(100, 999)}")
        reports.in_flight.reset()
        await _burst(client, reports, 12)
        peak_after = reports.in_flight.peak
        ping, busy = await _ping_while_busy(client, reports)
        one_route, made = None, 0
        if peak > REPORTS_LIMIT:  # which mistake? 12 requests to one route alone tell them apart
            reports.in_flight.reset()
            with _SemaphoresMade() as semaphores:
                await asyncio.gather(*(client.get(f"/reports/{_report_name()}") for _ in range(12)))
            one_route, made = reports.in_flight.peak, semaphores.count
    report.figure(f"Calls to the reports server in flight: 12 requests on two routes at once, 2 that fail, 12 more "
                  f"(limit {REPORTS_LIMIT})",
                  picture)
    if failed:
        report.fail("12 requests at once all answer 200", observed=f"{len(failed)} failed, e.g. {show_response(failed[0], client)}",
                    expected="all 200", hint=status_hint(failed[0], "GET", failed[0].request.url.path, client))
        return
    if one_route is None:
        hint, alone = "", ""
    elif one_route <= REPORTS_LIMIT:
        hint = ("Each route kept its own limit: every `Depends(..., max_concurrency=N)` object is a limit of its "
                "own, even for the same function. Declare it once (an `Annotated` alias) and use that in both.")
        alone = f"; 12 requests to /reports alone: at most {one_route} at once"
    elif one_route >= 12:
        hint = _unlimited_hint(app, made)
        alone = f"; 12 requests to /reports alone: {one_route} at once"
    else:
        hint = f"The limit lets {one_route} through at a time: the server takes {REPORTS_LIMIT}."
        alone = f"; 12 requests to /reports alone: at most {one_route} at once"
    report.add(f"never more than {REPORTS_LIMIT} calls at once, both routes together", peak <= REPORTS_LIMIT,
               observed=f"{peak} calls at once from the two routes{alone}",
               expected=f"at most {REPORTS_LIMIT}", hint=hint)
    if peak <= REPORTS_LIMIT:
        report.add(f"{REPORTS_LIMIT} calls at once when requests wait", peak == REPORTS_LIMIT,
                   observed=f"at most {peak} at once, with 12 requests waiting",
                   expected=f"{REPORTS_LIMIT}: the server takes that many",
                   hint=f"The limit is lower than the {REPORTS_LIMIT} the server allows: requests wait for nothing.")
    report.add("waiting requests hold no thread", threads <= REPORTS_LIMIT,
               observed=f"up to {threads} worker threads busy while requests waited",
               expected=f"at most {REPORTS_LIMIT}",
               hint="A `threading` lock or semaphore waits by blocking a worker thread (40 in all, shared by every "
                    "`def` route and sync dependency). Wait with `await` instead: FastAPI's limit needs no thread.")
    report.add("GET /ping does not wait for the reports server", ping is not None and ping.status_code == 200,
               observed=(f"/ping still unanswered after {PING_WAIT_S:g} s" if ping is None else f"/ping answered {ping.status_code}")
                        + f", while {busy} report call(s) were held at the server",
               expected="200 at once: /ping does not call the reports server",
               hint="Only the routes that call the reports server should wait: put the limit on their dependency, "
                    "not on every request (middleware).")
    if peak == REPORTS_LIMIT:
        report.add("a failed call gives its place back", peak_after == REPORTS_LIMIT,
                   observed=f"after 2 calls that raised ReportNotFound: at most {peak_after} calls at once",
                   expected=f"{REPORTS_LIMIT} again",
                   hint="A place taken must be given back when the call raises: `async with` (or a `yield` "
                        "dependency, whose exit always runs) does it; a release after the call does not.")
    if report.passed:
        await _judge_second_loop(report, app, reports)


# ---- exercise 3: single-flight caching ---------------------------------------------------------------

class RatesUpstream:
    """A slow rates API for the cache: each call answers a new value, so a stale one shows.

    Keys in `down` fail (`UpstreamError`) after their wait. `calls` lists the keys asked for;
    `spans` records when each call ran (for the picture).
    """

    def __init__(self, latency_s: tuple[float, float] = (0.03, 0.08)):
        self.latency_s = latency_s
        self.calls: list[str] = []
        self.down: set[str] = set()
        self.in_flight = InFlight()
        self.answers: dict[str, list[float]] = {}
        self.spans: list[Span] = []
        self.t0 = time.perf_counter()
        self._seen: set[float] = set()

    def calls_for(self, key: str) -> int:
        return self.calls.count(key)

    def last(self, key: str):
        return self.answers.get(key, [None])[-1]

    async def get(self, key: str) -> float:
        self.calls.append(key)
        start = time.perf_counter()
        outcome = "error"
        try:
            with self.in_flight.call():
                await asyncio.sleep(random.uniform(*self.latency_s))
                if key in self.down:
                    raise UpstreamError(f"the rates API failed for {key}")
                value = round(random.uniform(0.5, 2.5), 4)
                while value in self._seen:
                    value = round(random.uniform(0.5, 2.5), 4)
                self._seen.add(value)
                self.answers.setdefault(key, []).append(value)
                outcome = "200"
                return value
        finally:
            self.spans.append(Span(f"upstream({key})", start - self.t0, time.perf_counter() - self.t0, outcome))


class FakeClock:
    """A clock the check moves by hand: `clock()` is the time now, `clock.advance(s)` moves it on."""

    def __init__(self) -> None:
        self.now = random.uniform(1_000, 100_000)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _cache_from_state(request: Request):
    return request.state.cache


CacheDep = Annotated[object, Depends(_cache_from_state)]


def rates_app(cache_class, fetch, ttl_s: float, clock=time.monotonic) -> FastAPI:
    """The app of exercise 3: one cache, made in the lifespan, behind `GET /rates/{currency}`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield {"cache": cache_class(fetch, ttl_s=ttl_s, clock=clock)}

    app = FastAPI(lifespan=lifespan)

    @app.get("/rates/{currency}")
    async def rate(currency: str, cache: CacheDep) -> dict:
        return {"currency": currency, "rate": await cache.get(currency)}

    return app


def draw_requests_and_calls(requests: list[Span], calls: list[Span], title: str):
    """One thin bar per request, one thick bar per upstream call: a picture of a stampede (or not)."""

    requests, calls = list(requests), list(calls)  # as they are now: the picture is drawn later

    def draw(ax):
        t0 = min((s.start for s in requests + calls), default=0.0)
        for row, span in enumerate(sorted(requests, key=lambda s: s.start)):
            ax.barh(row, (span.end - span.start) * 1000, left=(span.start - t0) * 1000, height=1.0,
                    color="#8c959f", linewidth=0)
        base = len(requests) + 3
        for row, span in enumerate(sorted(calls, key=lambda s: s.start)):
            color = "#cf222e" if span.outcome != "200" else "#2f81f7"
            ax.barh(base + row, (span.end - span.start) * 1000, left=(span.start - t0) * 1000, height=1.0,
                    color=color, linewidth=0)
        ax.set_yticks([len(requests) / 2, base + max(len(calls) - 1, 0) / 2],
                      [f"{len(requests)} requests", f"{len(calls)} upstream call{'s' if len(calls) != 1 else ''}"])
        ax.invert_yaxis()
        ax.set_xlabel("time (ms)")
        ax.set_title(title, fontsize=10)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)

    def png():
        from .plots import render_png

        return render_png(draw, height=3.2)

    return png


class Herd:
    """What `stampede` saw: the requests' spans, the upstream's calls, the responses."""

    def __init__(self, timeline: Timeline, upstream: RatesUpstream, responses: list):
        self.timeline, self.responses = timeline, responses
        self.calls = list(upstream.spans)

    def picture(self, title: str):
        return draw_requests_and_calls(self.timeline.spans, self.calls, title)

    def _repr_png_(self) -> bytes:
        calls = len(self.calls)
        return self.picture(f"{len(self.timeline.spans)} requests, {calls} upstream call{'s' if calls != 1 else ''}")()


async def stampede(client, upstream: RatesUpstream, key: str, count: int = 50) -> Herd:
    """`count` requests at once for `key`, recorded for the picture. One request for another key
    goes first, unrecorded: an app's first request pays one-time costs that would blur the picture."""
    await client.get(f"/rates/warm-up-{random.randint(1000, 9999)}")
    timeline = Timeline(title=f"{count} × GET /rates/{key}")
    upstream.t0 = timeline.t0
    upstream.spans.clear()
    collecting = gc.isenabled()
    gc.disable()  # a full collection in the middle would show as a gap that is not the code's
    try:
        responses = await asyncio.gather(*(timeline.request(client, "GET", f"/rates/{key}", label=f"request {i + 1}")
                                           for i in range(count)), return_exceptions=True)
    finally:
        if collecting:
            gc.enable()
    return Herd(timeline, upstream, list(responses))


STILL_WAITING = object()


async def _gather_within(coroutines, timeout_s: float) -> list:
    """Run them all at once; each result is a value, an exception, or STILL_WAITING (then cancelled)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=0.5)
    return [STILL_WAITING if task in pending else (task.exception() or task.result()) for task in tasks]


def _currency_key() -> str:
    return random.choice(CURRENCIES) + f"-{random.randint(1000, 9999)}"


@check("Lesson 07 · a single-flight cache: one upstream call per cold key, errors shared, entries expire", limit_s=15)
async def check_single_flight(report, make_app, cache_class):
    with started_tasks() as started:  # the cache's tasks only, never the kernel's queued cells
        await _judge_single_flight(report, make_app, cache_class, started)


async def _judge_single_flight(report, make_app, cache_class, started):
    upstream = RatesUpstream(latency_s=(random.uniform(0.03, 0.05), random.uniform(0.06, 0.09)))
    wait_s = 10 * upstream.latency_s[1] + 0.5
    ttl = float(random.randint(30, 600))
    clock = FakeClock()
    key = _currency_key()
    cache_class(upstream.get, ttl_s=ttl, clock=clock)  # a cache that cannot be made says so here, in its own words
    async with serve(make_app(cache_class, upstream.get, ttl, clock), raise_app_exceptions=False) as client:
        herd = await stampede(client, upstream, key)
        bad = [r for r in herd.responses if not isinstance(r, httpx.Response) or r.status_code != 200]
        if bad:
            sample = bad[0]
            report.fail(f"50 × GET /rates/{{currency}} at once answer 200",
                        observed=f"{len(bad)} failed, e.g. " + (show_response(sample, client) if isinstance(sample, httpx.Response)
                                                                 else describe_exception(sample)),
                        expected="all 200", hint=status_hint(sample, "GET", "/rates/{currency}", client)
                        if isinstance(sample, httpx.Response) else "Look at the error above.")
            return
        rates = {(json_body(r) or {}).get("rate") for r in herd.responses}
        calls = upstream.calls_for(key)
        report.figure("50 requests for one cold key: each grey bar a request, each blue bar an upstream call",
                      herd.picture(f"50 requests, {calls} upstream call{'s' if calls != 1 else ''}"))
        if not report.add("50 requests at once for one cold key: one upstream call", calls == 1,
                          observed=f"{calls} calls to the upstream for {key}",
                          expected="1, whose value all 50 get",
                          hint="Between 'not cached' and 'stored' the fetch awaits, and every request that arrives "
                               "meanwhile starts its own: let the first start the fill and the others await that one."):
            return
        report.add("all 50 get the value of that call", rates == {upstream.last(key)},
                   observed=f"values returned: {sorted(rates, key=str)[:4]}", expected=str(upstream.last(key)),
                   hint="Return what the upstream answered.")
        hits = await asyncio.gather(*(client.get(f"/rates/{key}") for _ in range(5)))
        report.add("a cached value is served without a call", upstream.calls_for(key) == 1
                   and all((json_body(r) or {}).get("rate") == upstream.last(key) for r in hits),
                   observed=f"5 more requests: {upstream.calls_for(key) - 1} more call(s)", expected="0",
                   hint="Store the value when the fill succeeds, and serve it while it is fresh.")
    cache = cache_class(upstream.get, ttl_s=ttl, clock=clock)
    await _judge_expiry(report, cache, upstream, clock, ttl)
    await _judge_keys_apart(report, cache, upstream, wait_s)
    await _judge_failure(report, cache, upstream, wait_s)
    await _judge_cancel(report, cache, upstream, wait_s)
    settled = await _wait_until(lambda: not started.pending(), wait_s, 0.01)
    left = started.pending()
    report.add("no task left running", settled,
               observed=f"{len(left)} task(s) still running after every call returned"
                        + (f": {left[0].get_coro().__qualname__}" if left else ""),
               expected="0", hint="Every task the cache starts must end: a loop started in `__init__` runs "
                                  "forever unless something stops it. A fill task ends by itself.")
    for task in left:
        task.cancel()


async def _judge_expiry(report, cache, upstream, clock, ttl) -> None:
    key = _currency_key()
    first = await cache.get(key)
    clock.advance(ttl * 0.5)
    second = await cache.get(key)
    kept = upstream.calls_for(key) == 1 and second == first
    report.add(f"kept for ttl_s ({ttl:g} s by the clock)", kept,
               observed=f"{ttl * 0.5:g} s later by `clock`: {upstream.calls_for(key) - 1} new call(s)",
               expected="0: the value is still fresh",
               hint="A value is fresh while `clock() - stored_at < ttl_s`: compare times of the clock you were given.")
    clock.advance(ttl * 0.5 + 1)
    third = await cache.get(key)
    report.add("fetched again once ttl_s has passed", upstream.calls_for(key) == 2 and third == upstream.last(key),
               observed=f"{ttl + 1:g} s later by `clock`: {upstream.calls_for(key) - 1} new call(s), "
                        f"{'the new value' if third == upstream.last(key) else 'the old value'} returned",
               expected="1 new call, the new value",
               hint="Entries must expire: keep when each value was stored, read the time from the `clock` you were "
                    "given (not `time.monotonic()`), and fetch again once ttl_s has passed.")


async def _judge_keys_apart(report, cache, upstream, wait_s) -> None:
    keys = [_currency_key() for _ in range(6)]
    upstream.in_flight.reset()
    results = await _gather_within([cache.get(k) for k in keys], wait_s)
    report.add("different keys do not wait for each other", upstream.in_flight.peak == len(keys)
               and all(r is not STILL_WAITING and not isinstance(r, BaseException) for r in results),
               observed=f"6 cold keys at once: at most {upstream.in_flight.peak} upstream call(s) at a time",
               expected="6 at once",
               hint="One lock for the whole cache makes every key wait for every other key's fill: keep what is "
                    "in progress per key.")


async def _judge_failure(report, cache, upstream, wait_s) -> None:
    key = _currency_key()
    upstream.down.add(key)
    results = await _gather_within([cache.get(key) for _ in range(12)], wait_s)
    calls = upstream.calls_for(key)
    errors = sum(isinstance(r, UpstreamError) for r in results)
    waiting = sum(r is STILL_WAITING for r in results)
    if waiting:
        hint = "When the fill fails, the callers waiting for it must be woken with its error."
    elif calls > 1:
        hint = ("After the failure each waiter started a fill of its own, one after another: with the upstream "
                "down, the stampede comes back slowly. Hand the fill's outcome, error included, to everyone waiting.")
    else:
        hint = "Everyone waiting for a fill gets its outcome: when it raised, they get that error (re-raise it)."
    report.add("a failing fill: one call, and every waiter gets its error", calls == 1 and errors == 12,
               observed=f"upstream down, 12 callers at once: {calls} call(s); {errors} got the UpstreamError"
                        + (f", {waiting} still waiting after {wait_s:.1f} s" if waiting else ""),
               expected="1 call, 12 errors", hint=hint)
    upstream.down.discard(key)
    after = await _gather_within([cache.get(key)], wait_s)
    report.add("a failure is not cached: the next call tries again",
               upstream.calls_for(key) == calls + 1 and after[0] == upstream.last(key),
               observed=f"the upstream is back: the next get made {upstream.calls_for(key) - calls} call(s) and returned "
                        + (describe_exception(after[0]) if isinstance(after[0], BaseException) else repr(after[0])[:60]),
               expected="1 call and its value",
               hint="Store only values; forget a fill that failed, so the next caller starts a new one.")


async def _judge_cancel(report, cache, upstream, wait_s) -> None:
    """Eight callers of one cold key; one gives up while the fill runs. Tried twice, so both kinds of caller
    are covered: the one that started the fill, and one that only waits for it."""
    for who, index in (("the first caller", 0), ("a caller waiting for the fill", 4)):
        if not await _one_gives_up(report, cache, upstream, wait_s, who, index):
            return


async def _one_gives_up(report, cache, upstream, wait_s, who: str, index: int) -> bool:
    key = _currency_key()
    tasks = []
    for _ in range(8):  # one at a time, each into its get: the first starts the fill, the others find it
        tasks.append(asyncio.ensure_future(cache.get(key)))
        await asyncio.sleep(0)
    await _wait_until(lambda: upstream.calls_for(key) >= 1, wait_s)
    tasks[index].cancel()  # a client disconnects, a timeout
    others = tasks[:index] + tasks[index + 1:]
    done, pending = await asyncio.wait(others, timeout=wait_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=0.5)
    values = [t.result() if not t.cancelled() and t.exception() is None else
              (asyncio.CancelledError() if t.cancelled() else t.exception()) for t in done]
    calls = upstream.calls_for(key)
    good = sum(v == upstream.last(key) for v in values)
    broken = [v for v in values if isinstance(v, BaseException)]
    if calls > 1:
        hint = ("The caller that gave up took the fill with it, and a second fetch started for the others: run "
                "the fill in a task of its own, which no caller's cancellation reaches (`asyncio.shield(task)`).")
    else:
        hint = ("Awaiting a shared task or future directly cancels it when that caller is cancelled, for everyone: "
                "run the fill in a task of its own and await it through `asyncio.shield(...)`.")
    return report.add(f"one caller giving up does not fail the others: {who}",
                      good == 7 and calls == 1,
                      observed=f"cancelled it: {good} of the other 7 got the value, {calls} call(s) to the upstream"
                               + (f", {len(broken)} got {type(broken[0]).__name__}" if broken else "")
                               + (f", {len(pending)} still waiting" if pending else ""),
                      expected="7 of 7, from 1 call",
                      hint=hint)
