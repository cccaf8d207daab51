"""bench/sqlite_statements.py: it must time the statements the store really runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench import sqlite_statements
from warmline.store.base import MessageRequest
from warmline.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
CUSTOMER = {"role": "customer", "id": "cu_1", "name": "Customer"}


def shape(sql: str) -> str:
    """A traced statement with its bound values (which the trace shows) taken out."""
    sql = re.sub(r"'(?:[^']|'')*'", "?", sql)
    sql = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", "?", sql)
    return " ".join(sql.split())


async def test_the_current_variant_runs_the_statements_of_append_message(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(str(tmp_path / "store.db"))
    await store.open()
    try:
        await store.add_tenant("t1")
        conversation = await store.create_conversation("t1")
        by_store: list[str] = []
        inline = store._inline
        assert inline is not None
        inline.set_trace_callback(by_store.append)
        try:
            await store.append_message(MessageRequest(conversation.id, "k1", CUSTOMER, "hello"))
        finally:
            inline.set_trace_callback(None)
    finally:
        await store.close()
    database = sqlite_statements.Database(str(tmp_path), "current", conversations=1, seed=0)
    by_benchmark: list[str] = []
    database.db.set_trace_callback(by_benchmark.append)
    database.write(batch=1, messages=1)
    database.db.close()
    assert [shape(s) for s in by_benchmark] == [shape(s) for s in by_store]


def test_the_benchmark_reports_every_variant_at_every_batch_size() -> None:
    out = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "sqlite_statements.py"), "--rounds", "1"),
            *("--conversations", "20", "--messages", "120", "--batches", "1,4"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    rows = {
        line.split("|")[1].strip(): [float(cell) for cell in line.split("|")[2:-1]]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith(("| variant", "| ---"))
    }
    assert set(rows) == set(sqlite_statements.VARIANTS), out
    assert all(len(cells) == 2 and all(c > 0 for c in cells) for cells in rows.values()), out


def test_every_variant_keeps_seq_gap_free_and_only_the_unsafe_one_stores_a_resend(
    tmp_path: Path,
) -> None:
    for seed, name in enumerate(sqlite_statements.VARIANTS):
        database = sqlite_statements.Database(str(tmp_path), name, conversations=5, seed=seed)
        database.write(batch=3, messages=60)
        db = database.db
        for conversation_id in database.ids:
            seqs = [
                row[0]
                for row in db.execute(
                    "SELECT seq FROM events WHERE conversation_id = ? ORDER BY seq",
                    (conversation_id,),
                )
            ]
            assert seqs == list(range(1, len(seqs) + 1)), (name, seqs)
        append, _ = sqlite_statements.VARIANTS[name]
        before = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        db.execute("BEGIN IMMEDIATE")
        for _ in range(2):
            append(db, database.ids[0], "customer:cu_1:sent-twice")
        db.execute("COMMIT")
        stored = db.execute("SELECT COUNT(*) FROM events").fetchone()[0] - before
        assert stored == (2 if name == "no idempotency index" else 1), name
        db.close()
