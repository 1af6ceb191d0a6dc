"""The README's first command on a fresh clone: it sets everything up and serves the course.

The clone gets its own virtual environment from `make course`; JupyterLab is started on a
free loopback port instead of opening a browser, asked for the notebooks, and stopped.
"""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import urllib.request

from lab_server import TOKEN, free_port, get, lab_args, running


def terminal_output(port: int, command: str, timeout_s: float = 20.0) -> str:
    """Open a JupyterLab terminal, type `command`, and return what it printed up to a marker."""
    import websocket  # websocket-client, installed with JupyterLab

    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/terminals", data=b"", method="POST",
                                     headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        name = json.loads(response.read())["name"]
    socket = websocket.create_connection(f"ws://127.0.0.1:{port}/terminals/websocket/{name}?token={TOKEN}",
                                         timeout=timeout_s)
    try:
        socket.send(json.dumps(["stdin", f"{command}; echo END-$((6*7))\r"]))
        seen = ""
        deadline = time.monotonic() + timeout_s
        while "END-42" not in seen and time.monotonic() < deadline:
            kind, *payload = json.loads(socket.recv())
            if kind == "stdout":
                seen += payload[0]
        return seen
    finally:
        socket.close()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def http_error_302(self, request, fp, code, message, headers):
        return fp

ROOT = Path(__file__).resolve().parent.parent
INSTALL_DEADLINE_S = 420  # a cold pip cache downloads JupyterLab and friends


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make")
def test_first_readme_command_sets_up_and_serves_the_notebooks(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert "make course" in readme.split("```")[1], "the README's first command is `make course`"
    clone = tmp_path / "course"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=60)
    port = free_port()
    command = ["make", "course", f"LAB_ARGS={' '.join(lab_args(port))}"]
    with running(command, cwd=clone, home=tmp_path / "jupyter", port=port, deadline_s=INSTALL_DEADLINE_S):
        status, body = get(f"http://127.0.0.1:{port}/api/contents/notebooks")
        assert status == 200
        listed = {item["name"] for item in json.loads(body)["content"]}
        expected = {path.name for path in (ROOT / "notebooks").glob("*.ipynb")}
        assert expected and expected <= listed
        status, page = get(f"http://127.0.0.1:{port}/lab/tree/notebooks/00_welcome.ipynb")
        assert status == 200 and b"JupyterLab" in page
        # The first page a learner sees is the welcome notebook, as in the Binder badge's link.
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Authorization": f"token {TOKEN}"})
        with urllib.request.build_opener(NoRedirect).open(request, timeout=5) as response:
            assert response.headers["Location"].split("?")[0].endswith("/lab/tree/notebooks/00_welcome.ipynb")
        status, body = get(f"http://127.0.0.1:{port}/api/kernelspecs")
        assert "python3" in json.loads(body)["kernelspecs"]
        # Lab's stdout is a log file here, as under nohup or in a container: its terminal must
        # still find the course's own `course` (a login shell would have reset PATH).
        found = terminal_output(port, "command -v course")
        assert str(clone / ".venv" / "bin" / "course") in found, found
    assert (clone / ".venv" / "bin" / "jupyter").exists(), "the first command installs into the clone's own .venv"
