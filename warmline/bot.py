"""The bot's turn: decide (pure policy), retrieve, answer with streaming, or hand off.

Turns of one conversation run one at a time, in the order the messages were stored. The bot
only ever writes while it owns the conversation (`bot`/`confused`): the store refuses its
message otherwise, so it never speaks after a handoff.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from llm.base import Answerer, AnswerRequest, Turn
from retrieval.base import RetrievalResult, Retriever
from statemachine import policy
from warmline import metrics
from warmline.bus import channels
from warmline.config import Config
from warmline.conversations import ConversationService
from warmline.errors import Conflict, InvalidTransition, WarmlineError
from warmline.models import Conversation, Event
from warmline.tasks import TaskOwner

log = logging.getLogger("warmline.bot")

HISTORY_EVENTS = 40


class BotRunner:
    def __init__(
        self,
        config: Config,
        conversations: ConversationService,
        retriever: Retriever,
        answerer: Answerer,
        tasks: TaskOwner,
    ) -> None:
        self.config = config
        self.conversations = conversations
        self.store = conversations.store
        self.retriever = retriever
        self.answerer = answerer
        self.tasks = tasks
        self._chains: dict[str, asyncio.Future[None]] = {}

    async def on_customer_message(self, conversation_id: str, state: str, event: Event) -> None:
        if state not in ("bot", "confused", "resolved"):
            return
        # Chain turns per conversation so answers come in the order questions were asked.
        previous = self._chains.get(conversation_id)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chains[conversation_id] = done
        self.tasks.spawn(self._run_after(previous, conversation_id, event, done), name="bot-turn")

    async def _run_after(
        self,
        previous: asyncio.Future[None] | None,
        conversation_id: str,
        event: Event,
        done: asyncio.Future[None],
    ) -> None:
        try:
            if previous is not None:
                await asyncio.shield(previous)
            await self.turn(conversation_id, event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("bot turn failed for %s", conversation_id)
            await self._escalate_after_failure(conversation_id)
        finally:
            if not done.done():
                done.set_result(None)
            if self._chains.get(conversation_id) is done:
                del self._chains[conversation_id]

    async def _escalate_after_failure(self, conversation_id: str) -> None:
        """The customer is never left without a reply: hand off when the bot breaks."""
        try:
            conversation = await self.store.get_conversation(conversation_id)
            if conversation.state in ("bot", "confused"):
                await self._say(conversation, policy.ESCALATE_TEXT)
                await self.conversations.transition(conversation, "escalate", "llm_failure")
        except WarmlineError:
            log.exception("could not escalate %s after a bot failure", conversation_id)

    async def turn(self, conversation_id: str, event: Event) -> None:
        conversation = await self.store.get_conversation(conversation_id)
        if conversation.state == "resolved":
            conversation, _ = await self.conversations.transition(
                conversation, "reopen", "customer_message"
            )
        if conversation.state not in ("bot", "confused"):
            return
        text = str(event.data.get("text", ""))
        history = await self._history(conversation_id, before_seq=event.seq)
        previous_customer = [t.text for t in history if t.role == "customer"]
        threshold = self.config.confidence_threshold
        decision = policy.decide(conversation.state, text, None, threshold, previous_customer)
        result: RetrievalResult | None = None
        if decision.action == policy.ANSWER:
            with metrics.RETRIEVAL_LATENCY.time():
                result = await self.retriever.search(conversation.tenant, text, k=5)
            decision = policy.decide(
                conversation.state, text, result.confidence, threshold, previous_customer
            )
        details = _details(text, result)
        if decision.action == policy.ESCALATE:
            await self._escalate(conversation, decision.reason, details)
        elif decision.action == policy.CLARIFY:
            await self._clarify(conversation, decision.reason, details)
        else:
            assert result is not None
            await self._answer(conversation, text, result, history, details)

    async def _history(self, conversation_id: str, before_seq: int) -> list[Turn]:
        start = max(before_seq - HISTORY_EVENTS, 0)
        events = await self.store.events_after(conversation_id, start, limit=HISTORY_EVENTS)
        turns = []
        for e in events:
            if e.seq >= before_seq or e.kind != "message":
                continue
            role = e.data.get("author", {}).get("role")
            if role in ("customer", "bot", "agent"):
                turns.append(Turn(role, str(e.data.get("text", ""))))
        return turns

    async def _say(
        self,
        conversation: Conversation,
        text: str,
        sources: list[dict[str, Any]] | tuple[dict[str, str], ...] = (),
        key: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Event | None:
        return await self.conversations.bot_message(
            conversation.id,
            key or _message_key(),
            text,
            list(sources),
            self.config.bot_name,
            extra,
        )

    async def _escalate(
        self, conversation: Conversation, reason: str, details: dict[str, Any]
    ) -> None:
        await self._say(conversation, policy.ESCALATE_TEXT)
        try:
            await self.conversations.transition(conversation, "escalate", reason, details=details)
        except (Conflict, InvalidTransition):
            log.info("escalation of %s lost a race; leaving it as it is", conversation.id)

    async def _clarify(
        self, conversation: Conversation, reason: str, details: dict[str, Any]
    ) -> None:
        try:
            conversation, _ = await self.conversations.transition(
                conversation, "confuse", reason, details=details
            )
        except (Conflict, InvalidTransition):
            return
        await self._say(
            conversation, policy.CLARIFY_TEXT.get(reason, policy.CLARIFY_TEXT["low_confidence"])
        )

    async def _answer(
        self,
        conversation: Conversation,
        question: str,
        result: RetrievalResult,
        history: list[Turn],
        details: dict[str, Any],
    ) -> None:
        key = _message_key()
        message_id = f"m_{key}"
        channel = channels.conversation(conversation.id)

        async def on_delta(piece: str) -> None:
            await self.conversations.publish(
                channel,
                {
                    "type": "bot_delta",
                    "conversation_id": conversation.id,
                    "message_id": message_id,
                    "delta": piece,
                },
            )

        answer = await self.answerer.answer(
            AnswerRequest(
                conversation.tenant,
                question,
                result.hits,
                result.confidence,
                tuple(history[-10:]),
            ),
            on_delta,
        )
        if not answer.grounded:
            if conversation.state == "bot":
                await self._clarify(conversation, "ungrounded", details)
            else:
                await self._escalate(conversation, "still_confused", details)
            return
        stored = await self._say(
            conversation,
            answer.text,
            answer.sources,
            key=key,
            extra={
                "route": answer.route,
                "fallback": answer.fallback,
                "confidence": round(result.confidence, 4),
            },
        )
        if stored is not None and conversation.state == "confused":
            try:
                await self.conversations.transition(conversation, "regain", "confident_answer")
            except (Conflict, InvalidTransition):
                pass


def _message_key() -> str:
    return "bot-" + secrets.token_urlsafe(9)


def _details(question: str, result: RetrievalResult | None) -> dict[str, Any]:
    details: dict[str, Any] = {"question": question[:500]}
    if result is not None:
        details["confidence"] = round(result.confidence, 4)
        details["retrieved"] = [
            {**hit.chunk.source(), "score": round(hit.score, 4)} for hit in result.hits[:3]
        ]
    return details
