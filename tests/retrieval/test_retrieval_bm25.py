"""The fast BM25 scorer must give exactly rank_bm25's BM25Okapi scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from rank_bm25 import BM25Okapi

from retrieval.bm25 import BM25Index
from retrieval.index import index_text
from retrieval.ingest import parse_document
from retrieval.text import tokenize

DEMO_KB = Path(__file__).resolve().parents[2] / "warmline" / "demo_kb"

WORDS = st.sampled_from("refund card order ship track return pay gift code help late".split())


@settings(max_examples=200, deadline=None)
@given(
    corpus=st.lists(st.lists(WORDS, min_size=0, max_size=12), min_size=1, max_size=25),
    query=st.lists(WORDS | st.just("unknownterm"), min_size=0, max_size=6),
)
def test_scores_equal_rank_bm25_on_random_corpora(
    corpus: list[list[str]], query: list[str]
) -> None:
    if sum(len(d) for d in corpus) == 0:
        return  # rank_bm25 divides by zero on an all-empty corpus
    ref = BM25Okapi(corpus)
    ours = BM25Index(corpus)
    np.testing.assert_allclose(ours.scores(query), ref.get_scores(query), rtol=1e-12, atol=1e-12)


def test_scores_equal_rank_bm25_on_demo_kb_with_the_same_tokenizer() -> None:
    chunks = []
    for path in sorted(DEMO_KB.glob("*.md")):
        _, cs = parse_document("t", path.name, path.read_text())
        chunks.extend(cs)
    corpus = [tokenize(index_text(c)) for c in chunks]
    ref = BM25Okapi(corpus)
    ours = BM25Index(corpus)
    for q in [
        "When will I get my refund?",
        "how do i reset my password",
        "Can I pay with Klarna in installments",
        "the the the",  # stopwords only: empty query
        "customs duties for shipping to Canada and the EU",
    ]:
        tokens = tokenize(q)
        np.testing.assert_allclose(ours.scores(tokens), ref.get_scores(tokens), rtol=1e-12)


def test_negative_idf_gets_the_epsilon_floor_like_rank_bm25() -> None:
    corpus = [["card", "x"], ["card", "y"], ["card"], ["z"]]  # "card" in 3 of 4: idf < 0
    ref = BM25Okapi(corpus)
    ours = BM25Index(corpus)
    assert ours.idf["card"] == ref.idf["card"] > 0
    np.testing.assert_allclose(ours.scores(["card"]), ref.get_scores(["card"]))


def test_max_score_bounds_every_score() -> None:
    corpus = [tokenize(t) for t in ["refund my order", "refund refund refund", "track order"]]
    idx = BM25Index(corpus)
    q = tokenize("refund order")
    assert abs(idx.scores(q)).max() <= idx.max_score(q)
    assert set(idx.candidates(q).tolist()) == {0, 1, 2}
    assert idx.candidates(["nothing"]).size == 0


def test_empty_corpus() -> None:
    idx = BM25Index([])
    assert idx.scores(["a"]).shape == (0,)
