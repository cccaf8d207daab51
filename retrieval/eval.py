"""`warmline eval retrieval`: accuracy, out-of-scope detection and latency on labeled JSONL.

KB lines `{"text", "label"}` become chunks carrying their label (one document per label);
query lines `{"text", "label"}` with label null are out of scope (should not be answered).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.calibration import auroc
from retrieval.chunking import content_id, slug
from retrieval.retriever import EmbedderFactory, KBRetriever
from warmline.errors import BadRequest
from warmline.models import Chunk, Document

EVAL_TENANT = "eval"


@dataclass(frozen=True)
class Example:
    text: str
    label: str | None


def read_jsonl(path: str) -> list[Example]:
    out: list[Example] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadRequest(f"{path}:{n}: not JSON: {exc}") from exc
            text, label = obj.get("text") if isinstance(obj, dict) else None, None
            if isinstance(obj, dict):
                label = obj.get("label")
            if not isinstance(text, str) or not (label is None or isinstance(label, str)):
                raise BadRequest(f'{path}:{n}: expected {{"text": str, "label": str|null}}')
            out.append(Example(text, label))
    return out


def kb_documents(tenant: str, kb: Sequence[Example]) -> list[tuple[Document, list[Chunk]]]:
    """One document per label; every KB line is its own chunk (lines are already short)."""
    by_label: dict[str, list[str]] = {}
    for ex in kb:
        if ex.label is None:
            raise BadRequest("every KB line needs a label")
        by_label.setdefault(ex.label, []).append(ex.text)
    docs = []
    now = time.time()
    for label, texts in by_label.items():
        doc_id = slug(label)
        document = Document(tenant, doc_id, "", "", "\n".join(texts), now, lang="en")
        seen: set[str] = set()
        chunks = []
        for text in texts:
            cid = content_id(doc_id, (), text)
            if cid in seen:
                continue
            seen.add(cid)
            chunks.append(Chunk(tenant, doc_id, cid, "", "", text, (), now, label=label))
        docs.append((document, chunks))
    return docs


def metrics(
    queries: Sequence[Example],
    predicted: Sequence[str | None],
    confidence: Sequence[float],
    latencies_ms: Sequence[float],
    threshold: float,
) -> dict[str, Any]:
    in_scope = [i for i, q in enumerate(queries) if q.label is not None]
    oos = [i for i, q in enumerate(queries) if q.label is None]
    answered = [c >= threshold for c in confidence]
    right = [predicted[i] == queries[i].label for i in range(len(queries))]
    declined = [i for i in range(len(queries)) if not answered[i]]
    lat = np.asarray(latencies_ms, dtype=np.float64)

    def frac(num: int, den: int) -> float | None:
        return round(num / den, 4) if den else None

    auc = auroc(
        [confidence[i] for i in in_scope + oos], [True] * len(in_scope) + [False] * len(oos)
    )
    return {
        "n": len(queries),
        "n_in_scope": len(in_scope),
        "n_oos": len(oos),
        "threshold": threshold,
        "top1_accuracy": frac(sum(right[i] for i in in_scope), len(in_scope)),
        "in_scope_accuracy": frac(sum(right[i] and answered[i] for i in in_scope), len(in_scope)),
        "oos_recall": frac(sum(not answered[i] for i in oos), len(oos)),
        "oos_precision": frac(sum(queries[i].label is None for i in declined), len(declined)),
        "auroc": None if np.isnan(auc) else round(auc, 4),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 2) if lat.size else None,
    }


async def evaluate(
    kb: Sequence[Example],
    queries: Sequence[Example],
    threshold: float,
    retriever: str = "hybrid",
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2",
    embedder_factory: EmbedderFactory | None = None,
    db_dir: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    from warmline.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(dir=db_dir) as tmp:
        store = SQLiteStore(os.path.join(tmp, "eval.db"))
        await store.open()
        model = embedding_model if retriever == "hybrid" else None
        r = KBRetriever(store, embedding_model=model, embedder_factory=embedder_factory)
        try:
            await store.add_tenant(EVAL_TENANT)
            docs = kb_documents(EVAL_TENANT, kb)
            for i, (document, chunks) in enumerate(docs):
                await r.before_store(EVAL_TENANT, chunks)
                await store.replace_document(document, chunks)
                await r.after_store(EVAL_TENANT, chunks)
                if progress is not None:
                    progress("index", i + 1, len(docs))
            await r.wait_ready(EVAL_TENANT)
            predicted: list[str | None] = []
            confidence: list[float] = []
            latencies: list[float] = []
            for i, q in enumerate(queries):
                t0 = time.perf_counter()
                res = await r.search(EVAL_TENANT, q.text, k=1)
                latencies.append((time.perf_counter() - t0) * 1000.0)
                predicted.append(res.hits[0].chunk.label if res.hits else None)
                confidence.append(res.confidence)
                if progress is not None and (i + 1) % 100 == 0:
                    progress("query", i + 1, len(queries))
        finally:
            await r.close()
            await store.close()
    out = metrics(queries, predicted, confidence, latencies, threshold)
    out["retriever"] = retriever if retriever != "hybrid" else f"hybrid:{embedding_model}"
    out["kb_size"] = len(kb)
    return out


def run_eval(
    kb_path: str,
    queries_path: str,
    threshold: float = 0.5,
    retriever: str = "hybrid",
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2",
) -> dict[str, Any]:
    """Blocking entry point for the CLI (runs its own event loop)."""
    kb = read_jsonl(kb_path)
    queries = read_jsonl(queries_path)
    if not kb:
        raise BadRequest(f"{kb_path}: empty knowledge base")
    if not queries:
        raise BadRequest(f"{queries_path}: no queries")
    return asyncio.run(evaluate(kb, queries, threshold, retriever, embedding_model))
