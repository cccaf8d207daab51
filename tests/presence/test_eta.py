"""Place in line and estimated wait."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presence.eta import average_handle_time, estimate_wait


def test_handle_time_defaults_until_three_samples() -> None:
    assert average_handle_time([], 180.0) == 180.0
    assert average_handle_time([60.0, 90.0], 180.0) == 180.0
    assert average_handle_time([60.0, 90.0, 120.0], 180.0) == 90.0


def test_handle_time_ignores_non_positive_samples() -> None:
    assert average_handle_time([0.0, -5.0, 60.0, 90.0], 180.0) == 180.0
    assert average_handle_time([0.0, -5.0, 60.0, 90.0, 300.0], 180.0) == 90.0


def test_handle_time_is_the_median_so_one_forgotten_conversation_does_not_skew_it() -> None:
    assert average_handle_time([60.0, 60.0, 60.0, 86_400.0], 180.0) == 60.0
    assert average_handle_time([10.0, 20.0, 30.0, 40.0], 180.0) == 25.0
    assert isinstance(average_handle_time([1, 2, 3], 5.0), float)


@pytest.mark.parametrize(
    ("position", "capacity", "free", "handle", "expected"),
    [
        (1, 4, 1, 100.0, 0),  # a free slot now
        (3, 4, 3, 100.0, 0),
        (0, 0, 0, 100.0, 0),  # position 0 is not in line
        (4, 4, 3, 100.0, 100),  # first after the free slots: one handle time
        (1, 2, 0, 100.0, 100),
        (2, 2, 0, 100.0, 100),  # two slots turn over per handle time
        (3, 2, 0, 100.0, 200),
        (5, 2, 1, 100.0, 200),  # 4 ahead of the free one, 2 per round
        (3, 0, 0, 60.0, 180),  # nobody staffed: a handle time per place
        (3, 0, 5, 60.0, 0),
        (2, 1, 0, 90.5, 181),
    ],
)
def test_estimate_wait(
    position: int, capacity: int, free: int, handle: float, expected: int
) -> None:
    result = estimate_wait(position, capacity, free, handle)
    assert result == expected
    assert isinstance(result, int)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    position=st.integers(1, 200),
    capacity=st.integers(0, 50),
    free=st.integers(0, 50),
    handle=st.floats(1.0, 10_000.0),
)
def test_estimate_never_decreases_with_position_nor_increases_with_capacity(
    position: int, capacity: int, free: int, handle: float
) -> None:
    wait = estimate_wait(position, capacity, free, handle)
    assert wait >= 0
    assert estimate_wait(position + 1, capacity, free, handle) >= wait
    assert estimate_wait(position, capacity + 1, free, handle) <= wait
    assert estimate_wait(position, capacity, free + 1, handle) <= wait
