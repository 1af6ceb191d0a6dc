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
from .sandbox import UID_BASE, UID_SLOTS, bwrap_argv, host_pid, pid_namespace

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
            if "kill_uid" in request:  # every process of one kernel (it may have left its session)
                from .sandbox import kill_uid

                kill_uid(int(request["kill_uid"]))
                continue
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
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        if request.get("uid"):
            from .sandbox import seal_kernel

            seal_kernel(int(request["uid"]), request["cwd"], request["conn"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import tempfile

        tempfile.tempdir = None  # the kernel's own TMPDIR, not one an import in the zygote cached
        from ipykernel.kernelapp import IPKernelApp

        sys.argv = ["ipykernel_launcher", *_kernel_argv(request["conn"], parent)]
        IPKernelApp.launch_instance(argv=sys.argv[1:])
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(0)


def kernel_env(home: str | None = None) -> dict:
    """A kernel's whole environment: none of the instructor's variables (tokens, paths, the
    progress file) reach learner code. `home` is the kernel's own folder: its $HOME, temporary
    files and IPython folder (no startup files but its own)."""
    env = {"PATH": os.pathsep.join(dict.fromkeys([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin",
                                                  "/bin"])),
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "USER": "learner", "LOGNAME": "learner",
           # The course's packages (`checks`, `course`) importable however the course was installed.
           "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    if home:
        env.update(HOME=home, TMPDIR=str(Path(home) / "tmp"), IPYTHONDIR=str(Path(home) / ".ipython"),
                   MPLCONFIGDIR=str(Path(home) / ".matplotlib"), JUPYTER_CONFIG_DIR=str(Path(home) / ".jupyter"),
                   JUPYTER_DATA_DIR=str(Path(home) / ".jupyter-data"), XDG_CACHE_HOME=str(Path(home) / ".cache"))
    return env


class Launcher:
    """Starts kernel processes: `fork` from the zygote, or `spawn` one process each. With `sandbox`
    (the paths to hide), the zygote runs inside bubblewrap and each kernel seals itself off (see
    sandbox.py); a zygote that ended is started again."""

    def __init__(self, fork: bool, runtime: Path, sandbox: list[Path] | None = None):
        self.fork, self.runtime = fork, runtime
        self.hidden = sandbox
        self.exited: dict[int, int] = {}  # host pid → exit code
        self.procs: dict[int, object] = {}
        self.uids: dict[int, int] = {}  # host pid → the kernel's uid (sandboxed)
        self.free_uids = list(range(UID_SLOTS))
        self.zygote = None
        self._ns = None  # the sandbox's pid namespace
        self._host: dict[int, int] = {}  # sandbox pid → host pid
        self._replies = None
        self._lock = None
        self._reader = None
        self.restarts = 0

    @property
    def sandboxed(self) -> bool:
        return self.hidden is not None

    async def start(self) -> None:
        import asyncio

        if not self.fork:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        self._replies = asyncio.Queue()
        code = "from course.grade.launcher import zygote_main; zygote_main()"
        argv, env = [sys.executable, "-c", code], kernel_env()
        env.update(HOME=str(self.runtime), MPLCONFIGDIR=str(self.runtime / ".matplotlib"))
        if self.sandboxed:
            argv = bwrap_argv(self.runtime, self.hidden, env) + argv
        self.zygote = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=env, cwd=str(self.runtime), start_new_session=True, limit=1 << 20)
        self._reader = asyncio.create_task(self._read(self.zygote, self._replies))
        ready = await asyncio.wait_for(self._replies.get(), START_TIMEOUT_S)
        if "ready" not in ready:
            raise RuntimeError(f"the kernel zygote did not start: {ready}")
        if self.sandboxed:
            self._ns = pid_namespace(self.zygote.pid)

    async def _read(self, zygote, replies) -> None:
        while True:
            line = await zygote.stdout.readline()
            if not line:
                await replies.put({"error": "the zygote ended"})
                return
            message = json.loads(line)
            if "exit" in message:
                pid = self._host.pop(message["exit"], None) if self.sandboxed else message["exit"]
                if pid is not None:
                    self.exited[pid] = message["code"]
            else:
                await replies.put(message)

    def _uid(self) -> int:
        slot = self.free_uids.pop(0)
        return UID_BASE + UID_SLOTS * (os.getpid() % 100000) + slot

    async def launch(self, conn: str, cwd: str, log: str) -> int:
        import asyncio

        if self.fork:
            async with self._lock:
                for attempt in range(2):  # a zygote that ended (killed, crashed) is started again, once
                    if self.zygote is None or self.zygote.returncode is not None or self._reader.done():
                        await self._restart()
                    uid = self._uid() if self.sandboxed else 0
                    env = kernel_env(cwd)
                    if self.sandboxed:
                        env["TMPDIR"] = "/tmp"  # its own
                    request = {"conn": conn, "cwd": cwd, "log": log, "env": env, "uid": uid}
                    try:
                        self.zygote.stdin.write((json.dumps(request) + "\n").encode())
                        await self.zygote.stdin.drain()
                        reply = await asyncio.wait_for(self._replies.get(), START_TIMEOUT_S)
                    except (ConnectionError, asyncio.TimeoutError) as exc:
                        reply = {"error": repr(exc)}
                    if "pid" in reply:
                        break
                    if uid:
                        self.free_uids.append(uid - UID_BASE - UID_SLOTS * (os.getpid() % 100000))
                    if attempt:
                        raise RuntimeError(f"no kernel: {reply}")
                    self.zygote.returncode is None and self.zygote.kill()
            pid = reply["pid"]
            if self.sandboxed:
                host = None
                for _ in range(50):
                    host = host_pid(pid, self._ns) if self._ns else None
                    if host:
                        break
                    await asyncio.sleep(0.01)
                if host is None:
                    raise RuntimeError("a kernel started but could not be found in /proc")
                self._host[pid] = host
                self.uids[host] = uid
                pid = host
            self.exited.pop(pid, None)
            return pid
        with open(log, "wb") as out:
            code = f"{NO_DEBUGGER}; from ipykernel.kernelapp import launch_new_instance; launch_new_instance()"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, *_kernel_argv(conn, os.getpid()), cwd=cwd,
                env=kernel_env(cwd), stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        self.procs[proc.pid] = proc
        return proc.pid

    async def _restart(self) -> None:
        if self.zygote is not None:
            self.restarts += 1
            await self._stop_zygote()
            self._host.clear()
            self.free_uids = list(range(UID_SLOTS))  # the old sandbox, and every process in it, is gone
            self.uids.clear()
        await self.start()

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
        uid = self.uids.pop(pid, None)
        if uid is not None:  # and whatever left its session: every process of its uid
            try:
                self.zygote.stdin.write((json.dumps({"kill_uid": uid}) + "\n").encode())
            except Exception:  # no zygote: no sandbox, no process left in it
                pass
            self.free_uids.append(uid - UID_BASE - UID_SLOTS * (os.getpid() % 100000))

    async def _stop_zygote(self) -> None:
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

    async def close(self) -> None:
        await self._stop_zygote()
