"""The store interface. Every backend (SQLite, PostgreSQL) passes tests/store/test_contract.py."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from warmline.models import Agent, Chunk, Conversation, Document, Event, Tenant


@dataclass(frozen=True)
class TransitionRequest:
    """A state change to apply by compare-and-set on the conversation's version."""

    conversation_id: str
    expected_version: int
    from_state: str
    to_state: str
    trigger: str
    reason: str
    agent_id: str | None = None  # owner after the transition (only meaningful for `human`)
    priority: int | None = None
    pass_over: str | None = None  # agent who must not be offered this conversation again
    details: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class MessageRequest:
    conversation_id: str
    client_id: str
    author: Mapping[str, Any]  # {"role", "id", "name"}
    text: str
    sources: Sequence[Mapping[str, Any]] = ()
    # The message is refused (Conflict) unless the conversation is in one of these states.
    allowed_states: frozenset[str] | None = None
    # For agent messages: the conversation must be owned by this agent.
    owner_agent_id: str | None = None
    extra: Mapping[str, Any] | None = None


class AppendedMessage(NamedTuple):
    """What `append_message` stored (or found stored) and the state it was stored in.

    The state comes from the same transaction as the write, so callers that react to the
    message (the bot's turn) need no second read of the conversation.
    """

    event: Event
    created: bool  # False when the client id was seen before: `event` is the first one
    state: str


@dataclass(frozen=True)
class TenantStats:
    states: dict[str, int]
    conversations: int
    handed_off: int
    resolved_by_bot: int
    resolved_total: int
    ratings_avg: float | None


class Store(abc.ABC):
    """Conversations, the event log, agents, tokens and the knowledge base."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the store cannot answer (readiness)."""

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    # Secrets -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def secret(self, name: str, generate_bytes: int = 32) -> bytes:
        """A named secret shared by every node; generated once on first use."""

    # Tenants -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_tenant(
        self, tenant_id: str, name: str = "", allowed_origins: Sequence[str] = ()
    ) -> Tenant: ...

    @abc.abstractmethod
    async def get_tenant(self, tenant_id: str) -> Tenant:
        """Raise NotFound."""

    @abc.abstractmethod
    async def list_tenants(self) -> list[Tenant]: ...

    @abc.abstractmethod
    async def set_allowed_origins(self, tenant_id: str, origins: Sequence[str]) -> Tenant: ...

    # Agents --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_agent(
        self, tenant_id: str, name: str, role: str = "agent", token: str | None = None
    ) -> tuple[Agent, str]:
        """Return the agent and its token (new random unless given); only its hash is kept."""

    @abc.abstractmethod
    async def agent_by_token(self, token: str) -> Agent | None: ...

    @abc.abstractmethod
    async def get_agent(self, agent_id: str) -> Agent: ...

    @abc.abstractmethod
    async def list_agents(self, tenant_id: str | None = None) -> list[Agent]: ...

    @abc.abstractmethod
    async def revoke_agent(self, agent_id: str) -> Agent: ...

    # Conversations -------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_conversation(self, tenant_id: str) -> Conversation: ...

    @abc.abstractmethod
    async def get_conversation(self, conversation_id: str) -> Conversation:
        """Raise NotFound."""

    @abc.abstractmethod
    async def append_message(self, request: MessageRequest) -> AppendedMessage:
        """Store a message event; a repeated client_id returns the first event, not created."""

    @abc.abstractmethod
    async def apply_transition(self, request: TransitionRequest) -> tuple[Conversation, Event]:
        """Compare-and-set on version; raise Conflict when another writer got there first."""

    @abc.abstractmethod
    async def events_after(
        self, conversation_id: str, after_seq: int, limit: int = 1000
    ) -> list[Event]: ...

    @abc.abstractmethod
    async def queued(self, tenant_id: str) -> list[Conversation]:
        """Queued conversations by priority (high first), then by time queued."""

    @abc.abstractmethod
    async def owned_by(self, agent_id: str) -> list[Conversation]:
        """Conversations in state `human` owned by the agent."""

    @abc.abstractmethod
    async def loads(self, tenant_id: str) -> dict[str, int]:
        """Number of `human` conversations per agent."""

    @abc.abstractmethod
    async def awaiting_reply_since(self, before: float) -> list[Conversation]:
        """`human` conversations whose customer has waited on the agent since before `before`."""

    @abc.abstractmethod
    async def set_rating(self, conversation_id: str, score: int, comment: str) -> None: ...

    @abc.abstractmethod
    async def tenant_stats(self, tenant_id: str) -> TenantStats: ...

    @abc.abstractmethod
    async def recent_handle_times(self, tenant_id: str, limit: int = 50) -> list[float]:
        """Seconds from assignment to resolution of the latest human-handled conversations."""

    # Knowledge -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def replace_document(self, document: Document, chunks: Sequence[Chunk]) -> int:
        """Atomically replace a document and its chunks; return the tenant's new kb_version."""

    @abc.abstractmethod
    async def delete_document(self, tenant_id: str, doc_id: str) -> bool: ...

    @abc.abstractmethod
    async def list_documents(self, tenant_id: str) -> list[Document]: ...

    @abc.abstractmethod
    async def list_chunks(self, tenant_id: str) -> list[Chunk]: ...

    @abc.abstractmethod
    async def kb_version(self, tenant_id: str) -> int: ...

    @abc.abstractmethod
    async def save_vectors(
        self, tenant_id: str, model_id: str, vectors: Mapping[str, bytes]
    ) -> None: ...

    @abc.abstractmethod
    async def load_vectors(self, tenant_id: str, model_id: str) -> dict[str, bytes]: ...
