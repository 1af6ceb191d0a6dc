"""Which asyncio tasks the code under test started, and only those.

    with started_tasks() as started:
        ...                      # run the app: its lifespan, its requests
    pending = started.pending()  # what it left running

`asyncio.all_tasks()` minus a snapshot is not that: in a notebook the kernel itself keeps a
task per queued execute request on the same loop (ipykernel 7; JupyterLab's Run All queues
every cell at once), and cancelling those "leaks" leaves the queued cells unanswered forever.
A task belongs to the block when the task that created it is the block's own task or one of
the tasks it already owns, so ownership follows the app's lineage, never the kernel's. The
loop's task factory learns each task's creator while a block is open, and is put back after.
"""

from __future__ import annotations

import asyncio
import weakref


class StartedTasks:
    """The tasks started, directly or through tasks it started, by the task that opened the block."""

    def __init__(self) -> None:
        self.root: asyncio.Task | None = None
        self._tasks: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()
        self._loop: asyncio.AbstractEventLoop | None = None

    def owns(self, task: asyncio.Task | None) -> bool:
        return task is not None and (task is self.root or task in self._tasks)

    def all(self) -> list[asyncio.Task]:
        return [task for task in list(self._tasks) if task is not self.root]

    def pending(self) -> list[asyncio.Task]:
        return [task for task in self.all() if not task.done()]

    def __enter__(self) -> "StartedTasks":
        self._loop = asyncio.get_running_loop()
        self.root = asyncio.current_task()
        _open(self._loop, self)
        return self

    def __exit__(self, *exc) -> None:
        _close(self._loop, self)


def started_tasks() -> StartedTasks:
    return StartedTasks()


# One factory per loop while any block is open on it; the factory that was there is chained.
_blocks: dict[asyncio.AbstractEventLoop, list[StartedTasks]] = {}
_previous: dict[asyncio.AbstractEventLoop, object] = {}


def _open(loop: asyncio.AbstractEventLoop, block: StartedTasks) -> None:
    if loop not in _blocks:
        previous = loop.get_task_factory()
        _previous[loop] = previous
        _blocks[loop] = []
        loop.set_task_factory(_factory(previous))
    _blocks[loop].append(block)


def _close(loop: asyncio.AbstractEventLoop, block: StartedTasks) -> None:
    blocks = _blocks.get(loop)
    if blocks is None or block not in blocks:
        return
    blocks.remove(block)
    if not blocks:
        del _blocks[loop]
        loop.set_task_factory(_previous.pop(loop))


def _factory(previous):
    def create(loop, coro, **kwargs):
        creator = asyncio.current_task(loop)  # None for a callback (the kernel's message handlers)
        task = previous(loop, coro, **kwargs) if previous is not None else asyncio.Task(coro, loop=loop, **kwargs)
        for block in _blocks.get(loop, ()):
            if block.owns(creator):
                block._tasks.add(task)
        return task

    return create
