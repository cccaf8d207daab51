"""Pure text helpers: tokens, sentences and the extractive choice of the best sentences."""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_EMPHASIS = re.compile(r"(\*\*|__|`)")

STOPWORDS = frozenset(
    """a an and are as at be been but by can could do does did for from had has have how i if in
    into is it its me my of on or our so than that the their them then there these they this to
    up us was we were what when where which who why will with would you your yours i'm it's
    don't can't please hi hello thanks thank also just want need get got any some""".split()
)


def stem(word: str) -> str:
    """A deliberately tiny stemmer: enough that "refunds"/"refund", "shipping"/"ship" meet."""
    for suffix, min_len in (("ies", 5), ("ing", 6), ("ed", 5), ("es", 5), ("s", 4)):
        if word.endswith(suffix) and len(word) >= min_len:
            base = word[: -len(suffix)]
            if suffix == "ies":
                return base + "y"
            if suffix in ("ing", "ed") and len(base) > 2 and base[-1] == base[-2]:
                return base[:-1]  # "shipping" -> "ship", "cancelled" -> "cancel"
            if suffix == "s" and base.endswith("s"):
                return word  # "address", "process"
            return base
    return word


def terms(text: str) -> frozenset[str]:
    return frozenset(
        stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 1
    )


def paragraph_sentences(text: str) -> list[tuple[int, str]]:
    """(paragraph number, sentence) of a markdown passage; headings are dropped (they restate
    the question, they do not answer it) and every line or list item is its own paragraph."""
    sentences: list[tuple[int, str]] = []
    for number, raw_line in enumerate(text.splitlines()):
        line = raw_line.strip()
        if not line or line.startswith("#") or set(line) <= {"-", "|", ":", " "}:
            continue
        line = _EMPHASIS.sub("", _LIST_MARK.sub("", line)).strip()
        sentences.extend((number, s.strip()) for s in _SENTENCE_END.split(line) if s.strip())
    return sentences


def split_sentences(text: str) -> list[str]:
    return [sentence for _, sentence in paragraph_sentences(text)]


@dataclass(frozen=True)
class ExtractPolicy:
    max_sentences: int = 3
    min_chars: int = 160  # shorter picks are extended with the following sentence
    max_chars: int = 480
    question_weight: float = 0.5  # a sentence that asks is rarely the answer


def best_sentences(
    question: str, passage: str, policy: ExtractPolicy = ExtractPolicy()
) -> list[str]:
    """The window of 1..max_sentences consecutive sentences that covers most question terms
    (fewest sentences on a tie), extended within its paragraph when it is too short to read
    on its own."""
    numbered = paragraph_sentences(passage)
    sentences = [sentence for _, sentence in numbered]
    if not sentences:
        return []
    wanted = terms(question)
    sentence_terms = [terms(s) for s in sentences]
    weights = [policy.question_weight if s.endswith("?") else 1.0 for s in sentences]

    best: tuple[float, int, int] = (0.0, -1, 0)  # (coverage, -size, -start) to maximise
    best_start, best_size = 0, 1
    for start in range(len(sentences)):
        covered: dict[str, float] = {}
        length = 0
        for size in range(1, policy.max_sentences + 1):
            i = start + size - 1
            if i >= len(sentences):
                break
            length += len(sentences[i]) + 1
            if size > 1 and length > policy.max_chars:
                break
            for term in sentence_terms[i] & wanted:
                covered[term] = max(covered.get(term, 0.0), weights[i])
            key = (sum(covered.values()), -size, -start)
            if key > best:
                best, best_start, best_size = key, start, size

    chosen = sentences[best_start : best_start + best_size]
    end = best_start + best_size
    while (
        len(chosen) < policy.max_sentences
        and end < len(sentences)
        and numbered[end][0] == numbered[end - 1][0]  # context, not the next topic
        and len(" ".join(chosen)) < policy.min_chars
        and len(" ".join([*chosen, sentences[end]])) <= policy.max_chars
    ):
        chosen.append(sentences[end])
        end += 1
    return chosen
