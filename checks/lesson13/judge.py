"""Lesson 13's checks: CPU work in a process pool from the lifespan; settings and routers.

Both run the learner's app on a real uvicorn server on loopback (`live_server`). Verdicts come
from exact signals where there are some: which process ran the work (pids), when each job ran
(overlap), which `ProcessPoolExecutor`s were made and shut down and in which phase, whether the
worker processes are gone after shutdown; the loop's longest stall is judged against one job's
measured duration in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import time
from concurrent.futures import ProcessPoolExecutor

import psutil

from ..harness import describe_exception
from ..runner import check
from ..timing import LoopMonitor
from .world import expected_digest, live_server, rounds_for

JOB_S = 0.2  # about how long one job of the check takes on this machine, measured each run


# ---- exercise 1: CPU work in a process pool ------------------------------------------------------

class _PoolWatch:
    """Records each ProcessPoolExecutor made and shut down while it is active, with the phase."""

    def __init__(self) -> None:
        self.phase = "before"
        self.created: list[tuple[str, int]] = []  # (phase, id)
        self.shut: set[int] = set()
        self.pools: list[ProcessPoolExecutor] = []
        self.workers: set[int] = set()  # every worker pid seen, whether or not it ran a job
        self.job_pids: set = set()  # the processes the jobs say they ran in
        self.children_before = _children()  # anything started during the check is the check's to end

    def note_workers(self) -> None:
        """A pool starts workers on demand and forgets them at shutdown: note them while it has them."""
        for pool in self.pools:
            self.workers.update(getattr(pool, "_processes", None) or ())

    def __enter__(self) -> "_PoolWatch":
        self._init, self._shutdown = ProcessPoolExecutor.__init__, ProcessPoolExecutor.shutdown
        watch, init, shutdown = self, self._init, self._shutdown

        def __init__(pool, *args, **kwargs):
            watch.created.append((watch.phase, id(pool)))
            watch.pools.append(pool)
            init(pool, *args, **kwargs)

        def _shutdown(pool, *args, **kwargs):
            watch.shut.add(id(pool))
            watch.note_workers()
            return shutdown(pool, *args, **kwargs)

        ProcessPoolExecutor.__init__, ProcessPoolExecutor.shutdown = __init__, _shutdown
        return self

    def __exit__(self, *exc) -> None:
        ProcessPoolExecutor.__init__, ProcessPoolExecutor.shutdown = self._init, self._shutdown


def _children() -> set[int]:
    with contextlib.suppress(psutil.Error):
        return {child.pid for child in psutil.Process().children(recursive=True)}
    return set()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _overlap(jobs: list[dict]) -> bool:
    """Two jobs of different processes ran at the same time."""
    return any(a["pid"] != b["pid"] and a["started"] < b["ended"] and b["started"] < a["ended"]
               for i, a in enumerate(jobs) for b in jobs[i + 1:])


@check("Lesson 13 · CPU work runs in a process pool that the lifespan makes and shuts down", limit_s=30)
async def check_pool(report, app):
    rounds = rounds_for(JOB_S)
    seed = secrets.token_hex(4)
    digest = expected_digest(rounds, seed)
    with _PoolWatch() as pools:
        try:
            await _run_pool(report, app, pools, rounds, seed, digest)
        finally:
            pools.phase = "after"
            _stop_leftovers(pools)


async def _run_pool(report, app, pools: _PoolWatch, rounds: int, seed: str, digest: str) -> None:
    pools.phase = "startup"
    async with live_server(app, timeout_s=20) as live:
        pools.phase = "requests"
        # The first request may start the pool's processes: do it before measuring.
        first = await live.client.get("/crunch", params={"rounds": 1000, "seed": seed})
        if first.status_code != 200:
            report.fail("GET /crunch answers 200", observed=f"{first.status_code}: {first.text[:120]}",
                        expected="200 and crunch()'s result",
                        hint="Run `crunch(rounds, seed)` in the pool and return what it returns.")
            return
        async with LoopMonitor() as monitor:
            answers = await asyncio.gather(*(live.client.get("/crunch", params={"rounds": rounds, "seed": seed})
                                             for _ in range(4)))
        bad = next((a for a in answers if a.status_code != 200), None)
        if bad is not None:
            report.fail("four jobs at once answer 200", observed=f"{bad.status_code}: {bad.text[:120]}",
                        expected="200 each", hint="Each request runs one job in the pool and returns its result.")
            return
        jobs = [a.json() for a in answers]
        pools.job_pids = {job.get("pid") for job in jobs if isinstance(job, dict)}
        pools.note_workers()
        pools.phase = "shutdown"
    pools.phase = "after"
    _judge_pool(report, jobs, pools, digest, monitor.max_gap_s)


def _judge_pool(report, jobs: list, pools: _PoolWatch, digest: str, gap: float) -> None:
    server_pid, pids = os.getpid(), pools.job_pids
    if any(not isinstance(job, dict) or job.get("digest") != digest for job in jobs):
        shown = jobs[0].get("digest") if isinstance(jobs[0], dict) else jobs[0]
        report.fail("the job's result comes back", observed=f"digest {str(shown)[:40]!r}",
                    expected=f"{digest!r} (crunch's result for these rounds and seed)",
                    hint="Pass the query's `rounds` and `seed` to `crunch` and return its dict unchanged.")
        return
    in_server = server_pid in pids
    report.add("the work runs outside the server's process", not in_server,
               observed=f"jobs ran in process {sorted(pids)}; the server is process {server_pid}",
               expected="other processes (the pool's)",
               hint="A thread (a `def` route, `asyncio.to_thread`) still runs in the server's process and needs "
                    "its one GIL: pure-Python CPU work goes to a process pool, through `loop.run_in_executor`.")
    if not in_server:
        # Judged before the stall: a pool made per request stalls the loop (fork, then `with`'s blocking
        # shutdown), and that stall is its consequence, not the cause to name.
        made = [phase for phase, _ in pools.created]
        report.add("one pool, made by the lifespan at startup", made == ["startup"],
                   observed=f"pools made: {', '.join(made) or 'none while the app ran'}",
                   expected="one, at startup",
                   hint=("A pool made per request starts processes for every job and never shares them. "
                         if "requests" in made else
                         "A pool made when the module is imported outlives the app and is never shut down. ")
                        + "Make it in the lifespan, before `yield`, and hand it to routes through the state.")
    # One job's own duration, measured in this run: a loop that ran a job itself stalled that long.
    job_s = min(job["ended"] - job["started"] for job in jobs)
    report.add("the event loop stays free while jobs run", gap < job_s / 2,
               observed=f"the loop's longest stall: {gap * 1000:.0f} ms; one job takes about {job_s * 1000:.0f} ms",
               expected=f"under {job_s * 500:.0f} ms",
               hint="Calling `crunch` in `async def` runs it on the loop: every request waits. Hand it to the pool "
                    "and await the result.")
    if in_server:
        return
    report.add("jobs run in parallel, one process per core", len(pids) >= 2 and _overlap(jobs),
               observed=f"4 jobs at once ran in {len(pids)} process(es)" + (", at the same time" if _overlap(jobs) else ""),
               expected="at least 2 processes working at the same time",
               hint="A pool of one worker runs one job at a time: give it one worker per core.")
    alive = sorted(pid for pid in pids | pools.workers if _alive(pid))
    shut = any(pool_id in pools.shut for _, pool_id in pools.created)
    report.add("the pool is shut down at exit", not alive and shut,
               observed=(f"worker processes {alive} still running after the app stopped" if alive else
                         "the workers are gone" + ("" if shut else ", but `shutdown()` was never called")),
               expected="no worker left",
               hint="After `yield`, the lifespan shuts the pool down (`with ProcessPoolExecutor(...)` does it), "
                    "so no worker process outlives the app.")


def _stop_leftovers(pools: _PoolWatch) -> None:
    """Never leave a process behind, whatever the answer: workers that ran a job or merely started."""
    pools.note_workers()
    # A pool also starts workers nobody noted (on demand, after the last look): every child process
    # that appeared during the check is one of its pools' (the check runs nothing else).
    started = (_children() - pools.children_before) | pools.job_pids | pools.workers
    doomed = {pid for pid in started if isinstance(pid, int) and pid != os.getpid() and _alive(pid)}
    for pid in doomed:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for pool in pools.pools:  # a pool never shut down keeps its manager thread: let it end
        if id(pool) not in pools.shut:
            with contextlib.suppress(Exception):
                pool.shutdown(wait=False, cancel_futures=True)
    # SIGKILL is delivered, not instant: on a loaded machine a killed worker runs on for a moment.
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in doomed) and time.monotonic() < deadline:
        time.sleep(0.02)


# ---- exercise 2: settings and routers ------------------------------------------------------------

ENV_NAMES = ("SHOP_API_KEY", "SHOP_ENVIRONMENT", "API_KEY", "ENVIRONMENT")


@contextlib.contextmanager
def _environment(**values: str):
    saved = {name: os.environ.get(name) for name in ENV_NAMES}
    try:
        for name in ENV_NAMES:
            os.environ.pop(name, None)
        os.environ.update(values)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _make(Settings, **env: str):
    with _environment(**env):
        return Settings()


@check("Lesson 13 · settings from the environment, routers, docs off in production", limit_s=20)
async def check_settings(report, Settings, create_app):
    key = "k-" + secrets.token_urlsafe(12)
    try:
        _make(Settings, SHOP_ENVIRONMENT="production")
    except Exception as exc:
        said = str(exc)
        report.add("a missing SHOP_API_KEY stops the app at startup", "api_key" in said.lower(),
                   observed=f"Settings() raised {type(exc).__name__}" + ("" if "api_key" in said.lower() else ", without naming api_key"),
                   expected="a ValidationError naming api_key", hint="Declare `api_key` without a default: pydantic-settings "
                   "refuses to start without it and names the missing field.")
    else:
        report.fail("a missing SHOP_API_KEY stops the app at startup", observed="Settings() started without it",
                    expected="a ValidationError naming api_key",
                    hint="A default for a secret hides a forgotten variable until the first request fails: "
                         "declare `api_key` with no default.")
    try:
        settings = _make(Settings, SHOP_API_KEY=key, SHOP_ENVIRONMENT="production")
    except Exception as exc:
        report.fail("Settings() reads SHOP_API_KEY and SHOP_ENVIRONMENT", observed=describe_exception(exc),
                    expected="settings from the environment",
                    hint="Fields `api_key` and `environment`, read with the prefix `SHOP_` (`env_prefix` in `model_config`).")
        return
    value = getattr(settings, "api_key", None)
    plain = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    if plain != key:
        report.fail("Settings() reads SHOP_API_KEY", observed=f"api_key = {str(value)[:40]!r}", expected="the variable's value",
                    hint="The variables carry the prefix `SHOP_`: tell the settings class so in its configuration "
                         "(pydantic-settings calls it the environment prefix).")
        return
    shown = f"{settings!r} {settings}"
    report.add("the key never shows in a log or a traceback", key not in shown and hasattr(value, "get_secret_value"),
               observed="printing the settings shows " + ("the key" if key in shown else "**********"),
               expected="**********", hint="Type secrets as `SecretStr`: printed, logged or in an error they show as "
               "stars, and `.get_secret_value()` gives the value where it is needed.")
    environment = getattr(settings, "environment", None)
    for env_name, docs_on in (("production", False), ("development", True)):
        with _environment(SHOP_API_KEY=key, SHOP_ENVIRONMENT=env_name):
            settings = Settings()
        if getattr(settings, "environment", None) != env_name:
            report.fail("Settings() reads SHOP_ENVIRONMENT", observed=f"environment = {environment!r}", expected=env_name,
                        hint="A field `environment`, read from `SHOP_ENVIRONMENT`.")
            return
        app = create_app(settings)
        async with live_server(app) as live:
            docs = {path: (await live.client.get(path)).status_code for path in ("/docs", "/redoc", "/openapi.json")}
            if docs_on:
                report.add("docs on in development", docs["/docs"] == 200 and docs["/openapi.json"] == 200,
                           observed=", ".join(f"{p} {s}" for p, s in docs.items()), expected="/docs 200, /openapi.json 200",
                           hint="Only production turns the docs off.")
                schema = (await live.client.get("/openapi.json")).json() if docs["/openapi.json"] == 200 else {}
                tags = {tag for path, ops in schema.get("paths", {}).items() if path.startswith("/orders/")
                        for op in ops.values() for tag in op.get("tags", [])}
                report.add("the orders are documented under one tag", tags == {"orders"},
                           observed=f"tags on /orders/...: {sorted(tags) or 'none'}", expected="['orders']",
                           hint="Give the router's routes their prefix and tag where you include it, once for all.")
                continue
            report.add("docs off in production", all(status == 404 for status in docs.values()),
                       observed=", ".join(f"{p} {s}" for p, s in docs.items()), expected="404 each",
                       hint="In production set `docs_url`, `redoc_url` and `openapi_url` to None: the schema "
                            "maps every route for whoever asks.")
            order = random.randint(100, 999)
            anonymous = await live.client.get(f"/orders/{order}")
            wrong = await live.client.get(f"/orders/{order}", headers={"X-API-Key": "wrong-" + key})
            right = await live.client.get(f"/orders/{order}", headers={"X-API-Key": key})
            report.add("/orders/{id} needs the API key", anonymous.status_code == 401 and wrong.status_code == 401
                       and right.status_code == 200 and right.json().get("id") == order,
                       observed=f"no key {anonymous.status_code}, wrong key {wrong.status_code}, right key {right.status_code}",
                       expected="401, 401, 200",
                       hint="Include the orders router under `/orders` with the key check as a dependency of the "
                            "whole router: every route behind it, none forgotten.")
            health = await live.client.get("/health")
            ready = await live.client.get("/ready")
            report.add("/health and /ready answer without a key", health.status_code == 200 and ready.status_code == 200,
                       observed=f"/health {health.status_code}, /ready {ready.status_code}", expected="200 each",
                       hint="Probes (a load balancer, Kubernetes) send no key: include the probes router on its own, "
                            "without the key dependency.")
