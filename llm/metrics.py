"""Prometheus metrics of answer generation (default registry, one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from llm.base import Answer

TIME_TO_FIRST_TOKEN = Histogram(
    "warmline_llm_time_to_first_token_seconds",
    "From sending the request to the first streamed answer token, per model route.",
    ["route"],
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0),
)
ANSWER_DURATION = Histogram(
    "warmline_answer_duration_seconds",
    "Whole answer time, retries and fallback included, by the route that answered.",
    ["route", "fallback"],
    buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0),
)
ROUTES = Counter(
    "warmline_answer_route_total",
    "Answers by route: the model chosen by difficulty, or extractive with no LLM configured.",
    ["route"],
)
FALLBACKS = Counter(
    "warmline_llm_fallback_total",
    "LLM answers replaced by the fallback answerer, by reason.",
    ["reason"],
)
RETRIES = Counter("warmline_llm_retries_total", "LLM request attempts retried.", ["reason"])
BREAKER_OPEN = Gauge(
    "warmline_llm_breaker_open", "1 while the LLM circuit breaker rejects requests (open)."
)


def observe_answer(answer: Answer, duration_s: float) -> None:
    ANSWER_DURATION.labels(answer.route, "true" if answer.fallback else "false").observe(duration_s)
    if answer.route == "extractive" and not answer.fallback:
        ROUTES.labels("extractive").inc()
