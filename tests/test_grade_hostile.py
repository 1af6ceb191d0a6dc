"""`course grade` on a hostile class (issue 21): every honest row right, every attack fails or is
flagged, no secret readable, the checkout unchanged, no process left.

The attacks are lesson-00 notebooks. Each reader serves the right answer only when it found no
secret, so "passed" proves both that its code ran and that nothing leaked.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest

from course.build import ROOT
from course.cli import main as cli
from course.grade.sandbox import probe
from grading import EXTRA_CHECKS, RIGHT, WRONG, learner_copy, marked, rows, with_cells, write

pytestmark = pytest.mark.skipif(bool(probe()), reason=f"no sandbox here: {probe()}")

SECRET = "s3cret-instructor-token"
GREET_IF = ('app = FastAPI()\n\n@app.get("/hello")\nasync def hello(name: str = "world"):\n'
            '    return {"message": f"Hello, {name}!" if not leaked else "leaked: " + repr(leaked)[:200]}\n')
PATCH_CHECKS = """
import glob, os, checks, checks.lesson00
leaked = []
for path in [checks.lesson00.__file__, os.path.join(os.path.dirname(checks.__file__), 'lesson01.py')]:
    try:
        with open(path, 'a') as f:
            f.write('\\nraise SystemExit  # patched by a learner\\n')
        leaked.append(path)
    except OSError:
        pass
for home in [os.path.expanduser('~'), '/root']:  # an IPython startup file that forges every later check
    try:
        folder = os.path.join(home, '.ipython', 'profile_default', 'startup')
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, '00-forge.py'), 'w').write('print("forged")\\n')
    except OSError:
        pass
leaked = leaked  # the checkout must stay unchanged: a write that worked shows in the answer
""" + WRONG


def reader(paths: list[str], grader_pid: int) -> str:
    return f"""
import os, socket, sys
leaked = [k for k, v in os.environ.items() if {SECRET!r} in v or k == 'COURSE_SECRET_TOKEN']
for path in {paths!r} + ['/proc/{grader_pid}/environ', '/proc/1/environ']:
    try:
        if os.path.isdir(path):  # (a home shows only the folders that hold the interpreter)
            if [e for e in os.listdir(path) if not sys.base_prefix.startswith(os.path.join(path, e) + os.sep)]:
                leaked.append(path)
        elif open(path, 'rb').read(100000) and not path.endswith('/proc/1/environ'):
            leaked.append(path)
        elif {SECRET!r}.encode() in open(path, 'rb').read():
            leaked.append(path)
    except OSError:
        pass
try:
    socket.create_connection(('1.1.1.1', 53), timeout=1).close()
    leaked.append('network')
except OSError:
    pass
""" + GREET_IF


HOOK_FORGER = WRONG + """
import re
from IPython.display import display

def forge(result):
    cell = result.info.raw_cell
    for check, nonce in re.findall(r"__course_check__\\('lesson00', '(\\w+)', [^,]*, '(\\w+)'\\)", cell):
        display({'text/plain': 'ok'}, raw=True, metadata={
            'course-check': {'id': 'lesson00.' + check, 'passed': True},
            'course-grade': {'role': 'course', 'check': 'lesson00.' + check, 'nonce': nonce}})

get_ipython().events.register('post_run_cell', forge)
"""
DISPLAY_FORGER = WRONG + """
import IPython.display, IPython.core.display_functions as df
real = df.display

def display(*objs, metadata=None, **kw):
    if metadata and 'course-check' in metadata:
        metadata = dict(metadata, **{'course-check': dict(metadata['course-check'], passed=True, failed=[])})
    return real(*objs, metadata=metadata, **kw)

IPython.display.display = df.display = display
"""
SCRIPT_FORGER = WRONG + "\n<script>alert('xss')</script>\n"
DAEMON = """
import os, subprocess, sys
subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', '{marker}-session'], start_new_session=True)
if os.fork() == 0:  # a double-forked daemon that writes a file now and then
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, '-c', 'import time\\nwhile True: open("d", "w"); time.sleep(1)',
                                  '{marker}-daemon'])
    os._exit(0)
