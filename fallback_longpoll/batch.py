"""What one poll answers with, as a pure accumulator over bus messages and stored events.

It applies the WebSocket customer's delivery rules to a single response: persistent events
strictly in seq order after the client's last seq (duplicates dropped, gaps filled from the
store), ephemeral frames as the customer socket would get them, internal messages dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from realtime.delivery import DELIVER, DROP, Resequencer

Frame = dict[str, Any]

RELEASE = "_lp_release"  # published on the conversation channel by every new poll
STOP = "_lp_stop"  # pushed into a poll's own inbox only (client gone, node draining)


def release_message(poll_id: str, token_key: str) -> Frame:
    return {"type": RELEASE, "poll_id": poll_id, "token_hash": token_key}


@dataclass
class PollBatch:
    after: int
    token_key: str
    poll_id: str
    frames: list[Frame] = field(default_factory=list)
    persistent: int = 0
    released: bool = False
    stopped: bool = False
    needs_fill: bool = False
    _seq: Resequencer = field(init=False)

    def __post_init__(self) -> None:
        self._seq = Resequencer(self.after)

    @property
    def last_seq(self) -> int:
        return self._seq.last_seq

    @property
    def finished(self) -> bool:
        """Return now: a persistent event is there, or this poll was told to end."""
        return self.persistent > 0 or self.released or self.stopped

    def add_stored(self, events: Iterable[Frame]) -> None:
        """Events read from the store after `last_seq`, in seq order."""
        for frame in events:
            seq = int(frame["seq"])
            if seq <= self._seq.last_seq:
                continue
            self._append_event(frame, seq)
        self.needs_fill = False

    def offer(self, message: Frame) -> None:
        """One message from the conversation's bus channel."""
        kind = message.get("type")
        if kind == "event":
            seq = int(message["seq"])
            action = self._seq.offer(seq)
            if action == DELIVER:
                self._append_event(message, seq)
            elif action != DROP:
                self.needs_fill = True  # a publish was missed: the store has it
        elif kind == "_resync":
            self.needs_fill = True
        elif kind == RELEASE:
            ours = message.get("token_hash") == self.token_key
            if ours and message.get("poll_id") != self.poll_id:
                self.released = True
        elif kind == STOP:
            self.stopped = True
        elif not isinstance(kind, str) or kind.startswith("_"):
            return
        elif kind == "typing" and message.get("role") == "customer":
            return  # customers only see the other side typing
        else:
            self.frames.append({k: v for k, v in message.items() if not k.startswith("_")})

    def _append_event(self, frame: Frame, seq: int) -> None:
        self.frames.append(frame)
        self._seq.delivered(seq)
        self.persistent += 1

    def has_queue_frame(self) -> bool:
        return any(f.get("type") == "queue" for f in self.frames)

    def state_after(self, state: str, as_of_seq: int) -> str:
        """The conversation's state after this batch, given its state as of `as_of_seq`."""
        for frame in self.frames:
            if (
                frame.get("type") == "event"
                and frame.get("kind") == "state"
                and int(frame["seq"]) > as_of_seq
                and isinstance(frame.get("to"), str)
            ):
                as_of_seq, state = int(frame["seq"]), frame["to"]
        return state
