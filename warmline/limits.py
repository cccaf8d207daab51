"""Rate limits: token buckets per connection, per tenant and per client address.

Kinds of bucket (rates come from `Config`, see `LimitPolicy.from_config`):

    frame         every frame of one WebSocket      past it the reader pauses (backpressure)
    message       messages of one connection        `rate_limited` with `retry_after_s`
    typing        typing frames of one connection   dropped silently
    tenant_message, tenant_conversation             the tenant's stored messages and new
                                                    conversations, over every node
    connect       new connections of one address    WebSocket handshakes, long-poll hellos
    poll          long polls of one address

A take may span several buckets (a message costs one token of its connection's and one of
its tenant's) and is all-or-nothing: refused by one, nothing is taken from any.

Backends: `MemoryLimiter` on one node; `RedisLimiter` across nodes (one Lua script: atomic,
one round trip). Buckets of one connection never leave its node, so they stay in memory
even with Redis; what is shared (tenants, addresses, long-poll conversations, whose requests
land on any node) goes to the shared backend. If Redis fails, limits fail open: a limit is
protection, not a reason to stop serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from realtime.ratelimit import TokenBucket
from warmline import metrics
from warmline.config import Config
from warmline.errors import BadRequest, Forbidden, RateLimited, WarmlineError
from warmline.origins import OriginCache

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from warmline.runtime import Runtime

log = logging.getLogger("warmline.limits")

LOCAL_KINDS = frozenset({"frame", "message", "typing"})
MAX_LOCAL_BUCKETS = 200_000
REDIS_PREFIX = "warmline:rl"
FAIL_OPEN_LOG_EVERY_S = 10.0
MAX_FRAME_PAUSE_S = 5.0


@dataclass(frozen=True)
class Rate:
    per_s: float
    burst: float

    @property
    def enabled(self) -> bool:
        return self.per_s > 0 and self.burst > 0

    def idle_ttl_s(self) -> float:
        """After this long untouched, a bucket is full again: forgetting it changes nothing."""
        return self.burst / self.per_s if self.per_s > 0 else 86400.0


@dataclass(frozen=True)
class LimitPolicy:
    rates: dict[str, Rate]

    @classmethod
    def from_config(cls, config: Config) -> LimitPolicy:
        pairs = {
            "frame": (config.rate_frame_per_s, config.rate_frame_burst),
            "message": (config.rate_message_per_s, config.rate_message_burst),
            "typing": (config.rate_typing_per_s, config.rate_typing_burst),
            "tenant_message": (config.rate_tenant_message_per_s, config.rate_tenant_message_burst),
            "tenant_conversation": (
                config.rate_tenant_conversation_per_s,
                config.rate_tenant_conversation_burst,
            ),
            "connect": (config.rate_ip_connect_per_s, config.rate_ip_connect_burst),
            "poll": (config.rate_ip_poll_per_s, config.rate_ip_poll_burst),
        }
        rates = {kind: Rate(r, b) for kind, (r, b) in pairs.items()}
        return cls({kind: rate for kind, rate in rates.items() if rate.enabled})

    def buckets(self, kind: str, key: str | None, tenant: str | None) -> list[BucketRef]:
        """The buckets one event of `kind` draws from: its own key's, then its tenant's."""
        refs = []
        own = self.rates.get(kind)
        if own is not None and key is not None:
            refs.append(BucketRef(kind, key, own))
        shared = self.rates.get(f"tenant_{kind}")
        if shared is not None and tenant is not None:
            refs.append(BucketRef(f"tenant_{kind}", tenant, shared))
        return refs


@dataclass(frozen=True)
class BucketRef:
    kind: str
    key: str
    rate: Rate

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.key}"


@dataclass(frozen=True)
class Decision:
    wait_s: float  # 0.0: allowed (taken); else seconds until it would be, nothing taken
    kind: str = ""  # the bucket that refused

    @property
    def allowed(self) -> bool:
        return self.wait_s <= 0


ALLOWED = Decision(0.0)


def take_all(buckets: Sequence[TokenBucket], cost: float, now: float) -> tuple[float, int]:
    """All or nothing over plain buckets: `(0.0, -1)` when each had `cost` tokens (now taken),
    else `(seconds until every one will, index of the one that needs longest)`."""
    worst, worst_index = 0.0, -1
    for index, bucket in enumerate(buckets):
        bucket.take(now, 0.0)  # refill up to now, take nothing
        if bucket.tokens >= cost:
            continue
        if cost > bucket.burst or bucket.rate_per_s <= 0:
            wait = math.inf
        else:
            wait = (cost - bucket.tokens) / bucket.rate_per_s
        if wait > worst:
            worst, worst_index = wait, index
    if worst_index >= 0:
        return worst, worst_index
    for bucket in buckets:
        bucket.tokens -= cost
    return 0.0, -1


class RateLimiter(ABC):
    @abstractmethod
    async def take(self, buckets: Sequence[BucketRef], cost: float = 1.0) -> Decision:
        """Take `cost` from every bucket, or from none (then say how long to wait)."""

    @abstractmethod
    async def forget(self, buckets: Sequence[BucketRef]) -> None:
        """Drop buckets (they start full next time)."""

    async def close(self) -> None:
        return None


class MemoryLimiter(RateLimiter):
    """Buckets in a dict, bounded: the least recently used go first, and a bucket idle long
    enough to be full again is as good as gone anyway."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_buckets: int = MAX_LOCAL_BUCKETS
    ) -> None:
        self._clock = clock
        self._max = max_buckets
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take_now(self, buckets: Sequence[BucketRef], cost: float = 1.0) -> Decision:
        """The synchronous take: memory needs no I/O, and the hot path needs no await."""
        if not buckets:
            return ALLOWED
        states = []
        for ref in buckets:
            state = self._buckets.get(ref.name)
            if state is None or state.rate_per_s != ref.rate.per_s or state.burst != ref.rate.burst:
                state = self._buckets[ref.name] = TokenBucket(ref.rate.per_s, ref.rate.burst)
                while len(self._buckets) > self._max:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(ref.name)
            states.append(state)
        wait, index = take_all(states, cost, self._clock())
        return ALLOWED if index < 0 else Decision(wait, buckets[index].kind)

    async def take(self, buckets: Sequence[BucketRef], cost: float = 1.0) -> Decision:
        return self.take_now(buckets, cost)

    def forget_now(self, buckets: Sequence[BucketRef]) -> None:
        for ref in buckets:
            self._buckets.pop(ref.name, None)

    async def forget(self, buckets: Sequence[BucketRef]) -> None:
        self.forget_now(buckets)

    def __len__(self) -> int:
        return len(self._buckets)


