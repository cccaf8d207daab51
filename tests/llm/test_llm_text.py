from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llm.base import NOT_FOUND_TEXT
from llm.extractive import ExtractiveAnswerer, extract_answer
from llm.text import ExtractPolicy, best_sentences, split_sentences, stem, terms
from tests.llm.llm_support import RETURNS, Deltas, make_request


def test_stem_joins_common_forms() -> None:
    assert stem("refunds") == stem("refund") == "refund"
    assert stem("shipping") == "ship"
    assert stem("cancelled") == "cancel"
    assert stem("deliveries") == "delivery"
    assert stem("address") == "address"


def test_terms_drop_stopwords() -> None:
    assert terms("How do I return my items?") == {"return", "item"}


def test_split_sentences_drops_headings_and_list_marks() -> None:
    text = "# Title\n\n## How?\n\nFirst one. Second one!\n- **Bold** item\n1. Numbered e.g. this"
    assert split_sentences(text) == [
        "First one.",
        "Second one!",
        "Bold item",
        "Numbered e.g. this",
    ]


def test_best_sentences_picks_the_covering_window() -> None:
    passage = (
        "We ship worldwide. Standard shipping is free over 50 euros. "
        "Returns are accepted within 30 days of delivery. Refunds take 5 days.\n\n"
        "Gift cards never expire."
    )
    chosen = best_sentences("how many days do I have for returns", passage)
    # Extended for context within its paragraph, never into the next one.
    assert chosen == ["Returns are accepted within 30 days of delivery.", "Refunds take 5 days."]


def test_short_pick_is_extended_with_following_sentence() -> None:
    passage = "Intro text here. Returns: 30 days. Keep the receipt handy for store returns."
    chosen = best_sentences("returns", passage, ExtractPolicy(min_chars=40))
    assert chosen == ["Returns: 30 days.", "Keep the receipt handy for store returns."]


def test_a_sentence_that_asks_loses_to_one_that_answers() -> None:
    passage = "Can I return an item? You can return an item within 30 days."
    assert best_sentences("can I return an item", passage, ExtractPolicy(min_chars=0)) == [
        "You can return an item within 30 days."
    ]


@given(st.text(max_size=300), st.text(max_size=60))
def test_best_sentences_never_exceeds_the_policy(passage: str, question: str) -> None:
    policy = ExtractPolicy()
    chosen = best_sentences(question, passage, policy)
    assert len(chosen) <= policy.max_sentences
    assert all(s in split_sentences(passage) for s in chosen)


def test_extract_answer_quotes_top_hit_with_its_source() -> None:
    pieces, answer = extract_answer(make_request())
    assert answer.grounded and answer.route == "extractive" and not answer.fallback
    assert answer.text == "".join(pieces)
    assert answer.text.startswith("You can return most items within 30 days")
    assert answer.sources == (RETURNS.source(),)


def test_extract_answer_without_hits_is_not_grounded() -> None:
    pieces, answer = extract_answer(make_request(hits=()))
    assert not answer.grounded and answer.sources == () and answer.text == NOT_FOUND_TEXT
    assert pieces == [NOT_FOUND_TEXT]


async def test_extractive_answerer_streams_sentences() -> None:
    deltas = Deltas()
    answer = await ExtractiveAnswerer().answer(make_request(), deltas)
    assert len(deltas.pieces) >= 2
    assert deltas.text == answer.text
    await ExtractiveAnswerer().close()
