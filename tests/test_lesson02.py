"""Lesson 02's checks, against the lesson's own app code with right and wrong dependencies.

Each exercise has several different right answers, which must pass, and at least eight
realistic wrong ones, each failing at its own item with the hint about its own cause.
"""

from contextlib import ExitStack, asynccontextmanager, contextmanager
from typing import Annotated
from unittest import mock

import pytest
from fastapi import BackgroundTasks, Depends, Header, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from checks.lesson02 import (
    User, check_attempts, check_auth, check_overrides, check_sessions,
)
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace

pytestmark = pytest.mark.anyio
lesson = notebook_namespace("02_dependencies")


def assert_fails_at(report, item: str, hint: str):
    """`item` (the start of a failed item's name) failed, with `hint` in that item's hint."""
    failed = [i for i in report.failures if i.name.startswith(item)]
    assert failed, report.text()
    assert hint in failed[0].hint, report.text()
    assert_feedback_rules(report)


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


async def session_try_else_finally(request: Request):
    session = request.state.sessionmaker()
    try:
        yield session
    except BaseException:
        await session.rollback()
        raise
    else:
        await session.commit()
    finally:
        await session.close()


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


async def session_closed_on_success_only(request: Request):
    session = request.state.sessionmaker()
    try:
        yield session
        await session.commit()
        await session.close()
    except Exception:
        await session.rollback()
        raise


async def session_swallows(request: Request):
    async with request.state.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except Exception:
            await session.rollback()  # ...and the exception is gone


async def session_turns_errors_into_500(request: Request):
    async with request.state.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except Exception:
            await session.rollback()
            raise HTTPException(500, "database error")


async def session_cleanup_not_in_finally(request: Request):
    session = request.state.sessionmaker()
    yield session  # a raising route throws here: nothing below runs
    await session.commit()
    await session.close()


async def session_no_commit(request: Request):
    async with request.state.sessionmaker() as session:
        yield session  # closing discards everything


def shared_session():
    """One session for every request (made on first use, kept in a module-level dict)."""
    kept = {}

    async def session_shared(request: Request):
        if "session" not in kept:
            kept["session"] = request.state.sessionmaker()
        session = kept["session"]
        try:
            yield session
            await session.commit()
        except Exception:
            await session.rollback()
            raise

    return session_shared


def session_dep(dependency, scope="function"):
    return Annotated[AsyncSession, Depends(dependency, scope=scope)]


async def sessions_report(dependency, scope="function"):
    return await check_sessions.report(lesson["items_app"], SessionDep=session_dep(dependency, scope))


@pytest.mark.parametrize("dependency", [session_try_except, session_begin, session_try_else_finally, lesson["get_session"]],
                         ids=["try/except", "session.begin()", "try/except/else/finally", "notebook"])
async def test_sessions_right_answers_pass(dependency):
    report = await sessions_report(dependency)
    assert report.passed, report.text()


async def test_sessions_notebook_alias_passes():
    report = await check_sessions.report(lesson["items_app"], SessionDep=lesson["SessionDep"])
    assert report.passed, report.text()


LATE = "a failing commit reaches the client (409)"
SESSIONS_WRONG = {
    "guide get_db, default scope": (lambda: session_dep(session_guide_style, None), LATE, "`help(Depends)`"),
    "right body, default scope": (lambda: session_dep(session_try_except, None), LATE, "after the response has been sent"),
    "right body, scope='request'": (lambda: session_dep(session_try_except, "request"), LATE, "scope='request' ends"),
    "scope misspelled": (lambda: session_dep(session_try_except, "functon"), LATE, "is not a scope FastAPI knows"),
    "commit in finally": (lambda: session_dep(session_commit_in_finally), "a request that raises is rolled back",
                          "saved although the route raised"),
    "never closed": (lambda: session_dep(session_never_closed), "every session is closed", "async with"),
    "closed on success only": (lambda: session_dep(session_closed_on_success_only), "every session is closed",
                               "when an exception passes through"),
    "swallows the exception": (lambda: session_dep(session_swallows), "a request that raises is rolled back",
                               "re-raise it"),
    "turns errors into HTTPException(500)": (lambda: session_dep(session_turns_errors_into_500),
                                             "a route's HTTPException reaches the client unchanged", "very exception"),
    "one session shared by all requests": (lambda: session_dep(shared_session()), "8 concurrent requests get 8 sessions",
                                           "One AsyncSession per request"),
    "no commit": (lambda: session_dep(session_no_commit), "a request that succeeds is committed", "commit"),
    "clean-up after yield, not in finally": (lambda: session_dep(session_cleanup_not_in_finally),
                                             "every session is closed", "async with"),
    "a Depends, not an Annotated alias": (lambda: Depends(session_try_except, scope="function"),
                                          "SessionDep is Annotated", "Annotated[AsyncSession"),
}


