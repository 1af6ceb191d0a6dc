"""What lesson 02's test modules share (one module per exercise: tests/test_lesson02_*.py).

Lesson 02's checks, against the lesson's own app code with right and wrong dependencies.

Each exercise has several different right answers, which must pass, and at least eight
realistic wrong ones, each failing at its own item with the hint about its own cause.
"""

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from conftest import assert_feedback_rules, notebook_namespace

lesson = notebook_namespace("02_dependencies")


def assert_fails_at(report, item: str, hint: str):
    """`item` (the start of a failed item's name) failed, with `hint` in that item's hint."""
    failed = [i for i in report.failures if i.name.startswith(item)]
    assert failed, report.text()
    assert hint in failed[0].hint, report.text()
    assert_feedback_rules(report)


async def session_try_except(request: Request):
    async with request.state.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except Exception:
            await session.rollback()
            raise


def session_dep(dependency, scope="function"):
    return Annotated[AsyncSession, Depends(dependency, scope=scope)]
