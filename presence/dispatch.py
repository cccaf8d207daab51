"""Who gets which queued conversation: a pure plan over plain values.

The longest-waiting conversation (highest priority first) goes to the least-busy online agent
with a free slot, and the plan drains the whole backlog, not just the newest item.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueItem:
    conversation_id: str
    priority: int
    queued_at: float
    passed_over: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentSlot:
    agent_id: str
    capacity: int
    load: int
    last_assigned_at: float = 0.0  # tie-break: who waited longest since their last assignment


@dataclass(frozen=True)
class Assignment:
    conversation_id: str
    agent_id: str


def order_queue(items: Iterable[QueueItem]) -> list[QueueItem]:
    return sorted(items, key=lambda i: (-i.priority, i.queued_at, i.conversation_id))


def plan(queue: Sequence[QueueItem], agents: Sequence[AgentSlot]) -> list[Assignment]:
    load = {a.agent_id: a.load for a in agents}
    capacity = {a.agent_id: a.capacity for a in agents}
    last = {a.agent_id: a.last_assigned_at for a in agents}
    assignments: list[Assignment] = []
    for item in order_queue(queue):
        candidates = [
            agent_id
            for agent_id in load
            if load[agent_id] < capacity[agent_id] and agent_id not in item.passed_over
        ]
        if not candidates:
            if all(load[a] >= capacity[a] for a in load):
                break  # nobody has room: the rest of the queue waits too
            continue  # only agents this item passed over have room; try the next item
        chosen = min(
            candidates,
            key=lambda a: (load[a] / max(capacity[a], 1), load[a], last[a], a),
        )
        assignments.append(Assignment(item.conversation_id, chosen))
        load[chosen] += 1
        last[chosen] = float("inf")  # just assigned: least preferred among equals next
    return assignments


def free_slots(agents: Sequence[AgentSlot]) -> int:
    return sum(max(a.capacity - a.load, 0) for a in agents)


def loads_for(online: Mapping[str, int], loads: Mapping[str, int]) -> list[AgentSlot]:
    """Slots for agents online with their capacity, given current loads."""
    return [
        AgentSlot(agent_id, capacity, loads.get(agent_id, 0))
        for agent_id, capacity in online.items()
    ]
