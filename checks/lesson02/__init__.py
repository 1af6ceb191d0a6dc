"""Lesson 02, dependencies: what the notebook imports. `world` holds the database, its models and
the counting sessions; `judge` holds the checks."""

from .judge import check_sessions, check_auth, check_attempts, check_overrides
from .world import (
    DATABASE_PATH, DATABASE_URL, Base, User, Item, Attempt, SEED_USERS, SessionStats, stats, CountingSession, reset_database, database, log_response_start, course_chain,
)

__all__ = ['Attempt', 'Base', 'CountingSession', 'DATABASE_PATH', 'DATABASE_URL', 'Item', 'SEED_USERS', 'SessionStats', 'User', 'check_attempts', 'check_auth', 'check_overrides', 'check_sessions', 'course_chain', 'database', 'log_response_start', 'reset_database', 'stats']
