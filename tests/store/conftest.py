"""Store backends for the contract suite (tests/store/test_contract.py).

Every backend in BACKENDS runs the whole suite. A `StoreEnv` gives a test the store, more
"nodes" (other Store instances over the same data, as separate processes would have), and a
raw dump of everything persisted (to check what must never be stored).

Backends: SQLite and PostgreSQL by default; `WARMLINE_TEST_STORE_BACKENDS=sqlite` (or
`=postgres`) runs just one.

PostgreSQL runs against WARMLINE_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/postgres, the machine's own server with trust auth). The
URL names an administrative database and a role allowed to CREATE DATABASE: every test creates
a fresh `warmline_test_<random>` database beside it and drops it afterwards (WITH (FORCE), so a
failed test leaves nothing behind). To point the tests at another server:

    WARMLINE_TEST_POSTGRES_URL=postgresql://user:secret@db.example:5432/postgres pytest tests/store

The same URL serves tests/store/test_postgres.py and tests/multinode/test_postgres_cluster.py.
The tests are skipped only when that server cannot be reached at all (connection refused,
timeout); a wrong password, a missing privilege or a broken schema fails loudly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from warmline.store.base import Store
from warmline.store.sqlite import SQLiteStore

BACKENDS = [
    name.strip()
    for name in os.environ.get("WARMLINE_TEST_STORE_BACKENDS", "sqlite,postgres").split(",")
    if name.strip()
]

POSTGRES_URL = os.environ.get(
    "WARMLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


class StoreEnv:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.stores: list[Store] = []

    async def node(self) -> Store:
        """Another opened Store over the same data: a second node."""
        store = self._make()
        await store.open()
        self.stores.append(store)
        return store

    def _make(self) -> Store:
        raise NotImplementedError

    async def dump(self) -> bytes:
        """Every byte persisted so far, as far as the backend lets us see it."""
        raise NotImplementedError

    async def setup(self) -> None:
        pass

    async def teardown(self) -> None:
        for store in reversed(self.stores):
            await store.close()
        self.stores.clear()


class SQLiteEnv(StoreEnv):
    def __init__(self, directory: Path) -> None:
        super().__init__("sqlite")
        self.path = directory / "warmline.db"

    def _make(self) -> Store:
        return SQLiteStore(str(self.path))

    async def dump(self) -> bytes:
        # WAL mode: recent writes may sit in -wal until a checkpoint, so read every file.
        return b"".join(
            p.read_bytes() for p in sorted(self.path.parent.glob(self.path.name + "*"))
        )


class PostgresEnv(StoreEnv):
    def __init__(self, admin_url: str) -> None:
        super().__init__("postgres")
        self.admin_url = admin_url
        self.database = f"warmline_test_{uuid.uuid4().hex[:12]}"
        parts = urlsplit(admin_url)
        self.url = urlunsplit(parts._replace(path="/" + self.database))

    async def setup(self) -> None:
        import asyncpg

        try:
            admin = await asyncpg.connect(self.admin_url, timeout=3)
        except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
            pytest.skip(f"PostgreSQL unreachable at {self.admin_url}: {exc}")
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()

    async def teardown(self) -> None:
        import asyncpg

        await super().teardown()
        admin = await asyncpg.connect(self.admin_url, timeout=3)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await admin.close()

    def _make(self) -> Store:
        from warmline.store.postgres import PostgresStore

        store: Store = PostgresStore(self.url)
        return store

    async def dump(self) -> bytes:
        import asyncpg

        conn = await asyncpg.connect(self.url, timeout=3)
        try:
            tables = await conn.fetch(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
                "AND table_type = 'BASE TABLE'"
            )
            out: list[str] = []
            for row in tables:
                name = f'"{row["table_schema"]}"."{row["table_name"]}"'
                out.extend(r[0] for r in await conn.fetch(f"SELECT t::text FROM {name} t"))
            return "\n".join(out).encode()
        finally:
            await conn.close()


@pytest.fixture(params=BACKENDS)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreEnv]:
    kind: str = request.param
    environment: StoreEnv = SQLiteEnv(tmp_path) if kind == "sqlite" else PostgresEnv(POSTGRES_URL)
    await environment.setup()
    try:
        yield environment
    finally:
        await environment.teardown()


@pytest.fixture
async def store(env: StoreEnv) -> Store:
    return await env.node()