@pytest.mark.parametrize("mistake", SESSIONS_WRONG, ids=list(SESSIONS_WRONG))
async def test_sessions_wrong_answers_fail_with_their_hint(mistake):
    alias, item, hint = SESSIONS_WRONG[mistake]
    report = await check_sessions.report(lesson["items_app"], SessionDep=alias())
    assert_fails_at(report, item, hint)


async def test_sessions_default_scope_says_the_commit_came_after_the_response():
    report = await sessions_report(session_try_except, None)
    assert names(report) == [LATE + ", before the response"], report.text()
    assert "'response already started'" in report.failures[0].observed


async def test_sessions_a_leaked_session_stops_the_check_at_once():
    """Clean-up that a raising route skips leaves a session holding SQLite's write lock: the check says so at
    once, instead of running into 'database is locked' (5 s each) and its time limit."""
    report = await sessions_report(session_cleanup_not_in_finally)
    assert names(report)[-1] == "every session is closed, whatever happened", report.text()
    assert "after a route that raised: 1 of 1" in report.failures[-1].observed
    assert report.metrics["elapsed_s"] < 5, report.metrics


async def test_sessions_swallowed_commit_error_is_told_apart():
    report = await sessions_report(session_swallows)
    late = [i for i in report.failures if i.name.startswith(LATE)]
    assert late and "IntegrityError must leave get_session" in late[0].hint, report.text()


# ---- exercise 2: the chain --------------------------------------------------------------------

SessionDep = session_dep(session_try_except)


def bearer_partition(authorization, x_api_key):
    key = x_api_key
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        key = token if scheme.lower() == "bearer" else None
    return key


def bearer_case_sensitive(authorization, x_api_key):
    if authorization and authorization.startswith("Bearer "):
        return authorization.removeprefix("Bearer ")
    return x_api_key


def last_word(authorization, x_api_key):
    return authorization.split()[-1] if authorization else x_api_key


def second_word(authorization, x_api_key):
    return authorization.split()[1] if authorization else x_api_key  # IndexError on "Bearer"


def bearer_only(authorization, x_api_key):
    return bearer_partition(authorization, None)


async def exact(session, key):
    return await session.scalar(select(User).where(User.api_key == key)) if key else None


async def any_case(session, key):
    return await session.scalar(select(User).where(func.lower(User.api_key) == key.lower())) if key else None


async def prefix(session, key):
    return await session.scalar(select(User).where(User.api_key.startswith(key))) if key else None


async def sql_from_header(session, key):
    if not key:
        return None
    statement = select(User).from_statement(text(f"SELECT * FROM users WHERE api_key = '{key}'"))
    return (await session.scalars(statement)).first()


