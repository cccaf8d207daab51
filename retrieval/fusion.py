"""Combining the BM25 and dense rankings, and label-level aggregation (pure numpy)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

FUSIONS = ("weighted", "rrf", "dense", "bm25")


@dataclass(frozen=True)
class RankConfig:
    """How scores are fused and grouped; defaults chosen on BANKING77 train.csv by 5-fold
    cross-validation (docs/retrieval.md)."""

    fusion: str = "weighted"
    dense_weight: float = 0.9  # weighted: share of the dense cosine, the rest normalized BM25
    rrf_k: float = 60.0
    candidates: int = 100  # fused candidates considered for the answer
    vote_k: int = 20  # nearest chunks that vote for their label
    vote_temp: float = 0.05  # softness of the vote: weight exp((score/best - 1) / temp)
    # Labelled KBs: weight of the label-level BM25 score (all of a label's chunks as one
    # document, normalized by the best label) added to the label's vote share.
    label_bm25_weight: float = 1.6


def top_indices(scores: FloatArray, n: int) -> IntArray:
    """Indices of the `n` highest finite scores, best first (stable among ties)."""
    size = scores.shape[0]
    if size == 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    if n < size:
        part = np.argpartition(-scores, n - 1)[:n]
    else:
        part = np.arange(size)
    part = part[np.isfinite(scores[part])]
    order = np.lexsort((part, -scores[part]))
    return part[order].astype(np.int64)


def rrf(rankings: list[IntArray], k: float, size: int) -> FloatArray:
    """Reciprocal-rank fusion; documents absent from a ranking get nothing from it."""
    fused = np.full(size, -np.inf)
    touched = np.zeros(size, dtype=bool)
    acc = np.zeros(size)
    for ranking in rankings:
        acc[ranking] += 1.0 / (k + 1.0 + np.arange(ranking.shape[0]))
        touched[ranking] = True
    fused[touched] = acc[touched]
    return fused


def weighted(dense: FloatArray, bm25_norm: FloatArray, dense_weight: float) -> FloatArray:
    return dense_weight * dense + (1.0 - dense_weight) * bm25_norm


@dataclass(frozen=True)
class Vote:
    order: IntArray  # candidate indices regrouped: best group first, within a group by score
    group_share: float  # vote weight of the winning group over all votes (0..1)


def group_vote(
    cand: IntArray,
    scores: FloatArray,
    groups: IntArray,
    vote_k: int,
    temp: float,
    bonus: Mapping[int, float] | None = None,
) -> Vote:
    """kNN voting over labels: the `vote_k` best candidates vote for their group with weight
    exp((score - best) / temp), normalized to shares; a group's rank is its share plus its
    `bonus` (label-level evidence). Unlabeled chunks are groups of one, so without a bonus
    this is plain score order. `scores` are expected relative to the best (best = 1)."""
    if cand.shape[0] == 0:
        return Vote(cand, 0.0)
    voters = cand[:vote_k]
    s = scores[voters]
    w = np.exp((s - s[0]) / max(temp, 1e-9))
    total_w = float(w.sum())
    share: dict[int, float] = {}
    for gid, weight in zip(groups[voters].tolist(), w.tolist(), strict=True):
        share[gid] = share.get(gid, 0.0) + weight / total_w
    first: dict[int, int] = {}
    for pos, gid in enumerate(groups[cand].tolist()):
        first.setdefault(gid, pos)
    extra = bonus or {}
    ranked = sorted(
        first, key=lambda gid: (-(share.get(gid, 0.0) + extra.get(gid, 0.0)), first[gid])
    )
    rank_of = {gid: r for r, gid in enumerate(ranked)}
    key_group = np.array([rank_of[x] for x in groups[cand].tolist()], dtype=np.int64)
    order = cand[np.lexsort((np.arange(cand.shape[0]), key_group))]
    return Vote(order, share.get(ranked[0], 0.0))
