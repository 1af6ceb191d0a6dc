"""`course grade`: grade a folder of learners' notebooks into one gradebook.

    course grade submissions/ --out gradebook.csv [--feedback feedback/] [--jobs N]
    course grade submissions/ --out part-1.csv --shard 1/4      # one part of four
    course grade --merge part-*.csv --out gradebook.csv [--canvas canvas.csv] [--moodle moodle.csv]

Every `.ipynb` under the folder (any names, nested folders) is one learner's copy of one lesson.
It runs in a fresh kernel; the course's OWN check cells (from solutions/, matched by cell id,
re-inserted when deleted) run against the learner's code, and each check's result is read from
its `course-check` data (contract 5). One row per learner and lesson is appended to the
gradebook as soon as it is known, so an interrupted run resumes where it stopped.

Speed. Kernels are forked from a "zygote" process per grading run that has already imported
ipykernel, IPython, FastAPI, httpx, pydantic and `checks`: a new kernel is a fresh process whose
only history is those imports (nothing of any learner ever ran in the zygote), so the imports are
paid once per run instead of once per notebook. Kernels for the next notebooks are started (and
their lesson's modules imported) while the current ones run, and `--jobs` notebooks (one per core
by default) run at once. `--no-fork` starts each kernel as its own process instead.

Robustness. Every cell has a deadline (`--timeout`, extended by the running check's own
`limit_s`); a cell past it is interrupted, and a kernel that does not come back, or dies
(`os._exit`, a crash), is replaced: the learner's cells before the failing one are run again in a
fresh kernel, the failing cell is skipped, and grading goes on, so one broken exercise does not
cost the others. The row's status says what happened: graded, timed out, kernel died, or not a
course notebook.

Kernels run in a temporary folder without COURSE_PROGRESS_FILE, so grading never records into a
learner's progress (course.progress records only in notebooks/ or where that variable is set).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import html
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MIME = "application/vnd.course-grade+json"  # the grading cells' own events (never shown)
PASSED, FAILED, TIMED_OUT, DIED, NOT_RUN = "passed", "failed", "timed out", "kernel died", "not run"
GRADED, NOT_COURSE = "graded", "not a course notebook"
DEMO_LIMIT_S = 5.0  # while grading, a demo cell that runs learner code under serve() stops sooner (not graded)
CHECK_GRACE_S = 15.0  # beyond a check's own limit_s before its cell is interrupted
INTERRUPT_GRACE_S = 5.0  # after an interrupt, before the kernel is killed and replaced
START_TIMEOUT_S = 60.0
FIXED_COLUMNS = ("learner", "lesson")
TAIL_COLUMNS = ("score", "out_of", "status", "seconds", "learner_id", "file", "digest")


# ---------------------------------------------------------------------------------------------
# Kernel side: imported by the grading check cells inside the learner's kernel.
# ---------------------------------------------------------------------------------------------

def _load_extra(module: str, path: str):
    """An instructor-only checks module, loaded from its file (never on the learner's path)."""
    import importlib.util

    name = f"course_extra_{module}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        spec.loader.exec_module(loaded)
    return sys.modules[name]


def kernel_check(module: str, name: str, extra: str | None = None):
    """The course's own check `checks.<module>.<name>` (and the instructor's extra one of the same
    name, if any), as a coroutine function that displays each report with its `course-check` data
    and never raises: looked up in the module, not in the learner's namespace, which the learner
    may have changed."""
    import importlib

    from IPython.display import display

    checks = [("course", getattr(importlib.import_module(f"checks.{module}"), name))]
    if extra:
        checks.append(("extra", getattr(_load_extra(module, extra), name, None)))

    async def run(*args, **kwargs):
        for role, chk in checks:
            if chk is None:
                continue
            display({MIME: {"event": "start", "role": role, "limit_s": float(chk.limit_s)}, "text/plain": ""}, raw=True)
            report = await chk.report(*args, **kwargs)
            display(report, metadata={"course-check": chk.result(report),
                                      "course-grade": {"role": role, "check": f"{module}.{name}"}})

    return run


# ---------------------------------------------------------------------------------------------
# Lessons, as the solutions define them.
# ---------------------------------------------------------------------------------------------

CHECK_CALL = re.compile(r"await\s+(check_\w+)\s*\(")
CHECK_IMPORT = re.compile(r"from\s+checks\.(lesson\d+)\s+import")


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _tags(cell: dict) -> list:
    tags = (cell.get("metadata") or {}).get("tags") or []
    return tags if isinstance(tags, list) else []


def _imported_modules(source: str) -> list[str]:
    """Absolute module names a cell imports (for pre-importing them in a warm kernel)."""
    try:
        tree = compile(source, "<cell>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
    return found


@dataclass
class CheckCell:
    id: str
    module: str  # "lesson01"
    names: list[str]  # ["check_forecast"]
    source: str  # the solution's source
    anchor: list[str]  # ids of the solution's cells before it, nearest first


@dataclass
class Lesson:
    number: str  # "01"
    stem: str  # "01_event_loop"
    title: str
    check_cells: dict[str, CheckCell]  # by cell id, in the notebook's order
    imports: list[str]  # modules its cells import
    extra: str | None = None  # the instructor's extra checks file, if any
    extra_names: set[str] = field(default_factory=set)

    @property
    def exercises(self) -> list[str]:
        return [f"{c.module}.{name}" for c in self.check_cells.values() for name in c.names]


def _extra_check_names(path: Path) -> set[str]:
    """Names of the `@check`-decorated functions in an instructor's extra checks file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.AsyncFunctionDef, ast.FunctionDef)):
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                if getattr(target, "id", getattr(target, "attr", "")) == "check":
                    names.add(node.name)
    return names


def load_lessons(solutions: Path, extra_dir: Path | None = None) -> dict[str, Lesson]:
    lessons = {}
    for path in sorted(solutions.glob("*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cells = notebook.get("cells", [])
        heading = next((_source(c).strip().splitlines()[0] for c in cells
                        if c.get("cell_type") == "markdown" and _source(c).strip()), path.stem)
        title = re.sub(r"^#+\s*(\d+\s*·\s*)?", "", heading).strip()
        module, check_cells, imports, seen = "", {}, [], []
        for cell in cells:
            if cell.get("cell_type") == "code":
                text = _source(cell)
                module = (CHECK_IMPORT.findall(text) or [module])[-1]
                imports += [m for m in _imported_modules(text) if m not in imports]
                if "check" in _tags(cell) and module and CHECK_CALL.search(text):
                    check_cells[cell["id"]] = CheckCell(cell["id"], module, CHECK_CALL.findall(text), text,
                                                        list(reversed(seen)))
            if cell.get("id"):
                seen.append(cell["id"])
        number = path.name[:2]
        lesson = Lesson(number, path.stem, title, check_cells, imports)
        if extra_dir is not None:
            extra = extra_dir / f"lesson{number}.py"
            if extra.exists():
                lesson.extra, lesson.extra_names = str(extra.resolve()), _extra_check_names(extra)
        lessons[number] = lesson
    return lessons


# ---------------------------------------------------------------------------------------------
# Submissions: which lesson, which learner.
# ---------------------------------------------------------------------------------------------

CANVAS_NAME = re.compile(r"^(?P<name>[^_]+)_(?:LATE_)?(?P<id>\d+)_\d+_(?P<rest>.*)$", re.IGNORECASE)
MOODLE_NAME = re.compile(r"^(?P<name>.+?)_(?P<id>\d+)_assignsubmission_\w+?(?:_(?P<rest>.*))?$")


def lesson_of(notebook: dict, rel: PurePosixPath, lessons: dict[str, Lesson]) -> str | None:
    """The lesson: the build's stamp (metadata course.lesson), else the file name, else the
    checks module its cells import."""
    stamp = ((notebook.get("metadata") or {}).get("course") or {}).get("lesson")
    if isinstance(stamp, str) and stamp in lessons:
        return stamp
    name = rel.name
    for number, lesson in lessons.items():
        if lesson.stem in name:
            return number
    for token in re.findall(r"(?<!\d)(\d{2})(?!\d)", rel.stem):
        if token in lessons:
            return token
    for cell in notebook.get("cells", []):
        for module in CHECK_IMPORT.findall(_source(cell)) if isinstance(cell, dict) else []:
            if module[-2:] in lessons:
                return module[-2:]
    return None


def learner_of(rel: PurePosixPath, lesson: Lesson | None) -> tuple[str, str]:
    """(learner, platform id). Nested: the first folder under FOLDER is the learner. Flat: the
    file name without its lesson part. Canvas's and Moodle's bulk-download names give the name
    and the platform's numeric id."""
    part = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    for pattern in (CANVAS_NAME, MOODLE_NAME):
        match = pattern.match(part)
        if match:
            return match["name"], match["id"]
    if len(rel.parts) > 1:
        return part, ""
    rest = part
    if lesson is not None:
        rest = rest.replace(lesson.stem, "")
        rest = re.sub(rf"(?<!\d)(lesson)?{lesson.number}(?!\d)", "", rest, flags=re.IGNORECASE)
    rest = re.sub(r"[-_. ]+$", "", re.sub(r"^[-_. ]+", "", rest))
    return (rest or part), ""


@dataclass
class Job:
    path: Path
    rel: str
    digest: str
    lesson: str | None
    learner: str
    learner_id: str
    notebook: dict | None
    problem: str = ""


def find_jobs(folder: Path, lessons: dict[str, Lesson]) -> list[Job]:
    jobs = []
    for path in sorted(folder.rglob("*.ipynb")):
        rel = PurePosixPath(path.relative_to(folder).as_posix())
        if any(part.startswith(".") for part in rel.parts):  # .ipynb_checkpoints, .backups
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        notebook, problem = None, ""
        try:
            notebook = json.loads(data.decode("utf-8"))
            if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
                notebook, problem = None, "not a notebook (no cells)"
        except (ValueError, UnicodeDecodeError) as exc:
            problem = f"not readable as a notebook: {exc}"
        number = lesson_of(notebook, rel, lessons) if notebook is not None else None
        if notebook is not None and number is None:
            problem = "no lesson found (metadata course.lesson, file name or checks import)"
        learner, learner_id = learner_of(rel, lessons.get(number) if number else None)
        jobs.append(Job(path, str(rel), digest, number, learner, learner_id, notebook, problem))
    return jobs


def shard(jobs: list[Job], k: int, n: int) -> list[Job]:
    """Part k of n (1-based): the i-th notebook in path order goes to part (i mod n) + 1."""
    ordered = sorted(jobs, key=lambda job: job.rel)
    return [job for i, job in enumerate(ordered) if i % n == k - 1]


# ---------------------------------------------------------------------------------------------
# What runs: the learner's cells, with the course's check cells in place of theirs.
# ---------------------------------------------------------------------------------------------

@dataclass
class Step:
    source: str
    check: CheckCell | None = None  # set for the course's check cells
    index: int = -1  # the learner's cell index (-1: inserted)


def grading_source(cell: CheckCell, lesson: Lesson) -> str:
    def call(match):
        name = match.group(1)
        extra = lesson.extra if name in lesson.extra_names else None
        return f"await __course_check__({cell.module!r}, {name!r}, {extra!r})("

    return "from course.grade import kernel_check as __course_check__\n" + CHECK_CALL.sub(call, cell.source)


def plan(notebook: dict, lesson: Lesson) -> list[Step]:
    """The cells to run: the learner's code cells in their order; each check cell of the course
    replaces the learner's cell with its id (whatever the learner made of it), or, if deleted, goes
    in after the nearest cell that preceded it in the solution. Cells tagged `check` that are not
    the course's (copies) are not run."""
    cells = [c for c in notebook.get("cells", []) if isinstance(c, dict)]
    ids = [c.get("id") for c in cells]
    steps: list[Step] = []
    placed: set[str] = set()
    after: dict[int, list[CheckCell]] = {}
    for cell in lesson.check_cells.values():
        if cell.id in ids:
            continue
        anchor = next((ids.index(a) for a in cell.anchor if a in ids), None)
        if anchor is None and not any(ids):  # a notebook without ids: find its call instead
            anchor = next((i for i, c in enumerate(cells) for name in cell.names
                           if f"{name}(" in _source(c)), None)
            if anchor is not None:
                cells[anchor] = dict(cells[anchor], cell_type="skip")
        after.setdefault(anchor if anchor is not None else len(cells) - 1, []).append(cell)
    for index, cell in enumerate(cells):
        cid = cell.get("id")
        if cid in lesson.check_cells and cid not in placed:
            placed.add(cid)
            steps.append(Step(grading_source(lesson.check_cells[cid], lesson), lesson.check_cells[cid], index))
        elif cell.get("cell_type") == "code" and "check" not in _tags(cell) and _source(cell).strip():
            steps.append(Step(_source(cell), None, index))
        for inserted in after.get(index, []):
            steps.append(Step(grading_source(inserted, lesson), inserted, -1))
    if not cells:
        steps += [Step(grading_source(c, lesson), c, -1) for c in after.get(-1, [])]
    return steps


# ---------------------------------------------------------------------------------------------
# Kernels: forked from a warm zygote (default on Linux) or spawned.
# ---------------------------------------------------------------------------------------------

ZYGOTE_IMPORTS = ("ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger", "IPython",
                  "IPython.display", "IPython.core.completerlib", "IPython.core.debugger", "IPython.core.logger",
                  "IPython.core.oinspect", "IPython.extensions.storemagic", "IPython.utils.wildcard", "sqlite3",
                  "pydoc", "faulthandler", "matplotlib", "matplotlib.figure", "fastapi", "starlette", "httpx", "anyio",
                  "asgi_lifespan", "pydantic", "checks", "course.grade")
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
    from .build import ROOT

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
        code = "from course.grade import zygote_main; zygote_main()"
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


@dataclass
class CellRun:
    status: str  # "ok", "error", "timeout", "died"
    outputs: list = field(default_factory=list)  # display outputs kept (course-check data)
    error: str = ""  # "Ename: evalue" of an error in the cell
    seconds: float = 0.0
    kernel_lost: bool = False  # the kernel must be replaced


class Kernel:
    _count = 0

    def __init__(self, launcher: Launcher, runtime: Path):
        self.launcher, self.runtime = launcher, runtime
        Kernel._count += 1
        self.name = f"k{os.getpid() % 10000}-{Kernel._count}"
        self.cwd = runtime / f"{self.name}-cwd"
        self.pid = None
        self.client = None

    async def start(self, imports: list[str]) -> "Kernel":
        import asyncio
        import secrets
        from queue import Empty

        from jupyter_client.asynchronous import AsyncKernelClient
        from jupyter_client.connect import write_connection_file

        self.cwd.mkdir(parents=True, exist_ok=True)
        ipc = os.name == "posix"  # unix sockets: no ports to collide, no "running over TCP" warning
        conn, info = write_connection_file(str(self.runtime / f"{self.name}.json"), transport="ipc" if ipc else "tcp",
                                           ip=str(self.runtime / self.name) if ipc else "127.0.0.1",
                                           key=secrets.token_hex(16).encode())
        self.pid = await self.launcher.launch(conn, str(self.cwd), str(self.runtime / f"{self.name}.log"))
        self.client = AsyncKernelClient()
        self.client.load_connection_info(info)
        self.client.start_channels()
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        replied = False
        while True:  # ready: a kernel_info reply on shell, and iopub connected (it shows the status)
            if not self.launcher.alive(self.pid):
                raise RuntimeError("the kernel died while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("the kernel did not answer within %d s" % START_TIMEOUT_S)
            self.client.kernel_info()  # replies to earlier probes count too: a slow kernel answers late
            if not replied:
                try:
                    while (await self.client.get_shell_msg(timeout=1))["msg_type"] != "kernel_info_reply":
                        pass
                    replied = True
                except Empty:
                    continue
            try:
                await self.client.get_iopub_msg(timeout=0.5)
                break
            except Empty:
                continue
        while True:  # drain what the readiness probe left on iopub
            try:
                await self.client.get_iopub_msg(timeout=0.05)
            except Exception:
                break
        if imports:  # warm: the lesson's modules are imported before any learner code runs
            code = ("import importlib as __i\nfor __m in %r:\n    try:\n        __i.import_module(__m)\n"
                    "    except BaseException:\n        pass\n" % (imports,))
            # Demos (cells that are not checks) get a shorter limit: their output is not graded.
            # (serve(), record() and the ASGI demos all read checks.harness.DEMO_LIMIT_S.)
            code += ("import sys as __s\nfor __m in ('checks.harness',):\n"
                     "    __h = __s.modules.get(__m)\n    if hasattr(__h, 'DEMO_LIMIT_S'):\n"
                     "        __h.DEMO_LIMIT_S = min(__h.DEMO_LIMIT_S, %r)\n" % DEMO_LIMIT_S)
            code += "for __n in ('__i', '__m', '__h', '__s'):\n    globals().pop(__n, None)\ndel __n"
            run = await self.run(code, START_TIMEOUT_S, silent=True)
            if run.status == "died":
                raise RuntimeError("the kernel died while importing the course's modules")
        return self

    async def run(self, code: str, timeout: float, silent: bool = False) -> CellRun:
        import asyncio
        from queue import Empty

        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        msg_id = self.client.execute(code, silent=silent, store_history=not silent, allow_stdin=False,
                                     stop_on_error=False)
        run = CellRun("ok")
        interrupted = False
        while True:
            now = loop.time()
            if now >= deadline:
                if interrupted:
                    self.kill()
                    run.status, run.kernel_lost = "timeout", True
                    break
                self.interrupt()
                interrupted, run.status = True, "timeout"
                deadline = now + INTERRUPT_GRACE_S
                continue
            try:
                msg = await self.client.get_iopub_msg(timeout=min(0.2, deadline - now))
            except Empty:
                if not self.launcher.alive(self.pid):
                    run.status, run.kernel_lost = "died", True
                    break
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content.get("execution_state") == "idle":
                break
            if kind == "error":
                if run.status == "ok":
                    run.status = "error"
                run.error = f"{content.get('ename', '')}: {content.get('evalue', '')}".strip()
            elif kind in ("display_data", "execute_result"):
                data = content.get("data", {})
                if MIME in data:
                    event = data[MIME]
                    if not interrupted:
                        deadline = max(deadline, loop.time() + float(event.get("limit_s", 0)) + CHECK_GRACE_S)
                elif "course-check" in (content.get("metadata") or {}):
                    run.outputs.append({"metadata": content["metadata"], "html": data.get("text/html", ""),
                                        "text": data.get("text/plain", "")})
        if not run.kernel_lost:
            try:  # the shell reply, so it does not pile up
                while True:
                    reply = await self.client.get_shell_msg(timeout=0.5 if not interrupted else 0.1)
                    if reply["parent_header"].get("msg_id") == msg_id:
                        break
            except Empty:
                pass
        run.seconds = loop.time() - started
        return run

    def interrupt(self) -> None:
        import signal

        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        if self.pid is not None:
            self.launcher.kill(self.pid)

    def close(self) -> None:
        import shutil

        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.kill()
        if self.client is not None:
            try:
                self.client.stop_channels()
            except Exception:
                pass
        shutil.rmtree(self.cwd, ignore_errors=True)
        for suffix in (".json", ".log"):
            try:
                (self.runtime / f"{self.name}{suffix}").unlink()
            except OSError:
                pass
        for sock in self.runtime.glob(f"{self.name}-*"):
            if sock.is_socket():
                try:
                    sock.unlink()
                except OSError:
                    pass


# ---------------------------------------------------------------------------------------------
# Grading one notebook.
# ---------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    job: Job
    results: dict[str, str]  # exercise id → passed / failed / timed out / kernel died / not run
    status: str
    seconds: float
    reports: dict[str, list] = field(default_factory=dict)  # exercise id → outputs, for feedback
    notes: dict[str, str] = field(default_factory=dict)  # exercise id → why it failed without a report
    events: list[str] = field(default_factory=list)  # what happened to the notebook as a whole

    @property
    def score(self) -> int:
        return sum(value == PASSED for value in self.results.values())


def _judge(cell: CheckCell, name: str, run: CellRun, lesson: Lesson) -> tuple[str, str]:
    exercise = f"{cell.module}.{name}"
    mine = [o for o in run.outputs if (o["metadata"].get("course-grade") or {}).get("check") == exercise]
    course = [o for o in mine if o["metadata"]["course-grade"].get("role") == "course"
              and o["metadata"]["course-check"].get("id") == exercise]
    extra = [o for o in mine if o["metadata"]["course-grade"].get("role") == "extra"]
    wants_extra = name in lesson.extra_names
    if course and course[-1]["metadata"]["course-check"].get("passed") is True:
        if not wants_extra or (extra and extra[-1]["metadata"]["course-check"].get("passed") is True):
            return PASSED, ""
    if run.status == "died":
        return DIED, ("The kernel died while this check ran your code: something it called ended or crashed the "
                      "Python process (os._exit, a crash in a C extension, running out of memory).")
    if run.status == "timeout":
        return TIMED_OUT, "The check did not finish even well past its own time limit, and was stopped."
    if not course:
        return FAILED, f"the check could not run: {run.error}" if run.error else "the check recorded no result"
    return FAILED, ""


async def grade_notebook(job: Job, lesson: Lesson, first: "asyncio.Task", new_kernel, timeout: float,
                         notebook_timeout: float, max_restarts: int = 2, holder: dict | None = None) -> Outcome:
    import asyncio

    loop = asyncio.get_running_loop()
    started = loop.time()
    steps = plan(job.notebook, lesson)
    results = {exercise: NOT_RUN for exercise in lesson.exercises}
    outcome = Outcome(job, results, GRADED, 0.0)
    incidents: set[str] = set()
    skipped: set[int] = set()  # steps that killed or hung a kernel: not replayed
    restarts = 0
    holder = {} if holder is None else holder  # the kernel in use, for the scheduler's CPU watch
    try:
        kernel = holder["kernel"] = await first
    except Exception as exc:
        kernel = None
        outcome.events.append(f"A kernel did not start: {exc}")
    i = 0
    while i < len(steps):
        if kernel is None:  # (re)start, then replay the learner's cells before step i
            if restarts > max_restarts:
                break
            restarts += 1
            try:
                kernel = holder["kernel"] = await new_kernel()
            except Exception as exc:
                outcome.events.append(f"A kernel did not start: {exc}")
                incidents.add(DIED)
                break
            for j in range(i):
                if j in skipped or steps[j].check is not None:
                    continue
                replay = await kernel.run(steps[j].source, timeout)
                if replay.kernel_lost:
                    skipped.add(j)
                    kernel.close()
                    kernel = None
                    break
            if kernel is None:
                continue
        step = steps[i]
        left = notebook_timeout - (loop.time() - started)
        if left <= 0:
            incidents.add(TIMED_OUT)
            outcome.events.append(f"Grading stopped: the notebook took longer than {notebook_timeout:g} s in all.")
            break
        run = await kernel.run(step.source, min(timeout, left))
        if run.status == "timeout":
            incidents.add(TIMED_OUT)
        if run.status == "died":
            incidents.add(DIED)
        if step.check is not None:
            for name in step.check.names:
                exercise = f"{step.check.module}.{name}"
                value, note = _judge(step.check, name, run, lesson)
                results[exercise] = value
                outcome.reports[exercise] = [o for o in run.outputs
                                             if (o["metadata"].get("course-grade") or {}).get("check") == exercise]
                if note:
                    outcome.notes[exercise] = note
        if step.check is None and run.status in ("timeout", "died"):
            first = next((line.strip() for line in step.source.splitlines() if line.strip()), "")
            where = f"Your cell {step.index + 1} (it starts `{first[:60]}`)"
            what = "ran past its time limit and was stopped" if run.status == "timeout" else "made the kernel die"
            outcome.events.append(f"{where} {what}" + (
                ": a fresh kernel ran your cells before it again and went on after it." if run.kernel_lost else "."))
        if run.kernel_lost:
            skipped.add(i)
            kernel.close()
            kernel = None
        i += 1
    if kernel is not None:
        kernel.close()
    if any(value == NOT_RUN for value in results.values()) and not incidents:
        incidents.add(DIED)
    outcome.status = DIED if DIED in incidents else TIMED_OUT if TIMED_OUT in incidents else GRADED
    outcome.seconds = loop.time() - started
    return outcome


# ---------------------------------------------------------------------------------------------
# The gradebook: written row by row, read back to resume and to merge.
# ---------------------------------------------------------------------------------------------

def columns_for(lessons: list[Lesson]) -> list[str]:
    exercises = [e for lesson in sorted(lessons, key=lambda l: l.number) for e in lesson.exercises]
    return [*FIXED_COLUMNS, *exercises, *TAIL_COLUMNS]


def outcome_row(outcome: Outcome, lesson: Lesson | None) -> dict:
    job = outcome.job
    row = {"learner": job.learner, "lesson": job.lesson or "", "status": outcome.status,
           "seconds": f"{outcome.seconds:.1f}", "learner_id": job.learner_id, "file": job.rel, "digest": job.digest,
           "score": str(outcome.score), "out_of": str(len(lesson.exercises)) if lesson else "0"}
    row.update(outcome.results)
    return row


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), [row for row in reader if row.get("file")]
    except FileNotFoundError:
        return [], []


class Gradebook:
    """Rows appended and flushed as they come; a new column set rewrites the file once."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        torn = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
        if torn:  # a run killed mid-row: that row is dropped (its notebook is graded again)
            text = path.read_bytes()
            path.write_bytes(text[: text.rfind(b"\n") + 1])
        header, rows = read_rows(path)
        self.rows = rows
        if header != columns:
            extra = [c for c in header if c not in columns and c not in TAIL_COLUMNS]
            self.columns = [*FIXED_COLUMNS, *[c for c in columns if c not in FIXED_COLUMNS + TAIL_COLUMNS], *extra,
                            *TAIL_COLUMNS]
            self._rewrite()
        self._file = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def done(self) -> dict[str, str]:
        """file → digest of the rows already graded (a changed file is graded again)."""
        return {row["file"]: row.get("digest", "") for row in self.rows}

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self._writer.writerow(row)
        self._file.flush()
        os.fsync(self._file.fileno())

    def drop(self, files: set[str]) -> None:
        if files & {row["file"] for row in self.rows}:
            self.rows = [row for row in self.rows if row["file"] not in files]
            self._file.close()
            self._rewrite()
            self._file = self.path.open("a", newline="", encoding="utf-8")
            self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")

    def close(self) -> None:
        self._file.close()


def merge(parts: list[Path], out: Path) -> list[dict]:
    """Join shard gradebooks: one row per file (the last part wins), columns united."""
    columns: list[str] = []
    by_file: dict[str, dict] = {}
    for part in parts:
        header, rows = read_rows(part)
        if not header:
            raise FileNotFoundError(f"{part}: no gradebook rows")
        columns += [c for c in header if c not in columns]
        for row in rows:
            by_file[row["file"]] = row
    middle = [c for c in columns if c not in FIXED_COLUMNS + TAIL_COLUMNS]
    middle.sort(key=lambda c: (c.split(".")[0], columns.index(c)))
    columns = [*FIXED_COLUMNS, *middle, *TAIL_COLUMNS]
    rows = sorted(by_file.values(), key=lambda r: (r["learner"], r["lesson"], r["file"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)
    return rows


# ---------------------------------------------------------------------------------------------
# Platform exports and feedback pages.
# ---------------------------------------------------------------------------------------------

def _best(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """One row per learner and lesson: the best score (a learner who handed in two copies)."""
    best: dict[tuple[str, str], dict] = {}
    for row in rows:
        if not row.get("lesson"):
            continue
        key = (row["learner"], row["lesson"])
        if key not in best or int(row.get("score") or 0) > int(best[key].get("score") or 0):
            best[key] = row
    return best


def assignment_name(lesson: Lesson) -> str:
    return f"Lesson {lesson.number} · {lesson.title}"


def write_canvas(rows: list[dict], lessons: dict[str, Lesson], path: Path) -> None:
    """Canvas's gradebook import: Student, ID, SIS User ID, SIS Login ID, Section, then one column
    per assignment; a "Points Possible" row sets the points of assignments the import creates."""
    best = _best(rows)
    numbers = sorted({lesson for _, lesson in best})
    learners = sorted({learner for learner, _ in best})
    ids = {row["learner"]: row.get("learner_id", "") for row in rows}
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section",
                         *[assignment_name(lessons[n]) if n in lessons else f"Lesson {n}" for n in numbers]])
        writer.writerow(["Points Possible", "", "", "", "",
                         *[str(len(lessons[n].exercises)) if n in lessons else "" for n in numbers]])
        for learner in learners:
            writer.writerow([learner, ids.get(learner, ""), "", "" if ids.get(learner) else learner, "",
                             *[best[(learner, n)]["score"] if (learner, n) in best else "" for n in numbers]])


def feedback_text(row: dict, lesson: Lesson | None) -> str:
    if lesson is None:
        return row.get("status", "")
    bad = [f"{e.split('.', 1)[1].removeprefix('check_')} ({row.get(e)})" for e in lesson.exercises if row.get(e) != PASSED]
    text = f"{row.get('score')}/{row.get('out_of')} exercises passed"
    return text + (f"; not passed: {', '.join(bad)}" if bad else "") + (
        f"; {row['status']}" if row.get("status") not in (GRADED, None) else "")


def write_moodle(rows: list[dict], lessons: dict[str, Lesson], path: Path) -> None:
    """Moodle's "Import grades > CSV file": a user column to map to username (or email), then per
    lesson a grade column and a feedback column to map to the lesson's grade item."""
    best = _best(rows)
    numbers = sorted({lesson for _, lesson in best})
    learners = sorted({learner for learner, _ in best})
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        header = ["learner"]
        for n in numbers:
            name = assignment_name(lessons[n]) if n in lessons else f"Lesson {n}"
            header += [name, f"{name} (feedback)"]
        writer.writerow(header)
        for learner in learners:
            line = [learner]
            for n in numbers:
                row = best.get((learner, n))
                line += [row["score"], feedback_text(row, lessons.get(n))] if row else ["", ""]
            writer.writerow(line)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.@-]+", "_", text).strip("_") or "learner"


FEEDBACK_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1f2328}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}.passed{color:#1a7f37}.failed{color:#cf222e}
table{border-collapse:collapse}td,th{padding:.2rem .8rem;text-align:left;border-bottom:1px solid #d0d7de}
.note{background:#fff8c5;padding:.5rem 1rem;border-radius:6px}"""


def write_feedback(outcome: Outcome, lesson: Lesson, folder: Path) -> Path:
    """One page per learner and lesson: each exercise's verdict and the course check's report
    (observed, expected, hint: never the check's source). Instructor-only checks show their
    verdict only."""
    job = outcome.job
    target = folder / _slug(job.learner) / f"{lesson.stem}.html"
    if target.exists() and target.read_text(encoding="utf-8").find(f'data-file="{html.escape(job.rel)}"') < 0:
        target = target.with_name(f"{lesson.stem}.{_slug(Path(job.rel).stem)}.html")
    target.parent.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(job.learner)} · lesson {lesson.number}"
             f"</title><style>{FEEDBACK_STYLE}</style></head><body data-file=\"{esc(job.rel)}\">",
             f"<h1>Lesson {lesson.number} · {esc(lesson.title)}</h1>",
             f"<p>{esc(job.learner)} · <code>{esc(job.rel)}</code> · score <b>{outcome.score}/{len(lesson.exercises)}"
             f"</b> · {esc(outcome.status)}</p><table><tr><th>exercise</th><th>result</th></tr>"]
    for exercise in lesson.exercises:
        value = outcome.results.get(exercise, NOT_RUN)
        css = "passed" if value == PASSED else "failed"
        parts.append(f"<tr><td>{esc(exercise.split('.', 1)[1].removeprefix('check_').replace('_', ' '))}</td>"
                     f"<td class='{css}'>{esc(value)}</td></tr>")
    parts.append("</table>")
    parts += [f"<p class='note'>{esc(event)}</p>" for event in outcome.events]
    for exercise in lesson.exercises:
        parts.append(f"<h2>{esc(exercise.split('.', 1)[1].removeprefix('check_').replace('_', ' '))}: "
                     f"{esc(outcome.results.get(exercise, NOT_RUN))}</h2>")
        if outcome.notes.get(exercise):
            parts.append(f"<p class='note'>{esc(outcome.notes[exercise])}</p>")
        for output in outcome.reports.get(exercise, []):
            data = output["metadata"]["course-check"]
            if output["metadata"]["course-grade"].get("role") == "extra":
                verdict = "passed" if data.get("passed") else "failed"
                parts.append(f"<p>An extra grading check (not in your notebook) <span class='{verdict}'>"
                             f"{verdict}</span>.</p>")
            else:
                parts.append(output["html"] or f"<pre>{esc(output['text'])}</pre>")
    parts.append("</body></html>\n")
    target.write_text("".join(parts), encoding="utf-8")
    return target


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------

def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class CpuWatch:
    """Which kernels are idle (waiting on a timer or a hung await): below 10% of a core over the last
    second, read from /proc. Where /proc is missing, no kernel counts as idle."""

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self):
        self.samples: dict[int, list[tuple[float, int]]] = {}

    @staticmethod
    def ticks(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime, all threads
        except (OSError, IndexError, ValueError):
            return None

    def idle(self, pid: int | None, now: float) -> bool:
        if pid is None:
            return False
        ticks = self.ticks(pid)
        if ticks is None:
            return False
        history = self.samples.setdefault(pid, [])
        history.append((now, ticks))
        while len(history) > 2 and now - history[1][0] >= 1.0:
            history.pop(0)
        then, before = history[0]
        return now - then >= 0.9 and (ticks - before) / self.TICK / (now - then) < 0.1

    @staticmethod
    def machine() -> tuple[int, int] | None:
        """(idle, total) ticks of all cores since boot, from /proc/stat."""
        try:
            with open("/proc/stat", encoding="ascii") as f:
                values = [int(v) for v in f.readline().split()[1:]]
            return values[3] + values[4], sum(values[:8])
        except (OSError, ValueError, IndexError):
            return None

    def spare_cores(self, now: float, cores: int) -> float:
        """Cores left idle by everything on the machine (ours and others') over the last second."""
        sample = self.machine()
        if sample is None:
            return 0.0
        history = self.samples.setdefault(-1, [])
        history.append((now, sample))
        while len(history) > 2 and now - history[1][0] >= 1.0:
            history.pop(0)
        then, (idle0, total0) = history[0]
        if now - then < 0.9 or sample[1] == total0:
            return 0.0
        return cores * (sample[0] - idle0) / (sample[1] - total0)


async def grade_jobs(jobs: list[Job], lessons: dict[str, Lesson], book: Gradebook, *, workers: int, ahead: int,
                     timeout: float, notebook_timeout: float, fork: bool, feedback: Path | None,
                     max_workers: int | None = None, say=print) -> list[Outcome]:
    """Grade `jobs`: `workers` notebooks at once, more (up to `max_workers`) while some of the
    running ones wait without using a core; `ahead` kernels started before they are needed."""
    import asyncio
    import shutil
    import tempfile
    from collections import deque

    runtime = Path(tempfile.mkdtemp(prefix="cg-"))  # short: ipc socket paths are limited to ~100 bytes
    launcher = Launcher(fork, runtime)
    outcomes: list[Outcome] = []
    live: set[Kernel] = set()
    total = len(jobs)
    max_workers = max(workers, max_workers or workers)

    async def new_kernel(lesson: Lesson) -> Kernel:
        kernel = Kernel(launcher, runtime)
        live.add(kernel)
        imports = list(lesson.imports) + [f"checks.{c.module}" for c in lesson.check_cells.values()]
        if not fork:
            imports = [m for m in ZYGOTE_IMPORTS if not m.startswith("ipykernel")] + imports
        try:
            return await kernel.start(imports)
        except BaseException:
            kernel.close()
            raise

    def finish(outcome: Outcome) -> None:
        lesson = lessons.get(outcome.job.lesson or "")
        book.add(outcome_row(outcome, lesson))
        if feedback is not None and lesson is not None:
            write_feedback(outcome, lesson, feedback)
        outcomes.append(outcome)
        say(f"[{len(outcomes)}/{total}] {outcome.job.learner} · {outcome.job.lesson or '--'} · "
            f"{outcome.score}/{len(lesson.exercises) if lesson else 0} · {outcome.status} · {outcome.seconds:.1f} s"
            f" · {outcome.job.rel}")

    for job in jobs:
        if job.problem or job.lesson not in lessons:
            finish(Outcome(job, {}, NOT_COURSE, 0.0, events=[job.problem or "no lesson found"]))
    # The longest lessons first, so that no long notebook is left alone at the end.
    cost = {n: len(lesson.check_cells) * 4 + len(lesson.imports) for n, lesson in lessons.items()}
    pending = deque(sorted((j for j in jobs if not j.problem and j.lesson in lessons),
                           key=lambda j: (-cost[j.lesson], j.rel)))
    warm: deque = deque()  # (job, task starting its kernel)
    running: dict = {}  # task → (job, holder of its current kernel)
    watch = CpuWatch()
    loop = asyncio.get_running_loop()
    try:  # SIGTERM (a stopped pod, `kill`) ends the run as Ctrl-C does: kernels closed, rows kept
        import signal

        loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    except (NotImplementedError, AttributeError, RuntimeError):
        pass
    cores, spared = cpu_count(), float("-inf")
    try:
        if pending:
            await launcher.start()
        while pending or warm or running:
            while pending and len(warm) < ahead:
                job = pending.popleft()
                warm.append((job, asyncio.create_task(new_kernel(lessons[job.lesson]))))
            now = loop.time()
            # More than `workers` at once only while cores are left idle: a running notebook that
            # waits (a hung await, a check's timers) lends its core, and a machine with a core to
            # spare for 1 s takes one more notebook (then looks again 2 s later).
            extra = sum(watch.idle(getattr(holder.get("kernel"), "pid", None), now) for _, holder in running.values())
            spare = watch.spare_cores(now, cores)
            if len(running) >= workers and spare >= 0.75 and now - spared >= 2.0:
                extra, spared = extra + 1, now
            while warm and len(running) < min(max_workers, workers + extra):
                job, first = warm.popleft()
                lesson, holder = lessons[job.lesson], {}
                task = asyncio.create_task(grade_notebook(job, lesson, first, lambda lesson=lesson: new_kernel(lesson),
                                                          timeout, notebook_timeout, holder=holder))
                running[task] = (job, holder)
                if pending:
                    job = pending.popleft()
                    warm.append((job, asyncio.create_task(new_kernel(lessons[job.lesson]))))
            done, _ = await asyncio.wait(list(running), timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                job, _ = running.pop(task)
                try:
                    outcome = task.result()
                except Exception as exc:  # a fault of the grader, not of the learner: no row, so a rerun retries
                    print(f"course grade: {job.rel} was not graded ({type(exc).__name__}: {exc}); run again to retry",
                          file=sys.stderr)
                    continue
                finish(outcome)
    finally:
        for task in [*running, *(t for _, t in warm)]:
            task.cancel()
        for kernel in list(live):
            kernel.close()
        await launcher.close()
        shutil.rmtree(runtime, ignore_errors=True)
    return outcomes


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise SystemExit(f"course grade: --shard wants K/N with 1 <= K <= N, e.g. 2/4 (got {text!r})")
    return int(match[1]), int(match[2])


def main(args) -> int:
    import asyncio

    from .build import ROOT

    solutions = Path(getattr(args, "solutions", None) or ROOT / "solutions")
    extra = getattr(args, "extra_checks", None)
    lessons = load_lessons(solutions, Path(extra) if extra else None)
    out = Path(args.out)
    merge_parts = getattr(args, "merge", None)
    if merge_parts:
        rows = merge([Path(p) for p in merge_parts], out)
        print(f"merged {len(merge_parts)} part(s): {len(rows)} row(s) in {out}")
    else:
        if not getattr(args, "folder", None):
            print("course grade: give a FOLDER of notebooks (or --merge PARTS)", file=sys.stderr)
            return 2
        folder = Path(args.folder)
        if not folder.is_dir():
            print(f"course grade: {folder} is not a folder", file=sys.stderr)
            return 2
        jobs = find_jobs(folder, lessons)
        part = _parse_shard(getattr(args, "shard", None))
        if part:
            jobs = shard(jobs, *part)
        present = [lessons[n] for n in sorted({j.lesson for j in jobs if j.lesson in lessons})]
        book = Gradebook(out, columns_for(present))
        done = {} if getattr(args, "regrade", False) else book.done()
        book.drop({job.rel for job in jobs if job.rel in done and done[job.rel] != job.digest}
                  | ({job.rel for job in jobs} if getattr(args, "regrade", False) else set()))
        done = book.done()
        todo = [job for job in jobs if done.get(job.rel) != job.digest]
        workers = max(1, int(getattr(args, "jobs", None) or cpu_count()))
        max_jobs = max(workers, int(getattr(args, "max_jobs", None) or 2 * workers))
        skipped = len(jobs) - len(todo)
        print(f"grading {len(todo)} notebook(s)" + (f" ({skipped} already in {out})" if skipped else "")
              + (f", shard {part[0]}/{part[1]}" if part else "") + f", {workers} at a time"
              + (f" (up to {max_jobs} while some only wait)" if max_jobs > workers else ""))
        feedback = Path(args.feedback) if getattr(args, "feedback", None) else None
        started = time.perf_counter()
        try:
            asyncio.run(grade_jobs(
                todo, lessons, book, workers=workers, ahead=int(getattr(args, "ahead", None) or workers),
                timeout=float(getattr(args, "timeout", None) or 30.0),
                notebook_timeout=float(getattr(args, "notebook_timeout", None) or 900.0),
                max_workers=max_jobs,
                fork=(not getattr(args, "no_fork", False)) and hasattr(os, "fork") and sys.platform == "linux",
                feedback=feedback, say=(lambda *a: None) if getattr(args, "quiet", False) else print))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print(f"interrupted: {len(book.rows)} row(s) kept in {out}; the same command goes on from there",
                  file=sys.stderr)
            return 130
        finally:
            book.close()
        rows = book.rows
        print(f"{len(todo)} graded in {time.perf_counter() - started:.1f} s; gradebook: {out}")
    if getattr(args, "canvas", None):
        write_canvas(rows, lessons, Path(args.canvas))
        print(f"Canvas import file: {args.canvas}")
    if getattr(args, "moodle", None):
        write_moodle(rows, lessons, Path(args.moodle))
        print(f"Moodle import file: {args.moodle}")
    return 0