def chain(extract=bearer_partition, lookup=exact, unknown=401, www_authenticate=True, inactive=400, not_admin=403,
          admin_on=None, sync=False, no_return=None):
    """ActiveUser and AdminUser aliases of a chain built with the given parts."""

    async def get_current_user(session: SessionDep, authorization: Annotated[str | None, Header()] = None,
                               x_api_key: Annotated[str | None, Header()] = None) -> User:
        user = await lookup(session, extract(authorization, x_api_key))
        if user is None:
            headers = {"WWW-Authenticate": "Bearer"} if www_authenticate else None
            raise HTTPException(unknown, "Not authenticated", headers=headers)
        return None if no_return == "current" else user

    if sync:
        def get_active_user(user: Annotated[User, Depends(get_current_user)]) -> User:
            if not user.is_active:
                raise HTTPException(inactive, "Inactive user")
            return user
    else:
        async def get_active_user(user: Annotated[User, Depends(get_current_user)]) -> User:
            if not user.is_active:
                raise HTTPException(inactive, "Inactive user")
            return None if no_return == "active" else user

    base = get_current_user if admin_on == "current" else get_active_user

    def get_admin(user: Annotated[User, Depends(base)]) -> User:
        if not user.is_admin:
            raise HTTPException(not_admin, "Admins only")
        return None if no_return == "admin" else user  # None: the check's body is `if ...: raise`, no return

    return dict(ActiveUser=Annotated[User, Depends(get_active_user)], AdminUser=Annotated[User, Depends(get_admin)])


def security_chain():
    """A right answer with FastAPI's security helpers (auto_error off: the chain decides)."""
    bearer = HTTPBearer(auto_error=False)
    api_key = APIKeyHeader(name="X-API-Key", auto_error=False)

    async def get_current_user(session: SessionDep,
                               credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
                               key: Annotated[str | None, Security(api_key)]) -> User:
        if credentials is not None:
            key = credentials.credentials
        user = await exact(session, key)
        if user is None:
            raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
        return user

    def get_active_user(user: Annotated[User, Depends(get_current_user)]) -> User:
        if not user.is_active:
            raise HTTPException(400, "Inactive user")
        return user

    def get_admin(user: Annotated[User, Depends(get_active_user)]) -> User:
        if not user.is_admin:
            raise HTTPException(403, "Admins only")
        return user

    return dict(ActiveUser=Annotated[User, Depends(get_active_user)], AdminUser=Annotated[User, Depends(get_admin)])


def scheme_param_extract(authorization, x_api_key):
    scheme, token = get_authorization_scheme_param(authorization)
    if authorization is None:
        return x_api_key
    return token if scheme.lower() == "bearer" and " " not in token else None


@pytest.mark.parametrize(
    "aliases",
    [lambda: dict(ActiveUser=lesson["ActiveUser"], AdminUser=lesson["AdminUser"]), chain, lambda: chain(sync=True),
     security_chain, lambda: chain(extract=scheme_param_extract, sync=True)],
    ids=["notebook", "partition", "def chain", "HTTPBearer + APIKeyHeader", "get_authorization_scheme_param"],
)
async def test_auth_right_answers_pass(aliases):
    report = await check_auth.report(lesson["auth_app"], **aliases())
    assert report.passed, report.text()


AUTH_WRONG = {
    "403 for no credentials": (dict(unknown=403), "GET /me with no credentials", "401 means"),
    "no WWW-Authenticate": (dict(www_authenticate=False), "GET /me with no credentials → 401 with WWW", "WWW-Authenticate"),
    "401 for a non-admin": (dict(not_admin=401), "GET /admin/stats with a non-admin's token", "403 means"),
    "403 for an inactive user": (dict(inactive=403), "GET /me with an inactive user's token", "inactive"),
    "ignores X-API-Key": (dict(extract=bearer_only), "GET /me with an active user's X-API-Key", "X-API-Key"),
    "scheme compared with case": (dict(extract=bearer_case_sensitive), "GET /me with the scheme spelled",
                                  "case-insensitive"),
    "the last word, whatever the scheme": (dict(extract=last_word), "GET /me with the key under another scheme",
                                           "Only `Bearer`"),
    "the second word": (dict(extract=second_word), "GET /me with a Bearer header without a token", "crashed"),
    "keys compared without case": (dict(lookup=any_case), "GET /me with the key in upper case", "compared exactly"),
    "a prefix match": (dict(lookup=prefix), "GET /me with the start of a key", "whole key"),
    "SQL built from the header": (dict(lookup=sql_from_header), "GET /me with an X-API-Key that is SQL",
                                  "Never build SQL"),
    "admin check skips the active check": (dict(admin_on="current"), "GET /admin/stats with an inactive admin's key",
                                           "builds on the active-user check"),
    "get_current_user forgets to return": (dict(no_return="current"), "GET /me with an active user's bearer", "`return`"),
    "get_active_user forgets to return": (dict(no_return="active"), "GET /me with an active user's bearer", "`return`"),
    "get_admin forgets to return": (dict(no_return="admin"), "GET /admin/stats with an admin's key", "`return`"),
}


