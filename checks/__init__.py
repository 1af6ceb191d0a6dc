"""The course's autograder: check functions for each lesson and the tools they use.

Notebook cells import from here: `serve` starts an app in process, the `lessonNN`
modules hold each lesson's checks, and a failing check raises `CheckFailed`.
"""

from .blocking import BlockingWatch
from .harness import AppClient, describe_exception, serve
from .report import CheckFailed, Report
from .runner import check
from .timing import InFlight, LoopMonitor, Timeline, measure_concurrency

__all__ = [
    "AppClient",
    "BlockingWatch",
    "CheckFailed",
    "InFlight",
    "LoopMonitor",
    "Report",
    "Timeline",
    "check",
    "describe_exception",
    "measure_concurrency",
    "serve",
]
