"""Lesson 04's stand-in world: the slow upstreams the notebook calls (profile, orders,
recommendations, ads, prices, three mirrors) and the visits table. No judging here (one
`judge_<exercise>.py` per check).

The upstreams record every call (key, start, end, how it ended), so the checks judge by exact
counts: how many calls overlapped, how many were cancelled, how many were in flight at once
across concurrent requests. `until` waits for a condition on them, woken whenever a call starts
or ends; `stop_leftovers` ends the calls a route left running.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..blocking import blocking_call
from ..services import SlowService, UpstreamError
from ..timing import Span


# ---- the stand-in upstreams --------------------------------------------------------------------


@dataclass
class Call:
    """One call to an upstream: when it ran and how it ended."""

    key: str
    start: float
    end: float | None = None
    outcome: str = "running"  # "ok", "failed", "cancelled"
    blocking: bool = False  # made with the blocking client (in some thread)
    task: asyncio.Task | None = None  # the task that waits (async client), so a leftover can be stopped
    stop: threading.Event | None = None  # ends a blocking client's wait early (a leftover in a thread)


_waiters: list[tuple[asyncio.AbstractEventLoop, object, asyncio.Future]] = []


def _wake(loop: asyncio.AbstractEventLoop) -> None:
    for waiter_loop, predicate, future in list(_waiters):
        if waiter_loop is loop and not future.done() and predicate():
            future.set_result(True)


def _changed() -> None:
    """A call started or ended: wake the checks waiting for it (from any thread)."""
    for loop in {waiter[0] for waiter in list(_waiters)}:
        if not loop.is_closed():
            loop.call_soon_threadsafe(_wake, loop)


async def until(predicate, timeout_s: float) -> bool:
    """Wait until `predicate()` holds, re-checked whenever an upstream call starts or ends;
    False if it still does not hold after `timeout_s`."""
    if predicate():
        return True
    loop = asyncio.get_running_loop()
    waiter = (loop, predicate, loop.create_future())
    _waiters.append(waiter)
    try:
        async with asyncio.timeout(timeout_s):
            await waiter[2]
        return True
    except TimeoutError:
        return bool(predicate())
    finally:
        _waiters.remove(waiter)


GATHER_S = 0.5  # how long a gathered call waits for the others before it answers anyway


class Upstream(SlowService):
    """A remote service: waits `latency_s` (or the latency a check set for that key), then
    answers, or raises `UpstreamError` when it `fails` or the key is one of `fail_keys`, or
    `KeyError` (a bug in the client, not an outage) when the key is one of `bug_keys`.

    Every call is recorded in `calls`; `reset()` starts a new record (calls still running
    from before finish without touching it).
    """

    def __init__(self, name: str, latency_s: float = 0.1, fails: bool = False):
        super().__init__(name, latency_s=latency_s, fails=fails)
        self.latency_for: dict[str, float] = {}
        self.fail_keys: set[str] = set()
        self.bug_keys: set[str] = set()
        self.calls: list[Call] = []
        self.gather_to = 0  # > 0: each call waits until this many are in flight (or GATHER_S) before it answers
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.stop_leftovers()
        super().reset()
        self.latency_for = {}
        self.fail_keys = set()
        self.bug_keys = set()
        self.calls = []
        self.gather_to = 0

    def running(self) -> list[Call]:
        return [call for call in self.calls if call.end is None]

    def stop_leftovers(self) -> int:
        """Stop the calls still running (left behind by an answer): a check counts them first,
        then ends them, so nothing waits on in the kernel. Returns how many there were."""
        left = self.running()
        for call in left:
            if call.task is not None and not call.task.done():
                call.task.cancel()
            if call.stop is not None:
                call.stop.set()
        return len(left)

    def latency(self, key: str) -> float:
        return self.latency_for.get(key, self.latency_s)

    def should_fail(self, key: str) -> bool:
        return self.fails or key in self.fail_keys

    @property
    def completed(self) -> int:
        return sum(call.outcome == "ok" for call in self.calls)

    def calls_for(self, key: str) -> list[Call]:
        return [call for call in self.calls if call.key == key]

    def _begin(self, key: str, blocking: bool = False) -> tuple[Call, list[Call]]:
        call = Call(key, time.perf_counter(), blocking=blocking)
        if blocking:
            call.stop = threading.Event()
        else:
            call.task = asyncio.current_task()
        with self._lock:
            record = self.calls
            record.append(call)
        _changed()
        return call, record

    def _end(self, call: Call, record: list[Call], outcome: str) -> None:
        call.end, call.outcome = time.perf_counter(), outcome
        if outcome == "cancelled" and record is self.calls:
            self.cancelled += 1
        if self.timeline is not None:
            t0 = self.timeline.t0
            self.timeline.spans.append(Span(f"{self.name}({call.key})", call.start - t0, call.end - t0, outcome))
        _changed()

    async def get(self, key: str) -> dict:
        """The async client: waits without holding the event loop."""
        call, record = self._begin(key)
        outcome = "cancelled"
        try:
            with self.in_flight.call():
                if self.gather_to:  # overlap by design, not by timing: a loaded machine cannot hide a lost place
                    await until(lambda: self.in_flight.current >= self.gather_to, GATHER_S)
                await asyncio.sleep(self.latency(key))
                return self._respond(key, call)
        finally:
            self._end(call, record, call.outcome if call.outcome != "running" else outcome)

    def _respond(self, key: str, call: Call) -> dict:
        if self.should_fail(key) or key in self.bug_keys:
            call.outcome = "failed"
            if key in self.bug_keys:
                raise KeyError("items")  # the client read a field the response did not have: a bug
            raise UpstreamError(f"{self.name} is down")
        call.outcome = "ok"
        return self.answer(key)

    def get_blocking(self, key: str) -> dict:
        """The blocking client (think `requests.get`): holds its thread while it waits."""
        blocking_call(f"{self.name}.get_blocking()")
        call, record = self._begin(key, blocking=True)
        try:
            with self.in_flight.call():
                if call.stop.wait(self.latency(key)):  # stopped by a check: a call left behind
                    call.outcome = "cancelled"
                    raise UpstreamError(f"{self.name}: call abandoned")
                return self._respond(key, call)
        finally:
            self._end(call, record, call.outcome if call.outcome != "running" else "failed")


class PriceService(Upstream):
    """Prices, except for discontinued items ("gone-..."), whose lookup fails."""

    def should_fail(self, key: str) -> bool:
        return key.startswith("gone-") or super().should_fail(key)


async def stop_leftovers(*services: Upstream) -> int:
    """Count the calls still running, stop them, and wait until they have ended."""
    left = sum(service.stop_leftovers() for service in services)
    await until(lambda: not any(service.running() for service in services), 1.0)
    return left


def peak_overlap(calls: list[Call]) -> int:
    """The most calls in progress at one instant (ends before starts at the same instant)."""
    events = sorted([(c.start, 1) for c in calls] + [(c.end if c.end is not None else float("inf"), -1) for c in calls],
                    key=lambda e: (e[0], e[1]))
    current = peak = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


# The lesson's upstreams (the notebook imports them, and UpstreamError, from here).
profile_api = Upstream("profile", latency_s=0.1)
orders_api = Upstream("orders", latency_s=0.1)
recommendations_api = Upstream("recommendations", latency_s=0.1)
ads_api = Upstream("ads", latency_s=0.05)
prices_api = PriceService("prices", latency_s=0.05)
mirrors = [Upstream(f"mirror-{name}", latency_s=0.1) for name in ("eu", "us", "ap")]


# ---- exercise 5's table ---------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Visit(Base):
    __tablename__ = "visits"

    id: Mapped[int] = mapped_column(primary_key=True)
    page: Mapped[str] = mapped_column(String(50))
