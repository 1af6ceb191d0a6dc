"""Lesson 02's checks, against the lesson's own app code with right and wrong dependencies."""

from contextlib import contextmanager
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from checks.lesson02 import User, check_auth, check_caching, check_overrides, check_sessions, load_tenant
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace

pytestmark = pytest.mark.anyio
lesson = notebook_namespace("02_dependencies")


# ---- exercise 1: get_session ----------------------------------------------------------------

async def session_try_except(request: Request):
    async with request.state.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except Exception:
            await session.rollback()
            raise


async def session_begin(request: Request):
    async with request.state.sessionmaker() as session, session.begin():
        yield session  # `begin()` commits on success and rolls back on an exception


async def session_guide_style(request: Request):
    async with request.state.sessionmaker() as session:
        yield session
        await session.commit()


async def session_commit_in_finally(request: Request):
    async with request.state.sessionmaker() as session:
        try:
            yield session
        finally:
            await session.commit()


async def session_never_closed(request: Request):
    session = request.state.sessionmaker()
    try:
        yield session
        await session.commit()
    except Exception:
        await session.rollback()
        raise


def items_app(dependency, scope="function"):
    return lesson["items_app"](Annotated[AsyncSession, Depends(dependency, scope=scope)])


@pytest.mark.parametrize("dependency", [session_try_except, session_begin])
async def test_sessions_right_answers_pass(dependency):
    report = await check_sessions.report(items_app(dependency))
    assert report.passed, report.text()


@pytest.mark.parametrize(
    "app, failed, hint",
    [
        (lambda: items_app(session_guide_style, scope="request"), ["a failing commit reaches the client (409), not after the response"], "`scope`"),
        (lambda: items_app(session_try_except, scope="request"), ["a failing commit reaches the client (409), not after the response"], "after the response had been sent"),
        (lambda: items_app(session_commit_in_finally), ["a request that raises leaves no partial write"], "roll back"),
        (lambda: items_app(session_never_closed), ["every session is closed"], "async with"),
    ],
    ids=["guide get_db", "right body, default scope", "commit in finally", "never closed"],
)
async def test_sessions_wrong_answers_fail_with_their_hint(app, failed, hint):
    report = await check_sessions.report(app())
    assert names(report) == failed, report.text()
    assert hint in failure_text(report)
    assert_feedback_rules(report)


# ---- exercise 2: the chain --------------------------------------------------------------------

SessionDep = Annotated[AsyncSession, Depends(session_try_except, scope="function")]


async def user_by_key(session, key):
    return await session.scalar(select(User).where(User.api_key == key)) if key else None


def make_auth_app(current_user_status=401, www_authenticate=True, inactive_status=400, admin_status=403,
                  read_api_key=True):
    async def get_current_user(session: SessionDep, authorization: Annotated[str | None, Header()] = None,
                               x_api_key: Annotated[str | None, Header()] = None):
        key = x_api_key if read_api_key else None
        if authorization and authorization.startswith("Bearer "):
            key = authorization.removeprefix("Bearer ")
        user = await user_by_key(session, key)
        if user is None:
            headers = {"WWW-Authenticate": "Bearer"} if www_authenticate else None
            raise HTTPException(current_user_status, "Not authenticated", headers=headers)
        return user

    async def get_active_user(user: Annotated[User, Depends(get_current_user)]):
        if not user.is_active:
            raise HTTPException(inactive_status, "Inactive user")
        return user

    async def get_admin(user: Annotated[User, Depends(get_active_user)]):
        if not user.is_admin:
            raise HTTPException(admin_status, "Admins only")
        return user

    app = FastAPI(lifespan=lesson["lifespan"])

    @app.get("/me")
    async def me(user: Annotated[User, Depends(get_active_user)]):
        return {"email": user.email}

    @app.get("/admin/stats")
    async def admin_stats(admin: Annotated[User, Depends(get_admin)]):
        return {"ok": True}

    app.state.get_current_user = get_current_user
    return app


