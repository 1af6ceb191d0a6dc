"""Lesson 09's checks: a JSON Lines export, Server-Sent Events, and uploads.

Verdicts come from exact signals: the recorder's ASGI messages in order (which body chunk left
before which catalog round trip), the catalog's row counters, the feed's open subscriptions, the
SSE fields on the wire, which thread opened which file (an audit hook), the sizes the app asked
`UploadFile.read` for, and the bytes of a request body the app pulled from `receive()`.
Streams are read part-way and left; nothing the check starts outlives it.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import fastapi.routing
from starlette.datastructures import UploadFile

from ..blocking import BlockingWatch
from ..harness import _learner_frame_of, describe_exception
from ..recorder import record
from ..runner import check
from .world import BATCH_SIZE, INFECTED, MAX_UPLOAD_BYTES, RETRY_MS, catalog, feed, scanner

PING_S = 0.05  # FastAPI's keepalive interval during the SSE check (15 s in production)
WAIT_S = 2.0  # how long the checks wait for something that should take milliseconds


def _status_hint(exchange, method: str, path: str, what: str) -> str:
    if exchange.status == 404:
        return f"No route answers {method} {path}: check the path and the method in the decorator."
    if exchange.status == 422:
        return f"FastAPI refused the request's input: compare your parameters with the task. {what}"
    if exchange.error is not None:
        return f"The route raised {describe_exception(exchange.error)}. {what}"
    return what


def _body_events(rec, exchange):
    """(event, chunk) for each body message that carried bytes, in order."""
    chunks = iter(exchange.chunks)
    found = []
    for event in rec.find(exchange=exchange):
        if event.kind == "response.end" or (event.kind == "response.body" and event.what != "0 bytes"):
            found.append((event, next(chunks, (0.0, b""))[1]))
    return found


# ---- exercise 1: JSON Lines --------------------------------------------------------------------------

@check("Lesson 09 · the product export streams JSON Lines as the catalog reads them", limit_s=15)
async def check_export(report, app):
    count = random.randint(1200, 2400)
    catalog.reset(count=count, latency_s=0.001)
    expected = [{k: row[k] for k in ("id", "name", "price")} for row in catalog.rows]
    with BlockingWatch() as watch:
        async with record(app, title="GET /products.jsonl") as rec:
            exchange = await rec.get("/products.jsonl")
    if exchange.status != 200:
        report.fail("GET /products.jsonl answers 200", observed=exchange.show(), expected="200 and a stream of lines",
                    hint=_status_hint(exchange, "GET", "/products.jsonl",
                                      "Yield each product from an `async def` route declared `-> AsyncIterable[Product]`."))
        return
    kind = (exchange.header("content-type") or "").split(";")[0]
    report.add("it is JSON Lines", kind == "application/jsonl", observed=f"content-type: {kind or 'none'}",
               expected="application/jsonl",
               hint="FastAPI streams JSON Lines by itself when a route `yield`s items and declares "
                    "`-> AsyncIterable[Product]`: no response to build by hand.")
    lines = [line for line in exchange.body.split(b"\n") if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            parsed.append(line.decode("utf-8", "replace"))
    bad = next((p for p in parsed if not isinstance(p, dict)), None)
    leaked = next((p for p in parsed if isinstance(p, dict) and "cost" in p), None)
    if exchange.error is not None:
        report.fail("every product, one per line", observed=f"the stream broke after {len(lines)} lines: the app raised "
                    f"{describe_exception(exchange.error)}", expected=f"{count} lines",
                    hint="With `yield` and a return type FastAPI turns each item into a line; a `StreamingResponse` "
                         "class cannot send Pydantic models.")
    elif bad is not None:
        report.fail("every product, one per line", observed=f"a line that is not a JSON object: {str(bad)[:80]}",
                    expected='{"id": ..., "name": ..., "price": ...} per line',
                    hint="Yield the products themselves (rows or `Product`s), not text or lists: "
                         "FastAPI serializes each item to one line.")
    elif leaked is not None:
        report.fail("only Product's fields leave the server", observed=f"a line with the purchase cost: {json.dumps(leaked)[:90]}",
                    expected="id, name and price only",
                    hint="The return type filters each item: declare `-> AsyncIterable[Product]` and FastAPI "
                         "validates and serializes every row through `Product`.")
    else:
        same = parsed == expected
        report.add("every product, one per line, in order", same,
                   observed=f"{len(parsed)} lines for {count} products" + ("" if same or len(parsed) != count else
                                                                         ", but not the catalog's values in its order"),
                   expected=f"{count} lines",
                   hint="Read every row of `catalog.stream()` and yield it, in the order it comes.")
    declared = _item_schema(app, "/products.jsonl")
    report.add("the stream's item type is declared", bool(declared),
               observed=f"the OpenAPI schema documents each line as {declared or 'nothing'}",
               expected="Product",
               hint="FastAPI's guidance: declare `-> AsyncIterable[Product]` and `yield`, rather than returning "
                    "a `StreamingResponse`; then each item is validated and documented.")
    _judge_streaming(report, rec, exchange, count)
    report.add("the event loop stays free", not watch.blocked, observed=watch.summary() if watch.blocked else "no blocking calls",
               expected="none", hint="Await the catalog; nothing in an `async def` route may sleep or block.")


def _item_schema(app, path: str) -> str | None:
    try:
        operation = app.openapi()["paths"][path]["get"]
        schema = operation["responses"]["200"]["content"]["application/jsonl"]["itemSchema"]
    except Exception:
        return None
    if not schema:
        return None
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else json.dumps(schema)[:60]


def _judge_streaming(report, rec, exchange, count: int) -> None:
    fetched, sent, held, first = 0, 0, 0, None
    for event in rec.events:
        if event.kind == "mark" and "fetched" in event.data:
            fetched = event.data["fetched"]
    total_fetched = fetched
    fetched = 0
    body = {e.seq: chunk for e, chunk in _body_events(rec, exchange)}
    for event in rec.events:
        if event.kind == "mark" and "fetched" in event.data:
            fetched = event.data["fetched"]
        elif event.seq in body and body[event.seq]:
            if first is None:
                first = (event, fetched)
            held = max(held, fetched - sent)
            sent += body[event.seq].count(b"\n")
    if first is None or total_fetched == 0:
        report.fail("the first line leaves before the last row is read",
                    observed=f"rows fetched from the catalog: {total_fetched}; body chunks: {len(body)}",
                    expected="rows read from `catalog`, sent as they come",
                    hint="Read the products from `catalog.stream()`.")
        return
    event, before = first
    ms = (event.t - exchange.sent_at) * 1000
    report.add("the first line leaves before the last row is read", before < count,
               observed=f"first byte at {ms:.0f} ms, after {before} of {count} rows were fetched",
               expected=f"fewer than {count} rows fetched before the first line",
               hint="The answer waited for the whole table: `await catalog.all()` (or a list) reads every row "
                    "first. Iterate `catalog.stream()` and yield each row as it comes.")
    report.add("rows held at once stay bounded", held <= 2 * BATCH_SIZE,
               observed=f"at most {held} rows fetched but not yet sent", expected=f"at most {2 * BATCH_SIZE}",
               hint=("Every row was in memory at once." if held >= count else
                     "The batches are too large: keep `catalog.stream()`'s batch size near its default (100).")
                    + " A stream's memory is one batch, whatever the table's size.")


# ---- exercise 2: Server-Sent Events -------------------------------------------------------------------

def _sse_parse(body: bytes) -> tuple[list[dict], int]:
    """The complete events of an SSE body (dicts of their fields, `data` joined) and the comment count."""
    text = body.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    events, comments = [], 0
    for block in text.split("\n\n")[:-1]:
        fields, data = {}, []
        for line in block.split("\n"):
            if line.startswith(":"):
                comments += 1
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name:
                fields[name] = value
        if data or fields:
            fields["data"] = "\n".join(data) if data else None
            events.append(fields)
    return events, comments


def _tick_id(event: dict, lookup: dict) -> int | None:
    """The feed id of the tick an event carries (found by its symbol and price), or None."""
    try:
        data = json.loads(event.get("data") or "")
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("tick"), dict):
        data = data["tick"]
    if not isinstance(data, dict):
        return None
    return lookup.get((data.get("symbol"), data.get("price")))


async def _start(rec, url: str, **kwargs):
    """Send a request and return its exchange at once (the client keeps reading), with the task."""
    before = len(rec.exchanges)
    task = asyncio.create_task(rec.get(url, **kwargs))
    while len(rec.exchanges) == before and not task.done():
        await asyncio.sleep(0)
    return rec.exchanges[before], task


async def _leave(rec, exchange, task) -> float | None:
    """The client leaves; seconds until the subscription was closed and the ASGI call returned (None: not within 1 s)."""
    left = time.perf_counter()
    rec.disconnect(exchange)
    await task
    closed = await rec.wait_for(lambda: feed.open_subscriptions == 0 and exchange.done, 1.0, poll_s=0.002)
    return time.perf_counter() - left if closed else None


class _TickRun:
    first = second = None
    released: list
    comments_idle = 0
    live: list
    missed: list
    new = None
    resumed_from = None

    def __init__(self):
        self.released, self.live, self.missed = [], [], []


@check("Lesson 09 · price ticks as Server-Sent Events: ids, retry, resuming, clean-up", limit_s=20)
async def check_ticks(report, app):
    feed.reset(history=random.randint(3, 8), seed=random.randint(0, 10**6))
    run = _TickRun()
    saved_ping = getattr(fastapi.routing, "_PING_INTERVAL", None)
    fastapi.routing._PING_INTERVAL = PING_S  # FastAPI reads it for each wait: no 15 s to sit through
    tasks = []
    try:
        with BlockingWatch() as watch:
            async with record(app, title="GET /ticks, left, and resumed", graceful_s=1, leak_grace_s=0.3) as rec:
                await _tick_session(report, rec, run, tasks)
    finally:
        fastapi.routing._PING_INTERVAL = saved_ping
        for task in tasks:
            task.cancel()
    if run.first is None:
        return
    _judge_ticks(report, run, watch)


async def _tick_session(report, rec, run: _TickRun, tasks) -> None:
    first, task = await _start(rec, "/ticks", label="GET /ticks")
    tasks.append(task)
    await rec.wait_for(lambda: feed.open_subscriptions > 0 or first.answered or first.status is not None, WAIT_S)
    if first.status != 200 or not (first.header("content-type") or "").startswith("text/event-stream"):
        await rec.wait_for(lambda: first.answered, WAIT_S)
        rec.disconnect(first)
        await task
        report.fail("GET /ticks answers 200 with an event stream",
                    observed=f"{first.status} {first.header('content-type')}: {first.text[:80]}" if first.status else first.show(),
                    expected="200, content-type text/event-stream",
                    hint=_status_hint(first, "GET", "/ticks", "Declare the route with "
                                      "`response_class=EventSourceResponse` and `yield` a `ServerSentEvent` per tick."))
        return
    run.first = first
    await rec.wait_for(lambda: feed.open_subscriptions > 0, WAIT_S)
    for _ in range(3):
        run.live.append(feed.publish().id)
        await asyncio.sleep(0.01)
    lookup = lambda: {(e.tick.symbol, e.tick.price): e.id for e in feed.events}  # noqa: E731
    got = lambda exchange, wanted: lambda: set(wanted) <= {_tick_id(e, lookup()) for e in _sse_parse(exchange.body)[0]}  # noqa: E731
    await rec.wait_for(lambda: got(first, run.live)() or first.done, WAIT_S)
    if first.done and first.error is not None:  # the stream broke: nothing more to judge
        report.fail("each tick arrives as an event", observed=f"the stream broke: the app raised "
                    f"{describe_exception(first.error)}", expected="the ticks published, as events",
                    hint="The generator raised while it streamed: the error names its line. The route `yield`s one "
                         "`ServerSentEvent` per tick (`data`, a string `id`, `retry` in ms); a `return` sends nothing.")
        run.first = None
        return
    before = _sse_parse(first.body)[1]
    await asyncio.sleep(6 * PING_S)  # idle: nothing is published
    run.comments_idle = _sse_parse(first.body)[1] - before
    run.released.append(await _leave(rec, first, task))
    run.missed = [feed.publish().id for _ in range(2)]
    events = _sse_parse(first.body)[0]
    ids = [e.get("id") for e in events]
    last = ids[-1] if ids and ids[-1] and ids[-1].isdigit() else None
    run.resumed_from = int(last) if last else run.live[-1]
    second, task = await _start(rec, "/ticks", headers={"Last-Event-ID": str(run.resumed_from)},
                                label=f"GET /ticks, Last-Event-ID: {run.resumed_from}")
    tasks.append(task)
    run.second = second
    await rec.wait_for(lambda: feed.open_subscriptions > 0 or second.answered, WAIT_S)
    run.new = feed.publish().id
    await rec.wait_for(got(second, run.missed + [run.new]), WAIT_S)
    run.released.append(await _leave(rec, second, task))
    run.lookup = lookup()


def _judge_ticks(report, run: _TickRun, watch) -> None:
    events, _ = _sse_parse(run.first.body)
    received = [_tick_id(e, run.lookup) for e in events]
    ticks = [i for i in received if i is not None]
    arrived = [i for i in ticks if i in run.live]
    report.add("each tick arrives as an event", arrived == run.live,
               observed=f"published 3 ticks; events carrying them: {len(arrived)}"
                        + (f" (order {arrived})" if arrived and arrived != run.live else ""),
               expected="the 3 ticks, in order, each once",
               hint="Iterate the subscription and yield a `ServerSentEvent(data=event.tick, ...)` per event.")
    with_ticks = [e for e in events if _tick_id(e, run.lookup) is not None]
    wrong_id = [e for e in with_ticks if e.get("id") != str(_tick_id(e, run.lookup))]
    report.add("each event carries the tick's id", bool(with_ticks) and not wrong_id,
               observed=(f"an event with id {wrong_id[0].get('id', 'missing')!r} for tick {_tick_id(wrong_id[0], run.lookup)}"
                         if wrong_id else f"{len(with_ticks)} events with their tick's id"),
               expected="id: <the feed event's id> on every event",
               hint="Without `id=` a browser cannot say where it stopped: `ServerSentEvent(..., id=str(event.id))`; "
                    "it sends the last one back as `Last-Event-ID` when it reconnects.")
    retry = with_ticks[0].get("retry") if with_ticks else None
    report.add("the stream tells browsers when to reconnect", retry == str(RETRY_MS),
               observed=f"retry: {retry}" if retry is not None else "no retry field",
               expected=f"retry: {RETRY_MS} (milliseconds)",
               hint=("`retry` is in milliseconds." if retry is not None else
                     f"`ServerSentEvent(..., retry=RETRY_MS)` tells the browser to wait {RETRY_MS} ms before reconnecting."))
    report.add("a keepalive while idle", run.comments_idle >= 1,
               observed=f"{run.comments_idle} comment lines in {6 * PING_S * 1000:.0f} ms without ticks "
                        f"(FastAPI's ping interval was {PING_S * 1000:.0f} ms during this check)",
               expected="at least 1 `: ping`",
               hint="`response_class=EventSourceResponse` sends `: ping` while your generator is idle, so proxies keep "
                    "the connection; a `StreamingResponse` built by hand sends nothing.")
    late = [r for r in run.released if r is None]
    report.add("the subscription is released when the client leaves", not late,
               observed=(f"1 s after the client left: {feed.open_subscriptions} subscription(s) still open"
                         + ("" if run.first.done else ", the ASGI call still running") if late else
                         "released " + " and ".join(f"{r * 1000:.1f} ms" for r in run.released) + " after the client left"),
               expected="closed within 1 s",
               hint="When the client leaves, FastAPI cancels your generator where it waits: close the subscription in "
                    "`async with feed.subscribe(...)` or `try/finally` (code after the loop never runs), and read it in "
                    "the generator itself, not in a task of its own that nobody stops.")
    if run.second is None or run.second.status != 200:
        report.fail("a reconnect with Last-Event-ID resumes after it",
                    observed=run.second.show() if run.second else "no second request",
                    expected="200 and the ticks missed",
                    hint=_status_hint(run.second, "GET", "/ticks", "Read the header as "
                                      "`last_event_id: Annotated[int | None, Header()] = None`."))
    elif run.second.error is not None:
        report.fail("a reconnect with Last-Event-ID resumes after it",
                    observed=f"reconnected with Last-Event-ID: {run.resumed_from}; the stream broke: the app raised "
                             f"{describe_exception(run.second.error)}",
                    expected="the ticks missed, then the new ones",
                    hint="Headers arrive as text: declare `last_event_id: Annotated[int | None, Header()] = None` and "
                         "FastAPI converts it (and refuses what is not a number).")
    else:
        resumed = [_tick_id(e, run.lookup) for e in _sse_parse(run.second.body)[0]]
        resumed = [i for i in resumed if i is not None]
        wanted = run.missed + [run.new]
        missing = [i for i in wanted if i not in resumed]
        again = [i for i in resumed if i <= run.resumed_from]
        report.add("a reconnect with Last-Event-ID resumes after it", resumed == wanted,
                   observed=f"reconnected with Last-Event-ID: {run.resumed_from}; got ticks {resumed[:8]}",
                   expected=f"{wanted}: the 2 missed while away, then the new one",
                   hint=(f"{len(again)} tick(s) the client already had came again: start right after the id it sent."
                         if again else
                         f"{len(missing)} tick(s) published while the client was away were lost: pass the "
                         "`Last-Event-ID` header (as an int) to `feed.subscribe(after=...)`." if missing else
                         "Send each tick once, in order, after the id the client sent."))
    report.add("the event loop stays free", not watch.blocked,
               observed=watch.summary() if watch.blocked else "no blocking calls", expected="none",
               hint="Wait for ticks with `await` (the subscription); `time.sleep` in a generator stops every client.")


# ---- exercise 3: uploads -----------------------------------------------------------------------------

_open_watches: list["_FileWatch"] = []


def _audit(event: str, args) -> None:
    if event != "open" or not _open_watches:
        return
    path = args[0]
    if not isinstance(path, (str, bytes)) and not hasattr(path, "__fspath__"):
        return
    try:
        text = str(Path(path if not isinstance(path, bytes) else path.decode(errors="replace")).absolute())
    except Exception:
        return
    for watch in list(_open_watches):
        if text.startswith(watch.root) and threading.get_ident() == watch.loop_thread:
            found = _learner_frame_of(sys._getframe(1))
            where = f" in {found[0]}(), line {found[1]}" if found else ""
            watch.on_loop.append(f"open({Path(text).name!r}){where}")


sys.addaudithook(_audit)  # cannot be removed: it does nothing unless a check is watching


class _FileWatch:
    """Records files under `root` opened on the event loop's thread."""

    def __init__(self, root: Path) -> None:
        self.root = str(root.absolute()) + "/"
        self.on_loop: list[str] = []
        self.loop_thread = threading.get_ident()

    def __enter__(self):
        _open_watches.append(self)
        return self

    def __exit__(self, *exc_info):
        _open_watches.remove(self)


