"""Plain values shared by every layer: no I/O, no framework types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATES = ("bot", "confused", "queued", "human", "resolved")
ROLES = ("agent", "supervisor")


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    created_at: float
    allowed_origins: tuple[str, ...] = ()
    kb_version: int = 0


@dataclass(frozen=True)
class Agent:
    id: str
    tenant: str
    name: str
    role: str
    created_at: float
    revoked: bool = False

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "tenant": self.tenant, "role": self.role}


@dataclass(frozen=True)
class Conversation:
    id: str
    tenant: str
    state: str
    version: int
    last_seq: int
    created_at: float
    updated_at: float
    agent_id: str | None = None
    priority: int = 0
    queued_at: float | None = None
    assigned_at: float | None = None
    awaiting_agent_since: float | None = None
    escalation_reason: str | None = None
    passed_over: tuple[str, ...] = ()
    handed_off: bool = False
    resolved_by: str | None = None
    rating: int | None = None
    preview: str = ""


@dataclass(frozen=True)
class Event:
    """One entry of a conversation's append-only log; `data` holds the kind's own fields."""

    conversation_id: str
    seq: int
    ts: float
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "event",
            "conversation_id": self.conversation_id,
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
        }
        frame.update(self.data)
        return frame

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> Event:
        data = {
            k: v
            for k, v in frame.items()
            if k not in ("type", "conversation_id", "seq", "ts", "kind")
        }
        return cls(frame["conversation_id"], frame["seq"], frame["ts"], frame["kind"], data)


@dataclass(frozen=True)
class Document:
    tenant: str
    doc_id: str
    title: str
    url: str
    body: str
    updated_at: float
    content_hash: str = ""
    lang: str = "en"
    doc_type: str = "article"


@dataclass(frozen=True)
class Chunk:
    tenant: str
    doc_id: str
    chunk_id: str
    title: str
    url: str
    text: str
    heading_path: tuple[str, ...] = ()
    updated_at: float = 0.0
    lang: str = "en"
    doc_type: str = "article"
    label: str | None = None

    def source(self) -> dict[str, str]:
        return {"doc_id": self.doc_id, "title": self.title, "url": self.url}
