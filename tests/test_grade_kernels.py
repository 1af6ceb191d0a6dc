"""`course grade`'s kernels: forked from the zygote, each a fresh process."""

from __future__ import annotations

from course.grade.kernel_client import Kernel
from course.grade.launcher import Launcher


def test_forked_kernels_are_fresh_processes_with_their_own_random_state(tmp_path):
    """The zygote imported the course once; each kernel forked from it starts from those imports only."""
    import asyncio

    async def two_kernels():
        launcher = Launcher(True, tmp_path)
        await launcher.start()
        try:
            values = []
            for _ in range(2):
                kernel = Kernel(launcher, tmp_path)
                await kernel.start(["checks.lesson00"])
                code = ("import os, random, sys\nfrom IPython.display import display\n"
                        "display({'text/plain': repr((random.random(), os.getpid(), os.getcwd(), "
                        "'leak' in globals(), os.environ.get('COURSE_PROGRESS_FILE')))}, raw=True, "
                        "metadata={'course-check': {}})\nleak = 1")
                run = await kernel.run(code, 30)
                values.append(eval(run.outputs[0]["text"]))
                kernel.close()
            return values
        finally:
            await launcher.close()

    first, second = asyncio.run(two_kernels())
    assert first[0] != second[0] and first[1] != second[1] and first[2] != second[2]
    assert first[3] is False and second[3] is False and first[4] is None and second[4] is None
