"""Lesson 09's stand-in world: a product catalog read in batches, a feed of price ticks, a
virus scanner, a slow disk, and the drawings the notebook uses. No judging here (judge.py).

Each stand-in counts what matters to the lesson exactly: rows fetched from the catalog,
subscriptions to the feed still open, files scanned. They mark what they do on any active
recorder (`checks.recorder.mark`), so a timeline shows it beside the ASGI messages.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
from pydantic import BaseModel

from ..blocking import _original_sleep, blocking_call
from ..plots import render_png
from ..recorder import mark

BATCH_SIZE = 100  # rows the catalog reads per round trip, by default
RETRY_MS = 2000  # how long a browser should wait before reconnecting to the feed
MAX_UPLOAD_BYTES = 2_000_000  # the largest request body /uploads accepts
CHUNK_BYTES = 64 * 1024  # a sensible piece of an upload to read and write at a time
INFECTED = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$COURSE-TEST-SIGNATURE"


# ---- the catalog: rows from a database, in batches ------------------------------------------------

class Product(BaseModel):
    """What the public export shows of a product (the rows also hold the purchase `cost`)."""

    id: int
    name: str
    price: float


class Catalog:
    """A products table behind an async driver: `await catalog.all()` reads every row at once,
    `async for row in catalog.stream(batch_size=100)` reads them a batch per round trip, as
    SQLAlchemy's `stream_scalars` / `yield_per` does. Rows are dicts with a private `cost`.

    Counts: `fetched` rows read from the database so far, `open_cursors` streams not finished.
    """

    def __init__(self) -> None:
        self.reset(count=500)

    def reset(self, count: int = 500, latency_s: float = 0.002, seed: int | None = None) -> None:
        rng = random.Random(seed)
        words = ["lamp", "desk", "chair", "shelf", "rug", "clock", "vase", "mirror", "stool", "bench"]
        self.rows = [{"id": i + 1, "name": f"{rng.choice(words)} {rng.randint(100, 999)}",
                      "price": round(rng.uniform(5, 500), 2), "cost": round(rng.uniform(1, 5), 2)}
                     for i in range(count)]
        self.latency_s = latency_s
        self.fetched = 0
        self.open_cursors = 0
        self.round_trips = 0

    async def _round_trip(self, rows: list[dict]) -> list[dict]:
        await asyncio.sleep(self.latency_s)
        self.round_trips += 1
        self.fetched += len(rows)
        mark(f"catalog: {self.fetched} rows fetched", kind="mark", fetched=self.fetched)
        return [dict(row) for row in rows]

    async def all(self) -> list[dict]:
        """Every row, read batch by batch, returned when the last one has arrived."""
        found = []
        for start in range(0, len(self.rows), BATCH_SIZE):
            found += await self._round_trip(self.rows[start:start + BATCH_SIZE])
        return found

    async def stream(self, batch_size: int = BATCH_SIZE):
        """Rows one by one, fetching `batch_size` per round trip when the previous batch is used up."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.open_cursors += 1
        try:
            for start in range(0, len(self.rows), batch_size):
                for row in await self._round_trip(self.rows[start:start + batch_size]):
                    yield row
        finally:
            self.open_cursors -= 1


catalog = Catalog()


# ---- the feed: price ticks with ids, for Server-Sent Events ------------------------------------------

class Tick(BaseModel):
    symbol: str
    price: float


@dataclass
class FeedEvent:
    id: int
    tick: Tick


class Subscription:
    """One listener's place in the feed: `async for event in subscription` gives each event
    (`event.id`, `event.tick`) once, waiting for new ones. Close it when the listener leaves:
    `async with feed.subscribe(...) as subscription:` does, or call `subscription.close()`."""

    def __init__(self, feed: "Feed", after: int | None) -> None:
        self.feed = feed
        self.next_index = len(feed.events) if after is None else sum(1 for e in feed.events if e.id <= after)
        self.closed = False
        self.delivered = 0
        self._wake = asyncio.Event()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.feed.open_subscriptions -= 1
            self.feed.closed_at.append(time.perf_counter())
            mark("feed: subscription closed", kind="mark", feed="closed")
            self._wake.set()

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.close()

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> FeedEvent:
        while not self.closed and self.next_index >= len(self.feed.events):
            self._wake.clear()
            await self._wake.wait()
        if self.closed:
            raise StopAsyncIteration
        event = self.feed.events[self.next_index]
        self.next_index += 1
        self.delivered += 1
        return event


