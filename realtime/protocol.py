"""The wire protocol as pure functions: decode, validate, encode. No sockets here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgpack

from warmline.errors import BadRequest, TooLarge

JSON_SUBPROTOCOL = "warmline.v1.json"
MSGPACK_SUBPROTOCOL = "warmline.v1.msgpack"
MAX_REF_CHARS = 64
MAX_ID_CHARS = 128
MAX_DEPTH = 8
# Integers travel as JSON numbers and MessagePack ints: beyond 2**53 browsers lose precision.
MAX_SAFE_INT = 2**53 - 1

Frame = dict[str, Any]


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    required: bool = True
    max_len: int | None = None
    choices: tuple[Any, ...] | None = None
    min_value: int | None = None
    max_value: int | None = None


_ID = Field(str, max_len=MAX_ID_CHARS)
_CONV = Field(str, max_len=MAX_ID_CHARS)

CUSTOMER_FRAMES: dict[str, dict[str, Field]] = {
    "hello": {
        "tenant": Field(str, max_len=64),
        "token": Field(str, required=False, max_len=512),
        "last_seq": Field(int, required=False, min_value=0),
    },
    "message": {"id": _ID, "text": Field(str)},
    "typing": {"on": Field(bool)},
    "request_human": {},
    "rate": {
        "score": Field(int, min_value=1, max_value=5),
        "comment": Field(str, required=False, max_len=2000),
    },
    "ping": {},
}

AGENT_FRAMES: dict[str, dict[str, Field]] = {
    "hello": {
        "token": Field(str, max_len=512),
        # Optional: start in this presence at once, so no assignment races the first
        # `presence` frame.
        "status": Field(str, required=False, choices=("online", "away", "offline")),
        "capacity": Field(int, required=False, min_value=0, max_value=100),
    },
    "presence": {
        "status": Field(str, choices=("online", "away", "offline")),
        "capacity": Field(int, required=False, min_value=0, max_value=100),
    },
    "claim": {"conversation_id": _CONV},
    "subscribe": {"conversation_id": _CONV, "last_seq": Field(int, required=False, min_value=0)},
    "unsubscribe": {"conversation_id": _CONV},
    "message": {"conversation_id": _CONV, "id": _ID, "text": Field(str)},
    "typing": {"conversation_id": _CONV, "on": Field(bool)},
    "resolve": {"conversation_id": _CONV},
    "requeue": {"conversation_id": _CONV, "reason": Field(str, required=False, max_len=500)},
    "transfer": {"conversation_id": _CONV, "to_agent_id": Field(str, max_len=MAX_ID_CHARS)},
    "ping": {},
}

SUPERVISOR_FRAMES: dict[str, dict[str, Field]] = {
    "hello": {"token": Field(str, max_len=512)},
    "ping": {},
}


def frame_size(raw: str | bytes) -> int:
    """Bytes on the wire: a text frame is UTF-8, so count its encoded length."""
    if isinstance(raw, bytes):
        return len(raw)
    # Every character is at least one byte: short strings cannot exceed a limit they fit.
    return len(raw) if raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))


def decode(raw: str | bytes, binary: bool, max_bytes: int) -> Frame:
    """Bytes off the wire to a frame dict; BadRequest or TooLarge when it is not one."""
    if frame_size(raw) > max_bytes:
        raise TooLarge(f"frame larger than {max_bytes} bytes")
    try:
        if binary:
            if isinstance(raw, str):
                raise BadRequest("expected a binary MessagePack frame")
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        else:
            if isinstance(raw, bytes):
                raise BadRequest("expected a text JSON frame")
            obj = json.loads(raw)
    except BadRequest:
        raise
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise BadRequest(f"malformed frame: {exc.__class__.__name__}") from exc
    except Exception as exc:  # msgpack raises assorted errors on hostile input
        raise BadRequest("malformed frame") from exc
    if not isinstance(obj, dict):
        raise BadRequest("a frame must be an object")
    if _depth(obj) > MAX_DEPTH:
        raise BadRequest("frame nested too deeply")
    return obj


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def ref_of(frame: Frame) -> str | None:
    ref = frame.get("ref")
    if isinstance(ref, str) and len(ref) <= MAX_REF_CHARS:
        return ref
    return None


def validate(frame: Frame, schema: dict[str, dict[str, Field]], max_text_chars: int) -> Frame:
    """Check type and fields against the role's schema; return the frame unchanged."""
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise BadRequest("missing string field 'type'")
    fields = schema.get(kind)
    if fields is None:
        raise BadRequest(f"unknown frame type {kind[:40]!r}")
    ref = frame.get("ref")
    if ref is not None and (not isinstance(ref, str) or len(ref) > MAX_REF_CHARS):
        raise BadRequest(f"'ref' must be a string of at most {MAX_REF_CHARS} characters")
    for name, spec in fields.items():
        if name not in frame or frame[name] is None:
            if spec.required:
                raise BadRequest(f"missing field {name!r}")
            continue
        value = frame[name]
        # bool is an int in Python; a JSON true is never a valid number here.
        if (isinstance(value, bool) and spec.kind is not bool) or not isinstance(value, spec.kind):
            raise BadRequest(f"field {name!r} has the wrong type")
        if isinstance(value, str):
            limit = spec.max_len if spec.max_len is not None else max_text_chars
            if len(value) > limit:
                raise BadRequest(f"field {name!r} is longer than {limit} characters")
            if name in ("id", "conversation_id", "tenant", "to_agent_id") and not value.strip():
                raise BadRequest(f"field {name!r} must not be empty")
        if name == "text" and isinstance(value, str) and not value.strip():
            raise BadRequest("field 'text' must not be empty")
        if spec.choices is not None and value not in spec.choices:
            raise BadRequest(f"field {name!r} must be one of {', '.join(map(str, spec.choices))}")
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > MAX_SAFE_INT:
                raise BadRequest(f"field {name!r} is out of range")
            if spec.min_value is not None and value < spec.min_value:
                raise BadRequest(f"field {name!r} must be >= {spec.min_value}")
            if spec.max_value is not None and value > spec.max_value:
                raise BadRequest(f"field {name!r} must be <= {spec.max_value}")
    return frame


