"""Lesson 12's checks: mutation testing of the learner's test classes. Right suites pass; weak
suites let planted bugs escape and are told which; suites that fail on the right app, hang, leak
state or overrides from one test into the next are told apart.

Each answer is a test class run in the lesson's imports, as a learner's cell is. The references
are the solution's own cells; they also pass under real pytest (the last test).
"""

import json
import textwrap
from pathlib import Path

import pytest
from conftest import assert_feedback_rules, names

from checks.lesson12 import check_isolated_tests, check_todo_tests

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
CELLS = ["".join(c["source"]) for c in json.loads((ROOT / "solutions" / "12_testing.ipynb").read_text())["cells"]]
REFERENCE_TODOS = next(c for c in CELLS if c.startswith("class TestTodos"))
REFERENCE_ISOLATED = next(c for c in CELLS if c.startswith("class TestIsolated"))
HEAD = """
import asyncio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool
from checks.lesson12 import create_tables, current_user, dev_database_url, get_session, todo_app
ALICE = {"Authorization": "Bearer alice-token"}
main_app = todo_app(dev_database_url())
"""
CLIENT = """
    @pytest.fixture
    async def client(self, app):
        async with LifespanManager(app) as manager:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c:
                yield c
"""


def suite(source: str, name: str):
    namespace = {"__name__": "lesson12_answer"}
    exec(compile(HEAD + textwrap.dedent(source).replace("{CLIENT}", CLIENT), "<answer>", "exec"), namespace)
    return namespace[name]


def todos(body: str, client: str = CLIENT, mark: str = "pytestmark = pytest.mark.anyio") -> str:
    return f"class TestTodos:\n    {mark}\n{client}\n{textwrap.indent(textwrap.dedent(body), '    ')}"


CREATE = """
async def test_create(self, client):
    r = await client.post("/todos", json={"title": "a"}, headers=ALICE)
    assert r.status_code == 201 and r.json()["title"] == "a"
"""
READ_BACK = """
async def test_read_back(self, client):
    made = (await client.post("/todos", json={"title": "b"}, headers=ALICE)).json()
    assert (await client.get(f"/todos/{made['id']}", headers=ALICE)).json() == made
"""
MISSING = """
async def test_missing(self, client):
    assert (await client.get("/todos/424242", headers=ALICE)).status_code == 404
"""
REFUSED = """
async def test_refused(self, client):
    assert (await client.post("/todos", json={"title": ""}, headers=ALICE)).status_code == 422
    assert (await client.get("/todos")).status_code == 401
"""
ALL = CREATE + READ_BACK + MISSING + REFUSED

TODOS_RIGHT = {
    "the reference": REFERENCE_TODOS,
    "one async with for both, tests in another order": todos(REFUSED + MISSING + READ_BACK + CREATE, client="""
    @pytest.fixture
    async def client(self, app):
        async with LifespanManager(app) as manager, httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as c:
            yield c
"""),
    "marks on each test, list read back, a helper method": """
        class TestTodos:
            {CLIENT}
            async def create(self, client, title):
                return await client.post("/todos", json={"title": title}, headers=ALICE)

            @pytest.mark.anyio
            async def test_create_and_list(self, client):
                r = await self.create(client, "x")
                assert r.status_code == 201
                listed = (await client.get("/todos", headers=ALICE)).json()
                assert r.json() in listed

            @pytest.mark.anyio
            async def test_errors(self, client):
                assert (await client.get("/todos/999999", headers=ALICE)).status_code == 404
                assert (await self.create(client, "")).status_code == 422
                assert (await client.get("/todos", headers={"Authorization": "Bearer nope"})).status_code == 401
    """,
}

