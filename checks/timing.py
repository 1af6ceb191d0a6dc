"""Timing tools that stay fair on slow, noisy machines: judge by ratios taken in one run.

- `LoopMonitor`: a heartbeat every 5 ms; its longest gap is how long the event loop was
  kept from running anything else. Start it BEFORE creating the workload (`gather`
  schedules its tasks at once, so a heartbeat started after it misses the block).
- `InFlight`: an exact count of calls running at the same time (thread-safe).
- `Timeline`: when each request started and ended, to draw or to judge overlap.
- `measure_concurrency`: one warm-up request, then N at once under a `LoopMonitor`.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

TICK_S = 0.005


class LoopMonitor:
    """Measures the longest time the event loop went without running a 5 ms heartbeat.

    Garbage collection is paused while it runs so a collection is not mistaken for a block.
    """

    def __init__(self, tick_s: float = TICK_S):
        self.tick_s = tick_s
        self.gaps: list[float] = []
        self._task: asyncio.Task | None = None
        self._last = 0.0
        self._gc_was_enabled = False

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.perf_counter()
            self.gaps.append(now - self._last)
            self._last = now

    async def __aenter__(self) -> "LoopMonitor":
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        self._last = time.perf_counter()
        self._task = asyncio.create_task(self._beat())
        await asyncio.sleep(0)  # let the heartbeat start before the workload exists
        return self

    async def __aexit__(self, *exc_info) -> None:
        # The time since the last beat counts too: the workload may have blocked until now.
        self.gaps.append(time.perf_counter() - self._last)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._gc_was_enabled:
            gc.enable()

    @property
    def max_gap_s(self) -> float:
        return max(self.gaps, default=0.0)


class InFlight:
    """Counts calls in progress (`with counter.call(): ...`), from tasks and threads alike.

    `peak` is the most that ever ran at once; `durations` holds each finished call's time.
    `reset()` starts a new generation: a call still running from before (a thread left over
    from an earlier attempt) finishes without touching the new counts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self.current = 0
        self.peak = 0
        self.calls = 0
        self.durations: list[float] = []

    def reset(self) -> None:
        with self._lock:
            self._generation += 1
            self.current = self.peak = self.calls = 0
            self.durations = []

    @contextmanager
    def call(self):
        with self._lock:
            generation = self._generation
            self.current += 1
            self.calls += 1
            self.peak = max(self.peak, self.current)
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                if generation == self._generation:
                    self.current -= 1
                    self.durations.append(time.perf_counter() - start)


@dataclass
class Span:
    label: str
    start: float
    end: float
    outcome: str  # "200", "500", "TimeoutError", ...

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Timeline:
    """When each request ran, relative to the timeline's creation. Displays as a picture."""

    title: str = "requests over time"
    t0: float = field(default_factory=time.perf_counter)
    spans: list[Span] = field(default_factory=list)

    async def request(self, client, method: str, url: str, label: str | None = None, **kwargs):
        """Send one request through `client`, recording when it ran. Returns the response."""
        start = time.perf_counter() - self.t0
        outcome = "error"
        try:
            response = await client.request(method, url, **kwargs)
            outcome = str(response.status_code)
            return response
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            end = time.perf_counter() - self.t0
            self.spans.append(Span(label or f"{method} {url}", start, end, outcome))

    @property
    def total_s(self) -> float:
        if not self.spans:
            return 0.0
        return max(s.end for s in self.spans) - min(s.start for s in self.spans)

    def peak_overlap(self) -> int:
        """The most requests that were in progress at the same instant."""
        events = sorted([(s.start, 1) for s in self.spans] + [(s.end, -1) for s in self.spans])
        current = peak = 0
        for _, step in events:
            current += step
            peak = max(peak, current)
        return peak

    def __repr__(self) -> str:
        lines = [f"{self.title}: {len(self.spans)} requests in {self.total_s * 1000:.0f} ms"]
        lines += [
            f"  {s.label:<24} {s.start * 1000:7.0f} → {s.end * 1000:7.0f} ms  {s.outcome}"
            for s in sorted(self.spans, key=lambda s: s.start)
        ]
        return "\n".join(lines)

    def _repr_png_(self) -> bytes:
        from .plots import draw_timeline, render_png

        return render_png(lambda ax: draw_timeline(ax, self), height=1.0 + 0.45 * max(len(self.spans), 2))


@dataclass
class ConcurrencyRun:
    """N identical requests sent at once, after one warm-up request (`first`)."""

    first: object
    single_s: float
    total_s: float
    max_gap_s: float
    responses: list
    timeline: Timeline

    @property
    def ratio(self) -> float:
        """Total time ÷ one request's time: ~1 when they overlap, ~N when they queue."""
        return self.total_s / self.single_s if self.single_s > 0 else float("inf")


async def measure_concurrency(
    client, method: str, url: str, n: int = 5, title: str | None = None, **request_kwargs
) -> ConcurrencyRun:
    """Warm up with one request (starts the thread pool), then send `n` at once."""
    warm = Timeline()
    first = await warm.request(client, method, url, **request_kwargs)
    timeline = Timeline(title=title or f"{n} × {method} {url} at once")
    async with LoopMonitor() as monitor:
        responses = await asyncio.gather(
            *(timeline.request(client, method, url, label=f"request {i + 1}", **request_kwargs) for i in range(n)),
            return_exceptions=True,
        )
    return ConcurrencyRun(
        first=first,
        single_s=warm.spans[0].duration,
        total_s=timeline.total_s,
        max_gap_s=monitor.max_gap_s,
        responses=list(responses),
        timeline=timeline,
    )