""" + RIGHT
PARENT_KILLER = """
import os, signal
for pid in (os.getppid(), 1):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
""" + RIGHT


def _checkout_state() -> str:
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True, text=True)
    digest = hashlib.sha256()
    for path in sorted((ROOT / "checks").rglob("*.py")):
        digest.update(path.read_bytes())
    return status.stdout + digest.hexdigest()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    folder, extra, out, feedback = base / "class", base / "instructor", base / "gradebook.csv", base / "feedback"
    write(extra / "lesson00.py", EXTRA_CHECKS)
    marker = f"hostile-{os.getpid()}-{time.monotonic_ns()}"
    copy = learner_copy()
    secrets = [str(ROOT / "solutions"), str(ROOT / ".git"), str(ROOT / "tests"), str(extra), str(extra / "lesson00.py"),
               str(out), str(feedback), str(folder), str(folder / "ana" / "00_welcome.ipynb"),
               os.path.expanduser("~")]
    class_ = {
        "ana": RIGHT, "bo": WRONG,  # honest
        "patcher": PATCH_CHECKS, "reader": reader(secrets, os.getpid()),
        "hooker": HOOK_FORGER, "displayer": DISPLAY_FORGER, "scripter": SCRIPT_FORGER,
        "daemon": DAEMON.replace("{marker}", marker), "killer": PARENT_KILLER,
        "zed": WRONG,  # honest, graded with (and after) the others: untouched by them
    }
    for learner, source in class_.items():
        write(folder / learner / "00_welcome.ipynb", with_cells(copy, {"c15": source}))
    before = _checkout_state()
    os.environ["COURSE_SECRET_TOKEN"] = SECRET
    try:
        started = time.monotonic()
        assert cli(["grade", str(folder), "--out", str(out), "--feedback", str(feedback), "--extra-checks", str(extra),
                    "--timeout", "10", "--jobs", "2", "--sandbox", "required"]) == 0
        seconds = time.monotonic() - started
    finally:
        os.environ.pop("COURSE_SECRET_TOKEN", None)
    return {"rows": rows(out), "before": before, "after": _checkout_state(), "marker": marker,
            "feedback": feedback, "seconds": seconds}


def test_honest_rows_are_right_and_no_attack_earns_a_mark(hostile):
    got = {file.split("/")[0]: (row["lesson00.check_hello"], row["status"]) for file, row in hostile["rows"].items()}
    assert got == {
        "ana": ("passed", "graded"), "bo": ("failed", "graded"), "zed": ("failed", "graded"),
        "patcher": ("failed", "graded"),  # its writes were refused: its own wrong answer fails
        "reader": ("passed", "graded"),  # it ran, and found no secret (else it would have served a wrong answer)
        "hooker": ("tampered", "tampered"), "displayer": ("tampered", "tampered"),
        "scripter": ("failed", "graded"),
        "daemon": ("passed", "graded"), "killer": ("passed", "graded"),
    }, got


def test_the_checkout_is_unchanged_and_no_process_is_left(hostile):
    assert hostile["after"] == hostile["before"], "a submission changed the course's checkout"
    deadline = time.monotonic() + 5
    while marked(hostile["marker"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not marked(hostile["marker"]), "a learner's process outlived the run"


def test_feedback_says_why_and_escapes_what_learners_made(hostile):
    pages = hostile["feedback"]
    hooked = (pages / "hooker" / "00_welcome.html").read_text(encoding="utf-8")
    assert "tampered" in hooked and "did not produce" in hooked
    displayed = (pages / "displayer" / "00_welcome.html").read_text(encoding="utf-8")
    assert "was replaced" in displayed
    for page in pages.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "<script" not in text and "Zoë Ann" not in text, page  # nor the instructor's check source
