"""Presence bookkeeping over plain values: an agent is the union of their connections."""

from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("online", "away", "offline")


@dataclass(frozen=True)
class ConnectionPresence:
    connection_id: str
    status: str
    capacity: int
    expires_at: float


@dataclass(frozen=True)
class AgentPresence:
    agent_id: str
    tenant: str
    status: str  # aggregated over live connections
    capacity: int
    connections: int
    last_seen: float  # last heartbeat of any connection, kept after they all expire


def aggregate(
    agent_id: str, tenant: str, connections: list[ConnectionPresence], last_seen: float
) -> AgentPresence:
    """Online if any live connection is online; away if any is away; else offline."""
    statuses = {c.status for c in connections}
    if "online" in statuses:
        status = "online"
    elif "away" in statuses:
        status = "away"
    else:
        status = "offline"
    capacity = max((c.capacity for c in connections if c.status != "offline"), default=0)
    return AgentPresence(agent_id, tenant, status, capacity, len(connections), last_seen)


class PresenceTable:
    """Connections per agent with expiry; `snapshot` drops what has expired."""

    def __init__(self) -> None:
        self._connections: dict[str, dict[str, ConnectionPresence]] = {}
        self._tenant_of: dict[str, str] = {}
        self._last_seen: dict[str, float] = {}

    def heartbeat(
        self,
        agent_id: str,
        tenant: str,
        connection_id: str,
        status: str,
        capacity: int,
        now: float,
        ttl_s: float,
    ) -> None:
        self._tenant_of[agent_id] = tenant
        self._connections.setdefault(agent_id, {})[connection_id] = ConnectionPresence(
            connection_id, status, capacity, now + ttl_s
        )
        self._last_seen[agent_id] = now

    def drop(self, agent_id: str, connection_id: str, now: float) -> None:
        connections = self._connections.get(agent_id)
        if connections is not None and connections.pop(connection_id, None) is not None:
            self._last_seen[agent_id] = now
            if not connections:
                del self._connections[agent_id]

    def expire(self, now: float) -> None:
        for agent_id in list(self._connections):
            live = {k: c for k, c in self._connections[agent_id].items() if c.expires_at > now}
            if live:
                self._connections[agent_id] = live
            else:
                del self._connections[agent_id]

    def snapshot(self, tenant: str, now: float) -> list[AgentPresence]:
        self.expire(now)
        return [
            aggregate(
                agent_id,
                tenant,
                list(self._connections.get(agent_id, {}).values()),
                self._last_seen.get(agent_id, 0.0),
            )
            for agent_id, agent_tenant in self._tenant_of.items()
            if agent_tenant == tenant
        ]
