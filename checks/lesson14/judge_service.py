"""Lesson 14's checks of the service itself: its API contract (one request at a time), then the
same service under concurrent load with a slow and a failing upstream and a bad order.

Each check builds a fresh app from the learner's factory, `make_app(shop)`, on a fresh `Shop` (its
own database file, removed afterwards), and judges exact signals: the shop's counters (clients
opened and closed, upstream calls cancelled, calls in flight at once, e-mails sent), the ASGI
messages (checks/recorder.py: when each answer and each e-mail left), blocking calls on the
loop (BlockingWatch), aiosqlite's connection threads, and the tasks left running after shutdown.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import uuid
from collections import Counter

from ..blocking import BlockingWatch
from ..harness import describe_exception, serve
from ..observe import json_body
from ..recorder import record
from ..runner import check
from ..waiting import wait_until
from .world import SLOW_S, Shop, database_threads

CARD_HINT = "Answer with a response model that has no field for the card number (the last four digits only)."
ENVELOPE = "every error answers `{\"error\": {\"code\", \"message\", \"request_id\"}}`"


def _card() -> str:
    return "".join(random.choices(string.digits, k=16))


def _item() -> str:
    return "".join(random.choices(string.ascii_lowercase, k=8))


def _auth(user: str, **more) -> dict:
    return {"Authorization": f"Bearer {user}-token", **more}


def build(report, make_app, shop: Shop):
    """The learner's app from their factory, or None (reported) when the factory fails."""
    try:
        app = make_app(shop)
    except Exception as exc:
        report.fail("make_app(shop) builds the app", observed=describe_exception(exc),
                    hint="Write `make_app`: it returns a `FastAPI` app that uses the shop it is given.")
        return None
    if not callable(app):
        report.fail("make_app(shop) builds the app", observed=f"it returned {type(app).__name__}",
                    hint="Return the `FastAPI` app from `make_app`.")
        return None
    return app


def _show(status, headers, body: str) -> str:
    return f"{status} {body[:120]}" + ("" if headers is None else f" (X-Request-ID: {headers})")


def judge_error(report, name: str, status: int, body, request_id, *, want: int, sent_id: str | None = None) -> bool:
    """An error answer: the status, the envelope, and the request id in both places."""
    text = json.dumps(body) if body is not None else "not JSON"
    if not report.add(f"{name} → {want}", status == want, observed=f"{status} {text[:120]}", expected=str(want),
                      hint=_status_hint(want)):
        return False
    error = body.get("error") if isinstance(body, dict) else None
    shaped = (isinstance(error, dict) and set(body) == {"error"} and error.get("code") == want
              and isinstance(error.get("message"), str) and error.get("message"))
    if not report.add(f"{name}: the error envelope", bool(shaped), observed=text[:160],
                      expected=ENVELOPE,
                      hint="Register exception handlers for `HTTPException` (Starlette's, which 404s and 405s "
                           "raise too) and `RequestValidationError` that build the one envelope."):
        return False
    wanted = sent_id if sent_id else request_id
    return report.add(f"{name}: the request id in the header and in the envelope",
                      bool(request_id) and error.get("request_id") == wanted and (not sent_id or request_id == sent_id),
                      observed=f"header {request_id!r}, envelope {error.get('request_id')!r}"
                               + (f", sent {sent_id!r}" if sent_id else ""),
                      expected="the same id in both" + (" (the one the client sent)" if sent_id else ""),
                      hint="Set the id once per request (middleware, on `request.state`) and read it back in the "
                           "handlers; a response an exception handler builds passes through the middleware too.")


def _status_hint(want: int) -> str:
    return {401: "A dependency that reads `Authorization: Bearer <token>` and raises `HTTPException(401)` for a "
                 "missing or unknown token: every route depends on it.",
            404: "Raise `HTTPException(404)` when the order does not exist or belongs to another user.",
            422: "Validate the body with a Pydantic model: `Field` constraints for the item, quantity and card.",
            }.get(want, "Compare your route with the numbered requirements.")


