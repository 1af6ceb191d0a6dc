"""The course as a website (`make site`, site/build.py): built once per test session from this
repository into a temporary folder (executed notebooks are reused from _build/site-cache/ when
neither a lesson nor the course's code changed), then read as files and in headless Chromium.

- one page per lesson in notebooks/, and a syllabus that lists each with what it teaches and its
  run time; a new lesson is picked up by itself;
- no solution region's code anywhere in the site;
- launch links (Binder, nbgitpuller) well formed and made from course/links.py, as is the
  README's badge; the Pages workflow is valid YAML that builds with `make site`;
- in Chromium: every page renders without asking the network for anything, its pictures load,
  every internal link and anchor resolves. Screenshots land in artifacts/site/.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import pytest
import yaml

from course import links

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if re.match(r"\d\d_", p.name))
ARTIFACTS = ROOT / "artifacts" / "site"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def site_build_module():
    # Loaded from its file: a package named `site` would shadow the standard library's.
    spec = importlib.util.spec_from_file_location("course_site_build", ROOT / "site" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LEARNER_PROGRESS = ROOT / ".course" / "progress.json"


def snapshot(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("COURSE_PROGRESS_FILE", None)  # as from a terminal: the build must bring its own
    before = snapshot(LEARNER_PROGRESS)
    result = subprocess.run(
        [sys.executable, str(ROOT / "site" / "build.py"), "--out", str(out / "html"), "--work", str(out / "work"),
         "--cache", str(ROOT / "_build" / "site-cache")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]  # Sphinx's warnings: broken refs, bad markup
    assert snapshot(LEARNER_PROGRESS) == before, "building the site wrote to the learner's progress"
    return out / "html"


def page_text(path: Path) -> str:
    """What a reader (or a search engine) can get out of a file of the site, tags and escapes removed."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".html":
        return html.unescape(re.sub(r"<[^>]+>", "", raw))
    if path.suffix in (".ipynb", ".json"):
        return json.dumps(json.loads(raw), ensure_ascii=False).encode().decode("unicode_escape", "replace")
    return raw


def solution_lines() -> set[str]:
    """The non-trivial lines of every solution region that the learner copies do not also show
    (in prose, a hint or a demo: `task.cancel()`, `app.add_middleware(` are not secrets)."""
    learner = " ".join(" ".join("".join(cell["source"]).split()) for nb in LESSONS
                       for cell in json.loads(nb.read_text())["cells"])  # prose wraps lines: compare words
    found = set()
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            inside = False
            for line in "".join(cell["source"]).splitlines():
                stripped = line.strip()
                if stripped == BEGIN:
                    inside = True
                elif stripped == END:
                    inside = False
                elif inside and len(stripped) >= 12 and not stripped.startswith("#"):
                    words = " ".join(stripped.split())
                    if words not in learner:
                        found.add(words)
    assert learner  # the learner copies were read
    return found


def leaks(folder: Path, lines: set[str]) -> list[str]:
    texts = {p: " ".join(page_text(p).split()) for p in folder.rglob("*") if p.is_file() and p.suffix in (".html", ".ipynb", ".js", ".txt", ".md")}
    return [f"{p.relative_to(folder)}: {line}" for line in sorted(lines) for p, text in texts.items() if line in text]


# --- the build, read as files ---------------------------------------------------------------

def test_every_lesson_has_a_page_and_the_site_has_an_index(site):
    assert LESSONS, "no lesson in notebooks/"
    assert (site / "index.html").exists() and (site / ".nojekyll").exists()
    for lesson in LESSONS:
        page = (site / f"{lesson.stem}.html").read_text()
        title = json.loads(lesson.read_text())["cells"][0]["source"][0].lstrip("# ").strip()
        assert html.escape(title, quote=False) in page, f"{lesson.stem}: its title is not on its page"


def test_lesson_pages_show_the_learner_copy_executed_with_outputs_pictures_and_quiet_failed_checks(site):
    for lesson in LESSONS:
        page = (site / f"{lesson.stem}.html").read_text()
        cells = json.loads(lesson.read_text())["cells"]
        checks = sum("check" in c["metadata"].get("tags", []) for c in cells)
        stubs = sum("# YOUR CODE HERE" in "".join(c["source"]) for c in cells)
        assert page.count("YOUR CODE HERE") >= stubs >= 1, f"{lesson.stem}: exercise stubs missing"
        assert page.count('class="course-check-report" data-passed="false"') >= checks >= 1, lesson.stem
        # Each failing check shows its report and then ONE line, never a traceback wall.
        tracebacks = re.findall(r'<div class="output traceback.*?</pre>', page, re.S)
        assert len(tracebacks) == checks, f"{lesson.stem}: {len(tracebacks)} error outputs for {checks} check cells"
        for block in tracebacks:
            text = html.unescape(re.sub(r"<[^>]+>", "", block)).strip()
            assert text.startswith("CheckFailed: ✗") and "\n" not in text, f"{lesson.stem}: {text[:300]}"
        assert "Traceback (most recent call last)" not in page_text(site / f"{lesson.stem}.html"), lesson.stem
    pictures = sum((site / f"{lesson.stem}.html").read_text().count('src="_images/') for lesson in LESSONS)
    assert pictures >= 5, f"only {pictures} pictures (timelines) in the site"


