"""Lesson 11's checks: right answers pass, realistic mistakes fail with their own hint.

Each answer is a factory's source run in the lesson's own namespace (its imports), the way a
learner's cell is. The checks count statements and connections from the engine's events.
"""

import gc
import os
import tempfile
import textwrap
import threading

import pytest
from conftest import assert_feedback_rules, failure_text, notebook_namespace

from checks.lesson11 import EngineWatch, check_import, check_report_pool, check_users_page

pytestmark = pytest.mark.anyio
NS = notebook_namespace("11_database")


def build(source: str, name: str):
    namespace = dict(NS)
    exec(compile(textwrap.dedent(source), "<answer>", "exec"), namespace)
    return namespace[name]


def failed(report, prefix: str):
    item = next((i for i in report.failures if prefix in i.name), None)
    assert item is not None, f"no failure {prefix!r}:\n{failure_text(report)}"
    return item


async def judge(check, source: str, name: str, item: str, hint: str):
    report = await check.report(build(source, name))
    found = failed(report, item)
    assert hint in found.hint + " " + found.observed, failure_text(report)
    assert_feedback_rules(report)
    return report


# ---- exercise 1: a page of users with their posts -----------------------------------------------------

def users_app(route: str) -> str:
    return "def make_users_app(SessionDep):\n    app = FastAPI()\n" + textwrap.indent(textwrap.dedent(route), "    ") \
        + "    return app\n"


PAGE_RIGHT = {
    "selectinload": """
        @app.get("/users")
        async def users(session: SessionDep, limit: int = 10) -> list[UserOut]:
            query = select(User).options(selectinload(User.posts)).order_by(User.id).limit(limit)
            return (await session.scalars(query)).all()
    """,
    "joinedload and unique()": """
        @app.get("/users")
        async def users(session: SessionDep, limit: int = 10) -> list[UserOut]:
            query = select(User).options(joinedload(User.posts)).order_by(User.id).limit(limit)
            return (await session.scalars(query)).unique().all()
    """,
    "two queries by hand": """
        @app.get("/users")
        async def users(session: SessionDep, limit: int = 10) -> list[dict]:
            page = (await session.scalars(select(User).order_by(User.id).limit(limit))).all()
            posts = (await session.scalars(select(Post).where(Post.user_id.in_([u.id for u in page]))
                                           .order_by(Post.id))).all()
            return [{"id": u.id, "name": u.name,
                     "posts": [{"id": p.id, "title": p.title} for p in posts if p.user_id == u.id]} for u in page]
    """,
    "selectinload, models built in the route": """
        from fastapi import Query
        @app.get("/users", response_model=list[UserOut])
        async def users(session: SessionDep, limit: int = Query(10, ge=1)):
            result = await session.execute(select(User).order_by(User.id).limit(limit).options(selectinload(User.posts)))
            return [UserOut.model_validate(user) for user in result.scalars()]
    """,
}
PAGE_WRONG = {
    "lazy load (MissingGreenlet)": ("""
        @app.get("/users")
        async def users(session: SessionDep, limit: int = 10) -> list[UserOut]:
            return (await session.scalars(select(User).order_by(User.id).limit(limit))).all()
    """, "GET /users?limit=", "eager loader"),
    "N+1 with awaitable_attrs": ("""
        @app.get("/users")
        async def users(session: SessionDep, limit: int = 10) -> list[UserOut]:
            page = (await session.scalars(select(User).order_by(User.id).limit(limit))).all()
            for user in page:
                await user.awaitable_attrs.posts
            return page
    """, "the same few statements", "N+1"),
    "N+1 with refresh": ("""
        @app.get("/users")
        async def users(session: SessionDep, limit: int = 10) -> list[UserOut]:
            page = (await session.scalars(select(User).order_by(User.id).limit(limit))).all()
            for user in page:
                await session.refresh(user, ["posts"])
            return page
    """, "the same few statements", "N+1"),
    "N+1 with a query per user": ("""
        @app.get("/users")
        async def users(session: SessionDep, limit: int = 10) -> list[dict]:
            page = (await session.scalars(select(User).order_by(User.id).limit(limit))).all()
            return [{"id": u.id, "name": u.name, "posts": [{"id": p.id, "title": p.title} for p in
                     (await session.scalars(select(Post).where(Post.user_id == u.id).order_by(Post.id))).all()]}
                    for u in page]
    """, "the same few statements", "N+1"),
    "raiseload": ("""
        from sqlalchemy.orm import raiseload
        @app.get("/users")
        async def users(session: SessionDep, limit: int = 10) -> list[UserOut]:
            query = select(User).options(raiseload(User.posts)).order_by(User.id).limit(limit)
            return (await session.scalars(query)).all()
    """, "GET /users?limit=", "raiseload"),
    "posts left out": ("""
        @app.get("/users")
        async def users(session: SessionDep, limit: int = 10) -> list[UserOut]:
            page = (await session.scalars(select(User).order_by(User.id).limit(limit))).all()
            return [UserOut(id=u.id, name=u.name, posts=[]) for u in page]
    """, "GET /users?limit=", "all of its posts"),
    "joinedload without unique()": ("""
        @app.get("/users")
        async def users(session: SessionDep, limit: int = 10) -> list[UserOut]:
            query = select(User).options(joinedload(User.posts)).order_by(User.id).limit(limit)
            return (await session.scalars(query)).all()
    """, "GET /users?limit=", "unique()"),
    "no order: not the first users": ("""
        @app.get("/users")
        async def users(session: SessionDep, limit: int = 10) -> list[UserOut]:
            query = select(User).options(selectinload(User.posts)).order_by(User.id.desc()).limit(limit)
            return (await session.scalars(query)).all()
    """, "GET /users?limit=", "Order the users by id"),
    "limit ignored: a hard-coded page": ("""
        @app.get("/users")
        async def users(session: SessionDep) -> list[UserOut]:
            query = select(User).options(selectinload(User.posts)).order_by(User.id).limit(10)
            return (await session.scalars(query)).all()
    """, "GET /users?limit=", "limit them"),
    "every user loaded, sliced in Python": ("""
        @app.get("/users")
        async def users(session: SessionDep, limit: int = 10) -> list[UserOut]:
            everyone = (await session.scalars(select(User).order_by(User.id))).all()
            page = everyone[:limit]
            for user in page:
                await user.awaitable_attrs.posts
            return page
    """, "the same few statements", "N+1"),
}