@contextmanager
def _read_sizes():
    """Records the size asked of every `UploadFile.read` (-1: everything at once)."""
    sizes: list[int] = []
    original = UploadFile.read

    async def read(self, size: int = -1) -> bytes:
        sizes.append(-1 if size is None or size < 0 else size)
        return await original(self, size)

    UploadFile.read = read
    try:
        yield sizes
    finally:
        UploadFile.read = original


class _BodyCounter:
    """An ASGI wrapper that counts the request-body bytes the app pulled from `receive()`."""

    def __init__(self, app) -> None:
        self.app, self.pulled = app, 0

    async def __call__(self, scope, receive, send):
        async def counted():
            message = await receive()
            if message.get("type") == "http.request":
                self.pulled += len(message.get("body", b""))
            return message

        await self.app(scope, counted if scope["type"] == "http" else receive, send)


def _multipart(filename: str, data: bytes) -> tuple[bytes, dict]:
    boundary = f"course{random.randint(10**8, 10**9)}"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), {"content-type": f"multipart/form-data; boundary={boundary}"}


def _files(folder: Path) -> dict[str, bytes]:
    """What the folder holds (the check's own reads are not the app's: watches paused meanwhile)."""
    saved = _open_watches[:]
    _open_watches.clear()
    try:
        return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    finally:
        _open_watches.extend(saved)