async def _contract(report, client, shop: Shop) -> None:
    r = await client.post("/orders", json={"item": _item(), "quantity": 1, "card": _card()})
    if not judge_error(report, "an order without a token", r.status_code, json_body(r), r.headers.get("x-request-id"),
                       want=401):
        return
    item, card, rid = _item(), _card(), uuid.uuid4().hex
    r = await client.post("/orders", json={"item": item, "quantity": 3, "card": card}, headers=_auth("alice", **{
        "X-Request-ID": rid}))
    body = json_body(r)
    if not report.add("POST /orders as alice → 201", r.status_code == 201, observed=_show(r.status_code, None, r.text),
                      expected="201 and the order", hint="Answer `status_code=201` with the order you stored."):
        return
    if not report.add("the response never holds the card number", card not in r.text,
                      observed=f"the card {card} is in {r.text[:120]}" if card in r.text else "not in it", expected="only its last four digits",
                      hint=CARD_HINT):
        return
    want = {"owner": "alice", "item": item, "quantity": 3, "card_last4": card[-4:], "stock": shop.answer("stock", item),
            "shipping": shop.answer("shipping", item), "missing": []}
    got = {k: body.get(k) for k in want} if isinstance(body, dict) else body
    if not report.add("the order: owner, item, quantity, card_last4, both upstream answers", got == want
                      and isinstance(body.get("id"), int), observed=json.dumps(body)[:200],
                      expected=json.dumps(dict(want, id="<int>"))[:200],
                      hint="Put each upstream's answer (`await client.get(\"stock\", item)`) in the order as it "
                           "came, `missing` empty when both answered, and an `id` from the database."):
        return
    report.add("a request id the client sends comes back", r.headers.get("x-request-id") == rid,
               observed=f"sent {rid}, got {r.headers.get('x-request-id')!r}", expected="the same id",
               hint="Take the client's `X-Request-ID` when it sends one; make a new one (`uuid4().hex`) only if not.")
    for name, bad in (("an empty item", {"item": "", "quantity": 1, "card": card}),
                      ("quantity 0", {"item": item, "quantity": 0, "card": card}),
                      ("quantity 11", {"item": item, "quantity": 11, "card": card}),
                      ("a card of 15 digits", {"item": item, "quantity": 1, "card": card[:15]})):
        r2 = await client.post("/orders", json=bad, headers=_auth("alice"))
        if not judge_error(report, f"an order with {name}", r2.status_code, json_body(r2),
                           r2.headers.get("x-request-id"), want=422):
            return
        if card[:15] in r2.text:
            report.fail(f"an order with {name}: the card stays secret", observed=r2.text[:160],
                        expected="no card digits in the error", hint="Build the message from each error's location "
                        "and message only: the validation error's `input` holds what the client sent.")
            return
    ids = set()
    for _ in range(2):
        r2 = await client.get("/orders/0", headers=_auth("alice"))
        ids.add(r2.headers.get("x-request-id"))
    if not judge_error(report, "GET /orders/0 (no such order)", r2.status_code, json_body(r2),
                       r2.headers.get("x-request-id"), want=404):
        return
    report.add("each request without an id gets a new one", len(ids) == 2 and None not in ids,
               observed=f"two requests got {sorted(map(str, ids))}", expected="two different ids",
               hint="Make the id per request (inside the middleware), never once for the app.")
    r2 = await client.get(f"/orders/{body['id']}", headers=_auth("alice"))
    if not report.add("alice reads her order back", r2.status_code == 200 and json_body(r2) == body,
                      observed=_show(r2.status_code, None, r2.text), expected=f"200 {json.dumps(body)[:100]}",
                      hint="Store the whole order (both upstream answers too) and answer it with the same model."):
        return
    r2 = await client.get(f"/orders/{body['id']}", headers=_auth("bob"))
    judge_error(report, "bob reads alice's order", r2.status_code, json_body(r2), r2.headers.get("x-request-id"),
                want=404)