@pytest.mark.parametrize("mistake", AUTH_WRONG, ids=list(AUTH_WRONG))
async def test_auth_wrong_answers_fail_with_their_hint(mistake):
    options, item, hint = AUTH_WRONG[mistake]
    report = await check_auth.report(lesson["auth_app"], **chain(**options))
    assert_fails_at(report, item, hint)


async def test_auth_the_second_word_also_accepts_a_malformed_token():
    report = await check_auth.report(lesson["auth_app"], **chain(extract=second_word))
    assert_fails_at(report, "GET /me with a token followed by another word", "one word")


async def test_auth_an_unfinished_chain_is_reported_once():
    def unfinished(user: Annotated[User, Depends(lesson["get_current_user"])]) -> User:
        raise NotImplementedError("this exercise is not written yet")

    alias = Annotated[User, Depends(unfinished)]
    report = await check_auth.report(lesson["auth_app"], ActiveUser=alias, AdminUser=alias)
    assert len(report.failures) == 1 and "NotImplementedError" in report.failures[0].observed, report.text()


# ---- exercise 3: a record that outlives the request's transaction -----------------------------

NewOrder, Attempt = lesson["NewOrder"], lesson["Attempt"]
NotebookSessionDep = lesson["SessionDep"]
get_session = lesson["get_session"]
kept_attempts: list = []


async def attempt_own_maker(new: NewOrder, request: Request) -> None:
    async with request.state.sessionmaker() as session:
        session.add(Attempt(title=new.title))
        await session.commit()


async def attempt_fresh_dependency(
        new: NewOrder, session: Annotated[AsyncSession, Depends(get_session, scope="function", use_cache=False)]) -> None:
    session.add(Attempt(title=new.title))
    await session.commit()


async def attempt_other_scope(new: NewOrder, session: Annotated[AsyncSession, Depends(get_session)]) -> None:
    session.add(Attempt(title=new.title))  # the default scope: another cache key, so another session
    await session.commit()


async def attempt_begin_block(new: NewOrder, request: Request) -> None:
    async with request.state.sessionmaker() as session, session.begin():
        session.add(Attempt(title=new.title))


async def attempt_shared(new: NewOrder, session: NotebookSessionDep) -> None:
    session.add(Attempt(title=new.title))


async def attempt_shared_commits(new: NewOrder, session: NotebookSessionDep) -> None:
    session.add(Attempt(title=new.title))
    await session.commit()  # commits the hold too


async def attempt_same_depends_again(
        new: NewOrder, session: Annotated[AsyncSession, Depends(get_session, scope="function")]) -> None:
    session.add(Attempt(title=new.title))  # the same function and scope: the request's session after all


async def attempt_fresh_uncommitted(
        new: NewOrder, session: Annotated[AsyncSession, Depends(get_session, scope="function", use_cache=False)]) -> None:
    session.add(Attempt(title=new.title))  # its own session, but get_session rolls it back on the refusal


async def attempt_fresh_flushed(new: NewOrder, session: Annotated[AsyncSession, Depends(get_session, use_cache=False)]):
    session.add(Attempt(title=new.title))
    await session.flush()  # written, not committed: the refusal rolls it back


