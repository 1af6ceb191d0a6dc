"""Judging helpers more than one of lesson 08's checks use: warnings and never-awaited coroutines
caught during a check, where each e-mail was sent from (the recorder's events), and the hints.
"""

from __future__ import annotations

import warnings


# ---- helpers for the checks ----------------------------------------------------------------------------

def _captured_warnings():
    """Record warnings during a check (a coroutine never awaited is a clue for a hint)."""
    catcher = warnings.catch_warnings(record=True)
    caught = catcher.__enter__()
    warnings.simplefilter("always")
    return catcher, caught


def _never_awaited(caught) -> str | None:
    for warning in caught:
        text_ = str(warning.message)
        if "was never awaited" in text_:
            return text_.split("'")[1] if "'" in text_ else "a coroutine"
    return None


def _mail_events(rec, address: str, step: str | None = None):
    return [e for e in rec.events if e.kind == "mark" and e.data.get("to") == address
            and (step is None or e.data.get("step") == step)]


def _task_window(rec, exchange):
    """(first task.start seq, last task.end/error seq) of an exchange's background tasks, or None."""
    starts = rec.find("task.start", exchange=exchange)
    ends = rec.find("task.end", exchange=exchange) + rec.find("task.error", exchange=exchange)
    if not starts:
        return None
    return starts[0].seq, max((e.seq for e in ends), default=len(rec.events))


def _classify_send(rec, exchange, address: str) -> str:
    """Where the first e-mail to `address` was started: background / inline / spawned / none."""
    starts = _mail_events(rec, address, "start")
    if not starts:
        return "none"
    first = starts[0]
    end = rec.event("response.end", exchange)
    window = _task_window(rec, exchange)
    if window and window[0] < first.seq < window[1]:
        return "background"
    if first.task is not None and first.task is exchange.task and (end is None or first.seq < end.seq):
        return "inline"
    return "spawned"


def _status_hint(exchange, method: str, path: str, default: str) -> str:
    """A hint for an unexpected status: what 404, 405, 422 and 500 usually mean here."""
    if exchange.status == 404:
        return f"Nothing answers {method} {path} yet: define the route (check its path) and run its cell again."
    if exchange.status == 405:
        return f"The path exists but not for {method}: check the route's decorator."
    if exchange.status == 422:
        return "FastAPI rejected the request before your code ran: the route takes the JSON body as the model given."
    if exchange.status is not None and exchange.status >= 500:
        return "Your route raised: read the error above, fix it, run its cell again, then this check."
    if exchange.status is None:
        return "The route did not answer: does it wait for something (the e-mail?) before returning?"
    return default


def _send_error_hint(error_text: str) -> str:
    if ("coroutine" in error_text and "not callable" in error_text) or "first argument must be callable" in error_text:
        return ("`add_task` takes the function and its arguments separately: `add_task(fn, a, b)`, "
                "not `add_task(fn(a, b))`, which makes a coroutine and never runs it.")
    if "not callable" in error_text:
        return ("`asyncio.to_thread(fn, arg)` takes the function and its arguments; `to_thread(fn(arg))` "
                "runs fn right here, on the loop, and hands its result to the thread.")
    if "takes bytes, got coroutine" in error_text or "takes bytes, got Future" in error_text:
        return ("The PDF was a coroutine or a Future, not bytes: the call that runs the rendering in a "
                "thread returns an awaitable — `await` it to get the PDF.")
    if "different event loop" in error_text:
        return ("`asyncio.run` starts a new event loop; the mailer belongs to the app's loop. Keep the task "
                "`async def` and hand only the rendering to a thread (or, from a thread, `anyio.from_thread.run`).")
    if "is not persistent" in error_text or "DetachedInstance" in error_text or "not bound" in error_text:
        return ("An object from the request's session is detached once that session is closed. Pass the id to "
                "the task, and load the user again in the task's own session.")
    return "Your background task raised after the response had gone out: the client never saw it. Fix the error."
