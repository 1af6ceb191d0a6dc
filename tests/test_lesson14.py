"""Lesson 14, the capstone: right services pass the contract and the load checks; services with one
broken requirement each fail, with a hint about that requirement; test classes that let a planted
bug escape are told which.

Answers are the solution notebook's own cells with one part replaced (as a learner's edit would).
"""

import json
import sys
import types
from pathlib import Path

import pytest
from conftest import assert_feedback_rules, awaits_at_top_level, failure_text, names

from checks.lesson14 import check_contract, check_tests, check_under_load, course_app, database_threads

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
with (ROOT / "solutions" / "14_capstone.ipynb").open(encoding="utf-8") as f:
    CELLS = ["".join(c["source"]) for c in json.load(f)["cells"] if c["cell_type"] == "code"
             and "check" not in c["metadata"].get("tags", [])]
DEFINING = [c for c in CELLS if not awaits_at_top_level(c) and "ipytest.run" not in c and "show_progress" not in c]


def answer(*changes: tuple[str, str], name: str = "make_app"):
    """The notebook's defining cells, each `old` replaced by `new`, run as a module; returns `name`."""
    source = "\n".join(DEFINING).replace("ipytest.autoconfig(", "dict(")
    for old, new in changes:
        old, new = old.strip("\n"), new.strip("\n")
        assert old in source, f"not in the notebook: {old!r}"
        source = source.replace(old, new)
    module = types.ModuleType(f"lesson14_answer_{abs(hash(changes))}")
    sys.modules[module.__name__] = module  # fixtures are looked up in the class's module
    exec(compile(source, "<answer>", "exec"), module.__dict__)
    return getattr(module, name)


# ---- the service: right ones ------------------------------------------------------------------

TASKGROUP = ("""
    answers = dict(zip(SERVICES, await asyncio.gather(*(ask(s) for s in SERVICES))))
""", """
    async with asyncio.TaskGroup() as group:
        tasks = {s: group.create_task(ask(s)) for s in SERVICES}
    answers = {s: t.result() for s, t in tasks.items()}
""")
WAIT = ("""
    answers = dict(zip(SERVICES, await asyncio.gather(*(ask(s) for s in SERVICES))))
""", """
    tasks = {s: asyncio.create_task(client.get(s, item)) for s in SERVICES}
    done, pending = await asyncio.wait(tasks.values(), timeout=DEADLINE_S)
    for task in pending:
        task.cancel()
    answers = {s: t.result() if t in done and not t.exception() else None for s, t in tasks.items()}
""")
RIGHT = {
    "the notebook's": lambda: answer(),
    "the course's own": lambda: course_app,
    "a TaskGroup": lambda: answer(TASKGROUP),
    "asyncio.wait and cancel": lambda: answer(WAIT),
}


@pytest.mark.parametrize("which", RIGHT)
async def test_right_services_pass(which):
    make_app, before = RIGHT[which](), database_threads()
    for check in (check_contract, check_under_load):
        report = await check.report(make_app)
        assert report.passed, failure_text(report)
    assert database_threads() <= before  # every engine disposed


# ---- the service: wrong ones, one broken requirement each ---------------------------------------

