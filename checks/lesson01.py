"""Lesson 01, the event loop: three routes that must not block it.

Each check sends one warm-up request, then N at once, each with its own random input, and
judges, in this order (stopping at a broken response):
1. every response, exactly: values and types (inputs and the services' answers change every run);
2. "keeps the event loop free", by exact signals first:
   - `BlockingWatch`: every `time.sleep` and every blocking call of the stand-ins (`get_blocking`,
     `render`, `hash_password`) made on the event loop's thread, with the line that made it;
   - `LoopSampler` (below): the loop's thread seen staying inside learner code, without
     yielding, for at least a fifth of one call: a wait the services cannot see (`.result()`, a
     lock, a socket) or CPU work, told apart;
   - then a clock (`LoopMonitor`), a last resort for CPU work neither sees: the longest stall
     against what N whole calls would hold the loop for. Every yardstick comes from the check,
     never from the answer: a sleeping service's fixed latency, or one hash timed by the check
     itself, in a thread, before the requests;
3. "serves requests concurrently": the service's exact in-flight counter (serialised code: 1);
4. async calls ran on the app's event loop (not on a second loop made by `asyncio.run`).
Exercise 1 also asks for the async client: a `def` route, or `get_blocking` handed to a thread, keeps
the loop free but holds a worker thread for every waiting request (judged by exact signals: the
route's kind, and `get_blocking`'s calls counted on every thread).
"""

from __future__ import annotations

import asyncio
import dis
import inspect
import os
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

import anyio.to_thread

from .blocking import BlockingCall, BlockingWatch, _where, blocking_call
from .harness import describe_exception, serve
from .observe import json_body, show_response, status_hint
from .runner import check
from .services import LegacyReports, PasswordHasher, SlowService, UserStore
from .timing import InFlight, LoopMonitor, Timeline
from .watchdog import is_learner_file

LATENCY_S = 0.1  # of the forecast service and of the reporting SDK


class _CallsOnLoops:
    """Records which event loop each async call ran on, and where the learner's code made it."""

    def _record_loop(self) -> None:
        self.loops.append((asyncio.get_running_loop(), _where(sys._getframe(2))))


class LoopSampler:
    """Looks at the event loop's thread every 2 ms from another thread, and records where it stayed
    inside one frame of learner code, without yielding, for `min_s` or longer (and at least
    MIN_SAMPLES samples in a row, so a sampler starved by a busy machine cannot mistake two lucky
    looks for one stay): a wait `BlockingWatch` cannot see (`Future.result()`, a lock, a socket),
    or CPU work. A coroutine that awaits leaves the thread's stack, so right answers never stay.
    A Python loop is seen at its backward jump (where it lets other threads in); for a C call,
    the thread's CPU time tells computing from waiting, where the platform offers it."""

    def __init__(self, min_s: float, interval_s: float = 0.002, cpu_min_s: float | None = None):
        # A stay also counts once the loop's thread has *computed* `cpu_min_s` in it: CPU time does not
        # grow with a busy machine's waits (a yardstick timed under load does), nor when the thread
        # is merely descheduled.
        self.min_s, self.interval_s, self.cpu_min_s = min_s, interval_s, cpu_min_s
        self.ident = threading.get_ident()  # made on the event loop's thread
        # One per episode: {"where", "inside", "held_s", "cpu_s" (None if unknown), "python_loop"}
        self.waits: list[dict] = []
        try:
            self._cpu_clock = time.pthread_getcpuclockid(self.ident)
            time.clock_gettime(self._cpu_clock)
        except (AttributeError, OSError):
            self._cpu_clock = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="course-loop-sampler", daemon=True)

    def __enter__(self) -> "LoopSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def _cpu(self) -> float | None:
        try:
            return time.clock_gettime(self._cpu_clock) if self._cpu_clock is not None else None
        except OSError:
            return None

    def _run(self) -> None:
        last_key, since, cpu_since, samples, looping, episode = None, 0.0, None, 0, False, None
        looks: Counter = Counter()
        while not self._stop.wait(self.interval_s):
            now, cpu = time.perf_counter(), self._cpu()
            top = sys._current_frames().get(self.ident)
            found = _learner_frame_in_loop(top) if top is not None else None
            # Keyed by the outermost learner frame (the route): CPU work spread over many calls of a
            # helper still stays in it. A coroutine that awaits leaves the stack: the key changes.
            # The frame itself, not its id(): held here, it cannot be freed and its address reused
            # by the next request's route frame (back-to-back requests would merge into one stay).
            key = found[0] if found else None
            if key is None or key is not last_key:
                last_key, since, cpu_since, samples, looping, episode = key, now, cpu, 1, False, None
                looks = Counter({(_where(found[1]), found[2]): 1}) if found else Counter()
                del top, found
                continue
            samples += 1
            looping = looping or _at_backward_jump(top)
            looks[(_where(found[1]), found[2])] += 1
            computed = (cpu - cpu_since) if cpu is not None and cpu_since is not None else 0.0
            cpu_stay = self.cpu_min_s is not None and computed >= self.cpu_min_s
            # A Python loop holds the GIL: the sampler gets it only at the loop's backward jumps, and
            # other threads want it too, so few looks land. Two at the same frame, the second inside
            # the loop, with the CPU time between them, are enough.
            if (samples >= MIN_SAMPLES and (now - since >= self.min_s or cpu_stay)) or (looping and cpu_stay):
                if episode is None:
                    episode = {"where": "", "inside": "", "held_s": 0.0, "cpu_s": None}
                    self.waits.append(episode)
                # Where it was seen most: the CPU work, not the call it made on its way out.
                (episode["where"], episode["inside"]), _ = looks.most_common(1)[0]
                episode["held_s"] = now - since
                episode["python_loop"] = looping
                if cpu is not None and cpu_since is not None:
                    episode["cpu_s"] = cpu - cpu_since
            del top, found