@pytest.mark.parametrize("name", PAGE_RIGHT)
async def test_page_right_answers_pass(name):
    report = await check_users_page.report(build(users_app(PAGE_RIGHT[name]), "make_users_app"))
    assert report.passed, failure_text(report)


@pytest.mark.parametrize("name", PAGE_WRONG)
async def test_page_wrong_answers_fail_with_their_hint(name):
    source, item, hint = PAGE_WRONG[name]
    await judge(check_users_page, users_app(source), "make_users_app", item, hint)


async def test_page_n_plus_1_shows_both_counts():
    report = await check_users_page.report(build(users_app(PAGE_WRONG["N+1 with awaitable_attrs"][0]), "make_users_app"))
    observed = failed(report, "the same few statements").observed
    small, large = [int(part.split(": ")[1].split()[0]) for part in observed.split("; ")]
    assert small < large and small >= 4, observed  # 1 + page size each


async def test_page_stub_fails_cleanly():
    report = await check_users_page.report(build(
        "def make_users_app(SessionDep):\n    raise NotImplementedError('write it')\n", "make_users_app"))
    assert "not written yet" in failed(report, "make_users_app makes an app").hint


# ---- exercise 2: a batch import ---------------------------------------------------------------------------

def import_app(route: str) -> str:
    return "def make_import_app(SessionDep):\n    app = FastAPI()\n" + textwrap.indent(textwrap.dedent(route), "    ") \
        + "    return app\n"


