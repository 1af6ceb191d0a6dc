"""Lesson 13's shared-state world: a visit counter kept in a SQLite file, served by two worker
processes at once.

`visits_app(count_visit, path)` is the app: `POST /visits/{page}` answers the count that
`count_visit(session, page)` returns, with a session from the lifespan's sessionmaker. The table
is made once by `new_database()`, before any worker starts (two workers creating it at once race).

`two_workers(count_visit, visits)` forks two processes from this one, each serving the app with
uvicorn on a loopback port of its own (like `uvicorn --workers 2`, but the load is sent to each
worker in turn, so both always serve half of it), sends the visits at once, stops both workers and
returns what they answered and what the database holds. Forked, not spawned: the learner's function
lives in the notebook and cannot be imported by a fresh process.
"""

import asyncio
import contextlib
import multiprocessing
import os
import secrets
import signal
import sqlite3
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Integer, String, event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..harness import describe_exception
from .world import HOST, free_socket

SQLITE_TIMEOUT_S = 10  # how long a write waits for another process's lock (twice sqlite3's default: a loaded machine)
ANSWER_TIMEOUT_S = SQLITE_TIMEOUT_S + 2  # a visit waits at most for the lock, then answers


class Base(DeclarativeBase):
    pass


class Visit(Base):
    __tablename__ = "visits"

    page: Mapped[str] = mapped_column(String(100), primary_key=True)
    hits: Mapped[int] = mapped_column(Integer)


def new_database(folder: str) -> Path:
    """A fresh SQLite file with the visits table (made here, once: workers only open it)."""
    path = Path(folder, "visits.db")
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE visits (page VARCHAR(100) PRIMARY KEY, hits INTEGER NOT NULL)")
    return path


def stored_hits(path: Path, page: str) -> int | None:
    """What the database holds for `page` (None: no row)."""
    with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)) as db:
        row = db.execute("SELECT hits FROM visits WHERE page = ?", (page,)).fetchone()
    return None if row is None else row[0]


def visits_app(count_visit, path: Path) -> FastAPI:
    """The app around the learner's `count_visit`: one engine per process, made by the lifespan."""

    async def lifespan(app: FastAPI):
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": SQLITE_TIMEOUT_S})

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def _note(conn, cursor, statement, *args):
            if statement.lstrip().split(None, 1)[0].upper() in {"INSERT", "UPDATE", "REPLACE"}:
                app.state.writes += 1  # tells "never written" from "written, never committed"

        app.state.writes = 0
        try:
            yield {"sessions": async_sessionmaker(engine, expire_on_commit=False)}
        finally:
            await engine.dispose()

    async def get_session(request: Request):
        async with request.state.sessions() as session:
            yield session

    app = FastAPI(lifespan=contextlib.asynccontextmanager(lifespan))

    @app.post("/visits/{page}")
    async def visit(page: str, session: Annotated[AsyncSession, Depends(get_session)]):
        try:
            hits = await count_visit(session, page)
        except Exception as exc:  # a worker's error reaches the check in the answer (its output is dropped)
            return JSONResponse({"error": describe_exception(exc).splitlines()[0][:160]}, status_code=500)
        return {"page": page, "hits": hits, "pid": os.getpid()}

    return app


# ---- two worker processes ---------------------------------------------------------------------------

def _serve_in_child(app, sock) -> None:
    """A forked worker: quiet, its own event loop, uvicorn until SIGTERM."""
    signal.set_wakeup_fd(-1)  # the parent's loop's wake-up pipe is not this process's
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")
    config = uvicorn.Config(app, lifespan="on", log_level="critical", access_log=False, timeout_graceful_shutdown=1)
    uvicorn.Server(config).run(sockets=[sock])


@dataclass
class Visits:
    """What two workers answered for `visits` visits of one page, and what the database holds."""
    page: str
    sent: int
    answers: list = field(default_factory=list)  # (status, hits or the body's start, pid), in the order sent
    stored: int | None = None

    @property
    def hits(self) -> list:
        return [hits for status, hits, _ in self.answers if status == 200]

    @property
    def pids(self) -> set:
        return {pid for status, _, pid in self.answers if status == 200}

    def summary(self) -> str:
        hits = self.hits
        top = max((h for h in hits if isinstance(h, int)), default=None)
        return (f"{self.sent} visits, {len(self.pids)} worker(s); answers 1 to {top}, "
                f"{len(hits) - len(set(map(str, hits)))} repeated; the database holds {self.stored}")


async def two_workers(count_visit, visits: int = 40) -> Visits:
    """Send `visits` visits of a new page at once, half to each of two worker processes."""
    context = multiprocessing.get_context("fork")
    page = f"page-{secrets.token_hex(3)}"
    result = Visits(page, visits)
    with tempfile.TemporaryDirectory(prefix="course-visits-") as folder:
        path = new_database(folder)
        app = visits_app(count_visit, path)
        sockets = [free_socket(), free_socket()]
        workers = [context.Process(target=_serve_in_child, args=(app, sock), daemon=True) for sock in sockets]
        try:
            for worker in workers:
                worker.start()
            urls = [f"http://{HOST}:{sock.getsockname()[1]}" for sock in sockets]
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(timeout=ANSWER_TIMEOUT_S, limits=limits) as client:
                async def one(index: int):
                    try:
                        response = await client.post(f"{urls[index % 2]}/visits/{page}")
                    except httpx.TimeoutException:
                        return ("no answer", f"within {ANSWER_TIMEOUT_S} s (the worker's event loop never got back?)", None)
                    except httpx.HTTPError as exc:
                        return (type(exc).__name__, str(exc)[:80], None)
                    try:
                        body = response.json()
                        return (response.status_code, body.get("hits", body.get("error")), body.get("pid"))
                    except (ValueError, AttributeError):
                        return (response.status_code, response.text[:80], None)

                result.answers = list(await asyncio.gather(*(one(i) for i in range(visits))))
        finally:
            for sock in sockets:
                sock.close()
            await asyncio.to_thread(_stop, workers)
        result.stored = stored_hits(path, page)
    return result


def _stop(workers) -> None:
    """SIGTERM (uvicorn stops, the lifespan disposes its engine), then SIGKILL after 3 s."""
    for worker in workers:
        if worker.pid is not None and worker.is_alive():
            with contextlib.suppress(OSError):
                os.kill(worker.pid, signal.SIGTERM)
    for worker in workers:
        if worker.pid is None:
            continue
        worker.join(3)
        if worker.is_alive():
            worker.kill()
            worker.join(2)
