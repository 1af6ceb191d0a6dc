"""Lesson 08, background work: BackgroundTasks after the response with a session of their own,
blocking work kept off the loop, and an outbox with a worker for work that must not be lost.

The checks drive the apps with `checks.recorder` (ASGITransport would wait for the background
tasks and hide when the answer left). Verdicts come from exact signals: the order of recorded
events (the last body message, the task's start, each e-mail), the mailer's inbox per
recipient and per idempotency key, sessions opened / closed / used after closing, blocking
calls seen on the loop's thread, tasks still pending after the lifespan ended.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, String, event, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import Pool

from .blocking import BlockingWatch, blocking_call
from .harness import _learner_frame_of, describe_exception
from .recorder import mark, record
from .runner import check
from .timing import InFlight

DATABASE_PATH = os.path.join(tempfile.gettempdir(), f"fastapi-course-lesson08-{os.getpid()}.db")
DATABASE_URL = f"sqlite+aiosqlite:///{DATABASE_PATH}"
POLL_S = 0.02  # how often the outbox worker looks for pending messages
CLIENT_TIMEOUT_S = 2.0  # a client gives up on a request that does not answer
SEND_TIMEOUT_S = 0.5  # the outbox worker gives one send at most this long
HANG_TEARDOWN_S = 0.2  # a cancelled send that hung takes this long to close its connection


# ---- the database -------------------------------------------------------------------------------

class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    confirmation_sent: Mapped[bool] = mapped_column(default=False)


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    item: Mapped[str] = mapped_column(String(200))


class OutboxMessage(Base):
    """One e-mail to send. `key` is its idempotency key: the same key, the same e-mail."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(100), unique=True)
    recipient: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(default=0)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_error: Mapped[str | None] = mapped_column(String(300), default=None)


async def reset_database(engine) -> None:
    """A fresh schema: each start of the lesson's app begins the same way."""
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)


def new_database() -> str:
    """The URL of a new, empty SQLite file with the lesson's tables (made when first connected)."""
    folder = tempfile.mkdtemp(prefix="course-lesson08-")
    return f"sqlite+aiosqlite:///{os.path.join(folder, 'shop.db')}"


async def create_tables(url: str) -> None:
    engine = create_async_engine(url)
    try:
        await reset_database(engine)
    finally:
        await engine.dispose()


@asynccontextmanager
async def database(url: str = DATABASE_URL):
    """A connection of the checks' own, to read the database's real state."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


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


# ---- sessions that count themselves ---------------------------------------------------------------

@dataclass
class Misuse:
    session: int
    what: str  # "get()", "commit()"
    where: str

    def __str__(self) -> str:
        return f"{self.what} on session {self.session} {self.where}".strip()


class SessionStats:
    """Sessions opened and closed, and every use of a session after it was closed."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.opened = 0
        self.closed = 0
        self.after_close: list[Misuse] = []
        self.empty_commits: list[int] = []  # sessions that committed with nothing to write
        self.commits: list[int] = []


stats = SessionStats()


def _where(frame) -> str:
    found = _learner_frame_of(frame)
    if not found:
        return ""
    name, lineno, filename = found
    in_cell = "ipykernel_" in filename or filename.startswith("<ipython")
    return f"in {name}(), line {lineno}" + (" of its cell" if in_cell else f" of {os.path.basename(filename)}")