IMPORT_RIGHT = {
    "insert with a list (executemany)": """
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[PostIn]) -> Imported:
            await session.execute(insert(Post), [row.model_dump() for row in rows])
            await session.commit()
            return Imported(imported=len(rows))
    """,
    "insert().values(...)": """
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[PostIn]) -> Imported:
            await session.execute(insert(Post).values([row.model_dump() for row in rows]))
            await session.commit()
            return Imported(imported=len(rows))
    """,
    "session.begin() block, 200": """
        @app.post("/posts/import")
        async def import_posts(session: SessionDep, rows: list[PostIn]) -> Imported:
            async with session.begin():
                await session.execute(insert(Post), [{"title": r.title, "user_id": r.user_id} for r in rows])
            return Imported(imported=len(rows))
    """,
    "validated by hand first, the row named, then one insert": """
        from fastapi import HTTPException
        from pydantic import ValidationError
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[dict]) -> Imported:
            valid = []
            for index, row in enumerate(rows):
                try:
                    valid.append(PostIn.model_validate(row))
                except ValidationError as exc:
                    raise HTTPException(422, {"row": index, "errors": exc.errors(include_url=False)}) from None
            await session.execute(insert(Post), [v.model_dump() for v in valid])
            await session.commit()
            return Imported(imported=len(valid))
    """,
}
IMPORT_WRONG = {
    "a commit per row": ("""
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[PostIn]) -> Imported:
            for row in rows:
                session.add(Post(**row.model_dump()))
                await session.commit()
            return Imported(imported=len(rows))
    """, "the same few statements", "one round trip each"),
    "a flush per row": ("""
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[PostIn]) -> Imported:
            for row in rows:
                session.add(Post(**row.model_dump()))
                await session.flush()
            await session.commit()
            return Imported(imported=len(rows))
    """, "the same few statements", "one round trip each"),
    "add_all and one commit": ("""
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[PostIn]) -> Imported:
            session.add_all([Post(**row.model_dump()) for row in rows])
            await session.commit()
            return Imported(imported=len(rows))
    """, "the same few statements", "add_all"),
    "an insert per row": ("""
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[PostIn]) -> Imported:
            for row in rows:
                await session.execute(insert(Post).values(**row.model_dump()))
            await session.commit()
            return Imported(imported=len(rows))
    """, "the same few statements", "one round trip each"),
    "raw rows validated and committed one by one": ("""
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[dict]) -> Imported:
            for row in rows:
                session.add(Post(**PostIn.model_validate(row).model_dump()))
                await session.commit()
            return Imported(imported=len(rows))
    """, "the same few statements", "one round trip each"),
    "raw rows, bad ones skipped": ("""
        from pydantic import ValidationError
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[dict]) -> Imported:
            good = []
            for row in rows:
                try:
                    good.append(PostIn.model_validate(row).model_dump())
                except ValidationError:
                    pass
            await session.execute(insert(Post), good)
            await session.commit()
            return Imported(imported=len(good))
    """, "a bad row rejects the whole batch", "Validate every row"),
    "raw rows, chunks committed, 500 on the bad one": ("""
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[dict]) -> Imported:
            for start in range(0, len(rows), 10_000 if len(rows) > 100 else 5):
                chunk = [PostIn.model_validate(r).model_dump() for r in rows[start:start + 5]] if len(rows) <= 100 \\
                    else [PostIn.model_validate(r).model_dump() for r in rows]
                await session.execute(insert(Post), chunk)
                await session.commit()
            return Imported(imported=len(rows))
    """, "nothing of a rejected batch is written", "Some rows were committed"),
    "chunks of 25 rows": ("""
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[PostIn]) -> Imported:
            data = [row.model_dump() for row in rows]
            for start in range(0, len(data), 25):
                await session.execute(insert(Post), data[start:start + 25])
            await session.commit()
            return Imported(imported=len(rows))
    """, "the same few statements", "in pieces"),
    "no commit: nothing saved": ("""
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[PostIn]) -> Imported:
            await session.execute(insert(Post), [row.model_dump() for row in rows])
            return Imported(imported=len(rows))
    """, "POST /posts/import of", "Insert every row"),
    "the wrong count answered": ("""
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[PostIn]) -> dict:
            await session.execute(insert(Post), [row.model_dump() for row in rows])
            await session.commit()
            return {"imported": True}
    """, "POST /posts/import of", "answer with how many"),
    "the 422 that names no row": ("""
        from fastapi import HTTPException
        from pydantic import ValidationError
        @app.post("/posts/import", status_code=201)
        async def import_posts(session: SessionDep, rows: list[dict]) -> Imported:
            try:
                valid = [PostIn.model_validate(row).model_dump() for row in rows]
            except ValidationError:
                raise HTTPException(422, "invalid batch") from None
            await session.execute(insert(Post), valid)
            await session.commit()
            return Imported(imported=len(valid))
    """, "the 422 says which row is bad", "location of each error"),
}


