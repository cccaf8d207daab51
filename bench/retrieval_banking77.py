"""Choose the fusion by the numbers: BANKING77 top-1 for dense-only, weighted score fusion and
reciprocal-rank fusion, each with and without label voting (kNN over the label).

    python bench/retrieval_banking77.py [--quick]

Parameters are chosen on a dev split of train.csv (15% per intent held out as queries, the rest
as KB); test.csv is used once per method, with the full train.csv as KB. Prints one JSON line
per configuration and a final summary; docs/retrieval.md records the results.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from retrieval_common import embed_cached, read_csv, split_dev

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


def grid(quick: bool) -> list[RankConfig]:
    out = []
    votes = [(1, 0.05), (5, 0.05), (10, 0.05), (10, 0.1), (20, 0.05), (20, 0.1), (30, 0.1)]
    if quick:
        votes = [(1, 0.05), (10, 0.05)]
    for vk, vt in votes:
        out.append(RankConfig(fusion="dense", vote_k=vk, vote_temp=vt))
        for w in ([0.8] if quick else [0.6, 0.7, 0.8, 0.9]):
            out.append(RankConfig(fusion="weighted", dense_weight=w, vote_k=vk, vote_temp=vt))
        for k in ([60.0] if quick else [5.0, 20.0, 60.0]):
            out.append(RankConfig(fusion="rrf", rrf_k=k, vote_k=vk, vote_temp=vt))
    out.append(RankConfig(fusion="bm25", vote_k=1))
    out.append(RankConfig(fusion="bm25", vote_k=10, vote_temp=0.1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    train, test = read_csv("train.csv"), read_csv("test.csv")
    tr_text, tr_lab = [t for t, _ in train], [lab for _, lab in train]
    te_text, te_lab = [t for t, _ in test], [lab for _, lab in test]
    tr_emb, te_emb = embed_cached(tr_text), embed_cached(te_text)

    kb, dev = split_dev(train)
    dev_idx = build([tr_text[i] for i in kb], [tr_lab[i] for i in kb], tr_emb[kb])
    dev_q, dev_l, dev_e = [tr_text[i] for i in dev], [tr_lab[i] for i in dev], tr_emb[dev]
    test_idx = build(tr_text, tr_lab, tr_emb)
    print(json.dumps({"dev_kb": len(dev_idx.chunks), "dev_queries": len(dev),
                      "test_kb": len(test_idx.chunks), "test_queries": len(test),
                      "near_duplicates_dropped": test_idx.dropped_duplicates}))

    best: dict[str, tuple[float, RankConfig]] = {}
    for cfg in grid(args.quick):
        acc, ms = top1(dev_idx, dev_q, dev_l, dev_e, cfg)
        name = cfg.fusion + ("+vote" if cfg.vote_k > 1 else "")
        print(json.dumps({"split": "dev", "method": name, "top1": round(acc, 4),
                          "ms_per_query": round(ms, 2), **cfg.__dict__}), flush=True)
        if name not in best or acc > best[name][0]:
            best[name] = (acc, cfg)
    summary = []
    for name, (dev_acc, cfg) in sorted(best.items(), key=lambda kv: -kv[1][0]):
        acc, ms = top1(test_idx, te_text, te_lab, te_emb, cfg)
        row = {"split": "test", "method": name, "dev_top1": round(dev_acc, 4),
               "test_top1": round(acc, 4), "ms_per_query": round(ms, 2), **cfg.__dict__}
        summary.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
