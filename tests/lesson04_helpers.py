"""What lesson 04's test modules share (one module per exercise: tests/test_lesson04_*.py).

Latencies are random on every run (the checks draw them), so answers that rely on completion
order fail every run, not some of the time."""

from fastapi import FastAPI

from checks.lesson04 import orders_api, profile_api, recommendations_api
from conftest import assert_feedback_rules, names, notebook_namespace

lesson = notebook_namespace("04_gather")
NAMES = ("profile", "orders", "recommendations")
APIS = (profile_api, orders_api, recommendations_api)


def app_with(path, endpoint, lifespan=None):
    app = FastAPI(lifespan=lifespan)
    app.add_api_route(path, endpoint, methods=["GET"])
    return app


def assert_fails(report, first_failure, hint: str):
    """The first failed item is `first_failure` (by the start of its name; a tuple: any of them)
    and its hint names the cause."""
    firsts = (first_failure,) if isinstance(first_failure, str) else first_failure
    assert names(report) and names(report)[0].startswith(firsts), report.text()
    assert hint in report.failures[0].hint, report.text()
    assert_feedback_rules(report)
