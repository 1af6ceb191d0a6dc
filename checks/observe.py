"""Say what came back, in a line, and what a surprising status usually means."""

from __future__ import annotations

import httpx

from .harness import describe_exception

BODY_CHARS = 160


def json_body(response: httpx.Response):
    """The response's JSON, or None when its body is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def show_response(response: httpx.Response, client=None) -> str:
    """`404 {"detail":"Not Found"}`, plus what the app raised for a 5xx."""
    body = response.text
    if len(body) > BODY_CHARS:
        body = body[: BODY_CHARS - 3] + "..."
    text = f"{response.status_code} {body}".rstrip()
    errors = client.errors_for(response.request.url.path) if client is not None else []
    if response.status_code >= 500 and errors:
        return f"{response.status_code}: your code raised {describe_exception(errors[-1].exception)}"
    return text


def status_hint(response: httpx.Response, method: str, path: str, client=None) -> str:
    """A hint for the usual reasons a request did not get its 200."""
    code = response.status_code
    errors = client.errors_for(response.request.url.path) if client is not None else []
    if code >= 500 and errors and "coroutine" in str(errors[-1].exception):
        return ("A coroutine object turned up where a value belongs: did you forget an `await` "
                "in front of an async call?")
    if code == 404:
        return f"Nothing answers {method} {path} yet: define the route (check its path) and run its cell again."
    if code == 405:
        return f"The path exists but not for {method}: check the decorator (@app.{method.lower()}(...))."
    if code == 422:
        return "FastAPI rejected the request before your code ran: compare your parameters with the task."
    if code >= 500:
        return "Your route raised an exception: read the error above, fix it, run the cell again."
    return "Compare what came back with what the task asks for."
