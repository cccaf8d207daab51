from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm.resilience import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, RetryPolicy


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, base_s=0.5, cap_s=3.0)
    lows = [policy.delay(retry, 0.0) for retry in range(1, 7)]
    highs = [policy.delay(retry, 0.999999) for retry in range(1, 7)]
    assert lows == [0.25, 0.5, 1.0, 1.5, 1.5, 1.5]
    assert highs == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0, 3.0], rel=1e-5)


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0.0, max_value=0.999999))
def test_backoff_is_within_jitter_bounds(retry: int, rand: float) -> None:
    policy = RetryPolicy(base_s=0.1, cap_s=2.0)
    ceiling = min(2.0, 0.1 * 2 ** (retry - 1))
    assert ceiling / 2 <= policy.delay(retry, rand) <= ceiling


def test_retry_only_before_the_first_token_and_within_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(1, retriable=True, emitted=False)
    assert policy.should_retry(2, retriable=True, emitted=False)
    assert not policy.should_retry(3, retriable=True, emitted=False)
    assert not policy.should_retry(1, retriable=True, emitted=True)
    assert not policy.should_retry(1, retriable=False, emitted=False)


def test_breaker_opens_after_threshold_and_half_opens_later() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=10.0)
    for t in (0.0, 1.0):
        assert breaker.allow(t)
        breaker.record_failure(t)
        assert breaker.state(t) == CLOSED
    breaker.record_failure(2.0)
    assert breaker.state(2.0) == OPEN
    assert not breaker.allow(5.0)
    assert breaker.state(11.999) == OPEN
    assert breaker.state(12.0) == HALF_OPEN
    assert breaker.allow(12.0)  # the one probe
    assert not breaker.allow(12.5)  # everyone else waits for its verdict
    breaker.record_success(13.0)
    assert breaker.state(13.0) == CLOSED and breaker.allow(13.0)


def test_failed_probe_reopens_for_a_full_period() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10.0)
    breaker.record_failure(0.0)
    assert breaker.allow(10.0)
    breaker.record_failure(11.0)
    assert breaker.state(11.0) == OPEN
    assert breaker.state(20.9) == OPEN
    assert breaker.state(21.0) == HALF_OPEN


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=10.0)
    breaker.record_failure(0.0)
    breaker.record_success(1.0)
    breaker.record_failure(2.0)
    assert breaker.state(2.0) == CLOSED


def test_late_failure_does_not_extend_the_open_period() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10.0)
    breaker.record_failure(0.0)
    breaker.record_failure(9.0)  # a request that started before it opened
    assert breaker.state(10.0) == HALF_OPEN


def test_released_probe_lets_another_probe_in() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=1.0)
    breaker.record_failure(0.0)
    assert breaker.allow(1.0)
    breaker.release(1.5)  # the probe was cancelled: no verdict
    assert breaker.allow(1.6)


def test_breaker_rejects_a_bad_threshold() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
