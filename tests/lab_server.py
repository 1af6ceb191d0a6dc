"""Start a real JupyterLab on loopback for the environment tests, and stop it cleanly.

Every Jupyter folder (config, data, runtime, settings, workspaces) points into a temporary
folder, so a test leaves nothing behind and meets no one's personal settings.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

TOKEN = "course-test-token"
# Settings that keep a test quiet and repeatable: no news pop-up, no autosave rewriting the
# notebook, every cell kept in the page (windowing would drop cells scrolled out of view).
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}
# A lean server for the browser test (`running(..., lean=True)`), on a loaded two-core machine:
# no nbgrader (only the `bench` extra installs it; a learner never has it), no build check (the
# page asks the server to inspect every extension: 10+ s of CPU beside the page load), and the app reachable as `window.jupyterapp` so a test can
# open a second notebook in the same page instead of loading JupyterLab again.
LEAN_SERVER_CONFIG = {
    "ServerApp": {"jpserver_extensions": {
        "nbgrader.server_extensions.assignment_list": False,
        "nbgrader.server_extensions.course_list": False,
        "nbgrader.server_extensions.formgrader": False,
        "nbgrader.server_extensions.validate_assignment": False,
    }},
    "LabApp": {"expose_app_in_browser": True},
}
LEAN_PAGE_CONFIG = {
    "buildCheck": False, "buildAvailable": False,
    "disabledExtensions": {"@jupyter/nbgrader": True},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def jupyter_env(home: Path, lean: bool = False) -> dict[str, str]:
    """An environment whose Jupyter folders all live under `home`, with quiet settings."""
    settings = home / "settings"
    files = {settings / name: values for name, values in SETTINGS.items()}
    if lean:
        files[home / "config" / "jupyter_server_config.json"] = LEAN_SERVER_CONFIG
        files[home / "config" / "labconfig" / "page_config.json"] = LEAN_PAGE_CONFIG
    for target, values in files.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    if lean:  # the server config `make course` and Binder install (beside the JSON one: both are read)
        shutil.copy(Path(__file__).resolve().parent.parent / "binder" / "jupyter_server_config.py", home / "config")
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
    )
    env.pop("COURSE_FULL_ERRORS", None)  # a browser test shows what a learner sees
    return env


def lab_args(port: int) -> list[str]:
    return [
        "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={TOKEN}",
    ]


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def wait_until_up(port: int, process: subprocess.Popen, deadline_s: float, log: Path) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"the command ended with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if get(f"http://127.0.0.1:{port}/api/status", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer within {deadline_s:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def running(command: list[str], cwd: Path, home: Path, port: int, deadline_s: float, lean: bool = False,
            env: dict[str, str | None] | None = None):
    """Run `command` (which starts JupyterLab on `port`) until the block ends; yield its log path.

    `env`: variables to set on top of `jupyter_env` (None removes one)."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    environment = jupyter_env(home, lean=lean)
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=environment, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            wait_until_up(port, process, deadline_s, log)
            yield log
        finally:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    """End the whole process group: `make` and the jupyter server it started."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break  # already gone
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
