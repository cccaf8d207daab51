"""Customer session tokens: HMAC-signed over tenant and conversation, with expiry.

Several keys may be active: the first signs, every one verifies, so a key can be rotated by
putting the new one first and dropping the old one after the token lifetime, without logging
anybody out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass

from warmline.errors import Unauthorized


@dataclass(frozen=True)
class SessionClaims:
    tenant: str
    conversation_id: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


class SessionSigner:
    def __init__(self, keys: Sequence[bytes], ttl_s: float) -> None:
        if not keys:
            raise ValueError("at least one signing key is required")
        self._keys = {key_id(k): k for k in keys}
        self._current = key_id(keys[0])
        self._ttl_s = ttl_s

    def issue(self, tenant: str, conversation_id: str, now: float) -> str:
        payload = {
            "t": tenant,
            "c": conversation_id,
            "e": int(now + self._ttl_s),
            "k": self._current,
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._sign(self._current, body)}"

    def _sign(self, kid: str, body: str) -> str:
        digest = hmac.new(self._keys[kid], body.encode(), hashlib.sha256).digest()
        return _b64(digest)

    def verify(self, token: object, now: float) -> SessionClaims:
        if (
            not isinstance(token, str)
            or token.count(".") != 1
            or len(token) > 512
            or not token.isascii()
        ):
            raise Unauthorized("malformed session token")
        body, signature = token.split(".")
        try:
            payload = json.loads(_unb64(body))
            kid, tenant, conversation_id, expires = (
                payload["k"],
                payload["t"],
                payload["c"],
                float(payload["e"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise Unauthorized("malformed session token") from exc
        if not isinstance(kid, str) or kid not in self._keys:
            raise Unauthorized("session token signed with an unknown key")
        if not hmac.compare_digest(self._sign(kid, body), signature):
            raise Unauthorized("bad session token signature")
        if expires < now:
            raise Unauthorized("session token expired")
        return SessionClaims(str(tenant), str(conversation_id), expires)
