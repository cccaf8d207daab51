"""Shared helpers for the retrieval benchmarks: BANKING77 loading and cached embeddings."""

from __future__ import annotations

import csv
import hashlib
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.embed import DEFAULT_MODEL, FastEmbedEmbedder

SRC = os.environ.get("BANKING77_DIR", "/work/shared/data/banking77")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "warmline" / "bench"


def read_csv(name: str) -> list[tuple[str, str]]:
    with open(os.path.join(SRC, name), encoding="utf-8", newline="") as f:
        return [(row["text"], row["category"]) for row in csv.DictReader(f)]


def embed_cached(texts: list[str], model: str = DEFAULT_MODEL) -> np.ndarray:
    """Embeddings of `texts`, cached on disk by content hash (embedding 13k texts takes ~1 min)."""
    key = hashlib.sha256(("\x00".join(texts) + model).encode()).hexdigest()[:20]
    path = CACHE / f"emb-{key}.npy"
    if path.exists():
        return np.load(path)
    CACHE.mkdir(parents=True, exist_ok=True)
    emb = FastEmbedEmbedder(model)
    t0 = time.perf_counter()
    out = emb.embed(texts)
    print(f"# embedded {len(texts)} texts in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    np.save(path, out)
    return out


def split_dev(
    train: list[tuple[str, str]], frac: float = 0.15, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Per-intent hold-out of `frac` of train as dev queries (test.csv stays untouched)."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, (_, label) in enumerate(train):
        by_label.setdefault(label, []).append(i)
    kb, dev = [], []
    for idxs in by_label.values():
        idxs = idxs[:]
        rng.shuffle(idxs)
        cut = max(1, int(len(idxs) * frac))
        dev.extend(idxs[:cut])
        kb.extend(idxs[cut:])
    return sorted(kb), sorted(dev)
