"""RedisBus beyond the shared contract: what happens when Redis goes away, hangs, or drops the
node's subscription, and that the node subscribes only to what its local subscribers want."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import msgpack
import pytest
from redis.asyncio import Redis

from tests.bus.waiting import eventually, next_message
from tests.helpers.redis_server import RedisServer, free_port
from warmline.bus.base import RESYNC, Subscriber
from warmline.bus.redis import NODE_FIELD, RedisBus
from warmline.errors import Unavailable


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, socket_timeout=2.0)
    yield client
    await client.aclose()


@pytest.fixture
async def bus(redis_server: RedisServer) -> AsyncIterator[RedisBus]:
    node = RedisBus(redis_server.url, node_id="n1")
    await node.start()
    yield node
    await node.close()


async def channels(admin: Redis) -> set[str]:
    return {c.decode() if isinstance(c, bytes) else c for c in await admin.pubsub_channels()}


async def test_subscribes_in_redis_only_while_a_local_subscriber_wants_it(
    bus: RedisBus, admin: Redis
) -> None:
    s1, s2, s3 = Subscriber(), Subscriber(), Subscriber()
    await bus.subscribe("conv:c1", s1)
    await bus.subscribe("conv:c1", s2)
    await bus.subscribe("conv:c2", s3)
    assert await channels(admin) == {"probe:n1", "conv:c1", "conv:c2"}
    # Two local subscribers share the node's one Redis subscription.
    assert dict(await admin.pubsub_numsub("conv:c1")) == {b"conv:c1": 1}

    await bus.unsubscribe("conv:c1", s1)
    assert "conv:c1" in await channels(admin)
    await bus.unsubscribe("conv:c1", s2)
    assert await channels(admin) == {"probe:n1", "conv:c2"}
    await bus.unsubscribe("conv:c2", s3)
    assert await channels(admin) == {"probe:n1"}
    assert bus.channel_count() == 0


async def test_racing_subscribes_and_unsubscribes_leave_redis_consistent(
    bus: RedisBus, admin: Redis
) -> None:
    rng = random.Random(7)
    first = [Subscriber() for _ in range(20)]
    await asyncio.gather(*(bus.subscribe("conv:race", s) for s in first))
    second = [Subscriber() for _ in range(5)]
    calls = [bus.unsubscribe("conv:race", s) for s in first]
    calls += [bus.subscribe("conv:race", s) for s in second]
    rng.shuffle(calls)
    await asyncio.gather(*calls)
    assert dict(await admin.pubsub_numsub("conv:race")) == {b"conv:race": 1}
    await bus.publish("conv:race", {"seq": 1})
    for s in second:
        assert await next_message(s) == {"seq": 1}

    calls = [bus.unsubscribe("conv:race", s) for s in second]
    churn = [Subscriber() for _ in range(10)]
    for s in churn:
        calls += [bus.subscribe("conv:race", s), bus.unsubscribe("conv:race", s)]
    await asyncio.gather(*calls)
    expected = 1 if bus.channel_count() else 0
    assert dict(await admin.pubsub_numsub("conv:race")) == {b"conv:race": expected}


async def test_reserved_probe_channel_cannot_be_subscribed(bus: RedisBus) -> None:
    with pytest.raises(ValueError):
        await bus.subscribe("probe:n1", Subscriber())


async def test_undecodable_payload_is_dropped_not_fatal(bus: RedisBus, admin: Redis) -> None:
    sub = Subscriber()
    await bus.subscribe("conv:junk", sub)
    await admin.publish("conv:junk", b"\xc1 not msgpack")
    await admin.publish("conv:junk", b"\x93\x01\x02\x03")  # valid msgpack, but not a map
    # From "another node", so it comes through the reader behind the junk.
    await admin.publish("conv:junk", msgpack.packb({"seq": 1, NODE_FIELD: "elsewhere"}))
    assert await next_message(sub) == {"seq": 1}
    assert bus.healthy and bus.reconnects == 0


async def test_redis_restart_goes_unhealthy_then_recovers_and_resyncs(
    redis_server: RedisServer,
) -> None:
    node_a = RedisBus(redis_server.url, node_id="a")
    node_b = RedisBus(redis_server.url, node_id="b")
    await node_a.start()
    await node_b.start()
    try:
        subs = [Subscriber() for _ in range(30)]
        both = Subscriber()  # one inbox on two channels gets one RESYNC, not two
        for i, sub in enumerate(subs):
            await node_a.subscribe(f"conv:r{i}", sub)
        await node_a.subscribe("conv:r0", both)
        await node_a.subscribe("conv:r1", both)
        await node_b.publish("conv:r0", {"seq": 1})
        assert await next_message(subs[0]) == {"seq": 1}
        assert await next_message(both) == {"seq": 1}

        await redis_server.astop()
        await eventually(lambda: not node_a.healthy and not node_b.healthy, within_s=3)
        with pytest.raises(Unavailable):
            await node_a.ping()
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await node_b.publish("conv:r0", {"seq": 2})  # stored by the caller; not delivered
        assert time.monotonic() - started < 2.5

        await redis_server.astart()
        await eventually(lambda: node_a.healthy and node_b.healthy, within_s=5)
        await node_a.ping()
        for sub in subs:
            assert await next_message(sub) == RESYNC
        assert await next_message(both) == RESYNC
        assert len(both) == 0
        assert node_a.reconnects == 1 and node_b.reconnects == 1

        for i in range(len(subs)):
            await node_b.publish(f"conv:r{i}", {"seq": 3, "i": i})
        for i, sub in enumerate(subs):
            assert await next_message(sub) == {"seq": 3, "i": i}
    finally:
        await node_a.close()
        await node_b.close()


async def test_killed_subscription_connection_is_detected_and_restored(
    bus: RedisBus, admin: Redis
) -> None:
    sub = Subscriber()
    await bus.subscribe("conv:k", sub)
    started = time.monotonic()
    killed = await admin.client_kill_filter(_type="pubsub")
    assert killed == 1
    assert await next_message(sub) == RESYNC
    assert time.monotonic() - started < 3.0
    assert bus.reconnects == 1 and bus.healthy
    await bus.publish("conv:k", {"seq": 9})
    assert await next_message(sub) == {"seq": 9}


class FreezingProxy:
    """A TCP relay to Redis whose existing flows can be frozen: bytes are read and dropped, no
    socket is closed. That is a network partition: only a liveness probe can notice it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._frozen: set[int] = set()
        self._flows: dict[int, list[asyncio.StreamWriter]] = {}
        self._sent: dict[int, bytes] = {}  # the first bytes each client sent (its handshake)
        self._freeze_new: bytes | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._next = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self, marker: bytes = b"") -> int:
        """Freeze the open flows whose client sent `marker` (all of them for b"")."""
        chosen = {f for f, sent in self._sent.items() if marker in sent}
        self._frozen.update(chosen)
        return len(chosen)

    def freeze_new(self, marker: bytes | None) -> None:
        """Also freeze flows opened from now on, as soon as their client sends `marker`."""
        self._freeze_new = marker

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        flow = self._next
        self._next += 1
        self._flows[flow] = [writer, up_writer]
        self._sent[flow] = b""
        for src, dst, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pipe(flow, src, dst, upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, flow: int, src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool
    ) -> None:
        try:
            while data := await src.read(65536):
                if upstream and len(self._sent[flow]) < 4096:
                    self._sent[flow] += data
                    if self._freeze_new is not None and self._freeze_new in self._sent[flow]:
                        self._frozen.add(flow)
                if flow not in self._frozen:
                    dst.write(data)
                    await dst.drain()
        except OSError:
            pass
        finally:
            dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writers in self._flows.values():
            for w in writers:
                w.close()
        if self._server is not None:
            await self._server.wait_closed()


