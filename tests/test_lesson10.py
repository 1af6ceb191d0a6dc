"""Lesson 10's checks: right answers pass, the guides' mistakes fail with their own hint.

Each answer is source code run in the lesson's own namespace (its imports and stand-ins), the
way a learner's cell is.
"""

import textwrap

import pytest
from conftest import assert_feedback_rules, failure_text, names, notebook_namespace

from checks.lesson10 import check_chat, check_hub, check_ticks

pytestmark = pytest.mark.anyio
NS = notebook_namespace("10_websockets")


def build(source: str, name: str, head: str = ""):
    namespace = dict(NS)
    exec(compile(head + textwrap.dedent(source), "<answer>", "exec"), namespace)
    return namespace[name]


# ---- exercise 1: auth at the handshake, validated messages -------------------------------------------

CHAT = "app = FastAPI()\n"
LOOP = """
            try:
                while True:
                    raw = await websocket.receive_text()
                    try:
                        message = ChatMessage.model_validate_json(raw)
                    except ValidationError as exc:
                        await websocket.send_json({"error": exc.errors(include_url=False, include_input=False)})
                        continue
                    await websocket.send_json({"sender": user, "room": message.room, "text": message.text})
            except WebSocketDisconnect:
                pass
"""
CHAT_RIGHT = {
    "close 1008, then accept": """
        @app.websocket("/chat")
        async def chat(websocket: WebSocket, token: str | None = None):
            user = users.lookup(token)
            if user is None:
                await websocket.close(code=status.WS_1008_POLICY_VIOLATION)
                return
            await websocket.accept()
    """ + LOOP,
    "WebSocketException in a dependency": """
        from fastapi import Depends, WebSocketException
        def current_user(token: str | None = None) -> str:
            user = users.lookup(token)
            if user is None:
                raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION)
            return user

        @app.websocket("/chat")
        async def chat(websocket: WebSocket, user: str = Depends(current_user)):
            await websocket.accept()
    """ + LOOP,
    "iter_text and a readable error": """
        @app.websocket("/chat")
        async def chat(websocket: WebSocket, token: str | None = None):
            if (user := users.lookup(token)) is None:
                return await websocket.close(code=1008, reason="unknown token")
            await websocket.accept()
            async for raw in websocket.iter_text():
                try:
                    message = ChatMessage.model_validate_json(raw)
                except ValidationError as exc:
                    await websocket.send_json({"error": str(exc)})
                else:
                    await websocket.send_json({"sender": user, **message.model_dump()})
    """,
}


def chat_with(head: str, loop: str = LOOP) -> str:
    return """
        @app.websocket("/chat")
        async def chat(websocket: WebSocket, token: str | None = None):
    """ + textwrap.indent(textwrap.dedent(head), " " * 12) + loop


