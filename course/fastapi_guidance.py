"""FastAPI's own guidance, shipped inside the installed package, shown where the learner is.

The files live under `fastapi/.agents/skills/fastapi/` in site-packages: a hidden folder that
JupyterLab's file browser and "Open from Path" refuse. In a notebook:

    from course import guidance
    guidance("dependencies")                       # references/dependencies.md, rendered
    guidance("SKILL", "Async vs Sync")             # one section of SKILL.md

In a terminal: `course guidance dependencies`.
"""

from __future__ import annotations

import re
from pathlib import Path


class GuidanceNotFound(LookupError):
    pass


def skill_dir() -> Path:
    import fastapi

    return Path(fastapi.__file__).parent / ".agents" / "skills" / "fastapi"


def topics() -> list[str]:
    folder = skill_dir()
    return (["SKILL"] if (folder / "SKILL.md").exists() else []) + sorted(
        path.stem for path in (folder / "references").glob("*.md"))


def text(topic: str = "SKILL", section: str | None = None) -> str:
    """The Markdown of one guidance file, or of the section whose heading contains `section`."""
    folder = skill_dir()
    path = folder / "SKILL.md" if topic.upper() == "SKILL" else folder / "references" / f"{topic}.md"
    if not path.exists():
        raise GuidanceNotFound(f"no guidance named {topic!r} in this FastAPI; there is: {', '.join(topics())}")
    markdown = path.read_text(encoding="utf-8")
    if section is None:
        return markdown
    lines = markdown.splitlines()
    for start, line in enumerate(lines):
        heading = re.match(r"(#+)\s+(.*)", line)
        if heading and section.lower() in heading.group(2).lower():
            level = len(heading.group(1))
            end = next((i for i in range(start + 1, len(lines))
                        if (m := re.match(r"(#+)\s", lines[i])) and len(m.group(1)) <= level), len(lines))
            return "\n".join(lines[start:end]).strip() + "\n"
    raise GuidanceNotFound(f"no section with {section!r} in its heading in {path.name}")


def show(topic: str = "SKILL", section: str | None = None) -> None:
    """Show FastAPI's shipped guidance on `topic` (rendered Markdown in a notebook)."""
    from IPython.display import Markdown, display

    import fastapi

    display(Markdown(f"*FastAPI {fastapi.__version__}'s own guidance, `{topic}`:*\n\n" + text(topic, section)))
