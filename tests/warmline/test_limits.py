"""Rate limits: the pure arithmetic, one contract for both backends (memory, and Redis on a
real redis-server), and the Limits service the transports call.

Both backends take their clock from the caller, so the contract drives a fake one: no sleeps.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from realtime.ratelimit import TokenBucket
from tests.helpers.redis_server import RedisServer
from warmline import metrics
from warmline.config import Config
from warmline.errors import RateLimited
from warmline.limits import (
    BucketRef,
    LimitPolicy,
    Limits,
    MemoryLimiter,
    Rate,
    RateLimiter,
    RedisLimiter,
    build_limits,
    take_all,
)

T0 = 1_700_000_000.0


# Pure arithmetic -------------------------------------------------------------------------------
def test_take_all_takes_from_every_bucket_or_from_none() -> None:
    a, b = TokenBucket(1.0, 3.0), TokenBucket(1.0, 1.0)
    assert take_all([a, b], 1.0, 0.0) == (0.0, -1)
    assert (a.tokens, b.tokens) == (2.0, 0.0)
    wait, index = take_all([a, b], 1.0, 0.0)
    assert (wait, index) == (pytest.approx(1.0), 1)
    assert (a.tokens, b.tokens) == (2.0, 0.0)  # the refusal took nothing from `a` either


def test_take_all_names_the_bucket_that_needs_longest() -> None:
    slow, fast = TokenBucket(0.5, 1.0), TokenBucket(10.0, 1.0)
    take_all([fast, slow], 1.0, 0.0)
    wait, index = take_all([fast, slow], 1.0, 0.0)
    assert index == 1 and wait == pytest.approx(2.0)


def test_take_all_cost_beyond_burst_is_never_allowed() -> None:
    wait, index = take_all([TokenBucket(1.0, 2.0)], 3.0, 0.0)
    assert math.isinf(wait) and index == 0


def test_policy_from_config_drops_disabled_limits() -> None:
    policy = LimitPolicy.from_config(Config(rate_typing_per_s=0, rate_ip_poll_burst=0))
    assert "typing" not in policy.rates and "poll" not in policy.rates
    assert policy.rates["message"] == Rate(5.0, 20.0)
    assert policy.rates["tenant_message"] == Rate(200.0, 1000.0)


def test_policy_buckets_add_the_tenant_budget() -> None:
    policy = LimitPolicy({"message": Rate(1, 2), "tenant_message": Rate(10, 20)})
    assert [(r.kind, r.key) for r in policy.buckets("message", "ws_1", "demo")] == [
        ("message", "ws_1"),
        ("tenant_message", "demo"),
    ]
    assert [r.kind for r in policy.buckets("message", "ws_1", None)] == ["message"]
    assert policy.buckets("typing", "ws_1", "demo") == []  # no such limit: always allowed


# One contract, two backends ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def limits_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Backend:
    """Makes limiters that share state as nodes would, all reading one fake clock."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url
        self.clock = Clock()
        self.prefix = f"test:{uuid.uuid4().hex[:8]}"
        self._memory = MemoryLimiter(clock=self.clock)
        self._made: list[RateLimiter] = []

    def node(self) -> RateLimiter:
        if self.kind == "memory":
            return self._memory
        # The contract is about what is granted, not about speed: with the default 0.5 s a
        # busy CI machine timed out a few of 100 racing takes, and a limiter that times out
        # fails open (tested on its own below).
        limiter = RedisLimiter(self.url, clock=self.clock, prefix=self.prefix, op_timeout_s=10.0)
        self._made.append(limiter)
        return limiter

    async def close(self) -> None:
        for limiter in self._made:
            await limiter.close()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    url = request.getfixturevalue("limits_redis").url if request.param == "redis" else ""
    env = Backend(request.param, url)
    yield env
    await env.close()


def ref(key: str = "k", per_s: float = 2.0, burst: float = 3.0, kind: str = "message") -> BucketRef:
    return BucketRef(kind, key, Rate(per_s, burst))


