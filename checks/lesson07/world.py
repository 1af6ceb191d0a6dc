"""Lesson 07's stand-in world: what an app opens once, shares, and closes. No judging here
(the checks are in `judge_lifespan.py`, `judge_limit.py` and `judge_cache.py`).

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
import os
import random
import string
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

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

from ..harness import AppClient
from ..services import UpstreamError
from ..timing import InFlight, Span, Timeline


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


# ---- exercise 2: the reports service, slow and scarce -----------------------------------------------

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


# ---- a second event loop (the next test of a suite) ----------------------------------------------

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
        from ..plots import render_png

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
