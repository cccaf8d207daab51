"""Pure model routing: easy questions go to the small model, hard ones to the large one."""

from __future__ import annotations

import re
from dataclasses import dataclass

from llm.base import AnswerRequest

_MULTI_PART = re.compile(
    r"\b(?:and also|as well as|in addition|additionally|another question|also,)\b"
    r"|(?:^|\n)\s*(?:\d+[.)]|[-*])\s+\S",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class RoutePolicy:
    min_confidence: float = 0.6  # below: retrieval is unsure, the large model weighs passages
    min_margin: float = 0.1  # relative gap between the two best hit scores
    max_words: int = 30
    max_question_marks: int = 1
    max_customer_turns: int = 3  # later turns depend on context the small model loses


DEFAULT_POLICY = RoutePolicy()


def score_margin(request: AnswerRequest) -> float | None:
    """(s1 - s2) / |s1| of the two best hits; None with fewer than two hits."""
    if len(request.hits) < 2:
        return None
    first, second = request.hits[0].score, request.hits[1].score
    if first == 0:
        return 0.0
    return (first - second) / abs(first)


def route_reasons(request: AnswerRequest, policy: RoutePolicy = DEFAULT_POLICY) -> tuple[str, ...]:
    """Why the question is hard; empty when it is easy."""
    reasons: list[str] = []
    if request.confidence < policy.min_confidence:
        reasons.append("low_confidence")
    margin = score_margin(request)
    if margin is not None and margin < policy.min_margin:
        reasons.append("low_margin")
    if len(_WORD.findall(request.question)) > policy.max_words:
        reasons.append("long")
    if (
        request.question.count("?") > policy.max_question_marks
        or _MULTI_PART.search(request.question) is not None
    ):
        reasons.append("multi_part")
    if sum(1 for t in request.history if t.role == "customer") >= policy.max_customer_turns:
        reasons.append("later_turn")
    return tuple(reasons)


def choose_route(request: AnswerRequest, policy: RoutePolicy = DEFAULT_POLICY) -> str:
    """Return "small" or "large"."""
    return "large" if route_reasons(request, policy) else "small"