async def attempt_savepoint(new: NewOrder, session: NotebookSessionDep) -> None:
    async with session.begin_nested():  # a savepoint inside the request's transaction
        session.add(Attempt(title=new.title))


async def attempt_never_closed(new: NewOrder, request: Request) -> None:
    session = request.state.sessionmaker()
    session.add(Attempt(title=new.title))
    await session.commit()


async def attempt_in_memory(new: NewOrder) -> None:
    kept_attempts.append(new.title)  # support reads the database, not this list


async def attempt_in_background(new: NewOrder, request: Request, tasks: BackgroundTasks) -> None:
    async def write() -> None:
        async with request.state.sessionmaker() as session:
            session.add(Attempt(title=new.title))
            await session.commit()

    tasks.add_task(write)  # runs after a response that succeeded; an error response runs no task


def shared_attempt_session():
    kept = {}

    async def attempt_one_session_for_all(new: NewOrder, request: Request) -> None:
        if "session" not in kept:
            kept["session"] = request.state.sessionmaker()
        kept["session"].add(Attempt(title=new.title))
        await kept["session"].commit()

    return attempt_one_session_for_all


async def attempts_report(record_attempt):
    return await check_attempts.report(lesson["orders_app"], record_attempt=record_attempt, SessionDep=NotebookSessionDep)


@pytest.mark.parametrize("record_attempt", [lesson["record_attempt"], attempt_own_maker, attempt_fresh_dependency,
                                            attempt_other_scope, attempt_begin_block],
                         ids=["notebook", "its own sessionmaker", "use_cache=False, committed",
                              "another scope, committed", "session.begin()"])
async def test_attempts_right_answers_pass(record_attempt):
    report = await attempts_report(record_attempt)
    assert report.passed, report.text()


REFUSED = "a refused order: 402, no order and no hold, and still one attempt"
ATTEMPTS_WRONG = {
    "the request's session": (attempt_shared, REFUSED, "needs a session of its own"),
    "the request's session, committed": (attempt_shared_commits, REFUSED, "commits whatever else was in it"),
    "Depends(get_session) again, same scope": (attempt_same_depends_again, REFUSED, "the same way gets the same value"),
    "its own session, never committed": (attempt_fresh_uncommitted, "POST /orders answers 201", "one transaction write at a time"),
    "its own session, flushed only": (attempt_fresh_flushed, "POST /orders answers 201", "one transaction write at a time"),
    "a savepoint in the request's session": (attempt_savepoint, REFUSED, "needs a session of its own"),
    "never closed": (attempt_never_closed, "every session is closed", "async with"),
    "a Python list": (attempt_in_memory, "an order that is paid", "write an Attempt row"),
    "in a background task": (attempt_in_background, REFUSED, "Commit the attempt before the route"),
    "one session kept for every request": (shared_attempt_session(), "4 orders at once", "never one kept"),
}


@pytest.mark.parametrize("mistake", ATTEMPTS_WRONG, ids=list(ATTEMPTS_WRONG))
async def test_attempts_wrong_answers_fail_with_their_hint(mistake):
    record_attempt, item, hint = ATTEMPTS_WRONG[mistake]
    report = await attempts_report(record_attempt)
    assert_fails_at(report, item, hint)


async def test_the_cache_key_includes_the_scope():
    """The lesson's claim, shown by its demo: another scope or use_cache=False is another value."""
    from checks import serve

    Default = Annotated[object, Depends(lesson["connection"])]
    seen = []
    for Second in (Default, Annotated[object, Depends(lesson["connection"], scope="function")],
                   Annotated[object, Depends(lesson["connection"], use_cache=False)]):
        async with serve(lesson["same_value_app"](Default, Second)) as client:
            seen.append((await client.get("/same")).json())
    assert seen == [True, False, False]


async def test_default_scope_and_function_scope_open_two_sessions():
    """The same get_session asked for with the default scope and with scope="function": two sessions."""
    from fastapi import FastAPI

    from checks import serve
    from checks.lesson02 import stats

    app = FastAPI(lifespan=lesson["lifespan"])

    @app.get("/two")
    async def two(a: NotebookSessionDep, b: Annotated[AsyncSession, Depends(get_session)]) -> bool:
        return a is b

    stats.reset()
    async with serve(app) as client:
        same = (await client.get("/two")).json()
    assert same is False and stats.opened == 2


