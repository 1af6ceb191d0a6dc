"""Start an app in process: its lifespan runs, and an httpx client talks to it over ASGI.

    async with serve(app) as client:
        response = await client.get("/items")

`ASGITransport` alone does not run the lifespan, so the app is wrapped in
`LifespanManager` and the client is given `manager.app` (state yielded by the lifespan
reaches `request.state` only that way). Every exception the app raises while handling a
request is recorded in `client.app_errors`, even when an exception handler already
turned it into a 500, so a check can tell the learner what raised where.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import httpx
from asgi_lifespan import LifespanManager

from .watchdog import CheckTimeout, is_learner_file, limit_active, time_limit

BASE_URL = "http://testserver"


@dataclass
class AppError:
    """An exception raised inside the app while it handled a request."""

    method: str
    path: str
    exception: BaseException

    def __str__(self) -> str:
        return f"{self.method} {self.path} raised {describe_exception(self.exception)}"


class AppClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` that also knows which exceptions the app raised."""

    app_errors: list[AppError]

    def errors_for(self, path: str) -> list[AppError]:
        return [error for error in self.app_errors if error.path == path]


def _learner_frame(exc: BaseException):
    """The innermost traceback frame that is neither a library's nor this package's."""
    found = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if is_learner_file(frame.f_code.co_filename):
            found = (frame.f_code.co_name, lineno, os.path.abspath(frame.f_code.co_filename))
    return found


def _learner_frame_of(frame):
    """The innermost frame of a live stack, from `frame` outwards, that is the learner's."""
    while frame is not None:
        if is_learner_file(frame.f_code.co_filename):
            return frame.f_code.co_name, frame.f_lineno, frame.f_code.co_filename
        frame = frame.f_back
    return None


def describe_exception(exc: BaseException) -> str:
    """`ValueError: bad input (in forecast(), line 3)`: short, in the learner's terms."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # One line: a Pydantic ValidationError spreads over several, ending with a link to its docs.
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith("For further information visit")]
    text = " · ".join(lines)
    if len(text) > 300:
        text = text[:297] + "..."
    where = _learner_frame(exc)
    if where:
        name, lineno, filename = where
        in_cell = "ipykernel_" in filename or filename.startswith("<ipython")
        text += f" (in {name}(), line {lineno}{' of its cell' if in_cell else ''})"
    return text


def _recording(app, errors: list[AppError]):
    async def recorder(scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            # A shallow copy of the lifespan state per request, as uvicorn makes: asgi-lifespan
            # hands every request the same dict, so `request.state.x = ...` in one request
            # would show up in every concurrent one.
            scope["state"] = dict(scope.get("state") or {})
        try:
            if scope["type"] == "http":
                # Each request in a task of its own, as a server runs it: a ContextVar the app sets
                # stays in that request (ASGITransport alone runs it in the caller's task, so it
                # leaked into the notebook cell and into the next request). Awaiting the task
                # passes a cancellation of the caller on to it.
                await asyncio.get_running_loop().create_task(app(scope, receive, send),
                                                             context=contextvars.copy_context())
            else:
                await app(scope, receive, send)
        except BaseException as exc:
            if scope["type"] == "http":
                errors.append(AppError(scope.get("method", "?"), scope.get("path", "?"), exc))
            raise

    return recorder


class AppStartupError(Exception):
    """The app's lifespan failed or hung while starting: no request could be sent."""


# A demo cell (not a check) that runs learner code under `serve()` gets this time limit, so
# a hanging or blocking exercise stops the demo with a message instead of the kernel.
DEMO_LIMIT_S = 30.0


class DemoStopped(Exception):
    """A demo ran past its time limit; shown as one message, not a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"DemoStopped: {self}"]


@asynccontextmanager
async def serve(app, *, limit_s: float | None = None, **kwargs) -> AsyncIterator[AppClient]:
    """Run `app`'s lifespan and yield a client wired to it; shut it down on exit.

    Keyword arguments are `_serve`'s. Outside a check, the whole block runs under a time
    limit (`limit_s`, default `DEMO_LIMIT_S`): code that awaits forever or blocks the loop
    is stopped and the kernel lives on. Inside a check, the check's own limit applies.
    """
    if limit_active():
        async with _serve(app, **kwargs) as client:
            yield client
        return
    limit = DEMO_LIMIT_S if limit_s is None else limit_s
    try:
        async with time_limit(limit):
            async with _serve(app, **kwargs) as client:
                yield client
    except CheckTimeout as exc:
        what = exc.what
        raise DemoStopped(
            f"stopped after {limit:g} s: {what}. Code run by this cell (yours, from an exercise above?) "
            + ("never gave the event loop back: a busy loop or a blocking call in `async def`."
               if exc.blocked else "waits for something that never comes: does every route return?")
        ) from None


@asynccontextmanager
async def _serve(
    app,
    *,
    raise_app_exceptions: bool = True,
    base_url: str = BASE_URL,
    lifespan_timeout: float = 3.0,
    timeout: float | None = 30.0,
) -> AsyncIterator[AppClient]:
    """Run `app`'s lifespan and yield a client wired to it; shut it down on exit.

    `raise_app_exceptions=False` lets a request that raised come back as the 500 the app
    sent (lessons about error responses need that); the exception is still recorded.
    """
    if not callable(app):
        raise TypeError(f"serve() needs an ASGI app such as FastAPI(), got {type(app).__name__}")
    errors: list[AppError] = []
    manager = LifespanManager(
        _recording(app, errors), startup_timeout=lifespan_timeout, shutdown_timeout=lifespan_timeout
    )
    try:
        await manager.__aenter__()
    except TimeoutError as exc:
        raise AppStartupError(f"its lifespan did not finish starting within {lifespan_timeout:g} s") from exc
    except Exception as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError() from exc  # a deadline cancelled us: not the app's failure
        # asgi-lifespan reports an app that raised on the lifespan scope as LifespanNotSupported;
        # the learner's own exception, chained to it, says more.
        cause = (exc.__cause__ or exc.__context__) if type(exc).__name__ == "LifespanNotSupported" else None
        raise AppStartupError(f"its lifespan raised {describe_exception(cause or exc)} while starting") from exc

    body_error: Exception | None = None
    try:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=raise_app_exceptions)
        async with AppClient(transport=transport, base_url=base_url, timeout=timeout) as client:
            client.app_errors = errors
            yield client
    except Exception as exc:
        # LifespanManager skips shutdown when its body raised: run it anyway, then re-raise.
        body_error = exc
    except BaseException:
        await manager.__aexit__(*sys.exc_info())
        raise
    await manager.__aexit__(None, None, None)
    if body_error is not None:
        raise body_error


def in_notebook() -> bool:
    """True inside a Jupyter kernel (rich output available)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    return type(shell).__name__ == "ZMQInteractiveShell"
