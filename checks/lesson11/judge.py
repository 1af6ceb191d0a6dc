"""Lesson 11's checks: a page of users and posts, a batch import, and a pool sized with a limit.

Verdicts are exact counts from the engine's own events (statements sent, connections open and
held, see world.Counts) and rows in the table, on a fresh SQLite file of random size each run:
an answer that hard-codes a size fails. Every engine and file a check creates is disposed of.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import warnings

from ..harness import describe_exception, serve
from ..observe import json_body, show_response
from ..runner import check
from .world import POOL_TIMEOUT_S, Database, EngineWatch

MAX_STATEMENTS = 3  # a constant-query answer needs 1 (joinedload) or 2 (selectinload)


def _n(statements: list) -> str:
    return f"{len(statements)} statement{'' if len(statements) == 1 else 's'}"


def _app_error(client, path: str):
    errors = client.errors_for(path)
    return errors[-1].exception if errors else None


def _root(exc):
    """The exception SQLAlchemy wrapped (MissingGreenlet inside a StatementError), else exc."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return getattr(exc, "orig", None) or exc


def _build(report, factory, *args):
    """The learner's app from their factory, or None (reported) when the factory is not done."""
    try:
        return factory(*args)
    except NotImplementedError:
        report.fail(f"{getattr(factory, '__name__', 'the factory')} makes an app", observed="it raised NotImplementedError",
                    hint="The exercise is not written yet: replace the stub with your code and run its cell.")
    return None


# ---- exercise 1: a page of users with their posts ------------------------------------------------------

def _short(response, client) -> str:
    """`500: the route raised X` in one line; MissingGreenlet named even when FastAPI wrapped it."""
    error = _app_error(client, response.request.url.path)
    if response.status_code < 500 or error is None:
        return show_response(response, client).splitlines()[0][:160]
    text = str(error)
    if "MissingGreenlet" in text:
        return f"{response.status_code}: MissingGreenlet (IO outside an await) while the response read an attribute"
    return f"{response.status_code}: the route raised " + describe_exception(error).splitlines()[0][:140]


def _page_hint(exc) -> str:
    root = _root(exc)
    name, text = type(root).__name__, str(exc)
    if name == "MissingGreenlet" or "MissingGreenlet" in text:
        return ("Each user's `posts` was loaded lazily when the response was built, and async SQLAlchemy cannot "
                "do IO there. Load the posts with the users, in the query: an eager loader option.")
    if "lazy='raise'" in text or "raise" in text and "not available" in text:
        return ("`raiseload` stops the lazy load, but the page still needs the posts: load them eagerly "
                "(an option of the query that fetches them for every user at once).")
    if "unique()" in text:
        return ("A joined eager load of a collection repeats each user once per post: call `.unique()` on the "
                "result, or load the collection with a second query instead of a join.")
    return "Fix the error the route raised, run the cell again, then this check."


@check("Lesson 11 · a page of users with their posts, in a constant number of statements", limit_s=15)
async def check_users_page(report, make_users_app):
    try:
        with warnings.catch_warnings():  # what a failed lazy load leaves behind is reported as MissingGreenlet
            warnings.filterwarnings("ignore", "coroutine 'Connection.cursor' was never awaited", RuntimeWarning)
            await _users_page(report, make_users_app)
    finally:
        with warnings.catch_warnings():  # a failed lazy load leaves a coroutine never awaited: collect it quietly
            warnings.simplefilter("ignore")
            gc.collect()


