"""What one poll answers with: the WebSocket customer's delivery rules over one response."""

from __future__ import annotations

from typing import Any

from fallback_longpoll.batch import STOP, PollBatch, release_message


def event(seq: int, kind: str = "message", **data: Any) -> dict[str, Any]:
    return {"type": "event", "conversation_id": "c", "seq": seq, "ts": 1.0, "kind": kind, **data}


def batch(after: int = 0) -> PollBatch:
    return PollBatch(after, token_key="k", poll_id="p")


def test_stored_then_live_without_duplicates() -> None:
    b = batch(after=1)
    b.add_stored([event(1), event(2), event(3)])
    assert [f["seq"] for f in b.frames] == [2, 3]
    b.offer(event(3))  # the live copy of one already read from the store
    b.offer(event(4))
    assert [f["seq"] for f in b.frames] == [2, 3, 4]
    assert b.finished and not b.needs_fill


def test_a_gap_asks_for_the_store() -> None:
    b = batch(after=2)
    b.offer(event(5))
    assert b.frames == [] and b.needs_fill and not b.finished
    b.add_stored([event(3), event(4), event(5)])
    assert [f["seq"] for f in b.frames] == [3, 4, 5] and not b.needs_fill


def test_resync_asks_for_the_store() -> None:
    b = batch()
    b.offer({"type": "_resync"})
    assert b.needs_fill


def test_ephemeral_frames_as_the_customer_socket_sees_them() -> None:
    b = batch()
    b.offer({"type": "bot_delta", "message_id": "m", "delta": "Hel", "_origin": "x"})
    b.offer({"type": "typing", "role": "agent", "on": True, "_origin": "ws_1"})
    b.offer({"type": "typing", "role": "customer", "on": True})  # the customer's own
    b.offer({"type": "queue", "conversation_id": "c", "position": 2, "eta_s": 30})
    b.offer({"type": "_internal"})
    assert b.frames == [
        {"type": "bot_delta", "message_id": "m", "delta": "Hel"},
        {"type": "typing", "role": "agent", "on": True},
        {"type": "queue", "conversation_id": "c", "position": 2, "eta_s": 30},
    ]
    # Ephemeral frames alone do not end a poll at once (it lingers for more).
    assert not b.finished and b.persistent == 0
    assert b.has_queue_frame()


def test_release_by_a_newer_poll_of_the_same_token_only() -> None:
    b = batch()
    b.offer(release_message("p", "k"))  # its own announcement
    b.offer(release_message("other", "another-token"))
    assert not b.released
    b.offer(release_message("newer", "k"))
    assert b.released and b.finished and b.frames == []


def test_stop() -> None:
    b = batch()
    b.offer({"type": STOP})
    assert b.stopped and b.finished


def test_state_after_the_batch() -> None:
    b = batch(after=3)
    b.add_stored([event(4, "state", to="queued"), event(5), event(6, "state", to="human")])
    assert b.state_after("bot", 3) == "human"
    # Events the known state already includes do not count.
    assert b.state_after("resolved", 6) == "resolved"
    assert batch().state_after("queued", 0) == "queued"
