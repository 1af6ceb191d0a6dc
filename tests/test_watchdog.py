import asyncio
import time

import pytest

from checks.watchdog import CheckTimeout, time_limit

pytestmark = pytest.mark.anyio
GRACE = 0.2  # shorter than the default, to keep the suite fast


async def elapsed_until_timeout(body, limit=0.3):
    start = time.perf_counter()
    with pytest.raises(CheckTimeout) as caught:
        async with time_limit(limit, hard_grace_s=GRACE):
            await body()
    return time.perf_counter() - start, caught.value


async def test_busy_loop_in_a_coroutine_is_stopped_and_reported_as_blocked():
    async def spin():
        while True:
            pass

    elapsed, error = await elapsed_until_timeout(spin)
    assert error.blocked
    assert elapsed < 0.3 + GRACE + 1.0  # limit + hard grace + slack


async def test_except_exception_in_learner_code_does_not_swallow_the_stop():
    async def stubborn():
        while True:
            try:
                while True:
                    pass
            except Exception:
                pass

    _, error = await elapsed_until_timeout(stubborn)
    assert error.blocked


async def test_blocking_sleep_is_interrupted():
    async def sleeper():
        time.sleep(3600)

    elapsed, error = await elapsed_until_timeout(sleeper)
    assert error.blocked and elapsed < 3


async def test_several_blocked_tasks_are_each_stopped():
    async def spin_later():
        await asyncio.sleep(0)
        while True:
            pass

    async def many():
        await asyncio.gather(*(spin_later() for _ in range(3)), return_exceptions=True)

    elapsed, error = await elapsed_until_timeout(many)
    assert error.blocked and elapsed < 4


async def test_awaiting_forever_is_a_timeout_but_not_a_block():
    elapsed, error = await elapsed_until_timeout(lambda: asyncio.Event().wait())
    assert not error.blocked  # the soft deadline ended it: the alarm never had to fire
    # Bounded, not timed: the garbage collection after a stop takes ~1 s in a test worker holding
    # a whole suite's objects (1.14 s seen in a fresh-clone run).
    assert elapsed < 5.0


async def test_a_timeout_error_of_the_code_itself_is_not_mistaken_for_the_limit():
    async def own_timeout():
        raise TimeoutError("upstream timed out")

    with pytest.raises(TimeoutError, match="upstream"):
        async with time_limit(5):
            await own_timeout()


async def test_fast_code_passes_and_the_alarm_is_disarmed():
    import signal

    async with time_limit(0.1, hard_grace_s=GRACE):
        await asyncio.sleep(0.01)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    await asyncio.sleep(0.5)  # an alarm left armed would fire here


async def test_code_that_turns_the_cancellation_into_its_own_error_still_times_out():
    async def converts():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("startup failed") from None

    elapsed, error = await elapsed_until_timeout(converts)
    assert not error.blocked and elapsed < 5.0  # bounded (see above), and not taken for a block


async def test_waiting_on_the_loop_itself_from_a_coroutine_is_stopped():
    # `run_coroutine_threadsafe(...).result()` inside `async def` waits for a coroutine that
    # only the blocked loop could run: the wait is in threading.py, called by learner code.
    async def answer():
        return 42

    async def deadlock():
        future = asyncio.run_coroutine_threadsafe(answer(), asyncio.get_running_loop())
        return future.result()

    elapsed, error = await elapsed_until_timeout(deadlock)
    assert error.blocked
    assert elapsed < 0.3 + GRACE + 1.0


def test_frozen_modules_are_not_learner_files():
    from checks.watchdog import is_learner_file

    assert not is_learner_file("<frozen runpy>")
    assert not is_learner_file(asyncio.__file__)
    assert is_learner_file(__file__)


async def test_a_blocked_loop_is_reported_at_the_learners_line():
    async def spin():
        while True:  # the line the report names
            pass

    _, error = await elapsed_until_timeout(spin)
    line = spin.__code__.co_firstlineno + 1
    assert error.where in (f"in spin(), line {line}", f"in spin(), line {line + 1}"), error.where
    assert error.what.startswith("the event loop was blocked in spin(), line ")


async def test_tasks_queued_behind_a_busy_one_are_cancelled_not_each_interrupted():
    """Lesson 07's cache: 40 requests waiting to resume into one busy loop were stopped one alarm
    (REFIRE_S) apart, 10 s after the limit; the first interruption now cancels the rest."""
    async def spin_later():
        await asyncio.sleep(0)
        while True:
            pass

    async def many():
        await asyncio.gather(*(spin_later() for _ in range(40)), return_exceptions=True)

    elapsed, error = await elapsed_until_timeout(many)
    assert error.blocked and elapsed < 0.3 + GRACE + 2.0, elapsed  # 40 refires would take 10 s
