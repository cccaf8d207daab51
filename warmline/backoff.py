"""Retry timing: capped exponential backoff with full jitter.

The policy is a pure object (the caller supplies the random number), so it is tested without
clocks or randomness; `sleep` is the one thin async shell around it. Full jitter, rather than a
fixed or "equal" jitter, spreads the reconnects of many nodes and clients evenly over the
whole window, which is what stops a reconnect storm after Redis or a node comes back.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """`delay(n)` is uniform in [0, min(cap, base * 2**n)] for the n-th consecutive failure."""

    base: float = 0.05
    cap: float = 5.0

    def __post_init__(self) -> None:
        if not (self.base > 0 and math.isfinite(self.base)):
            raise ValueError(f"base must be a positive number, not {self.base!r}")
        if not (self.cap >= self.base and math.isfinite(self.cap)):
            raise ValueError(f"cap must be a number >= base, not {self.cap!r}")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the n-th delay (0-based): doubles each time, then stays at cap."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {attempt}")
        try:
            # ldexp scales the float directly: a huge attempt count saturates at cap instead
            # of building a giant int (2**attempt) or overflowing.
            return min(self.cap, math.ldexp(self.base, attempt))
        except OverflowError:
            return self.cap

    def delay(self, attempt: int, rand: float) -> float:
        """The n-th delay for a uniform random number `rand` in [0, 1]."""
        if not 0.0 <= rand <= 1.0:
            raise ValueError(f"rand must be in [0, 1], not {rand!r}")
        return rand * self.ceiling(attempt)


async def sleep(policy: Backoff, attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Sleep for the policy's delay of this attempt; return how long that was."""
    seconds = policy.delay(attempt, rand())
    await asyncio.sleep(seconds)
    return seconds
