"""The LLM answerer over real HTTP, through the real `openai` client, against tests' fake server."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from prometheus_client import REGISTRY

from llm.base import NOT_FOUND_TEXT, Turn
from llm.extractive import ExtractiveAnswerer, extract_answer
from llm.factory import build_answerer
from llm.openai_answerer import OpenAIAnswerer
from llm.prompt import NO_ANSWER
from llm.resilience import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, RetryPolicy
from tests.helpers.fake_llm import FakeLLM
from tests.llm.llm_support import REFUNDS, RETURNS, Deltas, make_request
from warmline.config import Config

FAST_RETRY = RetryPolicy(max_attempts=3, base_s=0.01, cap_s=0.02)
NO_RETRY = RetryPolicy(max_attempts=1)
REPLY = (
    "You can return most items within 30 days of delivery [1]. "
    "Refunds reach your card in 5 to 10 business days [2]."
)


def make_answerer(fake: FakeLLM, **overrides: Any) -> OpenAIAnswerer:
    options: dict[str, Any] = {
        "model_small": "small-model",
        "model_large": "large-model",
        "fallback": ExtractiveAnswerer(instrument=False),
        "first_token_timeout_s": 5.0,
        "total_timeout_s": 10.0,
        "retry": FAST_RETRY,
    }
    options.update(overrides)
    client = openai.AsyncOpenAI(base_url=fake.url, api_key="test", max_retries=0)
    return OpenAIAnswerer(client, **options)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def extractive_text() -> str:
    return extract_answer(make_request())[1].text


async def test_deltas_stream_in_order_and_the_answer_has_sources(fake_llm: FakeLLM) -> None:
    fake_llm.script(reply=REPLY)
    answerer = make_answerer(fake_llm)
    ttft_before = sample("warmline_llm_time_to_first_token_seconds_count", route="small")
    small_before = sample("warmline_answer_route_total", route="small")
    deltas = Deltas()
    try:
        answer = await answerer.answer(make_request(), deltas)
    finally:
        await answerer.close()

    assert answer.text == REPLY and deltas.text == REPLY
    assert len(deltas.pieces) > 10  # token by token, not one block
    assert answer.grounded and not answer.fallback and answer.route == "small"
    assert answer.sources == (RETURNS.source(), REFUNDS.source())
    body = fake_llm.requests[-1]
    assert body["model"] == "small-model" and body["stream"] is True
    assert "[1] Returns policy" in body["messages"][0]["content"]
    assert body["messages"][-1] == {"role": "user", "content": make_request().question}
    assert (
        sample("warmline_llm_time_to_first_token_seconds_count", route="small") == ttft_before + 1
    )
    assert sample("warmline_answer_route_total", route="small") == small_before + 1


async def test_citations_are_renumbered_to_the_sources_order(fake_llm: FakeLLM) -> None:
    fake_llm.script(
        tokens=("Refunds", " take", " 5", " days", " [", "2", "].", " Returns [1", "].")
    )
    answerer = make_answerer(fake_llm)
    deltas = Deltas()
    try:
        answer = await answerer.answer(make_request(), deltas)
    finally:
        await answerer.close()
    assert answer.text == deltas.text == "Refunds take 5 days [1]. Returns [2]."
    assert answer.sources == (REFUNDS.source(), RETURNS.source())


async def test_uncited_answer_gets_the_top_source(fake_llm: FakeLLM) -> None:
    fake_llm.script(reply="Thirty days.")
    answerer = make_answerer(fake_llm)
    try:
        answer = await answerer.answer(make_request(), Deltas())
    finally:
        await answerer.close()
    assert answer.sources == (RETURNS.source(),) and answer.grounded


async def test_no_answer_sentinel_is_not_grounded_and_never_shown(fake_llm: FakeLLM) -> None:
    fake_llm.script(tokens=("NO", "_ANS", "WER"))
    answerer = make_answerer(fake_llm)
    deltas = Deltas()
    try:
        answer = await answerer.answer(make_request(), deltas)
    finally:
        await answerer.close()
    assert not answer.grounded and not answer.fallback
    assert answer.text == NOT_FOUND_TEXT and deltas.pieces == [NOT_FOUND_TEXT]
    assert answer.sources == ()
    assert all("NO" not in piece for piece in deltas.pieces)
    assert NO_ANSWER not in answer.text


async def test_hard_question_routes_to_the_large_model(fake_llm: FakeLLM) -> None:
    history = (Turn("customer", "hi"), Turn("bot", "Hello!"))
    request = make_request("How do I return it? And when is my refund?", history=history)
    answerer = make_answerer(fake_llm)
    try:
        answer = await answerer.answer(request, Deltas())
    finally:
        await answerer.close()
    assert answer.route == "large"
    body = fake_llm.requests[-1]
    assert body["model"] == "large-model"
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]


async def test_one_model_serves_both_routes(fake_llm: FakeLLM) -> None:
    answerer = make_answerer(fake_llm, model_small="", model_large="only")
    try:
        answer = await answerer.answer(make_request(), Deltas())
    finally:
        await answerer.close()
    assert answer.route == "small" and fake_llm.requests[-1]["model"] == "only"


@pytest.mark.parametrize("hang", ["before_headers", "after_headers"])
async def test_first_token_timeout_falls_back_to_extractive(fake_llm: FakeLLM, hang: str) -> None:
    if hang == "before_headers":
        fake_llm.script(hang=True)
    else:
        fake_llm.script(hang_after_tokens=0)  # headers and role chunk, then nothing
    answerer = make_answerer(fake_llm, first_token_timeout_s=0.3, retry=NO_RETRY)
    before = sample("warmline_llm_fallback_total", reason="timeout_first_token")
    deltas = Deltas()
    try:
        answer = await answerer.answer(make_request(), deltas)
    finally:
        await answerer.close()
    assert answer.fallback and answer.route == "extractive" and answer.grounded
    assert answer.text == extractive_text() == deltas.text
    assert answer.sources == (RETURNS.source(),)
    assert sample("warmline_llm_fallback_total", reason="timeout_first_token") == before + 1


async def test_slow_first_token_within_the_timeout_is_fine(fake_llm: FakeLLM) -> None:
    fake_llm.script(reply="Yes [1].", first_token_delay_s=0.1)
    answerer = make_answerer(fake_llm, first_token_timeout_s=3.0)
    try:
        answer = await answerer.answer(make_request(), Deltas())
    finally:
        await answerer.close()
    assert not answer.fallback and answer.text == "Yes [1]."


async def test_failure_mid_stream_is_not_retried_and_the_fallback_replaces_it(
    fake_llm: FakeLLM,
) -> None:
    fake_llm.script(reply=REPLY, hang_after_tokens=3)
    answerer = make_answerer(fake_llm, total_timeout_s=0.5)
    before = sample("warmline_llm_fallback_total", reason="mid_stream")
    deltas = Deltas()
    try:
        answer = await answerer.answer(make_request(), deltas)
    finally:
        await answerer.close()
    assert deltas.text == "You can return"  # streamed before the server hung
    assert answer.fallback and answer.text == extractive_text()
    assert len(fake_llm.requests) == 1
    assert sample("warmline_llm_fallback_total", reason="mid_stream") == before + 1


async def test_server_errors_are_retried_then_succeed(fake_llm: FakeLLM) -> None:
    fake_llm.script(reply="Yes [1].", fail_times=2)
    answerer = make_answerer(fake_llm)
    before = sample("warmline_llm_retries_total", reason="http_5xx")
    deltas = Deltas()
    try:
        answer = await answerer.answer(make_request(), deltas)
    finally:
        await answerer.close()
    assert not answer.fallback and answer.text == deltas.text == "Yes [1]."
    assert len(fake_llm.requests) == 3
    assert sample("warmline_llm_retries_total", reason="http_5xx") == before + 2
    assert answerer.breaker.state(0.0) == CLOSED


async def test_persistent_server_errors_fall_back(fake_llm: FakeLLM) -> None:
    fake_llm.script(fail_times=10, fail_status=503)
    answerer = make_answerer(fake_llm)
    deltas = Deltas()
    try:
        answer = await answerer.answer(make_request(), deltas)
    finally:
        await answerer.close()
    assert len(fake_llm.requests) == FAST_RETRY.max_attempts
    assert answer.fallback and deltas.text == answer.text == extractive_text()


async def test_client_errors_are_not_retried(fake_llm: FakeLLM) -> None:
    fake_llm.script(fail_times=10, fail_status=400)
    answerer = make_answerer(fake_llm)
    try:
        answer = await answerer.answer(make_request(), Deltas())
    finally:
        await answerer.close()
    assert len(fake_llm.requests) == 1 and answer.fallback


async def test_empty_reply_is_retried_then_falls_back(fake_llm: FakeLLM) -> None:
    fake_llm.script(tokens=())
    answerer = make_answerer(fake_llm)
    try:
        answer = await answerer.answer(make_request(), Deltas())
    finally:
        await answerer.close()
    assert len(fake_llm.requests) == FAST_RETRY.max_attempts and answer.fallback


async def test_unreachable_server_falls_back() -> None:
    with FakeLLM() as server:
        url = server.url
    client = openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0)
    answerer = OpenAIAnswerer(
        client, model_small="m", model_large="", fallback=ExtractiveAnswerer(), retry=FAST_RETRY
    )
    try:
        answer = await answerer.answer(make_request(), Deltas())
    finally:
        await answerer.close()
    assert answer.fallback and answer.text == extractive_text()


async def test_breaker_opens_skips_the_llm_and_half_opens_later(fake_llm: FakeLLM) -> None:
    now = [1000.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=30.0)
    answerer = make_answerer(fake_llm, breaker=breaker, retry=NO_RETRY, clock=lambda: now[0])
    fake_llm.script(fail_times=2)
    before = sample("warmline_llm_fallback_total", reason="breaker_open")
    try:
        for _ in range(2):
            assert (await answerer.answer(make_request(), Deltas())).fallback
        assert breaker.state(now[0]) == OPEN
        assert sample("warmline_llm_breaker_open") == 1.0

        answer = await answerer.answer(make_request(), Deltas())
        assert answer.fallback and len(fake_llm.requests) == 2  # no request while open
        assert sample("warmline_llm_fallback_total", reason="breaker_open") == before + 1

        now[0] += 30.0
        assert breaker.state(now[0]) == HALF_OPEN
        answer = await answerer.answer(make_request(), Deltas())  # the probe, which succeeds
        assert not answer.fallback and len(fake_llm.requests) == 3
        assert breaker.state(now[0]) == CLOSED
        assert sample("warmline_llm_breaker_open") == 0.0
    finally:
        await answerer.close()


async def test_no_hits_means_no_model_call(fake_llm: FakeLLM) -> None:
    answerer = make_answerer(fake_llm)
    deltas = Deltas()
    try:
        answer = await answerer.answer(make_request(hits=()), deltas)
    finally:
        await answerer.close()
    assert fake_llm.requests == []
    assert not answer.grounded and not answer.fallback and deltas.text == NOT_FOUND_TEXT


async def test_on_delta_errors_propagate_and_do_not_trip_the_breaker(fake_llm: FakeLLM) -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    answerer = make_answerer(fake_llm, breaker=breaker)

    async def broken(piece: str) -> None:
        raise ConnectionResetError("customer went away")

    try:
        with pytest.raises(ConnectionResetError):
            await answerer.answer(make_request(), broken)
    finally:
        await answerer.close()
    assert len(fake_llm.requests) == 1 and breaker.allow(0.0)


async def test_cancellation_propagates_and_frees_the_probe(fake_llm: FakeLLM) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=0.0)
    breaker.record_failure(0.0)  # half-open at once: this answer is the probe
    fake_llm.script(hang=True)
    answerer = make_answerer(fake_llm, breaker=breaker, clock=lambda: 1.0)
    task = asyncio.create_task(answerer.answer(make_request(), Deltas()))
    try:
        assert await asyncio.to_thread(fake_llm.wait_for_requests, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await answerer.close()
    assert breaker.allow(1.0)  # no verdict: the next answer may probe


async def test_factory_builds_from_config(fake_llm: FakeLLM) -> None:
    plain = build_answerer(Config())
    assert isinstance(plain, ExtractiveAnswerer)
    await plain.close()

    fake_llm.script(reply="Yes [1].")
    config = Config(llm_base_url=fake_llm.url, llm_model_small="s", llm_timeout_s=5.0)
    answerer = build_answerer(config)
    assert isinstance(answerer, OpenAIAnswerer)
    try:
        answer = await answerer.answer(make_request(), Deltas())
    finally:
        await answerer.close()
        await answerer.close()  # idempotent
    assert answer.text == "Yes [1]." and fake_llm.requests[-1]["model"] == "s"


async def test_fake_server_also_answers_without_streaming(fake_llm: FakeLLM) -> None:
    fake_llm.script(reply="Plain answer.")
    client = openai.AsyncOpenAI(base_url=fake_llm.url, api_key="test", max_retries=0)
    try:
        completion = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        await client.close()
    assert completion.choices[0].message.content == "Plain answer."
    assert completion.choices[0].finish_reason == "stop"
