"""What lesson 08's test modules share (one module per exercise: tests/test_lesson08_*.py).

Lesson 08's checks: right ways to do background work pass; each realistic mistake fails with its hint."""

from conftest import notebook_namespace

lesson = notebook_namespace("08_background")
lifespan, SessionDep, NewUser = lesson["lifespan"], lesson["SessionDep"], lesson["NewUser"]