def _strays(folder: Path, names: list[str]) -> list[Path]:
    """Files written outside the folder under a client's name: where f"/tmp/{filename}" and friends land."""
    found = []
    for base in (folder, Path(tempfile.gettempdir()), Path.cwd()):
        for name in names:
            path = Path(base, name).resolve()
            if path.is_file() and not path.is_relative_to(folder.resolve()) and path not in found:
                found.append(path)
    return found


@check("Lesson 09 · uploads: off the loop, under the server's name, bounded, nothing left behind", limit_s=20)
async def check_upload(report, make_app):
    tag = random.randint(1000, 9999)
    root = Path(tempfile.mkdtemp(prefix="course-lesson09-"))
    folder = root / "uploads"
    folder.mkdir()
    names = [f"report-{tag}.csv", f"../probe-{tag}.txt"]
    scanner.reset()
    rng = random.Random()
    first, second = rng.randbytes(1_200_000), rng.randbytes(300_000)
    try:
        try:
            app = make_app(folder)
        except Exception as exc:
            report.fail("make_upload_app(folder) returns the app", observed=f"it raised {describe_exception(exc)}",
                        hint="Write the route inside `make_upload_app`, then run its cell again.")
            return
        counter = _BodyCounter(app)
        with BlockingWatch() as watch, _FileWatch(root) as files, _read_sizes() as sizes:
            async with record(counter, title="POST /uploads") as rec:
                steps = await _upload_session(rec, counter, folder, names, first, second)
        _judge_upload(report, steps, folder, names, first, second, watch, files, sizes)
    finally:
        for stray in _strays(folder, names):
            stray.unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)