# ---- exercise 4: overrides ---------------------------------------------------------------------

get_current_user = lesson["get_current_user"]


def as_user_reference(app, user):
    return lesson["as_user"](app, user)


def as_user_patch_dict(app, user):
    return mock.patch.dict(app.dependency_overrides, {get_current_user: lambda: user})


@contextmanager
def as_user_swap_dict(app, user):
    saved = app.dependency_overrides
    app.dependency_overrides = {**saved, get_current_user: lambda: user}
    try:
        yield
    finally:
        app.dependency_overrides = saved


def as_user_exit_stack(app, user):
    stack = ExitStack()
    overrides = app.dependency_overrides
    had, previous = get_current_user in overrides, overrides.get(get_current_user)
    overrides[get_current_user] = lambda: user
    stack.callback(lambda: overrides.__setitem__(get_current_user, previous) if had else overrides.pop(get_current_user))
    return stack


@contextmanager
def as_user_pops(app, user):
    app.dependency_overrides[get_current_user] = lambda: user
    try:
        yield
    finally:
        app.dependency_overrides.pop(get_current_user, None)


@contextmanager
def as_user_clears(app, user):
    app.dependency_overrides[get_current_user] = lambda: user
    try:
        yield
    finally:
        app.dependency_overrides.clear()


@contextmanager
def as_user_no_finally(app, user):
    previous = app.dependency_overrides.get(get_current_user)
    app.dependency_overrides[get_current_user] = lambda: user
    yield
    app.dependency_overrides[get_current_user] = previous


@contextmanager
def as_user_none_left(app, user):
    previous = app.dependency_overrides.get(get_current_user)
    app.dependency_overrides[get_current_user] = lambda: user
    try:
        yield
    finally:
        app.dependency_overrides[get_current_user] = previous  # None when nothing was there


@contextmanager
def as_user_swallows(app, user):
    previous = app.dependency_overrides.get(get_current_user)
    app.dependency_overrides[get_current_user] = lambda: user
    try:
        yield
    except Exception:
        pass
    finally:
        app.dependency_overrides[get_current_user] = previous


@contextmanager
def as_user_overrides_active(app, user):
    active = lesson["get_active_user"]  # the notebook's; the check's chain has its own: nothing is replaced
    app.dependency_overrides[active] = lambda: user
    try:
        yield
    finally:
        app.dependency_overrides.pop(active, None)


@contextmanager
def as_user_keyed_by_depends(app, user):
    key = Depends(get_current_user)
    app.dependency_overrides[key] = lambda: user
    try:
        yield
    finally:
        app.dependency_overrides.pop(key, None)


def as_user_state_on_the_function(app, user):
    @contextmanager
    def block():
        as_user_state_on_the_function.saved = app.dependency_overrides.get(get_current_user)
        app.dependency_overrides[get_current_user] = lambda: user
        try:
            yield
        finally:
            app.dependency_overrides[get_current_user] = as_user_state_on_the_function.saved

    return block()


@asynccontextmanager
async def as_user_async(app, user):
    app.dependency_overrides[get_current_user] = lambda: user
    try:
        yield
    finally:
        app.dependency_overrides.pop(get_current_user, None)


@contextmanager
def as_user_sets_after_yield(app, user):
    previous = app.dependency_overrides.get(get_current_user)
    try:
        yield
        app.dependency_overrides[get_current_user] = lambda: user
    finally:
        app.dependency_overrides[get_current_user] = previous


def as_user_not_a_context_manager(app, user):
    app.dependency_overrides[get_current_user] = lambda: user


async def overrides_report(as_user):
    return await check_overrides.report(as_user, lesson["auth_app"], get_current_user=get_current_user)


