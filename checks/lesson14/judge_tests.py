"""Lesson 14's check of the learner's own tests: lesson 12's mutation testing, on the capstone.

The learner's test class runs against the course's own service (`world.course_app`) on a fresh
shop, twice (in order, then in reverse), and must pass; then against services with one planted
bug each, and at least one test must fail on each. Tests take the app from the `app` fixture and
the shop (to make an upstream fail, to read the e-mails sent) from the `shop` fixture.
"""

from __future__ import annotations

from ..lesson12.judge import _listing, _right_app_hint, _tests, collect, run_tests
from ..runner import check
from .world import Shop, course_app

BUGS = {
    "card leaked": ("POST /orders answers the whole card number",
                    "Assert what the order must not hold: the card number is nowhere in the response's text."),
    "auth skipped": ("an order without a token is taken, as alice",
                     "Send an order with no `Authorization` header and assert the 401."),
    "no envelope": ("errors answer FastAPI's default `{\"detail\": ...}`, not the envelope",
                    "Assert the body of an error (a 404 or a 422): `response.json()[\"error\"][\"code\"]`."),
    "failure is 500": ("a failing upstream turns the order into a 500",
                       "Make one upstream fail (`shop.failing.add((\"stock\", item))`), order that item, and "
                       "assert the 201 with `missing == [\"stock\"]`."),
}


async def judge_tests(report, cls, bugs: list[str]) -> None:
    suite = collect(cls)
    if not suite.tests or suite.problems or suite.parametrized:
        report.fail("your class has async tests pytest can run",
                    observed=(f"not marked for anyio: {', '.join(suite.problems)}" if suite.problems else
                              f"parametrized: {', '.join(suite.parametrized)}" if suite.parametrized else
                              f"no method named test... in {cls.__name__}"),
                    expected="plain `async def test_...(self, client)` methods, `pytestmark = pytest.mark.anyio`",
                    hint="pytest collects `test...` methods of a `Test...` class; the anyio mark runs async ones.")
        return
    shops = []

    def app_for(flaws=frozenset()):
        shop = Shop(latency_s=0.002, mail_s=0.0)  # quick: the check runs the tests six times over
        shops.append(shop)
        return course_app(shop, flaws=flaws), {"shop": shop}

    try:
        app, provided = app_for()
        first = await run_tests(suite, app, list(suite.tests), provided=provided)
        if not any(o.used_app for o in first):
            report.fail("your tests use the `app` fixture", observed="no fixture or test asked for `app`",
                        expected="the client fixture takes `app` and serves it",
                        hint="Take the app from the `app` fixture: the check runs the same tests on other apps.")
            return
        ok = all(o.passed for o in first)
        if not report.add("every test passes on the course's service", ok,
                          observed=f"{_tests(len(first))} passed" if ok else _listing(first),
                          expected="each test passes: this service meets the requirements",
                          hint=_right_app_hint(first).replace("todo", "order")):
            return
        again = await run_tests(suite, app, list(reversed(suite.tests)), provided=provided)
        broken = [o for o in again if not o.passed]
        if not report.add("the tests pass again, in reverse order", not broken,
                          observed=_listing(again) if broken else f"{_tests(len(again))} passed",
                          expected="the same verdicts in any order",
                          hint="A test must not depend on what an earlier one left (orders, a failing upstream "
                               "in `shop.failing`): count only what the test made itself."):
            return
        for bug in bugs:
            does, hint = BUGS[bug]
            app, provided = app_for(frozenset({bug}))
            outcomes = await run_tests(suite, app, list(suite.tests), stop_at_failure=True, provided=provided)
            caught = next((o for o in outcomes if not o.passed), None)
            report.add(f"catches the bug: {does}", caught is not None,
                       observed=f"{caught.name} failed on it" if caught else "every test passed on that service",
                       expected="at least one test fails", hint=hint)
    finally:
        for shop in shops:
            shop.remove()


@check("Lesson 14 · your tests catch the planted bugs", limit_s=30)
async def check_tests(report, cls):
    await judge_tests(report, cls, list(BUGS))