class CountingSession(AsyncSession):
    """An AsyncSession that counts itself opened and closed, and notices use after closing.

    SQLAlchemy lets a closed session start over silently: a task that queries the request's
    session after the request closed it gets a new connection that nothing will close.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._counted_closed = False
        stats.opened += 1
        self.number = stats.opened
        mark(f"session {self.number} opened", kind="mark", session=self.number)

    def _touch(self, what: str) -> None:
        if self._counted_closed:
            misuse = Misuse(self.number, what, _where(sys._getframe(2)))
            stats.after_close.append(misuse)
            mark(f"session {self.number} used after close", session=self.number)

    async def close(self) -> None:
        if not self._counted_closed:
            self._counted_closed = True
            stats.closed += 1
            mark(f"session {self.number} closed", session=self.number)
        await super().close()

    def add(self, *args, **kwargs):
        self._touch("add()")
        return super().add(*args, **kwargs)

    async def execute(self, *args, **kwargs):
        self._touch("execute()")
        return await super().execute(*args, **kwargs)

    async def scalar(self, *args, **kwargs):
        self._touch("scalar()")
        return await super().scalar(*args, **kwargs)

    async def scalars(self, *args, **kwargs):
        self._touch("scalars()")
        return await super().scalars(*args, **kwargs)

    async def get(self, *args, **kwargs):
        self._touch("get()")
        return await super().get(*args, **kwargs)

    async def refresh(self, *args, **kwargs):
        self._touch("refresh()")
        return await super().refresh(*args, **kwargs)

    async def flush(self, *args, **kwargs):
        self._touch("flush()")
        return await super().flush(*args, **kwargs)

    async def commit(self):
        self._touch("commit()")
        if not (self.new or self.dirty or self.deleted):
            stats.empty_commits.append(self.number)
        stats.commits.append(self.number)
        return await super().commit()


# ---- the mailer ---------------------------------------------------------------------------------

class MailerError(Exception):
    """A delivery failed. It may or may not have gone out (a lost reply)."""


@dataclass
class Email:
    to: str
    subject: str
    body: str
    attachment: bytes | None
    key: str | None
    message_id: str


class Mailer:
    """An e-mail provider's async client, with real latency, exact counters and faults on demand.

    `await mailer.send(to, subject, body="", attachment=None, idempotency_key=None)` returns a
    message id. A second send with an idempotency key it has already delivered is not delivered
    again (it returns the first id), as real providers do. Like any async client, it belongs to
    the event loop it was opened on. `fail_next("refuse", "lose_reply", "hang", "reset")` makes the
    next sends fail: refused (nothing sent), sent but the reply lost, sent and then stuck forever,
    or the connection reset (an `OSError`, not a `MailerError`: nothing sent). `reject(address)`
    makes every send to that address raise `ValueError` (a poison message: it never goes out).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self, latency_s: tuple[float, float] = (0.01, 0.03)) -> None:
        self.latency_s = latency_s
        self.inbox: list[Email] = []
        self.attempts = 0
        self.started = 0
        self.duplicates_ignored = 0
        self.faults: list[tuple[str, str | None]] = []
        self.by_key: dict[str, str] = {}
        self.in_flight = InFlight()
        self.stuck = 0  # sends hanging right now
        self.rejected: set[str] = set()  # addresses the provider always refuses
        self.senders: list[asyncio.Task] = []  # the tasks that called send(), in order
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    def fail_next(self, *modes: str, to: str | None = None) -> None:
        """The next sends (to `to` only, if given) fail this way, one mode per send."""
        for mode in modes:
            assert mode in ("refuse", "lose_reply", "hang", "reset"), mode
            self.faults.append((mode, to))

    def reject(self, address: str) -> None:
        """Every send to `address` raises ValueError, as a provider answers "no such mailbox"."""
        self.rejected.add(address)

    def _take_fault(self, to: str) -> str | None:
        for index, (mode, address) in enumerate(self.faults):
            if address is None or address == to:
                del self.faults[index]
                return mode
        return None

    def sent_to(self, address: str) -> list[Email]:
        return [email for email in self.inbox if email.to == address]

    async def send(self, to: str, subject: str, body: str = "", *, attachment: bytes | None = None,
                   idempotency_key: str | None = None) -> str:
        if not isinstance(to, str) or "@" not in to:
            raise TypeError(f"mailer.send(to=...) needs an e-mail address, got {to!r}"[:200])
        if attachment is not None and not isinstance(attachment, (bytes, bytearray)):
            raise TypeError(f"mailer.send(attachment=...) takes bytes, got {type(attachment).__name__}")
        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
        elif loop is not self.loop:
            raise RuntimeError("the mailer's connection is attached to a different event loop: "
                               "this call runs on a new loop (asyncio.run?), not the app's")
        self.started += 1
        self.attempts += 1
        task = asyncio.current_task()
        if task is not None and task not in self.senders:
            self.senders.append(task)
        fault = self._take_fault(to)
        mark(f"mail to {to}: sending", to=to, key=idempotency_key, step="start")
        with self.in_flight.call():
            await asyncio.sleep(random.uniform(*self.latency_s))
            if to in self.rejected:
                mark(f"mail to {to}: rejected", to=to, step="rejected")
                raise ValueError(f"the mail server rejects {to}: no such mailbox")
            if fault == "reset":
                mark(f"mail to {to}: connection reset", to=to, step="reset")
                raise ConnectionResetError(104, "Connection reset by peer")
            if fault == "refuse":
                mark(f"mail to {to}: refused", to=to, step="refused")
                raise MailerError("the mail server refused the connection: nothing was sent")
            message_id = self._deliver(to, subject, body, attachment, idempotency_key)
            if fault == "lose_reply":
                mark(f"mail to {to}: reply lost", to=to, step="lost reply")
                raise MailerError("no reply from the mail server (the message may have been sent)")
            if fault == "hang":
                self.stuck += 1
                mark(f"mail to {to}: stuck", to=to, step="stuck")
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    # closing a stuck connection takes a round trip: a caller that cancels the send
                    # and does not wait for it leaves this still running
                    await asyncio.sleep(HANG_TEARDOWN_S)
                    raise
                finally:
                    self.stuck -= 1
        mark(f"mail to {to}: done", to=to, step="done")
        return message_id

    def _deliver(self, to, subject, body, attachment, key) -> str:
        if key is not None and key in self.by_key:
            self.duplicates_ignored += 1
            return self.by_key[key]
        message_id = f"msg-{len(self.inbox) + 1}-{random.randint(1000, 9999)}"
        self.inbox.append(Email(to, str(subject), str(body), bytes(attachment) if attachment else None, key, message_id))
        if key is not None:
            self.by_key[key] = message_id
        mark(f"mail to {to}: delivered", to=to, step="delivered")
        return message_id


