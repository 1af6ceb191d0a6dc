"""Lesson 12's checks: mutation testing of the learner's own tests.

A check takes a test class (`TestTodos`), runs its tests against the right todo app (every test
must pass, twice: in order, then in reverse on the same app, with `app.dependency_overrides` empty
after each test), then against apps with one planted bug each: a bug is caught when at least one
test fails on it. The report names each bug that escaped by what it does.

The tests run here, on the notebook's event loop under the check's time limit, not through
pytest in a thread (which the watchdog could not stop): fixtures are resolved by name as pytest
does (the class's own, then the module's; `app`, `anyio_backend`, `tmp_path` and `monkeypatch`
come from the check), function scope, each test bounded by TEST_LIMIT_S.
"""

import asyncio
import inspect
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

import pytest

from ..harness import describe_exception
from ..runner import check
from .world import TodoRow, todo_app

TEST_LIMIT_S = 3.0  # one test, setup and teardown included (they take milliseconds)
PROVIDED = ("app", "anyio_backend", "tmp_path", "monkeypatch")

# Each planted bug: what it does, in the learner's terms, and what kind of test would see it.
BUGS = {
    "created is 200": ("POST /todos answers 200 instead of 201 Created",
                       "Assert the exact status of a create: `assert response.status_code == 201`."),
    "validation dropped": ("POST /todos accepts an empty title",
                           "Send an invalid todo (an empty title) and assert the 422."),
    "missing is null": ("GET /todos/{id} for a todo that does not exist answers 200 with `null`",
                        "Ask for an id that does not exist and assert the 404."),
    "auth skipped": ("a request without a token is served as alice instead of refused",
                     "Send a request with no `Authorization` header and assert the 401."),
    "no commit": ("POST /todos answers 201 with the todo but never commits it: it is gone afterwards",
                  "Read the todo back in a later request (GET /todos/{id} or the list) and compare it "
                  "with what the create returned: each request must get a session of its own."),
    "everyone's list": ("GET /todos lists every user's todos, not only the caller's",
                        "Create a todo as one user, switch the user (override `current_user` again) and "
                        "assert the other user's list is empty."),
    "anyone reads": ("GET /todos/{id} shows a todo to a user who does not own it",
                     "Create a todo as one user, then read it by id as another user and assert the 404."),
    "own session": ("GET /todos reads through a session of its own, not `get_session`: it lists the "
                    "app's own database, not the test's",
                    "Create todos through the app, then assert the list holds exactly them: with a fresh "
                    "database per test you know exactly what it must hold."),
}


@dataclass
class Outcome:
    name: str
    passed: bool = True
    error: str = ""
    hung: bool = False
    used_app: bool = False
    overrides_left: list[str] = field(default_factory=list)


@dataclass
class Suite:
    cls: type
    tests: list[str]
    class_fixtures: dict[str, object]
    module_fixtures: dict[str, object]
    problems: list[str] = field(default_factory=list)
    parametrized: list[str] = field(default_factory=list)


def _is_fixture(value) -> bool:
    return hasattr(value, "_fixture_function_marker") and hasattr(value, "_get_wrapped_function")


def _fixture_name(attr: str, value) -> str:
    return getattr(value._fixture_function_marker, "name", None) or attr


def _marked_anyio(*objects) -> bool:
    for obj in objects:
        marks = getattr(obj, "pytestmark", [])
        marks = marks if isinstance(marks, list) else [marks]
        if any(getattr(mark, "name", None) == "anyio" for mark in marks):
            return True
    return False


def collect(cls) -> Suite:
    """The tests and fixtures of a test class, as pytest would collect them."""
    if not isinstance(cls, type):
        raise TypeError(f"give the check your test class (TestTodos), not {type(cls).__name__}")
    class_fixtures, tests = {}, []
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if _is_fixture(value):
                class_fixtures[_fixture_name(attr, value)] = value
            elif attr.startswith("test") and callable(value) and attr not in tests:
                tests.append(attr)
    module = sys.modules.get(cls.__module__)
    module_fixtures = {}
    for attr, value in list(vars(module).items()) if module else []:
        if _is_fixture(value):
            module_fixtures[_fixture_name(attr, value)] = value
    suite = Suite(cls, tests, class_fixtures, module_fixtures)
    for name in tests:
        function = getattr(cls, name)
        marks = getattr(function, "pytestmark", [])
        if any(getattr(mark, "name", None) == "parametrize" for mark in marks):
            suite.parametrized.append(name)
        if inspect.iscoroutinefunction(function) and not _marked_anyio(function, cls):
            suite.problems.append(name)
    return suite


