"""`course grade`'s kernels: forked from the zygote, each a fresh process."""

from __future__ import annotations

from pathlib import Path

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


def test_a_killed_zygote_is_started_again(tmp_path):
    """A zygote that died (killed, crashed) costs nobody a mark: the next kernel comes from a new one."""
    import asyncio
    import os
    import signal

    import pytest

    from course.grade.sandbox import probe

    import shutil
    import tempfile

    sandbox = None if probe() else [tmp_path / "hidden"]
    runtime = Path(tempfile.mkdtemp(prefix="cg-", dir="/var/tmp"))  # as the grader's: not under /tmp
    os.chmod(runtime, 0o711)

    async def kill_then_start():
        launcher = Launcher(True, runtime, sandbox)
        await launcher.start()
        try:
            os.kill(launcher.zygote.pid, signal.SIGKILL)
            await launcher.zygote.wait()
            kernel = Kernel(launcher, runtime)
            await kernel.start([])
            run = await kernel.run("1 + 1", 30)
            kernel.close()
            return run.status, launcher.restarts
        finally:
            await launcher.close()

    if sandbox is None:
        pytest.skip(f"no sandbox here: {probe()}")
    try:
        assert asyncio.run(kill_then_start()) == ("ok", 1)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_without_a_sandbox_grading_says_so_or_refuses(monkeypatch, capsys):
    from course.grade import command, sandbox

    monkeypatch.setattr(sandbox, "probe", lambda: "bubblewrap (bwrap) is not installed")
    assert command._sandbox("required", True, [None] * 5) is False
    assert "--sandbox required, but no sandbox here: bubblewrap (bwrap) is not installed" in capsys.readouterr().err
    assert command._sandbox("auto", True, [None] * 5) is None
    err = capsys.readouterr().err
    assert "NOT sandboxed" in err and "solutions/" in err and "environment" in err
