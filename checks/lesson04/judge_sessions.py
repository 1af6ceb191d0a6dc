"""Lesson 04, exercise 5's check: record_visits opens one session per task, and one refused write
loses nothing else (the check refuses a random page and counts the sessions).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sqlite3
import tempfile

from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

from ..blocking import BlockingWatch
from ..runner import check
from .judge_common import _flat, _judge_loop_free, _short
from .world import Base, Visit


# ---- exercise 5: one session per task ------------------------------------------------------------

class _Sessions:
    """Sessions opened and closed, and transactions open at the same time."""

    def __init__(self) -> None:
        self.opened = self.closed = 0
        self.in_transaction: set[int] = set()
        self.peak_transactions = 0
        self.refused: set[str] = set()  # pages whose flush the database refuses

    @property
    def open_now(self) -> int:
        return self.opened - self.closed


def _refused(page: str) -> IntegrityError:
    return IntegrityError("INSERT INTO visits (page) VALUES (?)", (page,),
                          sqlite3.IntegrityError("FOREIGN KEY constraint failed"))


def _counting_session_classes(counts: _Sessions):
    class CountedSync(Session):
        pass

    @event.listens_for(CountedSync, "after_begin")
    def began(session, transaction, connection):
        counts.in_transaction.add(id(session))
        counts.peak_transactions = max(counts.peak_transactions, len(counts.in_transaction))

    @event.listens_for(CountedSync, "after_commit")
    @event.listens_for(CountedSync, "after_rollback")
    def ended(session, *args):
        counts.in_transaction.discard(id(session))

    @event.listens_for(CountedSync, "before_flush")
    def refuse(session, flush_context, instances):
        # The database refuses a visit whose page was deleted meanwhile: a foreign key, here simulated.
        for page in sorted({obj.page for obj in session.new if isinstance(obj, Visit)} & counts.refused):
            raise _refused(page)

    class Counted(AsyncSession):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._counted_closed = False
            counts.opened += 1

        async def close(self):
            if not self._counted_closed:
                self._counted_closed = True
                counts.closed += 1
            await super().close()

    return Counted, CountedSync


def _one_line(exc: BaseException) -> str:
    """An exception (group) in one short line: its type and the first line of its message."""
    if isinstance(exc, BaseExceptionGroup):
        inner = ", ".join(dict.fromkeys(type(leaf).__name__ for leaf in _flat(exc)))
        return f"{type(exc).__name__} of {inner}: {_one_line(_flat(exc)[0]).split(': ', 1)[-1]}"
    return _short(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 120)


def _pages_returned(result) -> list[str] | None:
    """The pages an answer returned as not stored, in any order; None if it is not a collection of str."""
    if isinstance(result, (list, tuple, set, frozenset)) and all(isinstance(page, str) for page in result):
        return sorted(result)
    return None


@check("Lesson 04 · record_visits: one session per task, one refusal loses nothing else", limit_s=15)
async def check_one_session_per_task(report, record_visits):
    pages = [f"/page/{random.randint(100, 999)}-{i}" for i in range(7)]
    refused = random.choice(pages)  # any of them: an answer cannot know which in advance
    counts = _Sessions()
    counts.refused = {refused}
    folder = tempfile.mkdtemp(prefix="course-lesson04-")
    engine = create_async_engine(f"sqlite+aiosqlite:///{os.path.join(folder, 'visits.db')}")
    raised = result = None
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        session_class, sync_class = _counting_session_classes(counts)
        sessions = async_sessionmaker(engine, class_=session_class, sync_session_class=sync_class, expire_on_commit=False)
        async with BlockingWatch() as watch:
            try:
                result = await record_visits(sessions, list(pages))
            except Exception as exc:  # noqa: BLE001  (judged below: what it raised, and what it left open)
                raised = exc
            open_at_return = counts.open_now
            # Tasks left running still write: let them end before the database goes away.
            for _ in range(100):
                if not counts.open_now:
                    break
                await asyncio.sleep(0.01)
        async with engine.connect() as connection:
            stored = sorted(await connection.scalars(select(Visit.page)))
    finally:
        await engine.dispose()
        shutil.rmtree(folder, ignore_errors=True)
    left = f"; {open_at_return} session(s) still open when it returned" if open_at_return else ""
    # Judged by the count, not by which error came first: a shared session meets the refusal or
    # its own concurrent use first, by scheduling.
    if raised is not None and (counts.opened < len(pages) or any(
            isinstance(leaf, InvalidRequestError) and not isinstance(leaf, IntegrityError) for leaf in _flat(raised))):
        return report.fail("each task has its own session",
                           observed=f"raised {_one_line(raised)}; {counts.opened} session(s) for {len(pages)} pages",
                           expected="no error: each task writes through a session of its own",
                           hint="One AsyncSession runs one operation at a time: open a session inside each task.")
    if raised is not None:
        return report.fail(
            "one refused visit does not fail the call", observed="raised " + _one_line(raised) + left,
            expected=f"record_visits returns, with the {len(pages) - 1} others stored",
            hint=("A TaskGroup cancels every other write when one fails: here the visits do not depend on each other."
                  if isinstance(raised, BaseExceptionGroup) else
                  "The visits are independent: one write's failure is that write's, and the others go on. Which way "
                  "of waiting for them all hands you each failure instead of raising the first?"))
    if not _judge_loop_free(report, watch):
        return
    others = sorted(set(pages) - {refused})
    report.add("every other visit is stored", stored == others,
               observed=f"{len(set(stored) & set(others))} of the {len(others)} others stored",
               expected=f"all {len(others)}",
               hint=("Commit each task's session: what is not committed is rolled back at close." if not stored else
                     "Some writes were cancelled or never made: the visits are independent, and a TaskGroup cancels "
                     "the others when one fails."))
    returned = _pages_returned(result)
    report.add("returns the pages it could not store", returned == [refused],
               observed=f"returned {_short(repr(result), 100)}; the database refused {refused}",
               expected=f"[{refused!r}]: a refusal must not be hidden",
               hint="Keep what each task's failure was, with its page: the caller decides what to do with the pages "
                    "that were refused.")
    report.add(
        "one session per task, writing at the same time", counts.opened == len(pages) and counts.peak_transactions >= 2,
        observed=f"sessions opened: {counts.opened}; at most {counts.peak_transactions} transactions open at once",
        expected=f"{len(pages)} sessions, at least 2 transactions at once",
        hint=("Each task opens its own session; start the tasks together so they run at once."
              if counts.opened == len(pages) else "One session per page, opened inside the task that writes it."),
    )
    report.add("every session is closed when record_visits returns", not open_at_return and counts.closed == counts.opened,
               observed=f"{counts.opened - open_at_return} of {counts.opened} closed when it returned",
               expected="all", hint="A session is closed by `async with sessions() as session:`, and only once its task "
                                    "has ended: wait for every task before returning.")
