"""The async retriever: per-tenant index snapshots kept in step with the store.

Each search reads the tenant's `kb_version` (one cheap query). When it moved, a rebuild starts
in the background (off the event loop) and the search waits for it only briefly: small KBs
see a change at once, large ones keep serving the previous snapshot until the new one is
ready. New chunks are searchable by BM25 as soon as the rebuild is in; a background job then
embeds them (embedding is ~50x slower than indexing). Dense vectors are kept per model id; a
query vector is compared only with vectors of its own model, and after a model change the
old model keeps serving until the new one covers the tenant at least as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.base import EMPTY_RESULT, Hit, RetrievalResult, Retriever
from retrieval.calibration import Calibrator, load_calibrators
from retrieval.embed import Embedder, QueryCache, Vectors, vector_from_bytes, vector_to_bytes
from retrieval.fusion import RankConfig
from retrieval.index import DenseMatrix, TenantIndex, index_text
from retrieval.text import normalize, tokenize
from warmline.errors import Unavailable
from warmline.models import Chunk
from warmline.store.base import Store

log = logging.getLogger("warmline.retrieval")

EmbedderFactory = Callable[[str], Embedder]
EMBED_BATCH = 64


@dataclass
class _TenantState:
    index: TenantIndex | None = None
    rebuild: asyncio.Task[TenantIndex] | None = None
    embed: asyncio.Task[None] | None = None
    embed_again: bool = False


class KBRetriever(Retriever):
    def __init__(
        self,
        store: Store,
        *,
        embedding_model: str | None = None,
        embedder_factory: EmbedderFactory | None = None,
        rank: RankConfig | None = None,
        calibrators: Mapping[str, Calibrator] | None = None,
        fresh_wait_s: float = 0.25,
        query_cache_size: int = 2048,
    ) -> None:
        """`embedding_model=None` is BM25 only. Otherwise the model is loaded in the
        background on first use; searches use BM25 alone until it is ready."""
        self.store = store
        self.rank_config = rank or RankConfig()
        self.calibrators = dict(calibrators or load_calibrators())
        self.fresh_wait_s = fresh_wait_s
        self.query_cache = QueryCache(query_cache_size)
        self._factory = embedder_factory
        self._model = embedding_model
        self._embedders: dict[str, Embedder] = {}
        self._loading: dict[str, asyncio.Task[Embedder]] = {}
        self._tenants: dict[str, _TenantState] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Vectors embedded by an ingest before its chunks were stored, by model then chunk id.
        self._fresh_vectors: dict[str, dict[str, Vectors]] = {}
        # Deleted documents hidden at once on this node: tenant -> doc_id -> forget sequence.
        self._forgotten: dict[str, dict[str, int]] = {}
        self._seq = itertools.count(1)
        self._closed = False
        self.rebuilds = 0

    # Lifecycle ---------------------------------------------------------------------------
    @property
    def embedding_model(self) -> str | None:
        return self._model

    @property
    def dense_ready(self) -> bool:
        return self._model is not None and self._model in self._embedders

    def start(self) -> None:
        """Begin loading the embedding model in the background (idempotent)."""
        if self._model is not None:
            self._load_task(self._model)

    async def wait_ready(self, tenant: str | None = None) -> None:
        """Wait until the model is loaded and, for `tenant`, every chunk has a vector of it.
        For tests, benchmarks and the CLI; the server never needs to wait."""
        if self._model is None:
            return
        await self._load_task(self._model)
        if tenant is None:
            return
        while True:
            state = await self._fresh_state(tenant, wait=True)
            idx = state.index
            if idx is None or not idx.missing_vectors(self._model):
                return
            if self._model not in self._embedders:
                raise Unavailable(f"embedding model {self._model} is not loaded")
            if state.embed is None or state.embed.done():
                self._schedule_embed(tenant)
            assert state.embed is not None
            await asyncio.shield(state.embed)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        # gather collects the children's CancelledErrors, yet raises if close() is cancelled.
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("retrieval task %s failed: %r", task.get_name(), task.exception())

    # Model management --------------------------------------------------------------------
    def _load_task(self, model_id: str) -> asyncio.Task[Embedder]:
        task = self._loading.get(model_id)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._spawn(self._load(model_id), f"embedder-load:{model_id}")
            self._loading[model_id] = task
        return task

    async def _load(self, model_id: str) -> Embedder:
        factory = self._factory or _default_factory
        t0 = time.perf_counter()
        embedder = await asyncio.to_thread(factory, model_id)
        self._embedders[model_id] = embedder
        log.info("embedding model %s ready in %.2fs", model_id, time.perf_counter() - t0)
        # Tenants indexed while the model loaded now need their vectors.
        for tenant in list(self._tenants):
            self._schedule_embed(tenant)
        return embedder

    async def set_embedding_model(self, model_id: str | None) -> None:
        """Switch models at run time. Each tenant keeps serving its current vectors until the
        new model's vectors are complete (background re-embedding)."""
        self._model = model_id
        if model_id is not None:
            self._load_task(model_id)

    async def _embedder(self, model_id: str) -> Embedder | None:
        try:
            return await self._load_task(model_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken model must not take search down: BM25 serves
            log.warning("embedding model %s unavailable: %r", model_id, exc)
            return None

    # Ingestion hooks (retrieval.ingest.ChunkIndexer) -------------------------------------
    async def before_store(self, tenant: str, chunks: Sequence[Chunk]) -> None:
        """Embed a document's new chunks before they are stored, so the rebuild that the
        store's version bump triggers finds their vectors ready."""
        model_id = self._model
        if model_id is None or not chunks:
            return
        embedder = await self._embedder(model_id)
        if embedder is None:
            return
        idx = self._state(tenant).index
        fresh = self._fresh_vectors.setdefault(model_id, {})
        if len(fresh) > 200_000:
            fresh.clear()  # vectors of chunks that were never stored; the rebuild re-embeds
        todo = [
            c
            for c in chunks
            if c.chunk_id not in fresh
            and (idx is None or idx.dense is None or idx.dense.model_id != model_id
                 or idx.vector_of(c.chunk_id) is None)
        ]
        for start in range(0, len(todo), EMBED_BATCH):
            batch = todo[start : start + EMBED_BATCH]
            vecs = await asyncio.to_thread(embedder.embed, [index_text(c) for c in batch])
            for c, v in zip(batch, vecs, strict=True):
                fresh[c.chunk_id] = v

    async def after_store(self, tenant: str, chunks: Sequence[Chunk]) -> None:
        model_id = self._model
        if model_id is None or not chunks:
            return
        fresh = self._fresh_vectors.get(model_id, {})
        idx = self._state(tenant).index
        out: dict[str, bytes] = {}
        for c in chunks:
            v = fresh.get(c.chunk_id)
            if v is None and idx is not None and idx.dense is not None \
                    and idx.dense.model_id == model_id:
                v = idx.vector_of(c.chunk_id)
            if v is not None:
                out[c.chunk_id] = vector_to_bytes(v)
        if out:
            await self.store.save_vectors(tenant, model_id, out)

    async def refresh(self, tenant: str) -> None:
        """Start bringing the tenant's index up to date in the background (after an ingest,
        so embedding starts before the next question arrives). Never waits for it."""
        if self._closed:
            return
        version = await self.store.kb_version(tenant)
        state = self._state(tenant)
        if state.index is None or state.index.version != version:
            if state.rebuild is None or state.rebuild.done():
                state.rebuild = self._spawn(self._rebuild(tenant), f"kb-rebuild:{tenant}")
        elif self._model is not None and state.index.missing_vectors(self._model):
            self._schedule_embed(tenant)

    async def forget_document(self, tenant: str, doc_id: str) -> None:
        self._forgotten.setdefault(tenant, {})[doc_id] = next(self._seq)

    # Search ------------------------------------------------------------------------------
    async def search(
        self,
        tenant: str,
        query: str,
        k: int = 5,
        filters: Mapping[str, str] | None = None,
    ) -> RetrievalResult:
        if self._model is not None and self._model not in self._embedders:
            self._load_task(self._model)  # idempotent; BM25 serves until it is ready
        state = await self._fresh_state(tenant, wait=False)
        idx = state.index
        if idx is None or not idx.chunks or k <= 0:
            return EMPTY_RESULT
        # Validate filters before paying for an embedding.
        mask = idx.allowed(filters, tuple(self._forgotten.get(tenant, {})))
        embedder: Embedder | None = None
        if idx.dense is not None and idx.dense.usable:
            embedder = self._embedders.get(idx.dense.model_id)
        result = await asyncio.to_thread(self._search_sync, idx, embedder, query, k, mask)
        return result

    def _search_sync(
        self,
        idx: TenantIndex,
        embedder: Embedder | None,
        query: str,
        k: int,
        mask: np.ndarray[Any, np.dtype[np.bool_]] | None,
    ) -> RetrievalResult:
        qvec: Vectors | None = None
        if embedder is not None:
            qvec = self.embed_query(embedder, query)
        ranked = idx.rank(tokenize(query), qvec, self.rank_config, mask)
        hits: list[Hit] = []
        for i, score in zip(ranked.order, ranked.scores, strict=True):
            chunk = idx.chunks[i]
            # Isolation is enforced here, whatever the index holds.
            if chunk.tenant != idx.tenant:
                continue
            hits.append(Hit(chunk, score))
            if len(hits) >= k:
                break
        if not hits:
            return EMPTY_RESULT
        mode = ("hybrid" if qvec is not None else "bm25") + ("_labeled" if idx.labeled else "")
        confidence = self.calibrators[mode].predict(ranked.features)
        return RetrievalResult(tuple(hits), confidence)

    def embed_query(self, embedder: Embedder, query: str) -> Vectors:
        key = " ".join(normalize(query).split())
        v = self.query_cache.get(embedder.model_id, key)
        if v is None:
            v = embedder.embed([query])[0]
            self.query_cache.put(embedder.model_id, key, v)
        return v

    # Index maintenance -------------------------------------------------------------------
    def _state(self, tenant: str) -> _TenantState:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _TenantState()
        return state

    async def _fresh_state(self, tenant: str, wait: bool) -> _TenantState:
        version = await self.store.kb_version(tenant)
        state = self._state(tenant)
        if state.index is not None and state.index.version == version:
            return state
        if state.rebuild is None or state.rebuild.done():
            state.rebuild = self._spawn(self._rebuild(tenant), f"kb-rebuild:{tenant}")
        task = state.rebuild
        if state.index is None or wait:
            await asyncio.shield(task)
        else:
            # Brief wait: a small KB's change (a deletion above all) shows at once; a big
            # rebuild keeps running while the previous snapshot serves.
            if self.fresh_wait_s > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), self.fresh_wait_s)
        return state

    async def _rebuild(self, tenant: str) -> TenantIndex:
        started = next(self._seq)
        version = await self.store.kb_version(tenant)
        chunks = await self.store.list_chunks(tenant)
        state = self._state(tenant)
        old = state.index
        cache = old.sketches if old is not None else None
        idx = await asyncio.to_thread(TenantIndex.build, tenant, version, chunks, cache)
        idx = idx.with_dense(await self._dense_for(tenant, idx, old))
        if state.index is None or state.index.version <= idx.version:
            state.index = idx
        self.rebuilds += 1
        forgotten = self._forgotten.get(tenant)
        if forgotten:
            for doc_id, seq in list(forgotten.items()):
                if seq < started:
                    del forgotten[doc_id]
        if self._model is not None and idx.missing_vectors(self._model):
            self._schedule_embed(tenant)
        return idx

    async def _dense_for(
        self, tenant: str, idx: TenantIndex, old: TenantIndex | None
    ) -> DenseMatrix | None:
        """The dense matrix for the new snapshot: the configured model's when it covers the
        chunks at least as well as the previous snapshot's model (after a model change the
        old one keeps serving while the new one is embedded)."""
        candidates = [m for m in (self._model,) if m is not None]
        if old is not None and old.dense is not None and old.dense.model_id not in candidates:
            candidates.append(old.dense.model_id)
        best: DenseMatrix | None = None
        for model_id in candidates:
            dense = await self._assemble(tenant, idx, old, model_id)
            if dense is None:
                continue
            if dense.complete:
                return dense
            if best is None or dense.coverage > best.coverage:
                best = dense
        return best

    async def _assemble(
        self, tenant: str, idx: TenantIndex, old: TenantIndex | None, model_id: str
    ) -> DenseMatrix | None:
        fresh = self._fresh_vectors.get(model_id, {})
        reuse = old if old is not None and old.dense is not None \
            and old.dense.model_id == model_id else None
        stored: dict[str, bytes] | None = None
        missing = [
            c.chunk_id for c in idx.chunks
            if c.chunk_id not in fresh and (reuse is None or reuse.vector_of(c.chunk_id) is None)
        ]
        if missing:
            stored = await self.store.load_vectors(tenant, model_id)
        dim = self._dim(model_id, reuse, fresh, stored)
        if dim is None:
            return None

        def lookup(chunk_id: str) -> Vectors | None:
            v = fresh.get(chunk_id)
            if v is None and reuse is not None:
                v = reuse.vector_of(chunk_id)
            if v is None and stored is not None and chunk_id in stored:
                v = vector_from_bytes(stored[chunk_id])
            return v

        dense = await asyncio.to_thread(idx.dense_from, model_id, lookup, dim)
        for c in idx.chunks:  # consumed: the snapshot holds them now
            fresh.pop(c.chunk_id, None)
        return dense

    def _dim(
        self,
        model_id: str,
        reuse: TenantIndex | None,
        fresh: Mapping[str, Vectors],
        stored: Mapping[str, bytes] | None,
    ) -> int | None:
        if model_id in self._embedders:
            return self._embedders[model_id].dim
        if reuse is not None and reuse.dense is not None:
            return int(reuse.dense.matrix.shape[1])
        for v in fresh.values():
            return int(v.shape[0])
        for b in (stored or {}).values():
            return len(b) // 4
        return None

    def _schedule_embed(self, tenant: str) -> None:
        if self._closed or self._model is None:
            return
        state = self._state(tenant)
        if state.embed is not None and not state.embed.done():
            state.embed_again = True
            return
        state.embed = self._spawn(self._embed_missing(tenant), f"kb-embed:{tenant}")

    async def _embed_missing(self, tenant: str) -> None:
        """Embed every chunk lacking a vector of the configured model, save the vectors, and
        swap in the completed dense matrix."""
        state = self._state(tenant)
        done: dict[str, Vectors] = {}  # kept across passes when the snapshot moves on
        for _ in range(100):  # each pass follows a newer snapshot; never spin forever
            state.embed_again = False
            model_id = self._model
            if model_id is None:
                return
            embedder = await self._embedder(model_id)
            idx = state.index
            if embedder is None or idx is None:
                return
            todo = [c for c in idx.missing_vectors(model_id) if c.chunk_id not in done]
            fresh: dict[str, Vectors] = {}
            for start in range(0, len(todo), EMBED_BATCH):
                batch = todo[start : start + EMBED_BATCH]
                vecs = await asyncio.to_thread(embedder.embed, [index_text(c) for c in batch])
                fresh.update(zip((c.chunk_id for c in batch), vecs, strict=True))
            if fresh:
                await self.store.save_vectors(
                    tenant, model_id, {cid: vector_to_bytes(v) for cid, v in fresh.items()}
                )
            done.update(fresh)
            current = state.index
            if current is None:
                return
            same_model = current.dense is not None and current.dense.model_id == model_id

            def lookup(
                chunk_id: str, current: TenantIndex = current, same_model: bool = same_model
            ) -> Vectors | None:
                v = done.get(chunk_id)
                if v is None and same_model:
                    v = current.vector_of(chunk_id)
                return v

            dense = await asyncio.to_thread(current.dense_from, model_id, lookup, embedder.dim)
            if state.index is not current or not dense.complete:
                state.embed_again = True  # a newer snapshot arrived meanwhile: another pass
            else:
                state.index = current.with_dense(dense)
            if not state.embed_again or self._closed:
                return


def _default_factory(model_id: str) -> Embedder:
    from retrieval.embed import FastEmbedEmbedder

    return FastEmbedEmbedder(model_id)
