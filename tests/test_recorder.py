"""checks.recorder: an ASGI driver that sees what ASGITransport hides — when the client had its
answer, what ran after it, streams it stops reading, and tasks an app leaves behind."""

import asyncio
import time
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import StreamingResponse

from checks.harness import AppStartupError, DemoStopped
from checks.recorder import current_exchange, mark, record
from checks.watchdog import time_limit

pytestmark = pytest.mark.anyio

TASK_S = 0.2


def background_app():
    app = FastAPI()

    async def send_email(to: str):
        mark("connecting", to=to)
        await asyncio.sleep(TASK_S)
        mark("sent", to=to)

    @app.post("/signup", status_code=201)
    async def signup(tasks: BackgroundTasks):
        tasks.add_task(send_email, "ada@example.com")
        return {"ok": True}

    async def fails():
        raise RuntimeError("smtp down")

    async def never_runs():
        mark("never")

    @app.post("/fails", status_code=201)
    async def failing(tasks: BackgroundTasks):
        tasks.add_task(fails)
        tasks.add_task(never_runs)
        return {"ok": True}

    @app.get("/health")
    async def health():
        return {"ok": True}

    return app


async def test_the_answer_is_complete_long_before_the_background_task_ends():
    async with record(background_app()) as rec:
        exchange = await rec.post("/signup")
        answered_at = rec.now()
        assert exchange.status == 201 and exchange.json() == {"ok": True}
        assert not exchange.done  # the ASGI call goes on: the task is running
        assert await rec.settle(2)
    assert exchange.done
    start, end = rec.find("task.start")[0], rec.find("task.end")[0]
    response_end = rec.event("response.end", exchange)
    # exact order: the whole answer, then the task, then the ASGI call returns
    assert response_end.seq < start.seq < end.seq < rec.event("app.return", exchange).seq
    assert start.what == end.what == "send_email" and start.exchange is exchange
    assert [e.what for e in rec.find("mark", exchange=exchange)] == ["connecting", "sent"]
    assert rec.find("mark", "sent")[0].data == {"to": "ada@example.com"}
    # what a client waited vs how long the app kept working (ratio to the task's own length)
    assert exchange.wait_s < TASK_S / 2 and answered_at - exchange.sent_at < TASK_S / 2
    assert exchange.work_after_s >= TASK_S * 0.9


async def test_asgi_transport_hides_it_and_the_recorder_shows_it():
    app = background_app()
    start = time.perf_counter()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await client.post("/signup")
    through_transport = time.perf_counter() - start
    async with record(app) as rec:
        exchange = await rec.post("/signup")
    assert through_transport >= TASK_S * 0.9  # the transport waited for the task
    assert exchange.wait_s < through_transport / 4


async def test_an_error_in_a_task_is_recorded_after_the_answer_and_the_next_task_never_runs():
    async with record(background_app()) as rec:
        exchange = await rec.post("/fails")
        await rec.settle(2)
    assert exchange.status == 201 and isinstance(exchange.error, RuntimeError)
    assert rec.event("response.end", exchange).seq < rec.event("app.error", exchange).seq
    assert [e.kind for e in rec.find(what="fails")] == ["task.start", "task.error"]
    assert rec.find("mark", "never") == [] and rec.find("task.start", "never_runs") == []
    assert rec.app_errors == [(exchange, exchange.error)]
    assert "smtp down" in rec.event("app.error", exchange).what


async def test_an_error_before_answering_is_a_500_and_is_recorded():
    app = FastAPI()

    @app.get("/boom")
    async def boom():
        return 1 / 0

    async def raw(scope, receive, send):  # no framework to answer for it: the server's own 500
        raise ValueError("no answer")

    async with record(app) as rec:
        exchange = await rec.get("/boom")
    assert exchange.status == 500 and not exchange.emulated_500  # Starlette answered, then re-raised
    assert isinstance(exchange.error, ZeroDivisionError)
    assert exchange.show().startswith("500: the app raised ZeroDivisionError")
    async with record(raw, lifespan=False) as rec:
        exchange = await rec.get("/")
    assert exchange.status == 500 and exchange.emulated_500 and exchange.text == "Internal Server Error"


