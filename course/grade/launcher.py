"""Starting kernel processes: forked from a warm "zygote" (default on Linux) or spawned.

The zygote has imported ipykernel, IPython, FastAPI, httpx, pydantic and `checks` once per run;
each kernel forked from it is a fresh process whose only history is those imports (nothing of any
learner ever ran in the zygote).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..paths import ROOT

START_TIMEOUT_S = 60.0  # for a kernel (or the zygote) to start and answer

ZYGOTE_IMPORTS = ("ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger", "IPython",
                  "IPython.display", "IPython.core.completerlib", "IPython.core.debugger", "IPython.core.logger",
                  "IPython.core.oinspect", "IPython.extensions.storemagic", "IPython.utils.wildcard", "sqlite3",
                  "pydoc", "faulthandler", "matplotlib", "matplotlib.figure", "fastapi", "starlette", "httpx", "anyio",
                  "asgi_lifespan", "pydantic", "checks", "course.grade.in_kernel")
# Grading needs no debugger: without debugpy (130 modules) a kernel starts in half the time.
NO_DEBUGGER = "import sys; sys.modules['debugpy'] = None"


def _kernel_argv(conn: str, parent: int) -> list[str]:
    return ["-f", conn, f"--IPKernelApp.parent_handle={parent}", "--HistoryManager.hist_file=:memory:",
            "--IPKernelApp.log_level=ERROR"]


def zygote_main() -> None:
    """The fork server: import once, then fork one fresh kernel per request (read from stdin)."""
    import importlib
    import select
    import signal

    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    exec(NO_DEBUGGER)
    for name in ZYGOTE_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:  # a missing optional module only costs its import later
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = os.getpid()

    def emit(message: dict) -> None:
        os.write(1, (json.dumps(message) + "\n").encode())

    emit({"ready": me})
    buffer, children = b"", set()
    while True:
        readable, _, _ = select.select([0], [], [], 0.05)
        while True:  # reap, and say which kernels ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            emit({"exit": pid, "code": os.waitstatus_to_exitcode(status)})
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:  # the grader is gone: so are its kernels
            for pid in children:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            os._exit(0)
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _become_kernel(request, me)
            children.add(pid)
            emit({"pid": pid})


def _become_kernel(request: dict, parent: int) -> None:
    import signal

    try:
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        from ipykernel.kernelapp import IPKernelApp

        sys.argv = ["ipykernel_launcher", *_kernel_argv(request["conn"], parent)]
        IPKernelApp.launch_instance(argv=sys.argv[1:])
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(0)


def kernel_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_PROGRESS_FILE", "JPY_PARENT_PID")}
    # The course's packages (`checks`, `course`) importable however the course was installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    return env


class Launcher:
    """Starts kernel processes: `fork` from the zygote, or `spawn` one process each."""

    def __init__(self, fork: bool, runtime: Path):
        self.fork, self.runtime = fork, runtime
        self.exited: dict[int, int] = {}
        self.procs: dict[int, object] = {}
        self.zygote = None
        self._replies = None
        self._lock = None
        self._reader = None

    async def start(self) -> None:
        import asyncio

        if not self.fork:
            return
        self._lock, self._replies = asyncio.Lock(), asyncio.Queue()
        code = "from course.grade.launcher import zygote_main; zygote_main()"
        self.zygote = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=kernel_env(), cwd=str(self.runtime), start_new_session=True, limit=1 << 20)
        self._reader = asyncio.create_task(self._read())
        ready = await asyncio.wait_for(self._replies.get(), START_TIMEOUT_S)
        if "ready" not in ready:
            raise RuntimeError(f"the kernel zygote did not start: {ready}")

    async def _read(self) -> None:
        while True:
            line = await self.zygote.stdout.readline()
            if not line:
                await self._replies.put({"error": "the zygote ended"})
                return
            message = json.loads(line)
            if "exit" in message:
                self.exited[message["exit"]] = message["code"]
            else:
                await self._replies.put(message)

    async def launch(self, conn: str, cwd: str, log: str) -> int:
        import asyncio

        if self.fork:
            async with self._lock:
                request = {"conn": conn, "cwd": cwd, "log": log, "env": kernel_env()}
                self.zygote.stdin.write((json.dumps(request) + "\n").encode())
                await self.zygote.stdin.drain()
                reply = await asyncio.wait_for(self._replies.get(), START_TIMEOUT_S)
            if "pid" not in reply:
                raise RuntimeError(f"no kernel: {reply}")
            self.exited.pop(reply["pid"], None)
            return reply["pid"]
        with open(log, "wb") as out:
            code = f"{NO_DEBUGGER}; from ipykernel.kernelapp import launch_new_instance; launch_new_instance()"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, *_kernel_argv(conn, os.getpid()), cwd=cwd,
                env=kernel_env(), stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        self.procs[proc.pid] = proc
        return proc.pid

    def alive(self, pid: int) -> bool:
        if self.fork:
            if pid in self.exited:
                return False
            try:
                os.kill(pid, 0)
                return True
            except ProcessLookupError:
                return False
        proc = self.procs.get(pid)
        return proc is not None and proc.returncode is None

    def kill(self, pid: int) -> None:
        import signal

        kill = getattr(signal, "SIGKILL", signal.SIGTERM)
        try:
            os.killpg(pid, kill)  # the kernel and whatever it started (it leads its own session)
        except (AttributeError, ProcessLookupError, PermissionError):
            try:
                os.kill(pid, kill)
            except (ProcessLookupError, OSError):
                pass
        self.procs.pop(pid, None)

    async def close(self) -> None:
        if self.zygote is not None and self.zygote.returncode is None:
            try:
                self.zygote.stdin.close()
            except Exception:
                pass
            try:
                self.zygote.kill()
            except ProcessLookupError:
                pass
            await self.zygote.wait()
        if self._reader is not None:
            self._reader.cancel()
