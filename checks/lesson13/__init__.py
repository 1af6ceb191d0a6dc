"""Lesson 13, production on a real server: what the notebook imports.

`world` holds the servers (uvicorn in the notebook's process, or in processes of their own),
the load and its drawings, and the CPU-heavy job; `visits` the counter two worker processes share; `judge` and
`judge_visits` hold the checks.
"""

from .judge import check_pool, check_settings
from .judge_visits import check_visits
from .visits import Visit, two_workers
from .world import (
    DEMO_APP, LoadResult, Picture, ServerProcess, crunch, draw_load, leftover_servers, live_server, load, rounds_for,
)

__all__ = [
    "DEMO_APP", "LoadResult", "Picture", "ServerProcess", "Visit", "check_pool", "check_settings", "check_visits",
    "crunch", "draw_load", "leftover_servers", "live_server", "load", "rounds_for", "two_workers",
]
