import asyncio
import threading
import time

import pytest
from fastapi import FastAPI

from checks.harness import serve
from checks.timing import InFlight, LoopMonitor, Span, Timeline, measure_concurrency

pytestmark = pytest.mark.anyio


async def test_loop_monitor_sees_a_block_started_right_after_it():
    async with LoopMonitor() as monitor:
        time.sleep(0.1)
    assert monitor.max_gap_s >= 0.095


async def test_loop_monitor_sees_a_block_inside_gathered_tasks():
    async def blocker():
        time.sleep(0.05)

    async with LoopMonitor() as monitor:
        await asyncio.gather(blocker(), blocker())
    assert monitor.max_gap_s >= 0.095  # two 50 ms blocks back to back


async def test_loop_monitor_stays_low_while_tasks_await():
    async with LoopMonitor() as monitor:
        await asyncio.gather(*(asyncio.sleep(0.05) for _ in range(20)))
    assert monitor.max_gap_s < 0.04


async def test_loop_monitor_restores_gc():
    import gc

    assert gc.isenabled()
    async with LoopMonitor():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_in_flight_counts_the_peak_across_threads():
    counter = InFlight()
    barrier = threading.Barrier(4)

    def work():
        with counter.call():
            barrier.wait(timeout=5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (counter.peak, counter.current, counter.calls) == (4, 0, 4)
    assert len(counter.durations) == 4 and all(d >= 0 for d in counter.durations)
    counter.reset()
    assert (counter.peak, counter.calls, counter.durations) == (0, 0, [])


def test_timeline_overlap_and_total():
    timeline = Timeline(spans=[Span("a", 0.0, 0.2, "200"), Span("b", 0.1, 0.3, "200"), Span("c", 0.3, 0.4, "200")])
    assert timeline.peak_overlap() == 2
    assert timeline.total_s == pytest.approx(0.4)
    assert "a" in repr(timeline)
    assert timeline._repr_png_().startswith(b"\x89PNG")


def sleepy_app():
    app = FastAPI()

    @app.get("/async")
    async def good():
        await asyncio.sleep(0.05)
        return {}

    @app.get("/blocking")
    async def bad():
        time.sleep(0.05)
        return {}

    return app


async def test_measure_concurrency_tells_overlap_from_queueing():
    async with serve(sleepy_app()) as client:
        good = await measure_concurrency(client, "GET", "/async", n=5)
        bad = await measure_concurrency(client, "GET", "/blocking", n=5)
    assert good.first.status_code == 200 and all(r.status_code == 200 for r in good.responses)
    assert good.ratio < 2 and good.timeline.peak_overlap() == 5
    assert bad.ratio > 3.5 and bad.max_gap_s >= 0.2
    assert len(bad.timeline.spans) == 5
