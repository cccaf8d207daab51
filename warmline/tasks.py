"""Owned background tasks: every task is tracked, its failure logged, and awaited on close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("warmline.tasks")


class TaskOwner:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any] | None:
        if self._closing:
            coro.close()
            return None
        task = asyncio.create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let running tasks finish within the timeout, then cancel the rest and await them."""
        self._closing = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


class Coalescer:
    """Runs `fn(key)` at most once at a time per key; calls during a run cause one rerun.

    Many triggers (queue changes, slots freed) collapse into few runs, and the last trigger
    is never lost.
    """

    def __init__(self, owner: TaskOwner, fn: Any, name: str) -> None:
        self._owner = owner
        self._fn = fn
        self._name = name
        self._running: set[str] = set()
        self._again: set[str] = set()

    def trigger(self, key: str) -> None:
        if key in self._running:
            self._again.add(key)
            return
        self._running.add(key)
        if self._owner.spawn(self._run(key), name=f"{self._name}:{key}") is None:
            self._running.discard(key)  # the owner is closing: nothing more will run

    async def _run(self, key: str) -> None:
        try:
            while True:
                self._again.discard(key)
                try:
                    await self._fn(key)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s for %s failed", self._name, key)
                if key not in self._again:
                    break
        finally:
            self._running.discard(key)
            self._again.discard(key)
