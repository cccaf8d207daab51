"""Presence shared by every node: Redis keys with TTLs, aggregated by presence.table.

Layout (all keys of a tenant share the hash tag `{tenant}`, so they live on one cluster slot):

    presence:{T}:agents              SET    agent ids ever seen in the tenant
    presence:{T}:conns:<agent>       HASH   connection id -> expires_at (the index)
    presence:{T}:conn:<n>:<agent>:<conn>
                                     STRING msgpack {status, capacity, expires_at}, PX ttl
    presence:{T}:seen:<agent>        STRING last heartbeat/drop time, EX last_seen_ttl

The per-connection key with its own TTL is the truth: Redis expires it on its own clock when
heartbeats stop, whichever node (or dead node) wrote it, so presence is the union over nodes by
construction and a crashed node's agents fade out instead of staying "online" forever. The
index only saves a SCAN; stale entries in it are pruned by `snapshot`. `<n>` is the length of
the agent id, so agent and connection ids may contain ':' without two keys colliding.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgpack
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from presence.backend import PresenceBackend
from presence.table import AgentPresence, ConnectionPresence, aggregate
from warmline.errors import Unavailable

T = TypeVar("T")

_LINK_ERRORS = (RedisError, OSError, TimeoutError)

# Atomic so that a drop racing a heartbeat never leaves a key without its index entry, and
# last_seen moves only when a live connection really went away (as in the memory table).
_DROP = """
local existed = redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if existed == 1 then
  redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3])
end
return existed
"""


# Removes index entries whose key is gone, checked inside Redis: a heartbeat that re-created
# the key since the snapshot read it keeps its entry.
_PRUNE = """
for i, connection_id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    redis.call('HDEL', KEYS[1], connection_id)
  end
end
return 0
"""


def _tag(tenant: str) -> str:
    return f"presence:{{{tenant}}}"


def agents_key(tenant: str) -> str:
    return f"{_tag(tenant)}:agents"


def index_key(tenant: str, agent_id: str) -> str:
    return f"{_tag(tenant)}:conns:{agent_id}"


def connection_key(tenant: str, agent_id: str, connection_id: str) -> str:
    return f"{_tag(tenant)}:conn:{len(agent_id)}:{agent_id}:{connection_id}"


def seen_key(tenant: str, agent_id: str) -> str:
    return f"{_tag(tenant)}:seen:{agent_id}"


def ttl_ms(ttl_s: float) -> int:
    """Redis TTLs are whole milliseconds and must be positive."""
    if not math.isfinite(ttl_s):
        raise ValueError(f"ttl must be finite, not {ttl_s!r}")
    return max(1, math.ceil(ttl_s * 1000))


def encode_connection(status: str, capacity: int, expires_at: float) -> bytes:
    return msgpack.packb(
        {"status": status, "capacity": capacity, "expires_at": expires_at}, use_bin_type=True
    )


def decode_connection(connection_id: str, payload: bytes) -> ConnectionPresence | None:
    try:
        value = msgpack.unpackb(payload, raw=False)
        return ConnectionPresence(
            connection_id,
            str(value["status"]),
            int(value["capacity"]),
            float(value["expires_at"]),
        )
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisPresence(PresenceBackend):
    def __init__(
        self, url: str, *, last_seen_ttl_s: float = 86400.0, op_timeout_s: float = 1.0
    ) -> None:
        self._op_timeout = op_timeout_s
        self._seen_ttl = max(1, math.ceil(last_seen_ttl_s))
        self._redis = Redis.from_url(
            url,
            socket_timeout=op_timeout_s,
            socket_connect_timeout=op_timeout_s,
            # One immediate retry replaces a pooled connection left stale by a Redis restart.
            retry=Retry(NoBackoff(), 1),
        )
        self._drop = self._redis.register_script(_DROP)
        self._prune_script = self._redis.register_script(_PRUNE)

    async def _call(self, op: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._op_timeout):
                return await op
        except _LINK_ERRORS as exc:
            # A timeout has an empty message: name the exception so the error says what happened.
            raise Unavailable(f"presence: redis failed: {exc!r}") from exc

    async def heartbeat(
        self,
        agent_id: str,
        tenant: str,
        connection_id: str,
        status: str,
        capacity: int,
        now: float,
        ttl_s: float,
    ) -> None:
        expires_at = now + ttl_s
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(
            connection_key(tenant, agent_id, connection_id),
            encode_connection(status, capacity, expires_at),
            px=ttl_ms(ttl_s),
        )
        pipe.hset(index_key(tenant, agent_id), connection_id, repr(expires_at))
        pipe.expire(index_key(tenant, agent_id), self._seen_ttl)
        pipe.sadd(agents_key(tenant), agent_id)
        pipe.set(seen_key(tenant, agent_id), repr(now), ex=self._seen_ttl)
        await self._call(pipe.execute())

    async def drop(self, agent_id: str, tenant: str, connection_id: str, now: float) -> None:
        keys = [
            connection_key(tenant, agent_id, connection_id),
            index_key(tenant, agent_id),
            seen_key(tenant, agent_id),
        ]
        await self._call(self._drop(keys=keys, args=[connection_id, repr(now), self._seen_ttl]))

    async def snapshot(self, tenant: str, now: float) -> list[AgentPresence]:
        """Three round trips whatever the size: agents, their indexes, their connections."""
        members = await self._call(self._redis.smembers(agents_key(tenant)))
        agent_ids = sorted(_text(a) for a in members)
        if not agent_ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for agent_id in agent_ids:
            pipe.hkeys(index_key(tenant, agent_id))
            pipe.get(seen_key(tenant, agent_id))
        replies: list[Any] = await self._call(pipe.execute())

        wanted: list[tuple[str, str]] = []
        last_seen: dict[str, float] = {}
        for i, agent_id in enumerate(agent_ids):
            conns, seen = replies[2 * i], replies[2 * i + 1]
            last_seen[agent_id] = float(seen) if seen is not None else 0.0
            wanted.extend((agent_id, _text(c)) for c in sorted(conns))

        payloads: list[Any] = []
        if wanted:
            keys = [connection_key(tenant, a, c) for a, c in wanted]
            payloads = await self._call(self._redis.mget(keys))

        live: dict[str, list[ConnectionPresence]] = {a: [] for a in agent_ids}
        stale: dict[str, list[str]] = {}
        for (agent_id, connection_id), payload in zip(wanted, payloads, strict=True):
            connection = decode_connection(connection_id, payload) if payload else None
            if connection is None:
                stale.setdefault(agent_id, []).append(connection_id)
            else:
                live[agent_id].append(connection)
        if stale:
            await self._prune(tenant, stale)
        return [aggregate(a, tenant, live[a], last_seen[a]) for a in agent_ids]

    async def _prune(self, tenant: str, stale: dict[str, list[str]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for agent_id, connection_ids in stale.items():
            keys = [index_key(tenant, agent_id)]
            keys += [connection_key(tenant, agent_id, c) for c in connection_ids]
            await self._prune_script(keys=keys, args=connection_ids, client=pipe)
        await self._call(pipe.execute())

    async def close(self) -> None:
        await self._redis.aclose()