@pytest.mark.parametrize("name", IMPORT_RIGHT)
async def test_import_right_answers_pass(name):
    report = await check_import.report(build(import_app(IMPORT_RIGHT[name]), "make_import_app"))
    assert report.passed, failure_text(report)


@pytest.mark.parametrize("name", IMPORT_WRONG)
async def test_import_wrong_answers_fail_with_their_hint(name):
    source, item, hint = IMPORT_WRONG[name]
    await judge(check_import, import_app(source), "make_import_app", item, hint)


# ---- exercise 3: a pool and an app-wide limit --------------------------------------------------------------

def report_app(engine: str, limit: str = "max_connections", dependency: str | None = None, route: str | None = None) -> str:
    dependency = dependency or f"""
        async def get_session():
            async with sessions() as session:
                yield session

        ReportSession = Annotated[AsyncSession, Depends(get_session, max_concurrency={limit})]
    """
    route = route or """
        @app.get("/report")
        async def report(session: ReportSession) -> dict:
            return await slow_report(session)
    """
    body = f"""
        engine = {engine}
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        {textwrap.dedent(dependency).strip().replace(chr(10), chr(10) + "        ")}

        @asynccontextmanager
        async def lifespan(app):
            yield
            await engine.dispose()

        app = FastAPI(lifespan=lifespan)
        {textwrap.dedent(route).strip().replace(chr(10), chr(10) + "        ")}
        return app
    """
    return "def make_report_app(database_url, max_connections):\n" + textwrap.indent(textwrap.dedent(body), "    ")


