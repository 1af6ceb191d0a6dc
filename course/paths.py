"""Where the course is: shared by build, progress and grade (kept apart so none imports another
for a constant)."""

from __future__ import annotations

import os
from pathlib import Path

# The course folder: this package's parent, or $COURSE_ROOT (tests work on a copy of the course).
ROOT = Path(os.environ.get("COURSE_ROOT") or Path(__file__).resolve().parent.parent).resolve()
# Backups are not hidden: JupyterLab's file browser and "Open from Path" refuse dotted paths.
SOLUTIONS, NOTEBOOKS, BACKUPS = ROOT / "solutions", ROOT / "notebooks", ROOT / "backups"
# A learners' release (`course release`) has no solutions/: its lessons/ holds the learner copies,
# which reset, progress and build read instead (building a learner copy gives it back unchanged).
if not SOLUTIONS.is_dir() and (ROOT / "lessons").is_dir():
    SOLUTIONS = ROOT / "lessons"
