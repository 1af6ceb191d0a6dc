"""Lesson 08, exercise 3's check: orders and their e-mails through an outbox and a worker, nothing
lost, nothing sent twice. The check makes the mailer fail and hang, breaks a commit, and reads
the outbox table and the mailer's idempotency keys.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from ..blocking import BlockingWatch
from ..harness import describe_exception
from ..recorder import record
from ..runner import check
from .judge_common import _mail_events, _status_hint
from .world import MailerError, Order, OutboxMessage, database, mailer, new_database, reset_database, stats


# ---- exercise 3: the outbox and its worker -----------------------------------------------------------------

CLIENT_TIMEOUT_S = 2.0  # a client gives up on a request that does not answer

FAULT_TRIGGER = """
CREATE TRIGGER outbox_disk_full BEFORE INSERT ON outbox
WHEN (SELECT armed FROM course_faults) = 1
BEGIN SELECT RAISE(ABORT, 'disk I/O error (simulated by the check)'); END
"""


async def _prepare_outbox_database(url: str) -> None:
    engine = create_async_engine(url)
    try:
        await reset_database(engine)
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE course_faults (armed INTEGER)"))
            await connection.execute(text("INSERT INTO course_faults VALUES (0)"))
            await connection.execute(text(FAULT_TRIGGER))
    finally:
        await engine.dispose()


async def _arm_fault(url: str, armed: bool) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE course_faults SET armed = :armed"), {"armed": int(armed)})
    finally:
        await engine.dispose()


async def _outbox_state(url: str):
    async with database(url) as db:
        orders = (await db.execute(select(Order.id, Order.email))).all()
        rows = (await db.execute(select(OutboxMessage.recipient, OutboxMessage.key, OutboxMessage.sent_at))).all()
    return orders, rows


def _email(tag: int, name: str) -> str:
    return f"{name}.{tag}@example.com"


@dataclass
class _OutboxRun:
    """What the outbox check saw, phase by phase. Each phase runs only if the one before it
    worked: a worker that fails one is not judged on the next."""

    calm: list  # the first orders' customers: the first one orders twice
    failing: list  # refused, reply lost
    poison: str  # every send to it raises ValueError
    reset: str  # its first send raises ConnectionResetError
    hang: str  # its first send hangs
    later: str  # ordered while that send hangs
    crash: str  # its send hangs when the app is stopped
    disk: str  # its outbox row cannot be written
    calm_ok: bool = False  # the first orders' e-mails went out within the time allowed
    after_failures: dict = None  # e-mails per failing order before the restart
    failing_status: dict = None  # what POST /orders answered for them
    errors_ran: bool = False
    survived: bool = False  # the reset order's e-mail went out despite the errors
    worker_error: BaseException | None = None  # what ended a worker task, if one ended
    hang_ran: bool = False
    hang_seen: bool = False  # the hanging send started
    unblocked: bool = False  # the later order's e-mail went out while that send hung
    crash_ran: bool = False
    hung: bool = False
    faulty: object = None
    first_run: object = None
    second_run: object = None
    marked: bool = False
    orders: list = None
    rows: list = None

    def expected(self) -> dict:
        """E-mails each customer should get in the end."""
        counts = {a: 1 for a in self.calm + self.failing + [self.reset, self.hang, self.later, self.crash]}
        counts[self.calm[0]] = self.calm.count(self.calm[0])
        return counts


async def _ended_worker(rec) -> BaseException | None:
    """What ended the worker, if it sends nothing any more (a live one keeps retrying the message
    that always fails): the last error, not a MailerError, of a task that sent outside the requests."""
    before = mailer.started
    if await rec.wait_for(lambda: mailer.started > before, 0.6):
        return None  # still sending
    own = {exchange.task for exchange in rec.exchanges}
    for task in reversed(mailer.senders):
        if task not in own and task.done() and not task.cancelled():
            error = task.exception()
            if error is not None and not isinstance(error, MailerError):
                return error
    return None


@check("Lesson 08 · orders and their e-mails: an outbox and a worker, nothing lost, nothing sent twice", limit_s=40)
async def check_outbox(report, make_app, deliver_outbox):
    tag = random.randint(1000, 9999)
    names = [_email(tag, n) for n in random.sample(
        ["ada", "bob", "cyd", "dee", "eve", "fay", "gus", "hal", "ivy", "jan", "kim", "lou"], 10)]
    run = _OutboxRun(calm=[names[0], names[1], names[0]], failing=names[2:4], poison=names[4], reset=names[5],
                     hang=names[6], later=names[7], crash=names[8], disk=names[9])
    url = new_database()
    folder = os.path.dirname(url.split("///", 1)[1])
    await _prepare_outbox_database(url)
    stats.reset()
    mailer.reset(latency_s=(0.005, 0.02))

    def delivered(addresses):
        want = {a: addresses.count(a) for a in addresses}
        return lambda: all(len(mailer.sent_to(a)) >= n for a, n in want.items())

    def order(rec, email, item, label):
        return rec.post("/orders", json={"email": email, "item": item}, label=label,
                        disconnect_after_s=CLIENT_TIMEOUT_S)

    try:
        with BlockingWatch() as watch:
            # ---- first run: calm orders, failing deliveries, errors, a hang, then a stop in the middle of one
            # (leak_grace_s: a worker cancelled and not awaited is still closing its hung send then)
            async with record(make_app(url, deliver_outbox), title="orders, and the worker's deliveries",
                              graceful_s=2, leak_grace_s=0.05, raise_shutdown_errors=False) as rec:
                run.first_run = rec
                first = await asyncio.gather(*(order(rec, e, f"book-{i}", f"order {i + 1}")
                                               for i, e in enumerate(run.calm)))
                for exchange in first:
                    body = exchange.json_or_none() if exchange.status is not None else None
                    if exchange.status != 201 or not isinstance(body, dict) or not isinstance(body.get("id"), int):
                        report.fail("POST /orders answers 201 with the order's id", observed=exchange.show(),
                                    expected='201 {"id": <int>} for each order (one customer orders twice)',
                                    hint=_order_hint(exchange))
                        return
                run.calm_ok = await rec.wait_for(delivered(run.calm), 2.0)
                if run.calm_ok:  # else the worker does not work at all: no point in failing it harder
                    mailer.fail_next("refuse", to=run.failing[0])
                    mailer.fail_next("lose_reply", to=run.failing[1])
                    second = await asyncio.gather(*(order(rec, e, "lamp", f"order {4 + i}")
                                                    for i, e in enumerate(run.failing)))
                    run.failing_status = {a: x.status for a, x in zip(run.failing, second)}
                    await rec.wait_for(lambda: delivered(run.failing)() and not mailer.faults, 2.0)
                    run.after_failures = {a: len(mailer.sent_to(a)) for a in run.failing}
                if run.calm_ok and all(run.after_failures.values()):
                    # errors that are not MailerError: one message that always fails, one reset connection
                    run.errors_ran = True
                    mailer.reject(run.poison)
                    mailer.fail_next("reset", to=run.reset)
                    await order(rec, run.poison, "vase", "order 6 (always fails)")
                    await order(rec, run.reset, "mug", "order 7 (connection reset)")
                    run.survived = await rec.wait_for(delivered([run.reset]), 2.0)
                    if not run.survived:
                        run.worker_error = await _ended_worker(rec)
                if run.survived:
                    # a send that hangs, then an order behind it
                    run.hang_ran = True
                    mailer.fail_next("hang", to=run.hang)
                    await order(rec, run.hang, "rug", "order 8 (its send hangs)")
                    run.hang_seen = await rec.wait_for(lambda: mailer.stuck > 0, 1.5)
                    await order(rec, run.later, "pen", "order 9")
                    run.unblocked = await rec.wait_for(delivered([run.later]), 3.0)
                if run.unblocked:
                    run.crash_ran = True
                    await rec.wait_for(lambda: mailer.stuck == 0, 1.0)
                    mailer.fail_next("hang", to=run.crash)
                    await order(rec, run.crash, "kettle", "order 10 (then a stop)")
                    run.hung = await rec.wait_for(lambda: mailer.stuck > 0, 2.0)
            if run.calm_ok:
                mailer.faults.clear()

                # ---- second run: the same database, a new process
                async with record(make_app(url, deliver_outbox), title="after the restart", graceful_s=2,
                                  leak_grace_s=0.05, raise_shutdown_errors=False) as rec2:
                    run.second_run = rec2
                    if run.crash_ran:
                        await rec2.wait_for(lambda: delivered([run.crash])() and mailer.in_flight.current == 0, 2.0)
                    await _arm_fault(url, True)
                    try:
                        run.faulty = await order(rec2, run.disk, "chair", "order 11 (disk full)")
                    finally:
                        await _arm_fault(url, False)
                    run.marked = await _wait_marked(url, 1.0)
        run.orders, run.rows = await _outbox_state(url)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report.metrics["in_requests_s"] = run.first_run.now()  # both runs: the first recorder's clock started first
    report.figure("Your first run: the orders, and the worker's deliveries (outside requests)", run.first_run._repr_png_)
    _judge_outbox(report, run, watch)


def _order_hint(exchange) -> str:
    error = describe_exception(exchange.error) if exchange.error is not None else ""
    if "outbox.key" in error or "UNIQUE" in error and "key" in error:
        return ("Two orders made the same outbox key: one customer ordered twice. A key made from the recipient "
                "(or the subject) is not unique to one e-mail; make it from the order's id.")
    return _status_hint(exchange, "POST", "/orders", "Save the order with the request's session, flush to get "
                        "its id, return it.")


async def _wait_marked(url, timeout) -> bool:
    """True once no outbox row whose e-mail went out is pending (every 20 ms, at most `timeout` s)."""
    deadline = time.perf_counter() + timeout
    while True:
        _, rows = await _outbox_state(url)
        if all(sent is not None for recipient, _, sent in rows if mailer.sent_to(recipient)):
            return True
        if time.perf_counter() >= deadline:
            return False
        await asyncio.sleep(0.02)


def _judge_outbox(report, run: _OutboxRun, watch) -> None:
    expected = run.expected()
    counts = {address: len(mailer.sent_to(address)) for address in list(expected) + [run.poison, run.disk]}
    recorders = [r for r in (run.first_run, run.second_run) if r is not None]

    # where the e-mails were sent from: marks made inside a request belong to it
    by_request = [e for r in recorders for e in r.find("mark") if e.data.get("step") == "start" and e.exchange]
    report.add(
        "the e-mails are sent by the worker, not by the request", not by_request,
        observed=(f"{len(by_request)} sends started inside a request ({by_request[0].exchange.label})"
                  if by_request else "every send started outside the requests"),
        expected="POST /orders only writes; the worker sends",
        hint=("A request that sends (inline, or in a background task) loses the e-mail if the process dies after "
              "the commit, and retries nothing. Write an outbox row in the order's transaction; the worker sends it."),
    )
    calm = list(dict.fromkeys(run.calm))
    if not all(counts[a] for a in calm) or not run.calm_ok:
        ended = run.first_run.shutdown_error
        report.fail("the worker delivers new orders' e-mails",
                    observed=f"e-mails per customer: {[counts[a] for a in calm]} (the first ordered twice); "
                             f"outbox rows: {len(run.rows)} for {len(run.orders)} orders"
                             + (f"; at shutdown the lifespan raised {describe_exception(ended)}" if ended else ""),
                    expected=f"{[expected[a] for a in calm]}, within 2 s",
                    hint=("Nothing was sent: is the worker started by the lifespan (`asyncio.create_task`), and does "
                          "it read the pending outbox rows, send each, and mark it sent?"))
        return
    report.add("the worker delivers new orders' e-mails", True,
               observed=f"e-mails per customer: {[counts[a] for a in calm]} (the first ordered twice)")
    before_restart = [run.after_failures[a] for a in run.failing]
    # an order the client was told failed (the request sent inline and got an error) is not a lost e-mail
    lost = [a for a in run.failing if run.after_failures[a] == 0 and run.failing_status.get(a) == 201]
    report.add(
        "a failed delivery is tried again", not lost,
        observed=f"the mailer refused one delivery and lost the reply of another; e-mails per order, 2 s later: "
                 f"{before_restart}",
        expected="1 each",
        hint=("A failed send must leave the row pending, so a later round sends it again: do not delete it or mark "
              "it sent before the mailer said yes, and catch the error so the worker keeps running."),
    )
    twice = [a for a in expected if counts[a] > expected[a]]
    report.add(
        "a retry after a lost reply is not sent twice", not twice,
        observed=(f"{twice[0]} got {counts[twice[0]]} e-mails for {expected[twice[0]]} order(s)" if twice else
                  f"e-mails per order: {[counts[a] for a in run.failing]}"),
        expected="one per order",
        hint=("When the reply is lost, the e-mail may have gone out: the retry must carry the same "
              "`idempotency_key` (stored in the outbox row), so the provider can drop the duplicate."),
    )
    if run.errors_ran:
        error = run.worker_error
        if error is not None:
            observed = (f"order 6's send raises ValueError (no such mailbox) every time, order 7's raised "
                        f"ConnectionResetError once; the worker ended with {describe_exception(error)}")
            hint = ("Only `MailerError` was caught: any other error (a rejected address, a reset connection, a "
                    "failed commit) ended the worker, and every later e-mail with it. Catch `Exception` around each "
                    "message's delivery, record it on the row (`attempts`, `last_error`), and go on.")
        elif counts[run.reset] == 0 and _mail_events(run.first_run, run.reset, "start"):
            observed = ("order 7's send raised ConnectionResetError once; it was never tried again (2 s later: "
                        "0 e-mails)")
            hint = ("An error you did not expect is no proof that a message can never go: a reset connection works "
                    "on the next try. Leave the row pending and count its attempts (give up only after several).")
        elif counts[run.reset] == 0:
            observed = ("order 6's send raises ValueError (no such mailbox) every time, order 7's raised "
                        "ConnectionResetError once; order 7's e-mail had not gone out 2 s later")
            hint = ("The worker is alive but never got past the message that always fails: an error caught around the "
                    "whole round ends the round at that message, every time. Catch it around each message.")
        else:
            observed = "order 7's e-mail went out after its connection was reset; order 6's keeps failing"
            hint = ""
        report.add("an error other than MailerError stops nothing: the worker goes on with the other messages",
                   run.survived and error is None, observed=observed,
                   expected="the worker still running, order 7's e-mail sent on a later round", hint=hint)
    if run.hang_ran:
        report.add(
            "a send that hangs holds back no other e-mail", run.hang_seen and run.unblocked,
            observed=(("order 8's send hung; the order placed after it got its e-mail within 3 s" if run.unblocked
                       else "order 8's send hung; the order placed after it got no e-mail within 3 s")
                      if run.hang_seen else "order 8's send did not even start within 1.5 s"),
            expected="1: the hung send given up after SEND_TIMEOUT_S, the others sent",
            hint=("Nothing bounds a send, so one that never answers holds the worker, and every message behind it, "
                  "forever. Give each send a deadline of `SEND_TIMEOUT_S` and treat running out of it as a failed "
                  "delivery."),
        )
    crash_saved = any(email == run.crash for _, email in run.orders)
    if run.crash_ran and crash_saved:
        if not run.hung:
            report.fail("an e-mail cut off by a shutdown is delivered after the restart, once",
                        observed="the worker did not start sending order 10's e-mail within 2 s", expected="it sends it",
                        hint="The worker should keep sending new orders' e-mails after failures.")
        else:
            report.add(
                "an e-mail cut off by a shutdown is delivered after the restart, once", counts[run.crash] == 1,
                observed=f"the app stopped while order 10's e-mail was being sent; after the restart: "
                         f"{counts[run.crash]} e-mail(s) to its customer",
                expected="1",
                hint=("The retry after the restart must carry the same idempotency key as the first attempt."
                      if counts[run.crash] > 1 else "Only a row still pending in the database survives a restart."),
            )
    disk_orders = [oid for oid, email in run.orders if email == run.disk]
    disk_rows = [r for r in run.rows if r[0] == run.disk]
    consistent = (not disk_orders and not disk_rows) or (disk_orders and disk_rows)
    report.add(
        "an order and its outbox row are written in one transaction", bool(consistent),
        observed=(f"the outbox insert failed (disk full); POST /orders answered {run.faulty.status}; "
                  f"orders saved: {len(disk_orders)}, outbox rows: {len(disk_rows)}"),
        expected="no order and no outbox row, or both",
        hint=("POST /orders writes no outbox row: once the order is committed, nothing remembers its e-mail."
              if not run.rows else
              "The order was committed before its outbox row was written, so when that write failed the order "
              "stayed without an e-mail. Add both to the request's session and commit once."),
    )
    # Behind a hung send that nothing bounded (reported above), the e-mails that went out while the
    # app was stopping had no chance to be marked: not this item's failure.
    held = {run.hang, run.later} if run.hang_ran and not run.unblocked else set()
    pending = [r for r in run.rows if r[2] is None and counts.get(r[0], 0) >= 1 and r[0] not in held]
    report.add(
        "a delivered message is marked sent", not pending,
        observed=f"outbox rows still pending 1 s after their e-mail went out: {len(pending)}",
        expected="0",
        hint="After the mailer answers, set the row's `sent_at` and commit, or the worker sends it again every round.",
    )
    leaks = [name for r in recorders for name in r.leaked_tasks]
    errors = [describe_exception(r.shutdown_error) for r in recorders if r.shutdown_error is not None]
    report.add(
        "the worker is stopped at shutdown, nothing left running", not leaks and not errors,
        observed=(f"after the lifespan ended, still running: {leaks[0]}" if leaks else
                  f"the shutdown raised {errors[0]}" if errors else "nothing left running after either shutdown"),
        expected="the worker cancelled (or told to stop) and finished before the lifespan ends",
        hint=("A task that nobody stops outlives the app. Keep the task the lifespan created and, after `yield`, "
              "`cancel()` it and await it: cancel() only asks, and the worker's clean-up (closing a send, its "
              "session) must end before the engine is disposed. A stop flag alone cannot interrupt a send that hangs."
              if leaks else
              "The worker ended with an error, raised again when the lifespan awaited it: catch the delivery's "
              "error inside the worker's loop, and only the `CancelledError` you caused around the await."),
    )
    report.add(
        "the event loop stays free", not watch.blocked,
        observed=f"blocking calls on the event loop: {watch.summary()}" if watch.blocked else "none",
        expected="none",
        hint="The worker shares the event loop with every request: wait between rounds with `await asyncio.sleep`.",
    )
    report.add(
        "every session is closed", stats.opened == stats.closed,
        observed=f"sessions opened: {stats.opened}, closed: {stats.closed}", expected="as many closed as opened",
        hint="Open each session with `async with sessions() as session:`, so cancelling the worker closes it too.",
    )