WRONG = {
    "no auth: a missing token is alice": (check_contract, "an order without a token → 401", (
        "        raise HTTPException(401, \"a valid token is required\", headers={\"WWW-Authenticate\": \"Bearer\"})\n"
        "    return TOKENS[token]", "        return \"alice\"\n    return TOKENS[token]"), "Authorization"),
    "the card number in the response": (check_contract, "the response never holds the card number", (
        "    card_last4: str\n    stock: dict | None", "    card_last4: str\n    card: str\n    stock: dict | None"),
        "response model"),
    "the card number echoed by the 422": (check_contract, "an order with a card of 15 digits: the card stays secret", (
        "{e['msg']}\" for e in exc.errors()))", "{e['msg']} {e['input']}\" for e in exc.errors()))"), "input"),
    "validation errors without the envelope": (check_contract, "an order with an empty item: the error envelope", (
        "    @app.exception_handler(RequestValidationError)", "    @app.exception_handler(KeyError)"), "RequestValidationError"),
    "one request id for the app": (check_contract, "each request without an id gets a new one", (
        "request.state.request_id = request.headers.get(\"x-request-id\") or uuid.uuid4().hex",
        "request.state.request_id = request.headers.get(\"x-request-id\") or APP_ID"), "per request"),
    "anyone reads any order": (check_contract, "bob reads alice's order → 404", (
        "if row is None or row.owner != owner:", "if row is None:"), "404"),
    "the upstream client never closed (a leak)": (check_contract, "one upstream client for the app, closed at shutdown", (
        "            await client.aclose()\n", ""), "aclose"),
    "the engine never disposed (a leak)": (check_contract, "the database engine is disposed at shutdown", (
        "            await engine.dispose()\n", ""), "dispose"),
    "a client per request": (check_contract, "one upstream client for the app, closed at shutdown", (
        "**await quotes(request.state.upstream, order.item))", "**await quotes(shop.connect(), order.item))"), "once"),
    "the deadline ignored": (check_under_load, "orders with slow shipping upstreams: missing = ['shipping']", (
        "            async with asyncio.timeout(DEADLINE_S):\n                return await client.get(service, item)",
        "            return await client.get(service, item)"), "deadline"),
    "one upstream after the other": (check_under_load, "each order asks both upstreams at once", (
        "await asyncio.gather(*(ask(s) for s in SERVICES))", "[await ask(s) for s in SERVICES]"), "gather"),
    "a failure fails the order": (check_under_load, "20 orders at once → 201 each", (
        "except (TimeoutError, UpstreamError):", "except TimeoutError:"), "share"),
    "late calls left running": (check_under_load, "a call past the deadline is cancelled, not left running", WAIT[:1] + (
        WAIT[1].replace("        task.cancel()", "        pass"),), "cancel"),
    "a blocking sleep in the route": (check_under_load, "the loop stays free", (
        "        session.add(row)\n", "        import time; time.sleep(0.001)\n        session.add(row)\n"), "await"),
    "one session shared by every request": (check_under_load, "20 orders at once → 201 each", (
        "    async with request.state.sessions() as session:\n        yield session",
        "    yield request.state.session"), "session"),
    "the e-mail lost when sent before the commit fails": (check_under_load, "one confirmation e-mail per order", (
        "tasks.add_task(shop.mailer.send, owner, row.id)", "tasks.add_task(shop.mailer.send, owner, row.id - 1)"),
        "once per order"),
    "the e-mail awaited before the answer": (check_under_load, "the client does not wait for its e-mail", (
        "tasks.add_task(shop.mailer.send, owner, row.id)", "await shop.mailer.send(owner, row.id)"), "after the response"),
}
SHARED_SESSION = ("yield {\"sessions\": async_sessionmaker(engine, expire_on_commit=False), \"upstream\": client}",
                  "yield {\"session\": AsyncSession(engine, expire_on_commit=False), \"upstream\": client}")
CARD_KEPT = [("    card_last4: Mapped[str] = mapped_column(String(4))\n",
              "    card_last4: Mapped[str] = mapped_column(String(4))\n    card: Mapped[str] = mapped_column(String(16))\n"),
             ("card_last4=order.card[-4:],", "card_last4=order.card[-4:], card=order.card,")]
EXTRA = {"the card number in the response": CARD_KEPT,"one request id for the app": [("def add_request_ids_and_errors(", "APP_ID = uuid.uuid4().hex\n\n\n"
                                         "def add_request_ids_and_errors(")],
         "one session shared by every request": [SHARED_SESSION]}


@pytest.mark.parametrize("which", WRONG)
async def test_wrong_services_fail_with_a_hint_about_their_cause(which):
    check, item, change, hint = WRONG[which]
    make_app, before = answer(change, *EXTRA.get(which, [])), database_threads()
    report = await check.report(make_app)
    assert item in names(report), failure_text(report)
    assert hint in failure_text(report), failure_text(report)
    assert_feedback_rules(report)
    # A session never closed holds its connection (and aiosqlite's thread) past dispose(): the
    # learner's leak, reported by the check; the engine left undisposed likewise.
    assert database_threads() <= before or hint in ("dispose", "session")