class _Run:
    """One test: its fixtures set up by name, the test called, the fixtures torn down."""

    def __init__(self, suite: Suite, name: str, app, provided: dict | None = None):
        self.suite, self.name, self.app = suite, name, app
        self.provided = provided or {}  # more fixtures the check gives (lesson 14: the shop)
        self.instance = suite.cls()
        self.values: dict[str, object] = {}
        self.teardowns: list = []
        self.outcome = Outcome(name)

    async def value(self, name: str, chain: tuple[str, ...] = ()):
        if name in self.values:
            return self.values[name]
        if name in chain:
            raise RuntimeError(f"fixture {name!r} depends on itself")
        if name == "app":
            self.outcome.used_app = True
            value = self.app
        elif name in self.provided:
            value = self.provided[name]
        elif name == "anyio_backend":
            value = "asyncio"
        elif name == "tmp_path":
            from pathlib import Path
            folder = tempfile.mkdtemp(prefix="course-lesson12-test-")
            self.teardowns.append(("sync", lambda: shutil.rmtree(folder, ignore_errors=True)))
            value = Path(folder)
        elif name == "monkeypatch":
            value = pytest.MonkeyPatch()
            self.teardowns.append(("sync", value.undo))
        elif name in self.suite.class_fixtures:
            function = self.suite.class_fixtures[name]._get_wrapped_function()
            value = await self._call(function.__get__(self.instance), chain + (name,))
        elif name in self.suite.module_fixtures:
            value = await self._call(self.suite.module_fixtures[name]._get_wrapped_function(), chain + (name,))
        else:
            raise LookupError(f"fixture {name!r} not found (define it in your class; the check also gives "
                              f"{', '.join(PROVIDED)})")
        self.values[name] = value
        return value

    async def _arguments(self, function, chain) -> dict:
        return {p: await self.value(p, chain) for p in inspect.signature(function).parameters}

    async def _call(self, function, chain):
        kwargs = await self._arguments(function, chain)
        if inspect.isasyncgenfunction(function):
            generator = function(**kwargs)
            value = await generator.__anext__()
            self.teardowns.append(("async", generator))
            return value
        if inspect.isgeneratorfunction(function):
            generator = function(**kwargs)
            value = next(generator)
            self.teardowns.append(("sync-gen", generator))
            return value
        value = function(**kwargs)
        return await value if inspect.isawaitable(value) else value

    async def teardown(self) -> None:
        while self.teardowns:
            kind, thing = self.teardowns.pop()
            if kind == "sync":
                thing()
            elif kind == "sync-gen":
                next(thing, None)
            else:
                try:
                    await thing.__anext__()
                except StopAsyncIteration:
                    pass
                else:
                    raise RuntimeError("an async fixture yielded twice")

    async def close_after_timeout(self) -> None:
        """Shut what the test opened when it hung: fixtures get their teardown, bounded too."""
        try:
            async with asyncio.timeout(TEST_LIMIT_S):
                await self.teardown()
        except (Exception, asyncio.CancelledError):
            for kind, thing in self.teardowns:
                if kind == "async":
                    try:
                        await thing.aclose()
                    except Exception:
                        pass
            self.teardowns.clear()

    async def run(self) -> Outcome:
        try:
            async with asyncio.timeout(TEST_LIMIT_S):
                try:
                    test = getattr(self.instance, self.name)
                    result = test(**await self._arguments(test, ()))
                    if inspect.isawaitable(result):
                        await result
                finally:
                    await self.teardown()
        except TimeoutError:
            self.outcome.passed, self.outcome.hung = False, True
            self.outcome.error = f"still running after {TEST_LIMIT_S:g} s"
            await self.close_after_timeout()
        except Exception as exc:
            self.outcome.passed, self.outcome.error = False, describe_exception(exc)
        return self.outcome


