"""Pictures for lessons and reports. Uses matplotlib's object API (no pyplot state),
so drawing never depends on the notebook's backend and leaves no figure open."""

from __future__ import annotations

import io
from typing import Callable

OK_COLOR, ERROR_COLOR = "#2f81f7", "#cf222e"

# Sized for JupyterLab at its default zoom: about 900 px wide, labels of 10 pt (14 px) and more.
WIDTH_IN, DPI = 9.0, 100
LABEL_PT, TICK_PT, TITLE_PT = 10, 10.5, 12
MIN_BAR = 0.006  # the shortest bar drawn, as a fraction of the x range (about 5 px): a 1 ms bar stays visible


def render_png(draw: Callable, width: float = WIDTH_IN, height: float | None = None) -> bytes:
    """Draw on a fresh axes with `draw(ax)` and return the PNG bytes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height or 3.0))
    ax = fig.add_subplot()
    draw(ax)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def spaced(xs: list[float], gap: float) -> list[int]:
    """Indices of the values in `xs` to label so that no two labels are closer than `gap`
    (the first of each crowd is kept): labels on one line never overlap."""
    chosen, last = [], None
    for index in sorted(range(len(xs)), key=lambda i: xs[i]):
        if last is None or xs[index] - last >= gap:
            chosen.append(index)
            last = xs[index]
    return sorted(chosen)


def draw_timeline(ax, timeline) -> None:
    """One horizontal bar per request, from its start to its end, in milliseconds."""
    spans = sorted(timeline.spans, key=lambda s: (s.start, s.label))
    right = max((s.end for s in spans), default=0) * 1000
    shortest = (right * 1.25 + 1) * MIN_BAR
    for row, span in enumerate(spans):
        color = OK_COLOR if span.outcome.startswith("2") else ERROR_COLOR
        ax.barh(row, max((span.end - span.start) * 1000, shortest), left=span.start * 1000, color=color, height=0.6)
        ax.text(max(span.end * 1000, span.start * 1000 + shortest), row, f" {span.duration * 1000:.0f} ms",
                va="center", fontsize=LABEL_PT)
    ax.set_yticks(range(len(spans)), [s.label for s in spans], fontsize=TICK_PT)
    ax.tick_params(axis="x", labelsize=TICK_PT)
    ax.invert_yaxis()
    ax.set_xlabel("time since the first request was sent (ms)", fontsize=LABEL_PT)
    ax.set_title(f"{timeline.title}: {timeline.total_s * 1000:.0f} ms in all", fontsize=TITLE_PT)
    ax.set_xlim(0, right * 1.25 + 1)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
