"""Lesson 14, the capstone: what the notebook imports.

`world` holds the shop the service talks to (upstreams, mailer, database) and the course's own
service; `judge_service` checks the learner's service (its contract, then under load);
`judge_tests` runs the learner's tests against the course's service with planted bugs.
"""

from .judge_service import check_contract, check_under_load
from .judge_tests import BUGS, check_tests
from .world import DEADLINE_S, SERVICES, TOKENS, Shop, UpstreamError, course_app, database_threads, dev_shop

__all__ = [
    "BUGS", "DEADLINE_S", "SERVICES", "TOKENS", "Shop", "UpstreamError", "check_contract", "check_tests",
    "check_under_load", "course_app", "database_threads", "dev_shop",
]
