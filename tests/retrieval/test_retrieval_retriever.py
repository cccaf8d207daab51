"""The async retriever against a real SQLite store."""

from __future__ import annotations

import asyncio
import threading

import pytest

from retrieval.embed import DEFAULT_MODEL, Embedder, FastEmbedEmbedder
from retrieval.factory import build_retriever
from retrieval.ingest import SourceDocument, ingest_documents, ingest_paths
from retrieval.retriever import KBRetriever
from tests.retrieval.conftest import DEMO_KB, HashEmbedder
from warmline.config import Config
from warmline.errors import BadRequest, NotFound
from warmline.store.sqlite import SQLiteStore


def doc(name: str, content: str, **kw: object) -> SourceDocument:
    return SourceDocument(name, content, **kw)  # type: ignore[arg-type]


async def test_bm25_retriever_answers_from_the_demo_kb(store: SQLiteStore) -> None:
    r = build_retriever(Config(retriever="bm25"), store)
    try:
        ids = await ingest_paths(store, "acme", [str(DEMO_KB)])
        assert "refunds" in ids and len(ids) == len(list(DEMO_KB.glob("*.md")))
        res = await r.search("acme", "How do I reset my password?")
        assert res.hits[0].chunk.doc_id == "resetting-your-password"
        assert 0.0 <= res.confidence <= 1.0
        assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)
        assert len((await r.search("acme", "refund", k=3)).hits) == 3
        nothing = await r.search("acme", "zzzz qqqq")
        assert nothing.hits == () and nothing.confidence == 0.0
        assert (await r.search("globex", "reset password")).hits == ()
        with pytest.raises(NotFound):
            await r.search("nobody", "reset password")
    finally:
        await r.close()


async def test_reingesting_a_changed_document_replaces_its_chunks(store: SQLiteStore) -> None:
    r = KBRetriever(store, fresh_wait_s=30)
    try:
        await ingest_documents(store, "acme", [doc("faq.md", "## Hours\n\nWe open at nine.")])
        assert (await r.search("acme", "open nine")).hits[0].chunk.text == "We open at nine."
        await ingest_documents(store, "acme", [doc("faq.md", "## Hours\n\nWe open at ten.")])
        res = await r.search("acme", "open nine ten")
        assert [h.chunk.text for h in res.hits] == ["We open at ten."]
        assert r.rebuilds == 2
    finally:
        await r.close()


async def test_a_deleted_document_disappears_at_once(store: SQLiteStore) -> None:
    # fresh_wait_s=0: this node never waits for a rebuild, so only forget_document helps here.
    r = KBRetriever(store, fresh_wait_s=0)
    try:
        await ingest_documents(store, "acme", [doc("a.md", "Parcel lockers are free."),
                                               doc("b.md", "Parcel insurance costs $2.")])
        assert {h.chunk.doc_id for h in (await r.search("acme", "parcel")).hits} == {"a", "b"}
        assert await store.delete_document("acme", "a")
        await r.forget_document("acme", "a")
        assert {h.chunk.doc_id for h in (await r.search("acme", "parcel")).hits} == {"b"}
    finally:
        await r.close()


async def test_another_nodes_deletion_shows_after_the_version_check(store: SQLiteStore) -> None:
    other_node = KBRetriever(store)  # default: waits briefly for small rebuilds
    try:
        await ingest_documents(store, "acme", [doc("a.md", "Parcel lockers are free."),
                                               doc("b.md", "Parcel insurance costs $2.")])
        assert len((await other_node.search("acme", "parcel")).hits) == 2
        await store.delete_document("acme", "a")  # deleted elsewhere: no forget_document here
        assert {h.chunk.doc_id for h in (await other_node.search("acme", "parcel")).hits} == {"b"}
    finally:
        await other_node.close()


async def test_filters(store: SQLiteStore) -> None:
    r = KBRetriever(store)
    try:
        await ingest_documents(store, "acme", [
            doc("en.md", "---\nlang: en\ndoc_type: faq\n---\nReturn window is 30 days."),
            doc("de.md", "---\nlang: de\n---\nReturn Rückgabe 30 Tage."),
        ])
        hits = (await r.search("acme", "return", filters={"lang": "de"})).hits
        assert [h.chunk.doc_id for h in hits] == ["de"]
        hits = (await r.search("acme", "return", filters={"doc_type": "faq"})).hits
        assert [h.chunk.doc_id for h in hits] == ["en"]
        assert (await r.search("acme", "return", filters={"lang": "fr"})).hits == ()
        with pytest.raises(BadRequest):
            await r.search("acme", "return", filters={"tenant": "globex"})
    finally:
        await r.close()


