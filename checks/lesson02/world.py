"""Lesson 02's world (the checks are in judge.py), dependencies: a session per request on real SQLite, a dependency chain,
a session of its own where a record must outlive the request's transaction, and overrides.

The lesson's database is a real SQLite file through aiosqlite. Sessions count themselves
(`stats`: opened, closed, which session flushed), so a check can see a session left open or
one session shared by concurrent requests; the checks read the database's real state through
a connection of their own. The seed users get new random API keys at every start of the app,
so an answer that hard-codes a key fails.
"""

import asyncio
import itertools
import weakref
import os
import secrets
import tempfile
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, HTTPException
from sqlalchemy import Boolean, ForeignKey, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


DATABASE_PATH = os.path.join(tempfile.gettempdir(), f"fastapi-course-lesson02-{os.getpid()}.db")
DATABASE_URL = f"sqlite+aiosqlite:///{DATABASE_PATH}"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    api_key: Mapped[str] = mapped_column(String(64), unique=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class Attempt(Base):
    """A record that an order was tried, kept whatever became of the order."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))


# email, name, active, admin (API keys are drawn afresh at every start)
SEED_USERS = [
    ("ada@example.com", "Ada", True, True),
    ("bob@example.com", "Bob", True, False),
    ("cyd@example.com", "Cyd", False, False),
    ("dot@example.com", "Dot", False, True),  # an admin whose account was deactivated
]


class SessionStats:
    """Sessions opened and closed since the last reset, and which session each flush came from."""

    def __init__(self) -> None:
        self._serials = itertools.count(1)
        self._closed_event: asyncio.Event | None = None
        self.open_sessions: weakref.WeakSet = weakref.WeakSet()
        self.reset()

    def reset(self) -> None:
        self.opened = 0
        self.closed = 0
        self.flushed_by: list[int] = []

    def _on_close(self) -> None:
        self.closed += 1
        if self._closed_event is not None:
            self._closed_event.set()

    async def close_leftovers(self) -> None:
        """Close the sessions a learner's code left open: one holding a write keeps SQLite locked for
        every later request, and the next check, until it is garbage-collected."""
        for session in list(self.open_sessions):
            try:
                await session.close()
            except Exception:  # a session in a broken state: it is going away anyway
                pass

    async def until_closed(self, timeout: float = 0.25) -> None:
        """Wait (bounded, woken by each close) until every session opened so far is closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.closed < self.opened and loop.time() < deadline:
            self._closed_event = asyncio.Event()
            try:
                await asyncio.wait_for(self._closed_event.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break
            finally:
                self._closed_event = None


stats = SessionStats()


class CountingSession(AsyncSession):
    """An AsyncSession that counts itself opened and closed (once, however often closed)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._counted_closed = False
        self.serial = next(stats._serials)
        stats.opened += 1
        stats.open_sessions.add(self)

    async def flush(self, objects=None) -> None:
        stats.flushed_by.append(self.serial)
        await super().flush(objects)

    async def close(self) -> None:
        if not self._counted_closed:
            self._counted_closed = True
            stats.open_sessions.discard(self)
            stats._on_close()
        await super().close()


def _new_key(name: str) -> str:
    return f"key-{name.lower()}-{secrets.token_hex(8)}"


async def reset_database(engine) -> None:
    """A fresh schema with the seed users (new API keys each time): each start begins the same way."""
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
        await connection.execute(
            User.__table__.insert(),
            [dict(email=e, name=n, api_key=_new_key(n), is_active=a, is_admin=s) for e, n, a, s in SEED_USERS],
        )


@asynccontextmanager
async def database():
    """A connection of the checks' own to the lesson's database, to read its real state."""
    engine = create_async_engine(DATABASE_URL)
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


async def _count(model, *where) -> int:
    async with database() as db:
        return await db.scalar(select(func.count()).select_from(model).where(*where))


# ---- the trace of when a dependency's code runs (the lesson's demo) ---------------------------

def log_response_start(app, events: list):
    """Wrap an ASGI app: note in `events` the moment its response starts (status and headers sent)."""

    async def logged_app(scope, receive, send):
        async def logged_send(message):
            if message["type"] == "http.response.start":
                events.append(f"response sent ({message['status']})")
            await send(message)

        await app(scope, receive, logged_send if scope["type"] == "http" else send)

    return logged_app


# ---- the course's own chain, for the overrides check ----------------------------------------

def course_chain(get_current_user):
    """`ActiveUser`, `AdminUser` built the course's way on top of a given `get_current_user`."""

    async def active_user(user: Annotated[User, Depends(get_current_user)]) -> User:
        if not user.is_active:
            raise HTTPException(400, "Inactive user")
        return user

    async def admin(user: Annotated[User, Depends(active_user)]) -> User:
        if not user.is_admin:
            raise HTTPException(403, "Admins only")
        return user

    return Annotated[User, Depends(active_user)], Annotated[User, Depends(admin)]


