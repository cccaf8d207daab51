"""Rules every store backend applies the same way: pure functions over plain values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from warmline.errors import Conflict
from warmline.models import Agent, Conversation
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


# Column lists in the order the row mappers below (and the tenant mappers of each backend) read.
TENANT_COLUMNS = "id, name, created_at, allowed_origins, kb_version"
AGENT_COLUMNS = "id, tenant, name, role, created_at, revoked"
CONVERSATION_COLUMNS = (
    "id, tenant, state, version, last_seq, created_at, updated_at, agent_id, priority, "
    "queued_at, assigned_at, awaiting_agent_since, escalation_reason, passed_over, handed_off, "
    "resolved_by, rating, preview"
)


def agent_from_row(row: Sequence[Any]) -> Agent:
    """Columns: id, tenant, name, role, created_at, revoked."""
    return Agent(row[0], row[1], row[2], row[3], row[4], bool(row[5]))


def conversation_from_row(row: Sequence[Any], passed_over: Sequence[str]) -> Conversation:
    """Columns in the order both backends select them; `passed_over` decoded by the caller
    (JSON text in SQLite, an array in PostgreSQL)."""
    return Conversation(
        id=row[0],
        tenant=row[1],
        state=row[2],
        version=int(row[3]),
        last_seq=int(row[4]),
        created_at=row[5],
        updated_at=row[6],
        agent_id=row[7],
        priority=int(row[8]),
        queued_at=row[9],
        assigned_at=row[10],
        awaiting_agent_since=row[11],
        escalation_reason=row[12],
        passed_over=tuple(passed_over),
        handed_off=bool(row[14]),
        resolved_by=row[15],
        rating=row[16],
        preview=row[17] or "",
    )
