"""Lesson 02, exercise 4: dependency overrides (and, at the end, all four checks at once)."""

from contextlib import ExitStack, asynccontextmanager, contextmanager
from unittest import mock

import pytest
from fastapi import Depends

from checks.lesson02 import check_auth, check_overrides

from lesson02_helpers import assert_fails_at, lesson

pytestmark = pytest.mark.anyio


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
    from test_lesson02_attempts import attempt_shared, attempts_report
    from test_lesson02_auth import chain
    from test_lesson02_sessions import session_guide_style, sessions_report

    assert await warnings_from_checks(
        sessions_report(session_guide_style, None),
        check_auth.report(lesson["auth_app"], **chain(www_authenticate=False)),
        attempts_report(attempt_shared),
        overrides_report(as_user_pops),
    ) == []