CHAT_WRONG = {
    "the guides': accept, close, HTTPException": (chat_with("""
        await websocket.accept()
        user = users.lookup(token)
        if user is None:
            await websocket.close(code=status.WS_1008_POLICY_VIOLATION)
            raise HTTPException(status_code=401)
    """), "no token: refused before accepting", "before `accept()`"),
    "HTTPException before accepting": (chat_with("""
        user = users.lookup(token)
        if user is None:
            raise HTTPException(status_code=401)
        await websocket.accept()
    """), "no token: refused before accepting", "a close code"),
    "accept, then close 1008": (chat_with("""
        await websocket.accept()
        user = users.lookup(token)
        if user is None:
            await websocket.close(code=1008)
            return
    """), "no token: refused before accepting", "before `accept()`"),
    "close with 1000": (chat_with("""
        user = users.lookup(token)
        if user is None:
            await websocket.close()
            return
    """).replace("try:", "await websocket.accept()\n            try:", 1),
        "no token: refused before accepting", "WS_1008_POLICY_VIOLATION"),
    "no check at all": (chat_with("""
        user = users.lookup(token) or "anonymous"
        await websocket.accept()
    """), "no token: refused before accepting", "before `accept()`"),
    "a bad message ends the connection": (chat_with("""
        user = users.lookup(token)
        if user is None:
            return await websocket.close(code=1008)
        await websocket.accept()
    """, """
            try:
                while True:
                    message = ChatMessage.model_validate_json(await websocket.receive_text())
                    await websocket.send_json({"sender": user, "room": message.room, "text": message.text})
            except WebSocketDisconnect:
                pass
    """), "text that is not JSON: an error frame, and the connection stays open", "catch `ValidationError` inside the loop"),
    "receive_json, no validation": (chat_with("""
        user = users.lookup(token)
        if user is None:
            return await websocket.close(code=1008)
        await websocket.accept()
    """, """
            try:
                while True:
                    data = await websocket.receive_json()
                    await websocket.send_json({"sender": user, "room": data.get("room"), "text": data.get("text")})
            except WebSocketDisconnect:
                pass
    """), "text that is not JSON: an error frame, and the connection stays open", "catch `ValidationError`"),
    "json.loads caught, no model": (chat_with("""
        user = users.lookup(token)
        if user is None:
            return await websocket.close(code=1008)
        await websocket.accept()
    """, """
            import json
            try:
                while True:
                    try:
                        data = json.loads(await websocket.receive_text())
                    except ValueError:
                        await websocket.send_json({"error": "not JSON"})
                        continue
                    await websocket.send_json({"sender": user, "room": data.get("room"), "text": data.get("text")})
            except WebSocketDisconnect:
                pass
    """), "an invalid message: an error frame naming the field", "names the field"),
    "an error frame without saying what": (chat_with("""
        user = users.lookup(token)
        if user is None:
            return await websocket.close(code=1008)
        await websocket.accept()
    """, LOOP.replace('{"error": exc.errors(include_url=False, include_input=False)}', '{"error": "invalid"}')),
        "an invalid message: an error frame naming the field", "names the field"),
    "the token echoed instead of the user": (chat_with("""
        if users.lookup(token) is None:
            return await websocket.close(code=1008)
        user = token
        await websocket.accept()
    """), "a valid message is answered", "the sender's name"),
    "WebSocketDisconnect not caught": (chat_with("""
        user = users.lookup(token)
        if user is None:
            return await websocket.close(code=1008)
        await websocket.accept()
    """, LOOP.replace("except WebSocketDisconnect:\n                pass", "finally:\n                pass")),
        "leaving ends the handler cleanly", "catch it and return"),
    "a user may connect once": ("""
        seen = set()
    """ + chat_with("""
        user = users.lookup(token)
        if user is None or user in seen:
            return await websocket.close(code=1008)
        seen.add(user)
        await websocket.accept()
    """), "a reconnect with the same token works", "comes back"),
}


@pytest.mark.parametrize("name", CHAT_RIGHT)
async def test_chat_right_answers_pass(name):
    report = await check_chat.report(build(CHAT_RIGHT[name], "app", CHAT))
    assert report.passed, failure_text(report)


@pytest.mark.parametrize("name", CHAT_WRONG)
async def test_chat_wrong_answers_fail_with_their_hint(name):
    source, item, hint = CHAT_WRONG[name]
    report = await check_chat.report(build(source, "app", CHAT))
    assert item in names(report), failure_text(report)
    assert hint in next(i.hint for i in report.failures if i.name == item), failure_text(report)
    assert_feedback_rules(report)


async def test_chat_stub_fails_cleanly():
    report = await check_chat.report(build("""
        @app.websocket("/chat")
        async def chat(websocket: WebSocket, token: str | None = None):
            raise NotImplementedError("write the handler")
    """, "app", CHAT))
    assert "no token: refused before accepting" in names(report)
    assert "NotImplementedError" in report.failures[0].observed


# ---- exercise 2: pushing and listening at once -------------------------------------------------------

TICKS = "app = FastAPI()\n"
PUSH = """
            async def push():
                async for tick in ticker.ticks():
                    await websocket.send_json(tick.model_dump())

            async def answer():
                while True:
                    message = await websocket.receive_json()
                    await websocket.send_json({"pong": message.get("ping")})
"""


def ticks_with(body: str, loops: str = PUSH) -> str:
    return """
        @app.websocket("/ticks")
        async def ticks(websocket: WebSocket):
            await websocket.accept()
    """ + loops + textwrap.indent(textwrap.dedent(body), " " * 12)


