"""SessionSigner: issue, verify, expiry, tampering, wrong keys and key rotation."""

from __future__ import annotations

import base64
import json

import pytest

from warmline.errors import Unauthorized
from warmline.tokens import SessionClaims, SessionSigner, key_id

OLD = b"o" * 32
NEW = b"n" * 32
NOW = 1_700_000_000.0
TTL = 3600.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def payload_of(token: str) -> dict[str, object]:
    body = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


def test_issue_then_verify() -> None:
    signer = SessionSigner([OLD], TTL)
    token = signer.issue("demo", "c_123", NOW)
    assert signer.verify(token, NOW) == SessionClaims("demo", "c_123", NOW + TTL)
    assert len(token) <= 512 and token.count(".") == 1


def test_another_signer_with_the_same_key_verifies() -> None:
    token = SessionSigner([OLD], TTL).issue("demo", "c_1", NOW)
    assert SessionSigner([OLD], TTL).verify(token, NOW).conversation_id == "c_1"


def test_expiry() -> None:
    signer = SessionSigner([OLD], TTL)
    token = signer.issue("demo", "c_1", NOW)
    assert signer.verify(token, NOW + TTL).tenant == "demo"
    with pytest.raises(Unauthorized, match="expired"):
        signer.verify(token, NOW + TTL + 1)


def tamper_payload(token: str, **changes: object) -> str:
    payload = payload_of(token)
    payload.update(changes)
    body = b64(json.dumps(payload, separators=(",", ":")).encode())
    return f"{body}.{token.split('.')[1]}"


@pytest.mark.parametrize(
    "changes",
    [{"t": "other-tenant"}, {"c": "c_someone_else"}, {"e": int(NOW + 10 * TTL)}],
    ids=["tenant", "conversation", "expiry"],
)
def test_a_tampered_payload_is_refused(changes: dict[str, object]) -> None:
    signer = SessionSigner([OLD], TTL)
    token = signer.issue("demo", "c_1", NOW)
    with pytest.raises(Unauthorized):
        signer.verify(tamper_payload(token, **changes), NOW)


def test_a_tampered_signature_is_refused() -> None:
    signer = SessionSigner([OLD], TTL)
    body, signature = signer.issue("demo", "c_1", NOW).split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for bad in (flipped, signature[:-1], signature + "A", "", "x" * len(signature)):
        with pytest.raises(Unauthorized):
            signer.verify(f"{body}.{bad}", NOW)


def test_a_token_signed_with_another_key_is_refused() -> None:
    token = SessionSigner([b"someone else's key"], TTL).issue("demo", "c_1", NOW)
    with pytest.raises(Unauthorized, match="unknown key"):
        SessionSigner([OLD], TTL).verify(token, NOW)


def test_a_forged_key_id_is_refused() -> None:
    signer = SessionSigner([OLD], TTL)
    forged_signer = SessionSigner([b"attacker"], TTL)
    token = forged_signer.issue("demo", "c_1", NOW)
    # Claim the victim's key id; the signature is still the attacker's.
    with pytest.raises(Unauthorized):
        signer.verify(tamper_payload(token, k=key_id(OLD)), NOW)


def test_key_rotation() -> None:
    old_token = SessionSigner([OLD], TTL).issue("demo", "c_old", NOW)
    rotated = SessionSigner([NEW, OLD], TTL)
    # Nobody is logged out: a token signed by the old key still verifies.
    assert rotated.verify(old_token, NOW).conversation_id == "c_old"
    # New tokens use the new key: the new key alone verifies them, the old alone does not.
    new_token = rotated.issue("demo", "c_new", NOW)
    assert payload_of(new_token)["k"] == key_id(NEW)
    assert SessionSigner([NEW], TTL).verify(new_token, NOW).conversation_id == "c_new"
    with pytest.raises(Unauthorized):
        SessionSigner([OLD], TTL).verify(new_token, NOW)
    # After the old key is dropped, its tokens stop working.
    with pytest.raises(Unauthorized):
        SessionSigner([NEW], TTL).verify(old_token, NOW)


def test_no_keys_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        SessionSigner([], TTL)


def _good_body() -> str:
    return SessionSigner([OLD], TTL).issue("demo", "c_1", NOW).split(".")[0]


def _body(payload: object) -> str:
    return b64(json.dumps(payload).encode())


_FIELDS = {"t": "demo", "c": "c_1"}
MALFORMED = {
    "none": None,
    "int": 123,
    "bytes": b"abc.def",
    "list": ["a.b"],
    "empty": "",
    "no dot": "nodot",
    "two dots": "a.b.c",
    "only a dot": ".",
    "too long": "x" * 600 + ".y",
    "not base64": "!!!.sig",
    "bad base64 length": "a.sig",
    "not utf-8": b64(b"\xff\xfe not utf-8") + ".sig",
    "not json": b64(b"not json") + ".sig",
    "json list": _body([1, 2]) + ".sig",
    "json string": _body("a string") + ".sig",
    "missing fields": _body(_FIELDS) + ".sig",
    "expiry not a number": _body({**_FIELDS, "k": key_id(OLD), "e": "soon"}) + ".sig",
    "expiry null": _body({**_FIELDS, "k": key_id(OLD), "e": None}) + ".sig",
    "expiry list": _body({**_FIELDS, "k": key_id(OLD), "e": [1]}) + ".sig",
    "key id a list": _body({**_FIELDS, "k": ["x"], "e": NOW + 60}) + ".sig",
    "key id an object": _body({**_FIELDS, "k": {"x": 1}, "e": NOW + 60}) + ".sig",
    "non-ascii body": "é.sig",
    "non-ascii signature": _good_body() + ".sïgnature",
    "non-ascii signature char": _good_body() + ".\u00ff",
}


@pytest.mark.parametrize("token", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_tokens_are_unauthorized_never_a_crash(token: object) -> None:
    with pytest.raises(Unauthorized):
        SessionSigner([OLD], TTL).verify(token, NOW)
