"""Pure request parsing for long polling: bodies, session tokens, poll parameters."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

from realtime import protocol
from warmline.errors import BadRequest, TooLarge, Unauthorized
from warmline.limits import require_utf8

Frame = protocol.Frame

POLL_TIMEOUT_S = 25.0  # the contract's longest wait; a test may ask for less, never more
MAX_TOKEN_CHARS = 512


def parse_body(raw: bytes, max_bytes: int) -> Frame:
    """One JSON frame from a request body; TooLarge or BadRequest when it is not one."""
    if len(raw) > max_bytes:
        raise TooLarge(f"body larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("the body must be UTF-8 JSON") from exc
    frame = protocol.decode(text, False, max_bytes)
    require_utf8(frame, text)  # JSON escapes can still spell lone surrogates
    return frame


def check_frame(frame: Frame, max_text_chars: int) -> Frame:
    """The WebSocket's validation, plus the session token that HTTP frames may carry."""
    protocol.validate(frame, protocol.CUSTOMER_FRAMES, max_text_chars)
    token = frame.get("token")
    if token is not None and (not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS):
        raise BadRequest(f"'token' must be a string of at most {MAX_TOKEN_CHARS} characters")
    return frame


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def session_token(frame: Frame, authorization: str | None) -> str | None:
    """The body's `token` first (a widget without custom headers), then the bearer header."""
    token = frame.get("token")
    if isinstance(token, str) and token:
        return token
    return bearer(authorization)


def token_key(token: str) -> str:
    """What identifies a token on the bus and in bookkeeping without revealing it."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class PollParams:
    token: str
    after: int
    timeout_s: float


def parse_poll(query: Mapping[str, str], authorization: str | None) -> PollParams:
    token = query.get("token") or bearer(authorization)
    if not token:
        raise Unauthorized("a session token is required (query 'token' or a bearer header)")
    if len(token) > MAX_TOKEN_CHARS:
        raise BadRequest(f"'token' must be at most {MAX_TOKEN_CHARS} characters")
    raw_after = query.get("after", "0") or "0"
    try:
        after = int(raw_after)
    except ValueError:
        raise BadRequest("'after' must be a whole number") from None
    if after < 0:
        raise BadRequest("'after' must be >= 0")
    timeout_s = POLL_TIMEOUT_S
    raw_timeout = query.get("timeout")
    if raw_timeout:
        try:
            timeout_s = float(raw_timeout)
        except ValueError:
            raise BadRequest("'timeout' must be a number of seconds") from None
        if not math.isfinite(timeout_s) or timeout_s < 0:
            raise BadRequest("'timeout' must be a number of seconds >= 0")
        timeout_s = min(timeout_s, POLL_TIMEOUT_S)
    return PollParams(token, after, timeout_s)
