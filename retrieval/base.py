"""The retrieval interface the bot depends on."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass

from warmline.models import Chunk


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float


@dataclass(frozen=True)
class RetrievalResult:
    hits: tuple[Hit, ...]
    confidence: float  # calibrated probability that hits[0] is right; 0.0 with no hits

    @property
    def top(self) -> Hit | None:
        return self.hits[0] if self.hits else None


EMPTY_RESULT = RetrievalResult((), 0.0)


class Retriever(abc.ABC):
    @abc.abstractmethod
    async def search(
        self,
        tenant: str,
        query: str,
        k: int = 5,
        filters: Mapping[str, str] | None = None,
    ) -> RetrievalResult:
        """Best chunks of `tenant` only; `filters` may narrow by `lang` and `doc_type`."""

    def start(self) -> None:
        """Begin background work (loading an embedding model) without waiting for it."""
        return None

    async def refresh(self, tenant: str) -> None:
        """Start bringing the tenant's index up to date in the background (after an ingest)."""
        return None

    async def forget_document(self, tenant: str, doc_id: str) -> None:
        """Stop returning a deleted document at once on this node, before any rebuild."""
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Cancel and await every background job this retriever owns."""
