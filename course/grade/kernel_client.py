"""One kernel, seen from the grader: start it (warm with the lesson's modules), run a cell under a
deadline that the running check may extend, interrupt it, kill it, clean up after it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .in_kernel import MIME
from .launcher import START_TIMEOUT_S, Launcher

DEMO_LIMIT_S = 5.0  # while grading, a demo cell that runs learner code under serve() stops sooner (not graded)
CHECK_GRACE_S = 15.0  # beyond a check's own limit_s before its cell is interrupted
INTERRUPT_GRACE_S = 5.0  # after an interrupt, before the kernel is killed and replaced
OUTPUT_CAP_MB = 20  # what one cell may send (stream, display, errors); past it the kernel is killed and replaced
OUTPUT_KINDS = ("stream", "display_data", "execute_result", "update_display_data", "error")


def output_cap() -> int:
    """Bytes one cell may send: OUTPUT_CAP_MB, or COURSE_GRADE_OUTPUT_CAP_MB (tests lower it)."""
    try:
        return int(float(os.environ.get("COURSE_GRADE_OUTPUT_CAP_MB", OUTPUT_CAP_MB)) * (1 << 20))
    except ValueError:
        return OUTPUT_CAP_MB << 20


def _size(content: dict) -> int:
    """Roughly the bytes an output message carries (its text and data)."""
    total = len(str(content.get("text", ""))) + len(str(content.get("evalue", "")))
    total += sum(len(str(line)) for line in content.get("traceback", []) or [])
    return total + sum(len(str(value)) for value in (content.get("data") or {}).values())


@dataclass
class CellRun:
    status: str  # "ok", "error", "timeout", "died", "output" (over the output cap: stopped)
    outputs: list = field(default_factory=list)  # display outputs kept (course-check data)
    sequence: list = field(default_factory=list)  # ("mark", grading event) and ("report", output), in order
    error: str = ""  # "Ename: evalue" of an error in the cell
    seconds: float = 0.0
    kernel_lost: bool = False  # the kernel must be replaced


class Kernel:
    _count = 0

    def __init__(self, launcher: Launcher, runtime: Path):
        self.launcher, self.runtime = launcher, runtime
        Kernel._count += 1
        self.name = f"k{os.getpid() % 10000}-{Kernel._count}"
        self.cwd = runtime / self.name  # its own folder: work folder, $HOME, sockets (sandboxed: its uid's only)
        self.pid = None
        self.client = None

    async def start(self, imports: list[str]) -> "Kernel":
        import asyncio
        import secrets
        from queue import Empty

        from jupyter_client.asynchronous import AsyncKernelClient
        from jupyter_client.connect import write_connection_file

        (self.cwd / "tmp").mkdir(parents=True, exist_ok=True)
        ipc = os.name == "posix"  # unix sockets: no ports to collide, no "running over TCP" warning
        conn, info = write_connection_file(str(self.runtime / f"{self.name}.json"), transport="ipc" if ipc else "tcp",
                                           ip=str(self.cwd / ".k") if ipc else "127.0.0.1",
                                           key=secrets.token_hex(16).encode())
        self.pid = await self.launcher.launch(conn, str(self.cwd), str(self.runtime / f"{self.name}.log"))
        self.client = AsyncKernelClient()
        self.client.load_connection_info(info)
        import zmq

        # A message past the cap is never taken in whole: zmq drops the connection instead (and
        # reconnects); the monitor below sees that, and the cell is stopped as over the cap.
        self.client.context.setsockopt(zmq.MAXMSGSIZE, output_cap() + (1 << 20))
        self.client.start_channels()
        address = f"inproc://course-grade-iopub-{self.name}"
        self.client.iopub_channel.socket.monitor(address, zmq.EVENT_DISCONNECTED)
        self._monitor = zmq.Context.shadow(self.client.context.underlying).socket(zmq.PAIR)
        self._monitor.connect(address)
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
        code = ""
        if imports:  # warm: the lesson's modules are imported before any learner code runs
            code = ("import importlib as __i\nfor __m in %r:\n    try:\n        __i.import_module(__m)\n"
                    "    except BaseException:\n        pass\n" % (imports,))
            # Demos (cells that are not checks) get a shorter limit: their output is not graded.
            # (serve(), record() and the ASGI demos all read checks.harness.DEMO_LIMIT_S.)
            code += ("import sys as __s\nfor __m in ('checks.harness',):\n"
                     "    __h = __s.modules.get(__m)\n    if hasattr(__h, 'DEMO_LIMIT_S'):\n"
                     "        __h.DEMO_LIMIT_S = min(__h.DEMO_LIMIT_S, %r)\n" % DEMO_LIMIT_S)
            code += "for __n in ('__i', '__m', '__h', '__s'):\n    globals().pop(__n, None)\ndel __n\n"
        # What a forged result would patch, kept before any learner code runs (see in_kernel.py).
        code += "import course.grade.in_kernel as __g\n__g.baseline()\ndel __g\n"
        run = await self.run(code, START_TIMEOUT_S, silent=True)
        if run.status != "ok":
            raise RuntimeError(f"the kernel's warm-up cell failed ({run.status}: {run.error})")
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
        cap, sent, dropped = output_cap(), 0, None
        self._dropped()  # a disconnect before this cell is not its doing
        while True:
            now = loop.time()
            if dropped is None and self._dropped():
                dropped = now
            # Everything the kernel sends, whoever's it is, counts. A dropped connection is a message over
            # the cap only if the kernel is still alive a moment later (a dying kernel drops it too).
            if sent > cap or (dropped is not None and now - dropped >= 1.0 and self.launcher.alive(self.pid)):
                self.kill()
                run.status, run.kernel_lost = "output", True
                break
            if dropped is not None and not self.launcher.alive(self.pid):
                run.status, run.kernel_lost = "died", True
                break
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
            kind, content = msg["msg_type"], msg["content"]
            if kind in OUTPUT_KINDS:
                sent += _size(content)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if kind == "status" and content.get("execution_state") == "idle":
                break
            if kind == "error":
                if run.status == "ok":
                    run.status = "error"
                run.error = f"{content.get('ename', '')}: {content.get('evalue', '')}".strip()
            elif kind in ("display_data", "execute_result"):
                data = content.get("data", {})
                if MIME in data:
                    event = data[MIME] if isinstance(data[MIME], dict) else {}
                    run.sequence.append(("mark", event))
                    if not interrupted and event.get("event") == "start":
                        try:
                            limit = min(float(event.get("limit_s", 0)), 600.0)
                        except (TypeError, ValueError):
                            limit = 0.0
                        deadline = max(deadline, loop.time() + limit + CHECK_GRACE_S)
                elif isinstance((content.get("metadata") or {}).get("course-check"), dict):
                    output = {"metadata": content["metadata"], "html": str(data.get("text/html", ""))[:200_000],
                              "text": str(data.get("text/plain", ""))[:200_000]}
                    run.outputs.append(output)
                    run.sequence.append(("report", output))
        if dropped is not None and not run.kernel_lost:  # it finished, but sent a message over the cap
            self.kill()
            run.status, run.kernel_lost = "output", True
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

    def _dropped(self) -> bool:
        """Whether iopub was disconnected (a message over the size limit) since the last look."""
        import zmq

        seen = False
        monitor = getattr(self, "_monitor", None)
        while monitor is not None and monitor.poll(0):
            monitor.recv_multipart(zmq.NOBLOCK)
            seen = True
        return seen

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
        if getattr(self, "_monitor", None) is not None:
            try:
                self.client.iopub_channel.socket.disable_monitor()
            except Exception:
                pass
            self._monitor.close(linger=0)
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

