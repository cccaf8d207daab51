"""Publishes that failed while the bus was down, tried again once it is back.

Stored events are never lost (subscribers fill gaps from the store by seq), but a subscriber
only notices a gap when a later event arrives; if the publishing node alone lost the bus,
the others would otherwise see its event late. Retrying the publish closes that window;
duplicates are harmless because every consumer drops a seq it has already delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque

from warmline.backoff import Backoff
from warmline.bus.base import Bus, Message
from warmline.errors import Unavailable

log = logging.getLogger("warmline.bus")

# Only what must arrive: persistent events and assignments. Typing, deltas and queue
# snapshots are ephemeral and would only be stale by the time the bus is back.
RETRIED_TYPES = frozenset({"event", "assigned"})


class Republisher:
    def __init__(self, bus: Bus, limit: int = 10_000) -> None:
        self._bus = bus
        self._pending: deque[tuple[str, Message]] = deque(maxlen=limit)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(base=0.05, cap=2.0)

    def add(self, channel: str, message: Message) -> None:
        if message.get("type") in RETRIED_TYPES:
            self._pending.append((channel, message))
            self._wake.set()

    def __len__(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bus-republish")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        attempt = 0
        while True:
            await self._wake.wait()
            while self._pending:
                channel, message = self._pending[0]
                try:
                    await self._bus.publish(channel, message)
                except Unavailable:
                    attempt += 1
                    await asyncio.sleep(self._backoff.delay(attempt, random.random()))
                    continue
                self._pending.popleft()
                attempt = 0
            self._wake.clear()
            log.info("republished what the bus missed while it was down")
