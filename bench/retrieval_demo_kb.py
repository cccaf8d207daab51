"""Fusion methods on a document-style KB: the demo KB (21 Markdown articles, ~90 chunks) with
63 paraphrased questions labelled with the article that answers them and 24 off-topic ones.

    python bench/retrieval_demo_kb.py

Prints top-1 (right article) per method and, for the shipped configuration, confidence AUROC
(in-scope vs off-topic) and the share answered at the default threshold.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
from retrieval_calibrate import DEMO_KB, DEMO_QUERIES

from retrieval.calibration import auroc, load_calibrators
from retrieval.embed import FastEmbedEmbedder
from retrieval.fusion import RankConfig
from retrieval.index import TenantIndex, index_text
from retrieval.ingest import parse_document
from retrieval.text import tokenize
from warmline.models import Chunk


def main() -> None:
    embedder = FastEmbedEmbedder()
    chunks: list[Chunk] = []
    for path in sorted(DEMO_KB.glob("*.md")):
        chunks.extend(parse_document("demo", path.name, path.read_text())[1])
    idx = TenantIndex.build("demo", 1, chunks)
    vecs = embedder.embed([index_text(c) for c in idx.chunks])
    by_id = {c.chunk_id: v for c, v in zip(idx.chunks, vecs, strict=True)}
    idx = idx.with_dense(idx.dense_from("m", by_id.get, vecs.shape[1]))
    lines = [json.loads(x) for x in DEMO_QUERIES.read_text().splitlines() if x.strip()]
    qv = embedder.embed([x["text"] for x in lines])
    base = RankConfig()
    cals = load_calibrators()
    configs = {
        "bm25": (replace(base, fusion="bm25"), False),
        "dense": (replace(base, fusion="dense"), True),
        "rrf": (replace(base, fusion="rrf"), True),
        **{f"weighted-{w}": (replace(base, fusion="weighted", dense_weight=w), True)
           for w in (0.5, 0.6, 0.7, 0.8, 0.9)},
    }
    for name, (cfg, dense) in configs.items():
        right, conf, pos = 0, [], []
        n_in = 0
        for x, v in zip(lines, qv, strict=True):
            r = idx.rank(tokenize(x["text"]), v if dense else None, cfg)
            mode = "hybrid" if dense else "bm25"
            c = cals[mode].predict(r.features) if r.order else 0.0
            conf.append(c)
            pos.append(x["label"] is not None)
            if x["label"] is not None:
                n_in += 1
                right += bool(r.order) and idx.chunks[r.order[0]].doc_id == x["label"]
        conf_a = np.array(conf)
        pos_a = np.array(pos)
        print(json.dumps({
            "method": name, "dense_weight": cfg.dense_weight if cfg.fusion == "weighted" else None,
            "top1": round(right / n_in, 4),
            "auroc_in_vs_oos": round(auroc(conf, pos), 4),
            "answered_in_scope@0.5": round(float((conf_a[pos_a] >= 0.5).mean()), 4),
            "answered_oos@0.5": round(float((conf_a[~pos_a] >= 0.5).mean()), 4),
        }))


if __name__ == "__main__":
    main()
