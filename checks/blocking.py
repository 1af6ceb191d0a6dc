"""Exact signals that code blocked the event loop, for checks that must not trust a clock.

    async with BlockingWatch() as watch:
        ...send requests...
    watch.on_loop  # [BlockingCall("time.sleep(0.03)", "in fetch(), line 4 of its cell"), ...]

Two kinds of evidence, both recorded only when they happen on the thread that runs the
event loop the watch was entered on (a `def` route or `asyncio.to_thread` runs elsewhere):
- every `time.sleep` call, however short and wherever the learner hid it. Python 3.11 has
  no audit event for it (3.12 added one), so importing this module replaces `time.sleep`
  by a thin wrapper that reports the call and then sleeps as before; the notebooks import
  `checks` before any learner code, so `from time import sleep` gets the wrapper too;
- every blocking call of the course's stand-in services (`blocking_call("render")`),
  which the services report themselves, including CPU work such as hashing.

Clocks (`LoopMonitor`) stay useful for the picture and for CPU work the services cannot
see; these signals make the verdict exact where they apply.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

from .harness import _learner_frame_of

_active: list["BlockingWatch"] = []


@dataclass
class BlockingCall:
    what: str  # "time.sleep(0.1)", "legacy_reports.render()"
    where: str  # "in report(), line 3 of its cell", or "" when no learner frame was found

    def __str__(self) -> str:
        return f"{self.what} {self.where}".strip()


_original_sleep = time.sleep


def _watched_sleep(seconds):
    if _active and seconds and seconds > 0:
        _record(f"time.sleep({seconds:g})")
    return _original_sleep(seconds)


if getattr(time.sleep, "__name__", "") != "_watched_sleep":  # once, even if this module is reloaded
    _watched_sleep.__doc__ = _original_sleep.__doc__
    time.sleep = _watched_sleep


def _record(what: str) -> None:
    ident = threading.get_ident()
    for watch in list(_active):
        if watch.loop_thread == ident:
            watch.on_loop.append(BlockingCall(what, _where(sys._getframe(2))))


def _where(frame) -> str:
    found = _learner_frame_of(frame)
    if not found:
        return ""
    name, lineno, filename = found
    in_cell = "ipykernel_" in filename or filename.startswith("<ipython")
    return f"in {name}(), line {lineno}" + (" of its cell" if in_cell else f" of {os.path.basename(filename)}")


def blocking_call(what: str) -> None:
    """Called by a stand-in service at the start of a blocking call: recorded if on the loop's thread."""
    if _active:
        _record(what)


class BlockingWatch:
    """Records blocking calls made on the current event loop's thread while it is active."""

    def __init__(self) -> None:
        self.loop_thread: int | None = None
        self.on_loop: list[BlockingCall] = []

    def __enter__(self) -> "BlockingWatch":
        self.loop_thread = threading.get_ident()
        _active.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        if self in _active:
            _active.remove(self)

    async def __aenter__(self) -> "BlockingWatch":
        return self.__enter__()

    async def __aexit__(self, *exc_info) -> None:
        self.__exit__()

    @property
    def blocked(self) -> bool:
        return bool(self.on_loop)

    def summary(self, limit: int = 2) -> str:
        """`time.sleep(0.03) in fetch(), line 4 of its cell` (and how many more)."""
        seen: list[str] = []
        for call in self.on_loop:
            if str(call) not in seen:
                seen.append(str(call))
        text = "; ".join(seen[:limit])
        more = len(self.on_loop) - sum(1 for c in self.on_loop if str(c) in seen[:limit])
        return text + (f" (and {more} more)" if more > 0 else "")
