"""Where presence lives: in memory on one node, in Redis (with TTLs) across nodes."""

from __future__ import annotations

import abc

from presence.table import AgentPresence, PresenceTable


class PresenceBackend(abc.ABC):
    @abc.abstractmethod
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
        """Record (or refresh) one connection of an agent; it expires after ttl_s."""

    @abc.abstractmethod
    async def drop(self, agent_id: str, tenant: str, connection_id: str, now: float) -> None: ...

    @abc.abstractmethod
    async def snapshot(self, tenant: str, now: float) -> list[AgentPresence]:
        """Every agent of the tenant ever seen, aggregated over live connections."""

    async def close(self) -> None:
        return None


class MemoryPresence(PresenceBackend):
    def __init__(self) -> None:
        self._table = PresenceTable()

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
        self._table.heartbeat(agent_id, tenant, connection_id, status, capacity, now, ttl_s)

    async def drop(self, agent_id: str, tenant: str, connection_id: str, now: float) -> None:
        self._table.drop(agent_id, connection_id, now)

    async def snapshot(self, tenant: str, now: float) -> list[AgentPresence]:
        return self._table.snapshot(tenant, now)
