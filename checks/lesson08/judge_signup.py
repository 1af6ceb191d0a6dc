"""Lesson 08, exercise 1's check: POST /signups answers 201, then e-mails in the background with
a session of its own. Judged by the order of recorded events, the mailer's inbox, and the
sessions and database connections opened and closed.
"""

from __future__ import annotations

import asyncio
import random

from sqlalchemy import event, select
from sqlalchemy.pool import Pool

from ..blocking import BlockingWatch
from ..harness import describe_exception
from ..recorder import record
from ..runner import check
from .judge_common import (
    _captured_warnings, _classify_send, _never_awaited, _send_error_hint, _status_hint, _task_window,
)
from .world import MailerError, User, database, mailer, stats


# ---- database connections, counted -----------------------------------------------------------------

class ConnectionCount:
    """Database connections opened and closed while the block runs, by any engine (the app's, or
    one a task made and never disposed: its connection stays open, and `open` says so)."""

    def __init__(self) -> None:
        self.opened = self.closed = 0

    @property
    def open(self) -> int:
        return self.opened - self.closed

    def _on_connect(self, *args) -> None:
        self.opened += 1

    def _on_close(self, *args) -> None:
        self.closed += 1

    def __enter__(self) -> "ConnectionCount":
        event.listen(Pool, "connect", self._on_connect)
        event.listen(Pool, "close", self._on_close)
        event.listen(Pool, "close_detached", self._on_close)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(Pool, "connect", self._on_connect)
        event.remove(Pool, "close", self._on_close)
        event.remove(Pool, "close_detached", self._on_close)


def _request_sessions_open(rec, exchanges) -> list[int]:
    """Sessions a request opened itself and had not closed when its answer was complete."""
    still_open = []
    for exchange in exchanges:
        end = rec.event("response.end", exchange)
        opened = [e.data["session"] for e in rec.find("mark", exchange=exchange)
                  if e.what.endswith(" opened") and e.task is exchange.task and end is not None and e.seq < end.seq]
        closed_before = {e.data["session"] for e in rec.find("mark") if e.what.endswith(" closed")
                         and end is not None and e.seq < end.seq}
        still_open += [n for n in opened if n not in closed_before]
    return still_open


# ---- exercise 1: a 201 that schedules the confirmation e-mail -------------------------------------------

SIGNUPS = 3


