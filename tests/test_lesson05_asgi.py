"""Lesson 05, exercise 2: pure ASGI middleware against the spec."""

import time
import uuid

import pytest
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders

from checks.lesson05 import RequestContext, check_asgi_middleware
from conftest import failure_text, names
from lesson05_helpers import ContextDispatch, FRESH, HEADERS, LOGGED, OWN_IDS, failing, lesson, lesson_app, log

pytestmark = pytest.mark.anyio


SPEC = "a streamed response keeps the ASGI spec"
OWN_HEADERS = "the app's own headers stay, and yours are added"
CHUNKS = "the chunks pass one by one, not held back"
STATE = "the lifespan's state and the request body reach the app"
BEFORE = "an error before the response: one whole 500, tagged"
MIDWAY = "an error in the middle of the body goes on to the server"
LIFESPAN = "the lifespan scope passes through untouched"


def pure(**mistake):
    """The notebook's pure ASGI middleware with one mistake."""
    class Middleware:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http" and not mistake.get("no_scope_check"):
                await self.app(scope, receive, send)
                return
            start = time.perf_counter()
            request_id = dict(scope["headers"]).get(b"x-request-id", b"").decode() or uuid.uuid4().hex
            if mistake.get("new_state"):
                scope["state"] = {"request_id": request_id}
            else:
                scope.setdefault("state", {})["request_id"] = request_id
            if mistake.get("instance_id"):
                self.request_id = request_id
            started = False
            held = []
            if mistake.get("read_body"):
                while (await receive()).get("more_body"):
                    pass

            async def send_with_headers(message):
                nonlocal started
                if message["type"] == "http.response.start":
                    started = not mistake.get("no_nonlocal")  # without `nonlocal`, the outer flag stays False
                    rid = self.request_id if mistake.get("instance_id") else request_id
                    name = b"X-Request-ID" if mistake.get("upper") else b"x-request-id"
                    value = rid if mistake.get("str_value") else rid.encode()
                    ours = [(name, value), (b"x-process-time", f"{(time.perf_counter() - start) * 1000:.1f}".encode())]
                    message["headers"] = ours if mistake.get("replace") else [*message.get("headers", []), *ours]
                if mistake.get("buffer"):
                    held.append(message)
                    if message["type"] == "http.response.body" and not message.get("more_body", False):
                        for kept in held:
                            await send(kept)
                    return
                await send(message)

            try:
                await self.app(scope, receive, send_with_headers)
            except Exception:
                if mistake.get("no_catch"):
                    raise
                if not started:
                    log.exception("request %s failed", request_id)
                if started and not mistake.get("second_start"):
                    if mistake.get("swallow"):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        return
                    raise
                reply = send if mistake.get("raw_500") else send_with_headers
                await reply({"type": "http.response.start", "status": 500,
                             "headers": [(b"content-type", b"application/json")]})
                if not mistake.get("no_body"):
                    await reply({"type": "http.response.body", "body": b'{"detail":"Internal Server Error"}'})
    return Middleware


class ReRaises:
    """Sends the tagged 500, then re-raises so the server logs it too; MutableHeaders for the headers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, sent = time.perf_counter(), {"start": False}
        rid = next((v.decode() for k, v in scope["headers"] if k == b"x-request-id"), "") or uuid.uuid4().hex
        scope["state"]["request_id"] = rid

        async def tagged(message):
            if message["type"] == "http.response.start":
                sent["start"] = True
                headers = MutableHeaders(scope=message)
                headers.append("x-request-id", rid)
                headers.append("x-process-time", str((time.perf_counter() - start) * 1000))
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        except Exception:
            if not sent["start"]:
                log.exception("request %s failed", rid)
                await JSONResponse({"detail": "Internal Server Error"}, status_code=500)(scope, receive, tagged)
            raise


class SendWrapper:
    """The send wrapper as a small class of its own."""

    class Tagging:
        def __init__(self, send, rid, start):
            self.send, self.rid, self.start, self.started = send, rid, start, False

        async def __call__(self, message):
            if message["type"] == "http.response.start":
                self.started = True
                extra = [(b"x-request-id", self.rid.encode()),
                         (b"x-process-time", b"%.2f" % ((time.perf_counter() - self.start) * 1000))]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await self.send(message)

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers[b"x-request-id"].decode() if b"x-request-id" in headers else uuid.uuid4().hex
        scope = {**scope, "state": {**scope.get("state", {}), "request_id": rid}}
        tagging = self.Tagging(send, rid, time.perf_counter())
        try:
            await self.app(scope, receive, tagging)
        except Exception:
            if tagging.started:
                raise
            log.exception("%s failed", rid)
            await tagging({"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"0")]})
            await tagging({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("middleware", [lesson["RequestContextMiddleware"], RequestContext, ReRaises, SendWrapper],
                         ids=["the notebook's", "the course's", "re-raises after its 500", "a send-wrapper class"])
async def test_asgi_right_answers_pass(middleware):
    report = await check_asgi_middleware.report(lesson_app, middleware)
    assert report.passed, report.text()


@pytest.mark.parametrize("mistake, failed, hint", [
    ({"no_scope_check": True}, [LIFESPAN], 'scope["type"] != "http"'),
    ({"new_state": True}, [STATE], "a new dict throws that away"),
    ({"upper": True}, [SPEC], "lowercase bytes"),
    ({"str_value": True}, [SPEC], "`request_id.encode()`"),
    ({"replace": True}, [OWN_HEADERS], "replacing it drops the app's own headers"),
    ({"second_start": True}, [MIDWAY], "re-raise instead of sending a 500"),
    ({"swallow": True}, [MIDWAY], "so the server drops the connection"),
    ({"buffer": True}, [CHUNKS], "one late response"),
    ({"no_catch": True}, [HEADERS, LOGGED], "nothing passed your tagging `send`"),
    ({"instance_id": True}, [OWN_IDS, FRESH], "One variable for all requests"),
    ({"read_body": True}, [SPEC], "does your middleware read `receive` itself"),
    ({"no_body": True}, ["GET /boom answers 500"], "`more_body` False — once"),
    ({"raw_500": True}, [HEADERS], "through that same `send`"),
    ({"no_nonlocal": True}, [MIDWAY], "needs `nonlocal`"),
], ids=["lifespan not passed through", "state replaced", "upper-case header names", "str header values",
        "the app's headers replaced", "a second start", "error swallowed, body ended", "buffers the body",
        "no catch", "id on the instance", "reads the request body", "500 without a body",
        "the 500 sent untagged", "the flag never set (no nonlocal)"])
async def test_asgi_mistakes(mistake, failed, hint):
    report = await failing(check_asgi_middleware, lesson_app, pure(**mistake))
    assert names(report) == failed, report.text()
    assert hint in failure_text(report), failure_text(report)


async def test_base_http_middleware_is_not_pure_asgi_a_failed_stream_looks_complete():
    report = await failing(check_asgi_middleware, lesson_app, ContextDispatch)
    assert names(report) == [MIDWAY], report.text()
    assert "as if complete" in failure_text(report)


async def test_a_function_is_not_a_middleware_class():
    report = await failing(check_asgi_middleware, lesson_app, lesson["add_request_context"])
    assert names(report) == ["a middleware class"]
