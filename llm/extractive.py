"""The answerer with no LLM: quote the best sentences of the best passage, with its source."""

from __future__ import annotations

import time

from llm import metrics
from llm.base import NOT_FOUND_TEXT, Answer, Answerer, AnswerRequest, OnDelta
from llm.text import ExtractPolicy, best_sentences


def extract_answer(
    request: AnswerRequest, policy: ExtractPolicy = ExtractPolicy()
) -> tuple[list[str], Answer]:
    """The pieces to stream and the final answer, with no I/O."""
    if not request.hits:
        return [NOT_FOUND_TEXT], Answer(NOT_FOUND_TEXT, (), grounded=False, route="extractive")
    top = request.hits[0].chunk
    sentences = best_sentences(request.question, top.text, policy)
    if not sentences:
        return [NOT_FOUND_TEXT], Answer(NOT_FOUND_TEXT, (), grounded=False, route="extractive")
    pieces = [sentences[0], *(" " + s for s in sentences[1:])]
    return pieces, Answer("".join(pieces), (top.source(),), grounded=True, route="extractive")


class ExtractiveAnswerer(Answerer):
    def __init__(self, policy: ExtractPolicy = ExtractPolicy(), *, instrument: bool = True) -> None:
        # As another answerer's fallback it stays silent in metrics: that answerer records the
        # answer once, with fallback=True.
        self._policy = policy
        self._instrument = instrument

    async def answer(self, request: AnswerRequest, on_delta: OnDelta) -> Answer:
        started = time.perf_counter()
        pieces, answer = extract_answer(request, self._policy)
        for piece in pieces:
            await on_delta(piece)
        if self._instrument:
            metrics.observe_answer(answer, time.perf_counter() - started)
        return answer
