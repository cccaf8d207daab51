"""The retry policy is pure: every property is checked over plain numbers, no clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmline.backoff import Backoff, sleep


def test_ceiling_doubles_then_stays_at_cap() -> None:
    policy = Backoff(base=0.1, cap=1.0)
    assert [policy.ceiling(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_full_jitter_spans_zero_to_ceiling() -> None:
    policy = Backoff(base=0.5, cap=4.0)
    assert policy.delay(2, 0.0) == 0.0
    assert policy.delay(2, 1.0) == 2.0
    assert policy.delay(2, 0.25) == 0.5


def test_huge_attempt_counts_saturate_instead_of_overflowing() -> None:
    policy = Backoff(base=0.05, cap=3.0)
    assert policy.ceiling(10_000) == 3.0
    assert policy.ceiling(2**62) == 3.0


@pytest.mark.parametrize(
    ("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.5), (math.inf, math.inf), (0.1, math.nan)]
)
def test_rejects_nonsense_settings(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base=base, cap=cap)


def test_rejects_bad_arguments() -> None:
    policy = Backoff()
    with pytest.raises(ValueError):
        policy.ceiling(-1)
    with pytest.raises(ValueError):
        policy.delay(0, 1.5)
    with pytest.raises(ValueError):
        policy.delay(0, -0.1)


@given(
    base=st.floats(min_value=1e-4, max_value=10.0),
    extra=st.floats(min_value=0.0, max_value=100.0),
    attempt=st.integers(min_value=0, max_value=200),
    rand=st.floats(min_value=0.0, max_value=1.0),
)
def test_delay_is_bounded_and_ceiling_monotonic(
    base: float, extra: float, attempt: int, rand: float
) -> None:
    policy = Backoff(base=base, cap=base + extra)
    delay = policy.delay(attempt, rand)
    assert 0.0 <= delay <= policy.ceiling(attempt) <= policy.cap
    assert policy.ceiling(attempt) <= policy.ceiling(attempt + 1)
    assert policy.ceiling(attempt) >= min(policy.cap, base)


async def test_sleep_uses_the_policy() -> None:
    slept = await sleep(Backoff(base=0.001, cap=0.001), 3, rand=lambda: 0.5)
    assert slept == 0.0005
