"""Lesson 13's checks: right answers pass, the guides' mistakes fail with their own hint.

Each answer is source code run in the lesson's own namespace, the way a learner's cell is. The
checks run each app on a real uvicorn server on loopback; no process may outlive a check.
"""

import textwrap

import psutil
import pytest
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace

from checks.lesson13 import ServerProcess, check_pool, check_settings, check_visits, leftover_servers

pytestmark = pytest.mark.anyio
NS = notebook_namespace("13_production")


def build(source: str, *wanted: str):
    namespace = dict(NS)
    exec(compile(textwrap.dedent(source), "<answer>", "exec"), namespace)
    return [namespace[name] for name in wanted]


def live_children() -> list[int]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.Error:
            pass
    return found


@pytest.fixture(autouse=True)
def no_process_left():
    before = set(live_children())  # another test module's process is not this test's to judge
    yield
    assert sorted(set(live_children()) - before) == [], "a process outlived the check"
    assert leftover_servers() == []


# ---- exercise 1: a process pool from the lifespan -------------------------------------------------

POOL_HEAD = """
app = FastAPI(lifespan=lifespan)
"""
LIFESPAN = """
@asynccontextmanager
async def lifespan(app):
    with ProcessPoolExecutor(max_workers=2) as pool:
        yield {"pool": pool}
"""
POOL_RIGHT = {
    "the solution": "pool_app = app = FastAPI(lifespan=lifespan)\n" + """
@app.get("/crunch")
async def crunch_route(rounds: int, seed: str, request: Request) -> dict:
    return await asyncio.get_running_loop().run_in_executor(request.state.pool, crunch, rounds, seed)
""",
    "with-block, partial": LIFESPAN + POOL_HEAD + """
import functools
@app.get("/crunch")
async def crunch_route(rounds: int, seed: str, request: Request):
    job = functools.partial(crunch, rounds, seed=seed)
    return await asyncio.get_running_loop().run_in_executor(request.state.pool, job)
""",
    "app.state, wrap_future": """
@asynccontextmanager
async def lifespan(app):
    app.state.pool = ProcessPoolExecutor()
    try:
        yield
    finally:
        app.state.pool.shutdown(wait=True)
app = FastAPI(lifespan=lifespan)
@app.get("/crunch")
async def crunch_route(rounds: int, seed: str, request: Request):
    return await asyncio.wrap_future(request.app.state.pool.submit(crunch, rounds, seed))
""",
}
ROUTE_IN_POOL = """
@app.get("/crunch")
async def crunch_route(rounds: int, seed: str, request: Request):
    return await asyncio.get_running_loop().run_in_executor(request.state.pool, crunch, rounds, seed)
"""
POOL_WRONG = {
    "crunch called in async def": (LIFESPAN + POOL_HEAD + """
@app.get("/crunch")
async def crunch_route(rounds: int, seed: str):
    return crunch(rounds, seed)
""", "the work runs outside the server's process", "A thread"),
    "a def route (thread pool)": (LIFESPAN + POOL_HEAD + """
@app.get("/crunch")
def crunch_route(rounds: int, seed: str):
    return crunch(rounds, seed)
""", "the work runs outside the server's process", "GIL"),
    "asyncio.to_thread": (LIFESPAN + POOL_HEAD + """
@app.get("/crunch")
async def crunch_route(rounds: int, seed: str):
    return await asyncio.to_thread(crunch, rounds, seed)
""", "the work runs outside the server's process", "process pool"),
    "a ThreadPoolExecutor in the lifespan": ("""
from concurrent.futures import ThreadPoolExecutor
@asynccontextmanager
async def lifespan(app):
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {"pool": pool}
""" + POOL_HEAD + ROUTE_IN_POOL, "the work runs outside the server's process", "GIL"),
    "one worker process": ("""
@asynccontextmanager
async def lifespan(app):
    with ProcessPoolExecutor(max_workers=1) as pool:
        yield {"pool": pool}
""" + POOL_HEAD + ROUTE_IN_POOL, "jobs run in parallel, one process per core", "one worker"),
    "a pool per request": ("app = FastAPI()\n" + """
@app.get("/crunch")
async def crunch_route(rounds: int, seed: str):
    with ProcessPoolExecutor(max_workers=2) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, crunch, rounds, seed)
""", "one pool, made by the lifespan at startup", "per request"),
    "a module-level pool, never shut down": ("""
pool = ProcessPoolExecutor(max_workers=2)
@asynccontextmanager
async def lifespan(app):
    yield {"pool": pool}
""" + POOL_HEAD + ROUTE_IN_POOL, "one pool, made by the lifespan at startup", "imported"),
    "no shutdown after yield": ("""
@asynccontextmanager
async def lifespan(app):
    pool = ProcessPoolExecutor(max_workers=2)
    yield {"pool": pool}
""" + POOL_HEAD + ROUTE_IN_POOL, "the pool is shut down at exit", "outlives the app"),
    "submit().result() waits on the loop": (LIFESPAN + POOL_HEAD + """
@app.get("/crunch")
async def crunch_route(rounds: int, seed: str, request: Request):
    return request.state.pool.submit(crunch, rounds, seed).result()
""", "the event loop stays free while jobs run", "await the result"),
    "the seed forgotten": (LIFESPAN + POOL_HEAD + """
@app.get("/crunch")
async def crunch_route(rounds: int, seed: str, request: Request):
    return await asyncio.get_running_loop().run_in_executor(request.state.pool, crunch, rounds)
""", "the job's result comes back", "`seed`"),
}


