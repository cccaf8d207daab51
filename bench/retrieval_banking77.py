"""Choose the fusion by the numbers: BANKING77 top-1 for dense-only, weighted score fusion and
reciprocal-rank fusion, each with and without label voting (kNN over the label).

    python bench/retrieval_banking77.py [--quick]

Each method's parameters are chosen by 5-fold cross-validation on train.csv (a fifth of the
lines as queries, the rest as KB); test.csv is then used once per method, with the whole of
train.csv as KB. Prints one JSON line per method; docs/retrieval.md records the results.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace

import numpy as np
from retrieval_common import embed_cached, read_csv

from retrieval.fusion import RankConfig
from retrieval.index import TenantIndex
from retrieval.text import tokenize
from warmline.models import Chunk


def build(texts: list[str], labels: list[str], emb: np.ndarray) -> TenantIndex:
    chunks = [
        Chunk("b77", lab, f"c{i}", "", "", t, label=lab)
        for i, (t, lab) in enumerate(zip(texts, labels, strict=True))
    ]
    idx = TenantIndex.build("b77", 1, chunks)
    pos = {c.chunk_id: i for i, c in enumerate(chunks)}
    return idx.with_dense(idx.dense_from("m", lambda cid: emb[pos[cid]], emb.shape[1]))


def top1(idx: TenantIndex, queries: list[str], labels: list[str], qemb: np.ndarray,
         cfg: RankConfig) -> tuple[float, float]:
    right = 0
    t0 = time.perf_counter()
    for q, lab, v in zip(queries, labels, qemb, strict=True):
        r = idx.rank(tokenize(q), v, cfg)
        right += bool(r.order) and idx.chunks[r.order[0]].label == lab
    ms = (time.perf_counter() - t0) * 1000 / len(queries)
    return right / len(queries), ms


def families(quick: bool) -> dict[str, list[RankConfig]]:
    d = RankConfig()
    fam: dict[str, list[RankConfig]] = {
        "dense 1-NN": [replace(d, fusion="dense", vote_k=1, label_bm25_weight=0)],
        "dense + vote": [replace(d, fusion="dense", vote_k=k, vote_temp=t, label_bm25_weight=0)
                         for k in (10, 20) for t in (0.05, 0.1)],
        "dense + vote + label BM25": [replace(d, fusion="dense", label_bm25_weight=g)
                                      for g in (0.8, 1.6)],
        "weighted 1-NN": [replace(d, dense_weight=w, vote_k=1, label_bm25_weight=0)
                          for w in (0.7, 0.8, 0.9)],
        "weighted + vote": [replace(d, dense_weight=w, label_bm25_weight=0) for w in (0.8, 0.9)],
        "weighted + vote + label BM25": [replace(d, dense_weight=w, label_bm25_weight=g)
                                         for w in (0.8, 0.9) for g in (0.8, 1.6)],
        "rrf 1-NN": [replace(d, fusion="rrf", rrf_k=k, vote_k=1, label_bm25_weight=0)
                     for k in (20.0, 60.0)],
        "rrf + vote": [replace(d, fusion="rrf", vote_temp=t, label_bm25_weight=0)
                       for t in (0.05, 0.1)],
        "rrf + vote + label BM25": [replace(d, fusion="rrf", vote_temp=0.1, label_bm25_weight=g)
                                    for g in (0.8, 1.6)],
        "bm25 1-NN": [replace(d, fusion="bm25", vote_k=1, label_bm25_weight=0)],
        "bm25 + vote + label BM25": [replace(d, fusion="bm25", vote_temp=0.1)],
    }
    if quick:
        fam = {name: cfgs[:1] for name, cfgs in fam.items()}
    return fam


def folds(n_train: int, k: int = 5, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    order = list(range(n_train))
    random.Random(seed).shuffle(order)
    out = []
    for f in range(k):
        q = sorted(order[f::k])
        qs = set(q)
        out.append(([i for i in range(n_train) if i not in qs], q))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one configuration per method")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    train, test = read_csv("train.csv"), read_csv("test.csv")
    tr_text, tr_lab = [t for t, _ in train], [lab for _, lab in train]
    te_text, te_lab = [t for t, _ in test], [lab for _, lab in test]
    tr_emb, te_emb = embed_cached(tr_text), embed_cached(te_text)

    cv = []
    for kb, q in folds(len(train), args.folds):
        idx = build([tr_text[i] for i in kb], [tr_lab[i] for i in kb], tr_emb[kb])
        cv.append((idx, [tr_text[i] for i in q], [tr_lab[i] for i in q], tr_emb[q]))
    test_idx = build(tr_text, tr_lab, tr_emb)
    print(json.dumps({"cv_folds": args.folds, "test_kb": len(test_idx.chunks),
                      "test_queries": len(test),
                      "near_duplicates_dropped": test_idx.dropped_duplicates}), flush=True)

    for name, cfgs in families(args.quick).items():
        best_acc, best_cfg = -1.0, cfgs[0]
        for cfg in cfgs:
            acc = sum(top1(i, q, lab, e, cfg)[0] for i, q, lab, e in cv) / len(cv)
            if acc > best_acc:
                best_acc, best_cfg = acc, cfg
        acc, ms = top1(test_idx, te_text, te_lab, te_emb, best_cfg)
        print(json.dumps({"method": name, "cv_top1": round(best_acc, 4),
                          "test_top1": round(acc, 4), "ms_per_query": round(ms, 2),
                          **best_cfg.__dict__}), flush=True)


if __name__ == "__main__":
    main()