mailer = Mailer()


# ---- an invoice renderer: CPU work with no async API ---------------------------------------------------

class InvoiceRenderer:
    """Lays out a PDF: about `target_s` of real CPU work (it releases the GIL, as hashing does)."""

    def __init__(self, target_s: float = 0.05):
        self.target_s = target_s
        self.in_flight = InFlight()
        self.threads: list[int] = []
        self._iterations = 0

    def reset(self) -> None:
        self.in_flight.reset()
        self.threads = []

    @staticmethod
    def expected(order_id: int) -> bytes:
        """The PDF `render_invoice(order_id)` returns (cheap to compute, for the checks)."""
        digest = hashlib.sha256(f"invoice-{order_id}".encode()).hexdigest()[:16]
        return f"%PDF-1.7\n% invoice {order_id} {digest}\n".encode()

    def _calibrate(self) -> int:
        probe = 20_000
        start = time.perf_counter()
        hashlib.pbkdf2_hmac("sha256", b"probe", b"salt", probe)
        elapsed = max(time.perf_counter() - start, 1e-4)
        return max(1_000, int(probe * self.target_s / elapsed))

    def __call__(self, order_id: int) -> bytes:
        if not isinstance(order_id, int):
            raise TypeError(f"render_invoice() takes the order id (an int), got {type(order_id).__name__}")
        if not self._iterations:
            self._iterations = self._calibrate()
        blocking_call("render_invoice()")
        self.threads.append(threading.get_ident())
        with self.in_flight.call():
            hashlib.pbkdf2_hmac("sha256", str(order_id).encode(), b"layout", self._iterations)
        return self.expected(order_id)


render_invoice = InvoiceRenderer()


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


# ---- exercise 2: CPU work in a task, off the loop ---------------------------------------------------------

INVOICES = 4