async def _users_page(report, make_users_app):
    sizes = [random.randint(3, 8), random.randint(15, 30)]
    seen = []
    async with Database(users=random.randint(40, 60), seed=random.randint(0, 10**6)) as db:
        app = _build(report, make_users_app, db.SessionDep)
        if app is None:
            return
        async with serve(app, raise_app_exceptions=False) as client:
            for size in sizes:
                expected = await db.expected_page(size)
                db.counts.reset()
                response = await client.get("/users", params={"limit": size})
                statements = list(db.counts.statements)
                if response.status_code != 200:
                    error = _app_error(client, "/users")
                    report.fail(f"GET /users?limit={size} answers 200", observed=_short(response, client)
                                + f"; {_n(statements)} before it", expected="200 and the page",
                                hint=_page_hint(error) if error else "Declare `limit: int` as a query parameter of GET /users.")
                    return
                body = json_body(response)
                if body != expected:
                    got = len(body) if isinstance(body, list) else "no list of"
                    posts = sum(len(u.get("posts") or []) for u in body if isinstance(u, dict)) if isinstance(body, list) else 0
                    report.fail(f"GET /users?limit={size} gives the first {size} users with their posts",
                                observed=f"{got} users, {posts} posts in all",
                                expected=f"{size} users by id, {sum(len(u['posts']) for u in expected)} posts",
                                hint="Order the users by id, limit them to `limit`, and return each with all of its posts "
                                     "(an answer that leaves them out has an empty `posts`).")
                    return
                seen.append((size, statements))
    report.add("each page holds the first users by id with all their posts", True,
               observed=", ".join(f"{size} users" for size, _ in seen))
    (small, first), (large, second) = seen
    constant = len(first) == len(second) and len(first) <= MAX_STATEMENTS
    report.add("the same few statements whatever the page size", constant,
               observed=f"{small} users: {_n(first)}; {large} users: {_n(second)}",
               expected=f"the same number for both pages, at most {MAX_STATEMENTS}",
               hint="One query per user's posts is the N+1 pattern: it grows with the page. Ask the query to load "
                    "every user's posts at once (an eager loader option on the relationship).")


# ---- exercise 2: a batch import ----------------------------------------------------------------------------

def _rows(count: int, users: int) -> list[dict]:
    return [{"title": f"imported {random.randint(1000, 9999)}", "user_id": random.randint(1, users)} for _ in range(count)]


@check("Lesson 11 · a batch import in one transaction: a constant number of statements, all or nothing", limit_s=15)
async def check_import(report, make_import_app):
    users = random.randint(5, 10)
    async with Database(users=users, seed=random.randint(0, 10**6)) as db:
        app = _build(report, make_import_app, db.SessionDep)
        if app is None:
            return
        async with serve(app, raise_app_exceptions=False) as client:
            counts = []
            for size in (random.randint(10, 30), random.randint(60, 120)):
                before = await db.count()
                db.counts.reset()
                response = await client.post("/posts/import", json=_rows(size, users))
                statements = list(db.counts.statements)
                written = await db.count() - before
                body = json_body(response)
                if response.status_code not in (200, 201) or body != {"imported": size} or written != size:
                    error = _app_error(client, "/posts/import")
                    report.fail(f"POST /posts/import of {size} rows imports them", observed=_short(response, client)
                                + f"; {written} rows written", expected=f'201 {{"imported": {size}}}, {size} rows written',
                                hint=("Fix the error your route raised: " + describe_exception(error)[:120] if error else
                                      "Insert every row of the batch and answer with how many were imported."))
                    return
                counts.append((size, statements))
            (small, first), (large, second) = counts
            constant = len(first) == len(second) and len(first) <= MAX_STATEMENTS
            report.add("the same few statements whatever the batch size", constant,
                       observed=f"{small} rows: {_n(first)}; {large} rows: {_n(second)}",
                       expected=f"the same number for both, at most {MAX_STATEMENTS}",
                       hint=_insert_hint(second, large))
            await _judge_bad_batch(report, client, db, users)


def _insert_hint(statements: list[str], size: int) -> str:
    returning = sum("RETURNING" in s for s in statements)
    if returning >= size:
        return ("`add_all` looks like one batch, but the ORM needs each new id back and on SQLite that is one "
                "INSERT ... RETURNING per row. Send the rows as one statement: `insert(Post)` with a list of dicts.")
    if len(statements) < size:
        return ("The batch went out in pieces, more of them for a larger batch. One `insert(Post)` executed with "
                "the whole list of dicts is one statement, whatever the number of rows.")
    return ("Each row went to the database on its own (a flush or a commit per row): one round trip each. Build "
            "the rows first, then send them as one statement (`insert(Post)` with a list of dicts), commit once.")


