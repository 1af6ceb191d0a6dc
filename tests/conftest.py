"""Shared fixtures: async tests run on asyncio through anyio's pytest plugin (it comes with Starlette)."""

import pytest


@pytest.fixture
def anyio_backend():
    return "asyncio"


def names(report):
    """The failed items' names of a report, for short assertions."""
    return [item.name for item in report.failures]


def failure_text(report):
    return "\n".join(f"{i.name} | {i.observed} | {i.expected} | {i.hint}" for i in report.failures)
