"""Pure numbers: percentiles, step plans, saturation, medians of runs, markdown tables.

No I/O and no clocks here, so everything is unit-tested with plain values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], not {q!r}")
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(sorted_values[low])
    weight = position - low
    return float(sorted_values[low] * (1 - weight) + sorted_values[high] * weight)


def latency_summary(values: Iterable[float]) -> dict[str, float]:
    """count, mean, p50, p95, p99 and max of latencies (already in milliseconds)."""
    ordered = sorted(values)
    if not ordered:
        nan = math.nan
        return {"count": 0, "mean": nan, "p50": nan, "p95": nan, "p99": nan, "max": nan}
    return {
        "count": len(ordered),
        "mean": sum(ordered) / len(ordered),
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
    }


def plan_step(target_per_s: float, max_rate_per_side: float) -> tuple[int, float]:
    """Conversations and per-connection rate that offer `target_per_s` messages in total.

    Each conversation has two senders (customer and agent); each stays at or under
    `max_rate_per_side` so the server's per-connection rate limit never refuses a message,
    and the total is scaled by adding conversations.
    """
    if target_per_s <= 0 or max_rate_per_side <= 0:
        raise ValueError("rates must be positive")
    conversations = max(1, math.ceil(target_per_s / (2 * max_rate_per_side)))
    return conversations, target_per_s / (2 * conversations)


def cpu_ms_per_message(cpu_percent: float, messages_per_s: float) -> float:
    """CPU milliseconds per message from a CPU share (percent of one core) and a rate."""
    if messages_per_s <= 0 or math.isnan(cpu_percent):
        return math.nan
    return 10.0 * cpu_percent / messages_per_s


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` items over `parts` workers, round robin (item i goes to worker i % parts)."""
    if parts <= 0:
        raise ValueError("parts must be positive")
    return [len(range(index, total, parts)) for index in range(parts)]


def is_saturated(
    offered_per_s: float,
    delivered_per_s: float,
    p99_ms: float,
    lost: int,
    sent: int,
    *,
    min_delivered_ratio: float = 0.9,
    p99_limit_ms: float = 1000.0,
    max_lost_ratio: float = 0.01,
) -> bool:
    """A step is past saturation when the system no longer keeps up with what is offered."""
    if offered_per_s > 0 and delivered_per_s < min_delivered_ratio * offered_per_s:
        return True
    if not math.isnan(p99_ms) and p99_ms > p99_limit_ms:
        return True
    return sent > 0 and lost > max_lost_ratio * sent


def should_stop(delivered: Sequence[float], saturated: Sequence[bool], patience: int = 2) -> bool:
    """Stop stepping up after a saturated step, or when `patience` steps in a row gained
    less than 3 % over the best throughput seen before them."""
    if saturated and saturated[-1]:
        return True
    if len(delivered) <= patience:
        return False
    best_before = max(delivered[:-patience])
    return all(d < best_before * 1.03 for d in delivered[-patience:])


def median_or_nan(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def median_runs(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-key median of the numeric headline metrics of several runs."""
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run if k not in keys)
    return {
        key: median_or_nan([float(run[key]) for run in runs if key in run]) for key in keys
    }


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(cell) for cell in row) + " |")
    return "\n".join(lines)


def check_target(value: float, limit: float, higher_is_better: bool) -> bool:
    if math.isnan(value):
        return False
    return value >= limit if higher_is_better else value <= limit
