"""Grounded, streamed answers from any OpenAI-compatible server, with a fallback answerer.

The pure parts (route, prompt, stream filter, retry policy, circuit breaker) live in their own
modules; this is the async shell that talks HTTP, sleeps and keeps time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from llm import metrics
from llm.base import NOT_FOUND_TEXT, Answer, Answerer, AnswerRequest, OnDelta, ignore_delta
from llm.prompt import PromptPolicy, build_messages
from llm.resilience import OPEN, CircuitBreaker, RetryPolicy
from llm.routing import DEFAULT_POLICY, RoutePolicy, choose_route
from llm.stream import StreamFilter
from warmline.config import Config
from warmline.errors import Unavailable, WarmlineError

log = logging.getLogger("warmline.llm")

_RETRIABLE_STATUS = frozenset({408, 409, 429})


class LLMFailure(Unavailable):
    """One failed attempt; `kind` labels metrics, `retriable` feeds the retry policy."""

    def __init__(self, kind: str, retriable: bool, message: str = "") -> None:
        super().__init__(message or f"llm {kind}", kind=kind)
        self.kind = kind
        self.retriable = retriable


class _CallerError(Exception):
    """Wraps an exception raised by on_delta so it is not mistaken for a model failure."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


class OpenAIAnswerer(Answerer):
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        model_small: str,
        model_large: str,
        fallback: Answerer,
        first_token_timeout_s: float = 8.0,
        total_timeout_s: float = 20.0,
        retry: RetryPolicy = RetryPolicy(),
        breaker: CircuitBreaker | None = None,
        route_policy: RoutePolicy = DEFAULT_POLICY,
        prompt_policy: PromptPolicy = PromptPolicy(),
        temperature: float = 0.2,
        max_tokens: int = 512,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        owns_client: bool = True,
    ) -> None:
        if not (model_small or model_large):
            raise WarmlineError("an LLM model name is required (WARMLINE_LLM_MODEL_SMALL/LARGE)")
        self._client = client
        # One model configured serves both routes; the route is still recorded.
        self._models = {"small": model_small or model_large, "large": model_large or model_small}
        self._fallback = fallback
        self._first_token_timeout_s = min(first_token_timeout_s, total_timeout_s)
        self._total_timeout_s = total_timeout_s
        self._retry = retry
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._route_policy = route_policy
        self._prompt_policy = prompt_policy
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._clock = clock
        self._rand = rand
        self._owns_client = owns_client
        self._closed = False

    @classmethod
    def from_config(cls, config: Config, fallback: Answerer) -> OpenAIAnswerer:
        client = openai.AsyncOpenAI(
            base_url=config.llm_base_url,
            # Local servers (Ollama, llama.cpp, vLLM) ignore the key, but the client wants one.
            api_key=config.llm_api_key or "unused",
            # Our own deadlines and retries govern; the client's are only a backstop.
            timeout=config.llm_timeout_s + 5.0,
            max_retries=0,
        )
        return cls(
            client,
            model_small=config.llm_model_small,
            model_large=config.llm_model_large,
            fallback=fallback,
            first_token_timeout_s=min(config.llm_first_token_timeout_s, config.llm_timeout_s),
            total_timeout_s=config.llm_timeout_s,
            retry=RetryPolicy(max_attempts=max(config.llm_max_attempts, 1)),
            breaker=CircuitBreaker(
                failure_threshold=max(config.llm_breaker_failures, 1),
                reset_after_s=config.llm_breaker_reset_s,
            ),
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._owns_client:
                await self._client.close()
        finally:
            await self._fallback.close()

    async def answer(self, request: AnswerRequest, on_delta: OnDelta) -> Answer:
        started = time.perf_counter()
        if not request.hits:
            # Nothing to ground an answer in: no model call, and not a failure either.
            answer = await self._fallback.answer(request, on_delta)
            metrics.observe_answer(answer, time.perf_counter() - started)
            return answer

        route = choose_route(request, self._route_policy)
        metrics.ROUTES.labels(route).inc()
        messages = build_messages(request, self._prompt_policy)
        # Citations can only name passages the model was shown.
        shown = request.hits[: self._prompt_policy.max_passages]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._total_timeout_s
        attempt = 0
        emitted = False
        reason = "error"
        while True:
            attempt += 1
            if not self.breaker.allow(self._clock()):
                reason = "breaker_open"
                break
            stream_filter = StreamFilter(shown)
            try:
                answer = await self._attempt(
                    self._models[route], messages, route, stream_filter, on_delta, deadline
                )
            except LLMFailure as failure:
                self.breaker.record_failure(self._clock())
                self._observe_breaker()
                emitted = stream_filter.emitted_any
                reason = failure.kind if not emitted else "mid_stream"
                log.warning(
                    "llm attempt %d failed (%s, route %s): %s",
                    attempt,
                    failure.kind,
                    route,
                    failure.message,
                )
                if not self._retry.should_retry(attempt, failure.retriable, emitted):
                    break
                delay = self._retry.delay(attempt, self._rand())
                if loop.time() + delay >= deadline:
                    break
                metrics.RETRIES.labels(failure.kind).inc()
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self.breaker.release(self._clock())
                raise
            self.breaker.record_success(self._clock())
            self._observe_breaker()
            metrics.observe_answer(answer, time.perf_counter() - started)
            return answer

        metrics.FALLBACKS.labels(reason).inc()
        # After a mid-stream failure the customer already saw part of an answer: the fallback's
        # text replaces it in the final message rather than being streamed after it.
        answer = await self._fallback.answer(request, ignore_delta if emitted else on_delta)
        answer = dataclasses.replace(answer, fallback=True)
        metrics.observe_answer(answer, time.perf_counter() - started)
        return answer

    async def _attempt(
        self,
        model: str,
        messages: list[dict[str, str]],
        route: str,
        stream_filter: StreamFilter,
        on_delta: OnDelta,
        deadline: float,
    ) -> Answer:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        first_token = False
        first_deadline = min(sent + self._first_token_timeout_s, deadline)
        try:
            async with asyncio.timeout_at(first_deadline) as scope:
                stream = await self._client.chat.completions.create(
                    model=model,
                    messages=cast(list[ChatCompletionMessageParam], messages),
                    stream=True,
                    temperature=self._temperature,
                    max_tokens=self._max_tokens,
                )
                async with stream:
                    async for chunk in stream:
                        piece = chunk.choices[0].delta.content if chunk.choices else None
                        if not piece:
                            continue
                        if not first_token:
                            first_token = True
                            metrics.TIME_TO_FIRST_TOKEN.labels(route).observe(loop.time() - sent)
                            scope.reschedule(deadline)
                        await _emit(on_delta, stream_filter.feed(piece))
                await _emit(on_delta, stream_filter.finish())
        except _CallerError as caller:
            raise caller.original from None
        except TimeoutError as exc:
            kind = "timeout_total" if first_token else "timeout_first_token"
            raise LLMFailure(kind, retriable=True) from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            retriable = status >= 500 or status in _RETRIABLE_STATUS
            raise LLMFailure(f"http_{status // 100}xx", retriable, str(exc)) from exc
        except openai.APIConnectionError as exc:  # APITimeoutError included
            raise LLMFailure("connection", retriable=True, message=str(exc)) from exc
        except openai.OpenAIError as exc:  # an error event mid-stream, a malformed response
            raise LLMFailure("api_error", retriable=True, message=str(exc)) from exc
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            # A server that is only almost OpenAI-compatible: answer from the fallback.
            raise LLMFailure("bad_response", retriable=False, message=repr(exc)) from exc

        if stream_filter.saw_sentinel:
            if not stream_filter.emitted_any:
                await _emit(on_delta, NOT_FOUND_TEXT)
                return Answer(NOT_FOUND_TEXT, (), grounded=False, route=route)
            return Answer(stream_filter.text, stream_filter.sources(), grounded=False, route=route)
        if not stream_filter.text.strip():
            raise LLMFailure("empty", retriable=True)
        return Answer(stream_filter.text, stream_filter.sources(), grounded=True, route=route)

    def _observe_breaker(self) -> None:
        metrics.BREAKER_OPEN.set(1.0 if self.breaker.state(self._clock()) == OPEN else 0.0)


async def _emit(on_delta: OnDelta, text: str) -> None:
    if not text:
        return
    try:
        await on_delta(text)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise _CallerError(exc) from exc