@pytest.mark.parametrize("marker", [b"warmline-bus-", b""], ids=["subscription", "every-flow"])
async def test_probe_detects_a_silently_dead_connection(
    redis_server: RedisServer, marker: bytes
) -> None:
    proxy = FreezingProxy(redis_server.port)
    await proxy.start()
    bus = RedisBus(proxy.url, node_id="frozen")
    try:
        await bus.start()
        sub = Subscriber()
        await bus.subscribe("conv:f", sub)
        await bus.publish("conv:f", {"seq": 1})
        assert await next_message(sub) == {"seq": 1}

        # "subscription": the pub/sub socket stays open and Redis still counts it as a
        # subscriber, but nothing arrives; only the probe coming back (or not) can tell.
        # "every-flow": the probe's own PUBLISH hangs too and times out.
        assert proxy.freeze(marker) >= 1
        started = time.monotonic()
        assert await next_message(sub, within_s=8) == RESYNC
        # Probe every 1 s, expected back within 2 s: noticed within about 3 s, then
        # reconnected over a fresh (unfrozen) connection.
        assert time.monotonic() - started < 4.5
        assert bus.reconnects == 1 and bus.healthy
        await bus.publish("conv:f", {"seq": 2})
        assert await next_message(sub) == {"seq": 2}
    finally:
        await bus.close()
        await proxy.close()


