"""Persistence: SQLite by default (one host), PostgreSQL for several hosts."""

from __future__ import annotations

from warmline.store.base import Store

SQLITE_WRITERS = ("loop", "process")


def open_store(target: str, sqlite_writer: str = "loop") -> Store:
    """A store for a path (SQLite) or a `postgresql://` URL; call `await store.open()`.

    `sqlite_writer`: where SQLite commits small writes, one of SQLITE_WRITERS.
    """
    if sqlite_writer not in SQLITE_WRITERS:
        raise ValueError(
            f"unknown SQLite writer {sqlite_writer!r}; expected one of {', '.join(SQLITE_WRITERS)}"
        )
    if target.startswith(("postgresql://", "postgres://")):
        from warmline.store.postgres import PostgresStore

        return PostgresStore(target)
    from warmline.store.sqlite import SQLiteStore

    return SQLiteStore(target, writer_process=sqlite_writer == "process")
