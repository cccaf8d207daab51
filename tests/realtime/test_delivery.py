"""Resequencer: deliver in order, drop duplicates, fill gaps from the store."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from realtime.delivery import DELIVER, DROP, FILL_GAP, Resequencer


def test_in_order_is_delivered() -> None:
    r = Resequencer()
    for seq in range(1, 6):
        assert r.offer(seq) == DELIVER
        r.delivered(seq)
    assert r.last_seq == 5


def test_duplicates_and_old_events_are_dropped() -> None:
    r = Resequencer(last_seq=5)
    assert r.offer(5) == DROP
    assert r.offer(1) == DROP
    assert r.offer(0) == DROP
    assert r.offer(-1) == DROP


def test_a_gap_asks_for_a_fill() -> None:
    r = Resequencer(last_seq=3)
    assert r.offer(5) == FILL_GAP
    assert r.offer(100) == FILL_GAP
    assert r.offer(4) == DELIVER


def test_offer_changes_nothing() -> None:
    r = Resequencer(last_seq=3)
    for seq in (1, 3, 4, 9):
        r.offer(seq)
        r.offer(seq)
    assert r.last_seq == 3


def test_delivered_never_moves_backwards() -> None:
    r = Resequencer(last_seq=7)
    r.delivered(3)
    assert r.last_seq == 7
    r.delivered(9)  # a fill delivered everything up to 9
    assert r.last_seq == 9
    assert r.offer(8) == DROP
    assert r.offer(10) == DELIVER


def test_resume_starts_after_the_clients_last_seq() -> None:
    r = Resequencer(last_seq=41)
    assert r.offer(41) == DROP
    assert r.offer(42) == DELIVER


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 30),
    start=st.integers(0, 5),
    arrivals=st.lists(st.integers(1, 35), max_size=80),
)
def test_any_arrival_order_delivers_each_seq_once_in_order(
    n: int, start: int, arrivals: list[int]
) -> None:
    """Bus messages arrive late, twice or never; a final fill catches up from the store."""
    store = list(range(1, n + 1))  # what the store holds
    r = Resequencer(last_seq=start)
    seen: list[int] = []

    def fill() -> None:
        for seq in store:
            if r.offer(seq) == DELIVER:
                seen.append(seq)
                r.delivered(seq)

    for seq in arrivals:
        if seq > n:
            continue  # not stored yet: a live event is always stored first
        action = r.offer(seq)
        if action == DELIVER:
            seen.append(seq)
            r.delivered(seq)
        elif action == FILL_GAP:
            fill()
    fill()
    assert seen == list(range(start + 1, n + 1))
    assert r.last_seq == max(n, start)