@pytest.mark.parametrize("name", POOL_RIGHT)
async def test_pool_right(name):
    (app,) = build(POOL_RIGHT[name], "app")
    report = await check_pool.report(app)
    assert report.passed, failure_text(report)


@pytest.mark.parametrize("name", POOL_WRONG)
async def test_pool_wrong(name):
    source, item, hint = POOL_WRONG[name]
    namespace = dict(NS)
    exec(compile(textwrap.dedent(source), "<answer>", "exec"), namespace)
    try:
        report = await check_pool.report(namespace["app"])
    finally:
        if "pool" in namespace and hasattr(namespace["pool"], "shutdown"):
            namespace["pool"].shutdown(wait=True, cancel_futures=True)
    assert_feedback_rules(report)
    assert names(report)[0] == item, failure_text(report)
    assert hint in report.failures[0].hint


# ---- exercise 2: a count two workers share ---------------------------------------------------------

UPSERT = """
    add_one = (insert(Visit).values(page=page, hits=1)
               .on_conflict_do_update(index_elements=[Visit.page], set_={"hits": Visit.hits + 1})
               .returning(Visit.hits))
"""
VISITS_RIGHT = {
    "the solution: an upsert with RETURNING": "async def count_visit(session, page):" + UPSERT + """
    hits = (await session.execute(add_one)).scalar_one()
    await session.commit()
    return hits
""",
    "raw SQL through text()": """
from sqlalchemy import text
async def count_visit(session, page):
    row = await session.execute(text(
        "INSERT INTO visits (page, hits) VALUES (:page, 1) "
        "ON CONFLICT (page) DO UPDATE SET hits = hits + 1 RETURNING hits"), {"page": page})
    hits = row.scalar_one()
    await session.commit()
    return hits
""",
    "UPDATE ... RETURNING, the row made first": """
async def count_visit(session, page):
    await session.execute(insert(Visit).values(page=page, hits=0).on_conflict_do_nothing())
    hits = (await session.execute(update(Visit).where(Visit.page == page)
                                  .values(hits=Visit.hits + 1).returning(Visit.hits))).scalar_one()
    await session.commit()
    return hits
""",
    # Correct on SQLite: the first INSERT takes the write lock, so the read and the write that follow
    # in the same transaction cannot interleave with another writer's.
    "write lock taken first, then read and write": """
async def count_visit(session, page):
    await session.execute(insert(Visit).values(page=page, hits=0).on_conflict_do_nothing())
    hits = (await session.execute(select(Visit.hits).where(Visit.page == page))).scalar_one()
    await session.execute(update(Visit).where(Visit.page == page).values(hits=hits + 1))
    await session.commit()
    return hits + 1
""",
}
READ_THEN_WRITE = """
    hits = (await session.execute(select(Visit.hits).where(Visit.page == page))).scalar()
    if hits is None:
        await session.execute(insert(Visit).values(page=page, hits=0).on_conflict_do_nothing())
        await session.commit()
        hits = 0
    await session.execute(update(Visit).where(Visit.page == page).values(hits=hits + 1))
    await session.commit()
    return hits + 1
"""
IN_DB, COUNTS, ALL_200 = ("the count is in the database, committed", "a new page counts 1, its next visit 2",
                          "40 visits at once, on two workers, answer 200")