TICKS_RIGHT = {
    "TaskGroup and except*": ticks_with("""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(push())
                group.create_task(answer())
        except* WebSocketDisconnect:
            pass
    """),
    "anyio task group, cancelled when the client leaves": ticks_with("""
        import anyio
        async with anyio.create_task_group() as group:
            group.start_soon(push)
            try:
                await answer()
            except WebSocketDisconnect:
                group.cancel_scope.cancel()
    """),
    "a push task cancelled and awaited in finally": ticks_with("""
        pusher = asyncio.create_task(push())
        try:
            await answer()
        except WebSocketDisconnect:
            pass
        finally:
            pusher.cancel()
            await asyncio.gather(pusher, return_exceptions=True)
    """),
}
TICKS_WRONG = {
    "receive, then push": (ticks_with("""
        try:
            async for tick in ticker.ticks():
                message = await websocket.receive_json()
                await websocket.send_json({"pong": message.get("ping")})
                await websocket.send_json(tick.model_dump())
        except WebSocketDisconnect:
            pass
    """), "a client that never sends still gets prices", "at the same time"),
    "push only": (ticks_with("""
        try:
            await push()
        except WebSocketDisconnect:
            pass
    """), "ping 1 is answered while prices flow", "Receive in a loop of its own"),
    "answer only": (ticks_with("""
        try:
            await answer()
        except WebSocketDisconnect:
            pass
    """), "a client that never sends still gets prices", "at the same time"),
    "a forgotten create_task": (ticks_with("""
        asyncio.create_task(push())
        try:
            await answer()
        except WebSocketDisconnect:
            pass
    """), "no task outlives the connection", "create_task"),
    "gather": (ticks_with("""
        try:
            await asyncio.gather(push(), answer())
        except WebSocketDisconnect:
            pass
    """), "no task outlives the connection", "gather"),
    "wait FIRST_COMPLETED, the other left running": (ticks_with("""
        tasks = [asyncio.create_task(push()), asyncio.create_task(answer())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    """), "no task outlives the connection", "create_task"),
    "TaskGroup without except*": (ticks_with("""
        async with asyncio.TaskGroup() as group:
            group.create_task(push())
            group.create_task(answer())
    """), "the handler returns when its client leaves, cleanly", "except* WebSocketDisconnect"),
    "one ping answered, then the handler ends": (ticks_with("""
        pusher = asyncio.create_task(push())
        try:
            message = await websocket.receive_json()
            await websocket.send_json({"pong": message.get("ping")})
        finally:
            pusher.cancel()
    """), "ping 2 is answered while prices flow", "a second message"),
    "pushing starts after the first message": (ticks_with("""
        try:
            message = await websocket.receive_json()
            await websocket.send_json({"pong": message.get("ping")})
            async with asyncio.TaskGroup() as group:
                group.create_task(push())
                group.create_task(answer())
        except* WebSocketDisconnect:
            pass
    """), "a client that never sends still gets prices", "at the same time"),
}


@pytest.mark.parametrize("name", TICKS_RIGHT)
async def test_ticks_right_answers_pass(name):
    report = await check_ticks.report(build(TICKS_RIGHT[name], "app", TICKS))
    assert report.passed, failure_text(report)


@pytest.mark.parametrize("name", TICKS_WRONG)
async def test_ticks_wrong_answers_fail_with_their_hint(name):
    source, item, hint = TICKS_WRONG[name]
    report = await check_ticks.report(build(source, "app", TICKS))
    assert item in names(report), failure_text(report)
    assert hint in next(i.hint for i in report.failures if i.name == item), failure_text(report)
    assert_feedback_rules(report)


# ---- exercise 3: the hub ----------------------------------------------------------------------------

HUB_RIGHT = {
    "a bounded queue and a sender task per client": "Hub",  # the notebook's own
    "concurrent sends, each bounded": """
        class Hub:
            def __init__(self):
                self.clients = set()
            async def connect(self, websocket):
                self.clients.add(websocket)
            def disconnect(self, websocket):
                self.clients.discard(websocket)
            async def broadcast(self, message):
                async def send(websocket):
                    try:
                        async with asyncio.timeout(SEND_TIMEOUT_S):
                            await websocket.send_text(message)
                    except Exception:
                        self.disconnect(websocket)
                await asyncio.gather(*(send(ws) for ws in list(self.clients)))
    """,
    "a queue that drops the oldest message": """
        class Hub:
            def __init__(self):
                self.clients = {}
            async def connect(self, websocket):
                queue = asyncio.Queue(maxsize=QUEUE_SIZE)
                async def pump():
                    try:
                        while True:
                            await websocket.send_text(await queue.get())
                    except Exception:
                        self.disconnect(websocket)
                self.clients[websocket] = (queue, asyncio.create_task(pump()))
            def disconnect(self, websocket):
                queue, task = self.clients.pop(websocket, (None, None))
                if task is not None:
                    task.cancel()
            async def broadcast(self, message):
                for queue, _ in list(self.clients.values()):
                    if queue.full():
                        queue.get_nowait()
                    queue.put_nowait(message)
    """,
}