# json.dumps with options builds a new encoder per call; this one is stateless and shared.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(frame: Frame, binary: bool) -> str | bytes:
    if binary:
        packed: bytes = msgpack.packb(frame, use_bin_type=True)
        return packed
    return _JSON.encode(frame)


class EncodeCache:
    """`encode` for frames that go to many connections: the same dict object is encoded once.

    Entries are keyed by the frame's identity and hold the frame itself, so its id cannot be
    reused by another object while cached. Frames must not change once sent (bus messages
    never do). Bounded by count and by size, oldest out first: fan-out happens in a burst
    right after a publish, so a short memory is enough.
    """

    def __init__(self, max_entries: int = 64, max_chars: int = 4 * 1024 * 1024) -> None:
        self._entries: dict[tuple[int, bool], tuple[Frame, str | bytes]] = {}
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._chars = 0

    def encode(self, frame: Frame, binary: bool) -> str | bytes:
        key = (id(frame), binary)
        hit = self._entries.get(key)
        if hit is not None:
            return hit[1]
        payload = encode(frame, binary)
        if len(payload) <= self._max_chars:
            self._entries[key] = (frame, payload)
            self._chars += len(payload)
            while len(self._entries) > self._max_entries or self._chars > self._max_chars:
                oldest = next(iter(self._entries))
                self._chars -= len(self._entries.pop(oldest)[1])
        return payload

    def __len__(self) -> int:
        return len(self._entries)


def error_frame(code: str, message: str, ref: str | None = None, **extra: Any) -> Frame:
    frame: Frame = {"type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
    frame.update(extra)
    return frame


def choose_subprotocol(offered: list[str]) -> str | None:
    for name in offered:
        if name in (MSGPACK_SUBPROTOCOL, JSON_SUBPROTOCOL):
            return name
    return None
