"""What the grading check cells import inside the learner's kernel.

Kept apart and light (stdlib only at import): every kernel imports it, and it must not depend on
anything a learner's cell could have changed.
"""

from __future__ import annotations

import sys

MIME = "application/vnd.course-grade+json"  # the grading cells' own events (never shown)


def _load_extra(module: str, path: str):
    """An instructor-only checks module, loaded from its file (never on the learner's path)."""
    import importlib.util

    name = f"course_extra_{module}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        spec.loader.exec_module(loaded)
    return sys.modules[name]


def kernel_check(module: str, name: str, extra: str | None = None):
    """The course's own check `checks.<module>.<name>` (and the instructor's extra one of the same
    name, if any), as a coroutine function that displays each report with its `course-check` data
    and never raises: looked up in the module, not in the learner's namespace, which the learner
    may have changed."""
    import importlib

    from IPython.display import display

    checks = [("course", getattr(importlib.import_module(f"checks.{module}"), name))]
    if extra:
        checks.append(("extra", getattr(_load_extra(module, extra), name, None)))

    async def run(*args, **kwargs):
        for role, chk in checks:
            if chk is None:
                continue
            display({MIME: {"event": "start", "role": role, "limit_s": float(chk.limit_s)}, "text/plain": ""}, raw=True)
            report = await chk.report(*args, **kwargs)
            display(report, metadata={"course-check": chk.result(report),
                                      "course-grade": {"role": role, "check": f"{module}.{name}"}})

    return run
