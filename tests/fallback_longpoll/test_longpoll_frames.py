"""Request parsing for long polling: bodies, tokens and poll parameters, without I/O."""

from __future__ import annotations

import json

import pytest

from fallback_longpoll.frames import (
    POLL_TIMEOUT_S,
    bearer,
    check_frame,
    parse_body,
    parse_poll,
    session_token,
    token_key,
)
from warmline.errors import BadRequest, TooLarge, Unauthorized

LIMIT = 1024


def body(frame: object) -> bytes:
    return json.dumps(frame).encode()


def test_a_valid_frame_passes_unchanged() -> None:
    frame = parse_body(body({"type": "message", "id": "m1", "text": "hi", "token": "t"}), LIMIT)
    assert check_frame(frame, 100) == {"type": "message", "id": "m1", "text": "hi", "token": "t"}


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'"a string"', b"", b"\xff\xfe{}", b"null"],
)
def test_bodies_that_are_not_one_json_object(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_body(raw, LIMIT)


def test_too_large_is_its_own_error() -> None:
    with pytest.raises(TooLarge):
        parse_body(b" " * (LIMIT + 1), LIMIT)
    assert parse_body(body({"type": "ping"}).ljust(LIMIT), LIMIT) == {"type": "ping"}


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "message", "id": "m1", "text": 5},
        {"type": "message", "text": "no id"},
        {"type": "message", "id": "m1", "text": "   "},
        {"type": "typing", "on": "yes"},
        {"type": "rate", "score": 9},
        {"type": "rate", "score": True},
        {"type": "hello"},
        {"type": "claim", "conversation_id": "c_1"},  # an agent frame
        {"type": "message", "id": "m1", "text": "hi", "token": 7},
        {"type": "message", "id": "m1", "text": "hi", "token": "x" * 513},
        {"type": "ping", "ref": "r" * 65},
        {"no": "type"},
    ],
)
def test_frames_refused_like_the_websocket_refuses_them(frame: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        check_frame(frame, 100)


def test_text_longer_than_the_limit() -> None:
    with pytest.raises(BadRequest):
        check_frame({"type": "message", "id": "m", "text": "x" * 101}, 100)


def test_session_token_prefers_the_body_then_the_bearer_header() -> None:
    assert session_token({"token": "body"}, "Bearer header") == "body"
    assert session_token({}, "Bearer header") == "header"
    assert session_token({}, "bearer  spaced ") == "spaced"
    assert session_token({}, "Basic abc") is None
    assert session_token({}, None) is None
    assert bearer("Bearer ") is None


def test_token_key_is_stable_and_does_not_reveal_the_token() -> None:
    assert token_key("abc") == token_key("abc")
    assert token_key("abc") != token_key("abd")
    assert "abc" not in token_key("abc")


def test_poll_parameters() -> None:
    params = parse_poll({"token": "t", "after": "7"}, None)
    assert (params.token, params.after, params.timeout_s) == ("t", 7, POLL_TIMEOUT_S)
    assert parse_poll({}, "Bearer hdr").token == "hdr"
    assert parse_poll({"token": "t"}, None).after == 0
    assert parse_poll({"token": "t", "timeout": "0.5"}, None).timeout_s == 0.5
    assert parse_poll({"token": "t", "timeout": "3600"}, None).timeout_s == POLL_TIMEOUT_S


@pytest.mark.parametrize(
    "query",
    [
        {"token": "t", "after": "x"},
        {"token": "t", "after": "-1"},
        {"token": "t", "after": "1.5"},
        {"token": "t", "timeout": "soon"},
        {"token": "t", "timeout": "-1"},
        {"token": "t", "timeout": "nan"},
        {"token": "t" * 513},
    ],
)
def test_bad_poll_parameters(query: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        parse_poll(query, None)


def test_a_poll_needs_a_token() -> None:
    with pytest.raises(Unauthorized):
        parse_poll({"after": "1"}, None)