async def test_contract_starts_full_then_refuses_with_the_wait(backend: Backend) -> None:
    limiter = backend.node()
    for _ in range(3):
        assert (await limiter.take([ref()])).allowed
    decision = await limiter.take([ref()])
    assert not decision.allowed
    assert decision.wait_s == pytest.approx(0.5)
    assert decision.kind == "message"


async def test_contract_refills_with_time(backend: Backend) -> None:
    limiter = backend.node()
    for _ in range(3):
        await limiter.take([ref()])
    backend.clock.now += 0.25
    assert (await limiter.take([ref()])).wait_s == pytest.approx(0.25)
    backend.clock.now += 0.25
    assert (await limiter.take([ref()])).allowed
    backend.clock.now += 3600
    for _ in range(3):  # refilled only up to the burst
        assert (await limiter.take([ref()])).allowed
    assert not (await limiter.take([ref()])).allowed


async def test_contract_all_or_nothing_over_several_buckets(backend: Backend) -> None:
    limiter = backend.node()
    own, tenant = ref("conn", 1.0, 5.0), ref("demo", 1.0, 1.0, kind="tenant_message")
    assert (await limiter.take([own, tenant])).allowed
    refused = await limiter.take([own, tenant])
    assert refused.kind == "tenant_message" and refused.wait_s == pytest.approx(1.0)
    # The refusal took nothing from the connection's bucket: 4 tokens are left there.
    for _ in range(4):
        assert (await limiter.take([own])).allowed
    assert not (await limiter.take([own])).allowed


async def test_contract_keys_are_independent(backend: Backend) -> None:
    limiter = backend.node()
    for _ in range(3):
        await limiter.take([ref("a")])
    assert not (await limiter.take([ref("a")])).allowed
    assert (await limiter.take([ref("b")])).allowed
    assert (await limiter.take([ref("a", kind="typing")])).allowed  # another kind, another bucket


async def test_contract_cost(backend: Backend) -> None:
    limiter = backend.node()
    assert (await limiter.take([ref()], cost=2.0)).allowed
    assert (await limiter.take([ref()], cost=2.0)).wait_s == pytest.approx(0.5)
    assert math.isinf((await limiter.take([ref()], cost=4.0)).wait_s)  # beyond the burst


async def test_contract_a_clock_going_back_grants_nothing(backend: Backend) -> None:
    limiter = backend.node()
    for _ in range(3):
        await limiter.take([ref()])
    backend.clock.now -= 100  # another node's clock, behind this one
    assert not (await limiter.take([ref()])).allowed
    backend.clock.now += 100.5  # back to T0 + 0.5: one token since the last real refill
    assert (await limiter.take([ref()])).allowed
    assert not (await limiter.take([ref()])).allowed


async def test_contract_forget_restarts_full(backend: Backend) -> None:
    limiter = backend.node()
    for _ in range(3):
        await limiter.take([ref()])
    await limiter.forget([ref()])
    assert (await limiter.take([ref()])).allowed


async def test_contract_nodes_share_buckets_and_never_over_grant(backend: Backend) -> None:
    """Many racing takes from two nodes on one bucket: exactly the burst is granted."""
    one, two = backend.node(), backend.node()
    bucket = ref("shared", per_s=0.001, burst=10.0)
    decisions = await asyncio.gather(
        *(node.take([bucket]) for node in (one, two) for _ in range(50))
    )
    assert sum(d.allowed for d in decisions) == 10


# Redis only ------------------------------------------------------------------------------------
async def test_redis_buckets_expire_once_full_again(limits_redis: RedisServer) -> None:
    limiter = RedisLimiter(limits_redis.url, prefix=f"test:{uuid.uuid4().hex[:8]}")
    redis = Redis.from_url(limits_redis.url)
    try:
        await limiter.take([ref("ttl", per_s=2.0, burst=4.0)])
        ttl_ms = await redis.pttl(limiter.key(ref("ttl", per_s=2.0, burst=4.0)))
        # Full again after burst/rate = 2 s; the key lives that long plus a margin, no more.
        assert 2000 < ttl_ms <= 3000
    finally:
        await redis.aclose()
        await limiter.close()