async def judge_resources(report, shop: Shop, threads_before: int, leaked: list[str] | None = None) -> None:
    """After shutdown: one upstream client, opened and closed; every engine disposed; no task left."""
    report.add("one upstream client for the app, closed at shutdown", shop.opened == 1 and shop.closed == 1,
               observed=f"opened {shop.opened}, closed {shop.closed}", expected="opened 1, closed 1",
               hint="Open the client once in the lifespan, hand it to the routes (the lifespan's state) and "
                    "`await client.aclose()` after the `yield`, in a `finally`.")
    # aiosqlite's thread ends a moment after its connection closed: give it that moment
    await wait_until(lambda: database_threads() <= threads_before, 1.0)
    left = database_threads() - threads_before
    report.add("the database engine is disposed at shutdown", left <= 0,
               observed=f"{left} database connection thread(s) still running", expected="none",
               hint="Create the engine in the lifespan and `await engine.dispose()` after the `yield`: "
                    "each connection left open keeps a thread.")
    if leaked is not None:
        report.add("nothing still running after shutdown", not leaked, observed=", ".join(leaked[:2]) or "nothing",
                   expected="no task left", hint="A task the app starts must end (or be cancelled and awaited) "
                   "before the lifespan returns.")


@check("Lesson 14 · the service's API contract", limit_s=20)
async def check_contract(report, make_app):
    shop = Shop()
    try:
        app = build(report, make_app, shop)
        if app is None:
            return
        before = database_threads()
        async with serve(app, raise_app_exceptions=False) as client:
            await _contract(report, client, shop)
        if report.passed:
            await judge_resources(report, shop, before)
    finally:
        shop.remove()


# ---- under load --------------------------------------------------------------------------------

ORDERS = 20