SIZED = "create_async_engine(database_url, pool_size=max_connections, max_overflow=0, pool_timeout=POOL_TIMEOUT_S)"
POOL_RIGHT = {
    "pool = limit": report_app(SIZED),
    "overflow covers the limit": report_app("create_async_engine(database_url, pool_size=1, "
                                            "max_overflow=max_connections - 1, pool_timeout=POOL_TIMEOUT_S)"),
    "a larger overflow, the limit keeps it": report_app("create_async_engine(database_url, pool_size=max_connections, "
                                                        "max_overflow=5, pool_timeout=POOL_TIMEOUT_S)"),
    "a smaller limit than the pool": report_app(SIZED, limit="max(1, max_connections - 1)"),
    "an app-wide semaphore from the factory": report_app(SIZED, dependency="""
        limit = asyncio.Semaphore(max_connections)

        async def get_session():
            async with limit:
                async with sessions() as session:
                    yield session

        ReportSession = Annotated[AsyncSession, Depends(get_session)]
    """),
    "the engine made by the lifespan": """
        def make_report_app(database_url, max_connections):
            @asynccontextmanager
            async def lifespan(app):
                engine = create_async_engine(database_url, pool_size=max_connections, max_overflow=0,
                                             pool_timeout=POOL_TIMEOUT_S)
                yield {"sessions": async_sessionmaker(engine, expire_on_commit=False)}
                await engine.dispose()

            from fastapi import Request
            async def get_session(request: Request):
                async with request.state.sessions() as session:
                    yield session

            ReportSession = Annotated[AsyncSession, Depends(get_session, max_concurrency=max_connections)]
            app = FastAPI(lifespan=lifespan)

            @app.get("/report")
            async def report(session: ReportSession) -> dict:
                return await slow_report(session)
            return app
    """,
}
POOL_WRONG = {
    "the guides' 20 + 10, no limit": (report_app(
        "create_async_engine(database_url, pool_size=20, max_overflow=10, pool_timeout=POOL_TIMEOUT_S)", limit="None"),
        "at most", "pool_size"),
    "a sized pool, no limit": (report_app(SIZED, limit="None"), "requests at once all answer 200", "max_concurrency"),
    "a limit larger than the pool": (report_app(SIZED, limit="2 * max_connections"),
                                     "requests at once all answer 200", "no larger than"),
    "a pool one short of the limit": (report_app(
        "create_async_engine(database_url, pool_size=max_connections - 1, max_overflow=0, pool_timeout=POOL_TIMEOUT_S)"),
        "requests at once all answer 200", "no larger than"),
    "the default pool (5 + 10), no limit": (report_app("create_async_engine(database_url, pool_timeout=POOL_TIMEOUT_S)",
                                                       limit="None"), "at most", "max_connections"),
    "NullPool: a connection per request": (report_app(
        "create_async_engine(database_url, poolclass=__import__('sqlalchemy.pool').pool.NullPool)", limit="None"),
        "at most", "pool_size"),
    "right sizes, the default pool_timeout": (report_app(
        "create_async_engine(database_url, pool_size=max_connections, max_overflow=0)"), "the pool gives up quickly",
        "pool_timeout=30"),
    "a semaphore per request": (report_app(SIZED, dependency="""
        async def get_session():
            async with asyncio.Semaphore(max_connections):
                async with sessions() as session:
                    yield session

        ReportSession = Annotated[AsyncSession, Depends(get_session)]
    """), "requests at once all answer 200", "TimeoutError"),
    "the limit on a dependency that returns": (report_app(SIZED, dependency="""
        def get_session():
            return sessions()

        ReportSession = Annotated[AsyncSession, Depends(get_session, max_concurrency=max_connections)]
    """), "requests at once all answer 200", "TimeoutError"),
    "no database at all": ("""
        def make_report_app(database_url, max_connections):
            app = FastAPI()
            @app.get("/report")
            async def report() -> dict:
                return {"users": 0}
            return app
    """, "the app creates its engine", "create_async_engine"),
    "a new engine per request": (report_app(SIZED, route="""
        @app.get("/report")
        async def report() -> dict:
            own = create_async_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=POOL_TIMEOUT_S)
            async with async_sessionmaker(own)() as session:
                return await slow_report(session)
    """), "at most", "pool_size"),
}


@pytest.mark.parametrize("name", POOL_RIGHT)
async def test_pool_right_answers_pass(name):
    report = await check_report_pool.report(build(textwrap.dedent(POOL_RIGHT[name]), "make_report_app"))
    assert report.passed, failure_text(report)


@pytest.mark.parametrize("name", POOL_WRONG)
async def test_pool_wrong_answers_fail_with_their_hint(name):
    source, item, hint = POOL_WRONG[name]
    await judge(check_report_pool, source, "make_report_app", item, hint)


# ---- nothing outlives a check ------------------------------------------------------------------------------

def _leftover_files() -> set[str]:
    return {f for f in os.listdir(tempfile.gettempdir()) if f.startswith("fastapi-course-lesson11-")}


@pytest.mark.parametrize("case", ["right", "leaky"])
async def test_nothing_outlives_a_check(case):
    files, threads = _leftover_files(), threading.active_count()
    source = POOL_RIGHT["pool = limit"] if case == "right" else POOL_WRONG["a new engine per request"][0]
    with EngineWatch() as watch:  # sees the engines the check makes (its database's and the learner's)
        await check_report_pool.report(build(source, "make_report_app"))
    gc.collect()
    assert sum(c.open for c in watch.counts) == 0, [repr(c) for c in watch.counts]
    assert _leftover_files() == files
    assert threading.active_count() <= threads  # aiosqlite runs a thread per open connection


async def test_checks_draw_random_sizes():
    seen = set()
    for _ in range(3):
        report = await check_users_page.report(build(users_app(PAGE_RIGHT["selectinload"]), "make_users_app"))
        seen.add(report.items[-1].observed)
    assert len(seen) > 1