_BACKWARD_JUMPS = {dis.opmap[name] for name in ("JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT") if name in dis.opmap}


def _at_backward_jump(frame) -> bool:
    """A Python loop lets other threads in at its backward jump: seen there, the thread was computing."""
    code = frame.f_code.co_code
    return 0 <= frame.f_lasti < len(code) and code[frame.f_lasti] in _BACKWARD_JUMPS


_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep
_REQUEST_CODE = Timeline.request.__code__


def _learner_frame_in_loop(frame):
    """For learner code the app runs on the event loop, on a live stack: (the outermost learner
    frame, the innermost one, the call the innermost is making); None when the loop runs none
    (idle, or its own, the libraries' and the check's code). The check's callers (a test, a
    notebook cell) are learner files too, so the walk stops at the check's request."""
    innermost = inside = outermost = None
    while frame is not None:
        code = frame.f_code
        if code is _REQUEST_CODE or (code.co_name in ("_run", "_run_once")
                                     and os.path.abspath(code.co_filename).startswith(_ASYNCIO_DIR)):
            break  # the check sent the request, or the loop itself: further out is not the app
        if is_learner_file(code.co_filename):
            outermost = frame
            if innermost is None:
                innermost = frame
        elif innermost is None:
            inside = frame
        frame = frame.f_back
    if innermost is None:
        return None
    return outermost, innermost, (inside.f_code.co_qualname if inside is not None else "")


class ForecastService(_CallsOnLoops, SlowService):
    """The forecast API: an async client and a blocking one; answers change every run (`salt`)."""

    SKIES = ("sunny", "cloudy", "rain", "snow", "fog")

    def __init__(self, latency_s: float = LATENCY_S):
        super().__init__("forecast", latency_s=latency_s)
        self.salt = 0
        self.loops: list = []
        self.blocking_calls: list[str] = []  # where each get_blocking() ran: "loop" or "thread"

    def reset(self) -> None:
        super().reset()
        self.loops = []
        self.blocking_calls = []

    def get_blocking(self, city: str) -> dict:
        self.blocking_calls.append(threading.current_thread().name)  # list.append: safe from any thread
        return super().get_blocking(city)

    def answer(self, city: str) -> dict:
        code = sum(map(ord, city)) * 31 + self.salt
        return {"city": city, "temp_c": code % 35 - 5, "sky": self.SKIES[code % len(self.SKIES)]}

    async def get(self, city: str) -> dict:
        """The async client: waits without holding the event loop."""
        self._record_loop()
        return await super().get(city)


class ReportSDK(LegacyReports):
    """A vendor SDK with no async API; its answers change every run (`salt`)."""

    def __init__(self, latency_s: float = LATENCY_S):
        super().__init__(latency_s=latency_s)
        self.salt = 0

    def answer(self, month: str) -> dict:
        return {"month": month, "pages": (sum(map(ord, month)) * 7 + self.salt) % 40 + 3}

    def render(self, month: str) -> dict:
        blocking_call("legacy_reports.render()")
        with self.in_flight.call():
            time.sleep(self.latency_s)
            return self.answer(month)


