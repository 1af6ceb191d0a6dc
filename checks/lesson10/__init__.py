"""Lesson 10, WebSockets: what the notebook imports.

`world` holds the stand-ins (token book, ticker, chat message), the course's /feed handler and
the drawing; `judge` holds the checks; `checks.ws` drives the connections.
"""

from ..ws import sockets
from .judge import check_chat, check_hub, check_ticks
from .world import (
    QUEUE_SIZE, SEND_TIMEOUT_S, TICK_S, ChatMessage, FeedLog, Picture, Tick, draw_deliveries, feed_app, ticker, users,
)

__all__ = [
    "QUEUE_SIZE", "SEND_TIMEOUT_S", "TICK_S", "ChatMessage", "FeedLog", "Picture", "Tick", "check_chat", "check_hub",
    "check_ticks", "draw_deliveries", "feed_app", "sockets", "ticker", "users",
]
