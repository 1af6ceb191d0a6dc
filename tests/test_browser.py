"""A real JupyterLab in a real browser: run all cells, and look at what a learner would see.

Headless Chromium from Debian's packages, driven by Playwright's Python package (no browser
download). Runs on copies of lesson 01 (solution and learner copy) in a temporary folder.
Screenshots land in artifacts/browser/.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from lab_server import TOKEN, free_port, lab_args, running

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LESSON = "01_event_loop.ipynb"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]

if not Path(CHROMIUM).exists():
    # In CI (`make test` installs Debian's chromium) a missing browser is a failure, not a skip.
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the browser test: `make test` installs it as root")
    pytest.skip("Debian's chromium is not installed (`apt-get install chromium`)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving copies of the lesson: `solution.ipynb` and `learner.ipynb`."""
    home = tmp_path_factory.mktemp("lab")
    work = home / "work"
    work.mkdir()
    shutil.copy(ROOT / "solutions" / LESSON, work / "solution.ipynb")
    shutil.copy(ROOT / "notebooks" / LESSON, work / "learner.ipynb")
    port = free_port()
    command = [sys.executable, "-m", "jupyter", "lab", "--allow-root", *lab_args(port)]
    with running(command, cwd=work, home=home, port=port, deadline_s=60):
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                yield browser, f"http://127.0.0.1:{port}"
            finally:
                browser.close()


def open_and_run_all(browser, base: str, name: str):
    """Open `name` alone in a fresh workspace, start Run All Cells; return (page, notebook panel)."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(90_000)  # CI runs this beside other tests on two cores
    page.goto(f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={TOKEN}")
    panel = page.locator(".jp-NotebookPanel:visible")
    # The execution indicator reads idle before the kernel connects: wait for the status bar too.
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).first.wait_for()
    for _attempt in range(3):
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:  # a click that came too early does nothing: no prompt ever shows [*] or [n]
            panel.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]")).first.wait_for(timeout=5_000)
            break
        except sync_api.TimeoutError:
            continue
    return page, panel


def shoot(page, locator, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    locator.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / name))


def no_traceback_wall(panel) -> None:
    for text in panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts():
        assert "Traceback (most recent call last)" not in text
        assert len(text.splitlines()) <= 12, f"an error output of {len(text.splitlines())} lines:\n{text}"


def test_solution_renders_passing_reports_and_timelines(lab):
    browser, base = lab
    page, panel = open_and_run_all(browser, base, "solution.ipynb")
    reports = panel.locator(".course-check-report")
    # Four reports: the broken app's (shown on purpose) and the three passing checks.
    panel.locator(".course-check-report[data-passed='true']").nth(2).wait_for()
    assert reports.count() == 4
    assert panel.locator(".course-check-report[data-passed='false']").count() == 1
    timelines = panel.locator(".jp-RenderedImage img")
    assert timelines.count() >= 3, "the demos draw their timelines as images"
    assert panel.locator(".course-check-report img").count() >= 3, "each timing report carries its timeline"
    box = panel.locator(".course-check-report img").first.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 100
    no_traceback_wall(panel)
    shoot(page, panel.locator(".course-check-report[data-passed='true']").last, "solution-passing-report.png")
    shoot(page, timelines.first, "solution-timeline.png")
    page.close()


def test_learner_copy_shows_a_readable_failure(lab):
    browser, base = lab
    page, panel = open_and_run_all(browser, base, "learner.ipynb")
    error = panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                         has_text="CheckFailed").first
    error.wait_for()
    text = error.inner_text()
    assert "Nothing answers GET /forecast/" in text and "hint:" in text
    failing = panel.locator(".course-check-report[data-passed='false']")
    assert failing.count() >= 2  # the broken app's report and the first check's
    assert "observed:" in failing.last.inner_text()
    no_traceback_wall(panel)
    shoot(page, error, "learner-failing-check.png")
    page.close()