async def test_hung_redis_is_reported_and_publish_fails_fast(
    redis_server: RedisServer,
) -> None:
    bus = RedisBus(redis_server.url, node_id="hung")
    await bus.start()
    try:
        sub = Subscriber()
        await bus.subscribe("conv:h", sub)
        redis_server.pause()
        took = await eventually(lambda: not bus.healthy, within_s=6)
        assert took < 4.5
        with pytest.raises(Unavailable):
            await bus.ping()
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await bus.publish("conv:h", {"seq": 1})
        assert time.monotonic() - started < 1.5

        redis_server.resume()
        assert await next_message(sub, within_s=10) == RESYNC
        assert bus.healthy
        await bus.publish("conv:h", {"seq": 2})
        assert await next_message(sub) == {"seq": 2}
    finally:
        redis_server.resume()
        await bus.close()


async def test_starts_while_redis_is_down_and_connects_later() -> None:
    server = RedisServer(port=free_port())
    bus = RedisBus(server.url, node_id="late", start_timeout_s=0.2)
    try:
        started = time.monotonic()
        await bus.start()
        assert time.monotonic() - started < 1.0
        assert not bus.healthy
        with pytest.raises(Unavailable):
            await bus.ping()
        with pytest.raises(Unavailable):
            await bus.publish("conv:l", {"seq": 1})
        sub = Subscriber()
        await bus.subscribe("conv:l", sub)  # returns at once; RESYNC follows on connect

        await server.astart()
        assert await bus.wait_healthy(5.0)
        assert await next_message(sub) == RESYNC
        assert bus.reconnects == 0
        await bus.publish("conv:l", {"seq": 2})
        assert await next_message(sub) == {"seq": 2}
    finally:
        await bus.close()
        server.close()


async def test_close_awaits_its_tasks_and_connections(
    redis_server: RedisServer, admin: Redis
) -> None:
    bus = RedisBus(redis_server.url, node_id="closing")
    await bus.start()
    await bus.subscribe("conv:z", Subscriber())
    await bus.publish("conv:z", {"seq": 1})
    await bus.close()
    assert not bus.healthy
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert not any(n.startswith("redis-bus") for n in names)
    with pytest.raises(Unavailable):
        await bus.publish("conv:z", {"seq": 2})

    async def gone() -> bool:
        clients = await admin.client_list()
        return not any(c["name"].endswith("-closing") for c in clients)

    # Redis notices the closed sockets asynchronously.
    deadline = time.monotonic() + 3
    while not await gone():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_publish_while_redis_is_down_is_refused_and_delivered_nowhere(
    redis_server: RedisServer,
) -> None:
    bus = RedisBus(redis_server.url, node_id="down")
    await bus.start()
    try:
        sub = Subscriber()
        await bus.subscribe("conv:d", sub)
        await redis_server.astop()
        await eventually(lambda: not bus.healthy, within_s=3)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await bus.publish("conv:d", {"seq": 1})
        assert time.monotonic() - started < 0.5
        # Refused means not delivered here either: the Republisher's retry is the one copy.
        assert len(sub) == 0 and bus.queued_publishes == 0

        await redis_server.astart()
        assert await next_message(sub) == RESYNC
        await bus.publish("conv:d", {"seq": 1})
        assert await next_message(sub) == {"seq": 1}
        assert len(sub) == 0
    finally:
        await bus.close()


@pytest.fixture
async def receiver(redis_server: RedisServer) -> AsyncIterator[RedisBus]:
    """Another node, connected to Redis directly."""
    node = RedisBus(redis_server.url, node_id="receiver")
    await node.start()
    yield node
    await node.close()


