"""What a check tells the learner: one line per thing checked, details only for failures.

A report renders as HTML in JupyterLab and as plain text in a terminal or under nbval.
A failing check raises `CheckFailed`, whose traceback IPython replaces by the failed
items (`_render_traceback_`), so the learner never sees the check's source.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from typing import Callable

PASS, FAIL = "✓", "✗"


@dataclass
class Item:
    name: str
    passed: bool
    observed: str = ""
    expected: str = ""
    hint: str = ""


def _html_text(text: str) -> str:
    """Escape, then show `code` spans as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


@dataclass
class Report:
    title: str
    items: list[Item] = field(default_factory=list)
    # Figures are drawn lazily, only when HTML is rendered: (caption, make_png()).
    figures: list[tuple[str, Callable]] = field(default_factory=list)
    # Numbers a benchmark or an instructor may want: elapsed time, intentional waits.
    metrics: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, passed: bool, observed: str = "", expected: str = "", hint: str = "") -> bool:
        self.items.append(Item(name, bool(passed), observed, expected, hint))
        return bool(passed)

    def fail(self, name: str, observed: str = "", expected: str = "", hint: str = "") -> bool:
        return self.add(name, False, observed, expected, hint)

    def figure(self, caption: str, make_png: Callable[[], bytes]) -> None:
        self.figures.append((caption, make_png))

    @property
    def passed(self) -> bool:
        return bool(self.items) and all(item.passed for item in self.items)

    @property
    def failures(self) -> list[Item]:
        return [item for item in self.items if not item.passed]

    def headline(self) -> str:
        good = sum(item.passed for item in self.items)
        mark = PASS if self.passed else FAIL
        return f"{mark} {self.title}: {good} of {len(self.items)} passed"

    # ---- plain text -------------------------------------------------------------
    @staticmethod
    def _item_text(item: Item) -> list[str]:
        if item.passed:
            return [f"  {PASS} {item.name}" + (f" ({item.observed})" if item.observed else "")]
        lines = [f"  {FAIL} {item.name}"]
        for label, value in (("observed", item.observed), ("expected", item.expected), ("hint", item.hint)):
            if value:
                lines.append(f"      {label}: {value}")
        return lines

    def text(self, failures_only: bool = False) -> str:
        lines = [self.headline()]
        for item in self.failures if failures_only else self.items:
            lines += self._item_text(item)
        return "\n".join(lines)

    __str__ = text

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(self.text())

    # ---- HTML -------------------------------------------------------------------
    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.passed else "#cf222e"
        rows = []
        for item in self.items:
            mark = f'<span style="color:{"#1a7f37" if item.passed else "#cf222e"}">{PASS if item.passed else FAIL}</span>'
            details = ""
            if item.passed:
                if item.observed:
                    details = f' <span style="color:#57606a">({_html_text(item.observed)})</span>'
            else:
                parts = []
                for label, value in (("observed", item.observed), ("expected", item.expected), ("hint", item.hint)):
                    if value:
                        parts.append(f"<div><b>{label}:</b> {_html_text(value)}</div>")
                details = f'<div style="margin:2px 0 6px 1.6em">{"".join(parts)}</div>'
            rows.append(f"<li style='list-style:none'>{mark} {_html_text(item.name)}{details}</li>")
        images = "".join(
            f'<figure style="margin:6px 0"><img alt="{html.escape(caption)}" src="data:image/png;base64,{png}"/>'
            f"<figcaption style='color:#57606a'>{html.escape(caption)}</figcaption></figure>"
            for caption, png in self._rendered_figures()
        )
        return (
            f'<div class="course-check-report" data-passed="{str(self.passed).lower()}" '
            f'style="border-left:4px solid {color};padding:4px 10px;margin:4px 0">'
            f'<div style="font-weight:bold;color:{color}">{html.escape(self.headline())}</div>'
            f'<ul style="margin:4px 0;padding-left:0.4em">{"".join(rows)}</ul>{images}</div>'
        )

    def _rendered_figures(self) -> list[tuple[str, str]]:
        return [(caption, base64.b64encode(make_png()).decode()) for caption, make_png in self.figures]


class CheckFailed(AssertionError):
    """A check cell failed. Carries the report; its traceback is the failed items only."""

    def __init__(self, report: Report):
        self.report = report
        super().__init__(report.text(failures_only=True))

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines instead of a traceback. In a notebook the report is already
        # displayed above, so one line is enough (it still stops Run All); elsewhere, the text.
        # COURSE_FULL_ERRORS=1 (set by the project's tests) asks for the text in notebooks too.
        import os

        from .harness import in_notebook

        if in_notebook() and os.environ.get("COURSE_FULL_ERRORS") != "1":
            names = "; ".join(item.name for item in self.report.failures)
            return [f"CheckFailed: {FAIL} {names} (the report above says what was observed)"]
        return [f"CheckFailed: {self.report.text(failures_only=True)}"]