async def _load(report, rec, shop: Shop, watch: BlockingWatch) -> None:
    items = [_item() + str(i) for i in range(ORDERS)]
    slow, failing = set(items[:3]), set(items[3:6])
    shop.slow |= {("shipping", i) for i in slow}
    shop.failing |= {("stock", i) for i in failing}
    users = ["alice", "bob"] * (ORDERS // 2)
    order = list(range(ORDERS))
    random.shuffle(order)

    async def one(i):
        return await rec.post("/orders", json={"item": items[i], "quantity": 1 + i % 10, "card": _card()},
                              headers=_auth(users[i]), label=f"order {i}")

    bad = rec.post("/orders", json={"item": "x", "quantity": 99, "card": _card()}, headers=_auth("bob"),
                   label="a bad order")
    *answers, bad = await asyncio.gather(*(one(i) for i in order), bad)
    by_item = {items[i]: a for i, a in zip(order, answers)}
    wrong = [a for a in answers if a.status != 201]
    if not report.add(f"{ORDERS} orders at once → 201 each", not wrong,
                      observed=f"{len(wrong)} not 201, e.g. {wrong[0].label}: {wrong[0].show()}" if wrong
                      else f"{ORDERS} × 201", expected="201 for every order",
                      hint=_load_hint(wrong)):
        return
    report.add("a bad order among them → 422", bad.status == 422, observed=bad.show(), expected="422",
               hint="Validate the body with the order model (quantity 1 to 10).")
    report.add("the loop stays free", not watch.blocked, observed=watch.summary(), expected="no blocking call",
               hint="Every wait in `async def` must be awaited (`await asyncio.sleep`, the async clients).")
    for kind, names, want in (("slow shipping", slow, ["shipping"]), ("failing stock", failing, ["stock"]),
                              ("healthy", set(items) - slow - failing, [])):
        off = [(n, by_item[n].json_or_none()) for n in names
               if not isinstance(by_item[n].json_or_none(), dict) or by_item[n].json()["missing"] != want]
        if not report.add(f"orders with {kind} upstreams: missing = {want}", not off,
                          observed=f"{off[0][0]}: {json.dumps(off[0][1])[:120]}" if off else f"{len(names)} right",
                          expected=f"`missing` {want}, the other answer kept",
                          hint="Ask both upstreams, wait at most the deadline, and give up on each one separately: "
                               "a failure or a timeout of one must not lose the other's answer."):
            return
    late = [n for n in slow if by_item[n].wait_s is None or by_item[n].wait_s > SLOW_S / 3]
    report.add("orders answer by the deadline, not when the slow upstream does", not late,
               observed=f"{len(late)} slow order(s) waited {max((by_item[n].wait_s or 0) for n in late):.2f} s"
               if late else f"slowest {max(by_item[n].wait_s for n in slow):.2f} s", expected=f"well under {SLOW_S:g} s",
               hint="Bound the wait: `asyncio.timeout(...)` around the calls (or `asyncio.wait(..., timeout=)`).")
    await asyncio.sleep(0.05)  # a cancellation lands on the call's next step
    report.add("a call past the deadline is cancelled, not left running", shop.cancelled >= len(slow),
               observed=f"{shop.cancelled} of {len(slow)} slow calls cancelled; {shop.in_flight.current} still in flight",
               expected=f"{len(slow)} cancelled", hint="Cancel what missed the deadline: `asyncio.timeout` does it; "
               "after `asyncio.wait(timeout=...)` call `.cancel()` on each pending task.")
    serial = sorted(set(items) - shop.overlapped)
    report.add("each order asks both upstreams at once", not serial,
               observed=f"{len(serial)} of {ORDERS} orders asked one after the other" if serial
               else "both in flight together, every order", expected="stock and shipping in flight together",
               hint="Start both calls before awaiting either: `asyncio.gather`, or a `TaskGroup`.")
    await rec.settle(5.0)
    created = {(a.json()["owner"], a.json()["id"]): a for a in answers}
    sent = Counter(shop.mailer.sent)
    extra = [k for k, n in sent.items() if n > 1 or k not in created]
    report.add("one confirmation e-mail per order", set(sent) == set(created) and not extra,
               observed=f"{len(set(sent) & set(created))} of {ORDERS} orders e-mailed"
               + (f", {sum(sent.values()) - len(set(sent) & set(created))} extra" if extra or sum(sent.values()) > len(
                   set(sent)) else ""), expected=f"{ORDERS}, each once, to the order's owner",
               hint="Send `shop.mailer.send(owner, order_id)` once per order, after it is stored "
                    "(`BackgroundTasks`), and let nothing stop it: no exception may escape before it.")
    early = [k for k, a in created.items() for e in rec.find("mark")
             if e.data.get("email") == k and a.ended_at is not None and e.t < a.ended_at]
    report.add("the client does not wait for its e-mail", not early,
               observed=f"{len(early)} e-mail(s) sent before the order's answer" if early else "every e-mail after",
               expected="each e-mail after its answer", hint="Send it after the response: `background_tasks.add_task(...)`.")


def _load_hint(wrong) -> str:
    text = " ".join(str(a.error) + a.text for a in wrong)
    if "concurrent" in text.lower() or "session" in text.lower() or "transaction" in text.lower():
        return ("A session serves one request at a time: give each request its own (a `yield` dependency over "
                "the lifespan's sessionmaker), never one shared by the app.")
    return ("They pass one at a time (the first check) and fail together: look for something the requests share "
            "(a session, a connection, a global) and give each request its own.")


@check("Lesson 14 · the service under load and failure", limit_s=30)
async def check_under_load(report, make_app):
    shop = Shop()
    try:
        app = build(report, make_app, shop)
        if app is None:
            return
        before = database_threads()
        async with BlockingWatch() as watch:
            async with record(app, graceful_s=2.0) as rec:
                await _load(report, rec, shop, watch)
        if report.passed:
            await judge_resources(report, shop, before, rec.leaked_tasks)
    finally:
        shop.remove()
