"""Fit the confidence calibration (logistic regression) on held-out data and write
retrieval/calibration.json.

    python bench/retrieval_calibrate.py [--dry-run]

Held-out data, never test.csv:
- BANKING77 train.csv in 3 folds: each fold holds out 10 intents entirely (their lines are
  out-of-scope queries) and 15% of the other intents' lines (in-scope queries); the rest is KB.
  Labelled modes index the lines with their label; article modes index each intent as a
  document of unlabelled chunks (an FAQ-style KB).
- The demo KB with tests/retrieval/data/demo_kb_queries.jsonl (paraphrased questions
  labelled with the document that answers them, plus off-topic questions), so the article
  fit also covers
  knowledge bases where a query meets a long passage, not another short question.
The outcome for a query is "the top hit is right" (always false for out-of-scope queries).
Prints the fitted coefficients, log-loss, ECE and AUROC per source and mode.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from retrieval_common import embed_cached, read_csv

from retrieval.calibration import (
    CALIBRATION_FILE,
    FEATURES,
    auroc,
    expected_calibration_error,
    fit_calibrator,
)
from retrieval.embed import FastEmbedEmbedder
from retrieval.fusion import RankConfig
from retrieval.index import TenantIndex, index_text
from retrieval.ingest import parse_document
from retrieval.text import tokenize
from warmline.models import Chunk

ROOT = Path(__file__).resolve().parent.parent
DEMO_KB = ROOT / "warmline" / "demo_kb"
DEMO_QUERIES = ROOT / "tests" / "retrieval" / "data" / "demo_kb_queries.jsonl"

Row = tuple[dict[str, float], bool]


def with_vectors(idx: TenantIndex, vec_of: dict[str, np.ndarray], dim: int) -> TenantIndex:
    return idx.with_dense(idx.dense_from("m", vec_of.get, dim))


def banking_rows(cfg: RankConfig, labeled: bool, folds: int = 3) -> dict[str, list[Row]]:
    """Rows from train.csv folds. `labeled=False` indexes each intent as a document whose
    chunks carry no label (an FAQ-style KB) and counts the right document as right."""
    train = read_csv("train.csv")
    emb = embed_cached([t for t, _ in train])
    intents = sorted({lab for _, lab in train})
    suffix = "_labeled" if labeled else ""
    out: dict[str, list[Row]] = {"hybrid" + suffix: [], "bm25" + suffix: []}
    for fold in range(folds):
        rng = random.Random(100 + fold)
        oos = set(rng.sample(intents, 10))
        kb, queries = [], []
        by_label: dict[str, list[int]] = {}
        for i, (_, lab) in enumerate(train):
            by_label.setdefault(lab, []).append(i)
        for lab, idxs in by_label.items():
            idxs = idxs[:]
            rng.shuffle(idxs)
            if lab in oos:
                queries.extend(idxs[:40])
                continue
            cut = max(1, int(len(idxs) * 0.15))
            queries.extend(idxs[:cut])
            kb.extend(idxs[cut:])
        chunks = [Chunk("b", train[i][1], f"c{i}", "", "", train[i][0],
                        label=train[i][1] if labeled else None) for i in kb]
        idx = TenantIndex.build("b", 1, chunks)
        idx = with_vectors(idx, {f"c{i}": emb[i] for i in kb}, emb.shape[1])
        for q in queries:
            text, lab = train[q]
            truth = None if lab in oos else lab
            for mode, vec in (("hybrid" + suffix, emb[q]), ("bm25" + suffix, None)):
                r = idx.rank(tokenize(text), vec, cfg)
                right = bool(r.order) and truth is not None and \
                    idx.chunks[r.order[0]].doc_id == truth
                out[mode].append((_complete(r.features, mode), right))
    return out


def demo_rows(cfg: RankConfig, embedder: FastEmbedEmbedder) -> dict[str, list[Row]]:
    """Rows from the demo KB (article modes)."""
    chunks: list[Chunk] = []
    for path in sorted(DEMO_KB.glob("*.md")):
        chunks.extend(parse_document("demo", path.name, path.read_text())[1])
    idx = TenantIndex.build("demo", 1, chunks)
    vecs = embedder.embed([index_text(c) for c in idx.chunks])
    idx = with_vectors(idx, {c.chunk_id: v for c, v in zip(idx.chunks, vecs, strict=True)},
                       vecs.shape[1])
    lines = [json.loads(x) for x in DEMO_QUERIES.read_text().splitlines() if x.strip()]
    qv = embedder.embed([x["text"] for x in lines])
    out: dict[str, list[Row]] = {"hybrid": [], "bm25": []}
    for x, v in zip(lines, qv, strict=True):
        for mode, vec in (("hybrid", v), ("bm25", None)):
            r = idx.rank(tokenize(x["text"]), vec, cfg)
            right = bool(r.order) and x["label"] is not None and \
                idx.chunks[r.order[0]].doc_id == x["label"]
            out[mode].append((_complete(r.features, mode), right))
    return out


def _complete(features: dict[str, float], mode: str) -> dict[str, float]:
    # A query with no BM25 match has no features: it is a sure "not right".
    return {f: features.get(f, 0.0) for f in FEATURES[mode]}


def report(name: str, cal_predict: list[float], rows: list[Row]) -> dict[str, float]:
    y = np.array([r for _, r in rows], dtype=float)
    p = np.clip(np.array(cal_predict), 1e-6, 1 - 1e-6)
    return {
        "source": name, "n": len(rows), "accuracy": round(float(y.mean()), 4),
        "logloss": round(float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()), 4),
        "ece": round(expected_calibration_error(p.tolist(), (y > 0).tolist()), 4),
        "auroc_right_vs_wrong": round(auroc(p.tolist(), (y > 0).tolist()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true", help="print, do not write the JSON")
    ap.add_argument("--demo-weight", type=int, default=10,
                    help="repeat the (small) demo-KB rows this many times in the fit")
    args = ap.parse_args()
    cfg = RankConfig()
    embedder = FastEmbedEmbedder()
    labeled = banking_rows(cfg, labeled=True)
    articles = banking_rows(cfg, labeled=False)
    demo = demo_rows(cfg, embedder)
    sources: dict[str, list[tuple[str, list[Row], int]]] = {
        "hybrid_labeled": [("banking77-folds", labeled["hybrid_labeled"], 1)],
        "bm25_labeled": [("banking77-folds", labeled["bm25_labeled"], 1)],
        "hybrid": [("banking77-folds-as-articles", articles["hybrid"], 1),
                   ("demo-kb", demo["hybrid"], args.demo_weight)],
        "bm25": [("banking77-folds-as-articles", articles["bm25"], 1),
                 ("demo-kb", demo["bm25"], args.demo_weight)],
    }
    models = {}
    for mode, parts in sources.items():
        rows = [row for _, src, weight in parts for row in src * weight]
        cal = fit_calibrator(FEATURES[mode], [f for f, _ in rows], [r for _, r in rows])
        models[mode] = cal.to_json()
        print(json.dumps({"mode": mode, **cal.to_json()}))
        for name, src, _ in parts:
            probs = [cal.predict(f) for f, _ in src]
            print(json.dumps({"mode": mode, **report(name, probs, src)}))
    if not args.dry_run:
        CALIBRATION_FILE.write_text(json.dumps({
            "about": "Logistic-regression confidence, fitted by bench/retrieval_calibrate.py "
                     "on BANKING77 train.csv folds and the demo KB queries (never test.csv).",
            "rank_config": cfg.__dict__,
            "models": models,
        }, indent=2) + "\n")
        print(f"# wrote {CALIBRATION_FILE}")


if __name__ == "__main__":
    main()
