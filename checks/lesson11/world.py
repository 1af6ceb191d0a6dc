"""Lesson 11's stand-in world: a blog database (users and their posts) on a real SQLite file
through aiosqlite, counted. No judging here (judge.py).

`Counts` listens to an engine's own events: `before_cursor_execute` on `engine.sync_engine`
(one per statement sent to the database; an `executemany` counts once), and the pool's
`connect` / `close` / `checkout` / `checkin` (connections open, connections held by sessions, and
the peak of each). `EngineWatch` attaches a `Counts` to every engine created while it is active
(the learner's too) and disposes of them all at the end.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import uuid
from typing import Annotated

from fastapi import Depends
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ForeignKey, String, event, func, insert, select
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

HOLD_S = 0.05  # how long one report holds its database connection
POOL_TIMEOUT_S = 0.05  # how long a request may wait for a pooled connection before it fails


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    posts: Mapped[list["Post"]] = relationship(back_populates="author", order_by="Post.id")


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    author: Mapped[User] = relationship(back_populates="posts")


class PostOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    title: str


class UserOut(BaseModel):
    """A user and their posts, read from the ORM objects (`from_attributes`): reading `posts`
    is what loads them, if they were not loaded yet."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    posts: list[PostOut]


class PostIn(BaseModel):
    """One row of a batch import."""

    title: str = Field(min_length=1, max_length=100)
    user_id: int = Field(ge=1)


class Imported(BaseModel):
    imported: int


# ---- counting -------------------------------------------------------------------------------------

class Counts:
    """Statements and connections of one engine, from its events.

    `statements`: SQL statements sent (`executemany` of many rows: one). `open` / `peak_open`:
    DBAPI connections open now and at most; `held` / `peak_held`: connections checked out of the
    pool by sessions now and at most; `detached`: checked-out connections nobody gave back, which
    the garbage collector found. `reset()` starts counting afresh (peaks from what is now)."""

    def __init__(self, engine: AsyncEngine, parent: "Counts | None" = None) -> None:
        self.engine, self.parent = engine, parent
        self.open = self.held = 0
        self._out: dict = {}  # connections checked out and not given back: record id -> proxy
        self.reset()
        sync = engine.sync_engine
        event.listen(sync, "before_cursor_execute", self._statement)
        for name in ("connect", "close", "checkout", "checkin", "detach", "close_detached"):
            event.listen(sync, name, getattr(self, f"_{name}"))

    def reset(self) -> None:
        self.statements: list[str] = []
        self.peak_open, self.peak_held = self.open, self.held
        self.detached = 0  # connections never given back, cleaned up by the garbage collector

    def _statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self._add(statement=" ".join(statement.split())[:80])

    def _connect(self, *args) -> None:
        self._add(open=1)

    def _close(self, *args) -> None:
        self._add(open=-1)

    def _detach(self, dbapi_connection, record) -> None:
        # A checked-out connection nobody closed, found by the garbage collector: SQLAlchemy
        # detaches it from the pool and terminates it (with an SAWarning).
        if self._out.pop(id(record), None) is not None:
            self._add(held=-1, detached=1)

    def _close_detached(self, dbapi_connection) -> None:
        self._add(open=-1)

    def _checkout(self, dbapi_connection, record, proxy) -> None:
        self._out[id(record)] = proxy
        self._add(held=1)

    def _checkin(self, dbapi_connection, record) -> None:
        self._out.pop(id(record), None)
        self._add(held=-1)

    def _add(self, open: int = 0, held: int = 0, statement: str | None = None, detached: int = 0) -> None:
        self.detached += detached
        self.open += open
        self.held += held
        self.peak_open, self.peak_held = max(self.peak_open, self.open), max(self.peak_held, self.held)
        if statement is not None:
            self.statements.append(statement)
        if self.parent is not None:  # a watch's totals over all its engines
            self.parent._add(open, held, statement, detached)

    def __repr__(self) -> str:
        return (f"{len(self.statements)} statements; connections open {self.open} (peak {self.peak_open}), "
                f"held {self.held} (peak {self.peak_held})")


def counted(engine: AsyncEngine) -> Counts:
    """Count `engine`'s statements and connections from now on."""
    return Counts(engine)


