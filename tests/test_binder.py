"""Binder builds what CI tests: the same Python, the project installed from binder/ with `-e .`."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"


def test_runtime_is_the_python_this_suite_runs_on_and_the_project_accepts():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-3\.\d+", runtime), runtime
    assert runtime == f"python-{sys.version_info.major}.{sys.version_info.minor}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(n) for n in re.search(r">=\s*([\d.]+)", requires).group(1).split("."))
    assert sys.version_info[:2] >= minimum


def test_requirements_install_the_project_itself_so_dependencies_have_one_source():
    lines = [
        line.strip() for line in (BINDER / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines == ["-e ."], "binder/requirements.txt should hold only `-e .`: pyproject.toml lists the dependencies"


def test_no_root_level_environment_files_that_binder_would_ignore():
    # With a binder/ folder, repo2docker ignores configuration at the root; keep it in one place.
    for name in ("requirements.txt", "runtime.txt", "environment.yml", "postBuild", "apt.txt"):
        assert not (ROOT / name).exists(), f"{name} at the root is ignored by Binder; put it in binder/"


REPO2DOCKER = Path(sys.executable).parent / "jupyter-repo2docker"


@pytest.mark.skipif(not REPO2DOCKER.exists() and not os.environ.get("CI"), reason="jupyter-repo2docker not installed")
def test_repo2docker_detects_the_config_and_installs_the_project():
    result = subprocess.run(
        [str(REPO2DOCKER), "--no-build", "--debug", "--user-id", "1000", "--user-name", "jovyan", str(ROOT)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"python={version}" in output
    copy_repo = output.index("src/ ${REPO_DIR}/")
    install = output.index('pip install --no-cache-dir -r "binder/requirements.txt"')
    assert copy_repo < install, "the repository must be in place before `-e .` is installed"
    assert install < output.index("binder/postBuild"), "postBuild runs after the install"


def test_post_build_installs_the_lab_settings_that_make_course_uses(tmp_path):
    # Binder and `make course` both turn off JupyterLab's news pop-up with one file.
    settings = json.loads((BINDER / "overrides.json").read_text())
    assert settings["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
    result = subprocess.run(["bash", str(BINDER / "postBuild")], cwd=ROOT, env={**os.environ, "NB_PYTHON_PREFIX": str(tmp_path)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    installed = tmp_path / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    assert json.loads(installed.read_text()) == settings
    assert "binder/overrides.json" in (ROOT / "Makefile").read_text()
    server_config = tmp_path / "etc" / "jupyter" / "jupyter_server_config.py"
    assert server_config.read_text() == (BINDER / "jupyter_server_config.py").read_text()
    assert "binder/jupyter_server_config.py" in (ROOT / "Makefile").read_text()


def test_instructor_workflow_runs_nbval_with_loadfile_and_the_learner_copy_test():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "course.yml").read_text())
    steps = " ".join(step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"])
    assert "--nbval-lax" in steps and "--dist loadfile" in steps and "solutions/" in steps
    assert "tests/test_notebooks.py" in steps and "tests/test_build.py" in steps
    python = next(
        step["with"]["python-version"] for job in workflow["jobs"].values() for step in job["steps"]
        if "setup-python" in step.get("uses", "")
    )
    assert python == (BINDER / "runtime.txt").read_text().strip().removeprefix("python-")
