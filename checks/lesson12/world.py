"""Lesson 12's app under test: a small todo API with a lifespan, a session dependency and an
auth dependency, as a project's `main.py` would hold it. No judging here (judge.py).

`todo_app(database_url)` makes the app. Its lifespan opens the database named by the URL (a
file: data outlives one run of the lifespan, as a real database does), creates the tables and
adds a welcome todo for alice when the table is empty, and disposes the engine at shutdown.
`flaws` plants bugs for the check; the notebook never passes it.
"""


import atexit
import os
import shutil
import tempfile
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import String, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TOKENS = {"alice-token": "alice", "bob-token": "bob"}  # the demo users' API tokens
WELCOME = "Read the course"  # the todo the lifespan gives alice in an empty database


class Base(DeclarativeBase):
    pass


class TodoRow(Base):
    __tablename__ = "todos"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    owner: Mapped[str] = mapped_column(String(50))
    done: Mapped[bool] = mapped_column(default=False)


class TodoIn(BaseModel):
    title: str = Field(min_length=1, max_length=100)


class TodoInLoose(BaseModel):  # a planted bug: the validation dropped
    title: str


class Todo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    owner: str
    done: bool


async def create_tables(engine: AsyncEngine) -> None:
    """Create the app's tables in a database (an engine of your own, in a test)."""
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)


async def get_session(request: Request):
    """One session per request, from the sessionmaker the lifespan put in the app's state."""
    async with request.state.sessions() as session:
        yield session


async def current_user(authorization: Annotated[str | None, Header()] = None) -> str:
    """The user named by `Authorization: Bearer <token>`; 401 without a known token."""
    token = (authorization or "").removeprefix("Bearer ").strip()
    if token not in TOKENS:
        raise HTTPException(status_code=401, detail="a valid token is required",
                            headers={"WWW-Authenticate": "Bearer"})
    return TOKENS[token]


async def _lenient_user(authorization: Annotated[str | None, Header()] = None) -> str:  # a planted bug
    token = (authorization or "").removeprefix("Bearer ").strip()
    return TOKENS.get(token, "alice")


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def todo_app(database_url: str, *, flaws: frozenset[str] = frozenset()) -> FastAPI:
    """The todo API on the database at `database_url`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = create_async_engine(database_url)
        try:
            await create_tables(engine)
            sessions = async_sessionmaker(engine, expire_on_commit=False)
            async with sessions() as session:
                if not await session.scalar(select(func.count()).select_from(TodoRow)):
                    session.add(TodoRow(title=WELCOME, owner="alice"))
                    await session.commit()
            yield {"sessions": sessions}
        finally:
            await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    User = Annotated[str, Depends(_lenient_user if "auth skipped" in flaws else current_user)]
    Incoming = TodoInLoose if "validation dropped" in flaws else TodoIn

    @app.post("/todos", status_code=200 if "created is 200" in flaws else 201)
    async def create_todo(todo: Incoming, user: User, session: SessionDep) -> Todo:
        row = TodoRow(title=todo.title, owner=user)
        session.add(row)
        await session.flush()  # gives the row its id
        if "no commit" not in flaws:
            await session.commit()
        return row

    @app.get("/todos")
    async def list_todos(user: User, session: SessionDep, request: Request) -> list[Todo]:
        if "own session" in flaws:  # opens a session of its own: an override of get_session misses it
            async with request.state.sessions() as session:
                return list(await session.scalars(select(TodoRow).where(TodoRow.owner == user).order_by(TodoRow.id)))
        query = select(TodoRow).order_by(TodoRow.id)
        if "everyone's list" not in flaws:
            query = query.where(TodoRow.owner == user)
        return list(await session.scalars(query))

    @app.get("/todos/{todo_id}")
    async def read_todo(todo_id: int, user: User, session: SessionDep) -> Todo | None:
        row = await session.get(TodoRow, todo_id)
        if row is None:
            if "missing is null" in flaws:
                return None
            raise HTTPException(status_code=404, detail="no such todo")
        if row.owner != user and "anyone reads" not in flaws:
            raise HTTPException(status_code=404, detail="no such todo")
        return row

    return app


def dev_database_url() -> str:
    """A database file of the notebook's own, removed when the kernel ends."""
    folder = tempfile.mkdtemp(prefix="course-lesson12-")
    atexit.register(shutil.rmtree, folder, True)
    return f"sqlite+aiosqlite:///{os.path.join(folder, 'todo.db')}"
