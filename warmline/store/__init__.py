"""Persistence: SQLite by default (one host), PostgreSQL for several hosts."""

from __future__ import annotations

from warmline.store.base import Store


def open_store(target: str) -> Store:
    """A store for a path (SQLite) or a `postgresql://` URL; call `await store.open()`."""
    if target.startswith(("postgresql://", "postgres://")):
        from warmline.store.postgres import PostgresStore

        return PostgresStore(target)
    from warmline.store.sqlite import SQLiteStore

    return SQLiteStore(target)