async def test_auth_right_answers_pass():
    for app in (make_auth_app(), lesson["auth_app"]):
        report = await check_auth.report(app)
        assert report.passed, report.text()


@pytest.mark.parametrize(
    "options, hint",
    [
        (dict(current_user_status=403), "401 means"),
        (dict(www_authenticate=False), "WWW-Authenticate"),
        (dict(admin_status=401), "403 means"),
        (dict(inactive_status=403), "inactive"),
        (dict(read_api_key=False), "X-API-Key"),
    ],
    ids=["403 for no credentials", "no WWW-Authenticate", "401 for a non-admin", "403 for inactive", "ignores X-API-Key"],
)
async def test_auth_wrong_answers_fail_with_their_hint(options, hint):
    report = await check_auth.report(make_auth_app(**options))
    assert hint in failure_text(report), report.text()
    assert_feedback_rules(report)


# ---- exercise 3: caching ---------------------------------------------------------------------

def usage_app(tenant_cache=True, id_cache=False):
    import uuid

    app = FastAPI()

    async def new_id():
        return uuid.uuid4().hex

    async def get_plan(tenant: Annotated[dict, Depends(load_tenant, use_cache=tenant_cache)]):
        return tenant["plan"]

    async def get_quota(tenant: Annotated[dict, Depends(load_tenant, use_cache=tenant_cache)]):
        return tenant["quota"]

    Id = Annotated[str, Depends(new_id, use_cache=id_cache)]

    @app.get("/usage")
    async def usage(plan: Annotated[str, Depends(get_plan)], quota: Annotated[int, Depends(get_quota)], a: Id, b: Id):
        return {"plan": plan, "quota": quota, "ids": [a, b]}

    return app


async def test_caching_right_answers_pass():
    for app in (usage_app(), lesson["usage_app"]):
        report = await check_caching.report(app)
        assert report.passed, report.text()


@pytest.mark.parametrize(
    "app, failed",
    [
        (usage_app(tenant_cache=False), ["load_tenant runs once per request"]),
        (usage_app(id_cache=True), ["the two request ids differ"]),
    ],
    ids=["use_cache=False on the lookup", "cached ids"],
)
async def test_caching_wrong_answers_fail(app, failed):
    report = await check_caching.report(app)
    assert names(report) == failed
    assert_feedback_rules(report)


# ---- exercise 4: overrides ---------------------------------------------------------------------

def as_user_right(app, user):
    @contextmanager
    def block():
        get_current_user = app.state.get_current_user
        app.dependency_overrides[get_current_user] = lambda: user
        try:
            yield
        finally:
            del app.dependency_overrides[get_current_user]

    return block()


def as_user_leaks(app, user):
    app.dependency_overrides[app.state.get_current_user] = lambda: user
    return contextmanager(lambda: (yield))()


def as_user_not_a_context_manager(app, user):
    app.dependency_overrides[app.state.get_current_user] = lambda: user


async def test_overrides_right_answers_pass():
    assert (await check_overrides.report(as_user_right, make_auth_app())).passed
    report = await check_overrides.report(lesson["as_user"], lesson["auth_app"])
    assert report.passed, report.text()


@pytest.mark.parametrize(
    "as_user, failed, hint",
    [
        (as_user_leaks, ["after the block, the override is gone"], "Remove the override"),
        (as_user_not_a_context_manager, ["as_user(app, user) works as a `with` block"], "context manager"),
    ],
    ids=["override left behind", "not a context manager"],
)
async def test_overrides_wrong_answers_fail(as_user, failed, hint):
    report = await check_overrides.report(as_user, make_auth_app())
    assert names(report) == failed, report.text()
    assert hint in failure_text(report)


async def test_the_checks_own_code_raises_no_warning():
    from conftest import warnings_from_checks

    assert await warnings_from_checks(
        check_sessions.report(items_app(session_guide_style, scope="request")),
        check_auth.report(make_auth_app(www_authenticate=False)),
        check_caching.report(usage_app(id_cache=True)),
        check_overrides.report(as_user_leaks, make_auth_app()),
    ) == []
