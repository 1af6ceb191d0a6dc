"""The app lesson 13's demos run in server processes of their own (`ServerProcess`):
an in-memory counter, a slow route, and a lifespan whose shutdown leaves a line in a file.

`COURSE_SHUTDOWN_LOG` names that file: each process appends "started <pid>" at startup and
"shutdown <pid>" when its lifespan's shutdown runs, so the notebook can see which ran.
"""

import asyncio
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI


def _log(what: str) -> None:
    path = os.environ.get("COURSE_SHUTDOWN_LOG")
    if path:
        with open(path, "a") as file:
            file.write(f"{what} {os.getpid()}\n")


@asynccontextmanager
async def lifespan(app: FastAPI):
    _log("started")
    yield
    _log("shutdown")


app = FastAPI(lifespan=lifespan)
hits = 0  # in memory: one per process


@app.get("/health")
async def health():
    return {"ok": True}


@app.get("/hit")
async def hit(busy_ms: float = 0.0):
    global hits
    hits += 1
    until = time.perf_counter() + min(busy_ms, 50) / 1000
    while time.perf_counter() < until:  # CPU work of each request: this worker is busy meanwhile
        pass
    return {"hits": hits, "pid": os.getpid()}


@app.get("/slow")
async def slow(seconds: float = 1.0):
    await asyncio.sleep(min(seconds, 5.0))
    return {"slept": seconds, "pid": os.getpid()}
