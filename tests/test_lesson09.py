"""Lesson 09's checks: right answers pass, the guides' mistakes fail with their own hint.

Each answer is source code run in the lesson's own namespace (its imports and stand-ins), the
way a learner's cell is.
"""

import textwrap

import pytest
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace

from checks.lesson09 import catalog, check_export, check_ticks, check_upload, feed

pytestmark = pytest.mark.anyio
NS = notebook_namespace("09_streaming")


def build(source: str, name: str, head: str = ""):
    namespace = dict(NS)
    exec(compile(head + textwrap.dedent(source), "<answer>", "exec"), namespace)
    return namespace[name]


# ---- exercise 1: JSON Lines ----------------------------------------------------------------------

EXPORT = "app = FastAPI()\n"
EXPORT_RIGHT = {
    "yield each row": """
        @app.get("/products.jsonl")
        async def export() -> AsyncIterable[Product]:
            async for row in catalog.stream():
                yield row
    """,
    "yield Product models": """
        @app.get("/products.jsonl")
        async def export() -> AsyncIterable[Product]:
            async for row in catalog.stream():
                yield Product.model_validate(row)
    """,
    "smaller batches": """
        @app.get("/products.jsonl")
        async def export() -> AsyncIterable[Product]:
            async for row in catalog.stream(batch_size=25):
                yield Product(**row)
    """,
}
EXPORT_WRONG = {
    "a list, buffered": ("""
        @app.get("/products.jsonl")
        async def export() -> list[Product]:
            return await catalog.all()
    """, "it is JSON Lines", "AsyncIterable"),
    "all rows read, then yielded": ("""
        @app.get("/products.jsonl")
        async def export() -> AsyncIterable[Product]:
            for row in await catalog.all():
                yield row
    """, "the first line leaves before the last row is read", "reads every row"),
    "sorted first (reads everything)": ("""
        @app.get("/products.jsonl")
        async def export() -> AsyncIterable[Product]:
            rows = [row async for row in catalog.stream()]
            for row in sorted(rows, key=lambda r: r["id"]):
                yield row
    """, "rows held at once stay bounded", "Every row was in memory"),
    "one huge batch": ("""
        @app.get("/products.jsonl")
        async def export() -> AsyncIterable[Product]:
            async for row in catalog.stream(batch_size=5000):
                yield row
    """, "rows held at once stay bounded", "Every row"),
    "StreamingResponse returned by hand": ("""
        from fastapi.responses import StreamingResponse
        @app.get("/products.jsonl")
        async def export():
            async def lines():
                async for row in catalog.stream():
                    yield Product(**row).model_dump_json() + "\\n"
            return StreamingResponse(lines(), media_type="application/jsonl")
    """, "the stream's item type is declared", "guidance"),
    "no return type: the cost leaks": ("""
        @app.get("/products.jsonl")
        async def export():
            async for row in catalog.stream():
                yield row
    """, "only Product's fields leave the server", "return type filters"),
    "serialized by hand into strings": ("""
        @app.get("/products.jsonl")
        async def export() -> AsyncIterable[str]:
            async for row in catalog.stream():
                yield Product(**row).model_dump_json()
    """, "every product, one per line", "not text"),
    "a JSON array streamed": ("""
        from fastapi.responses import StreamingResponse
        @app.get("/products.jsonl")
        async def export():
            async def body():
                yield "["
                async for row in catalog.stream():
                    yield Product(**row).model_dump_json() + ","
                yield "]"
            return StreamingResponse(body(), media_type="application/json")
    """, "it is JSON Lines", "JSON Lines"),
    "models into a StreamingResponse class": ("""
        from fastapi.responses import StreamingResponse
        @app.get("/products.jsonl", response_class=StreamingResponse)
        async def export() -> AsyncIterable[Product]:
            async for row in catalog.stream():
                yield Product(**row)
    """, "every product, one per line", "cannot send Pydantic models"),
    "time.sleep to pace the stream": ("""
        import time
        @app.get("/products.jsonl")
        async def export() -> AsyncIterable[Product]:
            async for row in catalog.stream():
                if row["id"] % 500 == 0:
                    time.sleep(0.001)
                yield row
    """, "the event loop stays free", "block"),
}


