"""Bookkeeping for long polls and per-conversation rate limits, as plain values.

Node-local on purpose: a poll's place in these tables matters only to the node holding the
request, and a bucket lost to a restart or another node only makes a limit more lenient.
"""

from __future__ import annotations

from collections import OrderedDict

from realtime.ratelimit import TokenBucket
from warmline.errors import RateLimited

MAX_POLLS_PER_IP = 50
MAX_BUCKETS = 10_000


class PollLimiter:
    """One live poll per token (the newest wins) and at most `per_ip` per client address."""

    def __init__(self, per_ip: int = MAX_POLLS_PER_IP) -> None:
        self.per_ip = per_ip
        self._by_token: dict[str, str] = {}  # token key -> live poll id
        self._polls: dict[str, tuple[str, str]] = {}  # poll id -> (token key, ip)
        self._per_ip_count: dict[str, int] = {}

    def admit(self, poll_id: str, token_key: str, ip: str) -> list[str]:
        """Register a poll; return the polls it displaces (to be released at once).

        Raises RateLimited when the address already holds too many polls. The poll being
        replaced does not count against its successor, so a client re-polling never trips it.
        """
        displaced = [p for p in (self._by_token.get(token_key),) if p is not None]
        held = self._per_ip_count.get(ip, 0) - sum(1 for p in displaced if self._polls[p][1] == ip)
        if held >= self.per_ip:
            raise RateLimited("too many open polls from this address", retry_after_s=1.0)
        for old in displaced:
            self.release(old)
        self._by_token[token_key] = poll_id
        self._polls[poll_id] = (token_key, ip)
        self._per_ip_count[ip] = self._per_ip_count.get(ip, 0) + 1
        return displaced

    def release(self, poll_id: str) -> None:
        """Forget a poll; a poll already displaced or released is ignored."""
        entry = self._polls.pop(poll_id, None)
        if entry is None:
            return
        token_key, ip = entry
        if self._by_token.get(token_key) == poll_id:
            del self._by_token[token_key]
        left = self._per_ip_count[ip] - 1
        if left:
            self._per_ip_count[ip] = left
        else:
            del self._per_ip_count[ip]

    def live_for(self, token_key: str) -> str | None:
        return self._by_token.get(token_key)

    def count_for_ip(self, ip: str) -> int:
        return self._per_ip_count.get(ip, 0)

    def __len__(self) -> int:
        return len(self._polls)


class RateBuckets:
    """Token buckets per (owner, kind), bounded: the least recently used are forgotten.

    Long polling has no connection to hang buckets on, so they are keyed by conversation and
    evicted instead of cleaned up on close. A forgotten bucket restarts full, which only
    errs on the lenient side.
    """

    def __init__(
        self, rates: dict[str, tuple[float, float]], max_entries: int = MAX_BUCKETS
    ) -> None:
        self._rates = rates
        self._max = max_entries
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()

    def take(self, owner: str, kind: str, now: float) -> float:
        """0.0 when allowed, else the seconds to wait (nothing is taken then)."""
        key = (owner, kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            rate, burst = self._rates[kind]
            bucket = self._buckets[key] = TokenBucket(rate, burst)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)
