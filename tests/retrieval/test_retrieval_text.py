from __future__ import annotations

from retrieval.text import tokenize, words


def test_tokenize_lowercases_drops_stopwords_and_folds_suffixes() -> None:
    assert tokenize("When will I get my Refunds?") == ["get", "refund"]
    assert tokenize("refunded refunding refunds") == ["refund", "refund", "refund"]
    assert tokenize("I can't log in") == ["cant", "log"]
    assert tokenize("Customer's address") == ["customer", "address"]


def test_tokenize_keeps_numbers_and_unicode_words() -> None:
    assert tokenize("Order 12345 — Größe café") == ["order", "12345", "grösse", "café"]


def test_words_keep_everything_for_shingles() -> None:
    assert words("The card, the CARD!") == ["the", "card", "the", "card"]