@pytest.mark.parametrize("as_user", [as_user_reference, as_user_patch_dict, as_user_swap_dict, as_user_exit_stack],
                         ids=["notebook", "mock.patch.dict", "swap the dict", "ExitStack"])
async def test_overrides_right_answers_pass(as_user):
    report = await overrides_report(as_user)
    assert report.passed, report.text()


AFTER = "afterwards, app.dependency_overrides is as it was"
OVERRIDES_WRONG = {
    "pops instead of restoring": (as_user_pops, "a nested block gives the outer user back", "Put back what was there"),
    "clears every override": (as_user_clears, "a nested block gives the outer user back", "Put back what was there"),
    "no finally": (as_user_no_finally, "a block that raises", "`finally:`"),
    "None left behind": (as_user_none_left, "without an earlier override, none is left behind", "mapping it to None"),
    "swallows the block's exception": (as_user_swallows, "a block that raises", "Don't catch the exception"),
    "replaces another link": (as_user_overrides_active, "inside the block, requests run as the given user",
                              "You replaced get_active_user"),
    "keyed by Depends(...)": (as_user_keyed_by_depends, "inside the block, requests run as the given user",
                              "not a Depends(...)"),
    "state kept on the function": (as_user_state_on_the_function, AFTER, "local variables"),
    "async context manager": (as_user_async, "as_user(app, user) works as a `with` block", "not `async with`"),
    "override set after yield": (as_user_sets_after_yield, "inside the block, requests run as the given user",
                                 "before `yield`"),
    "not a context manager": (as_user_not_a_context_manager, "as_user(app, user) works as a `with` block",
                              "context manager"),
}


@pytest.mark.parametrize("mistake", OVERRIDES_WRONG, ids=list(OVERRIDES_WRONG))
async def test_overrides_wrong_answers_fail_with_their_hint(mistake):
    as_user, item, hint = OVERRIDES_WRONG[mistake]
    report = await overrides_report(as_user)
    assert_fails_at(report, item, hint)


async def test_overrides_clearing_also_names_the_lost_override():
    report = await overrides_report(as_user_clears)
    after = [i for i in report.failures if i.name.startswith(AFTER)]
    assert after and "another dependency's override was removed" in after[0].observed, report.text()


async def test_overrides_of_the_wrong_link_let_an_inactive_user_in():
    """Replacing the active-user link (of the chain the check builds) lets an inactive user through."""
    from checks.lesson02 import judge as lesson02  # the module that calls course_chain

    real_chain = lesson02.course_chain
    replaced = {}

    def chain_spy(dependency):
        ActiveUser, AdminUser = real_chain(dependency)
        replaced["active"] = ActiveUser.__metadata__[0].dependency
        return ActiveUser, AdminUser

    @contextmanager
    def as_user_active_link(app, user):
        app.dependency_overrides[replaced["active"]] = lambda: user
        try:
            yield
        finally:
            app.dependency_overrides.pop(replaced["active"], None)

    lesson02.course_chain = chain_spy
    try:
        report = await overrides_report(as_user_active_link)
    finally:
        lesson02.course_chain = real_chain
    assert_fails_at(report, "the user still goes through the checks that follow", "replace only the first link")


async def test_the_checks_own_code_raises_no_warning():
    from conftest import warnings_from_checks

    assert await warnings_from_checks(
        sessions_report(session_guide_style, None),
        check_auth.report(lesson["auth_app"], **chain(www_authenticate=False)),
        attempts_report(attempt_shared),
        overrides_report(as_user_pops),
    ) == []


# ---- what the lesson says, run on the installed versions -------------------------------------

SOLUTION = __import__("pathlib").Path(__file__).resolve().parent.parent / "solutions" / "02_dependencies.ipynb"
LEARNER = SOLUTION.parent.parent / "notebooks" / "02_dependencies.ipynb"
ROUTE_DECORATORS = {"get", "post", "put", "patch", "delete"}


def cells(path):
    import json

    return json.loads(path.read_text())["cells"]


