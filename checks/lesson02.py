"""Lesson 02, dependencies: a session per request on real SQLite, a dependency chain,
per-request caching and overrides.

The lesson's database is a real SQLite file through aiosqlite. Sessions are counted
(`stats`) so a check can see a session that was never closed; the checks read the
database's real state through a connection of their own.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
from contextlib import asynccontextmanager

from fastapi import Request
from sqlalchemy import Boolean, ForeignKey, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .harness import describe_exception, serve
from .observe import json_body, show_response, status_hint
from .runner import check

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


# email, name, api key, active, admin
SEED_USERS = [
    ("ada@example.com", "Ada", "key-ada-admin", True, True),
    ("bob@example.com", "Bob", "key-bob-user", True, False),
    ("cyd@example.com", "Cyd", "key-cyd-inactive", False, False),
]


class SessionStats:
    """How many sessions were opened and closed since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.opened = 0
        self.closed = 0


stats = SessionStats()


class CountingSession(AsyncSession):
    """An AsyncSession that counts itself opened and closed (once, however often closed)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._counted_closed = False
        stats.opened += 1

    async def close(self) -> None:
        if not self._counted_closed:
            self._counted_closed = True
            stats.closed += 1
        await super().close()


async def reset_database(engine) -> None:
    """A fresh schema with the seed users: each start of the lesson's app begins the same way."""
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
        await connection.execute(
            User.__table__.insert(),
            [dict(email=e, name=n, api_key=k, is_active=a, is_admin=s) for e, n, k, a, s in SEED_USERS],
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


# ---- per-request caching ------------------------------------------------------------------

TENANTS = {"acme": {"plan": "pro", "quota": 1000}, "globex": {"plan": "free", "quota": 10}}


class Lookups:
    calls = 0


tenant_lookups = Lookups()


async def load_tenant(request: Request) -> dict:
    """An expensive lookup (think: a database or a remote call), counted."""
    tenant_lookups.calls += 1
    await asyncio.sleep(0.005)
    return TENANTS.get(request.headers.get("x-tenant", ""), {"plan": "none", "quota": 0})


# ---- exercise 1: a session per request ------------------------------------------------------

@check("Lesson 02 · get_session: commit, roll back, close, before the response", limit_s=15)
async def check_sessions(report, app):
    title = f"notebook-{random.randint(1000, 9999)}"
    email = f"dee{random.randint(100, 999)}@example.com"
    stats.reset()
    async with serve(app, raise_app_exceptions=False) as client:
        response = await client.post("/items", json={"title": title})
        async with database() as db:
            saved = await db.scalar(select(func.count()).select_from(Item).where(Item.title == title))
        if response.status_code != 201:
            report.fail("POST /items answers 201", observed=show_response(response, client), expected="201",
                        hint=status_hint(response, "POST", "/items", client))
            return
        report.add(
            "a request that succeeds is committed", saved == 1,
            observed=f"POST /items answered 201; rows titled {title!r} in the database afterwards: {saved}",
            expected="1 row",
            hint="After the route has run without raising, commit the session the dependency yielded.",
        )

        failing_title = title + "-failed"
        response = await client.post("/items", params={"fail": "true"}, json={"title": failing_title})
        async with database() as db:
            partial = await db.scalar(select(func.count()).select_from(Item).where(Item.title == failing_title))
        report.add(
            "a request that raises leaves no partial write", partial == 0 and response.status_code == 500,
            observed=(f"POST /items?fail=true (adds a row, then raises) answered {response.status_code}; "
                      f"its row is in the database {partial} time(s)"),
            expected="500, and no row",
            hint="When the code after `yield` sees an exception, roll back instead of committing, and re-raise it.",
        )

        first = await client.post("/users", json={"email": email, "name": "Dee"})
        second = await client.post("/users", json={"email": email, "name": "Dee again"})
        errors = [str(error.exception) for error in client.errors_for("/users")]
        async with database() as db:
            count = await db.scalar(select(func.count()).select_from(User).where(User.email == email))
        late = [e for e in errors if "response already started" in e]
        report.add(
            "a failing commit reaches the client (409), not after the response",
            first.status_code == 201 and second.status_code == 409 and count == 1,
            observed=(f"first POST /users {first.status_code}, the same email again {second.status_code}; "
                      f"users with that email: {count}"
                      + ("; the commit failed after the response had been sent" if late else "")),
            expected="201, then 409 (the unique email), 1 user",
            hint=("With the default scope, the code after `yield` runs after the response is sent, so a failing "
                  "commit cannot change it. `Depends(...)` takes a `scope`: which one ends the dependency first?"),
        )
    report.add(
        "every session is closed", stats.opened == stats.closed and stats.opened > 0,
        observed=f"sessions opened: {stats.opened}, closed: {stats.closed}",
        expected="as many closed as opened",
        hint="Open the session with `async with`, so it is closed whatever happens.",
    )


# ---- exercise 2: current user → active user → admin ------------------------------------------

@check("Lesson 02 · the dependency chain: current user → active user → admin", limit_s=15)
async def check_auth(report, app):
    admin, user, inactive = (u[2] for u in SEED_USERS)
    cases = [
        ("GET", "/me", {}, 401, "no credentials"),
        ("GET", "/me", {"Authorization": "Bearer not-a-key"}, 401, "an unknown bearer token"),
        ("GET", "/me", {"Authorization": f"Bearer {user}"}, 200, "an active user's bearer token"),
        ("GET", "/me", {"X-API-Key": user}, 200, "an active user's X-API-Key"),
        ("GET", "/me", {"Authorization": f"Bearer {inactive}"}, 400, "an inactive user's token"),
        ("GET", "/admin/stats", {"Authorization": f"Bearer {user}"}, 403, "a non-admin's token"),
        ("GET", "/admin/stats", {"X-API-Key": admin}, 200, "an admin's key"),
        ("GET", "/admin/stats", {}, 401, "no credentials"),
    ]
    hints = {
        401: ("401 means 'we do not know who you are': no or unknown credentials. Raise HTTPException(401) "
              "with a `WWW-Authenticate: Bearer` header."),
        400: "The token is valid but the user is inactive: the active-user dependency answers 400.",
        403: "403 means 'we know you, and you may not': a known user who is not an admin.",
        200: "Look the user up by api_key, from `Authorization: Bearer <key>` or from `X-API-Key`.",
    }
    async with serve(app, raise_app_exceptions=False) as client:
        for method, path, headers, expected, who in cases:
            response = await client.request(method, path, headers=headers)
            name = f"{method} {path} with {who} → {expected}"
            if response.status_code >= 500:  # broken code: one report of it is enough
                report.fail(name, observed=show_response(response, client), expected=str(expected),
                            hint=status_hint(response, method, path, client))
                return
            if response.status_code != expected:
                report.fail(name, observed=show_response(response, client), expected=str(expected),
                            hint=hints[expected])
                continue
            if expected == 401 and "bearer" not in response.headers.get("www-authenticate", "").lower():
                report.fail(name + " with WWW-Authenticate", observed=f"headers: {dict(response.headers)}",
                            expected="WWW-Authenticate: Bearer",
                            hint="A 401 tells the client how to authenticate: pass `headers=` to HTTPException.")
                continue
            body = json_body(response)
            if path == "/me" and expected == 200 and (not isinstance(body, dict) or body.get("email") != SEED_USERS[1][0]):
                report.fail(name, observed=show_response(response), expected=f'{{"email": "{SEED_USERS[1][0]}", ...}}',
                            hint="/me returns the user the token belongs to.")
                continue
            report.add(name, True)


# ---- exercise 3: per-request caching -----------------------------------------------------------

@check("Lesson 02 · one lookup per request, fresh ids where asked", limit_s=10)
async def check_caching(report, app):
    tenant = random.choice(sorted(TENANTS))
    tenant_lookups.calls = 0
    async with serve(app, raise_app_exceptions=False) as client:
        responses = [await client.get("/usage", headers={"X-Tenant": tenant}) for _ in range(3)]
    first = responses[0]
    if first.status_code != 200:
        report.fail("GET /usage answers 200", observed=show_response(first, client), expected="200",
                    hint=status_hint(first, "GET", "/usage", client))
        return
    bodies = [json_body(r) or {} for r in responses]
    expected = TENANTS[tenant]
    report.add(
        "plan and quota come from the tenant", all(b.get("plan") == expected["plan"] and b.get("quota") == expected["quota"] for b in bodies),
        observed=f"first body: {bodies[0]}", expected=f"plan {expected['plan']!r}, quota {expected['quota']}",
        hint="get_plan and get_quota both take the tenant from load_tenant.",
    )
    report.add(
        "load_tenant runs once per request", tenant_lookups.calls == len(responses),
        observed=f"{tenant_lookups.calls} lookups for {len(responses)} requests",
        expected=f"{len(responses)}",
        hint=("FastAPI calls a dependency once per request and shares its value with every dependency that "
              "needs it — unless told otherwise."),
    )
    ids = [b.get("ids") for b in bodies]
    fresh = all(isinstance(i, list) and len(i) == 2 and i[0] != i[1] for i in ids)
    report.add(
        "the two request ids differ", fresh,
        observed=f"ids: {ids[0]}", expected="two different ids in each response",
        hint="Asking for the same dependency twice gives the cached value twice. `Depends` has a switch for that.",
    )


# ---- exercise 4: overrides ---------------------------------------------------------------------

@check("Lesson 02 · dependency_overrides: run as someone else, then clean up", limit_s=10)
async def check_overrides(report, as_user, app):
    ghost = User(id=999, email=f"ghost{random.randint(10, 99)}@example.com", name="Ghost",
                      api_key="-", is_active=True, is_admin=True)
    before = dict(app.dependency_overrides)
    async with serve(app, raise_app_exceptions=False) as client:
        try:
            with as_user(app, ghost):
                me = await client.get("/me")
                stats_response = await client.get("/admin/stats")
        except Exception as exc:
            report.fail("as_user(app, user) works as a `with` block", observed=describe_exception(exc),
                        hint="as_user is a generator turned into a context manager: set the override, `yield`, "
                             "then remove it.")
            return
        report.add(
            "inside the block, requests run as the given user",
            me.status_code == 200 and (json_body(me) or {}).get("email") == ghost.email and stats_response.status_code == 200,
            observed=f"/me → {show_response(me, client)}; /admin/stats → {stats_response.status_code}",
            expected=f"/me → 200 with {ghost.email}, /admin/stats → 200",
            hint="Map the dependency that finds the current user to a function that returns the given user.",
        )
        after = await client.get("/me")
    report.add(
        "after the block, the override is gone", after.status_code == 401 and app.dependency_overrides == before,
        observed=f"/me without credentials → {after.status_code}; overrides left: {len(app.dependency_overrides)}",
        expected="401, and the overrides as they were",
        hint="Remove the override when the block ends, even if it ends with an exception (`try`/`finally`).",
    )