async def run_tests(suite: Suite, app, order: list[str], *, stop_at_failure: bool = False,
                    provided: dict | None = None) -> list[Outcome]:
    outcomes = []
    for name in order:
        before = dict(app.dependency_overrides)
        outcome = await _Run(suite, name, app, provided).run()
        left = {key: value for key, value in app.dependency_overrides.items() if before.get(key) is not value}
        if left:
            outcome.error = outcome.error or "overrides left: " + ", ".join(getattr(k, "__name__", str(k)) for k in left)
            outcome.overrides_left = sorted(getattr(k, "__name__", str(k)) for k in left)
            app.dependency_overrides.clear()
            app.dependency_overrides.update(before)
        outcomes.append(outcome)
        if stop_at_failure and not outcome.passed:
            break
    return outcomes


def _tests(n: int) -> str:
    return f"{n} test{'s' if n != 1 else ''}"


def _listing(outcomes: list[Outcome], limit: int = 2) -> str:
    """The failed tests, grouped by error: `test_a, test_b: NotImplementedError ...`."""
    by_error: dict[str, list[str]] = {}
    for outcome in outcomes:
        if not outcome.passed:
            by_error.setdefault(outcome.error, []).append(outcome.name)
    parts = [f"{', '.join(names)}: {error}" for error, names in list(by_error.items())[:limit]]
    more = sum(len(names) for names in list(by_error.values())[limit:])
    return "; ".join(parts) + (f"; and {_tests(more)} more" if more else "")


def _dev_rows(path: str) -> int:
    import sqlite3
    connection = sqlite3.connect(path)
    try:
        return connection.execute(f"SELECT count(*) FROM {TodoRow.__tablename__}").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        connection.close()


