"""Judging helpers more than one of lesson 05's checks use: saying what happened, shortly."""

from __future__ import annotations

import logging
import random

from ..harness import describe_exception
from ..observe import json_body


# ---- saying what happened, shortly -------------------------------------------------------------

def short_error(exc: BaseException) -> str:
    """One line for an exception; a validation error gives its first field, not its whole text."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            items = list(errors())
        except Exception:  # noqa: BLE001
            items = []
        if items and isinstance(items[0], dict):
            first = items[0]
            loc = ".".join(str(part) for part in first.get("loc", ()) if part not in ("response", "body")) or "value"
            more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
            got = type(first.get("input")).__name__
            return f"{type(exc).__name__}: {loc}: {first.get('msg')} (got a {got}){more}"
    return describe_exception(exc)


def observed(response, client=None) -> str:
    """`404 {"detail":"Not Found"}`; for a 5xx, what the app raised, in one line."""
    if client is not None and response.status_code >= 500:
        errors = client.errors_for(response.request.url.path)
        if errors:
            return f"{response.status_code}: the app raised {short_error(errors[-1].exception)}"
    body = response.text if len(response.text) <= 120 else response.text[:117] + "..."
    return f"{response.status_code} {body}".rstrip()


def _app_error(client, path: str, records=None):
    """What raised while `path` was served: an error that reached the server, else one a
    middleware caught and logged (it is in a log record's exc_info)."""
    errors = client.errors_for(path)
    if errors:
        return errors[-1].exception
    logged = [r.exc_info[1] for r in (records.records if records else []) if r.exc_info and r.exc_info[1] is not None]
    return logged[-1] if logged else None


def _cause_hint(exc) -> str:
    """A hint for a 500 the lesson's routes would not give, by what raised."""
    name = type(exc).__name__ if exc is not None else ""
    if name in ("ResponseValidationError", "ValidationError"):
        return ("The route's return type says `request_id` is a str: store the id as a string "
                "(`uuid.uuid4().hex`, or the header's value), not a UUID object.")
    if name == "NotImplementedError":
        return "The exercise is not written yet: replace `raise NotImplementedError` with your code."
    if name == "KeyError":
        return ("A header that is not there raises KeyError with `headers[...]`: use `headers.get(...)` and "
                "fall back to a new id.")
    if isinstance(exc, TypeError) and "'NoneType' object is not callable" in str(exc):
        return ("Something returned None where a response was due: a middleware (or a handler) must end with "
                "`return` the response — `call_next`'s or one you built.")
    if isinstance(exc, (AttributeError, TypeError)) and "encode" in str(exc):
        return "Header values are strings (or bytes in ASGI): convert the id and the time before setting them."
    return f"Your middleware raised {name}: it runs on every request, so it breaks every request. Fix it first."


class _Records(logging.Handler):
    """Collects every record (on the root logger, so any logger the learner uses is seen)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc_info):
        logging.getLogger().removeHandler(self)


def _mentions(record: logging.LogRecord, text: str) -> bool:
    try:
        if text in record.getMessage():
            return True
    except Exception:  # noqa: BLE001 - a bad format string is the learner's; look at the raw parts
        if text in str(record.msg) or text in str(record.args):
            return True
    return any(text in str(value) for key, value in vars(record).items() if key not in ("msg", "args", "message"))


def _process_ms(response) -> float | None:
    try:
        value = float(response.headers.get("x-process-time", ""))
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _timing_hint(measured, backend_ms: float, client_ms: float) -> str:
    if measured is None:
        return "Write the time as a plain number of milliseconds, e.g. `f\"{elapsed_ms:.1f}\"`."
    if backend_ms - 1 <= measured * 1000 <= client_ms + 1:
        return "That is the time in seconds: the header is in milliseconds (× 1000)."
    if measured < backend_ms:
        return ("It is shorter than the route's own wait: take wall-clock time (`time.perf_counter()`) before "
                "`call_next` and after it (`time.process_time()` counts CPU only, not waiting).")
    return "It is longer than the whole request took: time only the call that runs the route, in milliseconds."


def _field(response, name: str):
    body = json_body(response)
    return body.get(name) if isinstance(body, dict) else None


def _detail(response):
    return _field(response, "detail")


def _client_id() -> str:
    return f"client-{random.randint(10**6, 10**7)}"
