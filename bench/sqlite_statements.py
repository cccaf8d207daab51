"""What each part of a chat message's write costs SQLite itself, with no server around it.

`SQLiteStore.append_message` runs two statements per message inside a group commit: an
UPDATE of the conversation's row (next seq, reply clock, preview) RETURNING its state, and
an INSERT of the event that the idempotency index `events_client_key` refuses for a resend.
This runs exactly those statements on the current schema with plain `sqlite3` (the pragmas
of the loop's connection, and a PASSIVE checkpoint every CHECKPOINT_EVERY_WRITES messages as
the store does), and beside them variants that each take one part away:

- `no conversation update`: the seq comes from the events' own index (`MAX(seq) + 1` inside
  the INSERT) and the row is only read, so the message touches one page fewer;
- `hashed client key`: the idempotency key as a 64-bit hash in an integer column with a
  global unique index, instead of `(conversation_id, client_key)` text;
- `no idempotency index`: no resend check at all. Unsafe; the most any cheaper key could save.

CPU is user + system time of this process per message (system time is mostly the WAL's
`pwrite()`s at commit). Variants alternate within each round, each on its own file that
starts with CONVERSATIONS conversations and ten messages of history each; medians of --rounds.

    .venv/bin/python bench/sqlite_statements.py
    .venv/bin/python bench/sqlite_statements.py --batches 1,8,64 --rounds 7
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from warmline.store.migrations import MIGRATIONS
from warmline.store.sqlite import CHECKPOINT_EVERY_WRITES, INLINE_CACHE_KIB, PAGE_SIZE

DATA = json.dumps(
    {
        "id": "m_2w9Xo0pQ7rS1tU3v",
        "text": "1|1234567890123|Hello, my parcel has not arrived yet and the tracking page "
        "shows no update.",
        "author": {"role": "customer", "id": "cu_Yh3kLq9pW2sX8vB1", "name": "Customer"},
        "client_id": "s1-1",
    }
)
# The statements of warmline/store/sqlite.py::append_message for a customer's message.
BUMP = (
    "UPDATE conversations SET last_seq = last_seq + 1, updated_at = :now, "
    "awaiting_agent_since = CASE WHEN state = 'human' "
    "THEN COALESCE(awaiting_agent_since, :now) ELSE awaiting_agent_since END, "
    "preview = :preview WHERE id = :id RETURNING state, agent_id, last_seq"
)
INSERT = (
    "INSERT INTO events (conversation_id, seq, ts, kind, client_key, data) "
    "VALUES (?, ?, ?, 'message', ?, ?)"
)
INSERT_ONCE = (
    INSERT + " ON CONFLICT (conversation_id, client_key) WHERE client_key IS NOT NULL DO NOTHING"
)
READ_STATE = "SELECT state, agent_id FROM conversations WHERE id = ?"
INSERT_NEXT_SEQ = (
    "INSERT INTO events (conversation_id, seq, ts, kind, client_key, data) "
    "SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, 'message', ?3, ?4 FROM events "
    "WHERE conversation_id = ?1 "
    "ON CONFLICT (conversation_id, client_key) WHERE client_key IS NOT NULL DO NOTHING "
    "RETURNING seq"
)
INSERT_HASHED = (
    "INSERT INTO events (conversation_id, seq, ts, kind, client_key, data, key_hash) "
    "VALUES (?, ?, ?, 'message', ?, ?, ?) ON CONFLICT (key_hash) WHERE key_hash IS NOT NULL "
    "DO NOTHING"
)

Append = Callable[[sqlite3.Connection, str, str], None]


def take_next_seq(db: sqlite3.Connection, conversation_id: str) -> tuple[int, float]:
    """The conversation's next seq, as the store's UPDATE takes it, and the time it used."""
    now = time.time()
    bump = {"now": now, "id": conversation_id, "preview": "Hello, my parcel"}
    _, _, seq = db.execute(BUMP, bump).fetchone()
    return int(seq), now


def current(db: sqlite3.Connection, conversation_id: str, key: str) -> None:
    seq, now = take_next_seq(db, conversation_id)
    db.execute(INSERT_ONCE, (conversation_id, seq, now, key, DATA))


def no_conversation_update(db: sqlite3.Connection, conversation_id: str, key: str) -> None:
    db.execute(READ_STATE, (conversation_id,)).fetchone()
    db.execute(INSERT_NEXT_SEQ, (conversation_id, time.time(), key, DATA)).fetchone()


def hashed_client_key(db: sqlite3.Connection, conversation_id: str, key: str) -> None:
    seq, now = take_next_seq(db, conversation_id)
    digest = hashlib.blake2b(f"{conversation_id}\0{key}".encode(), digest_size=8).digest()
    key_hash = int.from_bytes(digest, "big", signed=True)
    db.execute(INSERT_HASHED, (conversation_id, seq, now, key, DATA, key_hash))


def no_idempotency_index(db: sqlite3.Connection, conversation_id: str, key: str) -> None:
    seq, now = take_next_seq(db, conversation_id)
    db.execute(INSERT, (conversation_id, seq, now, key, DATA))


VARIANTS: dict[str, tuple[Append, list[str]]] = {
    "current": (current, []),
    "no conversation update": (no_conversation_update, []),
    "hashed client key": (
        hashed_client_key,
        [
            "DROP INDEX events_client_key",
            "ALTER TABLE events ADD COLUMN key_hash INTEGER",
            "CREATE UNIQUE INDEX events_key_hash ON events (key_hash) WHERE key_hash IS NOT NULL",
        ],
    ),
    "no idempotency index": (no_idempotency_index, ["DROP INDEX events_client_key"]),
}


class Database:
    """One variant's file, as the loop's connection sees it."""

    def __init__(self, directory: str, name: str, conversations: int, seed: int) -> None:
        self.append, schema_changes = VARIANTS[name]
        self.rng = random.Random(seed)
        self.db = sqlite3.connect(os.path.join(directory, f"{seed}.db"), isolation_level=None)
        for pragma in (
            f"page_size = {PAGE_SIZE}",
            "journal_mode = WAL",
            "synchronous = NORMAL",
            "wal_autocheckpoint = 0",
            f"cache_size = -{INLINE_CACHE_KIB}",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("BEGIN")
        for _, statements in MIGRATIONS:
            for statement in statements:
                self.db.execute(statement)
        for statement in schema_changes:
            self.db.execute(statement)
        self.db.execute(
            "INSERT INTO tenants (id, name, created_at, allowed_origins) VALUES ('t', 't', 0, '[]')"
        )
        self.ids = [f"c_{self.rng.getrandbits(96):024x}" for _ in range(conversations)]
        self.db.executemany(
            "INSERT INTO conversations (tenant, id, state, version, last_seq, created_at, "
            "updated_at) VALUES ('t', ?, 'human', 0, 0, 0, 0)",
            [(i,) for i in self.ids],
        )
        self.db.execute("COMMIT")
        self.written = 0

    def write(self, batch: int, messages: int) -> None:
        for _ in range(messages // batch):
            self.db.execute("BEGIN IMMEDIATE")
            for _ in range(batch):
                self.written += 1
                conversation_id = self.rng.choice(self.ids)
                key = f"customer:cu_{self.written % 997:016d}:s{self.written}"
                self.append(self.db, conversation_id, key)
            self.db.execute("COMMIT")
            if self.written % CHECKPOINT_EVERY_WRITES < batch:
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def cpu_per_message_us(self, batch: int, messages: int) -> float:
        before = resource.getrusage(resource.RUSAGE_SELF)
        self.write(batch, messages)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return cpu / (messages // batch * batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--batches", default="1,3,8", help="messages per commit")
    parser.add_argument("--messages", type=int, default=6_000, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    results: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        databases = {
            name: Database(directory, name, args.conversations, seed)
            for seed, name in enumerate(VARIANTS)
        }
        for database in databases.values():
            database.write(8, args.conversations * 10)  # history
        for _ in range(args.rounds):
            for batch in batches:
                for name, database in databases.items():
                    us = database.cpu_per_message_us(batch, args.messages)
                    results.setdefault((name, batch), []).append(us)
    print(
        f"{args.conversations} conversations, {args.messages} messages per measurement, "
        f"medians of {args.rounds} rounds (CPU per message, µs, user + system)"
    )
    print("| variant | " + " | ".join(f"{b} per commit" for b in batches) + " |")
    print("| --- |" + " --- |" * len(batches))
    for name in VARIANTS:
        cells = [f"{statistics.median(results[(name, b)]):.1f}" for b in batches]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