LOST, OWN = "no visit is lost: the database counts every one", "each visit answers its own count, 1 to 40 once each"
VISITS_WRONG = {
    "a module-level dict": ("""
hits_by_page = {}
async def count_visit(session, page):
    hits_by_page[page] = hits_by_page.get(page, 0) + 1
    return hits_by_page[page]
""", IN_DB, "lives in the process"),
    "a dict behind an asyncio.Lock": ("""
hits_by_page, lock = {}, asyncio.Lock()
async def count_visit(session, page):
    async with lock:
        hits_by_page[page] = hits_by_page.get(page, 0) + 1
        return hits_by_page[page]
""", IN_DB, "lives in the process"),
    "read, then write": ("async def count_visit(session, page):" + READ_THEN_WRITE, LOST, "one statement"),
    "read, then write, behind an asyncio.Lock": ("""
lock = asyncio.Lock()
async def count_visit(session, page):
    async with lock:""" + textwrap.indent(READ_THEN_WRITE, "    "), LOST, "both wrote it plus one"),
    "read, then write, behind a threading.Lock": ("""
import threading
lock = threading.Lock()
async def count_visit(session, page):
    with lock:""" + textwrap.indent(READ_THEN_WRITE, "    "), ALL_200, "threading.Lock"),
    "the ORM object's += 1": ("""
async def count_visit(session, page):
    visit = await session.get(Visit, page)
    if visit is None:
        visit = Visit(page=page, hits=0)
        session.add(visit)
    visit.hits += 1
    await session.commit()
    return visit.hits
""", ALL_200, "UNIQUE"),
    "never committed": ("async def count_visit(session, page):" + UPSERT + """
    return (await session.execute(add_one)).scalar_one()
""", IN_DB, "commit"),
    "read back after the commit": ("async def count_visit(session, page):" + UPSERT.replace(".returning(Visit.hits)", "") + """
    await session.execute(add_one)
    await session.commit()
    return (await session.execute(select(Visit.hits).where(Visit.page == page))).scalar_one()
""", OWN, "RETURNING"),
    "UPDATE only: a new page has no row": ("""
async def count_visit(session, page):
    hits = (await session.execute(update(Visit).where(Visit.page == page)
                                  .values(hits=Visit.hits + 1).returning(Visit.hits))).scalar_one()
    await session.commit()
    return hits
""", "a visit answers 200 with the page's count", "NoResultFound"),
    "the count before this visit": ("async def count_visit(session, page):" + UPSERT + """
    hits = (await session.execute(add_one)).scalar_one()
    await session.commit()
    return hits - 1
""", COUNTS, "after this visit"),
    "the stub": ("""
async def count_visit(session, page):
    raise NotImplementedError("count one visit of the page")
""", "a visit answers 200 with the page's count", "not written yet"),
}


@pytest.mark.parametrize("name", VISITS_RIGHT)
async def test_visits_right(name):
    (count_visit,) = build(VISITS_RIGHT[name], "count_visit")
    report = await check_visits.report(count_visit)
    assert report.passed, failure_text(report)


@pytest.mark.parametrize("name", VISITS_WRONG)
async def test_visits_wrong(name):
    source, item, hint = VISITS_WRONG[name]
    (count_visit,) = build(source, "count_visit")
    report = await check_visits.report(count_visit)
    assert_feedback_rules(report)
    assert names(report)[0] == item, failure_text(report)
    assert hint in report.failures[0].hint + report.failures[0].observed, failure_text(report)


# ---- exercise 3: settings and routers -------------------------------------------------------------

