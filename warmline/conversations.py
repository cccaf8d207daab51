"""Conversation operations shared by every transport: store first, then publish.

Transports (WebSocket, long polling, HTTP) call these and translate WarmlineError into their
own error frames or statuses. Side effects of a state change (queue frames, dispatch,
the bot) hang off `on_change` hooks so this module does not import them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from statemachine.machine import next_state
from warmline.bus import channels
from warmline.bus.base import Bus, Message
from warmline.bus.republish import Republisher
from warmline.errors import Conflict, Forbidden, InvalidTransition, NotFound, Unavailable
from warmline.models import Agent, Conversation, Event
from warmline.store.base import MessageRequest, Store, TransitionRequest
from warmline.tokens import SessionSigner

log = logging.getLogger("warmline.conversations")

ChangeHook = Callable[[Conversation, Event], Awaitable[None]]
# (conversation id, its state when the message was stored, the message event)
MessageHook = Callable[[str, str, Event], Awaitable[None]]


def customer_author(conversation_id: str) -> dict[str, str]:
    return {"role": "customer", "id": conversation_id, "name": "Customer"}


def agent_author(agent: Agent) -> dict[str, str]:
    return {"role": "agent", "id": agent.id, "name": agent.name}


class ConversationService:
    def __init__(self, store: Store, bus: Bus, signer: SessionSigner) -> None:
        self.store = store
        self.bus = bus
        self.signer = signer
        self.republisher: Republisher | None = None
        self.state_hooks: list[ChangeHook] = []
        self.customer_message_hooks: list[MessageHook] = []

    # Publishing ----------------------------------------------------------------------------
    async def publish_event(self, event: Event) -> None:
        await self.publish(channels.conversation(event.conversation_id), event.to_frame())

    async def publish(self, channel: str, message: Message) -> None:
        """Best effort: the event is already stored, and subscribers resync from the store."""
        try:
            await self.bus.publish(channel, message)
        except Unavailable:
            log.warning("bus unavailable; %s will be delivered on resync", channel)
            if self.republisher is not None:
                self.republisher.add(channel, message)

    # Sessions ------------------------------------------------------------------------------
    async def start(self, tenant: str) -> tuple[Conversation, str]:
        await self.store.get_tenant(tenant)  # NotFound for an unknown tenant
        conversation = await self.store.create_conversation(tenant)
        return conversation, self.signer.issue(tenant, conversation.id, time.time())

    async def resume(self, tenant: str, token: str) -> tuple[Conversation, str]:
        claims = self.signer.verify(token, time.time())
        if claims.tenant != tenant:
            raise Forbidden("this session belongs to another tenant")
        conversation = await self.store.get_conversation(claims.conversation_id)
        if conversation.tenant != tenant:
            raise Forbidden("this session belongs to another tenant")
        # A fresh token on every resume: an active conversation never reaches the expiry.
        return conversation, self.signer.issue(tenant, conversation.id, time.time())

    async def conversation_for_token(self, token: str) -> Conversation:
        claims = self.signer.verify(token, time.time())
        conversation = await self.store.get_conversation(claims.conversation_id)
        if conversation.tenant != claims.tenant:
            raise Forbidden("this session belongs to another tenant")
        return conversation

    # Messages ------------------------------------------------------------------------------
    async def customer_message(self, conversation_id: str, client_id: str, text: str) -> Event:
        appended = await self.store.append_message(
            MessageRequest(conversation_id, client_id, customer_author(conversation_id), text)
        )
        if appended.created:
            await self.publish_event(appended.event)
            for hook in self.customer_message_hooks:
                await hook(conversation_id, appended.state, appended.event)
        return appended.event

    async def agent_message(
        self, agent: Agent, conversation_id: str, client_id: str, text: str
    ) -> Event:
        # No read first: the write itself refuses a conversation this agent does not own,
        # and agent ids are unique across tenants, so that covers another tenant's too.
        try:
            appended = await self.store.append_message(
                MessageRequest(
                    conversation_id,
                    client_id,
                    agent_author(agent),
                    text,
                    owner_agent_id=agent.id,
                )
            )
        except Conflict as exc:
            raise Forbidden("only the agent who owns the conversation can write in it") from exc
        if appended.created:
            await self.publish_event(appended.event)
        return appended.event

    async def bot_message(
        self,
        conversation_id: str,
        message_key: str,
        text: str,
        sources: Sequence[Mapping[str, Any]],
        bot_name: str,
        extra: Mapping[str, Any] | None = None,
    ) -> Event | None:
        """Store the bot's reply only while the bot still owns the conversation."""
        try:
            appended = await self.store.append_message(
                MessageRequest(
                    conversation_id,
                    message_key,
                    {"role": "bot", "id": "bot", "name": bot_name},
                    text,
                    sources,
                    allowed_states=frozenset({"bot", "confused"}),
                    extra=extra,
                )
            )
        except Conflict:
            return None  # a human took over meanwhile: the bot stays silent
        if appended.created:
            await self.publish_event(appended.event)
        return appended.event

    async def typing(
        self, conversation_id: str, role: str, on: bool, origin: str, name: str = ""
    ) -> None:
        frame: Message = {
            "type": "typing",
            "conversation_id": conversation_id,
            "on": on,
            "role": role,
            "_origin": origin,
        }
        if name:
            frame["name"] = name
        await self.publish(channels.conversation(conversation_id), frame)

    # Transitions ---------------------------------------------------------------------------
    async def transition(
        self,
        conversation: Conversation,
        trigger: str,
        reason: str,
        *,
        agent_id: str | None = None,
        priority: int | None = None,
        pass_over: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> tuple[Conversation, Event]:
        """Apply one named transition by compare-and-set; Conflict if it changed meanwhile."""
        to_state = next_state(conversation.state, trigger, reason)
        updated, event = await self.store.apply_transition(
            TransitionRequest(
                conversation.id,
                conversation.version,
                conversation.state,
                to_state,
                trigger,
                reason,
                agent_id=agent_id,
                priority=priority,
                pass_over=pass_over,
                details=details,
            )
        )
        await self.publish_event(event)
        for hook in self.state_hooks:
            try:
                await hook(updated, event)
            except Exception:
                log.exception("state hook failed for %s", updated.id)
        return updated, event

    async def transition_fresh(
        self, conversation_id: str, trigger: str, reason: str, **kwargs: Any
    ) -> tuple[Conversation, Event]:
        """Reload, then transition: for callers that do not hold a version of their own."""
        conversation = await self.store.get_conversation(conversation_id)
        return await self.transition(conversation, trigger, reason, **kwargs)

    async def request_human(self, conversation_id: str, attempts: int = 5) -> Conversation:
        """Escalate; already waiting for or talking to a person counts as done.

        The bot may be moving the same conversation at the same moment (its own turn on the
        customer's last message): a lost compare-and-set is retried on fresh state.
        """
        for _ in range(attempts):
            conversation = await self.store.get_conversation(conversation_id)
            if conversation.state in ("queued", "human"):
                return conversation
            try:
                if conversation.state == "resolved":
                    conversation, _ = await self.transition(
                        conversation, "reopen", "customer_message"
                    )
                updated, _ = await self.transition(conversation, "escalate", "request_human")
                return updated
            except Conflict:
                continue
        raise Conflict("the conversation keeps changing; try again")

    async def rate(self, conversation_id: str, score: int, comment: str) -> None:
        conversation = await self.store.get_conversation(conversation_id)
        if conversation.state != "resolved":
            raise InvalidTransition("a conversation can be rated once it is resolved")
        await self.store.set_rating(conversation_id, score, comment)

    # Agent operations ----------------------------------------------------------------------
    async def agent_conversation(self, agent: Agent, conversation_id: str) -> Conversation:
        conversation = await self.store.get_conversation(conversation_id)
        if conversation.tenant != agent.tenant:
            raise Forbidden("another tenant's conversation")
        return conversation

    async def owned(self, agent: Agent, conversation_id: str) -> Conversation:
        conversation = await self.agent_conversation(agent, conversation_id)
        if conversation.state != "human":
            raise InvalidTransition(f"the conversation is {conversation.state!r}")
        if conversation.agent_id != agent.id:
            raise Forbidden("the conversation belongs to another agent")
        return conversation

    async def claim(self, agent: Agent, conversation_id: str) -> Conversation:
        conversation = await self.agent_conversation(agent, conversation_id)
        if conversation.state != "queued":
            raise Conflict(f"the conversation is {conversation.state!r}, not queued")
        updated, _ = await self.transition(conversation, "assign", "claimed", agent_id=agent.id)
        return updated

    async def resolve(self, agent: Agent, conversation_id: str) -> Conversation:
        conversation = await self.owned(agent, conversation_id)
        updated, _ = await self.transition(conversation, "resolve", "agent_resolved")
        return updated

    async def requeue(self, agent: Agent, conversation_id: str, note: str = "") -> Conversation:
        conversation = await self.owned(agent, conversation_id)
        updated, _ = await self.transition(
            conversation,
            "requeue",
            "agent_requeue",
            pass_over=agent.id,
            details={"note": note[:500]} if note else None,
        )
        return updated

    async def transfer(self, agent: Agent, conversation_id: str, to_agent_id: str) -> Conversation:
        conversation = await self.owned(agent, conversation_id)
        try:
            target = await self.store.get_agent(to_agent_id)
        except NotFound:
            raise NotFound("unknown agent") from None
        if target.tenant != agent.tenant or target.revoked or target.role != "agent":
            raise NotFound("unknown agent")
        if target.id == agent.id:
            raise Conflict("the conversation is already yours")
        queued, _ = await self.transition(
            conversation,
            "requeue",
            "transfer",
            details={"from_agent": agent.id, "to_agent": target.id},
        )
        updated, _ = await self.transition(queued, "assign", "transferred", agent_id=target.id)
        return updated

    async def handoff_context(self, conversation: Conversation) -> dict[str, Any]:
        """What the agent sees when a conversation is given to them."""
        events = await self.store.events_after(conversation.id, 0, limit=500)
        transcript = [e.to_frame() for e in events]
        customer_texts = [
            e.data.get("text", "")
            for e in events
            if e.kind == "message" and e.data.get("author", {}).get("role") == "customer"
        ]
        bot_answers = [
            e.data
            for e in events
            if e.kind == "message" and e.data.get("author", {}).get("role") == "bot"
        ]
        escalation = next(
            (
                e.data
                for e in reversed(events)
                if e.kind == "state" and e.data.get("from") in ("bot", "confused")
            ),
            None,
        )
        details = (escalation or {}).get("details") or {}
        reason = conversation.escalation_reason or (escalation or {}).get("reason") or ""
        first = customer_texts[0] if customer_texts else ""
        last = customer_texts[-1] if customer_texts else ""
        summary_parts = [f"Escalated: {reason.replace('_', ' ')}." if reason else ""]
        if first:
            summary_parts.append(f"Customer asked: \u201c{first[:160]}\u201d.")
        if last and last != first:
            summary_parts.append(f"Latest: \u201c{last[:160]}\u201d.")
        summary_parts.append(
            f"{len(customer_texts)} customer message(s), {len(bot_answers)} bot answer(s)."
        )
        return {
            "reason": reason,
            "summary": " ".join(p for p in summary_parts if p),
            "retrieved": details.get("retrieved", []),
            "confidence": details.get("confidence"),
            "bot_answer": bot_answers[-1].get("text", "") if bot_answers else "",
            "transcript": transcript,
        }
