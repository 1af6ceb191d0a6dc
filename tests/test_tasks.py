"""checks.tasks: a block owns the tasks its own task started, and their children, never the
tasks a loop callback starts meanwhile (ipykernel's queued execute requests are such tasks)."""

import asyncio

import pytest
from fastapi import FastAPI

from checks.recorder import record
from checks.tasks import started_tasks

pytestmark = pytest.mark.anyio


async def test_children_and_grandchildren_are_owned_a_callbacks_task_is_not():
    loop = asyncio.get_running_loop()
    gate = asyncio.Event()
    foreign: list[asyncio.Task] = []

    async def child():
        grandchild = asyncio.create_task(gate.wait())
        await grandchild

    with started_tasks() as started:
        mine = asyncio.create_task(child())
        loop.call_soon(lambda: foreign.append(asyncio.ensure_future(gate.wait())))
        await asyncio.sleep(0.01)
        assert len(started.pending()) == 2 and mine in started.pending()
        assert foreign and not started.owns(foreign[0]) and foreign[0] not in started.all()
    gate.set()
    await asyncio.gather(mine, foreign[0])
    assert loop.get_task_factory() is None  # put back


async def test_the_recorder_leaves_a_kernel_like_task_alone_and_cancels_the_apps_leak():
    """The Run All hang of lesson 08: a task queued by the kernel during a recording was taken
    for the app's leak and cancelled, so its cell was never answered."""
    loop = asyncio.get_running_loop()
    forever = asyncio.Event()
    queued: list[asyncio.Task] = []
    app = FastAPI()

    @app.get("/")
    async def start_a_leak():
        asyncio.create_task(forever.wait())  # the app's own leak
        loop.call_soon(lambda: queued.append(asyncio.ensure_future(forever.wait())))  # "the kernel's"
        return {}

    async with record(app, leak_grace_s=0.05) as recorder:
        await recorder.get("/")
    assert len(recorder.leaked_tasks) == 1
    assert queued and not queued[0].done()
    forever.set()
    await queued[0]
