"""Pure failure policies: retry backoff and a circuit breaker over a clock value passed in."""

from __future__ import annotations

from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with equal jitter (half fixed, half random), as redis-py's
    EqualJitterBackoff: spreads retries of many conversations without ever retrying at once."""

    max_attempts: int = 3  # attempts in all, the first one included
    base_s: float = 0.25
    cap_s: float = 4.0

    def delay(self, retry: int, rand: float) -> float:
        """Sleep before retry number `retry` (1 = first retry); `rand` is uniform in [0, 1)."""
        ceiling = min(self.cap_s, self.base_s * (2 ** max(retry - 1, 0)))
        return ceiling / 2 + ceiling / 2 * rand

    def should_retry(self, attempt: int, retriable: bool, emitted: bool) -> bool:
        """After attempt number `attempt` (1-based) failed. Once a token reached the customer a
        retry would repeat or contradict it, so only failures before the first token retry."""
        return retriable and not emitted and attempt < self.max_attempts


class CircuitBreaker:
    """closed -> (threshold consecutive failures) -> open -> (reset_after_s) -> half-open, where
    one probe at a time is allowed: its success closes, its failure opens again."""

    def __init__(self, failure_threshold: int = 5, reset_after_s: float = 30.0) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    def state(self, now: float) -> str:
        if self._opened_at is None:
            return CLOSED
        if now - self._opened_at >= self.reset_after_s:
            return HALF_OPEN
        return OPEN

    def allow(self, now: float) -> bool:
        """May a request start now? In half-open this admits the one probe."""
        state = self.state(now)
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self, now: float) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self, now: float) -> None:
        self._failures += 1
        if self._probing:
            self._opened_at = now  # the probe failed: wait a full period again
        elif self._opened_at is None and self._failures >= self.failure_threshold:
            self._opened_at = now
        # A request that started before the breaker opened and fails late must not extend the
        # open period, or a busy service would never get probed.
        self._probing = False

    def release(self, now: float) -> None:
        """A request ended with neither success nor failure (cancelled): free the probe slot."""
        self._probing = False
