"""In-order, exactly-once delivery of a conversation's events to one connection.

Bus messages may arrive late, twice (replay raced live) or not at all (a Redis hiccup); the
store is the truth. The Resequencer decides, per incoming seq, whether to deliver, drop a
duplicate, or first fetch the gap from the store.
"""

from __future__ import annotations

from dataclasses import dataclass

DELIVER = "deliver"
DROP = "drop"
FILL_GAP = "fill_gap"


@dataclass
class Resequencer:
    last_seq: int = 0

    def offer(self, seq: int) -> str:
        if seq <= self.last_seq:
            return DROP
        if seq == self.last_seq + 1:
            return DELIVER
        return FILL_GAP

    def delivered(self, seq: int) -> None:
        if seq > self.last_seq:
            self.last_seq = seq
