"""Where the course is: shared by build, progress and grade (kept apart so none imports another
for a constant)."""

from __future__ import annotations

import os
from pathlib import Path

# The course folder: this package's parent, or $COURSE_ROOT (tests work on a copy of the course).
ROOT = Path(os.environ.get("COURSE_ROOT") or Path(__file__).resolve().parent.parent).resolve()
# Backups are not hidden: JupyterLab's file browser and "Open from Path" refuse dotted paths.
SOLUTIONS, NOTEBOOKS, BACKUPS = ROOT / "solutions", ROOT / "notebooks", ROOT / "backups"
