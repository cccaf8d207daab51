"""The async shell around presence/dispatch.py: gathers inputs, applies the plan, notifies.

Runs on every node. Assignments are compare-and-set transitions in the store, so when two
nodes plan the same assignment exactly one wins and the other moves on. Runs are coalesced
per tenant; a periodic tick catches what no event announces (expired presence, missed
reply SLAs, agents gone past their grace period).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from presence.backend import PresenceBackend
from presence.dispatch import AgentSlot, QueueItem, free_slots, plan
from presence.eta import average_handle_time, estimate_wait
from presence.table import STATUSES, AgentPresence
from warmline import metrics
from warmline.bus import channels
from warmline.config import Config
from warmline.conversations import ConversationService
from warmline.errors import Conflict, InvalidTransition, NotFound, WarmlineError
from warmline.models import Conversation, Event
from warmline.tasks import Coalescer, TaskOwner

log = logging.getLogger("warmline.dispatch")


class Dispatcher:
    def __init__(
        self,
        config: Config,
        conversations: ConversationService,
        presence: PresenceBackend,
        tasks: TaskOwner,
    ) -> None:
        self.config = config
        self.conversations = conversations
        self.store = conversations.store
        self.presence = presence
        self.tasks = tasks
        self._dispatch = Coalescer(tasks, self.dispatch, "dispatch")
        self._publish_queue = Coalescer(tasks, self.publish_queue, "queue-frames")
        self._last_assigned: dict[str, float] = {}
        self._missing_since: dict[str, float] = {}
        self._tick_task: asyncio.Task[None] | None = None
        conversations.state_hooks.append(self._on_state_change)

    # Triggers ------------------------------------------------------------------------------
    def wake(self, tenant: str) -> None:
        self._dispatch.trigger(tenant)

    def queue_changed(self, tenant: str) -> None:
        self._publish_queue.trigger(tenant)

    async def _on_state_change(self, conversation: Conversation, event: Event) -> None:
        source, target = event.data.get("from"), event.data.get("to")
        if "queued" in (source, target):
            self.queue_changed(conversation.tenant)
        if target == "queued" or source == "human":
            # A new item to place, or a slot freed: drain the backlog.
            self.wake(conversation.tenant)
        if target == "human" and conversation.agent_id:
            await self._notify_assigned(conversation)

    async def _notify_assigned(self, conversation: Conversation) -> None:
        context = await self.conversations.handoff_context(conversation)
        await self.conversations.publish(
            channels.agent(conversation.agent_id or ""),
            {
                "type": "assigned",
                "conversation_id": conversation.id,
                "context": context,
            },
        )

    # Periodic tick -------------------------------------------------------------------------
    def start(self) -> None:
        self._tick_task = asyncio.create_task(self._tick_loop(), name="dispatch-tick")

    async def close(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            try:
                await self._tick_task
            except asyncio.CancelledError:
                pass
            self._tick_task = None

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.dispatch_tick_s)
            try:
                await self.tick(time.time())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch tick failed")

    async def tick(self, now: float) -> None:
        await self._enforce_reply_sla(now)
        for tenant in await self.store.list_tenants():
            await self._requeue_departed_agents(tenant.id, now)
            self.wake(tenant.id)

    async def _enforce_reply_sla(self, now: float) -> None:
        for conversation in await self.store.awaiting_reply_since(now - self.config.reply_sla_s):
            log.info("agent %s missed the reply SLA on %s", conversation.agent_id, conversation.id)
            try:
                await self.conversations.transition(
                    conversation,
                    "requeue",
                    "reply_sla",
                    pass_over=conversation.agent_id,
                    priority=conversation.priority + 1,
                )
            except (Conflict, InvalidTransition):
                continue

    async def _requeue_departed_agents(self, tenant: str, now: float) -> None:
        loads = await self.store.loads(tenant)
        if not loads:
            return
        present = {p.agent_id: p for p in await self.presence.snapshot(tenant, now)}
        for agent_id in loads:
            seen = present.get(agent_id)
            if seen is not None and seen.connections > 0:
                self._missing_since.pop(agent_id, None)
                continue
            last_seen = seen.last_seen if seen is not None else 0.0
            if last_seen == 0.0:
                # Never seen by this presence backend (say, a node restart with memory
                # presence): start the grace period now rather than requeue at once.
                last_seen = self._missing_since.setdefault(agent_id, now)
            if now - last_seen < self.config.agent_grace_s:
                continue
            for conversation in await self.store.owned_by(agent_id):
                try:
                    await self.conversations.transition(
                        conversation, "requeue", "agent_disconnected"
                    )
                except (Conflict, InvalidTransition):
                    continue

    # Dispatch ------------------------------------------------------------------------------
    async def online_slots(
        self, tenant: str, now: float
    ) -> tuple[list[AgentSlot], list[AgentPresence]]:
        snapshot = await self.presence.snapshot(tenant, now)
        loads = await self.store.loads(tenant)
        slots = [
            AgentSlot(
                p.agent_id,
                p.capacity,
                loads.get(p.agent_id, 0),
                self._last_assigned.get(p.agent_id, 0.0),
            )
            for p in snapshot
            if p.status == "online"
        ]
        return slots, snapshot

    async def dispatch(self, tenant: str) -> None:
        now = time.time()
        queued = await self.store.queued(tenant)
        if not queued:
            return
        slots, _ = await self.online_slots(tenant, now)
        if not slots:
            return
        items = [
            QueueItem(c.id, c.priority, c.queued_at or c.updated_at, c.passed_over) for c in queued
        ]
        by_id = {c.id: c for c in queued}
        lost_race = False
        for assignment in plan(items, slots):
            conversation = by_id[assignment.conversation_id]
            try:
                await self.conversations.transition(
                    conversation, "assign", "dispatched", agent_id=assignment.agent_id
                )
            except (Conflict, InvalidTransition, NotFound):
                # Another node or a claim got there first. Plan again from fresh data, or the
                # agent this item was meant for would idle until the next tick.
                lost_race = True
                continue
            except WarmlineError:
                log.exception("assignment of %s failed", conversation.id)
                continue
            self._last_assigned[assignment.agent_id] = now
        if lost_race:
            self.wake(tenant)

    # Queue frames --------------------------------------------------------------------------
    async def queue_snapshot(
        self, tenant: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(agent queue items, per-conversation position frames)."""
        now = time.time()
        queued = await self.store.queued(tenant)
        metrics.QUEUE_DEPTH.labels(tenant).set(len(queued))
        slots, present = await self.online_slots(tenant, now)
        for status in STATUSES:  # agents by presence status, for /metrics
            metrics.AGENTS.labels(tenant, status).set(sum(p.status == status for p in present))
        handle_time = average_handle_time(
            await self.store.recent_handle_times(tenant), self.config.default_handle_time_s
        )
        capacity = sum(s.capacity for s in slots)
        free_now = free_slots(slots)
        items = []
        positions = []
        for index, conversation in enumerate(queued, start=1):
            waiting = now - (conversation.queued_at or now)
            items.append(
                {
                    "conversation_id": conversation.id,
                    "waiting_s": round(max(waiting, 0.0), 1),
                    "priority": conversation.priority,
                    "reason": conversation.escalation_reason or "",
                    "preview": conversation.preview,
                    "queued_at": conversation.queued_at,
                }
            )
            positions.append(
                {
                    "type": "queue",
                    "conversation_id": conversation.id,
                    "position": index,
                    "eta_s": estimate_wait(index, capacity, free_now, handle_time),
                }
            )
        return items, positions

    async def publish_queue(self, tenant: str) -> None:
        await self._publish_queue_now(tenant)
        # Every frame carries the whole queue, so sending one per change is quadratic in a
        # storm. Changes that arrive during this pause coalesce into one more run after it.
        await asyncio.sleep(self.config.queue_frame_interval_s)

    async def _publish_queue_now(self, tenant: str) -> None:
        items, positions = await self.queue_snapshot(tenant)
        await self.conversations.publish(
            channels.tenant_queue(tenant), {"type": "queue", "items": items}
        )
        for frame in positions:
            await self.conversations.publish(channels.conversation(frame["conversation_id"]), frame)

    async def position_of(self, conversation: Conversation) -> dict[str, Any] | None:
        _, positions = await self.queue_snapshot(conversation.tenant)
        return next((p for p in positions if p["conversation_id"] == conversation.id), None)
