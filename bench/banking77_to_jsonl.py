"""Convert BANKING77 (train.csv, test.csv) into `warmline eval retrieval` JSONL files.

    python bench/banking77_to_jsonl.py [--src DIR] [--out DIR] [--oos-intents N] [--seed S]

Writes kb.jsonl (train lines of the in-scope intents) and queries.jsonl (every test line; the
lines of N held-out intents get label null: they are out of scope, since the KB holds none of
their examples). With --oos-intents 0 it is plain BANKING77 (77 intents, no OOS).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random

DEFAULT_SRC = "/work/shared/data/banking77"


def read_csv(path: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [(row["text"], row["category"]) for row in csv.DictReader(f)]


def held_out_intents(labels: list[str], n: int, seed: int) -> set[str]:
    intents = sorted(set(labels))
    return set(random.Random(seed).sample(intents, n)) if n else set()


def write_jsonl(path: str, rows: list[tuple[str, str | None]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for text, label in rows:
            f.write(json.dumps({"text": text, "label": label}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=DEFAULT_SRC)
    ap.add_argument("--out", default="/tmp/banking77-jsonl")
    ap.add_argument("--oos-intents", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    train = read_csv(os.path.join(args.src, "train.csv"))
    test = read_csv(os.path.join(args.src, "test.csv"))
    oos = held_out_intents([label for _, label in train], args.oos_intents, args.seed)
    os.makedirs(args.out, exist_ok=True)
    kb = [(t, label) for t, label in train if label not in oos]
    queries: list[tuple[str, str | None]] = [
        (t, None if label in oos else label) for t, label in test
    ]
    write_jsonl(os.path.join(args.out, "kb.jsonl"), kb)
    write_jsonl(os.path.join(args.out, "queries.jsonl"), queries)
    print(json.dumps({
        "out": args.out, "kb": len(kb), "queries": len(queries),
        "oos_queries": sum(1 for _, label in queries if label is None),
        "oos_intents": sorted(oos),
    }))


if __name__ == "__main__":
    main()
