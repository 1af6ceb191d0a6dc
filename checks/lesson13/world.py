"""Lesson 13's world: real servers on loopback, the load that measures them, a CPU-heavy job,
and the drawings. No judging here (judge.py).

Two kinds of server, both stopped whatever happens:
- `live_server(app)`: uvicorn's `Server` as a task on the notebook's own event loop, on a free
  loopback port. The app's lifespan runs under the course's harness (`serve`), so a lifespan
  that raises or hangs is reported as such, and code that blocks the loop is stopped by the
  watchdog as in every other lesson.
- `ServerProcess`: `python -m uvicorn ...` in a process group of its own (workers included),
  marked by the environment variable `COURSE_SERVER`; `stop()` ends the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

from ..harness import serve
from ..plots import ERROR_COLOR, OK_COLOR, render_png

MARKER = "COURSE_SERVER"  # every server process the lesson starts carries it in its environment
MARK = "lesson13"  # followed by the starting process's pid: another kernel's servers are not ours
HOST = "127.0.0.1"  # load goes to loopback only


# ---- a real server in the notebook's process -----------------------------------------------------

class _QuietServer(uvicorn.Server):
    """uvicorn's server without its signal handlers: the kernel keeps its own (interrupt, watchdog)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def free_socket() -> socket.socket:
    """A listening socket on a free loopback port (port 0: the system picks one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@dataclass
class Live:
    url: str
    client: httpx.AsyncClient
    server: uvicorn.Server


@contextlib.asynccontextmanager
async def live_server(app, *, limit_s: float | None = None, timeout_s: float = 10.0):
    """Serve `app` with uvicorn on a free loopback port; yield a `Live` (its url and a client).

    On exit the server stops taking requests, the lifespan's shutdown runs, the port is freed.
    """
    async with serve(app, limit_s=limit_s) as inner:
        asgi = inner._transport.app  # the app with its lifespan already started
        sock = free_socket()
        port = sock.getsockname()[1]
        config = uvicorn.Config(asgi, lifespan="off", log_level="critical", access_log=False,
                                timeout_graceful_shutdown=1)
        server = _QuietServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="course-uvicorn")
        try:
            started = time.perf_counter()
            while not server.started and not task.done() and time.perf_counter() - started < 5:
                await asyncio.sleep(0.005)
            if task.done():
                task.result()  # raises what stopped it
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=timeout_s, limits=limits) as client:
                yield Live(f"http://{HOST}:{port}", client, server)
        finally:
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), 2.0)
            except BaseException:
                server.force_exit = True
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            sock.close()


# ---- load: bounded in count and time, loopback only ----------------------------------------------

@dataclass
class LoadResult:
    label: str
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.wall_s if self.wall_s else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    def __str__(self) -> str:
        return (f"{self.label:>14}: {len(self.latencies_s)} answers in {self.wall_s * 1000:.0f} ms → "
                f"{self.throughput:.0f} req/s, p50 {self.percentile(50) * 1000:.0f} ms, "
                f"p99 {self.percentile(99) * 1000:.0f} ms" + (f", {self.errors} errors" if self.errors else ""))


async def load(client: httpx.AsyncClient, path: str, *, requests: int = 20, concurrency: int = 20,
               label: str | None = None, limit_s: float = 15.0) -> LoadResult:
    """Send `requests` GETs to `path`, `concurrency` at a time, within `limit_s`; time each."""
    if not str(client.base_url).startswith(f"http://{HOST}:"):
        raise ValueError("the course sends load to loopback only")
    result = LoadResult(label or path)
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            sent = time.perf_counter()
            try:
                response = await client.get(path)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                result.latencies_s.append(time.perf_counter() - sent)
            else:
                result.errors += 1

    started = time.perf_counter()
    async with asyncio.timeout(limit_s):
        await asyncio.gather(*(one() for _ in range(requests)))
    result.wall_s = time.perf_counter() - started
    return result


def draw_load(results: list[LoadResult], title: str) -> bytes:
    """Throughput (bars, left) and p50/p99 latency (right) per variant, one row each."""
    from matplotlib.figure import Figure
    import io

    fig = Figure(figsize=(9.0, 0.9 + 0.55 * len(results)))
    left, right = fig.subplots(1, 2, sharey=True)
    rows = list(range(len(results)))[::-1]
    names = [r.label for r in results]
    left.barh(rows, [r.throughput for r in results], color=OK_COLOR, height=0.5)
    for row, r in zip(rows, results):
        left.text(r.throughput, row, f" {r.throughput:.0f}/s", va="center", fontsize=10)
    left.set_yticks(rows, names)
    left.set_xlabel("requests per second (more is better)")
    left.margins(x=0.25)
    p50 = [r.percentile(50) * 1000 for r in results]
    p99 = [r.percentile(99) * 1000 for r in results]
    right.barh([y + 0.15 for y in rows], p50, height=0.3, color=OK_COLOR, label="p50")
    right.barh([y - 0.15 for y in rows], p99, height=0.3, color=ERROR_COLOR, label="p99")
    for row, a, b in zip(rows, p50, p99):
        right.text(b, row - 0.15, f" {b:.0f} ms", va="center", fontsize=9)
    right.set_xlabel("latency, ms (less is better)")
    right.legend(loc="lower right", fontsize=9)
    right.margins(x=0.25)
    fig.suptitle(title, fontsize=12)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


class Picture:
    """Shows PNG bytes in a notebook (`Picture(draw_load(...))` as a cell's last line)."""

    def __init__(self, png: bytes) -> None:
        self.png = png

    def _repr_png_(self) -> bytes:
        return self.png


# ---- CPU-heavy work ------------------------------------------------------------------------------

def crunch(rounds: int, seed: str = "course") -> dict:
    """CPU-heavy and pure Python (it holds the GIL): `rounds` SHA-256 steps. Says who ran it, when."""
    started = time.time()
    digest = seed.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return {"pid": os.getpid(), "started": started, "ended": time.time(), "digest": digest.hex()[:16]}


def expected_digest(rounds: int, seed: str = "course") -> str:
    digest = seed.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]


