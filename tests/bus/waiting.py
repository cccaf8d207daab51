"""Bounded waits for the bus tests: on events where there are some, else polling to a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from warmline.bus.base import Message, Subscriber


async def next_message(subscriber: Subscriber, within_s: float = 5.0) -> Message:
    async with asyncio.timeout(within_s):
        return await subscriber.get()


async def eventually(predicate: Callable[[], bool], within_s: float = 5.0) -> float:
    """Poll a cheap condition until it holds; return how long that took. Fails at the deadline."""
    start = time.monotonic()
    deadline = start + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within_s}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start