@check("Lesson 08 · send_invoice renders off the event loop, then e-mails the PDF", limit_s=20)
async def check_invoices(report, make_app, send_invoice):
    if not callable(send_invoice):
        report.fail("send_invoice is a function", observed=f"send_invoice is {send_invoice!r}"[:120],
                    expected="a function taking (order_id, email)",
                    hint="Write `send_invoice` in the exercise cell and run that cell, then this one.")
        return
    mailer.reset(latency_s=(0.01, 0.03))
    render_invoice.reset()
    orders = random.sample(range(1000, 9999), INVOICES)
    emails = [f"buyer{order}@example.com" for order in orders]
    app = make_app(send_invoice)
    catcher, caught = _captured_warnings()
    try:
        with BlockingWatch() as watch:
            async with record(app, title="four invoices at once, then GET /health", graceful_s=5) as rec:
                exchanges = await asyncio.gather(*(
                    rec.post("/invoices", json={"order_id": o, "email": e}, label=f"invoice {o}")
                    for o, e in zip(orders, emails)))
                # a request that arrives while the invoices are being rendered
                await rec.wait_for(lambda: render_invoice.in_flight.calls > 0 or all(x.done for x in exchanges), 2.0)
                health = await rec.get("/health", label="GET /health")
                settled = await rec.settle(5)
    finally:
        catcher.__exit__(None, None, None)
    report.metrics["in_requests_s"] = rec.now()
    report.figure("Your invoices: amber bars are the background tasks; where does GET /health wait?", rec._repr_png_)
    for exchange in exchanges:
        if exchange.status != 202:
            report.fail("POST /invoices answers 202", observed=exchange.show(), expected="202",
                        hint="The route is given: run the cell that defines invoice_app again.")
            return

    rendered = sum(1 for order in orders for email in mailer.inbox if email.attachment == render_invoice.expected(order))
    counts = {email: len(mailer.sent_to(email)) for email in emails}
    right = all(counts[email] == 1 and mailer.sent_to(email)[0].attachment == render_invoice.expected(order)
                for order, email in zip(orders, emails))
    errors = [ex.error for ex in exchanges if ex.error is not None]
    never = _never_awaited(caught)
    if errors:
        error_text = describe_exception(errors[0])
        observed = f"e-mails sent: {sum(counts.values())} of {INVOICES}; after its 202, a request raised {error_text}"
        hint = _send_error_hint(error_text)
    elif never:
        observed = f"e-mails sent: {sum(counts.values())} of {INVOICES}; coroutine {never}() was never awaited"
        hint = ("`mailer.send` is async: called without `await` it does nothing. In a `def` task you cannot "
                "await; keep the task `async def` and send the rendering to a thread.")
    elif not settled:
        observed = f"e-mails sent: {sum(counts.values())} of {INVOICES}; the tasks had not ended after 5 s"
        hint = "Your task did not finish: does it wait for something that never comes?"
    else:
        observed = (f"e-mails per order: {list(counts.values())}; with the right PDF attached: {rendered}")
        hint = ("Each order gets one e-mail to its address with `attachment=` the bytes `render_invoice(order_id)` "
                "returns.")
    if not report.add("each order gets one e-mail with its own PDF", right, observed=observed,
                      expected=f"{INVOICES} e-mails, one per order, each with its invoice", hint=hint):
        return

    outside = [order for order, exchange, email in zip(orders, exchanges, emails)
               if _classify_send(rec, exchange, email) != "background"]
    report.add(
        "the e-mail is sent inside the background task", not outside,
        observed=(f"{len(outside)} e-mails were sent by a task of your own, after the request had ended"
                  if outside else "each e-mail left while its request's background task ran"),
        expected="sent before the task returns",
        hint=("A task started with `asyncio.create_task` and not awaited is nobody's: the server does not wait for "
              "it at shutdown. Await the sending in the background task itself."),
    )
    loop_thread = watch.loop_thread
    on_loop = sum(1 for ident in render_invoice.threads if ident == loop_thread)
    sleeps = [call for call in watch.on_loop if call.what.startswith("time.sleep")]
    renders = [call for call in watch.on_loop if call.what.startswith("render_invoice")]
    health_ms = (health.wait_s or 0) * 1000
    one_render_ms = max(render_invoice.in_flight.durations, default=render_invoice.target_s) * 1000
    if renders:
        hint = ("`render_invoice` is CPU work with no async API: called in `async def` it holds the loop, and every "
                "other request waits. Run it in a thread and await the result (`asyncio.to_thread`).")
    elif sleeps:
        hint = "`time.sleep` in `async def` holds the event loop: `await asyncio.sleep(...)` waits without blocking it."
    else:
        hint = "Keep blocking calls out of `async def`."
    report.add(
        "the event loop stays free while invoices render", not watch.blocked,
        observed=(f"on the event loop's thread: {watch.summary()}; {on_loop} of {len(render_invoice.threads)} "
                  f"renders there, each holding every request for {one_render_ms:.0f} ms"
                  + (f"; GET /health waited {health_ms:.0f} ms" if health_ms >= one_render_ms / 2 else
                     f"; GET /health happened to arrive between two of them")
                  if watch.blocked and on_loop else
                  f"on the event loop's thread: {watch.summary()}" if watch.blocked else
                  f"renders in worker threads: {len(render_invoice.threads) - on_loop} of {len(render_invoice.threads)}; "
                  f"GET /health answered in {health_ms:.0f} ms"),
        expected="no blocking call on the event loop's thread", hint=hint,
    )


# ---- exercise 3: the outbox and its worker -----------------------------------------------------------------

FAULT_TRIGGER = """
CREATE TRIGGER outbox_disk_full BEFORE INSERT ON outbox
WHEN (SELECT armed FROM course_faults) = 1
BEGIN SELECT RAISE(ABORT, 'disk I/O error (simulated by the check)'); END
"""


