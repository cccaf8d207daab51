"""Prometheus metrics of the server (the LLM's own are in llm/metrics.py)."""

from __future__ import annotations

from functools import cache

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("warmline_connections", "Open client connections", ["role", "transport"])
FRAMES_IN = Counter("warmline_frames_in_total", "Frames received", ["role"])
FRAMES_OUT = Counter("warmline_frames_out_total", "Frames sent", ["role"])
DELIVERY_LATENCY = Histogram(
    "warmline_delivery_latency_seconds",
    "From an event's store time to its write on a client socket",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TRANSITIONS = Counter(
    "warmline_transitions_total", "State transitions applied", ["from_state", "to_state"]
)
QUEUE_DEPTH = Gauge("warmline_queue_depth", "Queued conversations", ["tenant"])
QUEUE_WAIT = Histogram(
    "warmline_queue_wait_seconds",
    "Time from queued to assigned",
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800),
)
AGENTS = Gauge("warmline_agents", "Agents by presence status", ["tenant", "status"])
RETRIEVAL_LATENCY = Histogram(
    "warmline_retrieval_latency_seconds",
    "Knowledge-base search time",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1),
)
RATE_LIMITED = Counter(
    "warmline_rate_limited_total", "Frames refused or dropped by rate limits", ["kind"]
)
ERRORS = Counter("warmline_errors_total", "Error frames and responses by code", ["code"])
BUS_RECONNECTS = Gauge("warmline_bus_reconnects", "Times the bus reconnected to its backend")
SLOW_CONSUMERS = Counter("warmline_slow_consumers_total", "Connections cut off for falling behind")


# The labelled children that are counted on every frame, looked up once per label value
# rather than through `labels()` (a lock and a dict of tuples) each time.
@cache
def frames_in(role: str) -> Counter:
    return FRAMES_IN.labels(role)


@cache
def frames_out(role: str) -> Counter:
    return FRAMES_OUT.labels(role)


@cache
def errors(code: str) -> Counter:
    return ERRORS.labels(code)