async def _upload_session(rec, counter, folder, names, first, second) -> dict:
    steps = {}

    async def post(label, filename, data):
        body, headers = _multipart(filename, data)
        return await rec.post("/uploads", content=body, headers=headers, label=label)

    steps["first"] = await post("upload", names[0], first)
    steps["after_first"] = _files(folder)
    steps["strays"] = _strays(folder, names[:1])
    if steps["first"].status != 201:
        return steps
    steps["same_name"] = await post("the same name again", names[0], second)
    steps["after_same"] = _files(folder)
    steps["probe"] = await post("a name with ../", names[1], b"probe " * 100)
    steps["probe_strays"] = _strays(folder, names[1:])
    before = _files(folder)
    steps["infected"] = await post("an infected file", "invoice.pdf", b"%PDF " + INFECTED + b" rest" * 2000)
    await rec.settle(WAIT_S)
    steps["infected_left"] = sorted(set(_files(folder)) - set(before))
    before = _files(folder)
    counter.pulled = 0
    steps["large"] = await post("too large", "video.mp4", b"v" * (MAX_UPLOAD_BYTES + 100_000))
    steps["large_pulled"] = counter.pulled
    await rec.settle(WAIT_S)
    steps["large_left"] = sorted(set(_files(folder)) - set(before))
    return steps


