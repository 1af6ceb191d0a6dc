"""Lesson 05, exercise 4: CORS."""

import re

import pytest
from fastapi.middleware.cors import CORSMiddleware

from checks.lesson05 import (
    ALLOWED_ORIGIN, ApiKeyGuard, check_asgi_middleware, check_cors, check_guard, check_request_headers,
)
from conftest import failure_text, names
from lesson05_helpers import failing, lesson, lesson_app

pytestmark = pytest.mark.anyio


def cors(**options):
    def add(app):
        app.add_middleware(CORSMiddleware, **options)
        return app
    return add


def exact(**more):
    return dict(allow_origins=[ALLOWED_ORIGIN], allow_credentials=True, allow_methods=["GET", "POST"],
                allow_headers=["X-API-Key"], **more)


@pytest.mark.parametrize("add", [
    lesson["add_cors"],
    cors(allow_origin_regex=re.escape(ALLOWED_ORIGIN), allow_credentials=True, allow_methods=["GET", "POST"],
         allow_headers=["x-api-key"]),
    cors(allow_origins=(ALLOWED_ORIGIN,), allow_credentials=True, allow_methods=("POST", "GET"),
         allow_headers=("x-api-key", "content-type"), max_age=3600, expose_headers=["X-Request-ID"]),
], ids=["the notebook's", "an exact, escaped regex", "tuples, lower case, max_age"])
async def test_cors_right_answers_pass(add):
    report = await check_cors.report(lesson_app, add)
    assert report.passed, report.text()


PREFLIGHT = "app.example.com: preflights for GET and POST with X-API-Key pass, with credentials"
LOOKALIKES = "lookalike origins get no Access-Control-Allow-Origin"
WIDER = "other methods and headers are refused"


@pytest.mark.parametrize("add, failed, hint", [
    (cors(allow_origins=["*"], allow_credentials=True, allow_methods=["GET", "POST"], allow_headers=["X-API-Key"]),
     [LOOKALIKES], "echo ANY origin"),
    (cors(allow_origins=[ALLOWED_ORIGIN], allow_methods=["GET", "POST"], allow_headers=["X-API-Key"]),
     [PREFLIGHT], "allow_credentials=True"),
    (cors(**{**exact(), "allow_origins": [], "allow_origin_regex": r"https://.*"}), [LOOKALIKES], "allow_origin_regex"),
    (cors(**{**exact(), "allow_origins": [], "allow_origin_regex": r"https://app.example.com"}), [LOOKALIKES],
     "https://appxexample.com"),
    (cors(**{**exact(), "allow_origins": [], "allow_origin_regex": r"https://([a-z]+\.)*app\.example\.com"}),
     [LOOKALIKES], "a subdomain is another origin"),
    (cors(**{**exact(), "allow_origins": [], "allow_origin_regex": r"https?://app\.example\.com(:\d+)?"}),
     [LOOKALIKES], "another scheme is another origin"),
    (cors(**{**exact(), "allow_origins": [ALLOWED_ORIGIN + "/"]}), [PREFLIGHT], "without the trailing slash"),
    (cors(**{**exact(), "allow_origins": [ALLOWED_ORIGIN, "null"]}), [LOOKALIKES], "file:// pages"),
    (cors(**{**exact(), "allow_origins": [ALLOWED_ORIGIN, "http://app.example.com"]}), [LOOKALIKES],
     "another scheme is another origin"),
    (cors(**{**exact(), "allow_methods": ["*"]}), [WIDER], 'opens every method or header'),
    (cors(**{**exact(), "allow_headers": ["*"]}), [WIDER], 'opens every method or header'),
    (cors(**{**exact(), "allow_methods": ["GET"]}), [PREFLIGHT], 'allow_methods=["GET", "POST"]'),
    (cors(**{**exact(), "allow_headers": []}), [PREFLIGHT], "CORSMiddleware(allow_origins"),
    (cors(**{**exact(), "allow_origins": ALLOWED_ORIGIN}), [LOOKALIKES], "a search in the text"),
    (cors(**{**exact(), "allow_origins": f"{ALLOWED_ORIGIN},http://localhost:5173"}), [LOOKALIKES],
     "a search in the text"),
], ids=["* with credentials", "no credentials", "any https origin", "unescaped dots", "any subdomain",
        "any scheme and port", "trailing slash", "null allowed", "both schemes", "every method", "every header",
        "GET only", "X-API-Key not allowed", "one string, not a list", "a comma-separated string (from settings)"])
async def test_cors_mistakes(add, failed, hint):
    report = await failing(check_cors, lesson_app, add)
    assert names(report) == failed, report.text()
    assert hint in failure_text(report), failure_text(report)


async def test_cors_inside_the_guard_blocks_preflights_to_admin():
    def add(app):
        # CORS first, then the guard again around it: preflights now meet the guard.
        app.add_middleware(CORSMiddleware, **exact())
        app.add_middleware(ApiKeyGuard)
        return app
    report = await failing(check_cors, lesson_app, add)
    assert names(report) == ["a preflight to /admin needs no key, and the 401 is readable by app.example.com"]


async def test_the_checks_own_code_raises_no_warning():
    from conftest import warnings_from_checks
    from test_lesson05_asgi import pure
    from test_lesson05_guard import guard_app, raising_guard
    from test_lesson05_request_headers import variant

    assert await warnings_from_checks(
        check_request_headers.report(lesson_app, variant(no_catch=True)),
        check_asgi_middleware.report(lesson_app, pure(buffer=True)),
        check_guard.report(guard_app(raising_guard)),
        check_cors.report(lesson_app, cors(allow_origins=["*"], allow_credentials=True)),
    ) == []
