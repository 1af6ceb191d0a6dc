from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from checks.harness import describe_exception, serve

pytestmark = pytest.mark.anyio


def app_with_lifespan(events):
    @asynccontextmanager
    async def lifespan(app):
        events.append("startup")
        yield {"greeting": "hi"}
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/state")
    async def state(request: Request):
        return {"greeting": request.state.greeting}

    return app


async def test_lifespan_runs_and_its_state_reaches_requests():
    events = []
    async with serve(app_with_lifespan(events)) as client:
        assert events == ["startup"]
        response = await client.get("/state")
        assert response.json() == {"greeting": "hi"}
    assert events == ["startup", "shutdown"]


async def test_shutdown_runs_even_when_the_body_raises():
    events = []
    with pytest.raises(RuntimeError):
        async with serve(app_with_lifespan(events)):
            raise RuntimeError("boom")
    assert events == ["startup", "shutdown"]


def failing_app():
    app = FastAPI()

    @app.get("/boom")
    async def boom():
        return 1 / 0

    return app


async def test_app_exceptions_are_raised_by_default_and_recorded():
    async with serve(failing_app()) as client:
        with pytest.raises(ZeroDivisionError):
            await client.get("/boom")
        assert [error.path for error in client.app_errors] == ["/boom"]


async def test_without_raising_the_client_sees_the_500_and_the_error_is_still_recorded():
    app = failing_app()

    @app.exception_handler(Exception)
    async def catch_all(request, exc):
        return JSONResponse({"error": "internal"}, status_code=500)

    async with serve(app, raise_app_exceptions=False) as client:
        response = await client.get("/boom")
        assert response.status_code == 500 and response.json() == {"error": "internal"}
        (error,) = client.errors_for("/boom")
        assert isinstance(error.exception, ZeroDivisionError)
        assert "GET /boom raised ZeroDivisionError: division by zero (in boom(), line" in str(error)


async def test_a_lifespan_that_raises_surfaces_its_error():
    @asynccontextmanager
    async def lifespan(app):
        raise ValueError("no database")
        yield

    from checks.harness import AppStartupError

    with pytest.raises(AppStartupError, match="its lifespan raised ValueError: no database .in lifespan.., line"):
        async with serve(FastAPI(lifespan=lifespan)):
            pass


async def test_serve_rejects_what_is_not_an_app():
    with pytest.raises(TypeError, match="needs an ASGI app"):
        async with serve(None):
            pass


def test_describe_exception_is_short_and_names_the_learner_function():
    def learner_code():
        raise KeyError("city")

    try:
        learner_code()
    except KeyError as exc:
        text = describe_exception(exc)
    assert text.startswith("KeyError: 'city' (in learner_code(), line ")
    assert "\n" not in text


def test_describe_exception_unwraps_a_single_exception_group():
    group = ExceptionGroup("one", [ValueError("inner")])
    assert describe_exception(group).startswith("ValueError: inner")


def test_client_is_an_httpx_async_client():
    from checks.harness import AppClient

    assert issubclass(AppClient, httpx.AsyncClient)


async def test_a_lifespan_that_hangs_is_reported_as_a_startup_failure():
    import asyncio

    from checks.harness import AppStartupError

    @asynccontextmanager
    async def lifespan(app):
        await asyncio.Event().wait()
        yield

    with pytest.raises(AppStartupError, match="did not finish starting within 0.2 s"):
        async with serve(FastAPI(lifespan=lifespan), lifespan_timeout=0.2):
            pass


async def test_each_request_gets_its_own_state_like_under_uvicorn():
    import asyncio

    events = []
    app = app_with_lifespan(events)

    @app.get("/mine/{value}")
    async def mine(value: str, request: Request):
        request.state.mine = value
        await asyncio.sleep(0.01)  # let the other requests set theirs
        return {"mine": request.state.mine, "greeting": request.state.greeting}

    async with serve(app) as client:
        responses = await asyncio.gather(*(client.get(f"/mine/{i}") for i in range(5)))
    assert [r.json() for r in responses] == [{"mine": str(i), "greeting": "hi"} for i in range(5)]


def test_warnings_left_by_an_earlier_attempt_do_not_surface_in_the_next_check(recwarn):
    import asyncio
    import gc

    from checks import check

    async def never_awaited():
        pass

    holder = [never_awaited()]  # an earlier attempt forgot an `await`
    holder.append(holder)  # a cycle: only the garbage collector frees it

    @check("a check after that", limit_s=5)
    async def later(report):
        report.add("ran", True)

    gc.disable()
    try:
        del holder
        seen = []
        with __import__("warnings").catch_warnings(record=True) as caught:
            __import__("warnings").simplefilter("always")
            report = asyncio.run(later.report())
            seen = [str(w.message) for w in caught]
    finally:
        gc.enable()
    assert report.passed
    assert not [text for text in seen if "never awaited" in text]


async def test_a_context_variable_set_by_one_request_stays_in_that_request():
    """As under a server: each request runs in a task of its own, so what a route sets in a
    ContextVar reaches neither the next request nor the caller (the notebook cell)."""
    import contextvars

    who = contextvars.ContextVar("who", default="nobody")
    app = FastAPI()

    @app.get("/set")
    async def set_it() -> dict:
        who.set("ada")
        return {"who": who.get()}

    @app.get("/get")
    async def get_it() -> dict:
        return {"who": who.get()}

    async with serve(app) as client:
        assert (await client.get("/set")).json() == {"who": "ada"}
        assert (await client.get("/get")).json() == {"who": "nobody"}
    assert who.get() == "nobody"


def test_describe_exception_puts_a_pydantic_error_on_one_line_without_its_link():
    from pydantic import BaseModel, ValidationError

    class Tick(BaseModel):
        id: str

    try:
        Tick(id=3)
    except ValidationError as exc:
        text = describe_exception(exc)
    assert "\n" not in text and "errors.pydantic.dev" not in text
    assert text.startswith("ValidationError: 1 validation error for Tick · id · Input should be a valid string")
