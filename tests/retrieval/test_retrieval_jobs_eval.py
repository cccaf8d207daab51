"""Ingestion jobs, the evaluation command, and tenant isolation (property-based)."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.eval import evaluate, read_jsonl, run_eval
from retrieval.ingest import ChunkIndexer, SourceDocument, ingest_documents
from retrieval.jobs import IngestJobs, sources_from_json
from retrieval.retriever import KBRetriever
from tests.retrieval.conftest import HashEmbedder
from warmline.errors import BadRequest, NotFound, TooLarge
from warmline.models import Chunk
from warmline.store.sqlite import SQLiteStore


async def test_a_job_reports_progress_and_makes_documents_searchable(
    store: SQLiteStore,
) -> None:
    r = KBRetriever(store, embedding_model="hash-1", embedder_factory=HashEmbedder)
    jobs = IngestJobs(store, retriever=r)
    try:
        docs = [SourceDocument(f"doc{i}.md", f"## Topic {i}\n\nAnswer number {i} is here.")
                for i in range(5)]
        job_id = jobs.start("acme", docs)
        assert jobs.status(job_id)["status"] in ("queued", "running", "done")
        view = await jobs.wait(job_id)
        assert view["status"] == "done" and view["progress"] == view["total"] == 5
        assert view["doc_ids"] == [f"doc{i}" for i in range(5)] and view["error"] is None
        res = await r.search("acme", "answer number 3")
        assert res.hits[0].chunk.doc_id == "doc3"
        await r.wait_ready("acme")  # the job's refresh started the embedding already
        assert len(await store.load_vectors("acme", "hash-1")) == 5
        with pytest.raises(NotFound):
            jobs.status(job_id, tenant="globex")  # another tenant's job does not exist
        with pytest.raises(NotFound):
            jobs.status("job_nope")
    finally:
        await jobs.close()
        await r.close()


async def test_a_failing_job_reports_its_error(store: SQLiteStore) -> None:
    jobs = IngestJobs(store)
    try:
        job_id = jobs.start("no-such-tenant", [SourceDocument("a.md", "text")])
        view = await jobs.wait(job_id)
        assert view["status"] == "failed" and view["error"]
    finally:
        await jobs.close()


class _Blocking(ChunkIndexer):
    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def before_store(self, tenant: str, chunks: object) -> None:
        self.entered.set()
        await asyncio.Event().wait()  # until cancelled

    async def after_store(self, tenant: str, chunks: object) -> None:
        return None


async def test_close_cancels_running_jobs(store: SQLiteStore) -> None:
    indexer = _Blocking()
    jobs = IngestJobs(store, indexer=indexer)
    job_id = jobs.start("acme", [SourceDocument("a.md", "text")])
    await asyncio.wait_for(indexer.entered.wait(), 5)
    await asyncio.wait_for(jobs.close(), 5)
    assert jobs.status(job_id)["status"] == "cancelled"
    with pytest.raises(Exception, match="shutting down"):
        jobs.start("acme", [SourceDocument("b.md", "text")])


def test_api_payload_validation() -> None:
    docs = sources_from_json({"documents": [
        {"name": "a.md", "content": "# A", "format": "markdown", "updated_at": 5},
        {"name": "b.html", "content": "<p>b</p>"},
    ]})
    assert docs[0] == SourceDocument("a.md", "# A", "markdown", 5.0)
    assert docs[1].fmt is None
    assert sources_from_json({"name": "c.txt", "content": "c"})[0].name == "c.txt"
    for bad in ({"documents": []}, {"documents": [{"name": "", "content": "x"}]},
                {"documents": [{"name": "a", "content": 3}]},
                {"documents": [{"name": "a", "content": "x", "format": "pdf"}]},
                {"documents": [{"name": "a", "content": "x", "updated_at": "now"}]}, [1]):
        with pytest.raises(BadRequest):
            sources_from_json(bad)
    with pytest.raises(TooLarge):
        sources_from_json({"name": "a", "content": "x" * 2_000_001})


def _write(path: Path, rows: list[tuple[str, str | None]]) -> str:
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    return str(path)


KB = [("how do I reset my password", "password"), ("I forgot my password", "password"),
      ("password reset link", "password"), ("where is my parcel", "tracking"),
      ("track my order", "tracking"), ("my package has not arrived", "tracking"),
      ("refund my money", "refund"), ("I want a refund", "refund"),
      ("when do I get my money back", "refund")]
QUERIES = [("reset password please", "password"), ("track parcel", "tracking"),
           ("refund please", "refund"), ("what is the weather on mars", None)]


async def test_evaluate_reports_every_metric(tmp_path: Path) -> None:
    out = await evaluate(
        read_jsonl(_write(tmp_path / "kb.jsonl", KB)),
        read_jsonl(_write(tmp_path / "q.jsonl", QUERIES)),
        threshold=0.5, embedding_model="hash-1", embedder_factory=HashEmbedder,
        db_dir=str(tmp_path),
    )
    assert out["n"] == 4 and out["n_in_scope"] == 3 and out["n_oos"] == 1
    assert out["top1_accuracy"] == 1.0
    for key in ("in_scope_accuracy", "oos_recall", "oos_precision", "auroc", "p50_ms",
                "p95_ms"):
        assert key in out
    assert out["p95_ms"] >= out["p50_ms"] > 0


def test_run_eval_bm25_and_bad_input(tmp_path: Path) -> None:
    kb = _write(tmp_path / "kb.jsonl", KB)
    q = _write(tmp_path / "q.jsonl", QUERIES)
    out = run_eval(kb, q, threshold=0.0, retriever="bm25")
    assert out["top1_accuracy"] == 1.0 and out["oos_recall"] == 0.0  # threshold 0 answers all
    (tmp_path / "bad.jsonl").write_text('{"text": 1}\n')
    with pytest.raises(BadRequest):
        run_eval(str(tmp_path / "bad.jsonl"), q)


# Tenant isolation --------------------------------------------------------------------------
VOCAB = "refund card order ship track return pay gift code help late password".split()
TEXT = st.lists(st.sampled_from(VOCAB), min_size=1, max_size=10).map(" ".join)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    docs_a=st.lists(TEXT, min_size=1, max_size=6),
    docs_b=st.lists(TEXT, min_size=0, max_size=6),
    queries=st.lists(TEXT, min_size=1, max_size=4),
    hybrid=st.booleans(),
)
def test_a_tenants_query_never_returns_another_tenants_chunk(
    docs_a: list[str], docs_b: list[str], queries: list[str], hybrid: bool
) -> None:
    async def scenario(tmp: str) -> None:
        store = SQLiteStore(str(Path(tmp) / "iso.db"))
        await store.open()
        r = KBRetriever(store, embedding_model="hash-1" if hybrid else None,
                        embedder_factory=HashEmbedder)
        try:
            await store.add_tenant("a")
            await store.add_tenant("b")
            # Same names in both tenants: identical doc ids must not collide either.
            for tenant, docs in (("a", docs_a), ("b", docs_b)):
                await ingest_documents(
                    store, tenant, [SourceDocument(f"d{i}.txt", t) for i, t in enumerate(docs)]
                )
            if hybrid:
                await r.wait_ready("a")
                await r.wait_ready("b")
            b_chunks = {c.chunk_id for c in await store.list_chunks("b")}
            for q in queries:
                for filters in (None, {"lang": "en"}, {"doc_id": "d0"}):
                    res = await r.search("b", q, k=10, filters=filters)
                    assert all(h.chunk.tenant == "b" for h in res.hits)
                    assert {h.chunk.chunk_id for h in res.hits} <= b_chunks
                    if not docs_b:
                        assert res.hits == () and res.confidence == 0.0
        finally:
            await r.close()
            await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(tmp))


def test_the_index_drops_foreign_chunks_even_if_handed_them() -> None:
    from retrieval.index import TenantIndex

    chunks = [Chunk("a", "d", "a1", "", "", "refund card"),
              Chunk("b", "d", "b1", "", "", "refund card")]
    idx = TenantIndex.build("b", 1, chunks)
    assert [c.chunk_id for c in idx.chunks] == ["b1"]


