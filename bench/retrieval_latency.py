"""Query latency of the real search path (store version check, snapshot, query embedding,
BM25 + dense + fusion, confidence) at 10,000 and 100,000 chunks, on one core.

    python bench/retrieval_latency.py [--sizes 10000 100000] [--queries 300] [--all-cores]

Chunks are synthetic articles (3-8 sentences from BANKING77 and the demo KB, ~60 words, ten
chunks per document); their vectors are random unit vectors stored under the real model's id
(latency does not depend on what the vectors say), while query embedding uses the real model.
Queries are BANKING77 test lines, all distinct, so the query-embedding cache never helps.
Prints one JSON line per size and retriever.
"""

from __future__ import annotations

import os
import sys

if "--all-cores" not in sys.argv:
    # Pin before numpy/onnxruntime start their thread pools.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse
import asyncio
import json
import random
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from retrieval_common import read_csv

from retrieval.embed import DEFAULT_MODEL, FastEmbedEmbedder, vector_to_bytes
from retrieval.retriever import KBRetriever
from warmline.models import Chunk, Document
from warmline.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent


def sentence_pool() -> list[str]:
    pool = [t for t, _ in read_csv("train.csv")]
    for path in sorted((ROOT / "warmline" / "demo_kb").glob("*.md")):
        text = re.sub(r"(?s)^---.*?---", "", path.read_text())
        pool.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", text)
                    if len(s.split()) > 4 and not s.startswith("#"))
    return pool


def synth(n: int, seed: int = 0) -> list[tuple[Document, list[Chunk]]]:
    rng = random.Random(seed)
    pool = sentence_pool()
    docs = []
    now = time.time()
    for d in range((n + 9) // 10):
        doc_id = f"doc{d}"
        chunks = []
        for c in range(min(10, n - d * 10)):
            text = " ".join(rng.choice(pool) for _ in range(rng.randint(3, 8)))
            chunks.append(Chunk("t", doc_id, f"{doc_id}:{c}", f"Article {d}", "", text,
                                (f"Section {c}",), now))
        docs.append((Document("t", doc_id, f"Article {d}", "", "", now), chunks))
    return docs


async def run(size: int, n_queries: int, threads: int | None) -> list[dict[str, object]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(str(Path(tmp) / "bench.db"))
        await store.open()
        await store.add_tenant("t")
        docs = synth(size)
        t0 = time.perf_counter()
        for document, chunks in docs:
            await store.replace_document(document, chunks)
        store_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        vectors: dict[str, bytes] = {}
        for _, chunks in docs:
            m = rng.standard_normal((len(chunks), 384)).astype(np.float32)
            m /= np.linalg.norm(m, axis=1, keepdims=True)
            vectors.update((c.chunk_id, vector_to_bytes(v)) for c, v in zip(chunks, m,
                                                                             strict=True))
        await store.save_vectors("t", DEFAULT_MODEL, vectors)
        queries = [t for t, _ in read_csv("test.csv")][:n_queries]
        for mode in ("hybrid", "bm25"):
            r = KBRetriever(
                store,
                embedding_model=DEFAULT_MODEL if mode == "hybrid" else None,
                embedder_factory=lambda m: FastEmbedEmbedder(m, threads=threads),
            )
            try:
                t0 = time.perf_counter()
                await r.wait_ready("t")
                await r.search("t", "warm up")
                build_s = time.perf_counter() - t0
                lat = []
                for q in queries:
                    t1 = time.perf_counter()
                    res = await r.search("t", q)
                    lat.append((time.perf_counter() - t1) * 1000)
                    assert res.hits
                a = np.array(lat)
                # The query embedding alone (no cache), for the breakdown.
                emb_ms: list[float] = []
                for embedder in list(r._embedders.values())[:1]:
                    for q in queries[:100]:
                        t1 = time.perf_counter()
                        embedder.embed([q + " ?"])
                        emb_ms.append((time.perf_counter() - t1) * 1000)
                results.append({
                    "chunks": size, "retriever": mode, "queries": len(lat),
                    "p50_ms": round(float(np.percentile(a, 50)), 2),
                    "p95_ms": round(float(np.percentile(a, 95)), 2),
                    "p99_ms": round(float(np.percentile(a, 99)), 2),
                    "embed_p50_ms": round(float(np.median(emb_ms)), 2) if emb_ms else None,
                    "index_build_s": round(build_s, 2), "store_write_s": round(store_s, 2),
                    "cores": len(os.sched_getaffinity(0)),
                })
            finally:
                await r.close()
        await store.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--all-cores", action="store_true")
    args = ap.parse_args()
    threads = None if args.all_cores else 1
    for size in args.sizes:
        for row in asyncio.run(run(size, args.queries, threads)):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
