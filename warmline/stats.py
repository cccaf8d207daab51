"""The supervisor's `stats` frame: computed at most once a second per tenant and node."""

from __future__ import annotations

import time
from typing import Any

from presence.dispatcher import Dispatcher
from warmline.models import STATES
from warmline.store.base import Store


def ratio(numerator: int, denominator: int) -> float:
    return round(numerator / denominator, 4) if denominator else 0.0


class StatsService:
    def __init__(self, store: Store, dispatcher: Dispatcher, reply_sla_s: float) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.reply_sla_s = reply_sla_s
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    async def snapshot(self, tenant: str, max_age_s: float = 1.0) -> dict[str, Any]:
        now = time.time()
        cached = self._cache.get(tenant)
        if cached is not None and now - cached[0] < max_age_s:
            return cached[1]
        frame = await self._compute(tenant, now)
        self._cache[tenant] = (now, frame)
        return frame

    async def _compute(self, tenant: str, now: float) -> dict[str, Any]:
        stats = await self.store.tenant_stats(tenant)
        queued = await self.store.queued(tenant)
        loads = await self.store.loads(tenant)
        presence = await self.dispatcher.presence.snapshot(tenant, now)
        agents = {p.agent_id: p for p in presence}
        known = {a.id: a for a in await self.store.list_agents(tenant) if a.role == "agent"}
        counts = {"online": 0, "away": 0, "offline": 0}
        agent_list = []
        for agent_id, agent in known.items():
            if agent.revoked:
                continue
            seen = agents.get(agent_id)
            status = seen.status if seen is not None else "offline"
            counts[status] += 1
            agent_list.append(
                {
                    "id": agent_id,
                    "name": agent.name,
                    "status": status,
                    "load": loads.get(agent_id, 0),
                    "capacity": seen.capacity if seen is not None else 0,
                }
            )
        online = [a for a in agent_list if a["status"] == "online"]
        longest = max((now - (c.queued_at or now) for c in queued), default=0.0)
        sla_breaches = len(
            [
                c
                for c in await self.store.awaiting_reply_since(now - self.reply_sla_s)
                if c.tenant == tenant
            ]
        )
        resolved = stats.resolved_total
        return {
            "type": "stats",
            "tenant": tenant,
            "ts": round(now, 3),
            "queue_depth": len(queued),
            "longest_wait_s": round(max(longest, 0.0), 1),
            "agents": counts,
            "capacity": {
                "total": sum(a["capacity"] for a in online),
                "used": sum(a["load"] for a in online),
            },
            "states": {state: stats.states.get(state, 0) for state in STATES},
            "handoff_rate": ratio(stats.handed_off, stats.conversations),
            "bot_resolution_rate": ratio(stats.resolved_by_bot, resolved),
            "conversations": stats.conversations,
            "sla_breaches": sla_breaches,
            "rating_avg": round(stats.ratings_avg, 2) if stats.ratings_avg is not None else None,
            "agent_list": agent_list,
        }