def _judge_upload(report, steps, folder, names, first, second, watch, files, sizes) -> None:
    answer = steps["first"]
    stored = [name for name, data in steps["after_first"].items() if data == first]
    if answer.status != 201:
        report.fail("POST /uploads answers 201", observed=answer.show(), expected='201 {"id": ..., "size": ...}',
                    hint=_status_hint(answer, "POST", "/uploads", "Take `file: UploadFile`, save it, answer `Stored`."))
        return
    if not stored:
        where = steps["strays"][0] if steps["strays"] else None
        report.fail("the file is saved in the folder", expected="one file in the folder with the bytes sent",
                    observed=(f"saved at {where}, outside the folder: a path the client chose" if where else
                              f"files in the folder: {len(steps['after_first'])}, none with the 1.2 MB sent"),
                    hint="Write every chunk of the upload into a file inside `folder`, and close it before answering.")
        return
    report.add("the file is saved in the folder", True, observed=f"1.2 MB saved as {stored[0]!r}")
    chosen = names[0].rsplit(".", 1)[0] not in stored[0]
    kept = any(data == first for data in steps["after_same"].values()) and any(
        data == second for data in steps["after_same"].values())
    report.add("under a name the server chooses", chosen and kept,
               observed=(f"stored as {stored[0]!r}, the client's name" if not chosen else
                         "a second upload with the same file name replaced the first" if not kept else
                         f"stored as {stored[0]!r}; the same name again made a second file"),
               expected="a new name per upload (uuid4().hex), whatever the client sends",
               hint="The client's filename is input, not a path: two clients sending `report.csv` overwrite each other. "
                    "Name the file yourself, e.g. `uuid.uuid4().hex`.")
    strays = steps.get("probe_strays") or []
    report.add("a filename with ../ cannot leave the folder", not strays,
               observed=(f"filename {names[1]!r} wrote {strays[0]}" if strays else
                         f"filename {names[1]!r} answered {steps['probe'].status}, nothing written outside"),
               expected="nothing written outside the folder",
               hint="Joining the client's filename to a folder lets `../` climb out of it: never use it in a path.")
    report.add("saved without blocking the event loop", not files.on_loop and not watch.blocked,
               observed=(f"{files.on_loop[0]} on the event loop's thread" if files.on_loop else
                         watch.summary() if watch.blocked else "no file opened or written on the loop's thread"),
               expected="file work in a worker thread",
               hint="`open()` and `write()` block: in `async def` use `anyio.open_file` (its calls run in a thread), or "
                    "hand the copying to `run_in_threadpool`.")
    whole = [s for s in sizes if s < 0 or s > 4 * 1024 * 1024]
    report.add("read in chunks, not all at once", not whole,
               observed=(f"`UploadFile.read({'' if whole[0] < 0 else whole[0]})` read the whole upload into memory"
                         if whole else f"{len(sizes)} reads of at most {max(sizes, default=0) // 1024} KiB"),
               expected="reads of a bounded size (CHUNK_BYTES)",
               hint="`await file.read()` holds the whole file in memory, and so does `bytes = File()`: loop over "
                    "`await file.read(CHUNK_BYTES)` until it returns b\"\".")
    infected = steps["infected"]
    report.add("an infected upload is refused and removed", infected.status == 422 and not steps["infected_left"],
               observed=(f"answered {infected.status}; files left: {len(steps['infected_left'])}" +
                         ("; the scanner was never called" if len(scanner.scanned) == 0 else "")),
               expected="422 and nothing left in the folder",
               hint=("Scan each saved file with `await scanner.scan(path)`." if not scanner.scanned else
                     "When the scan (or anything after the file was created) fails, delete the file "
                     "(`try/except`) and answer 422."))
    large = steps["large"]
    report.add("a body over MAX_UPLOAD_BYTES gets 413 before it is read",
               large.status == 413 and steps["large_pulled"] == 0 and not steps["large_left"],
               observed=(f"answered {large.status}, the app read {steps['large_pulled'] / 1e6:.1f} MB of the "
                         f"{(MAX_UPLOAD_BYTES + 100_000) / 1e6:.1f} MB body; files left: {len(steps['large_left'])}"),
               expected="413, nothing read, nothing left",
               hint=("`max_body_size=MAX_UPLOAD_BYTES` on the route refuses it from its Content-Length, before a byte "
                     "is read." if large.status != 413 or steps["large_pulled"] else
                     "Nothing should be saved from a refused upload."))