GUIDE = """
    class Hub:
        def __init__(self):
            self.active = []
        async def connect(self, websocket):
            self.active.append(websocket)
        def disconnect(self, websocket):
            self.active.remove(websocket)
        async def broadcast(self, message):
            for connection in self.active:
                await connection.send_text(message)
"""
QUEUES = """
    class Hub:
        def __init__(self):
            self.clients = {}
        async def connect(self, websocket):
            queue = QUEUE
            async def pump():
                try:
                    while True:
                        await websocket.send_text(await queue.get())
                except Exception:
                    self.disconnect(websocket)
            self.clients[websocket] = (queue, asyncio.create_task(pump()))
        def disconnect(self, websocket):
            DISCONNECT
        async def broadcast(self, message):
            for websocket, (queue, _) in list(self.clients.items()):
                try:
                    queue.put_nowait(message)
                except asyncio.QueueFull:
                    self.disconnect(websocket)
"""
BOUNDED = "asyncio.Queue(maxsize=QUEUE_SIZE)"
SAFE = "entry = self.clients.pop(websocket, None)\n            if entry is not None:\n                entry[1].cancel()"
HUB_WRONG = {
    "the guides' manager": (GUIDE, "broadcast() survives a dead client", "Catch it for that client alone"),
    "skips errors, but waits for the slow one": (GUIDE.replace(
        "await connection.send_text(message)", "try:\n                    await connection.send_text(message)\n"
        "                except Exception:\n                    pass"),
        "every live client gets every message, once, in order", "bounded queue"),
    "gather without a timeout": (GUIDE.replace(
        "for connection in self.active:\n                await connection.send_text(message)",
        "await asyncio.gather(*(c.send_text(message) for c in self.active), return_exceptions=True)"),
        "every live client gets every message, once, in order", "bounded queue"),
    "a timeout, one client after another": (GUIDE.replace(
        "await connection.send_text(message)", "try:\n                    async with asyncio.timeout(1):\n"
        "                        await connection.send_text(message)\n                except Exception:\n"
        "                    pass"),
        "every live client gets every message, once, in order", "concurrently"),
    "dead clients kept": (GUIDE.replace("self.active.remove(websocket)", "pass").replace(
        "for connection in self.active:\n                await connection.send_text(message)",
        "async def send(c):\n                try:\n                    async with asyncio.timeout(SEND_TIMEOUT_S):\n"
        "                        await c.send_text(message)\n                except Exception:\n                    pass\n"
        "            await asyncio.gather(*(send(c) for c in self.active))"),
        "dead clients are dropped", "remove that client"),
    "list.remove twice": (GUIDE.replace(
        "for connection in self.active:\n                await connection.send_text(message)",
        "async def send(c):\n                try:\n                    async with asyncio.timeout(SEND_TIMEOUT_S):\n"
        "                        await c.send_text(message)\n                except Exception:\n"
        "                    self.disconnect(c)\n"
        "            await asyncio.gather(*(send(c) for c in list(self.active)))"),
        "broadcast() survives a dead client", "removed twice"),
    "an unbounded queue": (QUEUES.replace("QUEUE", "asyncio.Queue()", 1).replace("DISCONNECT", SAFE),
                           "what is held for a slow client stays bounded", "maxsize"),
    "sender task never cancelled": (QUEUES.replace("QUEUE", BOUNDED, 1).replace(
        "DISCONNECT", "self.clients.pop(websocket, None)"),
        "no task outlives its client", "cancel it in `disconnect()`"),
    "new clients never added": (QUEUES.replace("QUEUE", BOUNDED, 1).replace("DISCONNECT", SAFE).replace(
        "self.clients[websocket] = (queue, asyncio.create_task(pump()))",
        "if len(self.clients) < 40 and not getattr(self, 'closed', False):\n"
        "                self.clients[websocket] = (queue, asyncio.create_task(pump()))").replace(
        "async def broadcast(self, message):", "async def broadcast(self, message):\n            self.closed = True"),
        "a client that connects later gets the next message", "adds the new socket"),
}


@pytest.mark.parametrize("name", HUB_RIGHT)
async def test_hub_right_answers_pass(name):
    source = HUB_RIGHT[name]
    hub = NS["Hub"] if source == "Hub" else build(source, "Hub")
    report = await check_hub.report(hub)
    assert report.passed, failure_text(report)


@pytest.mark.parametrize("name", HUB_WRONG)
async def test_hub_wrong_answers_fail_with_their_hint(name):
    source, item, hint = HUB_WRONG[name]
    report = await check_hub.report(build(source, "Hub"))
    assert item in names(report), failure_text(report)
    assert hint in next(i.hint for i in report.failures if i.name == item), failure_text(report)
    assert_feedback_rules(report)
