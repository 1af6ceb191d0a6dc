"""Lesson 05, middleware: what the notebook imports.

`world` holds the stand-ins (the slow backend, the log book, the key and the allowed origin) and
the course's own middleware; each exercise's check has a module of its own (`judge_headers`,
`judge_asgi`, `judge_guard`, `judge_cors`). Notebook cells import both from here.
"""

from .judge_asgi import check_asgi_middleware
from .judge_cors import check_cors
from .judge_guard import check_guard
from .judge_headers import check_request_headers
from .world import ALLOWED_ORIGIN, API_KEY, BOOM_MESSAGE, ApiKeyGuard, LogBook, RequestContext, backend

__all__ = [
    "ALLOWED_ORIGIN", "API_KEY", "BOOM_MESSAGE", "ApiKeyGuard", "LogBook", "RequestContext", "backend",
    "check_asgi_middleware", "check_cors", "check_guard", "check_request_headers",
]
