"""Lesson 04, gather: what the notebook imports.

`world` holds the slow upstreams and the visits table; each exercise's check has a module of its
own (`judge_dashboard`, `judge_deadline`, `judge_fan_out`, `judge_first_completed`,
`judge_sessions`). Notebook cells import both from here, `UpstreamError` too.
"""

from ..services import UpstreamError
from .judge_dashboard import check_dashboard
from .judge_deadline import check_deadline
from .judge_fan_out import check_fan_out
from .judge_first_completed import check_first_completed
from .judge_sessions import check_one_session_per_task
from .world import (
    Base, PriceService, Upstream, Visit, ads_api, mirrors, orders_api, prices_api, profile_api, recommendations_api,
)

__all__ = [
    "Base", "PriceService", "Upstream", "UpstreamError", "Visit", "ads_api", "check_dashboard", "check_deadline",
    "check_fan_out", "check_first_completed", "check_one_session_per_task", "mirrors", "orders_api", "prices_api",
    "profile_api", "recommendations_api",
]
