"""Lesson 10's checks: auth at the handshake, receiving and sending at once, a broadcast hub.

Verdicts come from exact signals of the in-process WebSocket driver (`checks.ws`): which ASGI
message decided the handshake and with what close code, every message each client received
(counted, in order), sends the app attempted to clients already gone, the tasks each connection
started and left running, the ticker's open subscriptions. Clients leave, die and stall on
purpose; every wait is bounded and nothing a check starts outlives it.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time

from ..harness import describe_exception
from ..runner import check
from ..ws import STALL_BUFFER, sockets
from .world import QUEUE_SIZE, SEND_TIMEOUT_S, FeedLog, feed_app, ticker, users

WAIT_S = 0.5  # how long a check waits for something that should take milliseconds


def _handler_error(client) -> str:
    return f"the handler raised {describe_exception(client.error)}" if client.error is not None else ""


# ---- exercise 1: auth at the handshake, validated messages -------------------------------------------

def _refusal(report, name: str, client) -> bool:
    if client.accepted:
        report.fail(name, observed=f"accepted at {client.accepted_at * 1000:.0f} ms"
                    + (f", then closed with {client.close_code}" if client.close_code else ""),
                    expected="refused before accept(), close code 1008",
                    hint="Check the token before `accept()`: once accepted, an unknown client holds an open "
                         "socket and the handler's resources. Refuse with `websocket.close(code=...)` first.")
        return False
    if client.http_status is not None:
        report.fail(name, observed=f"refused with an HTTP {client.http_status} response (an HTTPException)",
                    expected="close code 1008 (policy violation)",
                    hint="An `HTTPException` is an HTTP answer; a WebSocket refusal is a close code. Close with "
                         "`status.WS_1008_POLICY_VIOLATION` (or raise `WebSocketException` with it).")
        return False
    if client.error is not None or client.close_code != 1008:
        observed = _handler_error(client) or f"refused with close code {client.close_code}"
        report.fail(name, observed=observed, expected="close code 1008 (policy violation)",
                    hint="Refuse a missing or unknown token with `status.WS_1008_POLICY_VIOLATION`, and return.")
        return False
    report.add(name, True, observed="refused before accepting, close code 1008")
    return True


@check("Lesson 10 · /chat refuses unknown tokens at the handshake and validates every message", limit_s=10)
async def check_chat(report, app):
    users.reset()
    name = random.choice(users.NAMES)
    token = users.token_for(name)
    room, text = f"room-{secrets.token_hex(2)}", f"hello {secrets.token_hex(3)}"
    async with sockets(app) as session:
        _refusal(report, "no token: refused before accepting", await session.connect("/chat", timeout=None))
        stranger = await session.connect(f"/chat?token=tok-{secrets.token_hex(5)}", timeout=None)
        if not _refusal(report, "an unknown token: refused before accepting", stranger):
            return
        ws = await session.connect(f"/chat?token={token}", timeout=WAIT_S)
        if not ws.accepted:
            report.fail("a known token is accepted", observed=ws.summary(), expected="accepted",
                        hint="Look the token up with `users.lookup(token)`: a known one names its user; "
                             "accept that connection.")
            return
        report.add("a known token is accepted", True, observed=f"accepted as {name}")
        want = {"sender": name, "room": room, "text": text}
        if not await _answered(report, ws, "a valid message is answered", {"room": room, "text": text}, want):
            return
        await ws.send_text("hello?")
        frame = await ws.receive_json(WAIT_S)
        if not _error_frame(report, ws, "text that is not JSON: an error frame, and the connection stays open",
                            frame, None):
            return
        await ws.send_json({"room": room, "text": "x" * 250})
        frame = await ws.receive_json(WAIT_S)
        if not _error_frame(report, ws, "an invalid message: an error frame naming the field", frame, "text"):
            return
        again = {"room": room, "text": f"again {secrets.token_hex(3)}"}
        if not await _answered(report, ws, "the next message is still answered", again, {"sender": name, **again}):
            return
        await ws.leave()
        ended = await ws.finished(WAIT_S)
        report.add("leaving ends the handler cleanly", ended and ws.error is None,
                   observed=("the handler still runs" if not ended else _handler_error(ws) or "returned"),
                   expected="returned, without an error",
                   hint="A client that leaves makes `receive_*` raise `WebSocketDisconnect`: catch it and return.")
        back = await session.connect(f"/chat?token={token}", timeout=WAIT_S)
        again = {"room": room, "text": f"back {secrets.token_hex(3)}"}
        if back.accepted:
            await _answered(report, back, "a reconnect with the same token works", again, {"sender": name, **again})
        else:
            report.fail("a reconnect with the same token works", observed=back.summary(), expected="accepted",
                        hint="Keep no state that refuses a user who comes back.")


async def _answered(report, ws, name: str, sent: dict, want: dict) -> bool:
    await ws.send_json(sent)
    reply = await ws.receive_json(WAIT_S)
    if reply == want:
        report.add(name, True, observed=json.dumps(reply))
        return True
    if reply is None:
        observed = _handler_error(ws) or ("the connection was closed" if ws.gone else f"no reply within {WAIT_S:g} s")
    else:
        observed = json.dumps(reply)[:120] if not isinstance(reply, str) else repr(reply[:120])
    report.fail(name, observed=observed, expected=json.dumps(want),
                hint="Validate the text with `ChatMessage.model_validate_json` and answer with the sender's name, "
                     "the room and the text, as JSON.")
    return False


def _error_frame(report, ws, name: str, frame, field: str | None) -> bool:
    if ws.gone or ws.error is not None:
        report.fail(name, observed=_handler_error(ws) or f"the server closed the connection (code {ws.close_code})",
                    expected='a JSON frame {"error": ...} and the connection kept',
                    hint="One bad message must not end the conversation: catch `ValidationError` inside the loop, "
                         "send an error frame and go on receiving.")
        return False
    text = json.dumps(frame) if frame is not None else ""
    good = isinstance(frame, dict) and bool(frame.get("error")) and (field is None or field in text)
    report.add(name, good, observed=text[:120] or f"nothing within {WAIT_S:g} s",
               expected='{"error": ...}' + (f" mentioning {field!r}" if field else ""),
               hint="Send the client a JSON object with an \"error\" key that says what was wrong (Pydantic's "
                    "`errors()` names the field), and keep the connection.")
    return good


# ---- exercise 2: receiving and sending at once --------------------------------------------------------

def _ticks(client) -> int:
    return sum(1 for text in client.texts if '"symbol"' in text)


@check("Lesson 10 · /ticks pushes prices and answers pings at once, and ends with its client", limit_s=10)
async def check_ticks(report, app):
    ticker.reset(seed=random.randint(0, 10**6))
    async with sockets(app) as session:
        silent = await session.connect("/ticks", timeout=None, label="silent client")
        if not silent.accepted:
            report.fail("/ticks accepts a connection", observed=silent.summary(), expected="accepted",
                        hint="Accept the connection first.")
            return
        got = await silent.wait_for(lambda c: _ticks(c) >= 5 or c.gone, WAIT_S)
        report.add("a client that never sends still gets prices", got and _ticks(silent) >= 5,
                   observed=f"{_ticks(silent)} ticks in {WAIT_S:g} s" + (f"; {_handler_error(silent)}" if silent.error else ""),
                   expected="a tick every 10 ms (at least 5)",
                   hint="Pushing must not wait for the client to speak: run the push loop and the receive loop "
                        "at the same time, each in its own task of one task group.")
        chatty = await session.connect("/ticks", timeout=WAIT_S, label="chatty client")
        for attempt in (1, 2):
            number = random.randint(1, 10**6)
            if chatty.gone:
                report.fail(f"ping {attempt} is answered while prices flow",
                            observed=_handler_error(chatty) or f"the server had closed the connection (code {chatty.close_code})",
                            expected=f'{{"pong": {number}}}',
                            hint="Keep receiving until the client leaves: answer a second message from the same "
                                 "client too.")
                return
            await chatty.send_json({"ping": number})
            pong = json.dumps({"pong": number}, separators=(",", ":"))
            answered = await chatty.wait_for(lambda c: any(_same_json(t, pong) for t in c.texts) or c.gone, WAIT_S)
            answered = answered and any(_same_json(t, pong) for t in chatty.texts)
            report.add(f"ping {attempt} is answered while prices flow", answered,
                       observed=(f'{{"pong": {number}}} received, among {_ticks(chatty)} ticks' if answered else
                                 _handler_error(chatty) or f"no pong within {WAIT_S:g} s ({_ticks(chatty)} ticks)"),
                       expected=f'{{"pong": {number}}}',
                       hint="Receive in a loop of its own, beside the push loop, and answer each ping "
                            "(a second message from the same client too).")
            if not answered:
                return
        await silent.leave()
        ended = await silent.finished(WAIT_S)
        alive = silent.tasks_left if ended else []
        if not ended:
            report.fail("the handler returns when its client leaves", observed=f"still running {WAIT_S:g} s later",
                        expected="returned", hint="When the receive loop sees `WebSocketDisconnect`, end the whole "
                                                  "connection: a task group cancels the push loop for you.")
        else:
            report.add("the handler returns when its client leaves, cleanly", silent.error is None,
                       observed=_handler_error(silent) or "returned", expected="returned without an error",
                       hint="A task group raises its tasks' errors as an `ExceptionGroup`: catch the client's "
                            "leaving with `except* WebSocketDisconnect`.")
            report.add("no task outlives the connection", not alive,
                       observed=f"still running: {', '.join(alive)}" if alive else "none left",
                       expected="none",
                       hint="A task started with `create_task` (or left running by `gather`/`wait`) is not "
                            "cancelled when the handler returns; tasks in a task group are.")
        others = 0 if chatty.gone else 1  # the chatty client's own
        open_now = ticker.open_subscriptions - others
        report.add("the ticker subscription is closed", open_now <= 0,
                   observed=f"{max(open_now, 0)} subscription(s) of the client that left still open", expected="0",
                   hint="Iterate `ticker.ticks()` inside the push task, so cancelling the task closes it.")


def _same_json(text: str, want: str) -> bool:
    try:
        return json.loads(text) == json.loads(want)
    except ValueError:
        return False


# ---- exercise 3: a hub that survives dead and slow clients ---------------------------------------------

MESSAGES = 30
GAP_S = 0.002  # between two broadcasts
LIVE_BOUND_S = 1.0  # every live client has every message within this (the sends themselves take ~1 ms)


@check("Lesson 10 · the broadcast hub: dozens of clients, dead and slow ones among them", limit_s=15)
async def check_hub(report, Hub):
    hub = Hub()
    log = FeedLog()
    app = feed_app(hub, log)
    count = random.randint(24, 36)
    run = secrets.token_hex(2)
    async with sockets(app) as session:
        clients = [session.start("/feed", label=f"client {i + 1}") for i in range(count)]
        if not await session.wait_for(lambda: all(c in log.joined or c.done for c in clients), 3.0):
            report.fail("every client joins", observed=f"{len(log.joined)} of {count} joined",
                        expected=f"{count}", hint="`connect()` registers the socket and returns.")
            return
        broken = [c for c in clients if c.error is not None]
        if broken:
            report.fail("every client joins", observed=_handler_error(broken[0]), expected="no error",
                        hint="`connect()` registers the socket; the handler has already accepted it.")
            return
        dead = random.sample(clients, 3)
        slow = random.choice([c for c in clients if c not in dead])
        live = [c for c in clients if c not in dead and c is not slow]
        slow.stall()
        for client in dead:
            client.die()  # their handlers have not run yet: the hub may still hold them
        started = time.perf_counter()
        messages = [f"{run}:{i}" for i in range(MESSAGES)]
        failed = None
        try:  # the first message goes out in this very turn of the loop, before the dead clients' handlers
            async with asyncio.timeout(3 * LIVE_BOUND_S):  # run and learn that their clients are gone
                await hub.broadcast(messages[0])
        except TimeoutError:
            pass  # judged below: the live clients lack messages
        except Exception as exc:
            failed = exc
        publisher = asyncio.create_task(_publish(hub, messages[1:] if failed is None else []))
        complete = await session.wait_for(lambda: all(len(c.received) >= MESSAGES for c in live) or publisher.done(),
                                          LIVE_BOUND_S)
        await session.wait_for(lambda: all(len(c.received) >= MESSAGES for c in live), 0.05)
        took = time.perf_counter() - started
        if failed is None and publisher.done() and not publisher.cancelled():
            failed = publisher.exception()
        publisher.cancel()
        if failed is not None:
            raised = describe_exception(failed)
            twice = "in disconnect(" in raised or isinstance(failed, (ValueError, KeyError))
            report.fail("broadcast() survives a dead client", observed=f"broadcast() raised {raised}",
                        expected="every live client served, the dead ones skipped",
                        hint="A client can be removed twice (by its handler when it leaves, by the hub after a failed "
                             "send): `disconnect()` must forgive one it no longer has (`dict.pop(ws, None)`)."
                        if twice else "A send to a client that is gone raises. Catch it for that client alone, drop "
                                      "that client, and go on with the others.")
        full = [c for c in live if [t for _, t in c.received] == [f"{run}:{i}" for i in range(MESSAGES)]]
        counts = sorted({len(c.received) for c in live if c not in full})
        report.add("every live client gets every message, once, in order", len(full) == len(live),
                   observed=f"{len(full)} of {len(live)} live clients got all {MESSAGES} within {LIVE_BOUND_S:g} s"
                   + (f"; the others got {', '.join(map(str, counts))}" if counts else f" ({took * 1000:.0f} ms)"),
                   expected=f"all {len(live)}, with 3 dead clients and one that stopped reading",
                   hint="One client that stops reading makes its send wait: give each client its own bounded "
                        f"queue and sender task, or bound each send (`asyncio.timeout({SEND_TIMEOUT_S})`) and "
                        "send to everyone concurrently.")
        tries = sum(log.sends_to_gone.get(c, 0) for c in dead)
        report.add("dead clients are dropped", tries <= len(dead),
                   observed=f"{tries} sends attempted to {len(dead)} dead clients for {MESSAGES} messages",
                   expected=f"at most one each ({len(dead)})",
                   hint="When a send to a client fails, remove that client from the hub, so the next message "
                        "does not try it again.")
        slow.resume()
        await session.wait_for(lambda: False, 0.05)
        held = len(slow.received)
        report.add("what is held for a slow client stays bounded", held <= STALL_BUFFER + 2 * QUEUE_SIZE + 1,
                   observed=f"it received {held} of {MESSAGES} once it read again",
                   expected=f"at most {STALL_BUFFER + 2 * QUEUE_SIZE + 1}: dropped, or messages dropped for it",
                   hint=f"Memory per client must be bounded: `asyncio.Queue(maxsize={QUEUE_SIZE})`; when it is full, "
                        "drop the client (or its oldest messages).")
        await _late_joiner(report, session, hub, log, live, run)
        errors = [c for c in clients if c.error is not None]
        report.add("disconnect() can be called twice", not errors,
                   observed=f"{len(errors)} handler(s) raised {describe_exception(errors[0].error)}" if errors
                   else "no handler raised", expected="no error",
                   hint="A client can be removed twice: by the hub after a failed send, then by its handler when "
                        "it leaves. Make `disconnect()` forgive a client it no longer has (`dict.pop(ws, None)`).")
    report.add("no task outlives its client", not session.leaked_tasks,
               observed=f"still running after every client left: {', '.join(session.leaked_tasks[:2])}"
               if session.leaked_tasks else "none", expected="none",
               hint="A sender task per client must end when the client leaves: cancel it in `disconnect()`.")


async def _publish(hub, messages):
    for message in messages:
        await asyncio.sleep(GAP_S)  # a publisher's pace
        await hub.broadcast(message)


async def _late_joiner(report, session, hub, log, live, run) -> None:
    late = session.start("/feed", label="late joiner")
    joined = await session.wait_for(lambda: late in log.joined or late.done, WAIT_S)
    last = f"{run}:last"
    if joined:
        try:
            async with asyncio.timeout(WAIT_S):
                await hub.broadcast(last)
        except TimeoutError:
            pass
        except Exception:
            pass  # reported above
    have = await session.wait_for(lambda: late.texts[-1:] == [last], WAIT_S)
    report.add("a client that connects later gets the next message", joined and have,
               observed=f"it received {late.texts[-3:]}" if late.texts else "nothing",
               expected=repr(last), hint="`connect()` adds the new socket to the hub, as it did for the first ones.")
