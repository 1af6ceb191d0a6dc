"""Lesson 07, exercise 3: a single-flight cache (and, at the end, all three checks at once)."""

import asyncio
import time

import httpx
import pytest

from checks.lesson07 import (
    RATES_URL, check_lifespan, check_shared_limit, check_single_flight, rates_app, rates_server, reports_app,
)
from conftest import failure_text, names, warnings_from_checks
from lesson07_helpers import failing, lesson, prices_app

# Wrong answers that never close a session leave SQLAlchemy to warn when it collects them: expected here.
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")]


class FutureCache:
    """A future per key, filled by a task of its own; callers await the future through a shield."""

    def __init__(self, fetch, ttl_s, clock=time.monotonic):
        self.fetch, self.ttl_s, self.clock = fetch, ttl_s, clock
        self.values, self.pending, self.tasks = {}, {}, set()

    async def get(self, key):
        if key in self.values and self.clock() < self.values[key][1]:
            return self.values[key][0]
        if key not in self.pending:
            self.pending[key] = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._fill(key, self.pending[key]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await asyncio.shield(self.pending[key])

    async def _fill(self, key, future):
        try:
            value = await self.fetch(key)
        except Exception as error:
            future.set_exception(error)
        else:
            self.values[key] = (value, self.clock() + self.ttl_s)
            future.set_result(value)
        finally:
            del self.pending[key]


class TaskEntryCache:
    """Entries hold the fill's task itself; a failed one is dropped by a done-callback."""

    def __init__(self, fetch, ttl_s, clock=time.monotonic):
        self.fetch, self.ttl_s, self.clock = fetch, ttl_s, clock
        self.entries = {}  # key -> (task, started_at)

    async def get(self, key):
        entry = self.entries.get(key)
        if entry is None or (entry[0].done() and self.clock() - entry[1] >= self.ttl_s):
            task = asyncio.create_task(self.fetch(key))
            entry = self.entries[key] = (task, self.clock())
            task.add_done_callback(lambda done, key=key: self._forget_failure(key, done))
        return await asyncio.shield(entry[0])

    def _forget_failure(self, key, task):
        if task.exception() is not None and self.entries.get(key, (None,))[0] is task:
            del self.entries[key]


@pytest.mark.parametrize("cache_class", [lesson["SingleFlightCache"], FutureCache, TaskEntryCache],
                         ids=["the notebook's", "a future per key", "the task as the entry"])
async def test_single_flight_right_answers_pass(cache_class):
    report = await check_single_flight.report(rates_app, cache_class)
    assert report.passed, report.text()


class Base:
    def __init__(self, fetch, ttl_s, clock=time.monotonic):
        self.fetch, self.ttl_s, self.clock = fetch, ttl_s, clock
        self.values = {}

    def fresh(self, key):
        hit = self.values.get(key)
        return hit is not None and self.clock() - hit[1] < self.ttl_s

    async def store(self, key):
        value = await self.fetch(key)
        self.values[key] = (value, self.clock())
        return value


class NoSingleFlight(Base):
    async def get(self, key):
        return self.values[key][0] if self.fresh(key) else await self.store(key)


class OneLockForAll(Base):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock = asyncio.Lock()

    async def get(self, key):
        if self.fresh(key):
            return self.values[key][0]
        async with self.lock:
            return self.values[key][0] if self.fresh(key) else await self.store(key)


class LockPerKey(Base):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.locks = {}

    async def get(self, key):
        if self.fresh(key):
            return self.values[key][0]
        async with self.locks.setdefault(key, asyncio.Lock()):
            return self.values[key][0] if self.fresh(key) else await self.store(key)


class FailureCached(Base):
    """The fill's task is the cache entry, failed or not."""

    async def get(self, key):
        hit = self.values.get(key)
        if hit is None or (hit[0].done() and self.clock() - hit[1] >= self.ttl_s):
            hit = self.values[key] = (asyncio.create_task(self.fetch(key)), self.clock())
        return await asyncio.shield(hit[0])


class NeverExpires(Base):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fills = {}

    async def get(self, key):
        if key in self.values:
            return self.values[key][0]
        if key not in self.fills:
            self.fills[key] = asyncio.create_task(self._fill(key))
        return await asyncio.shield(self.fills[key])

    async def _fill(self, key):
        try:
            return await self.store(key)
        finally:
            del self.fills[key]


class WallClock(NeverExpires):
    """Expires, but by `time.monotonic()`, not by the clock it was given."""

    async def get(self, key):
        hit = self.values.get(key)
        if hit is not None and time.monotonic() - hit[2] < self.ttl_s:
            return hit[0]
        if key not in self.fills:
            self.fills[key] = asyncio.create_task(self._fill(key))
        return await asyncio.shield(self.fills[key])

    async def store(self, key):
        value = await self.fetch(key)
        self.values[key] = (value, self.clock(), time.monotonic())
        return value


class NoShield(NeverExpires):
    async def get(self, key):
        if self.fresh(key):
            return self.values[key][0]
        if key not in self.fills:
            self.fills[key] = asyncio.create_task(self._fill(key))
        return await self.fills[key]  # a caller cancelled cancels the task for everyone


class InlineFiller(Base):
    """The first caller fetches itself and hands the value to the others through a future."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending = {}

    async def get(self, key):
        if self.fresh(key):
            return self.values[key][0]
        if key in self.pending:
            return await asyncio.shield(self.pending[key])
        future = self.pending[key] = asyncio.get_running_loop().create_future()
        try:
            value = await self.store(key)
        except Exception as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self.pending[key]


class EventThenRetry(Base):
    """The first caller fetches; the others wait for an event and, finding no value, try again."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.filling = {}

    async def get(self, key):
        while True:
            if self.fresh(key):
                return self.values[key][0]
            event = self.filling.get(key)
            if event is None:
                break
            await event.wait()  # then: a value, or (the filler gave up) another go
        event = self.filling[key] = asyncio.Event()
        try:
            return await self.store(key)
        finally:
            del self.filling[key]
            event.set()


class SwallowsErrors(NeverExpires):
    """Single flight and expiry right, but a failed fill answers None instead of raising."""

    async def get(self, key):
        if self.fresh(key):
            return self.values[key][0]
        if key not in self.fills:
            self.fills[key] = asyncio.create_task(self._fill(key))
        return await asyncio.shield(self.fills[key])

    async def _fill(self, key):
        try:
            return await self.store(key)
        except Exception:
            return None
        finally:
            del self.fills[key]


class EvictionLoop(NeverExpires):
    """Right, except for a clean-up loop started in __init__ that nothing ever stops."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cleaner = asyncio.create_task(self._evict())

    async def _evict(self):
        while True:
            await asyncio.sleep(0.05)
            for key in [k for k in self.values if not self.fresh(k)]:
                del self.values[key]

    async def get(self, key):
        if self.fresh(key):
            return self.values[key][0]
        self.values.pop(key, None)
        return await super().get(key)


GIVES_UP = "one caller giving up does not fail the others: the first caller"
CACHE_MISTAKES = {
    "no single flight (a stampede)": (NoSingleFlight, ["50 requests at once for one cold key: one upstream call"],
                                      "the first start the fill"),
    # A lock: when the caller holding it gives up, the next one fetches again (a second fetch).
    "one lock for every key": (OneLockForAll, ["different keys do not wait for each other",
                                               "a failing fill: one call, and every waiter gets its error", GIVES_UP],
                               "per key"),
    "a lock per key: waiters retry a failure": (LockPerKey, ["a failing fill: one call, and every waiter gets its error",
                                                             GIVES_UP], "slow"),
    "a failure is cached": (FailureCached, ["a failure is not cached: the next call tries again"], "forget"),
    "no expiry": (NeverExpires, ["fetched again once ttl_s has passed"], "expire"),
    "expiry by the wall clock": (WallClock, ["fetched again once ttl_s has passed"], "not `time.monotonic()`"),
    "a shared task without shield": (NoShield, [GIVES_UP], "shield"),
    "the first caller fills inline": (InlineFiller, [GIVES_UP], "shield"),
    "the filler gives up, a waiter fetches again": (EventThenRetry, ["a failing fill: one call, and every waiter gets its "
                                                    "error", GIVES_UP], "a second fetch started"),
    "errors swallowed": (SwallowsErrors, ["a failing fill: one call, and every waiter gets its error"], "re-raise"),
    "a clean-up loop never stopped": (EvictionLoop, ["no task left running"], "`__init__`"),
}


@pytest.mark.parametrize("cache_class, failed, hint", CACHE_MISTAKES.values(), ids=CACHE_MISTAKES.keys())
async def test_single_flight_mistakes(cache_class, failed, hint):
    report = await failing(check_single_flight, rates_app, cache_class)
    assert names(report) == failed, report.text()
    assert hint in failure_text(report)


async def test_the_checks_raise_no_warning_of_their_own():
    from test_lesson07_lifespan import client_never_closed, http_from_state, session_from_state

    assert not await warnings_from_checks(
        check_lifespan.report(prices_app, lesson["lifespan"], lesson["get_http"], lesson["get_session"]),
        check_lifespan.report(prices_app, client_never_closed, http_from_state, session_from_state),
        check_shared_limit.report(reports_app, lesson["add_report_routes"]),
        check_single_flight.report(rates_app, lesson["SingleFlightCache"]),
        check_single_flight.report(rates_app, NoShield),
    )


async def test_the_rates_server_counts_connections_exactly():
    rates_server.reset()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=2)) as client:
        answers = await asyncio.gather(*(client.get(f"{RATES_URL}/rates/GBP") for _ in range(6)))
    assert {a.json()["rate"] for a in answers} == {rates_server.rate("GBP")}
    assert rates_server.connections == 2 and rates_server.peak_open == 2 and rates_server.requests == 6
