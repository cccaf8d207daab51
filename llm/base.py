"""The answer interface the bot depends on: plain request/answer values and one abstract class."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from retrieval.base import Hit

ROUTES = ("extractive", "small", "large")
TURN_ROLES = ("customer", "bot", "agent")

# What the customer reads when the documents do not answer the question. The bot may replace it
# with its own wording when it moves to `confused`.
NOT_FOUND_TEXT = "I couldn't find an answer to that in our help articles."


@dataclass(frozen=True)
class Turn:
    role: str  # "customer" | "bot" | "agent"
    text: str


@dataclass(frozen=True)
class AnswerRequest:
    tenant: str
    question: str
    hits: tuple[Hit, ...]  # best first
    confidence: float  # calibrated retrieval confidence of hits[0]
    history: tuple[Turn, ...] = ()  # recent conversation, oldest first, not including `question`


@dataclass(frozen=True)
class Answer:
    """`text` is authoritative: it equals the streamed deltas joined, except after a mid-stream
    LLM failure, where it is the fallback's answer and replaces what was streamed."""

    text: str
    sources: tuple[dict[str, str], ...]  # {"doc_id","title","url"} from Chunk.source()
    grounded: bool  # False: the documents do not answer it (the bot moves to `confused`)
    route: str  # "extractive" | "small" | "large"
    fallback: bool = False  # True when the LLM failed and another answerer answered


OnDelta = Callable[[str], Awaitable[None]]


async def ignore_delta(_: str) -> None:
    return None


class Answerer(abc.ABC):
    @abc.abstractmethod
    async def answer(self, request: AnswerRequest, on_delta: OnDelta) -> Answer:
        """Call `on_delta(piece)` as text arrives, then return the whole answer.

        Never raises for a failing model: a fallback answers instead. Exceptions raised by
        `on_delta` itself (the customer's transport) propagate unchanged."""

    async def close(self) -> None:
        """Release clients and background work; idempotent."""
        return None
