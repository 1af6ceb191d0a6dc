"""Lesson 13, production on a real server: what the notebook imports.

`world` holds the servers (uvicorn in the notebook's process, or in processes of their own),
the load and its drawings, and the CPU-heavy job; `judge` holds the checks.
"""

from .judge import check_pool, check_settings
from .world import (
    DEMO_APP, LoadResult, Picture, ServerProcess, crunch, draw_load, leftover_servers, live_server, load, rounds_for,
)

__all__ = [
    "DEMO_APP", "LoadResult", "Picture", "ServerProcess", "check_pool", "check_settings", "crunch", "draw_load",
    "leftover_servers", "live_server", "load", "rounds_for",
]