def test_the_syllabus_lists_every_lesson_with_what_it_teaches_and_its_run_time(site):
    index = (site / "index.html").read_text()
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", index, re.S)
    build = site_build_module()
    for lesson in LESSONS:
        row = next((r for r in rows if f'href="{lesson.stem}.html"' in r), None)
        assert row, f"{lesson.stem} is not in the syllabus"
        text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", row)).split())
        title, paragraph = build.summary(lesson)
        assert title.partition(" · ")[2] in text
        plain = re.sub(r"[*`]", "", paragraph)
        assert plain[:40] in text, f"{lesson.stem}: what it teaches is missing: {text[:200]}"
        assert re.search(r"\b\d+ s$", text), f"{lesson.stem}: no run time in {text[-40:]!r}"


def test_kernels_of_the_build_record_progress_in_a_throw_away_file_and_show_one_line_failures(tmp_path):
    env = site_build_module().kernel_env(tmp_path / "progress.json")
    assert env["COURSE_PROGRESS_FILE"] == str(tmp_path / "progress.json")
    assert "COURSE_FULL_ERRORS" not in env and env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)


def test_a_new_lesson_appears_in_the_syllabus_by_itself(tmp_path):
    build = site_build_module()
    for lesson in LESSONS[:2]:
        shutil.copy(lesson, tmp_path)
    new = json.loads(LESSONS[0].read_text())
    new["cells"][0]["source"] = ["# 09 · Streaming: bytes as they come\n", "\n", "Send a response before it is complete.\n"]
    (tmp_path / "09_streaming.ipynb").write_text(json.dumps(new))
    (tmp_path / "notes.ipynb").write_text(json.dumps(new))  # not a lesson: no NN_ prefix
    found = build.lessons(tmp_path)
    assert [p.name for p in found] == [LESSONS[0].name, LESSONS[1].name, "09_streaming.ipynb"]
    table = build.syllabus(found, {p.stem: (p, 3.0) for p in found}, jobs=2)
    assert "| 09 | [Streaming: bytes as they come](09_streaming.ipynb) | Send a response before it is complete. | 3 s |" in table


def test_no_solution_code_anywhere_in_the_site(site, tmp_path):
    lines = solution_lines()
    assert len(lines) > 50, f"only {len(lines)} solution lines found: is the region parser broken?"
    assert leaks(site, lines) == []
    # The search finds a leak even when highlighting splits the line into tokens.
    line = sorted(lines)[0]
    (tmp_path / "leak.html").write_text("<pre>" + "".join(f'<span class="n">{html.escape(c)}</span>' for c in line) + "</pre>")
    assert leaks(tmp_path, lines) == [f"leak.html: {line}"]
    # And a solution notebook published by mistake would be caught.
    shutil.copy(ROOT / "solutions" / LESSONS[1].name, tmp_path)
    assert len(leaks(tmp_path, lines)) > 5


# --- launch links, one source --------------------------------------------------------------

def check_binder(url: str, lesson: Path) -> None:
    parts = urlsplit(url)
    owner, name = links.repo_parts()
    assert f"{parts.scheme}://{parts.netloc}" == links.BINDERHUB
    assert parts.path == f"/v2/gh/{owner}/{name}/{links.BRANCH}", url
    assert parse_qs(parts.query) == {"urlpath": [f"lab/tree/notebooks/{lesson.name}"]}, url


def check_hub(url: str, lesson: Path) -> None:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == links.JUPYTERHUB and parts.path == "/hub/user-redirect/git-pull", url
    query = parse_qs(parts.query)
    # nbgitpuller clones into a folder named like the repository, then opens the notebook in it.
    assert query == {"repo": [links.REPOSITORY], "branch": [links.BRANCH],
                     "urlpath": [f"lab/tree/{links.repo_parts()[1]}/notebooks/{lesson.name}"]}, url