async def _prepare_outbox_database(url: str) -> None:
    engine = create_async_engine(url)
    try:
        await reset_database(engine)
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE course_faults (armed INTEGER)"))
            await connection.execute(text("INSERT INTO course_faults VALUES (0)"))
            await connection.execute(text(FAULT_TRIGGER))
    finally:
        await engine.dispose()


async def _arm_fault(url: str, armed: bool) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE course_faults SET armed = :armed"), {"armed": int(armed)})
    finally:
        await engine.dispose()


async def _outbox_state(url: str):
    async with database(url) as db:
        orders = (await db.execute(select(Order.id, Order.email))).all()
        rows = (await db.execute(select(OutboxMessage.recipient, OutboxMessage.key, OutboxMessage.sent_at))).all()
    return orders, rows


def _email(tag: int, name: str) -> str:
    return f"{name}.{tag}@example.com"


@dataclass
class _OutboxRun:
    """What the outbox check saw, phase by phase. Each phase runs only if the one before it
    worked: a worker that fails one is not judged on the next."""

    calm: list  # the first orders' customers: the first one orders twice
    failing: list  # refused, reply lost
    poison: str  # every send to it raises ValueError
    reset: str  # its first send raises ConnectionResetError
    hang: str  # its first send hangs
    later: str  # ordered while that send hangs
    crash: str  # its send hangs when the app is stopped
    disk: str  # its outbox row cannot be written
    calm_ok: bool = False  # the first orders' e-mails went out within the time allowed
    after_failures: dict = None  # e-mails per failing order before the restart
    failing_status: dict = None  # what POST /orders answered for them
    errors_ran: bool = False
    survived: bool = False  # the reset order's e-mail went out despite the errors
    worker_error: BaseException | None = None  # what ended a worker task, if one ended
    hang_ran: bool = False
    hang_seen: bool = False  # the hanging send started
    unblocked: bool = False  # the later order's e-mail went out while that send hung
    crash_ran: bool = False
    hung: bool = False
    faulty: object = None
    first_run: object = None
    second_run: object = None
    marked: bool = False
    orders: list = None
    rows: list = None

    def expected(self) -> dict:
        """E-mails each customer should get in the end."""
        counts = {a: 1 for a in self.calm + self.failing + [self.reset, self.hang, self.later, self.crash]}
        counts[self.calm[0]] = self.calm.count(self.calm[0])
        return counts


async def _ended_worker(rec) -> BaseException | None:
    """What ended the worker, if it sends nothing any more (a live one keeps retrying the message
    that always fails): the last error, not a MailerError, of a task that sent outside the requests."""
    before = mailer.started
    if await rec.wait_for(lambda: mailer.started > before, 0.6):
        return None  # still sending
    own = {exchange.task for exchange in rec.exchanges}
    for task in reversed(mailer.senders):
        if task not in own and task.done() and not task.cancelled():
            error = task.exception()
            if error is not None and not isinstance(error, MailerError):
                return error
    return None


