"""Poll bookkeeping and rate buckets as plain values."""

from __future__ import annotations

import pytest

from fallback_longpoll.limits import PollLimiter, RateBuckets
from warmline.errors import RateLimited


def test_the_newest_poll_of_a_token_displaces_the_older() -> None:
    limiter = PollLimiter(per_ip=5)
    assert limiter.admit("p1", "tok", "1.1.1.1") == []
    assert limiter.admit("p2", "tok", "1.1.1.1") == ["p1"]
    assert limiter.live_for("tok") == "p2"
    assert limiter.count_for_ip("1.1.1.1") == 1
    # The displaced poll finishing later changes nothing.
    limiter.release("p1")
    assert limiter.live_for("tok") == "p2" and len(limiter) == 1
    limiter.release("p2")
    assert limiter.live_for("tok") is None and len(limiter) == 0
    assert limiter.count_for_ip("1.1.1.1") == 0


def test_other_tokens_are_independent() -> None:
    limiter = PollLimiter(per_ip=5)
    limiter.admit("p1", "a", "ip")
    assert limiter.admit("p2", "b", "ip") == []
    assert limiter.live_for("a") == "p1" and limiter.live_for("b") == "p2"


def test_per_ip_bound() -> None:
    limiter = PollLimiter(per_ip=3)
    for i in range(3):
        limiter.admit(f"p{i}", f"t{i}", "ip")
    with pytest.raises(RateLimited) as refused:
        limiter.admit("p9", "t9", "ip")
    assert refused.value.retry_after_s > 0
    assert len(limiter) == 3 and limiter.live_for("t9") is None
    # Other addresses are not affected.
    assert limiter.admit("q", "tq", "other") == []
    # A client re-polling its own token at the bound is not refused: its old poll makes room.
    assert limiter.admit("p0b", "t0", "ip") == ["p0"]
    assert limiter.count_for_ip("ip") == 3
    limiter.release("p1")
    assert limiter.admit("p9", "t9", "ip") == []


def test_a_token_moving_to_another_address() -> None:
    limiter = PollLimiter(per_ip=1)
    limiter.admit("p1", "tok", "a")
    limiter.admit("p2", "other", "b")
    # The older poll is at address a: it does not make room at b.
    with pytest.raises(RateLimited):
        limiter.admit("p3", "tok", "b")
    assert limiter.live_for("tok") == "p1"
    assert limiter.admit("p4", "tok", "a") == ["p1"]


def test_buckets_limit_and_refill() -> None:
    buckets = RateBuckets({"message": (1.0, 2.0)})
    assert buckets.take("c1", "message", 0.0) == 0
    assert buckets.take("c1", "message", 0.0) == 0
    assert buckets.take("c1", "message", 0.0) == pytest.approx(1.0)
    assert buckets.take("c2", "message", 0.0) == 0  # per owner
    assert buckets.take("c1", "message", 1.0) == 0  # refilled


def test_buckets_stay_bounded_evicting_the_least_recently_used() -> None:
    buckets = RateBuckets({"message": (1.0, 1.0)}, max_entries=2)
    buckets.take("a", "message", 0.0)
    buckets.take("b", "message", 0.0)
    buckets.take("a", "message", 0.0)  # a used again: b is now the oldest
    buckets.take("c", "message", 0.0)
    assert len(buckets) == 2
    assert buckets.take("a", "message", 0.0) > 0  # still remembered, still empty
    assert buckets.take("b", "message", 0.0) == 0  # forgotten: starts full again
