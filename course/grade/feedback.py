"""Feedback pages: one HTML page per learner and lesson, with the course checks' reports."""

from __future__ import annotations

import html
import re
from pathlib import Path

from .lessons import Lesson
from .verdicts import NOT_RUN, PASSED, Outcome


def _slug(text: str) -> str:
    return re.sub(r"[^\w.@-]+", "_", text).strip("_") or "learner"


FEEDBACK_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1f2328}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}.passed{color:#1a7f37}.failed{color:#cf222e}
table{border-collapse:collapse}td,th{padding:.2rem .8rem;text-align:left;border-bottom:1px solid #d0d7de}
.note{background:#fff8c5;padding:.5rem 1rem;border-radius:6px}"""


SAFE_TAGS = {"div", "span", "b", "strong", "i", "em", "code", "pre", "p", "ul", "ol", "li", "br", "figure", "img",
             "figcaption", "table", "thead", "tbody", "tr", "td", "th", "details", "summary", "small", "sup", "sub"}
SAFE_ATTRS = {"style", "alt", "src", "title", "colspan", "rowspan"}


def safe_html(text: str) -> bool:
    """A report's HTML as the course's checks make it: plain tags, inline styles, embedded PNGs;
    no script, handler, link or outside resource (else the page shows the report's text, escaped)."""
    from html.parser import HTMLParser

    class Parser(HTMLParser):
        ok = True

        def handle_starttag(self, tag, attrs):
            for name, value in attrs:
                value = (value or "").lower()
                if (name not in SAFE_ATTRS or "url(" in value or "expression" in value or "javascript:" in value
                        or (name == "src" and not value.startswith("data:image/png;base64,"))):
                    self.ok = False
            self.ok &= tag in SAFE_TAGS

        def handle_endtag(self, tag):
            self.ok &= tag in SAFE_TAGS

        def handle_comment(self, data):
            self.ok = False

        handle_decl = handle_pi = unknown_decl = handle_comment

    parser = Parser(convert_charrefs=True)
    parser.feed(text)
    parser.close()
    return parser.ok


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
                page = str(output.get("html") or "")
                parts.append(page if page and safe_html(page) else f"<pre>{esc(str(output.get('text') or ''))}</pre>")
    parts.append("</body></html>\n")
    target.write_text("".join(parts), encoding="utf-8")
    return target
