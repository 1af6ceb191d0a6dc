"""Stand-ins for the slow things an API talks to, with real latency and exact counters.

They sleep for real (`asyncio.sleep`, `time.sleep`) or hash for real, so timing is what a
learner would meet; each counts calls in flight so a check can see overlap exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from .blocking import blocking_call
from .timing import InFlight, Span


class UpstreamError(Exception):
    """What a failing remote service raises."""


class SlowService:
    """A remote service with `latency_s` of network wait, async or blocking.

    `fails=True` makes every call raise `UpstreamError` after its wait. Calls cancelled while
    waiting are counted in `cancelled`; a `timeline` (if set) records when each call ran.
    """

    def __init__(self, name: str, latency_s: float = 0.1, fails: bool = False):
        self.name = name
        self.latency_s = latency_s
        self.fails = fails
        self.in_flight = InFlight()
        self.cancelled = 0
        self.timeline = None

    def reset(self) -> None:
        self.in_flight.reset()
        self.cancelled = 0

    def should_fail(self, key: str) -> bool:
        return self.fails

    def answer(self, key: str) -> dict:
        """What the service returns for `key` (checks compare responses with it)."""
        return {"service": self.name, "key": key, "value": sum(map(ord, key)) % 97}

    async def get(self, key: str) -> dict:
        """The async client: waits without holding the event loop."""
        start = time.perf_counter()
        try:
            with self.in_flight.call():
                await asyncio.sleep(self.latency_s)
                if self.should_fail(key):
                    raise UpstreamError(f"{self.name} is down")
                return self.answer(key)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            if self.timeline is not None:
                t0 = self.timeline.t0
                self.timeline.spans.append(Span(f"{self.name}({key})", start - t0, time.perf_counter() - t0, "200"))

    def get_blocking(self, key: str) -> dict:
        """The blocking client (think `requests.get`): holds the thread while it waits."""
        blocking_call(f"{self.name}.get_blocking()")
        with self.in_flight.call():
            time.sleep(self.latency_s)
            return self.answer(key)


def pbkdf2_iterations(target_s: float) -> int:
    """PBKDF2 iterations that take about `target_s` on this machine (measured once, now)."""
    probe = 20_000
    start = time.perf_counter()
    hashlib.pbkdf2_hmac("sha256", b"probe", b"salt", probe)
    elapsed = max(time.perf_counter() - start, 1e-4)
    return max(1_000, int(probe * target_s / elapsed))


class PasswordHasher:
    """PBKDF2 tuned to take about `target_s` here: real CPU work that releases the GIL."""

    def __init__(self, target_s: float = 0.1):
        self.target_s = target_s
        self.in_flight = InFlight()
        self.results: dict[str, str] = {}  # password -> digest, so a check can verify without re-hashing
        self._iterations = 0

    def _calibrate(self) -> int:
        return pbkdf2_iterations(self.target_s)

    def __call__(self, password: str) -> str:
        if not isinstance(password, str):
            raise TypeError(f"hash_password() takes a str, got {type(password).__name__}")
        if not self._iterations:
            self._iterations = self._calibrate()
        blocking_call("hash_password()")
        with self.in_flight.call():
            digest = hashlib.pbkdf2_hmac("sha256", password.encode(), b"course-salt", self._iterations).hex()
        self.results[password] = digest
        return digest


class LegacyReports:
    """A vendor SDK with no async API: `render` blocks its thread for `latency_s`."""

    def __init__(self, latency_s: float = 0.1):
        self.latency_s = latency_s
        self.in_flight = InFlight()

    def render(self, month: str) -> dict:
        blocking_call("legacy_reports.render()")
        with self.in_flight.call():
            time.sleep(self.latency_s)
            return {"month": month, "pages": len(month) + 3}


class UserStore:
    """An async data store: `save` awaits a short write and returns the new user's id."""

    def __init__(self, latency_s: float = 0.01):
        self.latency_s = latency_s
        self.users: dict[int, dict] = {}

    async def save(self, email: str, password_hash: str) -> int:
        await asyncio.sleep(self.latency_s)
        user_id = len(self.users) + 1
        self.users[user_id] = {"email": email, "password_hash": password_hash}
        return user_id
