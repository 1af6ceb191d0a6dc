"""Lesson 08, background work: what the notebook imports.

`world` holds the stand-ins (the database and its tables, counting sessions, the mailer, the
invoice renderer); `judge_signup`, `judge_invoices` and `judge_outbox` hold one exercise's check
each. Notebook cells import both from here.
"""

from .judge_invoices import check_invoices
from .judge_outbox import check_outbox
from .judge_signup import check_signup
from .world import (
    DATABASE_URL, POLL_S, SEND_TIMEOUT_S, CountingSession, MailerError, Order, OutboxMessage, User, create_tables,
    database, mailer, new_database, render_invoice, reset_database, stats,
)

__all__ = [
    "DATABASE_URL", "POLL_S", "SEND_TIMEOUT_S", "CountingSession", "MailerError", "Order", "OutboxMessage", "User",
    "check_invoices", "check_outbox", "check_signup", "create_tables", "database", "mailer", "new_database",
    "render_invoice", "reset_database", "stats",
]
