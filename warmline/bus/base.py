"""The bus interface and the bounded per-subscriber inbox shared by every backend."""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

Message = dict[str, Any]

# Pushed into every subscriber after the bus lost and regained its backend: whatever was
# published meanwhile may be gone, so consumers fill the gap from the store by seq.
RESYNC: Message = {"type": "_resync"}


class SubscriberOverflow(Exception):
    """The consumer fell too far behind; its connection is closed (1013) and may resume."""


class Subscriber:
    """A bounded inbox. `push` never blocks the publisher: a full inbox marks overflow."""

    __slots__ = ("_closed", "_items", "_maxsize", "_on_overflow", "_waiter", "overflowed")

    def __init__(self, maxsize: int = 512, on_overflow: Callable[[], None] | None = None) -> None:
        self._items: deque[Message] = deque()
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        # The consumer may be stuck writing to a dead socket and never call get() again:
        # the callback lets its owner cut it off from outside.
        self._on_overflow = on_overflow
        self.overflowed = False

    def push(self, message: Message) -> None:
        if self._closed or self.overflowed:
            return
        if len(self._items) >= self._maxsize:
            self.overflowed = True
            self._items.clear()
            if self._on_overflow is not None:
                self._on_overflow()
        else:
            self._items.append(message)
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._items)

    def take_nowait(self) -> Message | None:
        """The next message, or None while there is none; SubscriberOverflow after an
        overflow."""
        if self.overflowed:
            raise SubscriberOverflow
        return self._items.popleft() if self._items else None

    async def get(self) -> Message:
        """Next message; raise SubscriberOverflow after an overflow, EOFError once closed."""
        while True:
            if self.overflowed:
                raise SubscriberOverflow
            if self._items:
                return self._items.popleft()
            if self._closed:
                raise EOFError
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class Bus(abc.ABC):
    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, channel: str, message: Message) -> None: ...

    @abc.abstractmethod
    async def subscribe(self, channel: str, subscriber: Subscriber) -> None: ...

    @abc.abstractmethod
    async def unsubscribe(self, channel: str, subscriber: Subscriber) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the bus cannot deliver right now (readiness)."""

    @property
    @abc.abstractmethod
    def healthy(self) -> bool: ...
