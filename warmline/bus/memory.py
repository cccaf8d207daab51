"""The in-process bus of a single node."""

from __future__ import annotations

from collections import defaultdict

from warmline.bus.base import Bus, Message, Subscriber


class MemoryBus(Bus):
    def __init__(self) -> None:
        self._channels: dict[str, set[Subscriber]] = defaultdict(set)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for subscribers in self._channels.values():
            for subscriber in subscribers:
                subscriber.close()
        self._channels.clear()

    async def publish(self, channel: str, message: Message) -> None:
        for subscriber in tuple(self._channels.get(channel, ())):
            subscriber.push(message)

    async def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        self._channels[channel].add(subscriber)

    async def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._channels.get(channel)
        if subscribers is None:
            return
        subscribers.discard(subscriber)
        if not subscribers:
            del self._channels[channel]

    async def ping(self) -> None:
        return None

    @property
    def healthy(self) -> bool:
        return True

    def channel_count(self) -> int:
        return len(self._channels)
