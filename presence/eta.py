"""Place in line and estimated wait, from recent handle times and staffed capacity."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def average_handle_time(recent: Sequence[float], default_s: float) -> float:
    """Median of recent handle times (robust to one forgotten conversation)."""
    usable = [t for t in recent if t > 0]
    if len(usable) < 3:
        return default_s
    return float(statistics.median(usable))


def estimate_wait(position: int, total_capacity: int, free_now: int, handle_time_s: float) -> int:
    """Seconds until the conversation at 1-based `position` is likely picked up.

    The first `free_now` positions are picked up at once; after that, every staffed slot
    frees up about once per handle time, so the queue advances `total_capacity` places per
    handle time. With nobody staffed the estimate is the handle time per place (a hint, not a
    promise), so customers still see a number that moves.
    """
    if position <= free_now:
        return 0
    ahead = position - free_now
    slots = max(total_capacity, 1)
    return int(math.ceil(ahead / slots) * handle_time_s)