@functools.lru_cache
def rounds_for(seconds: float) -> int:
    """How many rounds of `crunch` take about `seconds` on this machine (measured once)."""
    rounds, took = 2000, 0.0
    while took < 0.02:
        rounds *= 2
        started = time.perf_counter()
        crunch(rounds)
        took = time.perf_counter() - started
    return max(1000, int(rounds * seconds / took))


# ---- servers in processes of their own (workers, shutdown) ---------------------------------------

DEMO_APP = "checks.lesson13.demo_app:app"


class ServerProcess:
    """`python -m uvicorn DEMO_APP --port P [args]` in its own process group, on loopback.

    `start()` waits until it answers (bounded); `stop()` ends it: SIGTERM first (graceful) or
    SIGKILL (abrupt), and SIGKILL to the whole group whatever happens.
    """

    def __init__(self, *args: str, app: str = DEMO_APP, env: dict | None = None) -> None:
        sock = free_socket()
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://{HOST}:{self.port}"
        self.args, self.app = list(args), app
        self.env = dict(os.environ, **(env or {}), **{MARKER: _mark(os.getpid())})
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                               os.environ.get("PYTHONPATH", "")]))
        self.process: subprocess.Popen | None = None
        self.startup_s = 0.0
        self.exit_s = 0.0

    async def start(self, limit_s: float = 20.0) -> "ServerProcess":
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", self.app, "--host", HOST, "--port", str(self.port),
             "--log-level", "warning", *self.args],
            env=self.env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        async with httpx.AsyncClient(base_url=self.url, timeout=1.0) as client:
            while time.perf_counter() - started < limit_s:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited at start (code {self.process.returncode})")
                try:
                    if (await client.get("/health")).status_code == 200:
                        self.startup_s = time.perf_counter() - started
                        return self
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the server did not answer within {limit_s:g} s")

    async def stop(self, graceful: bool = True, wait_s: float = 10.0) -> float:
        """Stop the server; return how long it took to exit (the group is killed after `wait_s`)."""
        if self.process is None:
            return 0.0
        started = time.perf_counter()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        while self.process.poll() is None and time.perf_counter() - started < wait_s:
            await asyncio.sleep(0.02)
        self.exit_s = time.perf_counter() - started
        self.kill()
        return self.exit_s

    def kill(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        # Workers are the supervisor's children in its group: killed with it, but they may take a
        # moment to die once the supervisor is gone. Wait (bounded) until none of the group lives.
        deadline = time.perf_counter() + 5
        while _group_alive(self.process.pid) and time.perf_counter() < deadline:
            time.sleep(0.01)

    async def __aenter__(self) -> "ServerProcess":
        try:
            return await self.start()
        except BaseException:
            self.kill()
            raise

    async def __aexit__(self, *exc) -> None:
        self.kill()


def _group_alive(pgid: int) -> bool:
    """Some process of group `pgid` is alive (not a zombie)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _mark(starter: int) -> str:
    return f"{MARK}:{starter}"


def leftover_servers() -> list[int]:
    """Pids of live processes that this process started as servers (for tests: none may be left).

    Only this process's: a notebook's kernel or another test worker may run lesson 13 meanwhile."""
    wanted, found = f"{MARKER}={_mark(os.getpid())}".encode(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if wanted in environ.split(b"\0") and "State:\tZ" not in status:
            found.append(int(entry.name))
    return found


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
