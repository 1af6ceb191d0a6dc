"""Lesson 08's stand-in world: the database with its tables, sessions that count themselves, the
mailer, and the invoice renderer. No judging here (the checks are in `judge_signup.py`,
`judge_invoices.py` and `judge_outbox.py`).

Each stand-in counts what the lesson is about exactly: sessions opened, closed and used after
closing (`stats`), e-mails per recipient and per idempotency key (`mailer`), blocking calls on
the loop's thread (the renderer). They mark what they do on any active recorder
(`checks.recorder.mark`), so a timeline shows it beside the ASGI messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
import tempfile
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..blocking import blocking_call
from ..harness import _learner_frame_of
from ..recorder import mark
from ..services import pbkdf2_iterations
from ..timing import InFlight


DATABASE_PATH = os.path.join(tempfile.gettempdir(), f"fastapi-course-lesson08-{os.getpid()}.db")
DATABASE_URL = f"sqlite+aiosqlite:///{DATABASE_PATH}"
POLL_S = 0.02  # how often the outbox worker looks for pending messages
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
        return pbkdf2_iterations(self.target_s)

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