@check("Lesson 08 · orders and their e-mails: an outbox and a worker, nothing lost, nothing sent twice", limit_s=40)
async def check_outbox(report, make_app, deliver_outbox):
    tag = random.randint(1000, 9999)
    names = [_email(tag, n) for n in random.sample(
        ["ada", "bob", "cyd", "dee", "eve", "fay", "gus", "hal", "ivy", "jan", "kim", "lou"], 10)]
    run = _OutboxRun(calm=[names[0], names[1], names[0]], failing=names[2:4], poison=names[4], reset=names[5],
                     hang=names[6], later=names[7], crash=names[8], disk=names[9])
    url = new_database()
    folder = os.path.dirname(url.split("///", 1)[1])
    await _prepare_outbox_database(url)
    stats.reset()
    mailer.reset(latency_s=(0.005, 0.02))

    def delivered(addresses):
        want = {a: addresses.count(a) for a in addresses}
        return lambda: all(len(mailer.sent_to(a)) >= n for a, n in want.items())

    def order(rec, email, item, label):
        return rec.post("/orders", json={"email": email, "item": item}, label=label,
                        disconnect_after_s=CLIENT_TIMEOUT_S)

    try:
        with BlockingWatch() as watch:
            # ---- first run: calm orders, failing deliveries, errors, a hang, then a stop in the middle of one
            # (leak_grace_s: a worker cancelled and not awaited is still closing its hung send then)
            async with record(make_app(url, deliver_outbox), title="orders, and the worker's deliveries",
                              graceful_s=2, leak_grace_s=0.05, raise_shutdown_errors=False) as rec:
                run.first_run = rec
                first = await asyncio.gather(*(order(rec, e, f"book-{i}", f"order {i + 1}")
                                               for i, e in enumerate(run.calm)))
                for exchange in first:
                    body = exchange.json_or_none() if exchange.status is not None else None
                    if exchange.status != 201 or not isinstance(body, dict) or not isinstance(body.get("id"), int):
                        report.fail("POST /orders answers 201 with the order's id", observed=exchange.show(),
                                    expected='201 {"id": <int>} for each order (one customer orders twice)',
                                    hint=_order_hint(exchange))
                        return
                run.calm_ok = await rec.wait_for(delivered(run.calm), 2.0)
                if run.calm_ok:  # else the worker does not work at all: no point in failing it harder
                    mailer.fail_next("refuse", to=run.failing[0])
                    mailer.fail_next("lose_reply", to=run.failing[1])
                    second = await asyncio.gather(*(order(rec, e, "lamp", f"order {4 + i}")
                                                    for i, e in enumerate(run.failing)))
                    run.failing_status = {a: x.status for a, x in zip(run.failing, second)}
                    await rec.wait_for(lambda: delivered(run.failing)() and not mailer.faults, 2.0)
                    run.after_failures = {a: len(mailer.sent_to(a)) for a in run.failing}
                if run.calm_ok and all(run.after_failures.values()):
                    # errors that are not MailerError: one message that always fails, one reset connection
                    run.errors_ran = True
                    mailer.reject(run.poison)
                    mailer.fail_next("reset", to=run.reset)
                    await order(rec, run.poison, "vase", "order 6 (always fails)")
                    await order(rec, run.reset, "mug", "order 7 (connection reset)")
                    run.survived = await rec.wait_for(delivered([run.reset]), 2.0)
                    if not run.survived:
                        run.worker_error = await _ended_worker(rec)
                if run.survived:
                    # a send that hangs, then an order behind it
                    run.hang_ran = True
                    mailer.fail_next("hang", to=run.hang)
                    await order(rec, run.hang, "rug", "order 8 (its send hangs)")
                    run.hang_seen = await rec.wait_for(lambda: mailer.stuck > 0, 1.5)
                    await order(rec, run.later, "pen", "order 9")
                    run.unblocked = await rec.wait_for(delivered([run.later]), 3.0)
                if run.unblocked:
                    run.crash_ran = True
                    await rec.wait_for(lambda: mailer.stuck == 0, 1.0)
                    mailer.fail_next("hang", to=run.crash)
                    await order(rec, run.crash, "kettle", "order 10 (then a stop)")
                    run.hung = await rec.wait_for(lambda: mailer.stuck > 0, 2.0)
            if run.calm_ok:
                mailer.faults.clear()

                # ---- second run: the same database, a new process
                async with record(make_app(url, deliver_outbox), title="after the restart", graceful_s=2,
                                  leak_grace_s=0.05, raise_shutdown_errors=False) as rec2:
                    run.second_run = rec2
                    if run.crash_ran:
                        await rec2.wait_for(lambda: delivered([run.crash])() and mailer.in_flight.current == 0, 2.0)
                    await _arm_fault(url, True)
                    try:
                        run.faulty = await order(rec2, run.disk, "chair", "order 11 (disk full)")
                    finally:
                        await _arm_fault(url, False)
                    run.marked = await _wait_marked(url, 1.0)
        run.orders, run.rows = await _outbox_state(url)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report.metrics["in_requests_s"] = run.first_run.now()  # both runs: the first recorder's clock started first
    report.figure("Your first run: the orders, and the worker's deliveries (outside requests)", run.first_run._repr_png_)
    _judge_outbox(report, run, watch)


def _order_hint(exchange) -> str:
    error = describe_exception(exchange.error) if exchange.error is not None else ""
    if "outbox.key" in error or "UNIQUE" in error and "key" in error:
        return ("Two orders made the same outbox key: one customer ordered twice. A key made from the recipient "
                "(or the subject) is not unique to one e-mail; make it from the order's id.")
    return _status_hint(exchange, "POST", "/orders", "Save the order with the request's session, flush to get "
                        "its id, return it.")


async def _wait_marked(url, timeout) -> bool:
    """True once no outbox row whose e-mail went out is pending (every 20 ms, at most `timeout` s)."""
    deadline = time.perf_counter() + timeout
    while True:
        _, rows = await _outbox_state(url)
        if all(sent is not None for recipient, _, sent in rows if mailer.sent_to(recipient)):
            return True
        if time.perf_counter() >= deadline:
            return False
        await asyncio.sleep(0.02)


