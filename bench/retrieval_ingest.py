"""Ingestion throughput through the real job path: parse, chunk, dedupe, store, index, embed.

    python bench/retrieval_ingest.py [--docs 400] [--runs 3] [--no-dense] [--threads N]

Documents are synthetic Markdown articles (5 sections of 3-8 sentences from BANKING77 and the
demo KB, each section one chunk or two). The model is loaded once, before the first run (model
load is not ingestion); each run ingests into a fresh store. Reports, in chunks per second:
- stored: the job is done (documents parsed, chunked, deduplicated and stored atomically);
- searchable: the first search after the job sees the new version (BM25 index rebuilt);
- embedding: chunks embedded per second of time spent inside the embedder (the model alone);
- dense: end to end, from the job's start until every chunk has a vector (the background
  embedding, all cores unless --threads), after which hybrid search covers them.
With --runs > 1 the last line is the median of each figure over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from retrieval_common import read_csv

from retrieval.embed import DEFAULT_MODEL, Embedder, FastEmbedEmbedder, Vectors
from retrieval.ingest import SourceDocument
from retrieval.jobs import IngestJobs
from retrieval.retriever import KBRetriever
from warmline.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent


class TimedEmbedder(Embedder):
    """Adds up the wall time spent inside `embed` and the texts embedded (calls may overlap:
    the time counted is then the union, not the sum)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self._lock = threading.Lock()
        self._active = 0
        self._since = 0.0
        self.seconds = 0.0
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> Vectors:
        with self._lock:
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1
        try:
            return self.inner.embed(texts)
        finally:
            with self._lock:
                self._active -= 1
                self.texts += len(texts)
                if self._active == 0:
                    self.seconds += time.perf_counter() - self._since

    def reset(self) -> None:
        with self._lock:
            self.seconds, self.texts = 0.0, 0


def sentence_pool() -> list[str]:
    # As in retrieval_latency.py, which cannot be imported here: it pins the process to one
    # core on import.
    pool = [t for t, _ in read_csv("train.csv")]
    for path in sorted((ROOT / "warmline" / "demo_kb").glob("*.md")):
        text = re.sub(r"(?s)^---.*?---", "", path.read_text())
        pool.extend(
            s.strip()
            for s in re.split(r"(?<=[.!?])\s+", text)
            if len(s.split()) > 4 and not s.startswith("#")
        )
    return pool


def articles(n: int, seed: int = 1) -> list[SourceDocument]:
    rng = random.Random(seed)
    pool = sentence_pool()
    docs = []
    for d in range(n):
        parts = [f"---\ntitle: Article {d}\nurl: https://help.example/a{d}\n---\n# Article {d}\n"]
        for s in range(5):
            body = " ".join(rng.choice(pool) for _ in range(rng.randint(3, 8)))
            parts.append(f"## Question {s} of article {d}?\n\n{body}\n")
        docs.append(SourceDocument(f"article-{d}.md", "\n".join(parts)))
    return docs


async def run(n_docs: int, embedder: TimedEmbedder | None) -> dict[str, int | float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(str(Path(tmp) / "ingest.db"))
        await store.open()
        await store.add_tenant("t")
        r = KBRetriever(
            store,
            embedding_model=DEFAULT_MODEL if embedder is not None else None,
            embedder_factory=(lambda _m: embedder) if embedder is not None else None,
        )
        jobs = IngestJobs(store, retriever=r)
        try:
            if embedder is not None:
                await r.wait_ready()
                embedder.reset()
            docs = articles(n_docs)
            t0 = time.perf_counter()
            view = await jobs.wait(jobs.start("t", docs))
            stored_s = time.perf_counter() - t0
            assert view["status"] == "done", view
            res = await r.search("t", f"Question 3 of article {n_docs - 1}")
            searchable_s = time.perf_counter() - t0
            assert res.hits and res.hits[0].chunk.doc_id == f"article-{n_docs - 1}"
            n_chunks = len(await store.list_chunks("t"))
            out: dict[str, int | float] = {
                "documents": n_docs,
                "chunks": n_chunks,
                "cores": len(os.sched_getaffinity(0)),
                "stored_chunks_per_s": round(n_chunks / stored_s, 1),
                "searchable_chunks_per_s": round(n_chunks / searchable_s, 1),
            }
            if embedder is not None:
                await r.wait_ready("t")
                dense_s = time.perf_counter() - t0
                # Texts, not chunks: the search above may have embedded its query too.
                out["embedding_chunks_per_s"] = round(embedder.texts / embedder.seconds, 1)
                out["dense_chunks_per_s"] = round(n_chunks / dense_s, 1)
            return out
        finally:
            await jobs.close()
            await r.close()
            await store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-dense", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="cores for embedding (all)")
    args = ap.parse_args()
    embedder = None
    if not args.no_dense:
        embedder = TimedEmbedder(FastEmbedEmbedder(DEFAULT_MODEL, threads=args.threads))
    rows = []
    for _ in range(args.runs):
        rows.append(asyncio.run(run(args.docs, embedder)))
        print(json.dumps(rows[-1]), flush=True)
    if args.runs > 1:
        median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(json.dumps({"median_of": args.runs, **median}))


if __name__ == "__main__":
    main()