async def test_a_full_publish_queue_refuses_instead_of_growing(
    redis_server: RedisServer, receiver: RedisBus
) -> None:
    bus = RedisBus(redis_server.url, node_id="full", max_queued=5)
    await bus.start()
    try:
        local, remote = Subscriber(), Subscriber()
        await bus.subscribe("conv:q", local)
        await receiver.subscribe("conv:q", remote)
        # `publish` does not yield to the event loop, so the writer sends nothing meanwhile.
        for i in range(5):
            await bus.publish("conv:q", {"seq": i})
        assert bus.queued_publishes == 5
        with pytest.raises(Unavailable):
            await bus.publish("conv:q", {"seq": 5})
        assert [m["seq"] for m in [await next_message(local) for _ in range(5)]] == [0, 1, 2, 3, 4]
        assert len(local) == 0  # the refused one was not delivered here either
        assert [m["seq"] for m in [await next_message(remote) for _ in range(5)]] == [0, 1, 2, 3, 4]
        await eventually(lambda: bus.queued_publishes == 0)
        await bus.publish("conv:q", {"seq": 6})
        assert await next_message(remote) == {"seq": 6}
    finally:
        await bus.close()


async def test_close_flushes_what_was_queued(redis_server: RedisServer, receiver: RedisBus) -> None:
    bus = RedisBus(redis_server.url, node_id="leaving")
    await bus.start()
    remote = Subscriber(1000)
    await receiver.subscribe("conv:flush", remote)
    for i in range(600):
        await bus.publish("conv:flush", {"seq": i})
    assert bus.queued_publishes == 600  # nothing sent yet: publish does not yield
    await bus.close()
    assert bus.queued_publishes == 0
    assert [m["seq"] for m in [await next_message(remote) for _ in range(600)]] == list(range(600))
    assert len(remote) == 0


async def test_a_batch_lost_with_its_connection_is_sent_again(
    redis_server: RedisServer, receiver: RedisBus
) -> None:
    proxy = FreezingProxy(redis_server.port)
    await proxy.start()
    bus = RedisBus(proxy.url, node_id="resend", op_timeout_s=0.5)
    try:
        await bus.start()
        remote = Subscriber()
        await receiver.subscribe("conv:lost", remote)
        await bus.publish("conv:lost", {"seq": 1})
        assert await next_message(remote) == {"seq": 1}  # the writer's connection is open

        # Accepted, then swallowed by the frozen connection: Redis never sees them, the
        # round trip times out, and the writer sends them again on a new connection.
        assert proxy.freeze(b"warmline-pub-") == 1
        await bus.publish("conv:lost", {"seq": 2})
        await bus.publish("conv:lost", {"seq": 3})
        assert [(await next_message(remote))["seq"] for _ in range(2)] == [2, 3]
        await bus.publish("conv:lost", {"seq": 4})
        assert await next_message(remote) == {"seq": 4}
        assert len(remote) == 0
        assert bus.healthy and bus.reconnects == 0 and not bus.publish_failing
    finally:
        await bus.close()
        await proxy.close()


async def test_publish_is_refused_while_the_writer_cannot_reach_redis(
    redis_server: RedisServer, receiver: RedisBus
) -> None:
    proxy = FreezingProxy(redis_server.port)
    await proxy.start()
    bus = RedisBus(proxy.url, node_id="cutoff", op_timeout_s=0.3, connect_timeout_s=0.3)
    try:
        await bus.start()
        remote = Subscriber()
        await receiver.subscribe("conv:cut", remote)
        await bus.publish("conv:cut", {"seq": 1})
        assert await next_message(remote) == {"seq": 1}

        # Only the publishing connection is cut off, new ones included; the subscription and
        # the probe are fine, so only the writer's failures can tell.
        proxy.freeze_new(b"warmline-pub-")
        assert proxy.freeze(b"warmline-pub-") == 1
        await bus.publish("conv:cut", {"seq": 2})  # accepted: nothing is known to be wrong yet
        await eventually(lambda: bus.publish_failing, within_s=5)
        assert bus.healthy
        with pytest.raises(Unavailable):
            await bus.publish("conv:cut", {"seq": 3})

        proxy.freeze_new(None)
        # The accepted one was kept and arrives once the writer gets through.
        assert await next_message(remote, within_s=8) == {"seq": 2}
        await eventually(lambda: not bus.publish_failing)
        await bus.publish("conv:cut", {"seq": 4})
        assert await next_message(remote) == {"seq": 4}
        assert len(remote) == 0
    finally:
        await bus.close()
        await proxy.close()