def test_every_lesson_page_has_binder_and_jupyterhub_launch_links(site):
    for lesson in LESSONS:
        page = html.unescape((site / f"{lesson.stem}.html").read_text())
        binder = re.findall(r'href="(https://[^"]*/v2/gh/[^"]*)"', page)
        hub = re.findall(r'href="(https://[^"]*/git-pull\?[^"]*)"', page)
        assert len(binder) == 2 and len(hub) == 2, f"{lesson.stem}: launch bar and theme menu, each with both"
        for url in binder:
            check_binder(url, lesson)
        for url in hub:
            check_hub(url, lesson)
        assert (ROOT / unquote(parse_qs(urlsplit(binder[0]).query)["urlpath"][0]).removeprefix("lab/tree/")).exists()


def test_links_module_builds_well_formed_urls_for_another_repository_and_hub():
    lesson = Path("notebooks/03_validators.ipynb")
    url = links.hub_url(str(lesson), repository="https://github.com/acme/async-class.git", branch="spring",
                        jupyterhub="https://hub.acme.edu/")
    assert url == ("https://hub.acme.edu/hub/user-redirect/git-pull?repo=https%3A//github.com/acme/async-class.git"
                   "&urlpath=lab/tree/async-class/notebooks/03_validators.ipynb&branch=spring")
    assert links.binder_url(str(lesson), repository="https://github.com/acme/async-class") == (
        f"https://mybinder.org/v2/gh/acme/async-class/{links.BRANCH}?urlpath=lab/tree/notebooks/03_validators.ipynb")


def test_readme_badge_and_hub_example_are_made_from_the_same_links():
    readme = (ROOT / "README.md").read_text()
    assert f"]({links.binder_url('notebooks/00_welcome.ipynb')})" in readme
    assert links.hub_url("notebooks/01_event_loop.ipynb") in readme
    assert "course/links.py" in readme


def test_pages_workflow_builds_with_make_site_and_deploys_the_folder():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "pages.yml").read_text())
    assert workflow["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    runs = [step.get("run", "") for step in build["steps"]]
    assert "make site" in runs
    upload = next(step for step in build["steps"] if "upload-pages-artifact" in step.get("uses", ""))
    assert upload["with"]["path"] == "_build/site"
    assert deploy["needs"] == "build" and "deploy-pages" in deploy["steps"][0]["uses"]
    assert "site:" in (ROOT / "Makefile").read_text() and "_build/site" in (ROOT / "Makefile").read_text()


# --- in the browser ------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(site):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def internal_target(site: Path, page_url: str, base: str, href: str) -> tuple[Path, str] | None:
    url = urljoin(page_url, href)
    if not url.startswith(base):
        return None
    parts = urlsplit(url)
    path = site / unquote(parts.path[len(urlsplit(base).path):])
    return (path / "index.html" if path.is_dir() else path), parts.fragment


def test_every_page_renders_offline_with_its_pictures_and_internal_links(site, served):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI needs Debian's chromium for the site test: `make test` installs it as root")
        pytest.skip("Debian's chromium is not installed (`apt-get install chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pages = ["index"] + [lesson.stem for lesson in LESSONS]
    outside, problems = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        # Offline: anything not served from the site is refused and recorded.
        page.route(re.compile(r"^(?!http://127\.0\.0\.1:)"), lambda route: (outside.append(route.request.url), route.abort()))
        try:
            for name in pages:
                url = served + f"{name}.html"
                assert page.goto(url).ok, url
                page.wait_for_load_state("load")
                assert page.locator("article h1").first.is_visible(), f"{name}: no title rendered"
                page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
                images = page.evaluate("""() => Array.from(document.querySelectorAll('article img'))
                    .map(img => [img.currentSrc.slice(0, 80), img.complete && img.naturalWidth > 0])""")
                problems += [f"{name}: picture not loaded: {src}" for src, ok in images if not ok]
                if name != "index":
                    executed = json.loads((site / "_sources" / f"{name}.ipynb").read_text())
                    expected = sum("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", []))
                    assert len(images) >= expected, f"{name}: {len(images)} pictures on the page"
                    launch = page.locator(".course-launch a")
                    assert launch.count() == 2 and launch.first.is_visible(), f"{name}: launch buttons not shown"
                hrefs = page.evaluate("""() => [...document.querySelectorAll('a[href], link[href]')].map(a => a.getAttribute('href'))
                    .concat([...document.querySelectorAll('script[src], img[src]')].map(e => e.getAttribute('src')))""")
                for href in set(hrefs):
                    if href.startswith("data:"):
                        continue
                    target = internal_target(site, url, served, href)
                    if target is None:
                        continue
                    path, fragment = target
                    if not path.is_file():
                        problems.append(f"{name}: {href} → missing {path.relative_to(site)}")
                    elif fragment and path.suffix == ".html" and f'id="{fragment}"' not in path.read_text():
                        problems.append(f"{name}: {href} → no anchor #{fragment}")
        finally:
            browser.close()
    assert not problems, "\n".join(problems[:30])
    assert not outside, f"pages asked the network for: {sorted(set(outside))[:10]}"
