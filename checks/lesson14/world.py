"""Lesson 14's stand-in world: the shop the capstone service talks to, and the course's own
version of the service (the app the learner's tests are judged on). No judging here (judge_*.py).

`Shop` holds what a real deployment would reach over the network, with exact counters:
- `shop.connect()` opens the upstream client (`await client.get("stock" | "shipping", item)`),
  counted in `opened` / `closed`; a closed client refuses calls;
- per item, an upstream can be made slow (`shop.slow`) or failing (`shop.failing`); calls
  cancelled while waiting are counted in `cancelled`, and `overlapped` holds the items whose two
  upstream calls were in flight at the same moment;
- `shop.mailer.send(to, order_id)` sends one e-mail, recorded in `shop.mailer.sent` (and marked
  on an active recorder, so a timeline shows it after the response);
- `shop.database_url`: a SQLite file of the shop's own (the app makes its engine on it).
"""


import asyncio
import atexit
import os
import shutil
import tempfile
import threading
import uuid
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..recorder import mark
from ..services import UpstreamError
from ..timing import InFlight

TOKENS = {"alice-token": "alice", "bob-token": "bob"}  # the demo users' API tokens
DEADLINE_S = 0.25  # an order waits at most this long for its two upstreams
LATENCY_S = 0.03  # an upstream's usual answer time
SLOW_S = 3.0  # an upstream made slow answers after this long (far past the deadline)
MAIL_S = 0.02  # sending one e-mail
SERVICES = ("stock", "shipping")


class Mailer:
    def __init__(self, delay_s: float = MAIL_S) -> None:
        self.delay_s = delay_s
        self.sent: list[tuple[str, int]] = []

    async def send(self, to: str, order_id: int) -> None:
        """Send the confirmation of order `order_id` to user `to`."""
        await asyncio.sleep(self.delay_s)
        self.sent.append((to, order_id))
        mark(f"e-mail to {to}: order {order_id}", kind="mark", email=(to, order_id))


class UpstreamClient:
    """One connection pool to the upstreams (think `httpx.AsyncClient`): open it once, close it at exit."""

    def __init__(self, shop) -> None:
        self._shop, self.closed = shop, False

    async def get(self, service: str, item: str) -> dict:
        if self.closed:
            raise RuntimeError("this upstream client is closed")
        if service not in SERVICES:
            raise ValueError(f"no upstream named {service!r} (there are {', '.join(SERVICES)})")
        return await self._shop._call(service, item)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self._shop.closed += 1


class Shop:
    def __init__(self, database_url: str | None = None, *, latency_s: float = LATENCY_S, mail_s: float = MAIL_S) -> None:
        self.latency_s = latency_s
        self._folder = None
        if database_url is None:
            self._folder = tempfile.mkdtemp(prefix="course-lesson14-")
            database_url = f"sqlite+aiosqlite:///{os.path.join(self._folder, 'shop.db')}"
        self.database_url = database_url
        self.mailer = Mailer(mail_s)
        self.slow: set[tuple[str, str]] = set()  # (service, item) answering after SLOW_S
        self.failing: set[tuple[str, str]] = set()  # (service, item) raising UpstreamError
        self.reset()

    def reset(self) -> None:
        self.opened = self.closed = self.cancelled = 0
        self.calls: list[tuple[str, str]] = []
        self.overlapped: set[str] = set()
        self.in_flight = InFlight()
        self._active: dict[str, set[str]] = {}
        self.mailer.sent.clear()

    def connect(self) -> UpstreamClient:
        """A new upstream client (one per app: open it in the lifespan, `await client.aclose()` at exit)."""
        self.opened += 1
        return UpstreamClient(self)

    def answer(self, service: str, item: str) -> dict:
        value = sum(map(ord, item))
        return {"available": value % 17} if service == "stock" else {"days": 1 + value % 5}

    async def _call(self, service: str, item: str) -> dict:
        self.calls.append((service, item))
        active = self._active.setdefault(item, set())
        if active - {service}:
            self.overlapped.add(item)
        active.add(service)
        try:
            with self.in_flight.call():
                await asyncio.sleep(SLOW_S if (service, item) in self.slow else self.latency_s)
            if (service, item) in self.failing:
                raise UpstreamError(f"{service} is down")
            return self.answer(service, item)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            active.discard(service)

    def remove(self) -> None:
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)


def dev_shop() -> Shop:
    """The notebook's own shop, its database removed when the kernel ends."""
    shop = Shop()
    atexit.register(shop.remove)
    return shop