# name: (answer, the failed item, a word of its observed text or hint)
TODOS_WRONG = {
    "AsyncClient(app=app), the guides' fixture": (todos(ALL, client="""
    @pytest.fixture
    async def client(self, app):
        async with httpx.AsyncClient(app=app, base_url="http://t") as c:
            yield c
"""), "every test passes on the right app", "ASGITransport"),
    "ASGITransport without the lifespan": (todos(ALL, client="""
    @pytest.fixture
    async def client(self, app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield c
"""), "every test passes on the right app", "LifespanManager"),
    "the project's app, not the fixture": (todos(ALL, client=CLIENT.replace("(self, app)", "(self)").replace(
        "LifespanManager(app)", "LifespanManager(main_app)")), "your tests use the `app` fixture", "app"),
    "no anyio mark": (todos(ALL, mark="pass"), "pytest can run the async tests", "anyio"),
    "a status below 500 is enough": (todos(CREATE.replace("== 201", "< 300") + READ_BACK + MISSING + REFUSED),
                                     "catches the bug: POST /todos answers 200 instead of 201 Created", "201"),
    "the create is never read back": (todos(CREATE + MISSING + REFUSED), "catches the bug: POST /todos answers 201 "
                                      "with the todo but never commits it: it is gone afterwards", "later request"),
    "no test without a token": (todos(CREATE + READ_BACK + MISSING + REFUSED.replace(
        'assert (await client.get("/todos")).status_code == 401', "")),
        "catches the bug: a request without a token is served as alice instead of refused", "401"),
    "a missing todo may be 200": (todos(CREATE + READ_BACK + REFUSED + MISSING.replace("== 404", "in (200, 404)")),
                                  "catches the bug: GET /todos/{id} for a todo that does not exist answers 200 with `null`",
                                  "404"),
    "validation never tried": (todos(CREATE + READ_BACK + MISSING + REFUSED.replace(
        'assert (await client.post("/todos", json={"title": ""}, headers=ALICE)).status_code == 422', "")),
        "catches the bug: POST /todos accepts an empty title", "422"),
    "counts rows in the shared database": (todos(ALL + """
async def test_count(self, client):
    await client.post("/todos", json={"title": "c"}, headers=ALICE)
    assert len((await client.get("/todos", headers=ALICE)).json()) == 2
"""), "each test passes whatever ran before it", "left behind"),
    "expects 200 for a create": (todos(CREATE.replace("== 201", "== 200") + READ_BACK),
                                 "every test passes on the right app", "print the response"),
    "a test that waits forever": (todos(CREATE + """
async def test_waits(self, client):
    await asyncio.Event().wait()
"""), "every test passes on the right app", "never ends"),
    "parametrized cases": (todos(ALL + """
@pytest.mark.parametrize("title", ["", "x" * 101])
async def test_bad_titles(self, client, title):
    assert (await client.post("/todos", json={"title": title}, headers=ALICE)).status_code == 422
"""), "the check can run every test", "parametrize"),
}


@pytest.mark.parametrize("answer", TODOS_RIGHT.values(), ids=TODOS_RIGHT.keys())
async def test_todo_tests_right(answer):
    report = await check_todo_tests.report(suite(answer, "TestTodos"))
    assert report.passed, report.text()


@pytest.mark.parametrize("answer, item, word", TODOS_WRONG.values(), ids=TODOS_WRONG.keys())
async def test_todo_tests_wrong(answer, item, word):
    report = await check_todo_tests.report(suite(answer, "TestTodos"))
    assert item in names(report), report.text()
    failed = next(i for i in report.failures if i.name == item)
    assert word in failed.observed + failed.hint, report.text()
    assert_feedback_rules(report)


def test_the_counting_suite_passes_once_and_fails_in_reverse():
    # told apart from a suite that is simply wrong: its first run passed
    import asyncio
    counting = todos("""
async def test_count(self, client):
    await client.post("/todos", json={"title": "c"}, headers=ALICE)
    assert len((await client.get("/todos", headers=ALICE)).json()) == 2
""" + ALL)
    report = asyncio.run(check_todo_tests.report(suite(counting, "TestTodos")))
    assert "every test passes on the right app" not in names(report)
    assert "the tests pass again, in reverse order" in names(report)


# ---- exercise 2 --------------------------------------------------------------------------------------

ISOLATED_CLIENT = """
    @pytest.fixture
    async def client(self, app):
        engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)
        await create_tables(engine)
        sessions = async_sessionmaker(engine, expire_on_commit=False)

        async def one_per_request():
            async with sessions() as session:
                yield session

        app.dependency_overrides[get_session] = one_per_request
        app.dependency_overrides[current_user] = lambda: "alice"
        async with LifespanManager(app) as manager:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c:
                yield c
        app.dependency_overrides.clear()
        await engine.dispose()
"""
LISTED = """
async def test_listed(self, client):
    a = (await client.post("/todos", json={"title": "a"})).json()
    b = (await client.post("/todos", json={"title": "b"})).json()
    assert (await client.get("/todos")).json() == [a, b]
"""
OWN = """
async def test_own(self, app, client):
    made = (await client.post("/todos", json={"title": "mine"})).json()
    app.dependency_overrides[current_user] = lambda: "bob"
    assert (await client.get("/todos")).json() == []
    assert (await client.get(f"/todos/{made['id']}")).status_code == 404
"""


def isolated(body: str, client: str = ISOLATED_CLIENT) -> str:
    return f"class TestIsolated:\n    pytestmark = pytest.mark.anyio\n{client}\n{textwrap.indent(textwrap.dedent(body), '    ')}"


ISOLATED_RIGHT = {
    "the reference": REFERENCE_ISOLATED,
    "clear() after the yield, tests in another order": isolated(OWN + LISTED),
    "a database file in tmp_path, overrides by monkeypatch": isolated(LISTED + OWN, client="""
    @pytest.fixture
    async def client(self, app, tmp_path, monkeypatch):
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
        await create_tables(engine)
        sessions = async_sessionmaker(engine, expire_on_commit=False)

        async def one_per_request():
            async with sessions() as session:
                yield session

        monkeypatch.setitem(app.dependency_overrides, get_session, one_per_request)
        monkeypatch.setitem(app.dependency_overrides, current_user, lambda: "alice")
        async with LifespanManager(app) as manager:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c:
                yield c
        await engine.dispose()
"""),
}