class EngineWatch(Counts):
    """Every `AsyncEngine` created while active gets a `Counts` (`watch.engines`), and the watch
    counts their totals (`watch.peak_open`: most connections open at once, over all engines).
    `dispose()` disposes of them all, so no connection outlives the check."""

    _active: list["EngineWatch"] = []
    _original = None

    def __init__(self) -> None:
        self.engine, self.parent = None, None
        self.open = self.held = 0
        self._out = {}
        self.reset()
        self.counts: list[Counts] = []

    def __enter__(self) -> "EngineWatch":
        if not EngineWatch._active:
            original = EngineWatch._original = AsyncEngine.__init__

            def watched(engine, *args, **kwargs):
                original(engine, *args, **kwargs)
                for watch in EngineWatch._active:
                    if not any(c.engine.sync_engine is engine.sync_engine for c in watch.counts):
                        watch.counts.append(Counts(engine, parent=watch))

            AsyncEngine.__init__ = watched
        EngineWatch._active.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        EngineWatch._active.remove(self)
        if not EngineWatch._active:
            AsyncEngine.__init__ = EngineWatch._original

    async def dispose(self) -> None:
        """Give back the connections that sessions never closed, then dispose of every engine."""
        for counts in self.counts:
            for proxy in list(counts._out.values()):
                try:
                    await greenlet_spawn(proxy.close)
                except Exception:
                    pass
            try:
                await counts.engine.dispose()
            except Exception:
                pass


# ---- the database ---------------------------------------------------------------------------------

class Database:
    """A fresh blog database in a temporary SQLite file: `users` users with 0 to 4 posts each.

        async with Database(users=30) as db:
            db.counts.statements, db.sessions(), db.SessionDep ...

    `sessions` is an `async_sessionmaker(..., expire_on_commit=False)`; `SessionDep` the
    dependency that gives each request its own session. Leaving the block disposes of the
    engine and deletes the file."""

    def __init__(self, users: int = 30, seed: int | None = None, **engine_kwargs) -> None:
        self.path = os.path.join(tempfile.gettempdir(), f"fastapi-course-lesson11-{uuid.uuid4().hex}.db")
        self.url = f"sqlite+aiosqlite:///{self.path}"
        self.users, self.seed, self.engine_kwargs = users, seed, engine_kwargs

    async def __aenter__(self) -> "Database":
        self.engine = create_async_engine(self.url, **self.engine_kwargs)
        self.counts = counted(self.engine)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        sessions = self.sessions

        async def get_session():
            async with sessions() as session:
                yield session

        self.get_session = get_session
        self.SessionDep = Annotated[AsyncSession, Depends(get_session)]
        rng = random.Random(self.seed)
        async with self.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
            await connection.execute(insert(User), [{"name": f"user {i + 1}"} for i in range(self.users)])
            posts = [{"title": f"post {n + 1} of user {i + 1}", "user_id": i + 1}
                     for i in range(self.users) for n in range(rng.randint(0, 4))]
            if posts:
                await connection.execute(insert(Post), posts)
        self.counts.reset()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.engine.dispose()
        try:
            os.remove(self.path)
        except OSError:
            pass

    async def count(self, model=Post) -> int:
        """Rows in a table, read on a connection of its own (not counted as the app's)."""
        before = list(self.counts.statements)
        async with self.engine.connect() as connection:
            found = await connection.scalar(select(func.count()).select_from(model))
        self.counts.statements = before
        return found

    async def expected_page(self, limit: int) -> list[dict]:
        """The first `limit` users by id, with their posts by id, as JSON."""
        before = list(self.counts.statements)
        async with self.engine.connect() as connection:
            users = (await connection.execute(select(User.id, User.name).order_by(User.id).limit(limit))).all()
            posts = (await connection.execute(select(Post.id, Post.title, Post.user_id).order_by(Post.id))).all()
        self.counts.statements = before
        return [{"id": u.id, "name": u.name, "posts": [{"id": p.id, "title": p.title} for p in posts if p.user_id == u.id]}
                for u in users]


async def slow_report(session: AsyncSession) -> dict:
    """A report that holds its connection for HOLD_S: one query, then work inside the transaction."""
    users = await session.scalar(select(func.count()).select_from(User))
    await asyncio.sleep(HOLD_S)
    return {"users": users}
