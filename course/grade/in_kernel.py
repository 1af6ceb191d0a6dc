"""What the grading check cells import inside the learner's kernel.

Kept apart and light (stdlib only at import): every kernel imports it, and it must not depend on
anything a learner's cell could have changed.

Forgery. `baseline()` runs before any learner code (the grader's warm-up cell) and keeps what a
forger would patch: IPython's display path, the shell's event hooks, every function and check of
the loaded `checks` modules. Each check call then says, in its start and end marks (the grader's
own events, with the cell's nonce), what differs from that baseline; the grader marks such an
exercise *tampered*. Learner code runs in this same process, so this detects, it cannot prevent:
code written to defeat this module (it can read it) can hide from it. The sandbox is what keeps a
learner from harming anyone else.
"""

from __future__ import annotations

import sys

MIME = "application/vnd.course-grade+json"  # the grading cells' own events (never shown)
_BASE: dict = {}
SAFE_HOOK_PACKAGES = ("matplotlib_inline", "matplotlib", "IPython", "ipykernel")


def _watched() -> dict:
    """What a forged result would patch, by name."""
    import IPython.core.display_functions as functions
    import IPython.display

    shell = get_ipython()  # noqa: F821 (a builtin in a kernel)
    pub = shell.display_pub
    items = {"IPython.display.display": IPython.display.display, "display_functions.display": functions.display,
             "publish_display_data": functions.publish_display_data, "shell.display_pub": pub,
             "DisplayPublisher.publish": getattr(type(pub), "publish", None),
             "display_pub.publish": vars(pub).get("publish"), "sys.displayhook": sys.displayhook,
             "Session.send": getattr(type(getattr(pub, "session", None)), "send", None),
             "session.send": vars(getattr(pub, "session", None) or object()).get("send") if hasattr(pub, "session")
             else None}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "checks" or name.startswith("checks.")):
            continue
        for attr, value in list(vars(module).items()):
            if callable(value) and getattr(value, "__module__", None) == name:
                items[f"{name}.{attr}"] = value
                fn = getattr(value, "fn", None)  # a Check: the function it runs, its limit
                if fn is not None:
                    items[f"{name}.{attr}.fn"] = fn
                    items[f"{name}.{attr}.code"] = getattr(fn, "__code__", None)
                if isinstance(value, type):  # its methods (not its data: a check may keep state there)
                    for key, member in vars(value).items():
                        if callable(member) or isinstance(member, (property, staticmethod, classmethod)):
                            items[f"{name}.{attr}.{key}"] = member
                elif hasattr(value, "__code__"):
                    items[f"{name}.{attr}.code"] = value.__code__
    return items


def _hooks() -> dict:
    shell = get_ipython()  # noqa: F821
    return {event: list(callbacks) for event, callbacks in shell.events.callbacks.items()}


def _safe_hook(callback) -> bool:
    """A hook that IPython or matplotlib's inline backend registered (flushing figures), not learner code."""
    func = getattr(callback, "__func__", callback)
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    return (getattr(func, "__module__", "").split(".")[0] in SAFE_HOOK_PACKAGES and module is not None
            and getattr(module, getattr(func, "__name__", ""), None) in (func, callback)
            and str(getattr(getattr(func, "__code__", None), "co_filename", "")).startswith(
                (sys.prefix, sys.base_prefix)))


def baseline() -> None:
    """Run by the grader before any learner code."""
    import IPython.core.display_functions as functions

    _BASE.update(items=_watched(), hooks=_hooks(), display=functions.display)


def changes() -> list[str]:
    """What differs from the baseline: patched display functions or checks, hooks added."""
    if not _BASE:
        return ["the grader's baseline was removed"]
    found = []
    now, then = _watched(), _BASE["items"]
    found += [f"{name} was replaced" for name, value in then.items() if now.get(name, value) is not value]
    for event, callbacks in _hooks().items():
        before = _BASE["hooks"].get(event, [])
        found += [f"a `{event}` hook was added ({getattr(cb, '__qualname__', repr(cb))[:60]})"
                  for cb in callbacks if cb not in before and not _safe_hook(cb)]
    return found[:10]


def _load_extra(module: str, code: str):
    """An instructor-only checks module, from its compiled code (its file is not in the sandbox)."""
    import base64
    import marshal
    import types

    loaded = types.ModuleType(f"course_extra_{module}")
    exec(marshal.loads(base64.b64decode(code)), vars(loaded))
    return loaded


def kernel_check(module: str, name: str, extra: str | None = None, nonce: str = ""):
    """The course's own check `checks.<module>.<name>` (and the instructor's extra one of the same
    name, if any), as a coroutine function that displays each report with its `course-check` data
    and never raises: looked up in the module, not in the learner's namespace, which the learner
    may have changed. Each report goes between a start and an end mark carrying `nonce`."""
    import importlib

    display = _BASE.get("display")
    if display is None:
        from IPython.display import display
    checks = [("course", getattr(importlib.import_module(f"checks.{module}"), name))]
    if extra:
        checks.append(("extra", getattr(_load_extra(module, extra), name, None)))

    def mark(event: str, role: str, **more) -> None:
        display({MIME: dict(event=event, role=role, check=f"{module}.{name}", nonce=nonce, tampered=changes(),
                            **more), "text/plain": ""}, raw=True)

    async def run(*args, **kwargs):
        for role, chk in checks:
            if chk is None:
                continue
            mark("start", role, limit_s=float(chk.limit_s))
            report = await chk.report(*args, **kwargs)
            display(report, metadata={"course-check": chk.result(report),
                                      "course-grade": {"role": role, "check": f"{module}.{name}", "nonce": nonce}})
            mark("end", role)

    return run
