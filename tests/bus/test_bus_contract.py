"""One contract for every Bus backend: the in-process MemoryBus and RedisBus on a real Redis.

`nodes()` makes a bus for another "node": for memory that is the same process-wide bus, for
Redis a separate RedisBus (own connections, own node id) on the same redis-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.bus.waiting import next_message
from warmline.bus.base import Bus, Subscriber, SubscriberOverflow
from warmline.bus.memory import MemoryBus
from warmline.bus.redis import RedisBus

NodeFactory = Callable[[], Awaitable[Bus]]


@pytest.fixture(params=["memory", "redis"])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[NodeFactory]:
    made: list[Bus] = []
    memory = MemoryBus()

    async def node() -> Bus:
        if request.param == "memory":
            bus: Bus = memory
        else:
            bus = RedisBus(request.getfixturevalue("shared_redis").url)
        if bus not in made:
            await bus.start()
            made.append(bus)
        return bus

    yield node
    for bus in made:
        await bus.close()


@pytest.fixture
async def bus(nodes: NodeFactory) -> Bus:
    return await nodes()


async def drain(subscriber: Subscriber, count: int) -> list[dict[str, object]]:
    return [await next_message(subscriber) for _ in range(count)]


async def test_healthy_after_start(bus: Bus) -> None:
    assert bus.healthy
    await bus.ping()


async def test_delivers_in_publish_order_per_channel(bus: Bus) -> None:
    sub = Subscriber()
    await bus.subscribe("conv:order", sub)
    for i in range(200):
        await bus.publish("conv:order", {"type": "event", "seq": i, "text": f"m{i}"})
    got = await drain(sub, 200)
    assert [m["seq"] for m in got] == list(range(200))
    assert got[7] == {"type": "event", "seq": 7, "text": "m7"}
    assert len(sub) == 0


async def test_interleaved_channels_keep_their_own_order(bus: Bus) -> None:
    a, b = Subscriber(), Subscriber()
    await bus.subscribe("conv:ia", a)
    await bus.subscribe("conv:ib", b)
    for i in range(50):
        await bus.publish("conv:ia", {"seq": i})
        await bus.publish("conv:ib", {"seq": 1000 + i})
    assert [m["seq"] for m in await drain(a, 50)] == list(range(50))
    assert [m["seq"] for m in await drain(b, 50)] == list(range(1000, 1050))


async def test_subscribers_of_other_channels_get_nothing(bus: Bus) -> None:
    a, b = Subscriber(), Subscriber()
    await bus.subscribe("conv:only-a", a)
    await bus.subscribe("conv:only-b", b)
    for i in range(10):
        await bus.publish("conv:only-a", {"seq": i})
    # One connection delivers in order: once b has the marker, a's traffic has gone past it.
    await bus.publish("conv:only-b", {"marker": True})
    assert await next_message(b) == {"marker": True}
    assert len(b) == 0
    assert len(await drain(a, 10)) == 10


async def test_unsubscribe_stops_delivery(bus: Bus) -> None:
    leaving, staying = Subscriber(), Subscriber()
    await bus.subscribe("conv:unsub", leaving)
    await bus.subscribe("conv:unsub", staying)
    await bus.publish("conv:unsub", {"seq": 1})
    assert await next_message(leaving) == {"seq": 1}
    assert await next_message(staying) == {"seq": 1}

    await bus.unsubscribe("conv:unsub", leaving)
    await bus.publish("conv:unsub", {"seq": 2})
    assert await next_message(staying) == {"seq": 2}
    assert len(leaving) == 0

    # The last one leaves too; what is published meanwhile never reaches a later subscriber.
    await bus.unsubscribe("conv:unsub", staying)
    await bus.unsubscribe("conv:unsub", staying)  # twice is harmless
    await bus.publish("conv:unsub", {"seq": 3})
    late = Subscriber()
    await bus.subscribe("conv:unsub", late)
    await bus.publish("conv:unsub", {"seq": 4})
    assert await next_message(late) == {"seq": 4}
    assert len(staying) == 0 and len(leaving) == 0


async def test_unsubscribe_unknown_channel_is_a_no_op(bus: Bus) -> None:
    await bus.unsubscribe("conv:never", Subscriber())
    await bus.ping()


async def test_one_inbox_on_two_channels(bus: Bus) -> None:
    inbox = Subscriber()
    await bus.subscribe("conv:x1", inbox)
    await bus.subscribe("agent:x2", inbox)
    await bus.publish("conv:x1", {"n": 1})
    await bus.publish("agent:x2", {"n": 2})
    assert await drain(inbox, 2) == [{"n": 1}, {"n": 2}]


async def test_bounded_subscriber_overflows(bus: Bus) -> None:
    small, witness = Subscriber(maxsize=3), Subscriber()
    await bus.subscribe("conv:flood", small)
    await bus.subscribe("conv:flood", witness)
    for i in range(5):
        await bus.publish("conv:flood", {"seq": i})
    # Both are pushed in the same dispatch step: once the witness has all five, so has small.
    await drain(witness, 5)
    assert small.overflowed
    with pytest.raises(SubscriberOverflow):
        await small.get()
    # A slow reader costs nobody else anything: the witness keeps getting messages.
    await bus.publish("conv:flood", {"seq": 5})
    assert await next_message(witness) == {"seq": 5}


async def test_publish_without_subscribers(bus: Bus) -> None:
    await bus.publish("conv:nobody", {"seq": 1})
    await bus.ping()


async def test_two_nodes_see_each_other(nodes: NodeFactory) -> None:
    node_a, node_b = await nodes(), await nodes()
    on_a, on_b = Subscriber(), Subscriber()
    await node_a.subscribe("conv:shared", on_a)
    await node_b.subscribe("conv:shared", on_b)
    # A conversation: each side answers what it has seen. `publish` returns before Redis has
    # the message, so only publishes that follow a delivery are ordered across nodes.
    await node_a.publish("conv:shared", {"from": "a", "seq": 1})
    assert (await next_message(on_b))["seq"] == 1
    await node_b.publish("conv:shared", {"from": "b", "seq": 2})
    assert [m["seq"] for m in await drain(on_a, 2)] == [1, 2]
    await node_a.publish("conv:shared", {"from": "a", "seq": 3})
    assert [m["seq"] for m in await drain(on_b, 2)] == [2, 3]
    assert (await next_message(on_a))["seq"] == 3
    assert len(on_a) == 0 and len(on_b) == 0


async def test_own_publish_reaches_a_local_subscriber_exactly_once(nodes: NodeFactory) -> None:
    here, there = await nodes(), await nodes()
    local, remote = Subscriber(), Subscriber()
    await here.subscribe("conv:once", local)
    await there.subscribe("conv:once", remote)
    for i in range(20):
        await here.publish("conv:once", {"seq": i})
    assert [m["seq"] for m in await drain(remote, 20)] == list(range(20))
    # Published after `there` saw all twenty, so `here` reads this from Redis after its own
    # copies of them: once it has arrived, a duplicate would have arrived before it.
    await there.publish("conv:once", {"seq": "marker"})
    assert [m["seq"] for m in await drain(local, 21)] == [*range(20), "marker"]
    assert len(local) == 0


async def test_a_burst_keeps_publish_order_for_local_and_remote_subscribers(
    nodes: NodeFactory,
) -> None:
    here, there = await nodes(), await nodes()
    local_a, local_b, remote = Subscriber(2000), Subscriber(2000), Subscriber(2000)
    await here.subscribe("conv:burst", local_a)
    await here.subscribe("conv:burst", local_b)
    await there.subscribe("conv:burst", remote)
    other = Subscriber(2000)  # another channel interleaved in the same burst
    await there.subscribe("conv:burst-other", other)
    # Concurrent publishers, as many request handlers would be: order is the order in which
    # their publish calls ran, which `sent` records.
    sent: list[int] = []

    async def send(i: int) -> None:
        sent.append(i)
        await here.publish("conv:burst", {"seq": i})
        await here.publish("conv:burst-other", {"seq": i})

    await asyncio.gather(*(send(i) for i in range(1000)))
    for sub in (local_a, local_b, remote, other):
        assert [m["seq"] for m in await drain(sub, 1000)] == sent


async def test_message_values_round_trip(nodes: NodeFactory) -> None:
    here, there = await nodes(), await nodes()
    local, remote = Subscriber(), Subscriber()
    await here.subscribe("conv:types", local)
    await there.subscribe("conv:types", remote)
    message = {
        "type": "event",
        "seq": 2**40,
        "ts": 1763800000.125,
        "text": "héllo ✓",
        "author": {"role": "agent", "id": "a_1", "name": None},
        "sources": [{"doc_id": "d", "title": "t", "url": ""}],
        "flag": False,
    }
    await here.publish("conv:types", message)
    # The remote copy went through msgpack and Redis; what the bus added on the way is gone.
    assert await next_message(remote) == message
    assert await next_message(local) == message


async def test_close_ends_subscribers(nodes: NodeFactory) -> None:
    bus = await nodes()
    sub = Subscriber()
    await bus.subscribe("conv:closing", sub)
    await bus.close()
    with pytest.raises(EOFError):
        await next_message(sub)
    await bus.close()  # idempotent
