"""Lesson 08, exercise 1: the confirmation e-mail, sent after the response by a task with its own session."""

import asyncio
import time
from typing import Annotated

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from starlette.background import BackgroundTask

from checks.lesson08 import User, check_signup, mailer
from conftest import assert_feedback_rules, failure_text, names
from lesson08_helpers import NewUser, SessionDep, lesson, lifespan

pytestmark = pytest.mark.anyio


def signup_app(route, status_code=201):
    """An app with the lesson's lifespan and `route` as POST /signups."""
    app = FastAPI(lifespan=lifespan)
    app.add_api_route("/signups", route, methods=["POST"], status_code=status_code)
    return app


async def confirm_by_id(sessions, user_id: int) -> None:
    async with sessions() as session:
        user = await session.get(User, user_id)
        await mailer.send(user.email, "Confirm your address")
        user.confirmation_sent = True
        await session.commit()


async def new_user(session, email):
    user = User(email=email)
    session.add(user)
    await session.flush()
    return user


# right answers

async def right_background_tasks(new: NewUser, session: SessionDep, request: Request, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    tasks.add_task(confirm_by_id, request.state.sessions, user.id)
    return {"id": user.id, "email": user.email}


async def confirm_with_update(sessions, user_id: int, email: str) -> None:
    await mailer.send(email, "Please confirm")
    async with sessions.begin() as session:  # commits at the end of the block
        await session.execute(update(User).where(User.id == user_id).values(confirmation_sent=True))


async def right_response_background(new: NewUser, session: SessionDep, request: Request):
    user = await new_user(session, new.email)
    task = BackgroundTask(confirm_with_update, request.state.sessions, user.id, user.email)
    return JSONResponse({"id": user.id, "email": user.email}, status_code=201, background=task)


class Notifier:
    """A dependency that schedules e-mails: FastAPI hands it the request's own BackgroundTasks."""

    def __init__(self, request: Request, tasks: BackgroundTasks):
        self.sessions, self.tasks = request.state.sessions, tasks

    def confirm(self, user_id: int) -> None:
        self.tasks.add_task(self._send, user_id)

    async def _send(self, user_id: int) -> None:
        async with self.sessions() as session, session.begin():
            user = await session.get(User, user_id)
            await mailer.send(user.email, "Confirm")
            user.confirmation_sent = True


async def right_dependency(new: NewUser, session: SessionDep, notifier: Annotated[Notifier, Depends()]):
    user = await new_user(session, new.email)
    notifier.confirm(user.id)
    return {"id": user.id, "email": user.email}


@pytest.mark.parametrize("route", [right_background_tasks, right_response_background, right_dependency],
                         ids=["BackgroundTasks", "JSONResponse(background=...)", "tasks in a dependency"])
async def test_signup_right_answers_pass(route):
    report = await check_signup.report(signup_app(route))
    assert report.passed, report.text()


async def test_the_lessons_own_answer_passes():
    report = await check_signup.report(lesson["signup_app"])
    assert report.passed, report.text()


# wrong answers

async def wrong_inline(new: NewUser, session: SessionDep):
    user = await new_user(session, new.email)
    await mailer.send(user.email, "Confirm")  # the client waits for the mail server
    user.confirmation_sent = True
    return {"id": user.id, "email": user.email}


async def confirm_with_session(session, user_id):
    user = await session.get(User, user_id)  # the request's session, closed by now: it silently starts over
    await mailer.send(user.email, "Confirm")
    user.confirmation_sent = True
    await session.commit()


async def wrong_request_session(new: NewUser, session: SessionDep, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    tasks.add_task(confirm_with_session, session, user.id)
    return {"id": user.id, "email": user.email}


async def confirm_object(session, user):
    await mailer.send(user.email, "Confirm")
    user.confirmation_sent = True
    await session.commit()


async def wrong_request_session_and_object(new: NewUser, session: SessionDep, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    tasks.add_task(confirm_object, session, user)
    return {"id": user.id, "email": user.email}


async def confirm_detached(sessions, user):
    async with sessions() as session:
        await mailer.send(user.email, "Confirm")
        user.confirmation_sent = True  # an object of the request's session: this session does not know it
        await session.commit()


async def wrong_detached_object(new: NewUser, session: SessionDep, request: Request, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    tasks.add_task(confirm_detached, request.state.sessions, user)
    return {"id": user.id, "email": user.email}


async def wrong_create_task(new: NewUser, session: SessionDep, request: Request):
    user = await new_user(session, new.email)
    asyncio.create_task(confirm_by_id(request.state.sessions, user.id))  # nobody keeps or awaits it
    return {"id": user.id, "email": user.email}


async def wrong_coroutine_to_add_task(new: NewUser, session: SessionDep, request: Request, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    tasks.add_task(confirm_by_id(request.state.sessions, user.id))
    return {"id": user.id, "email": user.email}


def confirm_sync(email):
    mailer.send(email, "Confirm")  # a coroutine, never awaited


async def wrong_def_task_no_await(new: NewUser, session: SessionDep, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    tasks.add_task(confirm_sync, user.email)
    return {"id": user.id, "email": user.email}


async def confirm_no_commit(sessions, user_id):
    async with sessions() as session:
        user = await session.get(User, user_id)
        await mailer.send(user.email, "Confirm")
        user.confirmation_sent = True


async def wrong_no_commit(new: NewUser, session: SessionDep, request: Request, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    tasks.add_task(confirm_no_commit, request.state.sessions, user.id)
    return {"id": user.id, "email": user.email}


async def confirm_rate_limited(sessions, user_id):
    time.sleep(0.02)  # "be gentle with the mail server"
    await confirm_by_id(sessions, user_id)


async def wrong_time_sleep(new: NewUser, session: SessionDep, request: Request, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    tasks.add_task(confirm_rate_limited, request.state.sessions, user.id)
    return {"id": user.id, "email": user.email}


async def wrong_forgot_add_task(new: NewUser, session: SessionDep, request: Request, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    return {"id": user.id, "email": user.email}


DefaultScopeSession = Annotated[AsyncSession, Depends(lesson["get_session"])]


async def wrong_default_scope(new: NewUser, session: DefaultScopeSession, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    tasks.add_task(confirm_with_session, session, user.id)  # still open: the dependency ends after the tasks
    return {"id": user.id, "email": user.email}


async def confirm_never_closed(sessions, user_id):
    session = sessions()
    user = await session.get(User, user_id)
    await mailer.send(user.email, "Confirm")
    user.confirmation_sent = True
    await session.commit()


async def wrong_never_closed(new: NewUser, session: SessionDep, request: Request, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    tasks.add_task(confirm_never_closed, request.state.sessions, user.id)
    return {"id": user.id, "email": user.email}


async def confirm_flag_first(sessions, user_id):
    async with sessions() as session:
        user = await session.get(User, user_id)
        user.confirmation_sent = True  # "record it, then send"
        await session.commit()
        await mailer.send(user.email, "Confirm")


async def wrong_flag_before_email(new: NewUser, session: SessionDep, request: Request, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    tasks.add_task(confirm_flag_first, request.state.sessions, user.id)
    return {"id": user.id, "email": user.email}


async def confirm_with_own_engine(user_id):
    engine = create_async_engine(lesson["DATABASE_URL"])  # a pool of its own, never disposed
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        user = await session.get(User, user_id)
        await mailer.send(user.email, "Confirm")
        user.confirmation_sent = True
        await session.commit()


async def wrong_engine_in_task(new: NewUser, session: SessionDep, tasks: BackgroundTasks):
    user = await new_user(session, new.email)
    tasks.add_task(confirm_with_own_engine, user.id)
    return {"id": user.id, "email": user.email}


ONE_EMAIL = "one confirmation e-mail per signup, to its address"
RECORDS = "the task records `confirmation_sent` in the database"
OWN_SESSION = "the task opens a session of its own"


@pytest.mark.parametrize("route, failed, hint", [
    (wrong_inline, ["the client gets its 201 before the e-mail is sent"], "BackgroundTasks"),
    (wrong_request_session, [OWN_SESSION], "closed"),
    (wrong_request_session_and_object, [RECORDS, OWN_SESSION], "closed before background tasks run"),
    (wrong_detached_object, [RECORDS], "detached"),
    # A task nobody waits for may not have sent its e-mail when the check counts (seen: [1, 0, 1]).
    (wrong_create_task, ["the e-mail is sent by a background task of the request",
                         "one confirmation e-mail per signup, to its address?"], "create_task"),
    (wrong_coroutine_to_add_task, [ONE_EMAIL], "add_task(fn, a, b)"),
    (wrong_def_task_no_await, [ONE_EMAIL], "never awaited"),
    (wrong_no_commit, [RECORDS], "never committed"),
    (wrong_time_sleep, ["the event loop stays free"], "time.sleep"),
    (wrong_forgot_add_task, [ONE_EMAIL], "add_task"),
    # the default scope keeps the request's transaction open during the task: a failed e-mail rolls the signup back
    (wrong_default_scope, ["POST /signups answers 201 with the new user's id and email", OWN_SESSION],
     "rolled back after its 201"),
    (wrong_never_closed, ["every session is closed"], "async with"),
    (wrong_flag_before_email, ["no flag without its e-mail"], "only after `mailer.send` returned"),
    (wrong_engine_in_task, ["no database connection left open"], "nothing disposes"),
], ids=["sent inline", "request's session", "request's session and object", "detached object", "create_task",
        "coroutine to add_task", "def task without await", "no commit", "time.sleep in the task",
        "no task added", "default scope", "session never closed", "flag before the e-mail", "engine in the task"])
async def test_signup_mistakes(route, failed, hint):
    report = await check_signup.report(signup_app(route))
    optional = [name.rstrip("?") for name in failed if name.endswith("?")]  # may fail too, by timing
    assert [n for n in names(report) if n not in optional] == [n for n in failed if not n.endswith("?")], report.text()
    assert hint in failure_text(report), failure_text(report)
    assert_feedback_rules(report)


async def test_items_about_a_task_are_not_judged_when_there_is_none():
    report = await check_signup.report(signup_app(wrong_inline))
    judged = [item.name for item in report.items]
    assert OWN_SESSION not in judged and "every session is closed" not in judged, report.text()


async def test_a_200_is_not_a_201():
    report = await check_signup.report(signup_app(right_background_tasks, status_code=200))
    assert names(report) == ["POST /signups answers 201 with the new user's id and email"]
    assert "201" in failure_text(report)
    assert_feedback_rules(report)
