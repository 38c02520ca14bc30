"""How a long-running kitrelay process treats its heap once it has started (the gateway and every worker)."""

from __future__ import annotations

import gc
from typing import Final

# CPython's default collects the youngest generation every 700 new container objects. A relay makes a few per
# event it passes on (Redis replies, batches) and frees them at once, without cycles, so the default ran a
# collection every few dozen events and, as objects reached the older generations, full collections over every
# open stream's state: a third of the gateway's CPU with 2,000 streams open. Cycles are still collected, later.
GC_THRESHOLDS: Final = (50_000, 20, 100)


def settle_after_startup() -> None:
    """Leave what startup loaded out of every collection (it lives as long as the process), and collect less
    often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