def database_threads() -> int:
    """aiosqlite runs each open connection in a thread: none left means every engine was disposed."""
    return sum(1 for t in threading.enumerate() if "_connection_worker_thread" in t.name and t.is_alive())


# ---- the course's own service (the learner's tests are judged on it, with planted bugs) -----------

class _Base(DeclarativeBase):
    pass


class _OrderRow(_Base):
    __tablename__ = "course_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(50))
    item: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[int]
    card_last4: Mapped[str] = mapped_column(String(4))
    card: Mapped[str] = mapped_column(String(16))  # kept for payment; never sent back
    stock: Mapped[str | None] = mapped_column(String(200), default=None)
    shipping: Mapped[str | None] = mapped_column(String(200), default=None)


class _OrderIn(BaseModel):
    item: str = Field(min_length=1, max_length=40)
    quantity: int = Field(ge=1, le=10)
    card: str = Field(pattern=r"^\d{16}$")


class _Order(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    owner: str
    item: str
    quantity: int
    card_last4: str
    stock: dict | None
    shipping: dict | None
    missing: list[str]


class _OrderLeaky(_Order):  # a planted bug: the card number in the response
    card: str


def _envelope(status: int, message: str, request: Request, headers=None) -> JSONResponse:
    request_id = request.scope.get("state", {}).get("request_id", "")
    return JSONResponse({"error": {"code": status, "message": message, "request_id": request_id}},
                        status_code=status, headers=dict(headers or {}, **{"X-Request-ID": request_id}))


def course_app(shop: Shop, *, flaws: frozenset[str] = frozenset()) -> FastAPI:
    """The capstone service as the course writes it; `flaws` plants bugs (the notebook never passes it)."""
    import json

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = create_async_engine(shop.database_url)
        client = shop.connect()
        try:
            async with engine.begin() as connection:
                await connection.run_sync(_Base.metadata.create_all)
            yield {"sessions": async_sessionmaker(engine, expire_on_commit=False), "upstream": client}
        finally:
            await client.aclose()
            await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        return response

    if "no envelope" not in flaws:
        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, exc: StarletteHTTPException):
            return _envelope(exc.status_code, str(exc.detail), request, exc.headers)

        @app.exception_handler(RequestValidationError)
        async def invalid(request: Request, exc: RequestValidationError):
            return _envelope(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), request)

    async def session(request: Request):
        async with request.state.sessions() as s:
            yield s

    async def user(authorization: Annotated[str | None, Header()] = None) -> str:
        token = (authorization or "").removeprefix("Bearer ").strip()
        if token not in TOKENS:
            if "auth skipped" in flaws:
                return "alice"
            raise HTTPException(401, "a valid token is required", headers={"WWW-Authenticate": "Bearer"})
        return TOKENS[token]

    Out = _OrderLeaky if "card leaked" in flaws else _Order

    def out(row: _OrderRow) -> dict:
        stock, shipping = (json.loads(v) if v else None for v in (row.stock, row.shipping))
        return {"id": row.id, "owner": row.owner, "item": row.item, "quantity": row.quantity, "card": row.card,
                "card_last4": row.card_last4, "stock": stock, "shipping": shipping,
                "missing": sorted(name for name, v in (("stock", stock), ("shipping", shipping)) if v is None)}

    async def ask(client, service: str, item: str):
        try:
            async with asyncio.timeout(DEADLINE_S):
                return await client.get(service, item)
        except (TimeoutError, UpstreamError):
            if "failure is 500" in flaws:
                raise
            return None

    @app.post("/orders", status_code=201, response_model=Out)
    async def create(order: _OrderIn, request: Request, owner: Annotated[str, Depends(user)],
                     s: Annotated[AsyncSession, Depends(session)], tasks: BackgroundTasks):
        stock, shipping = await asyncio.gather(*(ask(request.state.upstream, name, order.item) for name in SERVICES))
        row = _OrderRow(owner=owner, item=order.item, quantity=order.quantity, card=order.card,
                        card_last4=order.card[-4:], stock=stock and json.dumps(stock),
                        shipping=shipping and json.dumps(shipping))
        s.add(row)
        await s.commit()
        tasks.add_task(shop.mailer.send, owner, row.id)
        return out(row)

    @app.get("/orders/{order_id}", response_model=Out)
    async def read(order_id: int, owner: Annotated[str, Depends(user)], s: Annotated[AsyncSession, Depends(session)]):
        row = await s.get(_OrderRow, order_id)
        if row is None or row.owner != owner:
            raise HTTPException(404, "no such order")
        return out(row)

    return app
