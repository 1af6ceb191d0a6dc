"""A time limit that holds even when learner code blocks the event loop.

Two layers:
- a soft deadline (`asyncio.timeout`) cancels code that awaits forever;
- a hard deadline (SIGALRM, main thread only) interrupts code that never yields
  (`while True: pass`, `time.sleep(3600)` in `async def`). The kernel's own interrupt
  does not stop a busy loop inside an awaited coroutine on ipykernel 7.4; a signal
  handler that raises does (see shared/MYTHS.md).

The handler raises `LoopBlocked`, a BaseException, so a learner's `except Exception`
does not swallow it. It only raises while learner code is running: if the signal lands
inside asyncio's own machinery or inside this package, it waits for the next tick.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import signal
import sysconfig
import threading
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .tasks import StartedTasks

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep
_LIBRARY_DIRS = tuple(
    os.path.abspath(path) + os.sep
    for path in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
)
# How long after the soft deadline the hard one fires, and how often it re-fires
# (several blocked tasks each need their own interruption).
HARD_GRACE_S = 1.0
REFIRE_S = 0.25


class LoopBlocked(BaseException):
    """Raised into learner code that kept the event loop busy past the time limit."""


class CheckTimeout(Exception):
    """A check ran out of time. `blocked` tells whether the event loop was stuck, and `where`
    ("in get(), line 7 of its cell") which learner code held it, when that is known."""

    def __init__(self, limit_s: float, blocked: bool, where: str | None = None):
        self.limit_s = limit_s
        self.blocked = blocked
        self.where = where if blocked else None
        super().__init__(
            f"time limit of {limit_s:g} s reached "
            + (f"(the event loop was blocked{' ' + self.where if self.where else ''})" if blocked
               else "(something awaited forever)")
        )

    @property
    def what(self) -> str:
        """`the event loop was blocked in get(), line 7 of its cell` / `something awaited forever`."""
        if not self.blocked:
            return "something awaited forever"
        return "the event loop was blocked" + (f" {self.where}" if self.where else "")


# Set while a time limit is active in this context: an inner limit would replace the
# outer one's SIGALRM timer, so `serve()` adds its own only where none is running.
_limited: contextvars.ContextVar[bool] = contextvars.ContextVar("course_time_limit", default=False)


def limit_active() -> bool:
    return _limited.get()


@dataclass
class _State:
    fired: bool = False
    where: str | None = None  # the learner's line the first interruption landed in


def _learner_place(frame) -> str | None:
    """`in get(), line 7 of its cell`: the innermost learner frame of a live stack."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if is_learner_file(filename):
            in_cell = "ipykernel_" in filename or filename.startswith("<ipython")
            return f"in {frame.f_code.co_name}(), line {frame.f_lineno}{' of its cell' if in_cell else ''}"
        frame = frame.f_back
    return None


def is_learner_file(filename: str) -> bool:
    """Neither the standard library, an installed package, this package nor frozen code."""
    if filename.startswith("<frozen"):
        return False  # checked first: abspath("<frozen runpy>") is a path in the cwd
    filename = os.path.abspath(filename)
    return not filename.startswith((*_LIBRARY_DIRS, _PACKAGE_DIR))


def _is_machinery(filename: str) -> bool:
    """asyncio's own code or this package's."""
    return os.path.abspath(filename).startswith((_ASYNCIO_DIR, _PACKAGE_DIR))


def _is_internal(frame) -> bool:
    """True when the interrupted frame belongs to asyncio, selectors or this package
    (but not to the `time.sleep` wrapper, which runs on behalf of the learner's code).

    A wait in threading or selectors counts as the learner's when learner code called it
    from inside a task (`future.result()` on the loop's own thread waits forever); the
    loop's idle `select()` is reached from asyncio without learner code in between.
    """
    if frame is None:
        return False
    if frame.f_code.co_name == "_watched_sleep":
        return False
    filename = frame.f_code.co_filename
    if _is_machinery(filename):
        return True
    if os.path.basename(filename) in {"selectors.py", "threading.py"}:
        return not _called_by_learner(frame)
    return False


def _called_by_learner(frame) -> bool:
    """A learner frame calls `frame` before asyncio or this package does."""
    frame = frame.f_back
    while frame is not None:
        if is_learner_file(frame.f_code.co_filename):
            return True
        if _is_machinery(frame.f_code.co_filename):
            return False
        frame = frame.f_back
    return False


def _can_use_signals() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@asynccontextmanager
async def time_limit(seconds: float, hard_grace_s: float | None = None):
    """Run the body under a time limit; raise `CheckTimeout` when it is exceeded.

    Code that awaits is cancelled at `seconds`; code that blocks the loop is interrupted
    `hard_grace_s` later (the soft deadline cannot fire while the loop is stuck).
    """
    if hard_grace_s is None:
        hard_grace_s = HARD_GRACE_S  # read at call time, so a test may shorten it
    state = _State()
    use_signals = _can_use_signals()
    previous = None

    def on_alarm(signum, frame):
        if _is_internal(frame):
            return  # not in learner code: try again at the next tick
        if not state.fired:
            state.fired, state.where = True, _learner_place(frame)
            # Tasks of the code under test that wait their turn would each resume into the same
            # busy code and need an interruption of their own (REFIRE_S apart): cancel them now.
            for task in started.pending():
                if task is not asyncio.current_task():
                    task.cancel()
        raise LoopBlocked(f"stopped after {seconds:g} s: the event loop was blocked")

    started = StartedTasks().__enter__()
    if use_signals:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds + hard_grace_s, REFIRE_S)
    token = _limited.set(True)
    stopped = False
    try:
        soft = asyncio.timeout(seconds)
        try:
            async with soft:
                yield
        except TimeoutError as exc:
            if not soft.expired():
                raise  # a TimeoutError of the code under test, not our deadline
            raise CheckTimeout(seconds, state.fired, state.where) from exc
        except LoopBlocked as exc:
            raise CheckTimeout(seconds, True, state.where) from exc
        except BaseExceptionGroup as group:
            if state.fired or group.subgroup(LoopBlocked) is not None:
                raise CheckTimeout(seconds, True, state.where) from group
            raise
        except BaseException:
            if state.fired or soft.expired():
                # Code under test turned our cancellation into an error of its own.
                raise CheckTimeout(seconds, state.fired, state.where) from None
            raise
        if state.fired:
            # The blocked code ran in another task that died; ours finished anyway.
            raise CheckTimeout(seconds, True, state.where)
    except CheckTimeout:
        stopped = True
        raise
    finally:
        started.__exit__(None, None, None)
        _limited.reset(token)
        if use_signals:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        if stopped:
            _collect_now()


def _collect_now() -> None:
    """Collect what stopped code left (a torn-down app's lifespan task, cancelled coroutines) now,
    with the alarm off. Left to a later collection, their finalizers may run while IPython
    compiles the next cell, which on Python 3.11.7 fails with "SystemError: AST constructor
    recursion depth mismatch" (CPython gh-106905) and the cell never answers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()
