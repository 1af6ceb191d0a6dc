"""Lesson 10's stand-ins (the token book, the price ticker, the chat message), the course's own
feed handler that the hub exercise plugs into, and the drawing of who received what."""

from __future__ import annotations

import asyncio
import random
import secrets

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

from ..plots import render_png

TICK_S = 0.01  # the ticker's pace
SEND_TIMEOUT_S = 0.1  # how long the hub may wait for one client to take one message
QUEUE_SIZE = 8  # messages the hub may hold for one client


class ChatMessage(BaseModel):
    """What a client may send on /chat."""

    room: str = Field(min_length=1, max_length=30)
    text: str = Field(min_length=1, max_length=200)


class Tick(BaseModel):
    symbol: str
    price: float


class Users:
    """Session tokens and who they belong to (new random tokens on each `reset()`)."""

    NAMES = ("ada", "grace", "linus", "barbara", "guido", "margaret")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens = {f"tok-{secrets.token_hex(4)}": name for name in self.NAMES}
        self.lookups = 0

    def lookup(self, token: str | None) -> str | None:
        """The user a token belongs to, or None."""
        self.lookups += 1
        return self.tokens.get(token or "")

    def token_for(self, name: str) -> str:
        return next(token for token, who in self.tokens.items() if who == name)


class Ticker:
    """A stream of price ticks, one every `TICK_S`; counts the subscriptions still open."""

    SYMBOLS = ("ACME", "INIT", "GLOBEX", "UMBRELLA")

    def __init__(self) -> None:
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.random = random.Random(seed)
        self.open_subscriptions = 0
        self.sent = 0

    async def ticks(self):
        """`async for tick in ticker.ticks():` — one `Tick` every TICK_S, forever."""
        self.open_subscriptions += 1
        try:
            while True:
                await asyncio.sleep(TICK_S)
                self.sent += 1
                yield Tick(symbol=self.random.choice(self.SYMBOLS), price=round(self.random.uniform(10, 500), 2))
        finally:
            self.open_subscriptions -= 1


users = Users()
ticker = Ticker()


# ---- the hub's surroundings: the course's own /feed handler ---------------------------------------

class FeedLog:
    """What the course's /feed handler saw: who joined, and sends attempted to clients already gone."""

    def __init__(self) -> None:
        self.joined: set = set()
        self.sends_to_gone: dict = {}  # client -> sends the hub attempted after it was gone


def feed_app(hub, log: FeedLog | None = None) -> FastAPI:
    """An app whose /feed registers each client with `hub` and unregisters it when it leaves."""
    app = FastAPI()
    log = log if log is not None else FeedLog()

    @app.websocket("/feed")
    async def feed(websocket: WebSocket):
        client = websocket.scope.get("course.client")
        original = websocket.send

        async def counted_send(message):  # counts what the hub still sends to a client that is gone
            if client is not None and client.gone and message.get("type") == "websocket.send":
                log.sends_to_gone[client] = log.sends_to_gone.get(client, 0) + 1
            await original(message)

        websocket.send = counted_send
        await websocket.accept()
        await hub.connect(websocket)
        log.joined.add(client)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            hub.disconnect(websocket)

    app.state.feed_log = log
    return app


# ---- drawing ----------------------------------------------------------------------------------------

def draw_deliveries(clients, expected: int, title: str) -> bytes:
    """One bar per client: how many of the `expected` messages it received (grey: dead, amber: slow)."""

    def draw(ax):
        from matplotlib.ticker import MaxNLocator

        counts = [len(c.received) + len(c.backlog) for c in clients]
        colors = ["#8c959f" if c.died else "#bf8700" if c.ever_stalled else "#2f81f7" for c in clients]
        numbers = range(1, len(clients) + 1)
        ax.bar(numbers, counts, color=colors)
        # A dead client usually got nothing: a bar of height 0 would not show, so mark it.
        for number, client, count in zip(numbers, clients, counts):
            if client.died and count == 0:
                ax.plot(number, 0, marker="x", color="#8c959f", markersize=8, clip_on=False)
        special = {n for n, c in zip(numbers, clients) if c.died or c.ever_stalled}
        ax.set_xticks(sorted(set(range(1, len(clients) + 1, max(1, len(clients) // 10))) | special))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axhline(expected, color="#1a7f37", linewidth=1, linestyle="--")
        ax.text(len(clients) + 0.5, expected, f" {expected} sent", va="bottom", ha="right", fontsize=10, color="#1a7f37")
        ax.set_xlabel("client (blue: live, grey or ×: dead, amber: stopped reading)", fontsize=10)
        ax.set_ylabel("messages received", fontsize=10)
        ax.set_ylim(0, expected * 1.25 + 1)
        ax.set_title(title, fontsize=12)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)

    return render_png(draw, height=2.6)


class Picture:
    """Shows PNG bytes in a notebook."""

    def __init__(self, png: bytes) -> None:
        self.png = png

    def _repr_png_(self) -> bytes:
        return self.png
