"""The load generator's pure parts: percentiles, step plans, saturation, /proc parsing."""

from __future__ import annotations

import math

import pytest

from bench.loadkit.procstat import (
    parse_machine_busy_ticks,
    parse_stat_cpu_ticks,
    parse_status_kib,
)
from bench.loadkit.stats import (
    check_target,
    fmt,
    is_saturated,
    latency_summary,
    markdown_table,
    median_runs,
    percentile,
    plan_step,
    should_stop,
    split_evenly,
)


def test_percentile_interpolates() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_latency_summary() -> None:
    summary = latency_summary(float(x) for x in range(1, 101))
    assert summary["count"] == 100
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["max"] == 100.0
    assert math.isnan(latency_summary([])["p99"])


def test_plan_step_scales_by_conversations_under_the_per_connection_rate() -> None:
    assert plan_step(1000, 4.0) == (125, 4.0)
    conversations, rate = plan_step(1001, 4.0)
    assert conversations == 126 and rate <= 4.0
    assert 2 * conversations * rate == pytest.approx(1001)
    assert plan_step(3, 4.0) == (1, 1.5)
    with pytest.raises(ValueError):
        plan_step(0, 4.0)


def test_split_evenly_matches_round_robin() -> None:
    assert split_evenly(5, 2) == [3, 2]
    assert split_evenly(1, 3) == [1, 0, 0]
    assert sum(split_evenly(1001, 7)) == 1001


def test_saturation_rules() -> None:
    assert not is_saturated(1000, 995, 12.0, 0, 10_000)
    assert is_saturated(1000, 800, 12.0, 0, 10_000)  # falls behind
    assert is_saturated(1000, 1000, 1500.0, 0, 10_000)  # queues build up
    assert is_saturated(1000, 1000, 12.0, 500, 10_000)  # messages not delivered
    assert not is_saturated(1000, 1000, math.nan, 0, 0)


def test_should_stop() -> None:
    assert should_stop([100, 200], [False, True])
    assert not should_stop([100, 200, 400], [False] * 3)
    assert should_stop([100, 400, 405, 410], [False] * 4)  # plateau for two steps
    assert not should_stop([100, 400, 405, 500], [False] * 4)


def test_median_runs_and_targets() -> None:
    runs = [{"a": 1.0, "b": 10.0}, {"a": 3.0, "b": math.nan}, {"a": 2.0}]
    medians = median_runs(runs)
    assert medians["a"] == 2.0
    assert medians["b"] == 10.0
    assert check_target(0.7, 0.6, True) and not check_target(30.0, 25.0, False)
    assert not check_target(math.nan, 1.0, True)


def test_markdown() -> None:
    table = markdown_table(["x", "y"], [[1234.5, math.nan], [0.123, True]])
    assert table.splitlines()[2] == "| 1,234 | n/a |"
    assert table.splitlines()[3] == "| 0.12 | yes |"
    assert fmt(12_000) == "12,000"


def test_proc_parsers() -> None:
    status = "Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"
    assert parse_status_kib(status, "VmRSS") == 1024
    assert parse_status_kib(status, "VmHWM") == 2048
    stat = "42 (py thon) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3"
    assert parse_stat_cpu_ticks(stat) == 300
    assert parse_machine_busy_ticks("cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 ...") == 161
