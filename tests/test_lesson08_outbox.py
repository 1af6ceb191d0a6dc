"""Lesson 08, exercise 3: the outbox, and the worker that delivers it."""

import asyncio
import time
import uuid
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timezone

import pytest
from fastapi import BackgroundTasks, FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from checks.lesson08 import (
    POLL_S, SEND_TIMEOUT_S, CountingSession, MailerError, Order, OutboxMessage, check_invoices, check_outbox,
    check_signup, mailer,
)
from conftest import assert_feedback_rules, failure_text, names
from lesson08_helpers import SessionDep, lesson

pytestmark = pytest.mark.anyio


OrderIn = lesson["OrderIn"]


def outbox_factory(route, start, stop):
    """`make_app(url, deliver)` like the lesson's outbox_app, with the route and the worker's
    start and stop given: `start(deliver, sessions)` returns a handle, `stop(handle)` ends it."""

    def make_app(database_url, deliver_outbox):
        @asynccontextmanager
        async def app_lifespan(app):
            engine = create_async_engine(database_url)
            sessions = async_sessionmaker(engine, class_=CountingSession, expire_on_commit=False)
            handle = await start(deliver_outbox, sessions)
            yield {"sessions": sessions}
            await stop(handle)
            await engine.dispose()

        app = FastAPI(lifespan=app_lifespan)
        app.add_api_route("/orders", route, methods=["POST"], status_code=201)
        return app

    return make_app


async def start_task(deliver, sessions):
    return asyncio.create_task(deliver(sessions))


async def cancel_and_await(task):
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


async def cancel_only(task):
    task.cancel()  # not awaited: it ends at its next step, which the check waits for


async def never_stop(task):
    pass


async def route_one_transaction(order: OrderIn, session: SessionDep):
    row = Order(email=order.email, item=order.item)
    session.add(row)
    await session.flush()
    session.add(OutboxMessage(key=f"order-{row.id}", recipient=order.email, subject=f"Order {row.id}"))
    return {"id": row.id}


async def route_uuid_key_commit_in_route(order: OrderIn, session: SessionDep):
    row = Order(email=order.email, item=order.item)
    message = OutboxMessage(key=uuid.uuid4().hex, recipient=order.email, subject="Thanks for your order")
    session.add_all([row, message])
    await session.commit()  # both in one commit
    return {"id": row.id}


async def worker_polling(sessions):
    while True:
        with suppress(Exception):  # a failed round (the database) is tried again
            async with sessions() as session:
                pending = await session.scalars(select(OutboxMessage).where(OutboxMessage.sent_at.is_(None)))
                for message in pending.all():
                    try:
                        await asyncio.wait_for(
                            mailer.send(message.recipient, message.subject, idempotency_key=message.key),
                            SEND_TIMEOUT_S)
                    except Exception as error:
                        message.attempts += 1
                        message.last_error = str(error)
                    else:
                        message.sent_at = datetime.now(timezone.utc)
                    await session.commit()
        await asyncio.sleep(POLL_S)


def stoppable_worker():
    """A worker with a stop event made at each start; the lifespan sets it, waits a little, then cancels."""
    holder = {}

    async def deliver(sessions):
        stop = holder["stop"]
        while not stop.is_set():
            async with sessions() as session, session.begin():
                for message in (await session.scalars(
                        select(OutboxMessage).where(OutboxMessage.sent_at.is_(None)).limit(20))).all():
                    try:
                        async with asyncio.timeout(SEND_TIMEOUT_S):
                            await mailer.send(message.recipient, message.subject, idempotency_key=message.key)
                        message.sent_at = datetime.now(timezone.utc)
                    except Exception:  # noqa: BLE001 - the next round tries again
                        message.attempts += 1
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)

    async def start(deliver_, sessions):
        holder["stop"] = asyncio.Event()
        return asyncio.create_task(deliver_(sessions))

    async def stop_it(task):
        holder["stop"].set()
        try:
            await asyncio.wait_for(task, 0.3)  # a send that hangs: wait_for cancels it
        except (TimeoutError, asyncio.CancelledError):
            pass

    return deliver, start, stop_it


