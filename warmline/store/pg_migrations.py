"""Versioned schema migrations for the PostgreSQL store. Append only: never edit a shipped one.

Every table is keyed by tenant first (composite primary keys starting with `tenant`), so the
tenant can become the distribution key when tenants are spread over database shards (see
docs/scaling.md). The global unique indexes on `conversations.id` and `agents.id` serve the
store interface's id-only lookups; they are the one thing a sharded layout must replace (by a
directory table or tenant-bearing ids).

Text keys use the "C" collation: byte order, as SQLite sorts, whatever the database's locale,
and cheaper comparisons in the btree indexes. Timestamps are epoch seconds in double
precision, exactly the floats the models carry (no rounding through `timestamptz`). Event
payloads are `json`, not `jsonb`: stored verbatim, and `json` accepts every escape a client
can send (jsonb refuses `\\u0000`).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

# Any constant works; it only has to be the same for every node running migrations.
MIGRATION_LOCK_KEY = 0x5741524D4C494E45 & 0x7FFFFFFFFFFFFFFF  # "WARMLINE"

Migration = tuple[int, str, list[str]]

MIGRATIONS: list[Migration] = [
    (
        1,
        "initial schema",
        [
            """CREATE TABLE secrets (
                name text COLLATE "C" PRIMARY KEY,
                value bytea NOT NULL
            )""",
            """CREATE TABLE tenants (
                id text COLLATE "C" PRIMARY KEY,
                name text NOT NULL,
                created_at double precision NOT NULL,
                allowed_origins text[] NOT NULL DEFAULT '{}',
                kb_version bigint NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE agents (
                tenant text COLLATE "C" NOT NULL REFERENCES tenants (id),
                id text COLLATE "C" NOT NULL,
                name text COLLATE "C" NOT NULL,
                role text NOT NULL CHECK (role IN ('agent', 'supervisor')),
                token_hash text COLLATE "C" NOT NULL,
                created_at double precision NOT NULL,
                revoked boolean NOT NULL DEFAULT false,
                PRIMARY KEY (tenant, id)
            )""",
            "CREATE UNIQUE INDEX agents_id ON agents (id)",
            "CREATE UNIQUE INDEX agents_token_hash ON agents (token_hash)",
            "CREATE INDEX agents_tenant_name ON agents (tenant, name)",
            """CREATE TABLE conversations (
                tenant text COLLATE "C" NOT NULL REFERENCES tenants (id),
                id text COLLATE "C" NOT NULL,
                state text NOT NULL
                    CHECK (state IN ('bot', 'confused', 'queued', 'human', 'resolved')),
                version bigint NOT NULL,
                last_seq bigint NOT NULL,
                created_at double precision NOT NULL,
                updated_at double precision NOT NULL,
                agent_id text COLLATE "C",
                priority integer NOT NULL DEFAULT 0,
                queued_at double precision,
                assigned_at double precision,
                awaiting_agent_since double precision,
                escalation_reason text,
                passed_over text[] NOT NULL DEFAULT '{}',
                handed_off boolean NOT NULL DEFAULT false,
                resolved_by text,
                rating integer,
                rating_comment text,
                preview text NOT NULL DEFAULT '',
                PRIMARY KEY (tenant, id)
            )""",
            "CREATE UNIQUE INDEX conversations_id ON conversations (id)",
            # The dispatcher's queue: small (only queued rows), in dispatch order.
            "CREATE INDEX conversations_queue ON conversations "
            "(tenant, priority DESC, queued_at, id) WHERE state = 'queued'",
            "CREATE INDEX conversations_owner ON conversations (tenant, agent_id, assigned_at)"
            " WHERE state = 'human'",
            "CREATE INDEX conversations_awaiting ON conversations (awaiting_agent_since)"
            " WHERE state = 'human' AND awaiting_agent_since IS NOT NULL",
            """CREATE TABLE events (
                tenant text COLLATE "C" NOT NULL,
                conversation_id text COLLATE "C" NOT NULL,
                seq bigint NOT NULL,
                ts double precision NOT NULL,
                kind text NOT NULL,
                client_key text COLLATE "C",
                data json NOT NULL,
                PRIMARY KEY (tenant, conversation_id, seq),
                FOREIGN KEY (tenant, conversation_id) REFERENCES conversations (tenant, id)
            )""",
            "CREATE UNIQUE INDEX events_client_key ON events (tenant, conversation_id, client_key)"
            " WHERE client_key IS NOT NULL",
            """CREATE TABLE handle_times (
                tenant text COLLATE "C" NOT NULL,
                conversation_id text COLLATE "C" NOT NULL,
                seq bigint NOT NULL,
                agent_id text COLLATE "C",
                seconds double precision NOT NULL,
                resolved_at double precision NOT NULL,
                PRIMARY KEY (tenant, conversation_id, seq)
            )""",
            "CREATE INDEX handle_times_recent ON handle_times (tenant, resolved_at DESC)",
            """CREATE TABLE kb_documents (
                tenant text COLLATE "C" NOT NULL REFERENCES tenants (id),
                doc_id text COLLATE "C" NOT NULL,
                title text NOT NULL,
                url text NOT NULL,
                body text NOT NULL,
                updated_at double precision NOT NULL,
                content_hash text NOT NULL DEFAULT '',
                lang text NOT NULL DEFAULT 'en',
                doc_type text NOT NULL DEFAULT 'article',
                PRIMARY KEY (tenant, doc_id)
            )""",
            """CREATE TABLE kb_chunks (
                tenant text COLLATE "C" NOT NULL,
                doc_id text COLLATE "C" NOT NULL,
                chunk_id text COLLATE "C" NOT NULL,
                ord integer NOT NULL,
                title text NOT NULL,
                url text NOT NULL,
                text text NOT NULL,
                heading_path text[] NOT NULL DEFAULT '{}',
                updated_at double precision NOT NULL,
                lang text NOT NULL DEFAULT 'en',
                doc_type text NOT NULL DEFAULT 'article',
                label text,
                PRIMARY KEY (tenant, chunk_id)
            )""",
            "CREATE INDEX kb_chunks_doc ON kb_chunks (tenant, doc_id, ord)",
            """CREATE TABLE kb_vectors (
                tenant text COLLATE "C" NOT NULL,
                model_id text COLLATE "C" NOT NULL,
                chunk_id text COLLATE "C" NOT NULL,
                vector bytea NOT NULL,
                PRIMARY KEY (tenant, model_id, chunk_id)
            )""",
        ],
    ),
]


def latest_version(migrations: Sequence[Migration] = MIGRATIONS) -> int:
    return max((version for version, _, _ in migrations), default=0)


def pending(applied: set[int], migrations: Sequence[Migration] = MIGRATIONS) -> list[Migration]:
    """The migrations not applied yet, in version order."""
    return sorted((m for m in migrations if m[0] not in applied), key=lambda m: m[0])


async def migrate(
    conn: asyncpg.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> tuple[int, list[int]]:
    """Apply pending migrations in one transaction; return (schema version, versions applied).

    Every node migrates when it opens the store, so nodes starting together all get here: the
    transaction-scoped advisory lock makes them take turns, and the ones after the first find
    nothing left to do. DDL is transactional in PostgreSQL, so a failing migration leaves the
    schema exactly as it was.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version integer PRIMARY KEY, name text NOT NULL DEFAULT '', "
            "applied_at double precision NOT NULL)"
        )
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        done: list[int] = []
        for version, name, statements in pending(applied, migrations):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) "
                "VALUES ($1, $2, extract(epoch from clock_timestamp()))",
                version,
                name,
            )
            done.append(version)
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    return int(current), done
