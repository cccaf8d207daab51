"""Rules every store backend applies the same way: pure functions over plain values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from warmline.errors import Conflict
from warmline.models import Conversation
from warmline.store.base import MessageRequest, TransitionRequest
from warmline.store.ids import new_id


def message_id_for(request: MessageRequest) -> str:
    """The bot's messages get an id derived from their key, so the `bot_delta` frames
    streamed before the message is stored can already name it."""
    if request.client_id and request.author.get("role") == "bot":
        return f"m_{request.client_id}"
    return new_id("m")


def transition_changes(
    current: Conversation, request: TransitionRequest, now: float
) -> dict[str, Any]:
    """The conversation columns a transition sets (last_seq is bumped in SQL, not here).

    The same rules as the SQLite store: queueing records why and when; assignment starts the
    reply clock; resolving or reopening clears what only mattered for the last handoff.
    """
    passed_over = list(current.passed_over)
    if request.pass_over and request.pass_over not in passed_over:
        passed_over.append(request.pass_over)
    to_state = request.to_state
    fields: dict[str, Any] = {
        "state": to_state,
        "version": current.version + 1,
        "updated_at": now,
        "agent_id": request.agent_id if to_state == "human" else None,
        "passed_over": passed_over,
    }
    if to_state == "queued":
        fields["queued_at"] = now
        fields["handed_off"] = True
        fields["escalation_reason"] = (
            request.reason
            if request.from_state in ("bot", "confused")
            else current.escalation_reason or request.reason
        )
        fields["awaiting_agent_since"] = None
        fields["assigned_at"] = None
    elif to_state == "human":
        fields["assigned_at"] = now
        fields["awaiting_agent_since"] = now
    elif to_state == "resolved":
        fields["resolved_by"] = "human" if request.from_state == "human" else "bot"
        fields["awaiting_agent_since"] = None
        fields["passed_over"] = []
    elif to_state == "bot":
        fields["resolved_by"] = None
        fields["rating"] = None
        fields["awaiting_agent_since"] = None
        fields["passed_over"] = []
    if request.priority is not None:
        fields["priority"] = request.priority
    return fields


def handle_time(current: Conversation, request: TransitionRequest, now: float) -> float | None:
    """Seconds an agent held the conversation, when this transition resolves a human one."""
    if request.to_state == "resolved" and request.from_state == "human":
        if current.assigned_at is not None:
            return now - current.assigned_at
    return None


def state_event_data(request: TransitionRequest, agent: Mapping[str, str] | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "from": request.from_state,
        "to": request.to_state,
        "reason": request.reason,
        "agent": dict(agent) if request.to_state == "human" and agent is not None else None,
        "trigger": request.trigger,
    }
    if request.details:
        data["details"] = dict(request.details)
    return data


def message_event_data(request: MessageRequest, message_id: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": message_id,
        "author": dict(request.author),
        "text": request.text,
        "sources": [dict(s) for s in request.sources],
    }
    if request.client_id:
        data["client_id"] = request.client_id
    if request.extra:
        data.update(request.extra)
    return data


def refusal(request: MessageRequest, state: str, agent_id: str | None) -> Conflict | None:
    """Why the conversation cannot take this message now, if it cannot."""
    if request.allowed_states is not None and state not in request.allowed_states:
        return Conflict(f"conversation is {state!r}", state=state)
    if request.owner_agent_id is not None and (
        state != "human" or agent_id != request.owner_agent_id
    ):
        return Conflict("the conversation is not yours", state=state)
    return None
