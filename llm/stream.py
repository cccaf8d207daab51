"""Pure filtering of streamed model text: hide the no-answer sentinel, renumber citations.

Passages are numbered by hit in the prompt; the answer's sources are distinct documents in the
order first cited, and citations in the text are renumbered to match them, so "[2]" always means
the answer's second source. Text that could still turn out to be a sentinel or a citation is held
back until the next piece decides it (a few characters at most).
"""

from __future__ import annotations

import re

from llm.prompt import NO_ANSWER
from retrieval.base import Hit

_CITATION = re.compile(r"(\s*)\[\s*(\d+(?:\s*(?:,|\]\[)\s*\d+)*)\s*\]")
# A citation group at the very end, maybe still open ("[1", "[1][", "[1, 2]"): it may go on.
_TRAILING_CITATION = re.compile(r"(?:\[[\d\s,]*\]?\s*)+$")
_NUMBER = re.compile(r"\d+")
_MAX_HELD_CITATION = 32


class StreamFilter:
    def __init__(self, hits: tuple[Hit, ...]) -> None:
        self._hits = hits
        self._buf = ""
        self._leading = True
        self._swallow = False  # the reply is the sentinel: nothing reaches the customer
        self._emitted: list[str] = []
        self._source_ids: list[str] = []
        self._sources: list[dict[str, str]] = []
        self.saw_sentinel = False

    @property
    def text(self) -> str:
        return "".join(self._emitted)

    @property
    def emitted_any(self) -> bool:
        return any(self._emitted)

    def sources(self) -> tuple[dict[str, str], ...]:
        """Cited sources in citation order; the top hit's when nothing valid was cited."""
        if self._sources:
            return tuple(self._sources)
        return (self._hits[0].chunk.source(),) if self._hits else ()

    def feed(self, piece: str) -> str:
        """Text that can be shown now ("" while undecided)."""
        if self._swallow:
            return ""
        self._buf += piece
        if self._leading:
            head = self._buf.lstrip()
            if head.startswith(NO_ANSWER):
                self.saw_sentinel = self._swallow = True
                self._buf = ""
                return ""
            if NO_ANSWER.startswith(head):
                return ""  # still maybe the sentinel (or only whitespace so far)
            self._leading = False
            self._buf = head
        return self._drain(final=False)

    def finish(self) -> str:
        if self._swallow or self._leading:
            self._buf = ""
            return ""
        return self._drain(final=True)

    def _drain(self, final: bool) -> str:
        # A whole sentinel is always in the buffer (its prefixes are held back), so removing it
        # here gives the same text however the reply was split.
        if NO_ANSWER in self._buf:
            self.saw_sentinel = True
            self._buf = self._buf.replace(NO_ANSWER, "")
        hold = 0 if final else self._holdback(self._buf)
        ready, self._buf = self._buf[: len(self._buf) - hold], self._buf[len(self._buf) - hold :]
        ready = _CITATION.sub(self._renumber, ready)
        if final:
            ready = ready.rstrip()
        self._emitted.append(ready)
        return ready

    @staticmethod
    def _holdback(buf: str) -> int:
        """How many trailing characters to keep until the next piece decides them: a possible
        start of the sentinel, before it a citation group that may go on ("[1", "[1][", "[2]")
        and the whitespace before those (so "text [1]" is never cut as "text " + "[1]", and
        trailing space is never sent before we know more text follows)."""
        end = len(buf)
        for k in range(min(len(NO_ANSWER) - 1, len(buf)), 0, -1):
            if buf.endswith(NO_ANSWER[:k]):
                end -= k
                break
        window = buf[max(0, end - _MAX_HELD_CITATION) : end]
        match = _TRAILING_CITATION.search(window)
        if match is not None:
            end -= len(window) - match.start()
        while end > 0 and buf[end - 1].isspace():
            end -= 1
        return len(buf) - end

    def _renumber(self, match: re.Match[str]) -> str:
        numbers: list[int] = []
        for raw in _NUMBER.findall(match.group(2)):
            n = int(raw)
            if not 1 <= n <= len(self._hits):
                continue  # the model cited a passage it was not given: drop it
            source = self._hits[n - 1].chunk.source()
            if source["doc_id"] not in self._source_ids:
                self._source_ids.append(source["doc_id"])
                self._sources.append(source)
            number = self._source_ids.index(source["doc_id"]) + 1
            if number not in numbers:
                numbers.append(number)
        if not numbers:
            return ""
        return " " + "".join(f"[{n}]" for n in numbers)
