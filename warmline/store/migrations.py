"""Versioned schema migrations for the SQLite store. Append only: never edit a shipped one."""

from __future__ import annotations

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            "CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
            """CREATE TABLE tenants (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                created_at REAL NOT NULL,
                allowed_origins TEXT NOT NULL DEFAULT '[]',
                kb_version INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE agents (
                tenant TEXT NOT NULL REFERENCES tenants(id),
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                role TEXT NOT NULL CHECK (role IN ('agent', 'supervisor')),
                token_hash TEXT NOT NULL UNIQUE,
                created_at REAL NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX agents_tenant ON agents (tenant, name)",
            """CREATE TABLE conversations (
                tenant TEXT NOT NULL REFERENCES tenants(id),
                id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                version INTEGER NOT NULL,
                last_seq INTEGER NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                agent_id TEXT,
                priority INTEGER NOT NULL DEFAULT 0,
                queued_at REAL,
                assigned_at REAL,
                awaiting_agent_since REAL,
                escalation_reason TEXT,
                passed_over TEXT NOT NULL DEFAULT '[]',
                handed_off INTEGER NOT NULL DEFAULT 0,
                resolved_by TEXT,
                rating INTEGER,
                rating_comment TEXT,
                preview TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX conversations_queue "
            "ON conversations (tenant, state, priority, queued_at)",
            "CREATE INDEX conversations_agent ON conversations (agent_id, state)",
            """CREATE TABLE events (
                conversation_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                ts REAL NOT NULL,
                kind TEXT NOT NULL,
                client_key TEXT,
                data TEXT NOT NULL,
                PRIMARY KEY (conversation_id, seq)
            ) WITHOUT ROWID""",
            "CREATE UNIQUE INDEX events_client_key ON events (conversation_id, client_key) "
            "WHERE client_key IS NOT NULL",
            """CREATE TABLE handle_times (
                tenant TEXT NOT NULL,
                agent_id TEXT,
                conversation_id TEXT NOT NULL,
                seconds REAL NOT NULL,
                resolved_at REAL NOT NULL
            )""",
            "CREATE INDEX handle_times_recent ON handle_times (tenant, resolved_at)",
            """CREATE TABLE kb_documents (
                tenant TEXT NOT NULL,
                doc_id TEXT NOT NULL,
                title TEXT NOT NULL,
                url TEXT NOT NULL,
                body TEXT NOT NULL,
                updated_at REAL NOT NULL,
                content_hash TEXT NOT NULL DEFAULT '',
                lang TEXT NOT NULL DEFAULT 'en',
                doc_type TEXT NOT NULL DEFAULT 'article',
                PRIMARY KEY (tenant, doc_id)
            )""",
            """CREATE TABLE kb_chunks (
                tenant TEXT NOT NULL,
                doc_id TEXT NOT NULL,
                chunk_id TEXT NOT NULL,
                ord INTEGER NOT NULL,
                title TEXT NOT NULL,
                url TEXT NOT NULL,
                text TEXT NOT NULL,
                heading_path TEXT NOT NULL DEFAULT '[]',
                updated_at REAL NOT NULL,
                lang TEXT NOT NULL DEFAULT 'en',
                doc_type TEXT NOT NULL DEFAULT 'article',
                label TEXT,
                PRIMARY KEY (tenant, chunk_id)
            )""",
            "CREATE INDEX kb_chunks_doc ON kb_chunks (tenant, doc_id, ord)",
            """CREATE TABLE kb_vectors (
                tenant TEXT NOT NULL,
                model_id TEXT NOT NULL,
                chunk_id TEXT NOT NULL,
                vector BLOB NOT NULL,
                PRIMARY KEY (tenant, model_id, chunk_id)
            )""",
        ],
    ),
    (
        2,
        # Events in a rowid table, in commit order: a group commit appends its messages to
        # the last page or two, where the WITHOUT ROWID table kept each message inside its
        # conversation's primary-key pages and split them every dozen messages. Together with
        # 2 KiB pages for new files (PAGE_SIZE), each message at 500 busy conversations writes
        # half the WAL it did (15.9 -> 7.6 KiB, bench/sqlite_layout.py).
        [
            """CREATE TABLE events_by_rowid (
                id INTEGER PRIMARY KEY,
                conversation_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                ts REAL NOT NULL,
                kind TEXT NOT NULL,
                client_key TEXT,
                data TEXT NOT NULL
            )""",
            "INSERT INTO events_by_rowid (conversation_id, seq, ts, kind, client_key, data) "
            "SELECT conversation_id, seq, ts, kind, client_key, data FROM events ORDER BY ts",
            "DROP TABLE events",
            "ALTER TABLE events_by_rowid RENAME TO events",
            "CREATE UNIQUE INDEX events_seq ON events (conversation_id, seq)",
            "CREATE UNIQUE INDEX events_client_key ON events (conversation_id, client_key) "
            "WHERE client_key IS NOT NULL",
        ],
    ),
]
