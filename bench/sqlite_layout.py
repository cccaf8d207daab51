"""What the SQLite file's layout costs a chat message: the schema before migration 2 (events
in a WITHOUT ROWID table keyed by conversation and seq, 4 KiB pages) against the current one
(events in commit order in a rowid table, 2 KiB pages).

Drives the real `SQLiteStore.append_message` (writes committed on the event loop) from one
process: CONVERSATIONS conversations with some history, then rounds of BATCH concurrent
appends to random conversations, so each group commit holds about BATCH messages, as at a
few thousand msgs/s. Checkpoints are held off while measuring, so the WAL's size is what
the appends wrote; then one TRUNCATE checkpoint is timed. Layouts alternate, medians of
--rounds.

    .venv/bin/python bench/sqlite_layout.py
    .venv/bin/python bench/sqlite_layout.py --conversations 2000 --batch 40
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from warmline.store import migrations as migrations_module
from warmline.store import sqlite as sqlite_module
from warmline.store.base import MessageRequest
from warmline.store.sqlite import SQLiteStore

CUSTOMER = {"role": "customer", "id": "c-1", "name": "Customer"}
AGENT = {"role": "agent", "id": "a-1", "name": "Agent"}
LAYOUTS = {
    # name: (migrations applied, page size of a new file)
    "v1 (WITHOUT ROWID, 4 KiB)": (1, 4096),
    "current (rowid, 2 KiB)": (len(migrations_module.MIGRATIONS), sqlite_module.PAGE_SIZE),
}


@contextmanager
def layout(migration_count: int, page_size: int) -> Iterator[None]:
    saved = (
        sqlite_module.MIGRATIONS,
        sqlite_module.PAGE_SIZE,
        sqlite_module.CHECKPOINT_EVERY_WRITES,
    )
    sqlite_module.MIGRATIONS = migrations_module.MIGRATIONS[:migration_count]
    sqlite_module.PAGE_SIZE = page_size
    sqlite_module.CHECKPOINT_EVERY_WRITES = 10**12
    try:
        yield
    finally:
        (
            sqlite_module.MIGRATIONS,
            sqlite_module.PAGE_SIZE,
            sqlite_module.CHECKPOINT_EVERY_WRITES,
        ) = saved


def wal_size_then_checkpoint(db: sqlite3.Connection, path: str) -> tuple[int, float]:
    wal_bytes = os.path.getsize(path + "-wal")
    started = time.process_time()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return wal_bytes, time.process_time() - started


async def measure(path: str, conversations: int, batch: int, messages: int, seed: int) -> dict:
    rng = random.Random(seed)
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.add_tenant("t1")
        ids = [(await store.create_conversation("t1")).id for _ in range(conversations)]
        counter = 0

        async def appends(count: int) -> None:
            nonlocal counter
            requests = []
            for _ in range(count):
                counter += 1
                author = CUSTOMER if counter % 2 else AGENT
                text = f"message {counter} from the layout benchmark"
                requests.append(MessageRequest(rng.choice(ids), f"k{counter}", author, text))
            await asyncio.gather(*(store.append_message(r) for r in requests))

        for _ in range(conversations * 10 // batch):  # history: ten messages each
            await appends(batch)
        db = sqlite3.connect(path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        started = time.process_time()
        for _ in range(messages // batch):
            await appends(batch)
        write_s = time.process_time() - started
        wal_bytes, checkpoint_s = wal_size_then_checkpoint(db, path)
        db.close()
        sent = messages // batch * batch
        return {
            "write_us": write_s / sent * 1e6,
            "wal_kib": wal_bytes / sent / 1024,
            "checkpoint_us": checkpoint_s / sent * 1e6,
        }
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in LAYOUTS}
    for round_ in range(args.rounds):
        for name, (migration_count, page_size) in LAYOUTS.items():
            with tempfile.TemporaryDirectory() as tmp, layout(migration_count, page_size):
                path = str(Path(tmp) / "layout.db")
                results[name].append(
                    asyncio.run(
                        measure(path, args.conversations, args.batch, args.messages, round_)
                    )
                )
    print(
        f"{args.conversations} conversations, batches of {args.batch}, "
        f"{args.messages} messages, medians of {args.rounds} rounds"
    )
    print("| layout | CPU per append (µs) | WAL per append (KiB) | checkpoint per append (µs) |")
    print("| --- | --- | --- | --- |")
    for name, rows in results.items():
        cells = [
            statistics.median(r[k] for r in rows) for k in ("write_us", "wal_kib", "checkpoint_us")
        ]
        print(f"| {name} | {cells[0]:.1f} | {cells[1]:.1f} | {cells[2]:.1f} |")


if __name__ == "__main__":
    main()
