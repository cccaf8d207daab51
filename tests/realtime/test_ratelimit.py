"""TokenBucket: refill by elapsed time, take or refuse, with explicit clocks."""

from __future__ import annotations

import math

import pytest

from realtime.ratelimit import TokenBucket


def test_starts_full() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=3.0)
    assert [bucket.take(now=1000.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(now=1000.0) == pytest.approx(1.0)


def test_refusal_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=5.0)
    for _ in range(5):
        assert bucket.take(now=10.0) == 0.0
    assert bucket.take(now=10.0) == pytest.approx(0.5)
    assert bucket.take(now=10.25) == pytest.approx(0.25)  # half a token there by now
    assert bucket.take(now=10.5) == 0.0


def test_refusal_takes_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1.0)
    assert bucket.take(now=0.0) == 0.0
    for _ in range(5):
        assert bucket.take(now=0.5) == pytest.approx(0.5)
    assert bucket.take(now=1.0) == 0.0


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=3.0)
    bucket.take(now=0.0)
    assert bucket.take(now=3600.0) == 0.0
    assert bucket.tokens == pytest.approx(2.0)
    assert bucket.take(now=3600.0) == 0.0
    assert bucket.take(now=3600.0) == 0.0
    assert bucket.take(now=3600.0) == pytest.approx(0.1)


def test_refill_math() -> None:
    bucket = TokenBucket(rate_per_s=0.5, burst=4.0)
    for _ in range(4):
        bucket.take(now=100.0)
    assert bucket.tokens == 0.0
    assert bucket.take(now=101.0) == pytest.approx(1.0)  # 0.5 there, 0.5 missing at 0.5/s
    assert bucket.tokens == pytest.approx(0.5)
    assert bucket.take(now=102.0) == 0.0
    assert bucket.tokens == pytest.approx(0.0)
    assert bucket.updated_at == 102.0


def test_cost() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=10.0)
    assert bucket.take(now=0.0, cost=7.0) == 0.0
    assert bucket.take(now=0.0, cost=5.0) == pytest.approx(2.0)
    assert bucket.take(now=2.0, cost=5.0) == 0.0


def test_steady_rate_is_sustained() -> None:
    # Times are multiples of 1/8 so the float arithmetic is exact.
    bucket = TokenBucket(rate_per_s=4.0, burst=1.0)
    allowed = sum(bucket.take(now=t / 8) == 0.0 for t in range(80))  # 10 s, 8 tries/s
    assert allowed == 40


def test_zero_rate_never_refills() -> None:
    bucket = TokenBucket(rate_per_s=0.0, burst=1.0)
    assert bucket.take(now=0.0) == 0.0
    assert math.isinf(bucket.take(now=1e9))


def test_a_clock_going_backwards_grants_nothing() -> None:
    """Time already counted is never counted twice, even if `now` steps back (clock skew
    between nodes sharing a bucket, or a wall clock instead of a monotonic one)."""
    bucket = TokenBucket(rate_per_s=1.0, burst=2.0)
    bucket.take(now=100.0)
    bucket.take(now=100.0)
    assert bucket.take(now=90.0) > 0  # no refill for negative elapsed time
    # Back at 100: no time has really passed since the bucket was emptied.
    assert bucket.take(now=100.0) > 0