@check("Lesson 08 · POST /signups answers 201, then e-mails in the background with its own session", limit_s=20)
async def check_signup(report, app):
    stats.reset()
    mailer.reset(latency_s=(0.01, 0.04))
    tag = random.randint(1000, 9999)
    emails = [f"{name}{tag}@example.com" for name in random.sample(["ada", "bob", "cyd", "dee", "eve", "fay"], SIGNUPS)]
    refused = emails[-1]  # the mail server refuses this one: its flag must stay false
    mailer.fail_next("refuse", to=refused)
    catcher, caught = _captured_warnings()
    try:
        with BlockingWatch() as watch, ConnectionCount() as connections:
            async with record(app, title="POST /signups, three at once", graceful_s=5) as rec:
                exchanges = await asyncio.gather(
                    *(rec.post("/signups", json={"email": e}, label=f"signup {i + 1}") for i, e in enumerate(emails)))
                settled = await rec.settle(5)
    finally:
        catcher.__exit__(None, None, None)
    report.metrics["in_requests_s"] = rec.now()
    report.figure("Your signups: the answer (blue), the request's work after it (grey), its tasks (amber)",
                  rec._repr_png_)
    kinds = {email: _classify_send(rec, exchange, email) for exchange, email in zip(exchanges, emails)}

    # 1. the answer (a route that sends inline and meets the refusal answers 500: judged in 2.)
    for exchange, email in zip(exchanges, emails):
        if email == refused and kinds[email] == "inline":
            continue
        body = exchange.json_or_none() if exchange.status is not None else None
        if exchange.status != 201 or not isinstance(body, dict) or body.get("email") != email \
                or not isinstance(body.get("id"), int) or isinstance(body.get("id"), bool):
            report.fail("POST /signups answers 201 with the new user's id and email", observed=exchange.show(),
                        expected=f'201 {{"id": <int>, "email": "{email}"}}',
                        hint=_status_hint(exchange, "POST", "/signups",
                                          "Create the user with the request's session (SessionDep), flush to get its "
                                          "id, and return it; the route's decorator sets `status_code=201`."))
            return
    answered = [(ex, e) for ex, e in zip(exchanges, emails) if ex.status == 201]
    still_open = _request_sessions_open(rec, exchanges)
    async with database() as db:
        saved = {row.email: row for row in (await db.execute(select(User).where(User.email.in_(emails)))).all()}
    report.add("POST /signups answers 201 with the new user's id and email",
               all(e in saved and saved[e].id == ex.json()["id"] for ex, e in answered),
               observed=f"{sum(e in saved for _, e in answered)} of {len(answered)} users in the database "
                        "with the ids returned",
               expected=f"{len(answered)} users saved, ids as answered",
               hint=("A signup was rolled back after its 201: the request's session was still open (the "
                     "dependency's default scope) when its background task failed. `Depends(..., scope=\"function\")` "
                     "commits before the response." if still_open else
                     "Add the user to the request's session and flush: its id comes from the database."))

    # 2. where each e-mail was sent from
    inline = [e for e, k in kinds.items() if k == "inline"]
    waited = max((ex.wait_s or 0) for ex in exchanges) * 1000
    report.add(
        "the client gets its 201 before the e-mail is sent", not inline,
        observed=(f"{len(inline)} of {SIGNUPS} e-mails were sent before the response; the clients waited up to "
                  f"{waited:.0f} ms" if inline else f"each answer was complete after {waited:.0f} ms at most"),
        expected="each 201 complete before its e-mail starts",
        hint=("The route awaited the mailer itself, so the client waited for the mail server. Take a "
              "`BackgroundTasks` parameter and `add_task(...)` the sending: it runs after the response."),
    )
    spawned = [e for e, k in kinds.items() if k == "spawned"]
    if spawned:
        report.fail("the e-mail is sent by a background task of the request",
                    observed=f"{len(spawned)} e-mails were started by a task of your own, outside the request",
                    expected="sent inside `BackgroundTasks`, which the server waits for",
                    hint=("Nothing waits for a bare `asyncio.create_task`: the server shuts down without it, and a "
                          "task you keep no reference to may vanish. `BackgroundTasks.add_task` runs it after the "
                          "response, inside the request."))

    # 3. one e-mail each (none for the refused one); its MailerError is expected, any other error is not
    counts = {email: len(mailer.sent_to(email)) for email in emails}
    wanted = {email: 0 if email == refused else 1 for email in emails}
    errors = [ex.error for ex, e in zip(exchanges, emails) if ex.error is not None
              and not (e == refused and isinstance(ex.error, MailerError))]
    never = _never_awaited(caught)
    shown = f"e-mails per signup: {list(counts.values())} (the mail server refused the last one)"
    if errors:
        error_text = describe_exception(errors[0])
        observed = f"{shown}; after its 201, a request raised {error_text}"
        hint = _send_error_hint(error_text)
    elif never:
        observed = f"{shown}; coroutine {never}() was created but never awaited"
        hint = ("An async function does nothing until it is awaited: `await mailer.send(...)` inside an "
                "`async def` task.")
    elif not settled:
        observed = f"{shown}; the requests' work had not ended after 5 s"
        hint = "Your background task did not finish: does it wait for something that never comes?"
    else:
        observed = shown
        hint = ("Take `BackgroundTasks` as a parameter of the route and `add_task` the function that sends, "
                "with the new user's id.") if not any(counts.values()) else "Send exactly one e-mail per new user."
    if not report.add("one confirmation e-mail per signup, to its address", counts == wanted,
                      observed=observed, expected=f"{list(wanted.values())}", hint=hint):
        return

    # 4. recorded in the database, after the e-mail went out, with a session of the task's own
    async with database() as db:
        flags = dict((await db.execute(select(User.email, User.confirmation_sent).where(User.email.in_(emails)))).all())
    delivered = [e for e in emails if e != refused]
    stored = sum(bool(flags.get(e)) for e in delivered)
    after_close = list(stats.after_close)
    task_ran = any(_task_window(rec, exchange) for exchange in exchanges)
    task_sessions = set()  # sessions opened after their request's answer was complete: the tasks' own
    for exchange in exchanges:
        end = rec.event("response.end", exchange)
        task_sessions |= {e.data["session"] for e in rec.find("mark", exchange=exchange)
                          if e.what.endswith(" opened") and end is not None and e.seq > end.seq}
    task_commits = [n for n in stats.commits if n in task_sessions]
    empty_task_commits = [n for n in stats.empty_commits if n in task_sessions]
    if after_close:
        hint = ("The request's session is closed before background tasks run (SessionDep ends when the route "
                "returns). Give the task the session factory and the user's id, and open a session in the task.")
    elif not task_sessions and stored < len(delivered):
        hint = ("The task opened no session of its own: open one from the session factory "
                "(`request.state.sessions`), load the user by id, set the flag and commit.")
    elif task_commits and len(empty_task_commits) == len(task_commits):
        hint = ("The task's session committed nothing: the user you changed was loaded by the request's session, "
                "and is detached now. Load it again by id in the task's own session, then change it.")
    elif task_sessions and not task_commits:
        hint = ("The task's session never committed: after sending, set `confirmation_sent = True` on the user "
                "and `await session.commit()`.")
    else:
        hint = "After sending, set `confirmation_sent = True` on the user, in the task's own session, and commit."
    report.add(
        "the task records `confirmation_sent` in the database", stored == len(delivered),
        observed=f"users with confirmation_sent = true: {stored} of the {len(delivered)} e-mailed"
                 + (f"; {after_close[0]} after it was closed" if after_close else ""),
        expected=f"{len(delivered)} of {len(delivered)}", hint=hint,
    )
    if stored == len(delivered):  # the flag of the refused e-mail: only meaningful once flags are set at all
        report.add(
            "no flag without its e-mail", not flags.get(refused),
            observed=(f"the mail server refused {refused}'s e-mail, and its confirmation_sent is "
                      f"{bool(flags.get(refused))}"),
            expected="false: nothing was sent",
            hint=("The flag records a fact: set it only after `mailer.send` returned. Set before (or whatever "
                  "happens), it claims an e-mail that was never sent."),
        )
    if task_ran:  # judged only when a background task ran
        if after_close:
            report.fail("the task opens a session of its own",
                        observed=f"{after_close[0]} (the request's, already closed)",
                        expected="a session opened in the task, from the session factory",
                        hint=("A closed session silently starts over when used again, outside the request that "
                              "owned it. Open one in the task from the session factory."))
        elif still_open:
            report.fail("the task opens a session of its own",
                        observed=f"the request's session was still open when its 201 went out ({len(still_open)} requests)",
                        expected="the request's session closed before the response",
                        hint=("Your dependency ends after the response — and after the background tasks — so the "
                              "request's transaction stays open while the e-mail is sent. `Depends(..., "
                              "scope=\"function\")` ends it when the route returns; give the task its own session."))
        else:
            report.add("the task opens a session of its own", True)
    if task_sessions and not after_close:  # the task's own sessions (a reused one is judged just above)
        report.add("every session is closed", stats.opened == stats.closed,
                   observed=f"sessions opened: {stats.opened}, closed: {stats.closed}",
                   expected="as many closed as opened",
                   hint="Open the task's session with `async with`, so it is closed whatever happens.")
    if after_close or spawned or stats.opened != stats.closed:
        pass  # a session left open, or a task still running, holds its connection: reported above
    else:
        report.add("no database connection left open", connections.open == 0,
                   observed=(f"after the app shut down, {connections.open} of {connections.opened} database "
                             "connections were still open" if connections.open else
                             f"{connections.opened} opened, all closed"),
                   expected="0 open after shutdown",
                   hint=("An engine made in the task has a pool of its own that nothing disposes: its connections "
                         "stay open. Use the app's session factory (`request.state.sessions`); the lifespan "
                         "disposes its engine."))
    report.add("the event loop stays free", not watch.blocked,
               observed=f"blocking calls on the event loop: {watch.summary()}" if watch.blocked else "none",
               expected="none",
               hint="A background task runs on the same event loop as every request: no `time.sleep` in `async def`; "
                    "`await asyncio.sleep` waits without blocking.")
