"""Answer generation: grounded LLM answers with an extractive fallback."""

from llm.base import Answer, Answerer, AnswerRequest, OnDelta, Turn
from llm.extractive import ExtractiveAnswerer
from llm.factory import build_answerer

__all__ = [
    "Answer",
    "AnswerRequest",
    "Answerer",
    "ExtractiveAnswerer",
    "OnDelta",
    "Turn",
    "build_answerer",
]