AFTER_RESPONSE = ["code before yield", "route returns", "response model serialised", "response sent (200)",
                  "background task", "code after yield"]
BEFORE_RESPONSE = ["code before yield", "route returns", "response model serialised", "code after yield",
                   "response sent (200)", "background task"]


@pytest.mark.parametrize("scope, order", [(None, AFTER_RESPONSE), ("request", AFTER_RESPONSE), ("function", BEFORE_RESPONSE)],
                         ids=["default", "request", "function"])
async def test_the_trace_shows_when_the_code_after_yield_runs(scope, order):
    """The lesson's claim: "function" exits after the response model is serialised and before the
    response is sent; the default ("request") after the response and after background tasks."""
    from checks import serve
    from checks.lesson02 import log_response_start

    events = lesson["events"]
    events.clear()
    app = lesson["traced_app"](Annotated[None, Depends(lesson["traced_dependency"], scope=scope)])
    async with serve(log_response_start(app, events)) as client:
        await client.get("/traced")
    assert events == order


async def test_the_guides_get_db_answers_201_and_finds_the_409_handler_too_late():
    """The demo's RuntimeError, as the prose explains it: the commit's IntegrityError, after the 201 went out."""
    from sqlalchemy.exc import IntegrityError

    from checks import serve

    async with serve(lesson["guide_app"], raise_app_exceptions=False) as client:
        first = await client.post("/users", json={"email": "eve@example.com", "name": "Eve"})
        second = await client.post("/users", json={"email": "eve@example.com", "name": "Eve again"})
    assert (first.status_code, second.status_code) == (201, 201)
    (error,) = client.app_errors
    assert isinstance(error.exception, RuntimeError)
    assert str(error.exception) == "Caught handled exception, but response already started."
    assert isinstance(error.exception.__cause__, IntegrityError)


def test_the_fastapi_installed_has_dependency_scopes():
    import inspect

    import fastapi

    assert tuple(int(part) for part in fastapi.__version__.split(".")[:2]) >= (0, 121)
    assert "scope" in inspect.signature(Depends).parameters


@pytest.mark.parametrize("path", [SOLUTION, LEARNER], ids=["solution", "learner copy"])
def test_exercise_1_does_not_print_its_answer_above_it(path):
    """The scope to choose is the exercise's decision: nothing before its check cell names it."""
    seen = ""
    for cell in cells(path):
        if "check" in cell["metadata"].get("tags", []):
            break
        source = "".join(cell["source"])
        if "### BEGIN SOLUTION" in source:
            source = source.split("### BEGIN SOLUTION")[0]  # the answer itself may stand in the region
        seen += source
    assert 'scope="function"' not in seen and "scope='function'" not in seen


def test_routes_and_dependencies_follow_fastapis_own_guidance():
    """Annotated for every parameter (no `= Depends(...)` defaults), and a return type on every route."""
    import ast

    for cell in cells(SOLUTION):
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse("".join(cell["source"]).replace("await ", ""))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for default in node.args.defaults + node.args.kw_defaults:
                    assert not (isinstance(default, ast.Call) and getattr(default.func, "id", "") in
                                {"Depends", "Header", "Query", "Security", "Body"}), node.name
                routes = [d for d in node.decorator_list if isinstance(d, ast.Call)
                          and getattr(d.func, "attr", "") in ROUTE_DECORATORS]
                if routes:
                    assert node.returns is not None, f"route {node.name} has no return type"


async def test_an_app_that_cannot_be_built_is_reported_by_the_check():
    """The check builds the app from the learner's parts itself (class 11): an error there is a report."""
    async def engine_connection():
        yield None

    async def session_on_connection(request: Request,
                                    _: Annotated[None, Depends(engine_connection, scope="function")]):
        async with request.state.sessionmaker() as session:
            yield session

    report = await check_sessions.report(lesson["items_app"], SessionDep=session_dep(session_on_connection, None))
    assert not report.passed and "DependencyScopeError" in report.failures[0].observed, report.text()
