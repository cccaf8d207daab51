from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from retrieval.chunking import (
    MAX_WORDS,
    chunk_section,
    dedupe,
    guess_format,
    parse,
    slug,
    split_front_matter,
)
from retrieval.ingest import parse_document
from warmline.errors import BadRequest

DEMO_KB = Path(__file__).resolve().parents[2] / "warmline" / "demo_kb"

MD = """---
title: Refunds
url: https://help.example/refunds
lang: en
doc_type: faq
---
# Refunds

## When will I get my refund?

We issue refunds within **3 business days**. See [the policy](https://x.example).

### Card refunds

Card refunds take 5-10 days.

```
# not a heading inside a fence
```

## Store credit

Store credit never expires.
"""


def test_front_matter_is_split_off() -> None:
    meta, body = split_front_matter(MD)
    assert meta == {"title": "Refunds", "url": "https://help.example/refunds", "lang": "en",
                    "doc_type": "faq"}
    assert body.lstrip().startswith("# Refunds")
    assert split_front_matter("no front matter") == ({}, "no front matter")
    assert split_front_matter("---\nunterminated") == ({}, "---\nunterminated")


def test_markdown_sections_keep_heading_paths_and_ignore_fenced_hashes() -> None:
    parsed = parse(MD, "markdown")
    assert parsed.title == "Refunds"
    paths = [s.heading_path for s in parsed.sections]
    assert paths == [
        ("When will I get my refund?",),
        ("When will I get my refund?", "Card refunds"),
        ("Store credit",),
    ]
    first = parsed.sections[0].text
    assert "**" not in first and "3 business days" in first and "the policy" in first
    assert "# not a heading" in parsed.sections[1].text


def test_html_is_parsed_into_heading_sections_without_scripts() -> None:
    html = """<html><head><title>Shipping</title><script>var x = 1;</script>
    <link rel="canonical" href="https://help.example/shipping"></head><body>
    <nav>Home | About</nav><h1>Shipping</h1><p>We ship worldwide.</p>
    <h2>Costs</h2><p>Standard is <b>free</b> over $50.</p><ul><li>Express: $15</li></ul>
    <h3>EU</h3><p>EU orders ship from Amsterdam.</p><style>p{}</style></body></html>"""
    parsed = parse(html, "html")
    assert parsed.title == "Shipping"
    assert parsed.url == "https://help.example/shipping"
    assert [s.heading_path for s in parsed.sections] == [(), ("Costs",), ("Costs", "EU")]
    assert parsed.sections[0].text == "We ship worldwide."
    assert "free over $50" in parsed.sections[1].text.replace("\n", " ")
    assert "Express: $15" in parsed.sections[1].text
    assert all("var x" not in s.text and "Home" not in s.text for s in parsed.sections)


def test_plain_text_is_one_section() -> None:
    parsed = parse("Hello there.\n\nSecond paragraph.", "text")
    assert parsed.title == "" and len(parsed.sections) == 1


def test_chunks_respect_the_size_limit_and_overlap() -> None:
    sentences = [f"Sentence number {i} has exactly seven words." for i in range(100)]
    text = " ".join(sentences)
    chunks = chunk_section(text, max_words=70, overlap_words=15)
    assert len(chunks) > 5
    assert all(len(c.split()) <= 70 for c in chunks[:-1])
    for a, b in itertools.pairwise(chunks):
        # The last sentences of a chunk open the next one.
        assert a.split(". ")[-1] in b
    joined = " ".join(chunks)
    assert all(s in joined for s in sentences)


def test_a_giant_sentence_is_cut_by_words() -> None:
    text = " ".join(["word"] * (MAX_WORDS * 3))
    chunks = chunk_section(text)
    assert all(len(c.split()) <= MAX_WORDS for c in chunks)
    assert sum(len(c.split()) for c in chunks) >= MAX_WORDS * 3


def test_near_duplicates_are_removed() -> None:
    base = "Refunds go back to the original payment method within ten business days of receipt"
    texts = [base, base + ".", base.upper(), "Something entirely different about shipping times",
             base.replace("ten", "twelve")]
    kept = dedupe(texts)
    assert kept[0] == 0 and 1 not in kept and 2 not in kept and 3 in kept


def test_parse_document_gives_stable_ids_and_metadata() -> None:
    doc, chunks = parse_document("acme", "docs/Refunds.md", MD, updated_at=5.0)
    assert doc.doc_id == "refunds" and doc.title == "Refunds" and doc.doc_type == "faq"
    assert doc.url == "https://help.example/refunds" and doc.updated_at == 5.0
    assert chunks and all(c.tenant == "acme" and c.doc_id == "refunds" for c in chunks)
    assert all(c.url == doc.url and c.updated_at == 5.0 and c.doc_type == "faq" for c in chunks)
    again = parse_document("acme", "docs/Refunds.md", MD, updated_at=9.0)[1]
    assert [c.chunk_id for c in again] == [c.chunk_id for c in chunks]
    assert len({c.chunk_id for c in chunks}) == len(chunks)


def test_parse_document_dedupes_repeated_sections() -> None:
    md = "## A\n\nShip within two days to every country we serve.\n\n" * 3
    _, chunks = parse_document("t", "x.md", md)
    assert len(chunks) == 1


def test_formats_and_names() -> None:
    assert guess_format("a.MD") == "markdown" and guess_format("a.htm") == "html"
    assert guess_format("a.txt") == "text" and guess_format("README") == "text"
    assert slug("Some Dir/Returns Policy.md") == "returns-policy"
    assert slug("???").startswith("doc-")
    with pytest.raises(BadRequest):
        parse_document("t", "a.md", "x", fmt="pdf")
    with pytest.raises(BadRequest):
        parse_document("t", " ", "x")


def test_demo_kb_chunks_are_sane() -> None:
    total = 0
    for path in sorted(DEMO_KB.glob("*.md")):
        doc, chunks = parse_document("demo", path.name, path.read_text())
        assert doc.title and doc.url.startswith("https://"), path
        assert chunks, path
        for c in chunks:
            assert 3 <= len(c.text.split()) <= MAX_WORDS + 30
        total += len(chunks)
    assert total > 40
