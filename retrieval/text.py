"""Tokenizer shared by the BM25 index, its reference test and near-duplicate detection."""

from __future__ import annotations

import functools
import re
import unicodedata

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)

# Only the most frequent function words: BM25's idf already discounts common terms, so the
# list exists to keep posting lists short (query latency), not to change rankings much.
STOPWORDS = frozenset(
    """a an and are as at be but by for from has have i if in into is it its me my of on or
    our so than that the their them then there these they this to was we were what when where
    which who will with would you your""".split()
)


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _stem(word: str) -> str:
    # A deliberately tiny suffix stripper: folds plurals and -ing/-ed forms so "refunds",
    # "refunded" and "refunding" meet, without the surprises of an aggressive stemmer.
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ed") and not word.endswith("eed"):
        return word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """Lower-cased words without stemming or stopword removal (for shingles)."""
    return [w.replace("'", "") for w in _WORD.findall(normalize(text))]


def analyze(text: str) -> tuple[list[str], list[str]]:
    """`tokenize(text)` and `words(text)` from one pass of the word regex."""
    raw = _WORD.findall(normalize(text))
    return [t for t in map(_term, raw) if t], [w.replace("'", "") for w in raw]


@functools.lru_cache(maxsize=200_000)
def _term(word: str) -> str:
    """Index term of one lower-cased word ("" for a stopword); cached, as vocabularies are
    small next to corpora."""
    if word.endswith(("'s", "'re", "'ve", "'ll", "'d")):
        word = word.split("'", 1)[0]
    word = word.replace("'", "")
    if word in STOPWORDS or not word:
        return ""
    return _stem(word)


def tokenize(text: str) -> list[str]:
    """Index and query terms: lower-cased, stopwords dropped, lightly stemmed."""
    return [t for t in map(_term, _WORD.findall(normalize(text))) if t]