async def _judge_bad_batch(report, client, db, users: int) -> None:
    size = random.randint(20, 60)
    bad = random.randint(size // 3, 2 * size // 3)
    rows = _rows(size, users)
    rows[bad]["title"] = random.choice(["", "x" * 150])
    before = await db.count()
    db.counts.reset()
    response = await client.post("/posts/import", json=rows)
    written = await db.count() - before
    report.add("a bad row rejects the whole batch with 422", response.status_code == 422,
               observed=f"row {bad} of {size}: 422" if response.status_code == 422 else _short(response, client),
               expected=f"422 naming row {bad}",
               hint="Validate every row before writing any: declare the body as a list of `PostIn`, so FastAPI "
                    "answers 422 (with the row's index) before your code runs.")
    if response.status_code == 422:
        named = str(bad) in response.text
        report.add("the 422 says which row is bad", named, observed="it does" if named else response.text[:120],
                   expected=f"row {bad} named in the error", hint="Let FastAPI validate the body: its 422 lists the "
                   "location of each error, the row's index included.")
    report.add("nothing of a rejected batch is written", written == 0,
               observed=f"{written} of {size} rows written (row {bad} was bad)" if written else "0 rows written",
               expected="0",
               hint="Some rows were committed before the bad one was seen. Validate the whole batch first and write it "
                    "in one transaction, committed once at the end.")


# ---- exercise 3: a pool and an app-wide limit ------------------------------------------------------------------

@check("Lesson 11 · a pool and an app-wide limit sized together for a burst", limit_s=20)
async def check_report_pool(report, make_report_app):
    connections = random.randint(3, 5)
    burst = 4 * connections
    async with Database(users=random.randint(5, 20)) as db:
        with EngineWatch() as watch:
            try:
                app = _build(report, make_report_app, db.url, connections)
                if app is None:
                    return
                await _burst(report, watch, app, connections, burst)
            finally:
                await watch.dispose()
        report.add("no connection outlives the app", watch.open == 0, observed=f"{watch.open} still open",
                   expected="0", hint="Dispose of the engine when the app shuts down (after the lifespan's `yield`).")


async def _burst(report, watch: EngineWatch, app, connections: int, burst: int) -> None:
    async with serve(app, raise_app_exceptions=False) as client:
        watch.reset()
        started = time.perf_counter()
        responses = await asyncio.gather(*[client.get("/report") for _ in range(burst)])
        report.metrics["in_requests_s"] = time.perf_counter() - started
    with warnings.catch_warnings():  # sessions nobody closed: the collector finds their connections
        warnings.simplefilter("ignore")
        gc.collect()
    held = watch.held + watch.detached
    if not watch.counts:
        report.fail("the app creates its engine", observed="no engine was created", expected="one, from database_url",
                    hint="Create the engine with `create_async_engine(database_url, ...)`, in `make_report_app` or "
                         "in the app's lifespan.")
        return
    failed = [r for r in responses if r.status_code != 200]
    errors = [e.exception for e in client.errors_for("/report")]
    timeouts = sum(type(_root(e)).__name__ == "TimeoutError" for e in errors)
    report.add(f"{burst} requests at once all answer 200", not failed,
               observed=f"{len(failed)} failed" + (f", {timeouts} with TimeoutError (no pooled connection within "
                                                     "pool_timeout)" if timeouts else
                                                     f": {_short(failed[0], client)}" if failed else ""),
               expected="0 failed", hint=_burst_hint(timeouts, failed))
    report.add(f"at most {connections} connections open at once", watch.peak_open <= connections,
               observed=f"{watch.peak_open} open at the peak, over {len(watch.counts)} engine(s)",
               expected=f"at most {connections}",
               hint="The pool opened a connection for every request in the burst: its size (`pool_size` + "
                    "`max_overflow`) is the database's share, so size it from `max_connections`.")
    timeouts_set = [getattr(c.engine.pool, "timeout", None) for c in watch.counts]
    slow = [t() for t in timeouts_set if callable(t) and t() > POOL_TIMEOUT_S]
    report.add("the pool gives up quickly", not slow and all(callable(t) for t in timeouts_set),
               observed=(f"pool_timeout={slow[0]:g} s" if slow else "a pool that never waits (no `pool_timeout`)"
                         if not all(callable(t) for t in timeouts_set) else f"pool_timeout ≤ {POOL_TIMEOUT_S:g} s"),
               expected=f"pool_timeout at most POOL_TIMEOUT_S ({POOL_TIMEOUT_S:g} s)",
               hint="A long pool wait hides an overload until it is a pile of slow requests: set "
                    "`pool_timeout=POOL_TIMEOUT_S` and let the app-wide limit do the queueing.")
    report.add("every session gives its connection back", held == 0,
               observed=f"{held} never given back (the garbage collector had to find them)" if held else "all of them",
               expected="0", hint="A dependency that returns a session never closes it: `yield` it from "
                                  "`async with sessions() as session`, so it is closed after the request.")


def _burst_hint(timeouts: int, failed) -> str:
    if timeouts:
        return ("Requests queued for a connection inside the pool and gave up after `pool_timeout`. Queue them "
                "before they ask for one: an app-wide limit (`Depends(..., max_concurrency=N)`) no larger than "
                "the pool.")
    return "Fix the error your route raised, run the cell again, then this check." if failed else ""
