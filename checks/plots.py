"""Pictures for lessons and reports. Uses matplotlib's object API (no pyplot state),
so drawing never depends on the notebook's backend and leaves no figure open."""

from __future__ import annotations

import io
from typing import Callable

OK_COLOR, ERROR_COLOR = "#2f81f7", "#cf222e"


def render_png(draw: Callable, width: float = 6.4, height: float | None = None) -> bytes:
    """Draw on a fresh axes with `draw(ax)` and return the PNG bytes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height or 2.6))
    ax = fig.add_subplot()
    draw(ax)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()


def draw_timeline(ax, timeline) -> None:
    """One horizontal bar per request, from its start to its end, in milliseconds."""
    spans = sorted(timeline.spans, key=lambda s: (s.start, s.label))
    for row, span in enumerate(spans):
        color = OK_COLOR if span.outcome.startswith("2") else ERROR_COLOR
        ax.barh(row, (span.end - span.start) * 1000, left=span.start * 1000, color=color, height=0.6)
        ax.text(span.end * 1000, row, f" {span.duration * 1000:.0f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(spans)), [s.label for s in spans], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time since the first request was sent (ms)")
    ax.set_title(f"{timeline.title}: {timeline.total_s * 1000:.0f} ms in all", fontsize=10)
    right = max((s.end for s in spans), default=0) * 1000
    ax.set_xlim(0, right * 1.18 + 1)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