def streaming_app(closed: list):
    app = FastAPI()

    @app.get("/endless")
    async def endless():
        async def lines():
            n = 0
            try:
                while True:
                    yield f"{n}\n"
                    n += 1
                    await asyncio.sleep(0.005)
            finally:
                closed.append(n)

        return StreamingResponse(lines(), media_type="text/plain")

    return app


async def test_an_endless_stream_is_read_a_little_then_left_without_hanging():
    closed = []
    async with record(streaming_app(closed)) as rec:
        exchange = await rec.get("/endless", max_chunks=3)
        assert exchange.body == b"0\n1\n2\n" and exchange.disconnected_at is not None
        assert not exchange.answered  # the client left before the end: there was no end
        assert await exchange.finished(1.0)  # Starlette noticed http.disconnect and stopped
    assert closed and rec.find("disconnect", exchange=exchange)
    chunk_times = [t for t, chunk in exchange.chunks]
    assert chunk_times == sorted(chunk_times) and len(chunk_times) == 3


async def test_a_client_that_leaves_after_a_while():
    closed = []
    async with record(streaming_app(closed)) as rec:
        exchange = await rec.get("/endless", disconnect_after_s=0.3)
        assert exchange.disconnected_at is not None and len(exchange.chunks) >= 2
        assert await exchange.finished(1.0)


async def test_an_app_that_ignores_the_disconnect_gets_its_messages_dropped_and_is_cancelled_at_exit():
    async def stubborn(scope, receive, send):  # raw ASGI: never listens for http.disconnect
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await asyncio.sleep(0.002)

    start = time.perf_counter()
    async with record(stubborn, lifespan=False, graceful_s=0.1) as rec:
        exchange = await rec.get("/", max_chunks=2)
        await asyncio.sleep(0.03)
    assert time.perf_counter() - start < 2
    assert exchange.dropped > 0 and exchange.cancelled and rec.find("dropped", exchange=exchange)


async def test_protocol_errors_are_raised_into_the_app_and_recorded():
    async def twice(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        await send({"type": "http.response.body", "body": b"again"})

    async with record(twice, lifespan=False) as rec:
        exchange = await rec.get("/")
        await rec.settle(1)
    assert exchange.body == b"ok" and exchange.status == 200
    assert exchange.protocol_errors == ["http.response.body after the response was complete"]
    assert isinstance(exchange.error, RuntimeError)


async def test_request_body_headers_query_and_a_state_copy_per_request():
    @asynccontextmanager
    async def lifespan(app):
        yield {"shared": "from the lifespan"}

    app = FastAPI(lifespan=lifespan)

    @app.post("/echo")
    async def echo(request: Request, q: str):
        before = getattr(request.state, "mine", None)
        request.state.mine = q
        await asyncio.sleep(0.01)
        return {"q": q, "json": await request.json(), "header": request.headers.get("x-test"),
                "shared": request.state.shared, "before": before}

    async with record(app) as rec:
        one, two = await asyncio.gather(
            rec.post("/echo?q=1", json={"a": 1}, headers={"X-Test": "yes"}),
            rec.post("/echo?q=2", json={"a": 2}),
        )
    assert one.json() == {"q": "1", "json": {"a": 1}, "header": "yes", "shared": "from the lifespan", "before": None}
    assert two.json()["before"] is None and one.header("content-type") == "application/json"


async def test_marks_from_threads_belong_to_their_request_and_worker_marks_to_none():
    @asynccontextmanager
    async def lifespan(app):
        async def worker():
            while True:
                mark("worker tick")
                await asyncio.sleep(0.01)

        task = asyncio.create_task(worker())
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)

    def blocking_job():
        mark("in a thread")
        return current_exchange() is not None

    @app.get("/job")
    async def job(tasks: BackgroundTasks):
        tasks.add_task(blocking_job)
        return {"ok": True}

    async with record(app) as rec:
        exchange = await rec.get("/job")
        await rec.settle(1)
        await asyncio.sleep(0.03)
    (thread_mark,) = rec.find("mark", "in a thread")
    assert thread_mark.exchange is exchange and thread_mark.thread != rec.find("request")[0].thread
    assert rec.find("mark", "worker tick") and all(e.exchange is None for e in rec.find("mark", "worker tick"))
    assert rec.leaked_tasks == []  # cancelled without being awaited: gone within the grace period


