"""Tokenizer shared by the BM25 index, its reference test and near-duplicate detection."""

from __future__ import annotations

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


def tokenize(text: str) -> list[str]:
    """Index and query terms: lower-cased, stopwords dropped, lightly stemmed."""
    out: list[str] = []
    for word in _WORD.findall(normalize(text)):
        word = word.split("'", 1)[0] if word.endswith(("'s", "'re", "'ve", "'ll", "'d")) else word
        word = word.replace("'", "")
        if word in STOPWORDS or not word:
            continue
        out.append(_stem(word))
    return out
