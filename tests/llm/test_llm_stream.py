from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llm.prompt import NO_ANSWER
from llm.stream import StreamFilter
from retrieval.base import Hit
from tests.llm.llm_support import REFUNDS, RETURNS, SHIPPING

HITS = (Hit(RETURNS, 3.0), Hit(REFUNDS, 2.0), Hit(SHIPPING, 1.0))
RETURNS_2 = Hit(RETURNS.__class__(**{**RETURNS.__dict__, "chunk_id": "returns-policy#2"}), 2.5)


def run(pieces: list[str], hits: tuple[Hit, ...] = HITS) -> tuple[list[str], StreamFilter]:
    stream_filter = StreamFilter(hits)
    out = [stream_filter.feed(p) for p in pieces]
    out.append(stream_filter.finish())
    return [o for o in out if o], stream_filter


def test_plain_text_passes_through_as_it_arrives() -> None:
    out, f = run(["Hello", " there", ",", " friend."])
    assert out == ["Hello", " there", ",", " friend."]
    assert f.text == "Hello there, friend." and not f.saw_sentinel
    assert f.sources() == (RETURNS.source(),)  # nothing cited: the top hit


def test_leading_sentinel_is_never_emitted_even_split() -> None:
    out, f = run([" NO", "_ANS", "WER", "."])
    assert out == [] and f.saw_sentinel and not f.emitted_any


def test_text_that_only_starts_like_the_sentinel_is_released() -> None:
    out, f = run(["NO", " problem", "!"])
    assert "".join(out) == "NO problem!" and not f.saw_sentinel


def test_trailing_sentinel_is_removed() -> None:
    out, f = run(["Sorry.", " NO_", "ANSWER"])
    assert "".join(out) == "Sorry." and f.saw_sentinel


def test_citations_are_renumbered_in_first_cited_order() -> None:
    out, f = run(["Refunds take days", " [", "2", "]. Returns are", " 30 days [1][", "3]."])
    assert f.text == "Refunds take days [1]. Returns are 30 days [2][3]."
    assert f.sources() == (REFUNDS.source(), RETURNS.source(), SHIPPING.source())
    assert all("[" not in o or "]" in o for o in out)  # never half a citation


def test_citations_of_one_document_merge() -> None:
    hits = (HITS[0], RETURNS_2, HITS[1])
    _, f = run(["A [1, 2]. B [3][2]."], hits)
    assert f.text == "A [1]. B [2][1]."
    assert f.sources() == (RETURNS.source(), REFUNDS.source())


def test_unknown_passage_numbers_are_dropped() -> None:
    _, f = run(["Yes [7]. Also [0, 2]."])
    assert f.text == "Yes. Also [1]."
    assert f.sources() == (REFUNDS.source(),)


def test_brackets_that_are_not_citations_pass() -> None:
    _, f = run(["See [the", " FAQ] page", " and", " [ ] boxes"])
    assert f.text == "See [the FAQ] page and [ ] boxes"


def test_trailing_whitespace_is_not_sent() -> None:
    out, f = run(["Done.", "  \n"])
    assert out == ["Done."] and f.text == "Done."


REPLY = st.lists(
    st.sampled_from(
        [
            "Yes",
            " you",
            " can",
            " [1]",
            "[2]",
            " [",
            "3",
            "]",
            ".",
            " NO",
            "\n",
            " ok",
            " NO_ANSWER",
        ]
    ),
    max_size=20,
)


@given(REPLY, st.data())
def test_any_split_of_a_reply_gives_the_same_text(tokens: list[str], data: st.DataObject) -> None:
    whole = "".join(tokens)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(whole)), max_size=8)))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    _, reference = run([whole])
    out, split = run(pieces)
    assert "".join(out) == split.text == reference.text
    assert split.sources() == reference.sources()
    assert NO_ANSWER not in split.text
