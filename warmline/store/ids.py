"""Identifiers and token hashing shared by every store backend."""

from __future__ import annotations

import hashlib
import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(12)}"


def new_agent_token() -> str:
    # 32 random bytes = 256 bits, URL-safe so it fits in headers and query strings.
    return "wla_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens are high-entropy random strings, so a fast hash is enough (no password stretching).
    return hashlib.sha256(token.encode()).hexdigest()


def client_key(author: dict[str, object] | object, client_id: str) -> str:
    """Idempotency key of a client message: one per author and client id."""
    if isinstance(author, dict):
        return f"{author.get('role')}:{author.get('id')}:{client_id}"
    return f"?:{client_id}"
