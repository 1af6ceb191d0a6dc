"""Lesson 07, lifespan and shared resources: what the notebook imports.

`world` holds the stand-in services (the rates server, the database, the reports client, the
cache's upstream), `ResourceWatch` and the drawings; `judge_lifespan`, `judge_limit` and
`judge_cache` hold one exercise's check each. Notebook cells import both from here.
"""

from .judge_cache import check_single_flight
from .judge_lifespan import check_lifespan
from .judge_limit import check_shared_limit
from .world import (
    DATABASE_URL, RATES_URL, Product, RatesUpstream, ReportNotFound, ReportsClient, ResourceWatch, on_another_loop,
    rates_app, rates_server, reports_app, reports_lifespan, reset_database, stampede,
)

__all__ = [
    "DATABASE_URL", "RATES_URL", "Product", "RatesUpstream", "ReportNotFound", "ReportsClient", "ResourceWatch",
    "check_lifespan", "check_shared_limit", "check_single_flight", "on_another_loop", "rates_app", "rates_server",
    "reports_app", "reports_lifespan", "reset_database", "stampede",
]
