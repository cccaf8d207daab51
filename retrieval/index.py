"""One tenant's immutable in-memory index: BM25 postings, a dense matrix, and chunk metadata.

A snapshot is built off the event loop and swapped in whole, so searches never see a half
-built index. Everything here is synchronous and free of I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from retrieval.bm25 import BM25Index
from retrieval.chunking import DuplicateFilter, signature_of_words
from retrieval.fusion import RankConfig, group_vote, rrf, top_indices, weighted
from retrieval.text import analyze
from warmline.errors import BadRequest
from warmline.models import Chunk

Vectors = npt.NDArray[np.float32]
FILTER_KEYS = ("lang", "doc_type", "doc_id", "label")


def index_text(chunk: Chunk) -> str:
    """What both indexes read: the chunk with its title and headings, which often carry the
    question the passage answers."""
    parts = [chunk.title, *chunk.heading_path, chunk.text]
    return "\n".join(p for p in parts if p)


@dataclass(frozen=True)
class DenseMatrix:
    model_id: str
    matrix: Vectors  # (n_chunks, dim), unit rows; zero rows for chunks still being embedded
    present: npt.NDArray[np.bool_]

    @property
    def complete(self) -> bool:
        return bool(self.present.all())

    @property
    def coverage(self) -> float:
        return float(self.present.mean()) if self.present.size else 1.0

    @property
    def usable(self) -> bool:
        return bool(self.present.any())

    def vector(self, i: int) -> Vectors:
        return self.matrix[i]


@dataclass(frozen=True)
class Sketch:
    tokens: list[str]
    signature: npt.NDArray[np.uint64] | None


@dataclass(frozen=True)
class Ranked:
    """Candidate order after fusion and voting, with the features confidence is fitted on."""

    order: list[int]
    scores: list[float]
    features: dict[str, float]


@dataclass
class TenantIndex:
    tenant: str
    version: int
    chunks: list[Chunk]
    tokens: list[list[str]]
    bm25: BM25Index
    groups: npt.NDArray[np.int64]  # ranking groups: the label, or the chunk alone
    dense: DenseMatrix | None = None
    dropped_duplicates: int = 0
    # Labelled KBs only: one BM25 document per label (all its chunks), for label-level scores.
    label_bm25: BM25Index | None = None
    # What a right answer is, for confidence features: the label, or else the document.
    answer_groups: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )
    _columns: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)
    _codes: dict[str, dict[str, int]] = field(default_factory=dict)
    # Per-text tokens and MinHash signature, by a digest of the text, for the next rebuild.
    sketches: dict[bytes, Sketch] = field(default_factory=dict)

    # Building ----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        tenant: str,
        version: int,
        chunks: Sequence[Chunk],
        sketch_cache: Mapping[bytes, Sketch] | None = None,
        dedupe: bool = True,
    ) -> TenantIndex:
        """Index a tenant's chunks. Chunks of other tenants are dropped here too, so a store
        bug cannot leak them. Near-duplicates across documents keep the newest copy.
        `sketch_cache` (a previous snapshot's `sketches`) saves re-tokenizing unchanged text."""
        own = [c for c in chunks if c.tenant == tenant]
        cache = sketch_cache or {}
        sketches: dict[bytes, Sketch] = {}
        keyed: list[tuple[bytes, Sketch]] = []
        for c in own:
            text = index_text(c)
            digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
            sk = cache.get(digest) or sketches.get(digest)
            if sk is None:
                toks, ws = analyze(text)
                sk = Sketch(toks, signature_of_words(ws) if dedupe else None)
            sketches[digest] = sk
            keyed.append((digest, sk))
        dropped = 0
        if dedupe and len(own) > 1:
            # Newest first, so the copy that survives is the one most recently updated.
            by_age = sorted(range(len(own)), key=lambda i: -own[i].updated_at)
            f = DuplicateFilter()
            keep = sorted(
                i for i in by_age
                if keyed[i][1].signature is not None
                and f.add("", keyed[i][1].signature)
            )
            dropped = len(own) - len(keep)
            own = [own[i] for i in keep]
            keyed = [keyed[i] for i in keep]
        tokens = [sk.tokens for _, sk in keyed]
        group_ids: dict[str, int] = {}
        groups = np.fromiter(
            (
                group_ids.setdefault(
                    "L:" + c.label if c.label is not None else "C:" + c.chunk_id, len(group_ids)
                )
                for c in own
            ),
            dtype=np.int64,
            count=len(own),
        )
        label_bm25: BM25Index | None = None
        if any(c.label is not None for c in own):
            docs: list[list[str]] = [[] for _ in range(len(group_ids))]
            for g, toks in zip(groups.tolist(), tokens, strict=True):
                docs[g].extend(toks)
            label_bm25 = BM25Index(docs)
        answer_ids: dict[str, int] = {}
        answer_groups = np.fromiter(
            (
                answer_ids.setdefault(
                    "L:" + c.label if c.label is not None else "D:" + c.doc_id, len(answer_ids)
                )
                for c in own
            ),
            dtype=np.int64,
            count=len(own),
        )
        idx = cls(tenant, version, own, tokens, BM25Index(tokens), groups, None, dropped,
                  label_bm25, answer_groups)
        idx.sketches = sketches
        for key in FILTER_KEYS:
            codes: dict[str, int] = {}
            col = np.fromiter(
                (codes.setdefault(str(getattr(c, key)), len(codes)) for c in own),
                dtype=np.int64,
                count=len(own),
            )
            idx._columns[key] = col
            idx._codes[key] = codes
        return idx

    @property
    def labeled(self) -> bool:
        return self.label_bm25 is not None

    def with_dense(self, dense: DenseMatrix | None) -> TenantIndex:
        return TenantIndex(
            self.tenant, self.version, self.chunks, self.tokens, self.bm25, self.groups, dense,
            self.dropped_duplicates, self.label_bm25, self.answer_groups, self._columns,
            self._codes, self.sketches,
        )

    def dense_from(
        self, model_id: str, lookup: Callable[[str], Vectors | None], dim: int
    ) -> DenseMatrix:
        matrix = np.zeros((len(self.chunks), dim), dtype=np.float32)
        present = np.zeros(len(self.chunks), dtype=bool)
        for i, c in enumerate(self.chunks):
            v = lookup(c.chunk_id)
            if v is not None and v.shape[0] == dim:
                matrix[i] = v
                present[i] = True
        return DenseMatrix(model_id, matrix, present)

    def vector_of(self, chunk_id: str) -> Vectors | None:
        if self.dense is None:
            return None
        pos = self._positions().get(chunk_id)
        if pos is None or not self.dense.present[pos]:
            return None
        return self.dense.matrix[pos]

    def _positions(self) -> dict[str, int]:
        pos = self.__dict__.get("_pos")
        if pos is None:
            pos = {c.chunk_id: i for i, c in enumerate(self.chunks)}
            self.__dict__["_pos"] = pos
        return pos

    def missing_vectors(self, model_id: str) -> list[Chunk]:
        if self.dense is None or self.dense.model_id != model_id:
            return list(self.chunks)
        return [c for c, ok in zip(self.chunks, self.dense.present, strict=True) if not ok]

    # Searching ---------------------------------------------------------------------------
    def allowed(
        self, filters: Mapping[str, str] | None, excluded_docs: Collection[str] = ()
    ) -> npt.NDArray[np.bool_] | None:
        """Mask of chunks passing the filters; None when everything passes."""
        mask: npt.NDArray[np.bool_] | None = None
        for key, value in (filters or {}).items():
            if key not in FILTER_KEYS:
                raise BadRequest(f"unknown filter {key!r}; use one of {', '.join(FILTER_KEYS)}")
            code = self._codes[key].get(str(value))
            m = (
                self._columns[key] == code
                if code is not None
                else np.zeros(len(self.chunks), dtype=bool)
            )
            mask = m if mask is None else mask & m
        if excluded_docs:
            codes = [self._codes["doc_id"][d] for d in excluded_docs if d in self._codes["doc_id"]]
            if codes:
                m = ~np.isin(self._columns["doc_id"], codes)
                mask = m if mask is None else mask & m
        return mask

    def rank(
        self,
        query_tokens: Sequence[str],
        query_vector: Vectors | None,
        config: RankConfig,
        mask: npt.NDArray[np.bool_] | None = None,
    ) -> Ranked:
        """Fuse, vote and rank. The caller guarantees `query_vector` is of the dense matrix's
        model. Chunks still waiting for their vector have a dense score of 0: until the
        background job embeds them, BM25 alone can find them."""
        n = len(self.chunks)
        if n == 0:
            return Ranked([], [], {})
        bm25 = self.bm25.scores(query_tokens)
        bound = self.bm25.max_score(query_tokens)
        bm25_norm = bm25 / bound if bound > 0 else bm25
        use_dense = (
            query_vector is not None
            and self.dense is not None
            and self.dense.usable
            and config.fusion != "bm25"
        )
        dense_scores: npt.NDArray[np.float64] | None = None
        if use_dense:
            assert self.dense is not None and query_vector is not None
            dense_scores = (self.dense.matrix @ query_vector).astype(np.float64)

        matched = self.bm25.matched(query_tokens)
        if dense_scores is None:
            fused = np.where(matched, bm25_norm, -np.inf)
        elif config.fusion == "dense":
            fused = dense_scores.copy()
        elif config.fusion == "rrf":
            b_rank = top_indices(np.where(matched, bm25, -np.inf), config.candidates)
            d_rank = top_indices(dense_scores, config.candidates)
            fused = rrf([d_rank, b_rank], config.rrf_k, n)
        else:
            fused = weighted(dense_scores, bm25_norm, config.dense_weight)
        if mask is not None:
            fused = np.where(mask, fused, -np.inf)

        cand = top_indices(fused, config.candidates)
        if cand.shape[0] == 0:
            return Ranked([], [], {})
        # Score units differ by fusion; the vote temperature is relative to the top score.
        scale = abs(float(fused[cand[0]])) or 1.0
        bonus: dict[int, float] | None = None
        if self.label_bm25 is not None and config.label_bm25_weight:
            label_scores = self.label_bm25.scores(query_tokens)
            best = float(label_scores.max()) if label_scores.size else 0.0
            if best > 0:
                bonus = {
                    g: config.label_bm25_weight * float(label_scores[g]) / best
                    for g in set(self.groups[cand].tolist())
                }
        vote = group_vote(
            cand, fused / scale, self.groups, config.vote_k, config.vote_temp, bonus
        )
        order = vote.order
        top = int(order[0])
        # Features compare the answer (label, else document) with the runners-up from
        # other answers: two chunks of one article agreeing is not ambiguity.
        answer = self.answer_groups[top]
        is_same = self.answer_groups[cand] == answer
        others = cand[~is_same]
        voters = cand[: config.vote_k]
        rel = fused[voters] / scale
        w = np.exp((rel - rel[0]) / max(config.vote_temp, 1e-9))
        share = float(w[self.answer_groups[voters] == answer].sum() / w.sum())
        feats: dict[str, float] = {
            "top_bm25": float(bm25_norm[top]),
            "bm25_margin": float(bm25_norm[top])
            - (float(bm25_norm[others].max()) if others.size else 0.0),
            "vote_share": share,
        }
        if dense_scores is not None:
            best_same = float(dense_scores[cand[is_same]].max())
            feats["top_dense"] = float(dense_scores[top])
            feats["dense_margin"] = best_same - (
                float(dense_scores[others].max()) if others.size else 0.0
            )
        return Ranked([int(i) for i in order], [float(fused[i]) for i in order], feats)