async def test_a_task_the_app_leaves_running_is_reported_and_cancelled():
    stray = []

    @asynccontextmanager
    async def lifespan(app):
        async def worker():
            while True:
                await asyncio.sleep(0.01)

        stray.append(asyncio.create_task(worker()))  # never stopped
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/fire")
    async def fire():
        stray.append(asyncio.create_task(asyncio.sleep(30)))  # fire and forget
        return {"ok": True}

    async with record(app, leak_grace_s=0.05) as rec:
        await rec.get("/fire")
    assert len(rec.leaked_tasks) == 2, rec.leaked_tasks
    assert any("worker" in name for name in rec.leaked_tasks)
    await asyncio.sleep(0)
    assert all(task.done() for task in stray)  # cleaned up, nothing keeps running


async def test_lifespan_errors_are_startup_errors():
    @asynccontextmanager
    async def lifespan(app):
        raise RuntimeError("no database")
        yield

    with pytest.raises(AppStartupError, match="RuntimeError: no database"):
        async with record(FastAPI(lifespan=lifespan)):
            pass


async def test_a_demo_that_hangs_is_stopped_with_a_message():
    app = FastAPI()

    @app.get("/hang")
    async def hang():
        await asyncio.Event().wait()

    with pytest.raises(DemoStopped, match="awaited forever"):
        async with record(app, limit_s=0.3) as rec:
            await rec.get("/hang")


async def test_inside_a_check_limit_the_recorder_adds_none_of_its_own():
    from checks.watchdog import CheckTimeout

    app = FastAPI()

    @app.get("/hang")
    async def hang():
        await asyncio.Event().wait()

    with pytest.raises(CheckTimeout):
        async with time_limit(0.3):
            async with record(app) as rec:
                await rec.get("/hang")


async def test_it_draws_and_prints():
    async with record(background_app(), title="signup") as rec:
        await rec.post("/signup")
        await rec.post("/fails")
    png = rec._repr_png_()
    assert png.startswith(b"\x89PNG")
    text = repr(rec)
    assert text.startswith("signup:") and "task send_email" in text and "raised" in text


async def test_the_recorder_raises_no_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with record(background_app()) as rec:
            await rec.post("/signup")
            await rec.post("/fails")
        rec._repr_png_()


def _drawn(draw, height):
    """The figure `draw(ax)` makes, rendered as render_png does: its size in pixels, the texts'
    sizes and boxes, and the bars' widths in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from checks.plots import DPI, WIDTH_IN

    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw(ax)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_text().strip()] + list(ax.get_yticklabels()) + list(ax.get_xticklabels())
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    widths = [ax.transData.transform((b.get_x() + b.get_width(), 0))[0] - ax.transData.transform((b.get_x(), 0))[0]
              for b in bars]
    return fig.get_size_inches() * DPI, texts, [t.get_window_extent(renderer) for t in ax.texts], widths


async def test_the_timeline_is_readable_at_a_glance():
    """About 900 px wide, labels of 9 pt or more that do not overlap, and a 1 ms bar still visible."""
    from checks.plots import draw_timeline
    from checks.recorder import draw_recording
    from checks.timing import Span, Timeline

    app = FastAPI()

    @app.get("/quick")
    async def quick():
        return {}

    async with record(app, title="one slow, many quick") as rec:
        await rec.get("/quick")
        mark("worker: sent 1")
        await asyncio.sleep(0.2)
        for i in range(8):
            mark(f"worker: sent {i + 2}")  # eight marks at once, outside any request
        await rec.get("/quick")
    timeline = Timeline(spans=[Span("GET /slow", 0.0, 0.3, "200"), Span("GET /quick", 0.1, 0.101, "200")])
    for draw, height in [(lambda ax: draw_recording(ax, rec), 3.0), (lambda ax: draw_timeline(ax, timeline), 2.0)]:
        size, texts, boxes, widths = _drawn(draw, height)
        assert size[0] >= 850
        assert min(t.get_fontsize() for t in texts) >= 9
        assert min(widths) >= 4, widths  # pixels: the 1 ms answers are bars, not hairlines
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (a, b)