async def test_redis_fails_open_and_recovers() -> None:
    with RedisServer() as server:
        clock = Clock()
        limiter = RedisLimiter(server.url, clock=clock, op_timeout_s=0.5)
        try:
            assert (await limiter.take([ref()])).allowed
            await server.astop(kill=True)
            # Redis gone: limits are protection, not a reason to stop serving.
            for _ in range(10):
                assert (await limiter.take([ref()])).allowed
            assert limiter.failures == 10
            await server.astart()  # empty: the script is loaded again on first use
            for _ in range(3):
                assert (await limiter.take([ref()])).allowed
            assert not (await limiter.take([ref()])).allowed
        finally:
            await limiter.close()


# The service -----------------------------------------------------------------------------------
def counter(kind: str) -> float:
    return metrics.RATE_LIMITED.labels(kind)._value.get()


def service(**rates: tuple[float, float]) -> tuple[Limits, Clock]:
    clock = Clock()
    local = MemoryLimiter(clock=clock)
    policy = LimitPolicy({kind: Rate(*pair) for kind, pair in rates.items()})
    return Limits(policy, local, local), clock


async def test_check_raises_rate_limited_with_retry_after_and_counts_it() -> None:
    limits, _ = service(message=(2.0, 1.0))
    before = counter("message")
    await limits.check("message", "ws_a", local=True)
    with pytest.raises(RateLimited) as refused:
        await limits.check("message", "ws_a", local=True)
    assert refused.value.retry_after_s == pytest.approx(0.5)
    assert refused.value.details["retry_after_s"] == pytest.approx(0.5)
    assert counter("message") == before + 1


async def test_tenant_budget_is_shared_by_its_connections() -> None:
    limits, clock = service(message=(100.0, 100.0), tenant_message=(1.0, 3.0))
    for connection in ("ws_a", "ws_b", "ws_c"):
        await limits.check("message", connection, tenant="demo", local=True)
    with pytest.raises(RateLimited, match="busy"):
        await limits.check("message", "ws_d", tenant="demo", local=True)
    await limits.check("message", "ws_d", tenant="other", local=True)  # another tenant's budget
    clock.now += 1.0
    await limits.check("message", "ws_d", tenant="demo", local=True)


async def test_connection_buckets_stay_local_with_a_shared_backend() -> None:
    clock = Clock()
    local, shared = MemoryLimiter(clock=clock), MemoryLimiter(clock=clock)
    policy = LimitPolicy({"message": Rate(1.0, 1.0), "tenant_message": Rate(1.0, 5.0)})
    limits = Limits(policy, shared, local)
    await limits.check("message", "ws_a", tenant="demo", local=True)
    assert len(local) == 1 and len(shared) == 1  # message:ws_a here, tenant_message:demo there
    # A long-polling conversation has no node of its own: everything goes to the shared one.
    await limits.check("message", "c_1", tenant="demo")
    assert len(local) == 1 and len(shared) == 2
    limits.forget_local("ws_a")
    assert len(local) == 0


async def test_typing_over_the_limit_is_refused_quietly() -> None:
    limits, _ = service(typing=(1.0, 2.0))
    results = [(await limits.take("typing", "ws_a", local=True)).allowed for _ in range(4)]
    assert results == [True, True, False, False]


async def test_frame_pacing_waits_for_a_token() -> None:
    limits, clock = service(frame=(8.0, 2.0))  # eighths of a second: exact floats
    assert limits.frame_wait("ws_a") == 0.0
    assert limits.frame_wait("ws_a") == 0.0
    assert limits.frame_wait("ws_a") == 0.125
    clock.now += 0.125
    assert limits.frame_wait("ws_a") == 0.0


async def test_disabled_limits_allow_everything() -> None:
    limits = build_limits(Config(rate_message_per_s=0, rate_tenant_message_per_s=0))
    for _ in range(1000):
        await limits.check("message", "ws_a", tenant="demo", local=True)
    await limits.close()


def test_build_limits_picks_the_backend() -> None:
    memory = build_limits(Config())
    assert memory.shared is memory.local
    redis = build_limits(Config(redis_url="redis://127.0.0.1:1/0"))
    assert isinstance(redis.shared, RedisLimiter)
    asyncio.run(redis.close())
