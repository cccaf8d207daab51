"""Ingestion throughput through the real job path: parse, chunk, dedupe, store, index.

    python bench/retrieval_ingest.py [--docs 400] [--no-dense]

Documents are synthetic Markdown articles (5 sections of 3-8 sentences from BANKING77 and the
demo KB, each section one chunk or two). Reports, in chunks per second:
- stored: the job is done (documents parsed, chunked, deduplicated and stored atomically);
- searchable: the first search after the job sees the new version (BM25 index rebuilt);
- dense: the background job has embedded every chunk (the real model, all cores), after
  which hybrid search covers them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

from retrieval_latency import sentence_pool

from retrieval.embed import DEFAULT_MODEL
from retrieval.ingest import SourceDocument
from retrieval.jobs import IngestJobs
from retrieval.retriever import KBRetriever
from warmline.store.sqlite import SQLiteStore


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


async def run(n_docs: int, dense: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(str(Path(tmp) / "ingest.db"))
        await store.open()
        await store.add_tenant("t")
        r = KBRetriever(store, embedding_model=DEFAULT_MODEL if dense else None)
        jobs = IngestJobs(store, retriever=r)
        try:
            if dense:
                await r.wait_ready()  # model load is not ingestion
            docs = articles(n_docs)
            t0 = time.perf_counter()
            view = await jobs.wait(jobs.start("t", docs))
            stored_s = time.perf_counter() - t0
            assert view["status"] == "done", view
            res = await r.search("t", f"Question 3 of article {n_docs - 1}")
            searchable_s = time.perf_counter() - t0
            assert res.hits and res.hits[0].chunk.doc_id == f"article-{n_docs - 1}"
            n_chunks = len(await store.list_chunks("t"))
            out: dict[str, object] = {
                "documents": n_docs, "chunks": n_chunks,
                "stored_chunks_per_s": round(n_chunks / stored_s, 1),
                "searchable_chunks_per_s": round(n_chunks / searchable_s, 1),
            }
            if dense:
                await r.wait_ready("t")
                dense_s = time.perf_counter() - t0
                out["dense_chunks_per_s"] = round(n_chunks / dense_s, 1)
            return out
        finally:
            await jobs.close()
            await r.close()
            await store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--no-dense", action="store_true")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.docs, not args.no_dense))))


if __name__ == "__main__":
    main()
