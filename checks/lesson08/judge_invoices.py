"""Lesson 08, exercise 2's check: the invoice is rendered off the event loop (blocking calls on
the loop's thread are recorded exactly), then e-mailed with the PDF attached.
"""

from __future__ import annotations

import asyncio
import random

from ..blocking import BlockingWatch
from ..harness import describe_exception
from ..recorder import record
from ..runner import check
from .judge_common import _captured_warnings, _classify_send, _never_awaited, _send_error_hint
from .world import mailer, render_invoice


# ---- exercise 2: CPU work in a task, off the loop ---------------------------------------------------------

INVOICES = 4


@check("Lesson 08 · send_invoice renders off the event loop, then e-mails the PDF", limit_s=20)
async def check_invoices(report, make_app, send_invoice):
    if not callable(send_invoice):
        report.fail("send_invoice is a function", observed=f"send_invoice is {send_invoice!r}"[:120],
                    expected="a function taking (order_id, email)",
                    hint="Write `send_invoice` in the exercise cell and run that cell, then this one.")
        return
    mailer.reset(latency_s=(0.01, 0.03))
    render_invoice.reset()
    orders = random.sample(range(1000, 9999), INVOICES)
    emails = [f"buyer{order}@example.com" for order in orders]
    app = make_app(send_invoice)
    catcher, caught = _captured_warnings()
    try:
        with BlockingWatch() as watch:
            async with record(app, title="four invoices at once, then GET /health", graceful_s=5) as rec:
                exchanges = await asyncio.gather(*(
                    rec.post("/invoices", json={"order_id": o, "email": e}, label=f"invoice {o}")
                    for o, e in zip(orders, emails)))
                # a request that arrives while the invoices are being rendered
                await rec.wait_for(lambda: render_invoice.in_flight.calls > 0 or all(x.done for x in exchanges), 2.0)
                health = await rec.get("/health", label="GET /health")
                settled = await rec.settle(5)
    finally:
        catcher.__exit__(None, None, None)
    report.metrics["in_requests_s"] = rec.now()
    report.figure("Your invoices: amber bars are the background tasks; where does GET /health wait?", rec._repr_png_)
    for exchange in exchanges:
        if exchange.status != 202:
            report.fail("POST /invoices answers 202", observed=exchange.show(), expected="202",
                        hint="The route is given: run the cell that defines invoice_app again.")
            return

    rendered = sum(1 for order in orders for email in mailer.inbox if email.attachment == render_invoice.expected(order))
    counts = {email: len(mailer.sent_to(email)) for email in emails}
    right = all(counts[email] == 1 and mailer.sent_to(email)[0].attachment == render_invoice.expected(order)
                for order, email in zip(orders, emails))
    errors = [ex.error for ex in exchanges if ex.error is not None]
    never = _never_awaited(caught)
    if errors:
        error_text = describe_exception(errors[0])
        observed = f"e-mails sent: {sum(counts.values())} of {INVOICES}; after its 202, a request raised {error_text}"
        hint = _send_error_hint(error_text)
    elif never:
        observed = f"e-mails sent: {sum(counts.values())} of {INVOICES}; coroutine {never}() was never awaited"
        hint = ("`mailer.send` is async: called without `await` it does nothing. In a `def` task you cannot "
                "await; keep the task `async def` and send the rendering to a thread.")
    elif not settled:
        observed = f"e-mails sent: {sum(counts.values())} of {INVOICES}; the tasks had not ended after 5 s"
        hint = "Your task did not finish: does it wait for something that never comes?"
    else:
        observed = (f"e-mails per order: {list(counts.values())}; with the right PDF attached: {rendered}")
        hint = ("Each order gets one e-mail to its address with `attachment=` the bytes `render_invoice(order_id)` "
                "returns.")
    if not report.add("each order gets one e-mail with its own PDF", right, observed=observed,
                      expected=f"{INVOICES} e-mails, one per order, each with its invoice", hint=hint):
        return

    outside = [order for order, exchange, email in zip(orders, exchanges, emails)
               if _classify_send(rec, exchange, email) != "background"]
    report.add(
        "the e-mail is sent inside the background task", not outside,
        observed=(f"{len(outside)} e-mails were sent by a task of your own, after the request had ended"
                  if outside else "each e-mail left while its request's background task ran"),
        expected="sent before the task returns",
        hint=("A task started with `asyncio.create_task` and not awaited is nobody's: the server does not wait for "
              "it at shutdown. Await the sending in the background task itself."),
    )
    loop_thread = watch.loop_thread
    on_loop = sum(1 for ident in render_invoice.threads if ident == loop_thread)
    sleeps = [call for call in watch.on_loop if call.what.startswith("time.sleep")]
    renders = [call for call in watch.on_loop if call.what.startswith("render_invoice")]
    health_ms = (health.wait_s or 0) * 1000
    one_render_ms = max(render_invoice.in_flight.durations, default=render_invoice.target_s) * 1000
    if renders:
        hint = ("`render_invoice` is CPU work with no async API: called in `async def` it holds the loop, and every "
                "other request waits. Run it in a thread and await the result (`asyncio.to_thread`).")
    elif sleeps:
        hint = "`time.sleep` in `async def` holds the event loop: `await asyncio.sleep(...)` waits without blocking it."
    else:
        hint = "Keep blocking calls out of `async def`."
    report.add(
        "the event loop stays free while invoices render", not watch.blocked,
        observed=(f"on the event loop's thread: {watch.summary()}; {on_loop} of {len(render_invoice.threads)} "
                  f"renders there, each holding every request for {one_render_ms:.0f} ms"
                  + (f"; GET /health waited {health_ms:.0f} ms" if health_ms >= one_render_ms / 2 else
                     f"; GET /health happened to arrive between two of them")
                  if watch.blocked and on_loop else
                  f"on the event loop's thread: {watch.summary()}" if watch.blocked else
                  f"renders in worker threads: {len(render_invoice.threads) - on_loop} of {len(render_invoice.threads)}; "
                  f"GET /health answered in {health_ms:.0f} ms"),
        expected="no blocking call on the event loop's thread", hint=hint,
    )