SHARED = ISOLATED_CLIENT.replace("app.dependency_overrides[get_session] = one_per_request",
                                 "shared = sessions()\n        app.dependency_overrides[get_session] = lambda: shared")
ISOLATED_WRONG = {
    "one session shared by every request (the guides')": (
        isolated(LISTED + OWN, client=SHARED), "catches the bug: POST /todos answers 201 with the todo but never "
        "commits it: it is gone afterwards", "session of its own"),
    "overrides never undone": (isolated(LISTED + OWN, client=ISOLATED_CLIENT.replace("app.dependency_overrides.clear()", "")),
                               "no test leaves `app.dependency_overrides` changed", "get_session"),
    "the app's own database, as a new user": (
        isolated(LISTED + OWN, client=ISOLATED_CLIENT.replace(
            "app.dependency_overrides[get_session] = one_per_request", "").replace('lambda: "alice"', 'lambda: "carol"')),
        "the tests leave the app's own database alone", "StaticPool"),
    "one engine for every test": (
        "shared_engine = create_async_engine('sqlite+aiosqlite://', poolclass=StaticPool)\n" + isolated(LISTED + OWN,
            client=ISOLATED_CLIENT.replace('engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)',
                                           "engine = shared_engine").replace("await engine.dispose()", "")),
        "the tests pass again, in reverse order", "fresh start"),
    "in memory with NullPool: a new empty database per connection": (isolated(LISTED + OWN, client=ISOLATED_CLIENT.replace(
        "poolclass=StaticPool", "poolclass=__import__('sqlalchemy.pool').pool.NullPool")),
                                     "every test passes on the right app", "print the response"),
    "never switches the user": (isolated(LISTED), "catches the bug: GET /todos lists every user's todos, not only "
                                "the caller's", "switch the user"),
    "another user only reads by id": (isolated(LISTED + OWN.replace(
        'assert (await client.get("/todos")).json() == []', "")),
        "catches the bug: GET /todos lists every user's todos, not only the caller's", "list is empty"),
    "only statuses": (isolated(OWN + """
async def test_listed(self, client):
    await client.post("/todos", json={"title": "a"})
    assert (await client.get("/todos")).status_code == 200
"""), "catches the bug: POST /todos answers 201 with the todo but never commits it: it is gone afterwards",
        "later request"),
    "AsyncClient(app=app)": (isolated(LISTED, client=ISOLATED_CLIENT.replace(
        "transport=httpx.ASGITransport(app=manager.app)", "app=manager.app")),
        "every test passes on the right app", "ASGITransport"),
}


@pytest.mark.parametrize("answer", ISOLATED_RIGHT.values(), ids=ISOLATED_RIGHT.keys())
async def test_isolated_tests_right(answer):
    report = await check_isolated_tests.report(suite(answer, "TestIsolated"))
    assert report.passed, report.text()


@pytest.mark.parametrize("answer, item, word", ISOLATED_WRONG.values(), ids=ISOLATED_WRONG.keys())
async def test_isolated_tests_wrong(answer, item, word):
    report = await check_isolated_tests.report(suite(answer, "TestIsolated"))
    assert item in names(report), report.text()
    failed = next(i for i in report.failures if i.name == item)
    assert word in failed.observed + failed.hint, report.text()
    assert_feedback_rules(report)


async def test_the_check_leaves_no_threads_tasks_or_files(tmp_path):
    import asyncio
    import tempfile
    import threading
    before = set(Path(tempfile.gettempdir()).glob("course-lesson12-[ct][he][es]*-*"))
    threads, tasks = set(threading.enumerate()), asyncio.all_tasks()
    # (A sync override such as `lambda: "alice"` runs in FastAPI's thread pool, whose idle threads
    # linger by design: exercise 1's suites, which have none, are used here.)
    assert (await check_todo_tests.report(suite(REFERENCE_TODOS, "TestTodos"))).passed
    report = await check_todo_tests.report(suite(TODOS_WRONG["a test that waits forever"][0], "TestTodos"))
    assert not report.passed
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - tasks == set()
    assert set(threading.enumerate()) - threads == set()
    assert set(Path(tempfile.gettempdir()).glob("course-lesson12-[ct][he][es]*-*")) - before == set()


def test_the_references_pass_under_real_pytest(tmp_path):
    """What the learner runs with ipytest: the same classes, collected and run by pytest itself."""
    (tmp_path / "conftest.py").write_text("import pytest\nfrom checks.lesson12 import todo_app, dev_database_url\n"
                                          "main_app = todo_app(dev_database_url())\n\n@pytest.fixture\ndef app():\n"
                                          "    return main_app\n")
    (tmp_path / "test_reference.py").write_text(HEAD + REFERENCE_TODOS + "\n\n" + REFERENCE_ISOLATED)
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--disable-plugin-autoload",
                           "-p", "anyio", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "6 passed" in done.stdout