async def judge_suite(report, cls, bugs: list[str], *, must_isolate: bool) -> None:
    suite = collect(cls)
    if not suite.tests:
        report.fail("your class has tests", observed=f"no method named test... in {cls.__name__}",
                    expected="methods such as `async def test_create(self, client)`",
                    hint="pytest collects the methods of a `Test...` class whose names start with `test`.")
        return
    if suite.problems:
        report.fail("pytest can run the async tests", observed=f"not marked for anyio: {', '.join(suite.problems)}",
                    expected="`pytestmark = pytest.mark.anyio` in the class (or the mark on each test)",
                    hint="pytest cannot run `async def` tests by itself: the anyio plugin runs the ones "
                         "marked `anyio`.")
        return
    if suite.parametrized:
        report.fail("the check can run every test", observed=f"parametrized: {', '.join(suite.parametrized)}",
                    expected="plain tests (the check runs each test once, with its fixtures)",
                    hint="This check does not expand `pytest.mark.parametrize`: write the cases as separate "
                         "tests, or as a loop inside one test.")
        return
    folder = tempfile.mkdtemp(prefix="course-lesson12-check-")
    try:
        await _judge(report, suite, bugs, folder, must_isolate)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _judge(report, suite: Suite, bugs: list[str], folder: str, must_isolate: bool) -> None:
    def url(name: str) -> str:
        return f"sqlite+aiosqlite:///{os.path.join(folder, name + '.db')}"

    right = todo_app(url("right"))
    first = await run_tests(suite, right, list(suite.tests))
    if not any(o.used_app for o in first):
        report.fail("your tests use the `app` fixture", observed="no fixture or test asked for `app`",
                    expected="the client fixture takes `app` and serves it",
                    hint="Take the app from the `app` fixture (a parameter named `app`): then the same tests "
                         "can run against any app, which is how this check plants bugs.")
        return
    failed = [o for o in first if not o.passed]
    alone = [o for o in failed if all(a.passed for a in await run_tests(suite, todo_app(url("alone")), [o.name]))]
    if alone:
        report.fail("each test passes whatever ran before it",
                    observed=f"{', '.join(o.name for o in alone)}: passes alone, fails after the other tests",
                    expected="the same verdict alone and after the others",
                    hint="The test depends on what earlier tests left behind (rows in a shared database, an "
                         "override): count only what the test itself made, or give each test a fresh start.")
        return
    if not report.add("every test passes on the right app", all(o.passed for o in first),
                      observed=f"{_tests(len(first))} passed" if all(o.passed for o in first) else _listing(first),
                      expected="each test passes: the app is right",
                      hint=_right_app_hint(first)):
        return
    again = await run_tests(suite, right, list(reversed(suite.tests)))
    left = [o for o in first + again if o.overrides_left]
    report.add("no test leaves `app.dependency_overrides` changed", not left,
               observed=f"after {left[0].name}: still overridden: {', '.join(left[0].overrides_left)}" if left
               else "restored after every test",
               expected="the overrides as they were before the test",
               hint="Undo the overrides in the fixture's teardown, after the `yield` (in a `finally`), so "
                    "the next test gets the app as it is.")
    broken = [o for o in again if not o.passed and not o.overrides_left]
    report.add("the tests pass again, in reverse order", not broken,
               observed=_listing(again) if broken else f"{_tests(len(again))} passed",
               expected="the same verdicts in any order",
               hint="A test that passes alone but fails after the others depends on what they left behind "
                    "(rows in a shared database, an override): give each test a fresh start in its fixtures.")
    if must_isolate:
        rows = _dev_rows(os.path.join(folder, "right.db"))
        report.add("the tests leave the app's own database alone", rows <= 1,
                   observed=f"{rows} todo{'' if rows == 1 else 's'} in it after your tests; before them, only the welcome todo",
                   expected="only the welcome todo",
                   hint="Override `get_session` with a session on a database made for the test (in-memory "
                        "SQLite with `StaticPool`, tables created with `create_tables`).")
    if broken or left:
        return
    for bug in bugs:
        does, hint = BUGS[bug]
        outcomes = await run_tests(suite, todo_app(url(bug.replace(" ", "_").replace("'", "")), flaws=frozenset({bug})),
                                   list(suite.tests), stop_at_failure=True)
        caught = next((o for o in outcomes if not o.passed), None)
        report.add(f"catches the bug: {does}", caught is not None,
                   observed=f"{caught.name} failed on it" if caught else "every test passed on that app",
                   expected="at least one test fails", hint=hint)


def _right_app_hint(outcomes: list[Outcome]) -> str:
    errors = " ".join(o.error for o in outcomes if not o.passed)
    if any(o.hung for o in outcomes):
        return ("A test that never ends awaits something that never comes: does the client fixture `yield` "
                "inside the `async with` blocks, and does every request go to the app?")
    if "unexpected keyword argument 'app'" in errors:
        return "httpx ≥ 0.28 has no `AsyncClient(app=...)`: give it `transport=httpx.ASGITransport(app=...)`."
    if "NotImplementedError" in errors:
        return "Write the body of each fixture and test (the cells above say what each one does)."
    if "State" in errors and "sessions" in errors:
        return ("The app's lifespan never ran: `ASGITransport` does not run it. Wrap the app in "
                "`LifespanManager(app)` and give the transport `manager.app`.")
    if "not found" in errors:
        return "A fixture your test asks for does not exist in your class: check the parameter names."
    return ("The app is right, so the test expects something else: print the response (status and "
            "`response.json()`) and compare it with what you assert.")


# ---- exercise 1: a client fixture and tests of the API ---------------------------------------------

@check("Lesson 12 · your tests catch the todo API's bugs", limit_s=30)
async def check_todo_tests(report, cls):
    await judge_suite(report, cls, ["created is 200", "validation dropped", "missing is null", "auth skipped",
                                    "no commit"], must_isolate=False)


# ---- exercise 2: overrides and a database per test -------------------------------------------------

@check("Lesson 12 · isolated tests catch what only they can", limit_s=30)
async def check_isolated_tests(report, cls):
    await judge_suite(report, cls, ["no commit", "everyone's list", "anyone reads", "own session"], must_isolate=True)
