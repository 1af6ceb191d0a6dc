"""Lesson 02, exercise 2: the chain of dependencies that authenticates a request."""

from typing import Annotated

import pytest
from fastapi import Depends, Header, HTTPException, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import func, select, text

from checks.lesson02 import User, check_auth

from lesson02_helpers import assert_fails_at, lesson, session_dep, session_try_except

pytestmark = pytest.mark.anyio


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