class Users(_CallsOnLoops, UserStore):
    """The async user store; records which event loop each `save` ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.loops: list = []

    async def save(self, email: str, password_hash: str) -> int:
        self._record_loop()
        return await super().save(email, password_hash)


forecast_api = ForecastService()
legacy_reports = ReportSDK()
hash_password = PasswordHasher(target_s=0.2)
user_store = Users()

N = 5  # requests sent at once after the warm-up
MIN_SAMPLES = 5  # looks in a row at the same learner frame before the sampler believes it stayed
MIN_PEAK = 3  # of the N calls at once: code that serialises them never gets past 1; right answers reach N
# A blocking call holds the loop for its whole duration: a sleeping service's latency (fixed),
# or one hash (timed by the check, in a thread, in the same run). The sampler flags the loop's
# thread staying in learner code for STALL_FRACTION of one call; the clock, a last resort, flags
# a stall of N whole calls. Right answers never stay at all: 90 runs of the 18 right answers in
# the tests, both cores hogged, sampler bar lowered to 10 ms, longest stay 0 ms. A fifth of a call
# catches CPU work of a fifth of a hash (40 ms) and leaves a 5x margin to a whole call's.
STALL_FRACTION = 0.2
# Or 25 ms of CPU time computed by the loop's thread inside one stay, whatever the yardstick: under
# load a hash timed in a thread took ~1 s, lifting the bar above a 187 ms stay of CPU work (CI).
CPU_STAY_S = 0.025

CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tromsø", "Hobart", "Tbilisi", "Reykjavík", "Cusco", "Hanoi"]
MONTHS = [f"2026-{m:02d}" for m in range(1, 13)]

SLEEP_HINT = ("`time.sleep` holds the thread it runs on: in `async def`, or in a plain function it calls, "
              "that is the event loop's thread, for every request. To wait there, `await asyncio.sleep(...)`.")
HELPER_NOTE = " A plain function called from `async def` runs on the event loop's thread too."
# The lesson's rule for `async def`: a blocking wait goes to `run_in_threadpool` (the 40 threads `def`
# routes share); CPU work may use either pool (more threads than cores hash no faster).
WAIT_HINT = ("Waiting on the event loop's thread, for a thread's result (`.result()`), a lock or a socket, holds "
             "the loop as surely as the blocking call itself: `await` the thread's result instead "
             "(`await run_in_threadpool(fn, *args)`).")
CPU_HINT = ("CPU work in `async def` (or in a plain function it calls) holds the event loop until it is done: "
            "hand it to a thread and await it (`run_in_threadpool` or `asyncio.to_thread`), or make it smaller.")
HIDDEN_STALL_HINT = ("Something in the route kept the thread busy without awaiting, most likely CPU work in Python: "
                     "hand it to a thread and await it, or make it smaller.")
QUEUED_HINT = ("The event loop stayed free, yet the calls ran one after another: something makes requests wait "
               "for each other (a lock held across the call, an executor with one worker, a `Semaphore(1)`).")
BLOCKED_QUEUE_HINT = "They queued because each request held the event loop while it worked (see above)."
OTHER_LOOP_HINT = ("`asyncio.run` makes a second event loop in a worker thread, per request; real async clients (a "
                   "database pool, a shared `httpx.AsyncClient`) belong to the app's loop and fail on another. "
                   "`await` the call in an `async def` route.")


@dataclass
class Run:
    """One warm-up request, then N at once: what came back and what was seen meanwhile."""

    inputs: list  # one per request, the warm-up's first
    responses: list  # responses, or the exceptions the requests raised
    warm_s: float
    total_s: float  # the N concurrent requests, first start to last end
    stall_s: float  # longest event-loop stall during the N
    on_loop: list[BlockingCall]  # blocking calls on the loop's thread, warm-up included
    waits: list[dict]  # where the loop's thread stood still in learner code (LoopSampler)
    peak: int  # most calls to the service at once, during the N
    calls: int
    timeline: Timeline


def _nothing(barrier: threading.Barrier) -> None:
    try:
        barrier.wait(timeout=1)
    except threading.BrokenBarrierError:
        pass


async def _warm_thread_pools(n: int) -> None:
    """Start n threads in both pools, off the learner's path: starting a thread holds the loop a
    little, and that must not be charged to the answer."""
    anyio_barrier, asyncio_barrier = threading.Barrier(n), threading.Barrier(n)
    await asyncio.gather(*(anyio.to_thread.run_sync(_nothing, anyio_barrier) for _ in range(n)),
                         *(asyncio.to_thread(_nothing, asyncio_barrier) for _ in range(n)))


async def _send(client, method: str, url_of, kwargs_of, inputs: list, counter: InFlight, title: str,
                one_call_s: float) -> Run:
    await _warm_thread_pools(N)

    async def one(timeline: Timeline, value, label: str):
        try:
            return await timeline.request(client, method, url_of(value), label=label, **kwargs_of(value))
        except Exception as exc:
            return exc

    with BlockingWatch() as watch, LoopSampler(min_s=STALL_FRACTION * one_call_s, cpu_min_s=CPU_STAY_S) as sampler:
        warm = Timeline()
        first = await one(warm, inputs[0], "warm-up")
        counter.reset()
        timeline = Timeline(title=title)
        async with LoopMonitor() as monitor:
            rest = await asyncio.gather(*(one(timeline, value, f"request {i + 1}") for i, value in enumerate(inputs[1:])))
    return Run(inputs=inputs, responses=[first, *rest], warm_s=warm.total_s, total_s=timeline.total_s,
               stall_s=monitor.max_gap_s, on_loop=list(watch.on_loop), waits=list(sampler.waits),
               peak=counter.peak, calls=counter.calls, timeline=timeline)


def _service_calls(on_loop: list[BlockingCall]) -> list[BlockingCall]:
    """The blocking calls seen, without the `time.sleep` a stand-in service makes inside its own call."""
    kept: list[BlockingCall] = []
    inside_service = False  # the last call kept was a service's, and its own sleep is still to come
    for call in on_loop:
        is_sleep = call.what.startswith("time.sleep(")
        if is_sleep and inside_service and kept[-1].where == call.where:
            inside_service = False
            continue
        kept.append(call)
        inside_service = not is_sleep
    return kept


def _describe_calls(calls: list[BlockingCall], limit: int = 2) -> str:
    counts: dict[str, int] = {}
    for call in calls:
        counts[str(call)] = counts.get(str(call), 0) + 1
    parts = [text + (f" ({count} times)" if count > 1 else "") for text, count in list(counts.items())[:limit]]
    more = len(counts) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _endpoint_names(app, path_template: str) -> set[str]:
    names = set()
    for route in getattr(getattr(app, "router", None), "routes", []) or []:
        if getattr(route, "path", None) == path_template and hasattr(route, "endpoint"):
            names.add(getattr(route.endpoint, "__name__", ""))
    return names


def _judge_responses(report, run: Run, client, method: str, url_of, body_problem) -> bool:
    """Every response, exactly. False (and one failed item) at the first broken one."""
    for value, response in zip(run.inputs, run.responses):
        path = url_of(value)
        if isinstance(response, BaseException):
            report.fail(f"{method} {path} answers", observed=f"the request failed: {describe_exception(response)}",
                        hint="Your route raised before it could answer: read the error, fix it, run the cell again.")
            return False
        if response.status_code != 200:
            report.fail(f"{method} {path} answers 200", observed=show_response(response, client), expected="200",
                        hint=_status_hint(response, method, path, client, run))
            return False
        problem = body_problem(value, response)
        if problem:
            expected, hint = problem
            report.fail(f"{method} {path} answers with the right body", observed=show_response(response),
                        expected=expected, hint=hint)
            return False
    report.add(f"{len(run.inputs)} requests, each answered 200 with its own right body", True)
    return True


def _status_hint(response, method: str, path: str, client, run: Run) -> str:
    errors = client.errors_for(response.request.url.path)
    text = str(errors[-1].exception) if errors else ""
    if response.status_code >= 500 and "coroutine" in text:
        return ("Your route returned a coroutine object, not its result: an async function runs only when it is "
                "awaited on the event loop. A call without `await`, or one handed to a thread, never runs it.")
    if response.status_code >= 500 and "object is not callable" in text and _service_calls(run.on_loop):
        return ("The blocking call ran on the event loop before the thread got it: `to_thread` and "
                "`run_in_threadpool` take the function and its arguments, separately, and call it in the thread.")
    if response.status_code >= 500 and "pickle" in text:
        return ("A process pool sends the function and its arguments to another process by pickling them, and this "
                "stand-in hasher cannot be pickled (it holds a lock). It needs no process: PBKDF2 releases the GIL, "
                "so threads hash in parallel (measured in the lesson). Await it in a thread.")
    if response.status_code >= 500 and "cannot be called from a running event loop" in text:
        return ("`asyncio.run` starts a new event loop, and this thread already runs one: in `async def`, just "
                "`await` the coroutine.")
    return status_hint(response, method, path, client)


def _judge_loop(report, app, path_template: str, run: Run, one_call_s: float, yardstick: str,
                blocking_hints: dict) -> bool:
    """Exact signals first (the watch, then the sampler); the clock only for what neither sees."""
    name = "keeps the event loop free"
    expected = "no blocking call or wait on the event loop's thread: each runs in a worker thread"
    calls = _service_calls(run.on_loop)
    if calls:
        first = calls[0]
        hint = SLEEP_HINT if first.what.startswith("time.sleep") else blocking_hints.get(first.what, SLEEP_HINT)
        function = first.where.split("()", 1)[0].removeprefix("in ") if first.where.startswith("in ") else ""
        if function and function not in _endpoint_names(app, path_template) and not first.what.startswith("time.sleep"):
            hint += HELPER_NOTE
        return report.fail(name, observed=f"on the event loop's thread: {_describe_calls(calls)}",
                           expected=expected, hint=hint)
    if run.waits:
        longest = max(run.waits, key=lambda wait: wait["held_s"])
        held_ms, cpu_s = longest["held_s"] * 1000, longest["cpu_s"]
        # A Python loop is seen at its backward jump; in a C call, the thread's CPU time tells
        # computing (most of the time) from waiting (almost none); in between, say only what was seen.
        busy = longest.get("python_loop", False) or (cpu_s is not None and cpu_s >= 0.5 * longest["held_s"])
        waiting = not busy and cpu_s is not None and cpu_s < 0.1 * longest["held_s"]
        inside = f" inside `{longest['inside']}()`" if longest["inside"] else ""
        cpu = f" (CPU time {cpu_s * 1000:.0f} ms)" if cpu_s is not None else ""
        if busy:
            doing, hint = f"computed for {held_ms:.0f} ms {longest['where']}{inside}{cpu}", CPU_HINT
        elif waiting:
            doing, hint = f"waited {held_ms:.0f} ms {longest['where']}{inside}{cpu}", WAIT_HINT
        else:
            doing, hint = f"stayed {held_ms:.0f} ms {longest['where']}{inside} without yielding{cpu}", \
                f"{WAIT_HINT} {CPU_HINT}"
        return report.fail(
            name,
            observed=f"the event loop's thread {doing}" + (f" ({len(run.waits)} times)" if len(run.waits) > 1 else ""),
            expected=expected + f" (it stays in your code under {STALL_FRACTION * one_call_s * 1000:.0f} ms, "
                                f"{STALL_FRACTION:.0%} of {yardstick}, and computes there under "
                                f"{CPU_STAY_S * 1000:.0f} ms)",
            hint=hint,
        )
    # The clock is the last resort (CPU work outside any learner frame the sampler could see), so
    # its bar is high: a machine busy with other work stalls a free loop too (measured: up to ~0.5 s).
    stall_ms, limit_ms = run.stall_s * 1000, N * one_call_s * 1000
    return report.add(
        name,
        stall_ms < limit_ms,
        observed=(f"no blocking call ran on its thread, longest stall {stall_ms:.0f} ms" if stall_ms < limit_ms else
                  f"the event loop stalled {stall_ms:.0f} ms while {N} requests ran, though no blocking call of "
                  f"the services, no `time.sleep` and no wait was seen on its thread"),
        expected=f"stalls under {limit_ms:.0f} ms: {N} × {yardstick}, what running all {N} calls on the loop "
                 f"would hold it for",
        hint=HIDDEN_STALL_HINT,
    )


THREAD_HINT = ("A worker thread keeps the loop free, but each waiting request holds one for the whole wait, from a "
               "pool of 40 (`def` routes, `run_in_threadpool`) or fewer (`asyncio.to_thread`): 100 requests at once "
               "wait in three waves of 40. The service has an async client: in `async def`, "
               "`await forecast_api.get(city)` waits holding no thread.")


def _judge_async_client(report, app, run: Run) -> bool:
    """Exercise 1: awaited, not waited for in a thread. Exact: the route's kind, get_blocking's calls."""
    endpoints = [route.endpoint for route in getattr(getattr(app, "router", None), "routes", []) or []
                 if getattr(route, "path", None) == "/forecast/{city}" and hasattr(route, "endpoint")]
    in_threads = forecast_api.blocking_calls  # those on the loop's thread failed the item before
    if endpoints and not any(inspect.iscoroutinefunction(e) for e in endpoints):
        observed = "a plain `def` route: FastAPI runs each request in a worker thread"
    elif in_threads:
        observed = f"{len(in_threads)} of {len(run.inputs)} requests called forecast_api.get_blocking() in a worker thread"
    else:
        return report.add("awaits the async client, holding no thread", True)
    return report.fail("awaits the async client, holding no thread", observed=observed,
                       expected="`async def`, awaiting forecast_api.get(city)", hint=THREAD_HINT)


def _judge_concurrency(report, run: Run, service: str, loop_free: bool) -> None:
    if run.calls < N:
        report.fail("serves requests concurrently",
                    observed=f"only {run.calls} of the {N} requests sent at once called {service}",
                    expected=f"each request calls {service}",
                    hint="Ask the service for every request: an answer kept from an earlier request, or made up, "
                         "is not what the service says now.")
    else:
        report.add("serves requests concurrently", run.peak >= MIN_PEAK,
                   observed=f"at most {run.peak} of {N} calls to {service} ran at once; the {N} requests took "
                            f"{run.total_s * 1000:.0f} ms",
                   expected=f"at least {MIN_PEAK} at once",
                   hint=QUEUED_HINT if loop_free else BLOCKED_QUEUE_HINT)
    report.figure(f"Your {N} requests: overlapping bars are concurrent, a staircase is not", run.timeline._repr_png_)


def _judge_loops(report, loops: list, app_loop, what: str) -> None:
    elsewhere = [where for loop, where in loops if loop is not app_loop]
    where = next((w for w in elsewhere if w), "")
    report.add("runs async calls on the app's event loop", not elsewhere,
               observed=(f"{len(elsewhere)} of {len(loops)} calls to {what} ran on another event loop"
                         + (f", {where}" if where else "")) if elsewhere else f"all {len(loops)} calls to {what}",
               expected="every call on the event loop that serves the requests",
               hint=OTHER_LOOP_HINT)


def _metrics(report, run: Run, extra_s: float = 0.0) -> None:
    # Time spent inside the learner's requests (and the check's own probe): the check's overhead is the rest.
    report.metrics["in_requests_s"] = run.warm_s + run.total_s + extra_s


# ---- exercise 1 ---------------------------------------------------------------------------

@check("Lesson 01 · GET /forecast/{city} awaits the forecast service", limit_s=10)
async def check_forecast(report, app):
    forecast_api.latency_s = LATENCY_S
    forecast_api.salt = random.randrange(1, 10_000)
    forecast_api.reset()
    cities = random.sample(CITIES, N + 1)
    app_loop = asyncio.get_running_loop()

    def body_problem(city, response):
        body, expected = json_body(response), forecast_api.answer(city)
        if body == expected:
            return None
        others = [c for c in CITIES if c != city and body == forecast_api.answer(c)]
        hint = (f"That is {others[0]}'s forecast: an answer kept from another request?" if others else
                "Return the service's answer for the city as it is (its values change every run).")
        return str(expected), hint

    async with serve(app, raise_app_exceptions=False) as client:
        run = await _send(client, "GET", lambda c: f"/forecast/{c}", lambda c: {}, cities, forecast_api.in_flight,
                          f"{N} × GET /forecast/... at once", LATENCY_S)
        if not _judge_responses(report, run, client, "GET", lambda c: f"/forecast/{c}", body_problem):
            return
        free = _judge_loop(report, app, "/forecast/{city}", run, LATENCY_S,
                           f"one {LATENCY_S * 1000:.0f} ms call to forecast_api",
                           {"forecast.get_blocking()": "`get_blocking` holds the thread while it waits, and in "
                            "`async def` that thread runs the event loop. The service also has a client you can await."})
        if free:
            _judge_async_client(report, app, run)
        _judge_concurrency(report, run, "forecast_api", free)
        if forecast_api.loops:
            _judge_loops(report, forecast_api.loops, app_loop, "forecast_api.get()")
        _metrics(report, run)


# ---- exercise 2 ---------------------------------------------------------------------------

@check("Lesson 01 · GET /report/{month} keeps the blocking SDK off the loop", limit_s=10)
async def check_report(report, app):
    legacy_reports.latency_s = LATENCY_S
    legacy_reports.salt = random.randrange(1, 10_000)
    legacy_reports.in_flight.reset()
    months = random.sample(MONTHS, N + 1)

    def body_problem(month, response):
        body, expected = json_body(response), legacy_reports.answer(month)
        if body == expected:
            return None
        return str(expected), "Return what `legacy_reports.render(month)` returns, as it is (its values change every run)."

    async with serve(app, raise_app_exceptions=False) as client:
        run = await _send(client, "GET", lambda m: f"/report/{m}", lambda m: {}, months, legacy_reports.in_flight,
                          f"{N} × GET /report/... at once", LATENCY_S)
        if not _judge_responses(report, run, client, "GET", lambda m: f"/report/{m}", body_problem):
            return
        free = _judge_loop(report, app, "/report/{month}", run, LATENCY_S,
                           f"one {LATENCY_S * 1000:.0f} ms call to legacy_reports.render()",
                           {"legacy_reports.render()": "The SDK has no async API, so it must not run on the event "
                            "loop's thread. Which kind of route does FastAPI run in its thread pool?"})
        _judge_concurrency(report, run, "legacy_reports.render()", free)
        _metrics(report, run)


# ---- exercise 3 ---------------------------------------------------------------------------

@check("Lesson 01 · POST /signup hashes in a thread, then awaits the store", limit_s=15)
async def check_signup(report, app):
    app_loop = asyncio.get_running_loop()
    # The yardstick: one hash, timed by the check in a thread, before any learner code runs.
    started = time.perf_counter()
    await asyncio.to_thread(hash_password, f"probe-{random.random()}")
    one_hash_s = time.perf_counter() - started
    hash_password.in_flight.reset()
    user_store.users.clear()
    user_store.loops = []
    tag = random.randint(100, 999)
    signups = [{"email": f"learner{tag}-{i}@example.com", "password": f"horse-{random.randint(10**5, 10**6)}-{i}"}
               for i in range(N + 1)]

    def body_problem(signup, response):
        body = json_body(response)
        shape = f'{{"id": <int>, "email": "{signup["email"]}"}}'
        if isinstance(body, dict) and {"password", "password_hash"} & set(body):
            return shape, ("Never send the password or its hash back: answer exactly id and email "
                           "(a return type such as `User` drops the rest).")
        if not isinstance(body, dict) or set(body) != {"id", "email"} or body["email"] != signup["email"] \
                or type(body["id"]) is not int:
            return shape, "Answer the new user's id (an int, from `user_store.save`) and the email, nothing else."
        saved = user_store.users.get(body["id"])
        if saved is None or saved["email"] != signup["email"]:
            return shape + f" where id is the one `user_store.save` gave {signup['email']}", \
                "Save the user with `user_store.save(email, password_hash)` and answer the id it returns."
        if saved["password_hash"] != hash_password.results.get(signup["password"]):
            return "the user saved with `hash_password(password)`'s result as its hash", \
                "Save the hash itself: an un-awaited coroutine or a hash of something else is not it."
        return None

    async with serve(app, raise_app_exceptions=False) as client:
        run = await _send(client, "POST", lambda s: "/signup", lambda s: {"json": s}, signups, hash_password.in_flight,
                          f"{N} × POST /signup at once", one_hash_s)
        if not _judge_responses(report, run, client, "POST", lambda s: "/signup", body_problem):
            return
        free = _judge_loop(report, app, "/signup", run, one_hash_s,
                           f"one hash ({one_hash_s * 1000:.0f} ms, timed by this check in a thread)",
                           {"hash_password()": "Hashing is CPU work: inside `async def` it holds the event loop. The "
                            "route awaits the store, so hand just the hashing to a thread and await that."})
        _judge_concurrency(report, run, "hash_password()", free)
        _judge_loops(report, user_store.loops, app_loop, "user_store.save()")
        _metrics(report, run, one_hash_s)