async def worker_one_at_a_time_deleting(sessions):
    """Claims the least-tried pending message, sends it in a task of its own with a deadline, deletes it
    once the mailer said yes (a failure goes to the back of the line)."""
    while True:
        async with sessions() as session:
            message = await session.scalar(select(OutboxMessage).order_by(OutboxMessage.attempts, OutboxMessage.id))
            if message is None:
                await asyncio.sleep(POLL_S)
                continue
            send = asyncio.create_task(mailer.send(message.recipient, message.subject, idempotency_key=message.key))
            try:
                done, _ = await asyncio.wait([send], timeout=SEND_TIMEOUT_S)
            finally:  # given up, or the worker cancelled: the send must not outlive it
                if not send.done():
                    send.cancel()
                    await asyncio.wait([send])
            if not done or send.cancelled() or send.exception() is not None:
                message.attempts += 1
                await session.commit()
                await asyncio.sleep(min(POLL_S * 2 ** message.attempts, 0.2))  # back off
            else:
                await session.delete(message)
                await session.commit()


async def test_the_lessons_own_outbox_passes():
    report = await check_outbox.report(lesson["outbox_app"], lesson["deliver_outbox"])
    assert report.passed, report.text()


stoppable, start_stoppable, stop_stoppable = stoppable_worker()


@pytest.mark.parametrize("make_app, deliver", [
    (outbox_factory(route_one_transaction, start_task, cancel_and_await), worker_polling),
    (outbox_factory(route_uuid_key_commit_in_route, start_stoppable, stop_stoppable), stoppable),
    (outbox_factory(route_one_transaction, start_task, cancel_and_await), worker_one_at_a_time_deleting),
], ids=["poll, wait_for, cancel and await", "stop event, commit in the route", "delete after sending, a task per send"])
async def test_outbox_right_answers_pass(make_app, deliver):
    report = await check_outbox.report(make_app, deliver)
    assert report.passed, report.text()


# wrong answers: routes

async def route_sends_in_background(order: OrderIn, session: SessionDep, tasks: BackgroundTasks):
    row = Order(email=order.email, item=order.item)
    session.add(row)
    await session.flush()
    tasks.add_task(mailer.send, order.email, f"Order {row.id}")  # no outbox: one try, in this process
    return {"id": row.id}


async def route_two_transactions(order: OrderIn, session: SessionDep):
    row = Order(email=order.email, item=order.item)
    session.add(row)
    await session.commit()  # the order is saved...
    session.add(OutboxMessage(key=f"order-{row.id}", recipient=order.email, subject=f"Order {row.id}"))
    await session.commit()  # ...and its e-mail, separately
    return {"id": row.id}


async def route_sends_inline(order: OrderIn, session: SessionDep):
    row = Order(email=order.email, item=order.item)
    session.add(row)
    await session.flush()
    message = OutboxMessage(key=f"order-{row.id}", recipient=order.email, subject=f"Order {row.id}")
    session.add(message)
    await mailer.send(order.email, message.subject, idempotency_key=message.key)
    message.sent_at = datetime.now(timezone.utc)
    return {"id": row.id}


# wrong answers: workers

def polling(send_one):
    async def deliver(sessions):
        while True:
            async with sessions() as session:
                for message in (await session.scalars(
                        select(OutboxMessage).where(OutboxMessage.sent_at.is_(None)))).all():
                    await send_one(session, message)
            await asyncio.sleep(POLL_S)

    return deliver


async def delete_then_send(session, message):
    await session.delete(message)
    await session.commit()
    with suppress(MailerError):
        await mailer.send(message.recipient, message.subject, idempotency_key=message.key)


async def mark_then_send(session, message):
    message.sent_at = datetime.now(timezone.utc)
    await session.commit()
    with suppress(MailerError):
        await mailer.send(message.recipient, message.subject, idempotency_key=message.key)


async def give_up_on_error(session, message):
    try:
        await mailer.send(message.recipient, message.subject, idempotency_key=message.key)
    except MailerError:
        pass  # swallowed: marked sent below anyway
    message.sent_at = datetime.now(timezone.utc)
    await session.commit()


async def no_try(session, message):
    await mailer.send(message.recipient, message.subject, idempotency_key=message.key)  # a failure ends the worker
    message.sent_at = datetime.now(timezone.utc)
    await session.commit()


async def no_key(session, message):
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await mailer.send(message.recipient, message.subject)
    except Exception:  # noqa: BLE001 - pending: the next round tries again
        return
    message.sent_at = datetime.now(timezone.utc)
    await session.commit()


async def new_key_each_time(session, message):
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await mailer.send(message.recipient, message.subject, idempotency_key=uuid.uuid4().hex)
    except Exception:  # noqa: BLE001 - pending: the next round tries again
        return
    message.sent_at = datetime.now(timezone.utc)
    await session.commit()