class Feed:
    """Price ticks, each with an increasing integer id. `feed.subscribe(after=None)` starts a
    subscription at the next tick; `after=<id>` starts right after that id (the ticks the
    listener missed come first). Counts `open_subscriptions`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, history: int = 0, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.events: list[FeedEvent] = []
        self.subscriptions: list[Subscription] = []
        self.open_subscriptions = 0
        self.closed_at: list[float] = []
        self._next_id = self.rng.randint(100, 900)
        for _ in range(history):
            self.publish()

    def subscribe(self, after: int | None = None) -> Subscription:
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise TypeError(f"feed.subscribe(after=...) takes the id of the last event the client has, as an int "
                            f"(or None), got {after!r} ({type(after).__name__})")
        subscription = Subscription(self, after)
        self.subscriptions.append(subscription)
        self.open_subscriptions += 1
        mark("feed: subscription opened", kind="mark", feed="opened")
        return subscription

    def publish(self, symbol: str | None = None, price: float | None = None) -> FeedEvent:
        tick = Tick(symbol=symbol or self.rng.choice(["ACME", "GLOBEX", "INITECH", "UMBRELLA"]),
                    price=price if price is not None else round(self.rng.uniform(10, 200), 2))
        event = FeedEvent(self._next_id, tick)
        self._next_id += 1
        self.events.append(event)
        for subscription in self.subscriptions:
            if not subscription.closed:
                subscription._wake.set()
        return event


feed = Feed()


# ---- the virus scanner ------------------------------------------------------------------------------

class Infected(Exception):
    """The scanner found a virus signature in the file."""


class Scanner:
    """`await scanner.scan(path)` reads the file (in a worker thread) and raises `Infected` when it
    holds a known signature. Counts the files it was asked to scan."""

    def __init__(self) -> None:
        self.scanned: list[str] = []

    def reset(self) -> None:
        self.scanned = []

    async def scan(self, path) -> None:
        path = Path(path)
        self.scanned.append(str(path))

        def infected() -> bool:
            with open(path, "rb") as file:
                return INFECTED in file.read()

        if await anyio.to_thread.run_sync(infected):
            raise Infected(f"{path.name}: virus signature found")


scanner = Scanner()


# ---- a slow disk, for the demos ----------------------------------------------------------------------

class SlowDisk:
    """A file on a network disk: each `read(n)` blocks its thread for `delay_s` (as a real read
    from a slow or busy disk does), and reports itself when it runs on the event loop's thread."""

    def __init__(self, size: int = 64 * 1024 * 8, delay_s: float = 0.02) -> None:
        self.size, self.delay_s = size, delay_s

    def open(self) -> "SlowFile":
        return SlowFile(self.size, self.delay_s)


class SlowFile:
    def __init__(self, size: int, delay_s: float) -> None:
        self.left, self.delay_s = size, delay_s

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        if n:
            blocking_call("slow_file.read()")
            _original_sleep(self.delay_s)  # blocks its thread, like a disk read (reported above, not as time.sleep)
        self.left -= n
        return b"x" * n

    def close(self) -> None:
        pass

    def __enter__(self) -> "SlowFile":
        return self

    def __exit__(self, *exc_info) -> None:
        pass


slow_disk = SlowDisk()


# ---- drawings ------------------------------------------------------------------------------------------

def draw_chunks(recorder, title: str, marks: str | None = None) -> bytes:
    """A chunk timeline: one row per request, a tick per body chunk, its first byte labelled;
    `marks` (a prefix such as "catalog") adds the recorder's marks of that kind as grey dots."""

    def draw(ax):
        rows = recorder.exchanges
        right = max([recorder.events[-1].t if recorder.events else 0.0]) * 1000
        for row, exchange in enumerate(rows):
            times = [t * 1000 for t, chunk in exchange.chunks if chunk]
            sent = exchange.sent_at * 1000
            end = (exchange.ended_at or exchange.disconnected_at or recorder.now()) * 1000
            ax.barh(row, max(end - sent, 0.3), left=sent, height=0.5, color="#d0d7de")
            ax.vlines(times, row - 0.25, row + 0.25, color="#2f81f7", linewidth=0.8)
            if times:
                ax.text(times[0], row - 0.33, f"first byte {times[0] - sent:.0f} ms", fontsize=7, color="#2f81f7")
            label = "left" if exchange.disconnected_at is not None else "last byte"
            ax.text(end, row + 0.38, f" {label} {end - sent:.0f} ms, {len(times)} chunks", fontsize=7)
            if marks:
                dots = [e.t * 1000 for e in recorder.find("mark", what=marks, exchange=exchange)]
                ax.plot(dots, [row + 0.3] * len(dots), "o", color="#57606a", markersize=2)
        ax.set_yticks(range(len(rows)), [e.label for e in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, right * 1.35 + 1)
        ax.set_xlabel("ms since the recorder started (blue ticks: body chunks"
                      + (f"; grey dots: {marks} marks)" if marks else ")"), fontsize=7)
        ax.set_title(title, fontsize=10)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)

    return render_png(draw, height=1.2 + 0.7 * max(len(recorder.exchanges), 1))


class Picture:
    """Shows PNG bytes in a notebook (`Picture(draw_chunks(...))` as a cell's last line)."""

    def __init__(self, png: bytes) -> None:
        self.png = png

    def _repr_png_(self) -> bytes:
        return self.png