SETTINGS = """
class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_")
    api_key: SecretStr
    environment: Literal["development", "production"] = "production"
"""
CREATE = """
def create_app(settings):
    docs = settings.environment == "development"
    app = FastAPI(docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.settings = settings
    app.include_router(orders, prefix="/orders", tags=["orders"], dependencies=[Depends(require_api_key)])
    app.include_router(probes)
    return app
"""
SETTINGS_RIGHT = {
    "the solution": SETTINGS + CREATE,
    "a plain str environment, docs unless production": """
from pydantic import Field
class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="shop_", case_sensitive=False)
    api_key: SecretStr = Field(min_length=8)
    environment: str = "production"

def create_app(settings):
    production = settings.environment == "production"
    off = {"docs_url": None, "redoc_url": None, "openapi_url": None} if production else {}
    app = FastAPI(**off)
    app.state.settings = settings
    app.include_router(probes)
    app.include_router(orders, prefix="/orders", tags=["orders"], dependencies=[Depends(require_api_key)])
    return app
""",
    "a parent router carries the key": SETTINGS + """
def create_app(settings):
    docs = settings.environment != "production"
    app = FastAPI(openapi_url="/openapi.json" if docs else None)
    app.state.settings = settings
    protected = APIRouter(dependencies=[Depends(require_api_key)])
    protected.include_router(orders, prefix="/orders", tags=["orders"])
    app.include_router(protected)
    app.include_router(probes)
    return app
""",
}
SETTINGS_WRONG = {
    "the key as a plain str": (SETTINGS.replace("api_key: SecretStr", "api_key: str") + CREATE.replace(
        "settings.environment ==", "settings.environment ==").replace("app.state.settings = settings",
        "app.state.settings = settings.model_copy(update={'api_key': SecretStr(settings.api_key)})"),
        "the key never shows in a log or a traceback", "SecretStr"),
    "a default key": (SETTINGS.replace("api_key: SecretStr", "api_key: SecretStr = SecretStr('dev-key')") + CREATE,
                      "a missing SHOP_API_KEY stops the app at startup", "default"),
    "no prefix": (SETTINGS.replace('model_config = SettingsConfigDict(env_prefix="SHOP_")', "pass") + CREATE,
                  "Settings() reads SHOP_API_KEY and SHOP_ENVIRONMENT", "SHOP_"),
    "docs left on": (SETTINGS + CREATE.replace("docs = settings.environment == \"development\"", "docs = True"),
                     "docs off in production", "openapi_url"),
    "only /docs turned off": (SETTINGS + CREATE.replace('openapi_url="/openapi.json" if docs else None', 'openapi_url="/openapi.json"')
                              .replace('redoc_url="/redoc" if docs else None', 'redoc_url="/redoc"'),
                              "docs off in production", "schema"),
    "the toggle inverted": (SETTINGS + CREATE.replace('== "development"', '== "production"'),
                            "docs off in production", "None"),
    "the key check forgotten": (SETTINGS + CREATE.replace(', dependencies=[Depends(require_api_key)]', ''),
                                "/orders/{id} needs the API key", "dependency"),
    "no prefix on the router": (SETTINGS + CREATE.replace('prefix="/orders", ', ''),
                                "the orders are documented under one tag", "prefix"),
    "the key on the whole app": (SETTINGS + CREATE.replace(', dependencies=[Depends(require_api_key)]', '')
                                 .replace("openapi_url=\"/openapi.json\" if docs else None)",
                                          "openapi_url=\"/openapi.json\" if docs else None, dependencies=[Depends(require_api_key)])"),
                                 "/health and /ready answer without a key", "Probes"),
    "no tag": (SETTINGS + CREATE.replace('tags=["orders"], ', ''), "the orders are documented under one tag", "tag"),
    "settings not kept on the app": (SETTINGS + CREATE.replace("app.state.settings = settings", "pass"),
                                     "/orders/{id} needs the API key", "dependency"),
}


@pytest.mark.parametrize("name", SETTINGS_RIGHT)
async def test_settings_right(name):
    settings, create_app = build(SETTINGS_RIGHT[name], "Settings", "create_app")
    report = await check_settings.report(settings, create_app)
    assert report.passed, failure_text(report)


@pytest.mark.parametrize("name", SETTINGS_WRONG)
async def test_settings_wrong(name):
    source, item, hint = SETTINGS_WRONG[name]
    settings, create_app = build(source, "Settings", "create_app")
    report = await check_settings.report(settings, create_app)
    assert_feedback_rules(report)
    assert item in names(report), failure_text(report)
    failed = next(i for i in report.failures if i.name == item)
    assert hint in failed.hint, failure_text(report)


def test_the_check_restores_the_environment(monkeypatch):
    import asyncio
    monkeypatch.setenv("SHOP_API_KEY", "mine")
    settings, create_app = build(SETTINGS + CREATE, "Settings", "create_app")
    asyncio.run(check_settings.report(settings, create_app))
    import os
    assert os.environ["SHOP_API_KEY"] == "mine" and "SHOP_ENVIRONMENT" not in os.environ


# ---- the servers: every process ends -------------------------------------------------------------

async def test_workers_are_stopped_with_their_server():
    async with ServerProcess("--workers", "2") as server:
        assert len(leftover_servers()) >= 3  # the supervisor and its two workers
        await server.stop(graceful=False)
    assert leftover_servers() == []


async def test_a_server_left_by_an_error_is_killed():
    with pytest.raises(RuntimeError):
        async with ServerProcess():
            raise RuntimeError("the learner's code failed")
    assert leftover_servers() == []


def test_only_this_process_servers_are_counted():
    """A notebook's kernel running lesson 13 next to the tests (CI's other worker) is not a leak here."""
    import os
    import subprocess
    import sys

    from checks.lesson13.world import MARKER, _mark

    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    ours = subprocess.Popen(sleeper, env=dict(os.environ, **{MARKER: _mark(os.getpid())}))
    theirs = subprocess.Popen(sleeper, env=dict(os.environ, **{MARKER: _mark(os.getpid() + 100_000)}))
    try:
        assert leftover_servers() == [ours.pid]
    finally:
        for process in (ours, theirs):
            process.kill()
            process.wait()
