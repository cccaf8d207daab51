"""Publishes that failed while the bus was down are retried, events only, in order."""

from __future__ import annotations

import asyncio

from warmline.bus.base import Message, Subscriber
from warmline.bus.memory import MemoryBus
from warmline.bus.republish import Republisher
from warmline.errors import Unavailable


class FlakyBus(MemoryBus):
    """An in-process bus that is down until told otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.up = asyncio.Event()

    async def publish(self, channel: str, message: Message) -> None:
        if self.down:
            await self.up.wait()  # the next try happens once the bus is back
            raise Unavailable("bus down")
        await super().publish(channel, message)


async def test_failed_events_are_republished_in_order_once_the_bus_is_back() -> None:
    bus = FlakyBus()
    republisher = Republisher(bus)
    republisher.start()
    inbox = Subscriber()
    await bus.subscribe("conv:c1", inbox)
    for seq in (1, 2, 3):
        republisher.add("conv:c1", {"type": "event", "seq": seq})
    republisher.add("conv:c1", {"type": "typing", "on": True})  # ephemeral: not retried
    assert len(republisher) == 3
    bus.down = False
    bus.up.set()
    received = [await inbox.get() for _ in range(3)]
    assert [m["seq"] for m in received] == [1, 2, 3]
    assert len(republisher) == 0 and len(inbox) == 0
    await republisher.close()
