"""What lesson 07's test modules share (one module per exercise: tests/test_lesson07_*.py).

Lesson 07's checks: resources made once in the lifespan, closed at shutdown, an app-wide limit
shared by routes, and a single-flight cache. Right answers written several ways pass; the usual
mistakes (per request, never closed, made at import, on_event, a limit per request or per route,
a stampeding cache, a cached failure...) fail with the hint that names their cause."""

from conftest import assert_feedback_rules, notebook_namespace

lesson = notebook_namespace("07_lifespan")
prices_app = lesson["prices_app"]


async def failing(check, *args):
    report = await check.report(*args)
    assert_feedback_rules(report)
    return report