@pytest.mark.parametrize("name", EXPORT_RIGHT)
async def test_export_right_answers_pass(name):
    report = await check_export.report(build(EXPORT_RIGHT[name], "app", EXPORT))
    assert report.passed, failure_text(report)


@pytest.mark.parametrize("name", EXPORT_WRONG)
async def test_export_wrong_answers_fail_with_their_hint(name):
    source, item, hint = EXPORT_WRONG[name]
    report = await check_export.report(build(source, "app", EXPORT))
    assert item in names(report), failure_text(report)
    assert hint in next(i.hint for i in report.failures if i.name == item)
    assert_feedback_rules(report)


async def test_export_missing_route_stops_at_the_status():
    report = await check_export.report(build("", "app", EXPORT))
    assert names(report) == ["GET /products.jsonl answers 200"]
    assert "No route" in report.failures[0].hint


async def test_export_row_count_is_random():
    counts = set()
    for _ in range(3):
        await check_export.report(build(EXPORT_RIGHT["yield each row"], "app", EXPORT))
        counts.add(len(catalog.rows))
    assert len(counts) > 1


# ---- exercise 2: Server-Sent Events -----------------------------------------------------------------

SSE = "app = FastAPI()\n"
SSE_RIGHT = {
    "async with": """
        @app.get("/ticks", response_class=EventSourceResponse)
        async def ticks(last_event_id: Annotated[int | None, Header()] = None) -> AsyncIterable[ServerSentEvent]:
            async with feed.subscribe(after=last_event_id) as sub:
                async for event in sub:
                    yield ServerSentEvent(data=event.tick, id=str(event.id), retry=RETRY_MS)
    """,
    "try/finally, retry once": """
        from fastapi import Request
        @app.get("/ticks", response_class=EventSourceResponse)
        async def ticks(request: Request) -> AsyncIterable[ServerSentEvent]:
            header = request.headers.get("last-event-id")
            sub = feed.subscribe(after=int(header) if header else None)
            first = True
            try:
                async for event in sub:
                    yield ServerSentEvent(data=event.tick.model_dump(), id=str(event.id),
                                          retry=RETRY_MS if first else None)
                    first = False
            finally:
                sub.close()
    """,
    "event name, alias header": """
        @app.get("/ticks", response_class=EventSourceResponse)
        async def ticks(resume: Annotated[int | None, Header(alias="Last-Event-ID")] = None) -> AsyncIterable[ServerSentEvent]:
            async with feed.subscribe(after=resume) as sub:
                while True:
                    event = await anext(sub)
                    yield ServerSentEvent(data=event.tick, event="tick", id=str(event.id), retry=RETRY_MS)
    """,
}
SSE_WRONG = {
    "no id on events": ("""
        @app.get("/ticks", response_class=EventSourceResponse)
        async def ticks(last_event_id: Annotated[int | None, Header()] = None) -> AsyncIterable[ServerSentEvent]:
            async with feed.subscribe(after=last_event_id) as sub:
                async for event in sub:
                    yield ServerSentEvent(data=event.tick, retry=RETRY_MS)
    """, "each event carries the tick's id", "Last-Event-ID"),
    "plain objects yielded": ("""
        from checks.lesson09 import Tick
        @app.get("/ticks", response_class=EventSourceResponse)
        async def ticks() -> AsyncIterable[Tick]:
            async with feed.subscribe() as sub:
                async for event in sub:
                    yield event.tick
    """, "each event carries the tick's id", "id="),
    "Last-Event-ID ignored": ("""
        @app.get("/ticks", response_class=EventSourceResponse)
        async def ticks() -> AsyncIterable[ServerSentEvent]:
            async with feed.subscribe() as sub:
                async for event in sub:
                    yield ServerSentEvent(data=event.tick, id=str(event.id), retry=RETRY_MS)
    """, "a reconnect with Last-Event-ID resumes after it", "were lost"),
    "resumes one too early": ("""
        @app.get("/ticks", response_class=EventSourceResponse)
        async def ticks(last_event_id: Annotated[int | None, Header()] = None) -> AsyncIterable[ServerSentEvent]:
            after = last_event_id - 1 if last_event_id else None
            async with feed.subscribe(after=after) as sub:
                async for event in sub:
                    yield ServerSentEvent(data=event.tick, id=str(event.id), retry=RETRY_MS)
    """, "a reconnect with Last-Event-ID resumes after it", "came again"),
    "header read as text": ("""
        @app.get("/ticks", response_class=EventSourceResponse)
        async def ticks(last_event_id: Annotated[str | None, Header()] = None) -> AsyncIterable[ServerSentEvent]:
            async with feed.subscribe(after=last_event_id) as sub:
                async for event in sub:
                    yield ServerSentEvent(data=event.tick, id=str(event.id), retry=RETRY_MS)
    """, "a reconnect with Last-Event-ID resumes after it", "arrive as text"),
    "clean-up after the loop": ("""
        @app.get("/ticks", response_class=EventSourceResponse)
        async def ticks(last_event_id: Annotated[int | None, Header()] = None) -> AsyncIterable[ServerSentEvent]:
            sub = feed.subscribe(after=last_event_id)
            while True:
                event = await anext(sub)
                yield ServerSentEvent(data=event.tick, id=str(event.id), retry=RETRY_MS)
            sub.close()
    """, "the subscription is released when the client leaves", "finally"),
    "a producer task nobody stops": ("""
        import asyncio
        async def pump(sub, queue):
            async for event in sub:
                await queue.put(event)
        @app.get("/ticks", response_class=EventSourceResponse)
        async def ticks(last_event_id: Annotated[int | None, Header()] = None) -> AsyncIterable[ServerSentEvent]:
            queue = asyncio.Queue()
            asyncio.create_task(pump(feed.subscribe(after=last_event_id), queue))
            while True:
                event = await queue.get()
                yield ServerSentEvent(data=event.tick, id=str(event.id), retry=RETRY_MS)
    """, "the subscription is released when the client leaves", "task of its own"),
    "hand-made StreamingResponse": ("""
        from fastapi.responses import StreamingResponse
        @app.get("/ticks")
        async def ticks(last_event_id: Annotated[int | None, Header()] = None):
            async def events():
                async with feed.subscribe(after=last_event_id) as sub:
                    async for event in sub:
                        yield f"id: {event.id}\\nretry: {RETRY_MS}\\ndata: {event.tick.model_dump_json()}\\n\\n"
            return StreamingResponse(events(), media_type="text/event-stream")
    """, "a keepalive while idle", "by hand"),
    "retry in seconds": ("""
        @app.get("/ticks", response_class=EventSourceResponse)
        async def ticks(last_event_id: Annotated[int | None, Header()] = None) -> AsyncIterable[ServerSentEvent]:
            async with feed.subscribe(after=last_event_id) as sub:
                async for event in sub:
                    yield ServerSentEvent(data=event.tick, id=str(event.id), retry=2)
    """, "the stream tells browsers when to reconnect", "milliseconds"),
    "time.sleep between events": ("""
        import time
        @app.get("/ticks", response_class=EventSourceResponse)
        async def ticks(last_event_id: Annotated[int | None, Header()] = None) -> AsyncIterable[ServerSentEvent]:
            async with feed.subscribe(after=last_event_id) as sub:
                async for event in sub:
                    time.sleep(0.005)
                    yield ServerSentEvent(data=event.tick, id=str(event.id), retry=RETRY_MS)
    """, "the event loop stays free", "time.sleep"),
}