# KEYS: one hash per bucket ({t: tokens, u: updated_at}).
# ARGV: now, cost, then per bucket: rate, burst, ttl_ms. Returns the wait as a string (a Lua
# number would come back truncated to an integer) and the 1-based index of the refusing one.
# The same arithmetic as TokenBucket, including never counting time twice when clocks of
# nodes disagree (`updated` only moves forward).
_TAKE_ALL = """
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local n = #KEYS
local tokens, updated = {}, {}
local worst, worst_index = 0, 0
for i = 1, n do
  local rate = tonumber(ARGV[3 * i])
  local burst = tonumber(ARGV[3 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 't', 'u')
  local t, u = tonumber(state[1]), tonumber(state[2])
  if t == nil or u == nil then
    t, u = burst, now
  end
  local elapsed = now - u
  if elapsed < 0 then elapsed = 0 end
  t = math.min(burst, t + elapsed * rate)
  if now > u then u = now end
  tokens[i], updated[i] = t, u
  if t < cost then
    local wait
    if cost > burst or rate <= 0 then wait = math.huge else wait = (cost - t) / rate end
    if wait > worst then worst, worst_index = wait, i end
  end
end
local taken = 0
if worst_index == 0 then taken = cost end
for i = 1, n do
  local ttl = tonumber(ARGV[3 * i + 2])
  redis.call('HSET', KEYS[i], 't', string.format('%.17g', tokens[i] - taken),
             'u', string.format('%.17g', updated[i]))
  redis.call('PEXPIRE', KEYS[i], ttl)
end
if worst == math.huge then return {'inf', worst_index} end
return {string.format('%.17g', worst), worst_index}
"""


