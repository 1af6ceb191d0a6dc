"""Lesson 11, the database under load: what the notebook imports.

`world` holds the blog database (users and posts on SQLite, counted by the engine's events) and
`judge` holds the checks. Notebook cells import both from here.
"""

from .judge import check_import, check_report_pool, check_users_page
from .world import (
    HOLD_S, POOL_TIMEOUT_S, Base, Counts, Database, EngineWatch, Imported, Post, PostIn, PostOut, User, UserOut,
    counted, slow_report,
)

__all__ = [
    "HOLD_S", "POOL_TIMEOUT_S", "Base", "Counts", "Database", "EngineWatch", "Imported", "Post", "PostIn", "PostOut",
    "User", "UserOut", "check_import", "check_report_pool", "check_users_page", "counted", "slow_report",
]
