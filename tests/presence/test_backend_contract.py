"""One contract for every PresenceBackend: MemoryPresence and RedisPresence on a real Redis.

Time differs between them: the memory table expires by the `now` it is given, Redis by its own
clock. The `Env` hides that: `now()` is the time to pass in, and `until(check, after_s)` moves a
fake clock past `after_s` (memory) or polls the real one to a deadline (Redis); no sleeps.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from redis.asyncio import Redis

from presence.backend import MemoryPresence, PresenceBackend
from presence.redis_backend import (
    RedisPresence,
    agents_key,
    connection_key,
    decode_connection,
    encode_connection,
    index_key,
    seen_key,
)
from presence.table import AgentPresence
from tests.helpers.redis_server import RedisServer, free_port
from warmline.errors import Unavailable

Check = Callable[[], Awaitable[bool]]


@pytest.fixture(scope="module")
def presence_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


class Env:
    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url
        self.tenant = f"t-{uuid.uuid4().hex[:8]}"
        self._fake_now = 1_700_000_000.0
        self._memory = MemoryPresence()
        self._made: list[PresenceBackend] = []

    def node(self) -> PresenceBackend:
        """The backend as another node sees it."""
        if self.kind == "memory":
            return self._memory
        backend = RedisPresence(self.url)
        self._made.append(backend)
        return backend

    def now(self) -> float:
        return self._fake_now if self.kind == "memory" else time.time()

    async def until(self, check: Check, after_s: float) -> None:
        if self.kind == "memory":
            self._fake_now += after_s
            assert await check()
            return
        deadline = time.monotonic() + after_s + 5.0
        while not await check():
            assert time.monotonic() < deadline, "condition not met by the deadline"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for backend in self._made:
            await backend.close()


@pytest.fixture(params=["memory", "redis"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    url = request.getfixturevalue("presence_redis").url if request.param == "redis" else ""
    e = Env(request.param, url)
    yield e
    await e.close()


async def by_agent(backend: PresenceBackend, env: Env) -> dict[str, AgentPresence]:
    return {p.agent_id: p for p in await backend.snapshot(env.tenant, env.now())}


async def test_presence_is_the_union_of_connections_on_every_node(env: Env) -> None:
    node_a, node_b = env.node(), env.node()
    t = env.tenant
    await node_a.heartbeat("ag1", t, "tab-a", "online", 2, env.now(), 30)
    await node_b.heartbeat("ag1", t, "tab-b", "online", 3, env.now(), 30)
    for node in (node_a, node_b):
        p = (await by_agent(node, env))["ag1"]
        assert (p.status, p.capacity, p.connections, p.tenant) == ("online", 3, 2, t)


async def test_status_aggregates_online_over_away_over_offline(env: Env) -> None:
    node = env.node()
    t = env.tenant
    await node.heartbeat("ag", t, "c1", "away", 2, env.now(), 30)
    await node.heartbeat("ag", t, "c2", "online", 3, env.now(), 30)
    p = (await by_agent(node, env))["ag"]
    assert (p.status, p.capacity, p.connections) == ("online", 3, 2)

    # The same connection reporting again replaces its status: a sleeping tab turns "away"
    # but does not take the agent offline while another tab is still there.
    await node.heartbeat("ag", t, "c2", "offline", 5, env.now(), 30)
    p = (await by_agent(node, env))["ag"]
    assert (p.status, p.capacity, p.connections) == ("away", 2, 2)

    await node.heartbeat("ag", t, "c1", "offline", 2, env.now(), 30)
    p = (await by_agent(node, env))["ag"]
    assert (p.status, p.capacity, p.connections) == ("offline", 0, 2)


async def test_dropping_one_of_two_connections_keeps_the_agent_online(env: Env) -> None:
    node_a, node_b = env.node(), env.node()
    t = env.tenant
    t0 = env.now()
    await node_a.heartbeat("ag", t, "c1", "online", 2, t0, 30)
    await node_b.heartbeat("ag", t, "c2", "online", 2, t0, 30)
    await node_a.drop("ag", t, "c1", t0 + 1)
    p = (await by_agent(node_b, env))["ag"]
    assert (p.status, p.connections) == ("online", 1)

    await node_b.drop("ag", t, "c2", t0 + 2)
    p = (await by_agent(node_a, env))["ag"]
    # Still listed (agents ever seen), offline, and when it was last seen.
    assert (p.status, p.capacity, p.connections, p.last_seen) == ("offline", 0, 0, t0 + 2)


async def test_drop_of_an_unknown_connection_changes_nothing(env: Env) -> None:
    node = env.node()
    t = env.tenant
    t0 = env.now()
    await node.drop("nobody", t, "c", t0)
    assert await node.snapshot(t, env.now()) == []
    await node.heartbeat("ag", t, "c1", "online", 1, t0, 30)
    await node.drop("ag", t, "other", t0 + 5)
    p = (await by_agent(node, env))["ag"]
    assert (p.status, p.connections, p.last_seen) == ("online", 1, t0)


async def test_connections_expire_by_ttl_when_heartbeats_stop(env: Env) -> None:
    node = env.node()
    t = env.tenant
    t0 = env.now()
    await node.heartbeat("ag", t, "c1", "online", 2, t0, 1.0)
    assert (await by_agent(node, env))["ag"].status == "online"

    async def expired() -> bool:
        return (await by_agent(node, env))["ag"].connections == 0

    await env.until(expired, after_s=1.5)
    p = (await by_agent(node, env))["ag"]
    assert (p.status, p.capacity, p.last_seen) == ("offline", 0, t0)


async def test_a_refreshed_connection_outlives_one_that_stopped(env: Env) -> None:
    node_a, node_b = env.node(), env.node()
    t = env.tenant
    await node_a.heartbeat("ag", t, "lapses", "online", 1, env.now(), 1.0)
    await node_b.heartbeat("ag", t, "kept", "away", 1, env.now(), 1.0)
    await node_b.heartbeat("ag", t, "kept", "away", 1, env.now(), 30.0)
    await node_a.heartbeat("other", t, "c", "online", 1, env.now(), 1.0)

    async def lapsed() -> bool:
        return (await by_agent(node_a, env))["other"].status == "offline"

    # "other" expiring proves that the 1 s TTL has passed for "lapses" too.
    await env.until(lapsed, after_s=1.5)
    p = (await by_agent(node_a, env))["ag"]
    assert (p.status, p.connections) == ("away", 1)


async def test_tenants_do_not_see_each_other(env: Env) -> None:
    node = env.node()
    other = f"{env.tenant}-other"
    await node.heartbeat("mine", env.tenant, "c", "online", 1, env.now(), 30)
    await node.heartbeat("theirs", other, "c", "online", 1, env.now(), 30)
    assert set(await by_agent(node, env)) == {"mine"}
    assert [p.agent_id for p in await node.snapshot(other, env.now())] == ["theirs"]


async def test_ids_with_separators_do_not_collide(env: Env) -> None:
    node = env.node()
    t = env.tenant
    await node.heartbeat("a:b", t, "c", "online", 1, env.now(), 30)
    await node.heartbeat("a", t, "b:c", "away", 1, env.now(), 30)
    snap = await by_agent(node, env)
    assert (snap["a:b"].status, snap["a:b"].connections) == ("online", 1)
    assert (snap["a"].status, snap["a"].connections) == ("away", 1)


# -- Redis only ----------------------------------------------------------------------------


def test_connection_payload_round_trips() -> None:
    c = decode_connection("c1", encode_connection("away", 4, 12.5))
    assert c is not None and (c.connection_id, c.status, c.capacity, c.expires_at) == (
        "c1",
        "away",
        4,
        12.5,
    )
    assert decode_connection("c1", b"\xc1") is None
    assert decode_connection("c1", encode_connection("away", 4, 1)[:-1]) is None


async def test_redis_keys_carry_ttls_and_stale_index_entries_are_pruned(
    presence_redis: RedisServer,
) -> None:
    backend = RedisPresence(presence_redis.url)
    admin = Redis.from_url(presence_redis.url)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    try:
        before = await admin.info("commandstats")
        await backend.heartbeat("ag", tenant, "c1", "online", 2, time.time(), 0.5)
        after = await admin.info("commandstats")
        # One MULTI/EXEC round trip per heartbeat.
        assert (
            after["cmdstat_exec"]["calls"] - before.get("cmdstat_exec", {"calls": 0})["calls"] == 1
        )
        assert 0 < await admin.pttl(connection_key(tenant, "ag", "c1")) <= 500
        assert 86000 < await admin.ttl(seen_key(tenant, "ag")) <= 86400
        assert 86000 < await admin.ttl(index_key(tenant, "ag")) <= 86400
        assert await admin.smembers(agents_key(tenant)) == {b"ag"}

        deadline = time.monotonic() + 5
        while await admin.exists(connection_key(tenant, "ag", "c1")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert await admin.hkeys(index_key(tenant, "ag")) == [b"c1"]
        (p,) = await backend.snapshot(tenant, time.time())
        assert p.status == "offline"
        assert await admin.hkeys(index_key(tenant, "ag")) == []
    finally:
        await backend.close()
        await admin.aclose()


async def test_redis_down_raises_unavailable_quickly() -> None:
    backend = RedisPresence(f"redis://127.0.0.1:{free_port()}/0")
    try:
        for call in (
            backend.heartbeat("ag", "t", "c", "online", 1, time.time(), 5),
            backend.drop("ag", "t", "c", time.time()),
            backend.snapshot("t", time.time()),
        ):
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await call
            assert time.monotonic() - started < 1.5
    finally:
        await backend.close()


async def test_redis_presence_survives_a_redis_restart() -> None:
    with RedisServer() as server:
        backend = RedisPresence(server.url)
        try:
            await backend.heartbeat("ag", "t", "c", "online", 1, time.time(), 30)
            await server.astop()
            with pytest.raises(Unavailable):
                await backend.snapshot("t", time.time())
            await server.astart()
            # Redis came back empty (no persistence): the next heartbeat restores presence,
            # through a fresh connection in place of the stale pooled one.
            await backend.heartbeat("ag", "t", "c", "online", 1, time.time(), 30)
            (p,) = await backend.snapshot("t", time.time())
            assert (p.status, p.connections) == ("online", 1)
        finally:
            await backend.close()