async def test_an_unfinished_factory_is_reported():
    report = await check_contract.report(answer(("    ### BEGIN SOLUTION\n    @asynccontextmanager",
                                                 "    raise NotImplementedError('write make_app')\n    @asynccontextmanager")))
    assert names(report) == ["make_app(shop) builds the app"]
    assert_feedback_rules(report)


# ---- your tests: mutation-checked --------------------------------------------------------------

TEST_RIGHT = {
    "the notebook's": [],
    "fewer asserts, still every bug": [("        assert response.json()[\"missing\"] == []\n", "")],
}
TEST_WRONG = {  # a weakened test class → the bug that escapes
    "no look at the card": ([(' and "4242424242424242" not in response.text', "")], "POST /orders answers the whole card number"),
    "no request without a token": ([('        assert (await client.post("/orders", json=order())).status_code == 401\n', "")],
                                   "an order without a token is taken, as alice"),
    "status only, never the envelope": ([('        assert response.json()["error"]["request_id"] == response.headers["x-request-id"]\n', "")],
                                        "errors answer FastAPI's default"),
    "no failing upstream": ([('        shop.failing.add(("stock", "pear"))\n', ""),
                             ('        assert response.json()["missing"] == ["stock"] and response.json()["shipping"] is not None\n', "")],
                            "a failing upstream turns the order into a 500"),
}


@pytest.mark.parametrize("which", TEST_RIGHT)
async def test_right_tests_catch_every_bug(which):
    report = await check_tests.report(answer(*TEST_RIGHT[which], name="TestShop"))
    assert report.passed, failure_text(report)


@pytest.mark.parametrize("which", TEST_WRONG)
async def test_weak_tests_are_told_which_bug_escaped(which):
    changes, escaped = TEST_WRONG[which]
    report = await check_tests.report(answer(*changes, name="TestShop"))
    failed = names(report)
    assert len(failed) == 1 and escaped in failed[0], failure_text(report)
    assert_feedback_rules(report)


async def test_tests_that_fail_on_the_right_service_are_told_so():
    report = await check_tests.report(answer(('assert response.json()["card_last4"] == "4242"',
                                              'assert response.json()["card_last4"] == "0000"'), name="TestShop"))
    assert names(report) == ["every test passes on the course's service"]
    assert_feedback_rules(report)


# ---- instructor-only checks: `course grade --extra-checks examples/instructor` -------------------

def test_grading_runs_the_instructors_extra_check_on_a_right_and_a_wrong_capstone(tmp_path):
    """The solution passes both; a capstone that caps items at 39 characters passes the course's
    check (random 8-letter items) and fails the instructor's boundary probe."""
    from grading import learner_copy, rows, with_cells, write

    from course.cli import main as cli

    solution = json.loads((ROOT / "solutions" / "14_capstone.ipynb").read_text(encoding="utf-8"))
    cells = {c["id"]: "".join(c["source"]) for c in solution["cells"]}
    copy = learner_copy("14_capstone")
    regions = {i: s for i, s in cells.items() if "### BEGIN SOLUTION" in s}
    right = with_cells(copy, regions)
    models = next(i for i, s in regions.items() if "class OrderIn" in s)
    off_by_one = with_cells(right, {models: regions[models].replace("max_length=40", "max_length=39")})
    write(tmp_path / "class" / "ana" / "14_capstone.ipynb", right)
    write(tmp_path / "class" / "bo" / "14_capstone.ipynb", off_by_one)
    out = tmp_path / "gradebook.csv"
    assert cli(["grade", str(tmp_path / "class"), "--out", str(out), "--extra-checks",
                str(ROOT / "examples" / "instructor"), "--jobs", "2", "--timeout", "30"]) == 0
    got = rows(out)
    ana, bo = got["ana/14_capstone.ipynb"], got["bo/14_capstone.ipynb"]
    assert [ana[c] for c in ("lesson14.check_contract", "lesson14.check_under_load", "lesson14.check_tests")] == ["passed"] * 3
    assert bo["lesson14.check_contract"] == "failed" and bo["lesson14.check_under_load"] == "passed", bo