@pytest.mark.parametrize("name", SSE_RIGHT)
async def test_ticks_right_answers_pass(name):
    report = await check_ticks.report(build(SSE_RIGHT[name], "app", SSE))
    assert report.passed, failure_text(report)
    assert feed.open_subscriptions == 0


@pytest.mark.parametrize("name", SSE_WRONG)
async def test_ticks_wrong_answers_fail_with_their_hint(name):
    source, item, hint = SSE_WRONG[name]
    report = await check_ticks.report(build(source, "app", SSE))
    assert item in names(report), failure_text(report)
    failed = next(i for i in report.failures if i.name == item)
    assert hint in failed.hint + failed.observed, failure_text(report)
    assert_feedback_rules(report)


async def test_ticks_missing_route_stops_at_the_status():
    report = await check_ticks.report(build("", "app", SSE))
    assert names(report) == ["GET /ticks answers 200 with an event stream"]


async def test_ticks_restores_fastapis_ping_interval():
    import fastapi.routing

    before = fastapi.routing._PING_INTERVAL
    await check_ticks.report(build(SSE_WRONG["no id on events"][0], "app", SSE))
    assert fastapi.routing._PING_INTERVAL == before == 15.0


# ---- exercise 3: uploads ----------------------------------------------------------------------------

UPLOAD_HEAD = "def make(folder):\n    app = FastAPI()\n"
UPLOAD_TAIL = "\n    return app\n"


