"""Lesson 08, exercise 2: CPU work (rendering invoices) off the event loop."""

import asyncio
import time

import anyio.from_thread
import pytest
from starlette.concurrency import run_in_threadpool

from checks.lesson08 import check_invoices, mailer, render_invoice
from conftest import assert_feedback_rules, failure_text, names
from lesson08_helpers import lesson

pytestmark = pytest.mark.anyio


invoice_app = lesson["invoice_app"]


async def invoice_to_thread(order_id: int, email: str) -> None:
    pdf = await asyncio.to_thread(render_invoice, order_id)
    await mailer.send(email, f"Invoice {order_id}", attachment=pdf)


async def invoice_threadpool(order_id: int, email: str) -> None:
    pdf = await run_in_threadpool(render_invoice, order_id)
    await mailer.send(email, "Your invoice", attachment=pdf)


async def invoice_executor(order_id: int, email: str) -> None:
    pdf = await asyncio.get_running_loop().run_in_executor(None, render_invoice, order_id)
    await mailer.send(email, "Your invoice", body="Attached.", attachment=pdf)


def invoice_def_task(order_id: int, email: str) -> None:  # runs in the thread pool
    pdf = render_invoice(order_id)
    anyio.from_thread.run(lambda: mailer.send(email, "Your invoice", attachment=pdf))


@pytest.mark.parametrize("send_invoice", [invoice_to_thread, invoice_threadpool, invoice_executor, invoice_def_task],
                         ids=["to_thread", "run_in_threadpool", "run_in_executor", "def task + from_thread"])
async def test_invoice_right_answers_pass(send_invoice):
    report = await check_invoices.report(invoice_app, send_invoice)
    assert report.passed, report.text()


async def test_the_lessons_own_invoice_answer_passes():
    report = await check_invoices.report(invoice_app, lesson["send_invoice"])
    assert report.passed, report.text()


async def invoice_on_the_loop(order_id: int, email: str) -> None:
    pdf = render_invoice(order_id)
    await mailer.send(email, "Invoice", attachment=pdf)


async def invoice_yield_first(order_id: int, email: str) -> None:
    await asyncio.sleep(0)  # "let others run first": the rendering still holds the loop
    await mailer.send(email, "Invoice", attachment=render_invoice(order_id))


async def invoice_sleepy(order_id: int, email: str) -> None:
    pdf = await asyncio.to_thread(render_invoice, order_id)
    time.sleep(0.02)  # wait for the PDF to "settle"
    await mailer.send(email, "Invoice", attachment=pdf)


async def invoice_called_first(order_id: int, email: str) -> None:
    pdf = await asyncio.to_thread(render_invoice(order_id))  # renders here, then hands bytes to a thread
    await mailer.send(email, "Invoice", attachment=pdf)


async def invoice_not_awaited(order_id: int, email: str) -> None:
    pdf = asyncio.to_thread(render_invoice, order_id)
    await mailer.send(email, "Invoice", attachment=pdf)


async def invoice_future_not_awaited(order_id: int, email: str) -> None:
    pdf = asyncio.get_running_loop().run_in_executor(None, render_invoice, order_id)
    await mailer.send(email, "Invoice", attachment=pdf)


def invoice_def_no_await(order_id: int, email: str) -> None:
    pdf = render_invoice(order_id)
    mailer.send(email, "Invoice", attachment=pdf)


def invoice_def_asyncio_run(order_id: int, email: str) -> None:
    pdf = render_invoice(order_id)
    asyncio.run(mailer.send(email, "Invoice", attachment=pdf))


async def invoice_mail_fire_and_forget(order_id: int, email: str) -> None:
    pdf = await asyncio.to_thread(render_invoice, order_id)
    asyncio.create_task(mailer.send(email, "Invoice", attachment=pdf))


async def test_an_unwritten_send_invoice_fails_with_its_own_message():
    report = await check_invoices.report(invoice_app, None)
    assert names(report) == ["send_invoice is a function"], report.text()
    assert_feedback_rules(report)


EACH_ORDER = "each order gets one e-mail with its own PDF"
LOOP_FREE = "the event loop stays free while invoices render"


@pytest.mark.parametrize("send_invoice, failed, hint", [
    (invoice_on_the_loop, [LOOP_FREE], "to_thread"),
    (invoice_yield_first, [LOOP_FREE], "CPU work"),
    (invoice_sleepy, [LOOP_FREE], "time.sleep"),
    (invoice_called_first, [EACH_ORDER], "runs fn right here"),
    (invoice_not_awaited, [EACH_ORDER], "`await` it"),
    (invoice_future_not_awaited, [EACH_ORDER], "`await` it"),
    (invoice_def_no_await, [EACH_ORDER], "without `await`"),
    (invoice_def_asyncio_run, [EACH_ORDER], "asyncio.run"),
    (invoice_mail_fire_and_forget, ["the e-mail is sent inside the background task"], "create_task"),
], ids=["render on the loop", "sleep(0) then render", "time.sleep", "to_thread(fn(arg))", "to_thread not awaited",
        "executor future not awaited", "def task, no await", "def task, asyncio.run", "mail fire-and-forget"])
async def test_invoice_mistakes(send_invoice, failed, hint):
    report = await check_invoices.report(invoice_app, send_invoice)
    assert names(report) == failed, report.text()
    assert hint in failure_text(report), failure_text(report)
    assert_feedback_rules(report)
