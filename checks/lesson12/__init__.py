"""Lesson 12, testing: what the notebook imports.

`world` holds the app under test (a todo API) and its parts; `judge` holds the checks, which run
the learner's tests against the right app and against apps with planted bugs.
"""

from .judge import BUGS, check_isolated_tests, check_todo_tests
from .world import TOKENS, WELCOME, Base, Todo, TodoRow, create_tables, current_user, dev_database_url, get_session, todo_app

__all__ = [
    "BUGS", "TOKENS", "WELCOME", "Base", "Todo", "TodoRow", "check_isolated_tests", "check_todo_tests", "create_tables",
    "current_user", "dev_database_url", "get_session", "todo_app",
]