def upload_app(body: str):
    return build(UPLOAD_HEAD + textwrap.indent(textwrap.dedent(body), "    ") + UPLOAD_TAIL, "make")


SCAN = """
            try:
                await scanner.scan(path)
            except Infected:
                path.unlink()
                raise HTTPException(422, "infected")
"""
UPLOAD_RIGHT = {
    "anyio.open_file in chunks": """
        @app.post("/uploads", status_code=201, max_body_size=MAX_UPLOAD_BYTES)
        async def upload(file: UploadFile) -> Stored:
            path = folder / uuid.uuid4().hex
            size = 0
            async with await anyio.open_file(path, "wb") as out:
                while chunk := await file.read(CHUNK_BYTES):
                    size += len(chunk)
                    await out.write(chunk)
    """ + SCAN + """
            return Stored(id=path.name, size=size)
    """,
    "copyfileobj in the thread pool": """
        import shutil
        from fastapi.concurrency import run_in_threadpool
        def save(source, path):
            with open(path, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK_BYTES)
        @app.post("/uploads", status_code=201, max_body_size=MAX_UPLOAD_BYTES)
        async def upload(file: UploadFile) -> Stored:
            path = folder / f"{uuid.uuid4().hex}.bin"
            await run_in_threadpool(save, file.file, path)
    """ + SCAN + """
            return Stored(id=path.name, size=path.stat().st_size)
    """,
    "app-wide limit, asyncio.to_thread": """
        import asyncio, shutil
        app = FastAPI(max_body_size=MAX_UPLOAD_BYTES)
        def save(source, path):
            with open(path, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK_BYTES)
            return path.stat().st_size
        @app.post("/uploads", status_code=201)
        async def upload(file: UploadFile) -> Stored:
            path = folder / str(uuid.uuid4())
            try:
                size = await asyncio.to_thread(save, file.file, path)
                await scanner.scan(path)
            except Infected:
                await asyncio.to_thread(path.unlink)
                raise HTTPException(422, "infected")
            return Stored(id=path.name, size=size)
    """,
}
UPLOAD_WRONG = {
    "f'/tmp/{file.filename}'": ("""
        @app.post("/uploads", status_code=201, max_body_size=MAX_UPLOAD_BYTES)
        async def upload(file: UploadFile) -> Stored:
            path = Path(f"/tmp/{file.filename}")
            with open(path, "wb") as out:
                out.write(await file.read())
            return Stored(id=file.filename, size=path.stat().st_size)
    """, "the file is saved in the folder", "Write every chunk"),
    "the client's name in the folder": ("""
        @app.post("/uploads", status_code=201, max_body_size=MAX_UPLOAD_BYTES)
        async def upload(file: UploadFile) -> Stored:
            path = folder / file.filename
            async with await anyio.open_file(path, "wb") as out:
                while chunk := await file.read(CHUNK_BYTES):
                    await out.write(chunk)
    """ + SCAN + """
            return Stored(id=file.filename, size=0)
    """, "under a name the server chooses", "uuid"),
    "the client's base name": ("""
        @app.post("/uploads", status_code=201, max_body_size=MAX_UPLOAD_BYTES)
        async def upload(file: UploadFile) -> Stored:
            path = folder / Path(file.filename).name
            async with await anyio.open_file(path, "wb") as out:
                while chunk := await file.read(CHUNK_BYTES):
                    await out.write(chunk)
    """ + SCAN + """
            return Stored(id=path.name, size=0)
    """, "under a name the server chooses", "overwrite"),
    "open() on the loop": ("""
        import shutil
        @app.post("/uploads", status_code=201, max_body_size=MAX_UPLOAD_BYTES)
        async def upload(file: UploadFile) -> Stored:
            path = folder / uuid.uuid4().hex
            with open(path, "wb") as out:
                shutil.copyfileobj(file.file, out)
    """ + SCAN + """
            return Stored(id=path.name, size=0)
    """, "saved without blocking the event loop", "anyio.open_file"),
    "await file.read() whole": ("""
        @app.post("/uploads", status_code=201, max_body_size=MAX_UPLOAD_BYTES)
        async def upload(file: UploadFile) -> Stored:
            path = folder / uuid.uuid4().hex
            data = await file.read()
            await anyio.Path(path).write_bytes(data)
    """ + SCAN + """
            return Stored(id=path.name, size=len(data))
    """, "read in chunks, not all at once", "whole file in memory"),
    "no body limit": ("""
        @app.post("/uploads", status_code=201)
        async def upload(file: UploadFile) -> Stored:
            path = folder / uuid.uuid4().hex
            async with await anyio.open_file(path, "wb") as out:
                while chunk := await file.read(CHUNK_BYTES):
                    await out.write(chunk)
    """ + SCAN + """
            return Stored(id=path.name, size=0)
    """, "a body over MAX_UPLOAD_BYTES gets 413 before it is read", "max_body_size"),
    "a limit counted after reading": ("""
        @app.post("/uploads", status_code=201)
        async def upload(file: UploadFile) -> Stored:
            if file.size > MAX_UPLOAD_BYTES:
                raise HTTPException(413, "too large")
            path = folder / uuid.uuid4().hex
            async with await anyio.open_file(path, "wb") as out:
                while chunk := await file.read(CHUNK_BYTES):
                    await out.write(chunk)
    """ + SCAN + """
            return Stored(id=path.name, size=0)
    """, "a body over MAX_UPLOAD_BYTES gets 413 before it is read", "before a byte"),
    "never scanned": ("""
        @app.post("/uploads", status_code=201, max_body_size=MAX_UPLOAD_BYTES)
        async def upload(file: UploadFile) -> Stored:
            path = folder / uuid.uuid4().hex
            async with await anyio.open_file(path, "wb") as out:
                while chunk := await file.read(CHUNK_BYTES):
                    await out.write(chunk)
            return Stored(id=path.name, size=0)
    """, "an infected upload is refused and removed", "scanner.scan"),
    "an infected file left behind": ("""
        @app.post("/uploads", status_code=201, max_body_size=MAX_UPLOAD_BYTES)
        async def upload(file: UploadFile) -> Stored:
            path = folder / uuid.uuid4().hex
            async with await anyio.open_file(path, "wb") as out:
                while chunk := await file.read(CHUNK_BYTES):
                    await out.write(chunk)
            try:
                await scanner.scan(path)
            except Infected:
                raise HTTPException(422, "infected")
            return Stored(id=path.name, size=0)
    """, "an infected upload is refused and removed", "delete the file"),
    "bytes = File()": ("""
        from fastapi import File
        @app.post("/uploads", status_code=201, max_body_size=MAX_UPLOAD_BYTES)
        async def upload(file: Annotated[bytes, File()]) -> Stored:
            path = folder / uuid.uuid4().hex
            await anyio.Path(path).write_bytes(file)
    """ + SCAN + """
            return Stored(id=path.name, size=len(file))
    """, "read in chunks, not all at once", "File()"),
}


@pytest.mark.parametrize("name", UPLOAD_RIGHT)
async def test_upload_right_answers_pass(name):
    report = await check_upload.report(upload_app(UPLOAD_RIGHT[name]))
    assert report.passed, failure_text(report)


@pytest.mark.parametrize("name", UPLOAD_WRONG)
async def test_upload_wrong_answers_fail_with_their_hint(name):
    source, item, hint = UPLOAD_WRONG[name]
    report = await check_upload.report(upload_app(source))
    assert item in names(report), failure_text(report)
    assert hint in next(i.hint for i in report.failures if i.name == item), failure_text(report)
    assert_feedback_rules(report)


async def test_upload_stub_fails_cleanly():
    report = await check_upload.report(upload_app("raise NotImplementedError('this exercise is not written yet')"))
    assert names(report) == ["make_upload_app(folder) returns the app"]


async def test_check_ids_name_the_lesson():
    assert (check_export.id, check_ticks.id, check_upload.id) == (
        "lesson09.check_export", "lesson09.check_ticks", "lesson09.check_upload")