async def test_hybrid_finds_paraphrases_bm25_misses(
    store: SQLiteStore, minilm: FastEmbedEmbedder
) -> None:
    r = build_retriever(Config(retriever="hybrid"), store, embedder_factory=lambda m: minilm)
    bm25 = build_retriever(Config(retriever="bm25"), store)
    # A few articles keep the embedding work (and the test) short.
    names = ["refunds", "resetting-your-password", "two-factor-authentication-and-login-problems",
             "tracking-your-order", "gift-cards", "returns-policy"]
    try:
        await ingest_paths(store, "acme", [str(DEMO_KB / f"{n}.md") for n in names], indexer=r)
        await r.wait_ready("acme")
        assert r.dense_ready
        q = "I forgot my login credentials"
        hybrid_top = (await r.search("acme", q)).hits[0].chunk.doc_id
        assert hybrid_top in (
            "resetting-your-password", "two-factor-authentication-and-login-problems"
        )
        res = await r.search("acme", "When will my money come back after I send stuff back?")
        assert res.hits[0].chunk.doc_id == "refunds"
        off_topic = await r.search("acme", "Who won the football world cup in 1998?")
        on_topic = await r.search("acme", "How do I reset my password?")
        assert off_topic.confidence < 0.5 < on_topic.confidence
        # The query embedding is cached.
        before = r.query_cache.hits
        await r.search("acme", q)
        assert r.query_cache.hits == before + 1
        # Vectors were stored with their model id and survive a restart of the retriever.
        stored = await store.load_vectors("acme", DEFAULT_MODEL)
        assert len(stored) == len(await store.list_chunks("acme"))
        assert all(len(b) == 384 * 4 for b in stored.values())
    finally:
        await r.close()
        await bm25.close()


async def test_hybrid_serves_bm25_while_the_model_loads(store: SQLiteStore) -> None:
    gate = threading.Event()

    def slow_factory(model_id: str) -> Embedder:
        assert gate.wait(30)
        return HashEmbedder(model_id)

    await ingest_documents(store, "acme", [doc("a.md", "Gift cards never expire."),
                                           doc("b.md", "Promo codes expire after a month."),
                                           doc("c.md", "Shipping is free over $50."),
                                           doc("d.md", "Returns are accepted for 30 days.")])
    r = KBRetriever(store, embedding_model="hash-1", embedder_factory=slow_factory)
    try:
        res = await r.search("acme", "do gift cards expire")
        assert res.hits[0].chunk.doc_id == "a" and not r.dense_ready
        gate.set()
        await r.wait_ready("acme")
        assert r.dense_ready
        idx = r._tenants["acme"].index
        assert idx is not None and idx.dense is not None and idx.dense.complete
        assert (await r.search("acme", "do gift cards expire")).hits[0].chunk.doc_id == "a"
    finally:
        gate.set()
        await r.close()


async def test_changing_the_model_reembeds_while_the_old_model_serves(
    store: SQLiteStore,
) -> None:
    gate = threading.Event()
    embedders: dict[str, HashEmbedder] = {}

    def factory(model_id: str) -> Embedder:
        e = HashEmbedder(model_id, gate=gate if model_id == "hash-2" else None)
        embedders[model_id] = e
        return e

    r = KBRetriever(store, embedding_model="hash-1", embedder_factory=factory)
    try:
        await ingest_documents(store, "acme", [doc("a.md", "Gift cards never expire."),
                                               doc("b.md", "Promo codes expire monthly.")],
                               indexer=r)
        await r.wait_ready("acme")
        state = r._tenants["acme"]
        assert state.index is not None and state.index.dense is not None
        assert state.index.dense.model_id == "hash-1"

        await r.set_embedding_model("hash-2")
        # hash-2's first embed call blocks on the gate (the warm-up of a real model would too);
        # meanwhile searches keep using hash-1's complete vectors.
        for _ in range(3):
            res = await r.search("acme", "gift card expiry")
            assert res.hits[0].chunk.doc_id == "a"
            assert state.index.dense.model_id == "hash-1"
        gate.set()
        await r.wait_ready("acme")
        assert state.index is not None and state.index.dense is not None
        assert state.index.dense.model_id == "hash-2" and state.index.dense.complete
        assert len(await store.load_vectors("acme", "hash-2")) == 2
        assert (await r.search("acme", "gift card expiry")).hits[0].chunk.doc_id == "a"
    finally:
        gate.set()
        await r.close()


async def test_new_chunks_get_vectors_from_the_ingest_without_reembedding(
    store: SQLiteStore,
) -> None:
    made: list[HashEmbedder] = []

    def factory(model_id: str) -> Embedder:
        made.append(HashEmbedder(model_id))
        return made[-1]

    r = KBRetriever(store, embedding_model="hash-1", embedder_factory=factory)
    try:
        await ingest_documents(store, "acme", [doc("a.md", "Gift cards never expire.")],
                               indexer=r)
        await r.wait_ready("acme")
        calls = made[0].calls
        await ingest_documents(store, "acme", [doc("b.md", "Promo codes expire.")], indexer=r)
        await r.search("acme", "promo")  # triggers the rebuild
        await r.wait_ready("acme")
        idx = r._tenants["acme"].index
        assert idx is not None and idx.dense is not None and idx.dense.complete
        # One call for b's chunk and one for the query: nothing embedded twice.
        assert made[0].calls == calls + 2
    finally:
        await r.close()


async def test_close_cancels_a_model_load_in_flight(store: SQLiteStore) -> None:
    gate = threading.Event()

    def factory(model_id: str) -> Embedder:
        assert gate.wait(30)
        return HashEmbedder(model_id)

    r = KBRetriever(store, embedding_model="hash-1", embedder_factory=factory)
    r.start()
    task = next(iter(r._tasks))
    close = asyncio.create_task(r.close())
    gate.set()  # the worker thread itself cannot be interrupted; let it finish
    await asyncio.wait_for(close, 10)
    assert task.done() and not r._tasks