async def right_send(session, message):
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await mailer.send(message.recipient, message.subject, idempotency_key=message.key)
    except Exception:  # noqa: BLE001 - pending: the next round tries again
        return
    message.sent_at = datetime.now(timezone.utc)
    await session.commit()


async def forgets_commit(session, message):
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await mailer.send(message.recipient, message.subject, idempotency_key=message.key)
    except Exception:  # noqa: BLE001 - pending: the next round tries again
        return
    message.sent_at = datetime.now(timezone.utc)  # never committed


async def deliver_once(sessions):  # one round, no loop: it ran before any order existed
    async with sessions() as session:
        for message in (await session.scalars(select(OutboxMessage).where(OutboxMessage.sent_at.is_(None)))).all():
            await right_send(session, message)


async def blocking_poll(sessions):
    while True:
        async with sessions() as session:
            for message in (await session.scalars(select(OutboxMessage).where(OutboxMessage.sent_at.is_(None)))).all():
                await right_send(session, message)
        time.sleep(POLL_S)


def flag_stopped_worker():
    state = {"running": True}

    async def deliver(sessions):
        while state["running"]:
            async with sessions() as session:
                for message in (await session.scalars(
                        select(OutboxMessage).where(OutboxMessage.sent_at.is_(None)))).all():
                    await right_send(session, message)
            await asyncio.sleep(POLL_S)

    async def start(deliver_, sessions):
        state["running"] = True
        return asyncio.create_task(deliver_(sessions))

    async def stop(task):
        state["running"] = False  # cannot interrupt a send that hangs

    return deliver, start, stop


flag_deliver, flag_start, flag_stop = flag_stopped_worker()


async def start_awaiting(deliver, sessions):
    await deliver(sessions)  # never returns: the app never finishes starting


def worker_catching(catch, timeout=None, per_message=True):
    """The common shapes: which errors are caught, around what, and whether a send has a deadline."""

    async def send(message):
        call = mailer.send(message.recipient, message.subject, idempotency_key=message.key)
        await (asyncio.wait_for(call, timeout) if timeout else call)

    async def one_round(sessions):
        async with sessions() as session:
            for message in (await session.scalars(
                    select(OutboxMessage).where(OutboxMessage.sent_at.is_(None)))).all():
                if per_message:
                    try:
                        await send(message)
                    except catch:
                        message.attempts += 1
                    else:
                        message.sent_at = datetime.now(timezone.utc)
                else:
                    await send(message)
                    message.sent_at = datetime.now(timezone.utc)
                await session.commit()

    async def deliver(sessions):
        while True:
            if per_message:
                await one_round(sessions)
            else:
                try:
                    await one_round(sessions)
                except catch:  # "the next round tries again"
                    pass
            await asyncio.sleep(POLL_S)

    return deliver


async def give_up_unless_mailer_error(session, message):
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await mailer.send(message.recipient, message.subject, idempotency_key=message.key)
    except MailerError:
        return  # pending: retried
    except Exception as error:  # "not a delivery failure: a poison message, never retry it"
        message.last_error = repr(error)
    message.sent_at = datetime.now(timezone.utc)
    await session.commit()


async def route_key_from_recipient(order: OrderIn, session: SessionDep):
    row = Order(email=order.email, item=order.item)
    session.add(row)
    await session.flush()
    session.add(OutboxMessage(key=f"confirm-{order.email}", recipient=order.email, subject=f"Order {row.id}"))
    return {"id": row.id}


right_route = route_one_transaction
STANDARD = dict(start=start_task, stop=cancel_and_await)

SENT_BY_WORKER = "the e-mails are sent by the worker, not by the request"
RETRIED = "a failed delivery is tried again"
NOT_TWICE = "a retry after a lost reply is not sent twice"
AFTER_RESTART = "an e-mail cut off by a shutdown is delivered after the restart, once"
ONE_TRANSACTION = "an order and its outbox row are written in one transaction"
MARKED = "a delivered message is marked sent"
STOPPED = "the worker is stopped at shutdown, nothing left running"
SURVIVES = "an error other than MailerError stops nothing: the worker goes on with the other messages"
HANG = "a send that hangs holds back no other e-mail"


