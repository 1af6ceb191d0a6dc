"""Lesson 09, streaming, SSE and uploads: what the notebook imports.

`world` holds the stand-in services (catalog, feed, scanner, slow disk) and the drawings;
`judge` holds the checks. Notebook cells import both from here.
"""

from .judge import check_export, check_ticks, check_upload
from .world import (
    BATCH_SIZE, CHUNK_BYTES, INFECTED, MAX_UPLOAD_BYTES, RETRY_MS, FeedEvent, Infected, Picture, Product,
    Subscription, Tick, catalog, draw_chunks, feed, scanner, slow_disk,
)

__all__ = [
    "BATCH_SIZE", "CHUNK_BYTES", "INFECTED", "MAX_UPLOAD_BYTES", "RETRY_MS", "FeedEvent", "Infected", "Picture",
    "Product", "Subscription", "Tick", "catalog", "check_export", "check_ticks", "check_upload", "draw_chunks",
    "feed", "scanner", "slow_disk",
]