class RedisLimiter(RateLimiter):
    """Buckets as Redis hashes with a TTL, shared by every node. The clock is the nodes' wall
    clock (passed in, so tests can drive it); skew between nodes only shifts refills a bit."""

    def __init__(
        self,
        url: str,
        clock: Callable[[], float] = time.time,
        op_timeout_s: float = 0.5,
        prefix: str = REDIS_PREFIX,
    ) -> None:
        from redis.asyncio import Redis

        self._clock = clock
        self._timeout = op_timeout_s
        self.prefix = prefix
        self._redis = Redis.from_url(
            url, socket_timeout=op_timeout_s, socket_connect_timeout=op_timeout_s
        )
        self._script = self._redis.register_script(_TAKE_ALL)
        self._last_failure_log = -math.inf
        self.failures = 0

    def key(self, ref: BucketRef) -> str:
        return f"{self.prefix}:{ref.name}"

    async def take(self, buckets: Sequence[BucketRef], cost: float = 1.0) -> Decision:
        if not buckets:
            return ALLOWED
        args: list[Any] = [repr(self._clock()), repr(float(cost))]
        for ref in buckets:
            ttl_ms = math.ceil(ref.rate.idle_ttl_s() * 1000) + 1000
            args += [repr(float(ref.rate.per_s)), repr(float(ref.rate.burst)), ttl_ms]
        try:
            async with asyncio.timeout(self._timeout):
                raw_wait, index = await self._script(
                    keys=[self.key(ref) for ref in buckets], args=args
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
            return ALLOWED
        wait = float(raw_wait.decode() if isinstance(raw_wait, bytes) else raw_wait)
        index = int(index)
        return ALLOWED if index <= 0 else Decision(wait, buckets[index - 1].kind)

    async def forget(self, buckets: Sequence[BucketRef]) -> None:
        if not buckets:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.delete(*(self.key(ref) for ref in buckets))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._last_failure_log >= FAIL_OPEN_LOG_EVERY_S:
            self._last_failure_log = now
            log.warning("rate limits unavailable (allowing traffic): %r", exc)

    async def close(self) -> None:
        await self._redis.aclose()


class Limits:
    """What the transports call: checks by kind, with metrics; and the origin cache, the
    other per-request edge check whose state lives as long as the node."""

    def __init__(
        self,
        policy: LimitPolicy,
        shared: RateLimiter,
        local: MemoryLimiter | None = None,
        origin_cache_s: float = 5.0,
    ) -> None:
        self.policy = policy
        self.local = local if local is not None else MemoryLimiter()  # empty is falsy
        self.shared = shared
        self.origins = OriginCache(origin_cache_s)

    async def take(
        self, kind: str, key: str | None, *, tenant: str | None = None, local: bool = False
    ) -> Decision:
        """One event of `kind` for `key` (and its tenant). `local`: the key is a connection
        on this node, so its own bucket never needs the shared backend."""
        refs = self.policy.buckets(kind, key, tenant)
        if not refs:
            return ALLOWED
        if local:
            own = [r for r in refs if r.kind in LOCAL_KINDS]
            decision = self.local.take_now(own)
            rest = [r for r in refs if r.kind not in LOCAL_KINDS]
            if decision.allowed and rest:
                decision = await self.shared.take(rest)
        else:
            decision = await self.shared.take(refs)
        if not decision.allowed:
            metrics.RATE_LIMITED.labels(decision.kind).inc()
        return decision

    async def check(
        self, kind: str, key: str | None, *, tenant: str | None = None, local: bool = False
    ) -> None:
        """RateLimited (with `retry_after_s`) when over the limit."""
        decision = await self.take(kind, key, tenant=tenant, local=local)
        if not decision.allowed:
            retry = decision.wait_s if math.isfinite(decision.wait_s) else 3600.0
            message = _MESSAGES.get(decision.kind, "slow down")
            raise RateLimited(message, retry_after_s=round(retry, 3))

    def frame_wait(self, connection_id: str) -> float:
        """Seconds to stop reading a WebSocket before its next frame; 0.0 took a token."""
        rate = self.policy.rates.get("frame")
        if rate is None:
            return 0.0
        decision = self.local.take_now([BucketRef("frame", connection_id, rate)])
        return min(decision.wait_s, MAX_FRAME_PAUSE_S)

    async def pace(self, connection_id: str) -> None:
        """Before handling a WebSocket frame: wait until the connection's frame budget has a
        token. The reader is what waits, so a flooding client's frames queue up in its own
        socket buffers (TCP pushes back on it) instead of costing the loop any work."""
        wait = self.frame_wait(connection_id)
        if wait <= 0:
            return
        metrics.RATE_LIMITED.labels("frame").inc()
        while wait > 0:
            # Pacing by the bucket's own arithmetic: there is no event to wait for.
            await asyncio.sleep(wait)
            wait = self.frame_wait(connection_id)

    def forget_local(self, key: str) -> None:
        self.local.forget_now(
            [
                BucketRef(kind, key, rate)
                for kind, rate in self.policy.rates.items()
                if kind in LOCAL_KINDS
            ]
        )

    async def close(self) -> None:
        if self.shared is not self.local:
            await self.shared.close()
        await self.local.close()


_MESSAGES = {
    "message": "slow down: too many messages",
    "tenant_message": "this service is busy: too many messages",
    "tenant_conversation": "this service is busy: too many new conversations",
    "connect": "too many new connections from this address",
    "poll": "too many polls from this address",
}


def build_limits(config: Config) -> Limits:
    local = MemoryLimiter()
    shared: RateLimiter = RedisLimiter(config.redis_url) if config.redis_url else local
    return Limits(LimitPolicy.from_config(config), shared, local, config.origin_cache_s)


# Edge helpers for the transports ----------------------------------------------------------
def client_ip(connection: Any) -> str:
    """The peer address as the server sees it (uvicorn applies trusted proxy headers)."""
    client = getattr(connection, "client", None)
    return client.host if client is not None and client.host else "unknown"


async def refuse_websocket(websocket: WebSocket, error: WarmlineError) -> None:
    """Refuse a handshake before accepting it: an HTTP error response with the error as JSON
    (429 with Retry-After for a rate limit) where the server supports that, else a close
    before accept, which the server turns into a 403."""
    from starlette.responses import JSONResponse

    retry = error.details.get("retry_after_s")
    headers = {}
    body: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message}
    if isinstance(retry, int | float):
        body["retry_after_s"] = retry
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            JSONResponse(body, status_code=error.http_status, headers=headers)
        )
    else:
        await websocket.close(code=1008, reason=error.message[:120])


