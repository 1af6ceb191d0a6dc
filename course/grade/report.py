"""The class at a glance: one HTML page for the instructor, written after each `course grade` run.

Pass rate per exercise (a bar picture, inline SVG), the failing items most often seen (the
`failed` item names of the course checks' `course-check` data), time per submission, and the rows
flagged timed out, kernel died, output over limit, tampered or not a course notebook. Rates, times
and flags come from the gradebook (the whole class, resumed rows included); failing items only from
the notebooks graded in this run (a resumed row's reports are not kept). Everything is escaped.
"""

from __future__ import annotations

import html
import statistics
from collections import Counter
from pathlib import Path

from .feedback import FEEDBACK_STYLE
from .lessons import Lesson
from .verdicts import DIED, GRADED, NOT_COURSE, OVER_OUTPUT, PASSED, TAMPERED, TIMED_OUT, Outcome

FLAGGED = (TAMPERED, DIED, TIMED_OUT, OVER_OUTPUT, NOT_COURSE)


def default_path(out: Path) -> Path:
    """Next to the gradebook: gradebook.csv → gradebook-report.html."""
    return out.with_name(f"{out.stem}-report.html")


def _label(exercise: str) -> str:
    module, name = exercise.split(".", 1)
    return f"{module.removeprefix('lesson')} · {name.removeprefix('check_').replace('_', ' ')}"


def pass_rates(rows: list[dict], lessons: dict[str, Lesson]) -> list[tuple[str, int, int]]:
    """(exercise, passed, submissions) for every exercise of the lessons in the gradebook."""
    found = []
    for number in sorted({row.get("lesson", "") for row in rows} & set(lessons)):
        mine = [row for row in rows if row.get("lesson") == number]
        for exercise in lessons[number].exercises:
            found.append((exercise, sum(row.get(exercise) == PASSED for row in mine), len(mine)))
    return found


def bars_svg(rates: list[tuple[str, int, int]]) -> str:
    """Horizontal bars, one per exercise: green for the share that passed."""
    esc, width, bar, row_h = html.escape, 640, 360, 22
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{row_h * len(rates) + 8}' "
             "role='img' aria-label='pass rate per exercise' font-family='system-ui,sans-serif' font-size='13'>"]
    for i, (exercise, passed, total) in enumerate(rates):
        y, share = 4 + i * row_h, passed / total if total else 0.0
        parts.append(f"<text x='0' y='{y + 15}'>{esc(_label(exercise))}</text>"
                     f"<rect x='200' y='{y + 3}' width='{bar}' height='15' fill='#f6d5d5'/>"
                     f"<rect x='200' y='{y + 3}' width='{bar * share:.1f}' height='15' fill='#2da44e'/>"
                     f"<text x='{200 + bar + 8}' y='{y + 15}'>{share:.0%} ({passed}/{total})</text>")
    parts.append("</svg>")
    return "".join(parts)


def failing_items(outcomes: list[Outcome]) -> Counter:
    """(exercise, item name, role) → submissions whose check reported that item failed."""
    seen: Counter = Counter()
    for outcome in outcomes:
        for exercise, outputs in outcome.reports.items():
            for output in outputs:
                data, role = output["metadata"]["course-check"], output["metadata"]["course-grade"].get("role")
                names = data.get("failed") if isinstance(data.get("failed"), list) else []
                seen.update({(exercise, str(name), str(role)) for name in names})
    return seen


def write_report(path: Path, rows: list[dict], lessons: dict[str, Lesson], outcomes: list[Outcome]) -> Path:
    esc = html.escape
    rates = pass_rates(rows, lessons)
    graded = [row for row in rows if row.get("status") != NOT_COURSE]
    seconds = sorted(float(row.get("seconds") or 0) for row in graded)
    why = {outcome.job.rel: outcome.events for outcome in outcomes}
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Class report</title>"
             f"<style>{FEEDBACK_STYLE}</style></head><body><h1>The class at a glance</h1>",
             f"<p>{len(rows)} notebook(s), {len({row.get('learner') for row in rows})} learner(s); "
             f"{sum(row.get('status') == GRADED for row in rows)} graded without incident.</p>",
             "<h2>Pass rate per exercise</h2>", bars_svg(rates) if rates else "<p>No course notebook graded.</p>"]
    items = failing_items(outcomes)
    parts.append("<h2>Failing items most often seen</h2>")
    if items:
        parts.append(f"<p>From the {len(outcomes)} notebook(s) graded in this run.</p><table><tr><th>exercise</th>"
                     "<th>item that failed</th><th>submissions</th></tr>")
        for (exercise, name, role), count in items.most_common(20):
            extra = " <small>(instructor's extra check)</small>" if role == "extra" else ""
            parts.append(f"<tr><td>{esc(_label(exercise))}</td><td>{esc(name)}{extra}</td><td>{count}</td></tr>")
        parts.append("</table>")
    else:
        parts.append(f"<p>None in the {len(outcomes)} notebook(s) graded in this run.</p>")
    parts.append("<h2>Time per submission</h2>")
    if seconds:
        slowest = max(graded, key=lambda row: float(row.get("seconds") or 0))
        parts.append(f"<p>median <b>{statistics.median(seconds):.1f} s</b>, max <b>{seconds[-1]:.1f} s</b> "
                     f"(<code>{esc(slowest.get('file', ''))}</code>) over {len(seconds)} notebook(s).</p>")
    flagged = sorted((row for row in rows if row.get("status") in FLAGGED),
                     key=lambda row: (FLAGGED.index(row["status"]), row.get("file", "")))
    parts.append(f"<h2>Flagged rows ({len(flagged)})</h2>")
    if flagged:
        parts.append("<table><tr><th>status</th><th>learner</th><th>lesson</th><th>file</th><th>why</th></tr>")
        for row in flagged:
            note = "<br>".join(esc(event) for event in why.get(row.get("file", ""), []))
            parts.append(f"<tr><td class='failed'>{esc(row['status'])}</td><td>{esc(row.get('learner', ''))}</td>"
                         f"<td>{esc(row.get('lesson', ''))}</td><td><code>{esc(row.get('file', ''))}</code></td>"
                         f"<td>{note}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path
