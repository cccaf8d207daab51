"""Token buckets as plain values: refill by elapsed time, take or refuse. No clocks inside."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: float
    tokens: float = -1.0
    updated_at: float = 0.0

    def take(self, now: float, cost: float = 1.0) -> float:
        """0.0 when allowed (tokens taken), else the seconds until `cost` tokens are there."""
        if self.tokens < 0:
            self.tokens, self.updated_at = self.burst, now
        elapsed = max(now - self.updated_at, 0.0)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate_per_s)
        # A clock stepping back must not make the same interval count twice later.
        self.updated_at = max(self.updated_at, now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate_per_s if self.rate_per_s > 0 else float("inf")