async def admit_websocket(runtime: Runtime, websocket: WebSocket) -> bool:
    """Before the handshake is accepted: the origin (when the tenant is in the URL) and the
    address's budget of new connections. False once the handshake has been refused."""
    if not await runtime.check_origin(websocket):
        await refuse_websocket(websocket, Forbidden("origin not allowed"))
        return False
    try:
        await runtime.check_rate(client_ip(websocket), "connect")
    except RateLimited as exc:
        runtime.metrics_error(exc.code)
        await refuse_websocket(websocket, exc)
        return False
    return True


# Input hygiene ----------------------------------------------------------------------------
def require_utf8(frame: Any, raw: str | bytes | None = None) -> None:
    """BadRequest when a decoded frame holds text that is not valid Unicode.

    JSON escapes can spell lone surrogates (`"\\ud800"`) that no UTF-8 encoder accepts: let
    one through and the store refuses it as an internal error, or worse, the reply echoing
    it cannot be written and the connection's writer dies. MessagePack decodes strictly, so
    only JSON needs this, and only JSON text with a `\\u` escape in it can hold one.
    """
    if isinstance(raw, bytes) or (isinstance(raw, str) and "\\u" not in raw):
        return
    try:
        json.dumps(frame, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest("text must be valid Unicode (no lone surrogates)") from exc
    except (TypeError, ValueError, RecursionError) as exc:
        raise BadRequest("malformed frame") from exc
