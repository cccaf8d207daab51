"""Fixtures for the retrieval tests: a real SQLite store, the real MiniLM model (loaded once),
and a tiny deterministic embedder for tests about model management."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from retrieval.embed import DEFAULT_MODEL, Embedder, FastEmbedEmbedder, Vectors, normalize_rows
from retrieval.text import tokenize
from warmline.store.sqlite import SQLiteStore

DEMO_KB = Path(__file__).resolve().parents[2] / "warmline" / "demo_kb"


class HashEmbedder(Embedder):
    """Bag of stemmed words hashed into `dim` buckets: deterministic, instant, and similar
    texts get similar vectors, which is all model-management tests need. `gate`, when given,
    must be set before any text is embedded (to hold a job mid-flight)."""

    def __init__(self, model_id: str, dim: int = 64, gate: threading.Event | None = None):
        self.model_id = model_id
        self.dim = dim
        self.gate = gate
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> Vectors:
        if self.gate is not None:
            assert self.gate.wait(30), "gate never opened"
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in tokenize(t) or ["<empty>"]:
                h = int.from_bytes(hashlib.blake2b((self.model_id + w).encode(),
                                                   digest_size=4).digest(), "little")
                out[i, h % self.dim] += 1.0
        return normalize_rows(out)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "kb.db"))
    await s.open()
    await s.add_tenant("acme")
    await s.add_tenant("globex")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(scope="session")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> FastEmbedEmbedder:
    return FastEmbedEmbedder(DEFAULT_MODEL, cache_dir=tmp_path_factory.mktemp("models"))