def _judge_outbox(report, run: _OutboxRun, watch) -> None:
    expected = run.expected()
    counts = {address: len(mailer.sent_to(address)) for address in list(expected) + [run.poison, run.disk]}
    recorders = [r for r in (run.first_run, run.second_run) if r is not None]

    # where the e-mails were sent from: marks made inside a request belong to it
    by_request = [e for r in recorders for e in r.find("mark") if e.data.get("step") == "start" and e.exchange]
    report.add(
        "the e-mails are sent by the worker, not by the request", not by_request,
        observed=(f"{len(by_request)} sends started inside a request ({by_request[0].exchange.label})"
                  if by_request else "every send started outside the requests"),
        expected="POST /orders only writes; the worker sends",
        hint=("A request that sends (inline, or in a background task) loses the e-mail if the process dies after "
              "the commit, and retries nothing. Write an outbox row in the order's transaction; the worker sends it."),
    )
    calm = list(dict.fromkeys(run.calm))
    if not all(counts[a] for a in calm) or not run.calm_ok:
        ended = run.first_run.shutdown_error
        report.fail("the worker delivers new orders' e-mails",
                    observed=f"e-mails per customer: {[counts[a] for a in calm]} (the first ordered twice); "
                             f"outbox rows: {len(run.rows)} for {len(run.orders)} orders"
                             + (f"; at shutdown the lifespan raised {describe_exception(ended)}" if ended else ""),
                    expected=f"{[expected[a] for a in calm]}, within 2 s",
                    hint=("Nothing was sent: is the worker started by the lifespan (`asyncio.create_task`), and does "
                          "it read the pending outbox rows, send each, and mark it sent?"))
        return
    report.add("the worker delivers new orders' e-mails", True,
               observed=f"e-mails per customer: {[counts[a] for a in calm]} (the first ordered twice)")
    before_restart = [run.after_failures[a] for a in run.failing]
    # an order the client was told failed (the request sent inline and got an error) is not a lost e-mail
    lost = [a for a in run.failing if run.after_failures[a] == 0 and run.failing_status.get(a) == 201]
    report.add(
        "a failed delivery is tried again", not lost,
        observed=f"the mailer refused one delivery and lost the reply of another; e-mails per order, 2 s later: "
                 f"{before_restart}",
        expected="1 each",
        hint=("A failed send must leave the row pending, so a later round sends it again: do not delete it or mark "
              "it sent before the mailer said yes, and catch the error so the worker keeps running."),
    )
    twice = [a for a in expected if counts[a] > expected[a]]
    report.add(
        "a retry after a lost reply is not sent twice", not twice,
        observed=(f"{twice[0]} got {counts[twice[0]]} e-mails for {expected[twice[0]]} order(s)" if twice else
                  f"e-mails per order: {[counts[a] for a in run.failing]}"),
        expected="one per order",
        hint=("When the reply is lost, the e-mail may have gone out: the retry must carry the same "
              "`idempotency_key` (stored in the outbox row), so the provider can drop the duplicate."),
    )
    if run.errors_ran:
        error = run.worker_error
        if error is not None:
            observed = (f"order 6's send raises ValueError (no such mailbox) every time, order 7's raised "
                        f"ConnectionResetError once; the worker ended with {describe_exception(error)}")
            hint = ("Only `MailerError` was caught: any other error (a rejected address, a reset connection, a "
                    "failed commit) ended the worker, and every later e-mail with it. Catch `Exception` around each "
                    "message's delivery, record it on the row (`attempts`, `last_error`), and go on.")
        elif counts[run.reset] == 0 and _mail_events(run.first_run, run.reset, "start"):
            observed = ("order 7's send raised ConnectionResetError once; it was never tried again (2 s later: "
                        "0 e-mails)")
            hint = ("An error you did not expect is no proof that a message can never go: a reset connection works "
                    "on the next try. Leave the row pending and count its attempts (give up only after several).")
        elif counts[run.reset] == 0:
            observed = ("order 6's send raises ValueError (no such mailbox) every time, order 7's raised "
                        "ConnectionResetError once; order 7's e-mail had not gone out 2 s later")
            hint = ("The worker is alive but never got past the message that always fails: an error caught around the "
                    "whole round ends the round at that message, every time. Catch it around each message.")
        else:
            observed = "order 7's e-mail went out after its connection was reset; order 6's keeps failing"
            hint = ""
        report.add("an error other than MailerError stops nothing: the worker goes on with the other messages",
                   run.survived and error is None, observed=observed,
                   expected="the worker still running, order 7's e-mail sent on a later round", hint=hint)
    if run.hang_ran:
        report.add(
            "a send that hangs holds back no other e-mail", run.hang_seen and run.unblocked,
            observed=(f"order 8's send hung; the order placed after it got {counts[run.later]} e-mail(s) within 3 s"
                      if run.hang_seen else "order 8's send did not even start within 1.5 s"),
            expected="1: the hung send given up after SEND_TIMEOUT_S, the others sent",
            hint=("Nothing bounds a send, so one that never answers holds the worker, and every message behind it, "
                  "forever. Give each send at most `SEND_TIMEOUT_S` (`async with asyncio.timeout(SEND_TIMEOUT_S):`) "
                  "and treat the timeout as a failed delivery."),
        )
    crash_saved = any(email == run.crash for _, email in run.orders)
    if run.crash_ran and crash_saved:
        if not run.hung:
            report.fail("an e-mail cut off by a shutdown is delivered after the restart, once",
                        observed="the worker did not start sending order 10's e-mail within 2 s", expected="it sends it",
                        hint="The worker should keep sending new orders' e-mails after failures.")
        else:
            report.add(
                "an e-mail cut off by a shutdown is delivered after the restart, once", counts[run.crash] == 1,
                observed=f"the app stopped while order 10's e-mail was being sent; after the restart: "
                         f"{counts[run.crash]} e-mail(s) to its customer",
                expected="1",
                hint=("The retry after the restart must carry the same idempotency key as the first attempt."
                      if counts[run.crash] > 1 else "Only a row still pending in the database survives a restart."),
            )
    disk_orders = [oid for oid, email in run.orders if email == run.disk]
    disk_rows = [r for r in run.rows if r[0] == run.disk]
    consistent = (not disk_orders and not disk_rows) or (disk_orders and disk_rows)
    report.add(
        "an order and its outbox row are written in one transaction", bool(consistent),
        observed=(f"the outbox insert failed (disk full); POST /orders answered {run.faulty.status}; "
                  f"orders saved: {len(disk_orders)}, outbox rows: {len(disk_rows)}"),
        expected="no order and no outbox row, or both",
        hint=("POST /orders writes no outbox row: once the order is committed, nothing remembers its e-mail."
              if not run.rows else
              "The order was committed before its outbox row was written, so when that write failed the order "
              "stayed without an e-mail. Add both to the request's session and commit once."),
    )
    pending = [r for r in run.rows if r[2] is None and counts.get(r[0], 0) >= 1]
    report.add(
        "a delivered message is marked sent", not pending,
        observed=f"outbox rows still pending 1 s after their e-mail went out: {len(pending)}",
        expected="0",
        hint="After the mailer answers, set the row's `sent_at` and commit, or the worker sends it again every round.",
    )
    leaks = [name for r in recorders for name in r.leaked_tasks]
    errors = [describe_exception(r.shutdown_error) for r in recorders if r.shutdown_error is not None]
    report.add(
        "the worker is stopped at shutdown, nothing left running", not leaks and not errors,
        observed=(f"after the lifespan ended, still running: {leaks[0]}" if leaks else
                  f"the shutdown raised {errors[0]}" if errors else "nothing left running after either shutdown"),
        expected="the worker cancelled (or told to stop) and finished before the lifespan ends",
        hint=("A task that nobody stops outlives the app. Keep the task the lifespan created and, after `yield`, "
              "`cancel()` it and await it: cancel() only asks, and the worker's clean-up (closing a send, its "
              "session) must end before the engine is disposed. A stop flag alone cannot interrupt a send that hangs."
              if leaks else
              "The worker ended with an error, raised again when the lifespan awaited it: catch the delivery's "
              "error inside the worker's loop, and only the `CancelledError` you caused around the await."),
    )
    report.add(
        "the event loop stays free", not watch.blocked,
        observed=f"blocking calls on the event loop: {watch.summary()}" if watch.blocked else "none",
        expected="none",
        hint="The worker shares the event loop with every request: wait between rounds with `await asyncio.sleep`.",
    )
    report.add(
        "every session is closed", stats.opened == stats.closed,
        observed=f"sessions opened: {stats.opened}, closed: {stats.closed}", expected="as many closed as opened",
        hint="Open each session with `async with sessions() as session:`, so cancelling the worker closes it too.",
    )