@pytest.mark.parametrize("route, deliver, lifecycle, failed, hint", [
    (route_sends_in_background, polling(right_send), STANDARD, [SENT_BY_WORKER, RETRIED, ONE_TRANSACTION],
     "no outbox row"),
    (route_two_transactions, polling(right_send), STANDARD, [ONE_TRANSACTION], "commit once"),
    (route_sends_inline, polling(right_send), STANDARD, [SENT_BY_WORKER], "the worker sends"),
    (right_route, polling(delete_then_send), STANDARD, [RETRIED], "do not delete it"),
    (right_route, polling(mark_then_send), STANDARD, [RETRIED], "mark it sent before"),
    (right_route, polling(give_up_on_error), STANDARD, [RETRIED], "leave the row pending"),
    (right_route, polling(no_try), STANDARD, [RETRIED, STOPPED], "keeps running"),
    (right_route, worker_catching(MailerError), STANDARD, [SURVIVES, STOPPED], "Only `MailerError`"),
    (right_route, worker_catching(MailerError, timeout=SEND_TIMEOUT_S), STANDARD, [SURVIVES, STOPPED],
     "Catch `Exception`"),
    (right_route, worker_catching(Exception, timeout=SEND_TIMEOUT_S, per_message=False), STANDARD, [SURVIVES],
     "around each message"),
    (right_route, polling(give_up_unless_mailer_error), STANDARD, [SURVIVES], "works on the next try"),
    (right_route, worker_catching(Exception), STANDARD, [HANG], "SEND_TIMEOUT_S"),
    (right_route, worker_catching(Exception, timeout=30), STANDARD, [HANG], "SEND_TIMEOUT_S"),
    (right_route, worker_catching(Exception, timeout=SEND_TIMEOUT_S), dict(start=start_task, stop=cancel_only),
     [STOPPED], "cancel() only asks"),
    (right_route, polling(no_key), STANDARD, [NOT_TWICE, AFTER_RESTART], "idempotency_key"),
    (right_route, polling(new_key_each_time), STANDARD, [NOT_TWICE, AFTER_RESTART], "same"),
    (right_route, polling(forgets_commit), STANDARD, [MARKED], "commit"),
    (right_route, polling(right_send), dict(start=start_task, stop=never_stop), [STOPPED], "cancel()"),
    (right_route, flag_deliver, dict(start=flag_start, stop=flag_stop), [STOPPED], "stop flag"),
    (right_route, blocking_poll, STANDARD, ["the event loop stays free"], "asyncio.sleep"),
    (right_route, deliver_once, STANDARD, ["the worker delivers new orders' e-mails"], "pending outbox rows"),
], ids=["BackgroundTasks, no outbox", "outbox in a second transaction", "sent inline in the route",
        "deletes before sending", "marks sent before sending", "swallows the error", "no try: the worker dies",
        "catches MailerError only", "MailerError only, with a timeout", "catches around the round",
        "gives up on other errors", "no timeout", "a 30 s timeout", "cancelled, never awaited",
        "no idempotency key", "a new key per attempt", "never commits sent_at", "worker never stopped",
        "stop flag only", "time.sleep between rounds", "one round, no loop"])
async def test_outbox_mistakes(route, deliver, lifecycle, failed, hint):
    report = await check_outbox.report(outbox_factory(route, **lifecycle), deliver)
    assert names(report) == failed, report.text()
    assert hint in failure_text(report), failure_text(report)
    assert_feedback_rules(report)


async def test_a_key_made_from_the_recipient_fails_when_a_customer_orders_twice():
    report = await check_outbox.report(outbox_factory(route_key_from_recipient, **STANDARD), worker_polling)
    assert names(report) == ["POST /orders answers 201 with the order's id"], report.text()
    assert "ordered twice" in failure_text(report), failure_text(report)
    assert_feedback_rules(report)


async def test_a_lifespan_that_awaits_the_worker_never_starts():
    report = await check_outbox.report(outbox_factory(right_route, start_awaiting, cancel_and_await), worker_polling)
    assert names(report) == ["the app starts"], report.text()
    assert "did not finish starting" in failure_text(report)
    assert_feedback_rules(report)


async def test_the_checks_own_code_raises_no_warning():
    from conftest import warnings_from_checks
    from test_lesson08_invoices import invoice_app, invoice_on_the_loop
    from test_lesson08_signup import signup_app, wrong_request_session

    assert await warnings_from_checks(
        check_signup.report(signup_app(wrong_request_session)),
        check_invoices.report(invoice_app, invoice_on_the_loop),
        check_outbox.report(outbox_factory(right_route, start_task, cancel_and_await), polling(no_key)),
    ) == []
