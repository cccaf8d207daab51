"""One exception base for the whole service, one subclass per wire error code.

Lower layers raise these; the transports (WebSocket, long polling, HTTP API) translate them
into `error` frames or HTTP statuses at their boundary, so no layer below knows about sockets.
"""

from __future__ import annotations

from typing import ClassVar


class WarmlineError(Exception):
    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details


class BadRequest(WarmlineError):
    code = "bad_request"
    http_status = 400


class Unauthorized(WarmlineError):
    code = "unauthorized"
    http_status = 401


class Forbidden(WarmlineError):
    code = "forbidden"
    http_status = 403


class NotFound(WarmlineError):
    code = "not_found"
    http_status = 404


class Conflict(WarmlineError):
    code = "conflict"
    http_status = 409


class InvalidTransition(WarmlineError):
    code = "invalid_transition"
    http_status = 409


class RateLimited(WarmlineError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str = "", retry_after_s: float = 1.0) -> None:
        super().__init__(message or "rate limited", retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class TooLarge(WarmlineError):
    code = "too_large"
    http_status = 413


class Unavailable(WarmlineError):
    """A backing service (store, bus, LLM) cannot answer right now."""

    code = "internal"
    http_status = 503


ERROR_CODES = (
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "invalid_transition",
    "rate_limited",
    "too_large",
    "internal",
)
